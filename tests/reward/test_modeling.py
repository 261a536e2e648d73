"""DeScore model: reward = head(final-norm hidden state at <Reward>); checkpoints round-trip exactly and
fail loudly on any key mismatch; the merged export is a plain backbone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from reward.errors import CheckpointError, ConfigError
from reward.inputs import encode, scoring_text
from reward.modeling import (
    ADAPTER_WEIGHTS,
    HEAD_NAME,
    MANIFEST_NAME,
    REWARD_TOKEN,
    DeScoreModel,
    LoraSettings,
    reward_positions,
    save_descore,
)
from reward.prompts import judge_text
from reward.tiny_models import save_tiny_vlm
from reward.video import VideoSpec, load_video

from ..conftest import TINY_SPEC
from .helpers import small_clip, trained_like


def _batch(model: DeScoreModel, clips: list[Path]) -> dict:
    judge = judge_text("a red square moving left")
    texts = [
        scoring_text(model.processor, judge, cot, placement=model.cot_placement, reward_token=REWARD_TOKEN)
        for cot in ("It is red. <answer>{}</answer>", None)
    ]
    return encode(model.processor, texts, [load_video(clip, model.video_spec) for clip in clips])


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("clips")
    return [small_clip(root / "a.mp4", seed=1), small_clip(root / "b.mp4", seed=2)]


@pytest.fixture(scope="module", name="trained_like")
def trained_like_model(tiny_qwen3_vl_dir) -> DeScoreModel:
    """A stage-1 model whose LoRA, vision copy, <Reward> row and head all differ from their initial values."""
    return trained_like(tiny_qwen3_vl_dir, TINY_SPEC).eval()


def test_reward_is_the_head_applied_to_the_final_norm_hidden_state(trained_like, clips):
    """Capture the output of the LLM's final RMSNorm with a hook; the reward must be w · h at <Reward>."""
    batch = _batch(trained_like, clips)
    captured = []
    final_norm = trained_like.backbone.get_base_model().model.language_model.norm
    handle = final_norm.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        rewards = trained_like(**batch)
    finally:
        handle.remove()
    position = reward_positions(batch["input_ids"], trained_like.reward_token_id)
    expected = captured[0][torch.arange(2), position].double() @ trained_like.head.weight.double().T
    torch.testing.assert_close(rewards.double(), expected.squeeze(-1))
    assert rewards.dtype == torch.float32 and trained_like.head.bias is None
    assert trained_like.head.weight.shape == (1, trained_like.backbone.config.get_text_config().hidden_size)


def test_only_lora_vision_head_and_reward_row_are_trainable(tiny_qwen3_vl_dir):
    model = DeScoreModel.from_base(str(tiny_qwen3_vl_dir), video_spec=TINY_SPEC, lora=LoraSettings(r=4, alpha=8))
    names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert "head.weight" in names
    assert any("lora_A" in name and "language_model" in name for name in names)
    assert not any("lora_" in name and "visual" in name for name in names)
    assert any("visual.modules_to_save" in name and "merger" in name for name in names)
    token_rows = [p for n, p in model.named_parameters() if "trainable_tokens_delta" in n]
    assert len(token_rows) == 1 and token_rows[0].shape == (1, model.hidden_size)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.endswith("embed_tokens.base_layer.weight") or "embed_tokens.token_adapter.base_layer" in n
               or n.endswith("embed_tokens.weight") for n in frozen)
    assert all("lm_head" not in n for n in names)


def test_reward_token_row_starts_at_the_mean_embedding(tiny_qwen3_vl_dir):
    model = DeScoreModel.from_base(str(tiny_qwen3_vl_dir), video_spec=TINY_SPEC)
    weight = model.backbone.get_input_embeddings().weight
    token_id = model.reward_token_id
    assert token_id == len(model.processor.tokenizer) - 1 == weight.shape[0] - 1
    torch.testing.assert_close(weight[token_id], weight[:token_id].mean(0))


@pytest.mark.parametrize("merged", [False, True], ids=["adapter", "merged"])
def test_save_then_load_gives_identical_rewards(trained_like, clips, tmp_path, merged):
    model = trained_like
    if merged:
        model = DeScoreModel.from_pretrained(save_descore(trained_like, tmp_path / "adapter")).merge_lora_()
    batch = _batch(model, clips)
    expected = model(**batch)
    directory = save_descore(model, tmp_path / "ckpt")
    loaded = DeScoreModel.from_pretrained(directory)
    assert loaded.backbone_format == ("merged" if merged else "adapter")
    assert torch.equal(loaded(**batch), expected)
    torch.testing.assert_close(trained_like(**_batch(trained_like, clips)), expected, rtol=1e-5, atol=1e-5)
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    assert manifest["video_spec"] == TINY_SPEC.to_dict() and manifest["cot_placement"] == "assistant"


def _corrupt(directory: Path, file: str, change) -> None:
    state = load_file(directory / file)
    change(state)
    save_file(state, directory / file)


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        (ADAPTER_WEIGHTS, lambda s: s.pop(sorted(k for k in s if "lora_B" in k)[0]), "missing keys"),
        (ADAPTER_WEIGHTS, lambda s: s.update(extra=torch.zeros(1)), "unexpected keys"),
        (HEAD_NAME, lambda s: s.update(bias=torch.zeros(1)), "unexpected keys"),
        (HEAD_NAME, lambda s: s.update(weight=torch.zeros(1, 3)), "shape"),
    ],
    ids=["adapter-missing", "adapter-unexpected", "head-unexpected", "head-shape"],
)
def test_loading_fails_on_key_mismatch(trained_like, tmp_path, file, change, message):
    directory = save_descore(trained_like, tmp_path / "ckpt")
    _corrupt(directory, file, change)
    with pytest.raises(CheckpointError, match=message):
        DeScoreModel.from_pretrained(directory)


def test_loading_a_merged_checkpoint_fails_on_key_mismatch(trained_like, tmp_path):
    directory = save_descore(DeScoreModel.from_pretrained(save_descore(trained_like, tmp_path / "a")).merge_lora_(), tmp_path / "m")
    _corrupt(directory, "model.safetensors", lambda s: s.pop(sorted(s)[0]))
    with pytest.raises(CheckpointError, match="missing keys"):
        DeScoreModel.from_pretrained(directory)


def test_manifest_problems_are_reported(trained_like, tmp_path):
    directory = save_descore(trained_like, tmp_path / "ckpt")
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    (directory / MANIFEST_NAME).write_text(json.dumps({**manifest, "surprise": 1}))
    with pytest.raises(CheckpointError, match="unexpected keys \\['surprise'\\]"):
        DeScoreModel.from_pretrained(directory)
    (directory / MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointError, match="descore_config.json is missing"):
        DeScoreModel.from_pretrained(directory)


def test_merged_export_is_a_plain_backbone(trained_like, clips, tmp_path):
    """`export --merged` opens with AutoModelForImageTextToText/AutoProcessor; its hidden state at <Reward>
    times the head weight is the DeScore reward. (The head and manifest ride along: tests/reward/test_export.py.)"""
    reference = DeScoreModel.from_pretrained(save_descore(trained_like, tmp_path / "ckpt"))
    batch = _batch(reference, clips)
    expected = reference(**batch)
    out = reference.export_merged(tmp_path / "export")
    assert not (out / ADAPTER_WEIGHTS).exists() and not (out / "adapter_config.json").exists()
    plain = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    token_id = processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    assert token_id == reference.reward_token_id
    hidden = plain.model(**batch, use_cache=False).last_hidden_state
    position = reward_positions(batch["input_ids"], token_id)
    head = load_file(tmp_path / "ckpt" / HEAD_NAME)["weight"]
    torch.testing.assert_close(hidden[torch.arange(2), position] @ head.T, expected[:, None], rtol=1e-5, atol=1e-5)


def test_qwen2_5_vl_backbone_works_and_checks_the_pixel_factor(tiny_qwen2_5_vl_dir, clips, tmp_path):
    spec = VideoSpec(min_frames=4, max_frames=8, min_pixels=784, max_pixels=3136, pixel_factor=28)
    with pytest.raises(ConfigError, match="pixel_factor=28"):
        DeScoreModel.from_base(str(tiny_qwen2_5_vl_dir), video_spec=TINY_SPEC)
    model = DeScoreModel.from_base(str(tiny_qwen2_5_vl_dir), video_spec=spec, lora=LoraSettings(r=4, alpha=8)).eval()
    batch = _batch(model, clips)
    assert "second_per_grid_ts" in batch
    rewards = model(**batch)
    loaded = DeScoreModel.from_pretrained(save_descore(model, tmp_path / "ckpt"))
    assert torch.equal(loaded(**batch), rewards)


def test_sequences_need_exactly_one_reward_token():
    ids = torch.tensor([[1, 9, 2], [9, 9, 1], [1, 2, 3]])
    assert reward_positions(ids[:1], 9).tolist() == [1]
    with pytest.raises(ValueError, match=r"rows \[1, 2\] have \[2, 0\]"):
        reward_positions(ids, 9)


def test_atomic_save_keeps_the_previous_checkpoint_when_writing_fails(trained_like, tmp_path, monkeypatch):
    directory = save_descore(trained_like, tmp_path / "ckpt")
    before = sorted(p.name for p in directory.iterdir())

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(trained_like.processor), "save_pretrained", explode)
    with pytest.raises(OSError, match="disk full"):
        save_descore(trained_like, directory)
    assert sorted(p.name for p in directory.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt")]
    shutil.rmtree(directory)


def test_adapter_refuses_a_base_with_other_weights(tmp_path):
    """Same architecture, other weights (another seed) at the recorded base path: loading is refused."""
    base = save_tiny_vlm(tmp_path / "base", "qwen3_vl", seed=0)
    model = DeScoreModel.from_base(str(base), video_spec=TINY_SPEC, lora=LoraSettings(r=4, alpha=8))
    directory = save_descore(model, tmp_path / "ckpt")
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    assert manifest["base_model"] == str(base.resolve()) and manifest["base_fingerprint"].startswith("sha256:")
    DeScoreModel.from_pretrained(directory)  # the untouched base loads
    shutil.rmtree(base)
    save_tiny_vlm(base, "qwen3_vl", seed=1)
    with pytest.raises(CheckpointError, match=r"ckpt: base model .*base is not the one this adapter was trained on"):
        DeScoreModel.from_pretrained(directory)
    shutil.rmtree(base)
    with pytest.raises(CheckpointError, match=r"its base model .*base does not exist"):
        DeScoreModel.from_pretrained(directory)


def test_base_model_is_recorded_as_an_absolute_path(tiny_qwen3_vl_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_qwen3_vl_dir.parent)
    model = DeScoreModel.from_base(tiny_qwen3_vl_dir.name, video_spec=TINY_SPEC, lora=LoraSettings(r=4, alpha=8))
    assert model.base_model == str(tiny_qwen3_vl_dir.resolve())


@pytest.mark.parametrize("merged", [False, True], ids=["adapter", "merged"])
def test_pickled_weights_are_never_loaded(trained_like, tmp_path, merged):
    model = DeScoreModel.from_pretrained(save_descore(trained_like, tmp_path / "a")).merge_lora_() if merged else trained_like
    directory = save_descore(model, tmp_path / "ckpt")
    weights = directory / ("model.safetensors" if merged else ADAPTER_WEIGHTS)
    torch.save(load_file(weights), directory / ("pytorch_model.bin" if merged else "adapter_model.bin"))
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"\.bin'\]: pickled weights are never loaded"):
        DeScoreModel.from_pretrained(directory)


def test_a_format_1_adapter_still_loads_without_a_base_check(trained_like, tmp_path, caplog):
    directory = save_descore(trained_like, tmp_path / "ckpt")
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    del manifest["base_fingerprint"]
    (directory / MANIFEST_NAME).write_text(json.dumps({**manifest, "format_version": 1}))
    with caplog.at_level("WARNING"):
        assert DeScoreModel.from_pretrained(directory).base_fingerprint is None
    assert "is not verified" in caplog.text
