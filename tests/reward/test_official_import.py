"""``descore reward import-official``: tiny checkpoints written in the official DeScore layout (stage 1: LoRA
adapter + non-LoRA state + rm_head.pth; stage 2: full HF weights + nested rm_head.pth) are imported, and the
imported model's reward equals a forward written here from the official layout with plain transformers + peft."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import safetensors.torch
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

from descore.cli import run_cli
from reward.errors import CheckpointError, ConfigError
from reward.inputs import encode
from reward.modeling import EXPORT_MARKER, MANIFEST_NAME
from reward.official_import import ImportOfficialConfig, read_official_head, run_import_official
from reward.scoring import DeScoreReward
from reward.video import VideoSpec, load_video

from ..conftest import TINY_SPEC
from .helpers import small_clip

PROMPT = "a red square moving left"
COT = 'The square moves left. <answer>\n```json\n{"dimensional_scores": {"subject": 2}}\n```\n</answer>\n'
TEMPLATE = "Judge the video for the prompt [{prompt}].\nVideo: <video>\nThink, then answer in <answer> tags."
PEFT = "base_model.model."
SMALL_VIDEO = ["--video_min_pixels", "1024", "--video_max_pixels", "4096", "--video_max_frames", "8"]


@dataclass(frozen=True)
class OfficialRun:
    checkpoint: Path  # stage 1: checkpoint-N/ (lora_adapter/, non_lora_state_dict.pth, rm_head.pth, base + tokenizer)
    actor: Path  # stage 2: global_step_N/actor/ (huggingface/, rm_head.pth)
    template: Path


def _official_base(base: Path) -> tuple[Qwen3VLForConditionalGeneration, object]:
    """The base with <Reward> added as ``create_model_and_processor`` in cold_start/train_reward.py adds it."""
    processor = AutoProcessor.from_pretrained(base)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": ["<Reward>"]})
    model = Qwen3VLForConditionalGeneration.from_pretrained(base)
    model.resize_token_embeddings(len(processor.tokenizer))
    return model, processor


def _official_lora_names(model: nn.Module) -> list[str]:
    """``find_target_linear_names`` with the official exclusions (lm_head, rm_head, embed_tokens, visual)."""
    return [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Embedding))
            and not any(word in name for word in ("lm_head", "rm_head", "embed_tokens", "visual"))]


def _write_stage1(base: Path, checkpoint: Path) -> torch.Tensor:
    """A stage-1 checkpoint with random trained tensors, in the official file layout; returns the head."""
    generator = torch.Generator().manual_seed(7)
    model, processor = _official_base(base)
    hidden = model.config.text_config.hidden_size
    reward_id = processor.tokenizer.convert_tokens_to_ids("<Reward>")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("model.visual."):
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        model.get_input_embeddings().weight[reward_id] = torch.randn(hidden, generator=generator)
    head = torch.randn(1, hidden, generator=generator) / hidden**0.5
    model.save_pretrained(checkpoint)  # the checkpoint's own weights: trained non-LoRA tensors, no LoRA deltas
    processor.save_pretrained(checkpoint)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=128, target_modules=_official_lora_names(model),
                                                  lora_dropout=0.05, bias="none"))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))  # B non-zero
    state = peft_model.state_dict()
    adapter = {key.replace(".default.weight", ".weight"): value.contiguous() for key, value in state.items() if "lora_" in key}
    (checkpoint / "lora_adapter").mkdir()
    safetensors.torch.save_file(adapter, checkpoint / "lora_adapter" / "adapter_model.safetensors")
    short_names = sorted({key.split(".")[-3] for key in adapter})
    (checkpoint / "lora_adapter" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "task_type": None, "r": 4, "lora_alpha": 128, "target_modules": short_names,
         "lora_dropout": 0.0, "bias": "none", "use_rslora": False}, indent=4))
    non_lora = {name: parameter.detach().clone() for name, parameter in peft_model.named_parameters()
                if "lora_" not in name and (".visual." in name or "embed_tokens" in name)}
    torch.save({**non_lora, PEFT + "rm_head.weight": head}, checkpoint / "non_lora_state_dict.pth")
    torch.save({PEFT + "rm_head.weight": head}, checkpoint / "rm_head.pth")
    return head


def _official_model(checkpoint: Path, base: Path) -> tuple[nn.Module, object, torch.Tensor]:
    """The stage-1 model rebuilt from the official files alone: base + <Reward>, non-LoRA state, LoRA merged."""
    model, processor = _official_base(base)
    non_lora = torch.load(checkpoint / "non_lora_state_dict.pth", weights_only=True)
    head = non_lora.pop(PEFT + "rm_head.weight")
    result = model.load_state_dict({key.removeprefix(PEFT): value for key, value in non_lora.items()}, strict=False)
    assert not result.unexpected_keys
    merged = PeftModel.from_pretrained(model, checkpoint / "lora_adapter").merge_and_unload()
    return merged.eval(), processor, head


def _official_reward(model: nn.Module, processor, head: torch.Tensor, clip: Path, template: str) -> float:
    """The official stage-2 reading: CoT + <Reward> in the assistant turn, ``model.model(...)`` last hidden state
    at <Reward>, dot the head."""
    prefix, suffix = template.replace("{prompt}", PROMPT).split("<video>")
    messages = [{"role": "user", "content": [{"type": "text", "text": prefix}, {"type": "video"},
                                             {"type": "text", "text": suffix}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + COT + "<Reward>"
    batch = encode(processor, [text], [load_video(clip, TINY_SPEC)])
    with torch.no_grad():
        hidden = model.model(**batch).last_hidden_state[0]
    position = (batch["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids("<Reward>")).nonzero().item()
    return (hidden[position] @ head[0]).item()


@pytest.fixture(scope="module")
def official(tiny_qwen3_vl_dir, tmp_path_factory) -> tuple[OfficialRun, float, Path]:
    """(the run's files, the reward the official layout gives the clip, the clip)."""
    root = tmp_path_factory.mktemp("official")
    checkpoint = root / "checkpoint-4"
    _write_stage1(tiny_qwen3_vl_dir, checkpoint)
    model, processor, head = _official_model(checkpoint, tiny_qwen3_vl_dir)
    actor = root / "global_step_1" / "actor"
    model.save_pretrained(actor / "huggingface")
    processor.save_pretrained(actor / "huggingface")
    torch.save({"model": {"rm_head.weight": head}}, actor / "rm_head.pth")
    template = root / "official_template.txt"
    template.write_text(TEMPLATE + "\n")
    clip = small_clip(root / "clip.mp4")
    return OfficialRun(checkpoint, actor, template), _official_reward(model, processor, head, clip, TEMPLATE), clip


def _imported_reward(folder: Path, clip: Path) -> float:
    scorer = DeScoreReward(folder, use_cot=True, device="cpu")
    return scorer.score([clip], [PROMPT], cots=[COT]).items[0].reward


def test_a_stage1_checkpoint_scores_as_the_official_layout_does(official, tiny_qwen3_vl_dir, tmp_path):
    run, expected, clip = official
    output = tmp_path / "imported"
    run_cli(["reward", "import-official", "--lora", str(run.checkpoint / "lora_adapter"),
             "--non_lora", str(run.checkpoint / "non_lora_state_dict.pth"), "--head", str(run.checkpoint / "rm_head.pth"),
             "--base", str(tiny_qwen3_vl_dir), "--tokenizer", str(run.checkpoint), "--template", str(run.template),
             "--output_dir", str(output), *SMALL_VIDEO])
    assert _imported_reward(output, clip) == pytest.approx(expected, abs=1e-5)
    manifest = json.loads((output / MANIFEST_NAME).read_text())
    assert manifest["judge_template"] == TEMPLATE and manifest["cot_placement"] == "assistant"
    assert manifest["video_spec"] == TINY_SPEC.to_dict() and manifest["backbone_format"] == "merged"
    record = json.loads((output / EXPORT_MARKER).read_text())
    assert set(record["files"]) == {"head", "non_lora", "lora/adapter_config.json", "lora/adapter_model.safetensors",
                                    "template"}
    assert all(len(entry["sha256"]) == 64 for entry in record["files"].values())


def test_a_stage1_checkpoint_folder_as_base_needs_no_non_lora_file(official, tmp_path):
    """checkpoint-N holds the base weights with the trained non-LoRA tensors and the tokenizer with <Reward>."""
    run, expected, clip = official
    output = run_import_official(ImportOfficialConfig(
        lora=str(run.checkpoint / "lora_adapter"), head=str(run.checkpoint / "rm_head.pth"), base=str(run.checkpoint),
        template=str(run.template), output_dir=str(tmp_path / "imported"), video_min_pixels=1024, video_max_pixels=4096,
        video_max_frames=8))
    assert _imported_reward(output, clip) == pytest.approx(expected, abs=1e-5)


def test_a_stage2_checkpoint_with_a_nested_head_scores_as_the_official_layout_does(official, tmp_path):
    run, expected, clip = official
    output = run_import_official(ImportOfficialConfig(
        model=str(run.actor / "huggingface"), head=str(run.actor / "rm_head.pth"), template=str(run.template),
        output_dir=str(tmp_path / "imported"), video_min_pixels=1024, video_max_pixels=4096, video_max_frames=8))
    assert _imported_reward(output, clip) == pytest.approx(expected, abs=1e-5)
    assert json.loads((output / MANIFEST_NAME).read_text())["training"] == {"stage": "official_dual_rl"}


def test_each_stage_defaults_to_its_official_video_settings(official, tmp_path):
    run, _, _ = official
    stage1 = ImportOfficialConfig(lora=str(run.checkpoint / "lora_adapter"), head=str(run.checkpoint / "rm_head.pth"),
                                  base="Qwen/Qwen3-VL-8B-Instruct", output_dir=str(tmp_path / "a"))
    stage2 = ImportOfficialConfig(model=str(run.actor / "huggingface"), head=str(run.actor / "rm_head.pth"),
                                  output_dir=str(tmp_path / "b"))
    assert stage1.video_spec(32) == VideoSpec(fps=2.0, min_pixels=128 * 32 * 32, max_pixels=200_704, pixel_factor=32)
    assert stage2.video_spec(32) == VideoSpec(fps=2.0, min_pixels=3_136, max_pixels=307_200, pixel_factor=32)
    with pytest.raises(ConfigError, match="exactly one of --lora"):
        ImportOfficialConfig(head=str(run.actor / "rm_head.pth"), output_dir=str(tmp_path / "c"))


def test_wrong_or_missing_non_lora_and_lora_tensors_are_named(official, tiny_qwen3_vl_dir, tmp_path):
    run, _, _ = official
    state = torch.load(run.checkpoint / "non_lora_state_dict.pth", weights_only=True)
    dropped = next(key for key in state if ".visual.merger." in key)
    del state[dropped]
    state[PEFT + "model.visual.bogus.weight"] = torch.zeros(2)
    broken = tmp_path / "non_lora_state_dict.pth"
    torch.save(state, broken)
    config = ImportOfficialConfig(lora=str(run.checkpoint / "lora_adapter"), non_lora=str(broken),
                                  head=str(run.checkpoint / "rm_head.pth"), base=str(tiny_qwen3_vl_dir),
                                  output_dir=str(tmp_path / "out"))
    with pytest.raises(CheckpointError, match=rf"missing \['{dropped.removeprefix(PEFT)}'\], unexpected "
                                              r"\['model\.visual\.bogus\.weight'\]"):
        run_import_official(config)

    adapter_dir = tmp_path / "lora_adapter"
    adapter_dir.mkdir()
    (adapter_dir / "adapter_config.json").write_bytes((run.checkpoint / "lora_adapter" / "adapter_config.json").read_bytes())
    adapter = safetensors.torch.load_file(run.checkpoint / "lora_adapter" / "adapter_model.safetensors")
    layer = "model.language_model.layers.1.mlp.up_proj"
    adapter = {key: value for key, value in adapter.items() if f"{layer}." not in key}
    safetensors.torch.save_file(adapter, adapter_dir / "adapter_model.safetensors")
    config = ImportOfficialConfig(lora=str(adapter_dir), non_lora=str(run.checkpoint / "non_lora_state_dict.pth"),
                                  head=str(run.checkpoint / "rm_head.pth"), base=str(tiny_qwen3_vl_dir),
                                  output_dir=str(tmp_path / "out"))
    with pytest.raises(CheckpointError, match=rf"LoRA layers missing \['{layer}'\]"):
        run_import_official(config)


class _Planted:
    """Unpickling this would create a file: proof that a loader ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_both_head_forms_are_read_and_anything_else_is_refused_by_name(tmp_path):
    weight = torch.randn(1, 8)
    forms = {"stage1.pth": {"rm_head.weight": weight}, "stage1_peft.pth": {PEFT + "rm_head.weight": weight},
             "stage2.pth": {"model": {"rm_head.weight": weight.bfloat16()}}}
    for name, content in forms.items():
        torch.save(content, tmp_path / name)
        read = read_official_head(tmp_path / name)
        assert read.dtype == torch.float32
        torch.testing.assert_close(read, weight if name != "stage2.pth" else weight.bfloat16().float(), rtol=0, atol=0)
    torch.save({"weight": weight, "bias": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"it holds \['bias', 'weight'\]"):
        read_official_head(tmp_path / "other.pth")

    marker = tmp_path / "code-ran"
    torch.save({"rm_head.weight": _Planted(marker)}, tmp_path / "planted.pth")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        read_official_head(tmp_path / "planted.pth")
    assert not marker.exists()


def test_a_stage2_folder_of_fsdp_shards_is_refused_with_the_fix(official, tmp_path):
    run, _, _ = official
    shards = tmp_path / "actor"
    shards.mkdir()
    (shards / "model_world_size_2_rank_0.pt").write_bytes(b"")
    config = ImportOfficialConfig(model=str(shards), head=str(run.actor / "rm_head.pth"), output_dir=str(tmp_path / "o"))
    with pytest.raises(CheckpointError, match="verl's FSDP shards .*model merger"):
        run_import_official(config)


def test_a_reward_id_that_differs_from_the_runs_tokenizer_is_refused(official, tiny_qwen3_vl_dir, tmp_path):
    """A run whose tokenizer got another token before <Reward> started from another base than --base."""
    run, _, _ = official
    tokenizer = AutoProcessor.from_pretrained(tiny_qwen3_vl_dir).tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": ["<Other>", "<Reward>"]})
    tokenizer.save_pretrained(tmp_path / "run_tokenizer")
    size = len(tokenizer)
    config = ImportOfficialConfig(lora=str(run.checkpoint / "lora_adapter"), head=str(run.checkpoint / "rm_head.pth"),
                                  non_lora=str(run.checkpoint / "non_lora_state_dict.pth"), base=str(tiny_qwen3_vl_dir),
                                  tokenizer=str(tmp_path / "run_tokenizer"), output_dir=str(tmp_path / "out"))
    with pytest.raises(CheckpointError, match=rf"<Reward> has id {size - 2} in a vocabulary of {size - 1} here but "
                                              rf"id {size - 1} in a vocabulary of {size}"):
        run_import_official(config)
