"""VideoReward: tiny random-weight checkpoints in VideoAlign's layout, scored through the registry and checked
against a forward written here from the layout description (docs/reward_zoo/videoreward.md)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import decord
import pytest
import safetensors.torch
import torch
from transformers import Qwen2VLForConditionalGeneration

from reward.base import build_reward
from reward.errors import CheckpointError, ConfigError, VideoDecodeError
from reward.inputs import encode
from reward.video import VideoFrames, load_video
from reward.videoreward import DEFAULT_TEMPLATE, sequential_positions
from reward.videoreward_layout import find_checkpoint, save_tiny_videoreward
from tests.reward.helpers import small_clip

PROMPT = "a red square moving left"
TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One seed in both layouts (3-output head), and a released-style 1-output head."""
    root = tmp_path_factory.mktemp("videoreward")
    return {
        "adapter": save_tiny_videoreward(root / "adapter", adapter=True),
        "full": save_tiny_videoreward(root / "full", adapter=False),
        "shared_head": save_tiny_videoreward(root / "shared_head", adapter=True, output_dim=1, seed=3),
    }


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("videoreward_clips")
    return [small_clip(root / "short.mp4", frames=8), small_clip(root / "long.mp4", frames=16, seed=1)]


@pytest.fixture(scope="module")
def scorer(checkpoints):
    return build_reward({"name": "videoreward", "path": str(checkpoints["adapter"]), "device": "cpu"})


def _sub_scores(output) -> list[list[float]]:
    return [[item.sub_scores[name] for name in ("VQ", "MQ", "TA", "Overall")] for item in output.items]


def test_file_and_in_memory_frames_score_identically(scorer, clips):
    reader = decord.VideoReader(str(clips[0]))
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    from_file = scorer.score([clips[0]], [PROMPT])
    from_memory = scorer.score([VideoFrames(frames, fps=reader.get_avg_fps())], [PROMPT])
    assert _sub_scores(from_file) == _sub_scores(from_memory)
    assert from_file.items[0].reward == from_file.items[0].sub_scores["Overall"]


def _independent_scores(folder: Path, scorer, clip: Path, prompt: str) -> torch.Tensor:
    """VideoReward's forward from the layout description alone: base Qwen2-VL, the checkpoint's tensors under
    transformers 4.45 names, LoRA merged as W + alpha/r · B A, embed, scatter the video features, the language
    model at positions 0..L-1 on all three M-RoPE axes, rm_head at each reward token, normalisation, Overall."""
    config = json.loads((folder / "model_config.json").read_text())
    step = folder / "checkpoint-5"
    tensors = {**safetensors.torch.load_file(step / "adapter_model.safetensors"),
               **torch.load(step / "non_lora_state_dict.pth", weights_only=True)}
    base = Qwen2VLForConditionalGeneration.from_pretrained(config["model_config"]["model_name_or_path"])
    base.resize_token_embeddings(base.config.text_config.vocab_size + 3)
    language, visual = base.model.language_model, base.model.visual
    parameters = dict(base.named_parameters())
    scale = config["peft_lora_config"]["lora_alpha"] / config["peft_lora_config"]["lora_r"]
    with torch.no_grad():
        for saved, tensor in tensors.items():
            if ".lora_A." in saved:
                up = tensors[saved.replace(".lora_A.", ".lora_B.")]
                parameters[_today(saved.split(".lora_A.")[0]) + ".weight"] += scale * up @ tensor
            elif ".lora_B." not in saved and saved != "base_model.model.rm_head.weight":
                parameters[_today(saved)].copy_(tensor)
        head = tensors["base_model.model.rm_head.weight"]
        batch = encode(scorer.processor, [scorer.chat_text(prompt)], [load_video(clip, scorer.spec)])
        ids = batch["input_ids"]
        embeds = language.embed_tokens(ids)
        features = visual(batch["pixel_values_videos"], grid_thw=batch["video_grid_thw"]).pooler_output
        embeds[ids == base.config.video_token_id] = features
        positions = torch.arange(ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)
        hidden = language(inputs_embeds=embeds, position_ids=positions).last_hidden_state[0]
        logits = hidden @ head.T
    token_ids = scorer.processor.tokenizer.convert_tokens_to_ids(list(TOKENS))
    raw = torch.stack([logits[(ids[0] == token).nonzero().item(), k if head.shape[0] == 3 else 0]
                       for k, token in enumerate(token_ids)])
    statistics = config["inference_config"]
    means = torch.tensor([statistics[f"{d}_mean"] for d in ("VQ", "MQ", "TA")])
    stds = torch.tensor([statistics[f"{d}_std"] for d in ("VQ", "MQ", "TA")])
    normalized = (raw - means) / stds
    return torch.cat([normalized, normalized.sum().view(1)])


def _today(saved: str) -> str:
    """A saved (peft-wrapped, transformers 4.45) name as today's Qwen2-VL names it."""
    name = saved.removeprefix("base_model.model.")
    if name.startswith("visual."):
        return "model." + name
    return "model.language_model." + name.removeprefix("model.") if name.startswith("model.") else name


@pytest.mark.parametrize("layout", ["adapter", "shared_head"])
def test_matches_an_independent_forward(checkpoints, clips, layout):
    scorer = build_reward({"name": "videoreward", "path": str(checkpoints[layout]), "device": "cpu"})
    expected = _independent_scores(checkpoints[layout], scorer, clips[0], PROMPT)
    got = torch.tensor(_sub_scores(scorer.score([clips[0]], [PROMPT]))[0])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_the_language_model_sees_sequential_positions_not_mrope(scorer, clips):
    """transformers copies 2-D position ids onto the three M-RoPE axes (as 4.45 did for VideoAlign's call
    without any); Qwen2-VL's own 3-D positions, which the checkpoint never saw, give other scores."""
    batch = encode(scorer.processor, [scorer.chat_text(PROMPT)], [load_video(clips[0], scorer.spec)])
    model, ids = scorer.model, batch["input_ids"]
    token_ids = scorer.processor.tokenizer.convert_tokens_to_ids(list(TOKENS))

    def hidden_at_tokens(**positions) -> torch.Tensor:
        hidden = model.backbone.model(input_ids=ids, attention_mask=batch["attention_mask"],
                                      pixel_values_videos=batch["pixel_values_videos"],
                                      video_grid_thw=batch["video_grid_thw"],
                                      mm_token_type_ids=batch["mm_token_type_ids"], **positions).last_hidden_state[0]
        return torch.stack([hidden[(ids[0] == token).nonzero().item()] for token in token_ids])

    with torch.no_grad():
        ours = hidden_at_tokens(position_ids=sequential_positions(batch["attention_mask"]))
        three_axes = hidden_at_tokens(position_ids=torch.arange(ids.shape[1]).view(1, 1, -1).expand(3, 1, -1))
        mrope = hidden_at_tokens()
        scores = model(ids, batch["attention_mask"], batch["pixel_values_videos"], batch["video_grid_thw"])[0]
    assert (ours - three_axes).abs().max() < 1e-6
    assert (ours - mrope).abs().max() > 1e-4  # 4e-4 here: random tiny attention is nearly position-blind
    torch.testing.assert_close(scores, model.head(ours).diagonal(), rtol=0, atol=1e-6)


def test_both_layouts_give_the_same_scores(scorer, checkpoints, clips):
    full = build_reward({"name": "videoreward", "path": str(checkpoints["full"]), "device": "cpu"})
    torch.testing.assert_close(torch.tensor(_sub_scores(full.score(clips, [PROMPT] * 2))),
                               torch.tensor(_sub_scores(scorer.score(clips, [PROMPT] * 2))), rtol=0, atol=1e-6)


def test_a_batch_scores_like_single_items(scorer, clips):
    """Clips of different lengths are right-padded in one batch; positions count real tokens only."""
    together = _sub_scores(scorer.score(clips, [PROMPT, "a dog"]))
    alone = [_sub_scores(scorer.score([clip], [prompt]))[0] for clip, prompt in zip(clips, [PROMPT, "a dog"])]
    torch.testing.assert_close(torch.tensor(together), torch.tensor(alone), rtol=0, atol=1e-5)


def test_visual_and_motion_scores_do_not_see_the_prompt(scorer, clips):
    """VQ and MQ are read before the prompt (causal attention): exactly equal under any prompt; TA is read after
    it. (A long second prompt: on a 2-layer random model a short one may move TA by only ~1e-6; this one by ~6e-4.)"""
    first, second = _sub_scores(scorer.score([clips[0]] * 2, [PROMPT, "a cat sleeping on a sofa, " * 12]))
    assert first[:2] == second[:2] and abs(first[2] - second[2]) > 1e-5, (first, second)


def test_dimension_picks_the_reward_and_normalize_off_gives_raw_heads(checkpoints, clips):
    path = str(checkpoints["adapter"])
    normalized = build_reward({"name": "videoreward", "path": path, "dimension": "TA", "device": "cpu"})
    raw = build_reward({"name": "videoreward", "path": path, "normalize": False, "device": "cpu"})
    item = normalized.score([clips[0]], [PROMPT]).items[0]
    raw_item = raw.score([clips[0]], [PROMPT]).items[0]
    assert item.reward == item.sub_scores["TA"]
    means, stds = (3.6757, 1.1646, 2.8105), (2.2476, 1.3811, 2.5121)
    for name, mean, std in zip(("VQ", "MQ", "TA"), means, stds):
        assert math.isclose(item.sub_scores[name], (raw_item.sub_scores[name] - mean) / std, abs_tol=1e-5)
    assert math.isclose(raw_item.reward, sum(raw_item.sub_scores[n] for n in ("VQ", "MQ", "TA")), abs_tol=1e-5)


def test_a_template_file_scores_like_the_same_template_string(scorer, checkpoints, clips, tmp_path):
    text = DEFAULT_TEMPLATE.replace("Rate the generated video", "Judge this generated video")
    (tmp_path / "rubric.txt").write_text(text)
    path = str(checkpoints["adapter"])
    from_file = build_reward({"name": "videoreward", "path": path, "template": str(tmp_path / "rubric.txt"), "device": "cpu"})
    from_string = build_reward({"name": "videoreward", "path": path, "template": text, "device": "cpu"})
    assert _sub_scores(from_file.score([clips[0]], [PROMPT])) == _sub_scores(from_string.score([clips[0]], [PROMPT]))
    assert _sub_scores(from_file.score([clips[0]], [PROMPT])) != _sub_scores(scorer.score([clips[0]], [PROMPT]))


@pytest.mark.parametrize("options, message", [
    ({"dimension": "overall"}, "dimension must be one of"),
    ({"normalize": "yes"}, "normalize must be true or false"),
    ({"batch_size": 0}, "batch_size must be"),
    ({"dtype": "int8"}, "dtype must be one of"),
    ({"step": -1}, "step must be"),
    ({"template": "no placeholder here"}, "neither a file nor a template string"),
    ({"template": "{prompt} <|VQ_reward|> <|VQ_reward|> <|TA_reward|>"}, r"<\|VQ_reward\|> appears 2 times; <\|MQ_reward"),
    ({"video_spec": {"frames": 4}}, "unknown VideoSpec keys"),
    ({"video_spec": {"fps": -1}}, "fps must be a positive number"),
    ({"decode_limits": {"max_seconds": 3}}, "decode_limits: .*max_seconds"),
    ({"calibrate": True}, "does not take options"),
])
def test_bad_options_raise_config_errors(checkpoints, options, message):
    with pytest.raises(ConfigError, match=message):
        build_reward({"name": "videoreward", "path": str(checkpoints["adapter"]), "device": "cpu", **options})


def test_a_prompt_holding_a_reward_token_is_refused(scorer, clips):
    with pytest.raises(ValueError, match=r"prompts \[1\] contain a reward token"):
        scorer.score([clips[0]] * 2, [PROMPT, "a square <|TA_reward|>"])


def test_unreadable_videos_fail_alone_with_skip_invalid(checkpoints, clips, tmp_path):
    skipping = build_reward({"name": "videoreward", "path": str(checkpoints["adapter"]), "skip_invalid": True, "device": "cpu"})
    output = skipping.score([tmp_path / "missing.mp4", clips[0]], [PROMPT, PROMPT])
    assert math.isnan(output.items[0].reward) and "no such file" in output.items[0].error
    assert output.items[1].ok
    with pytest.raises(VideoDecodeError):
        build_reward({"name": "videoreward", "path": str(checkpoints["adapter"]), "device": "cpu"}).score(
            [tmp_path / "missing.mp4"], [PROMPT])


def _copy(checkpoints, layout: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoints[layout], tmp_path / layout, ignore=shutil.ignore_patterns("base")))


class _Planted:
    """Unpickling this would create a folder: what a malicious .pth could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


def test_a_pickle_planted_in_a_pth_is_refused(checkpoints, tmp_path):
    folder = _copy(checkpoints, "adapter", tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"base_model.model.rm_head.weight": _Planted(marker)}, folder / "checkpoint-5" / "non_lora_state_dict.pth")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        build_reward({"name": "videoreward", "path": str(folder), "device": "cpu"})
    assert not marker.exists()


def test_a_missing_checkpoint_file_or_step_is_named(checkpoints, tmp_path):
    folder = _copy(checkpoints, "adapter", tmp_path)
    (folder / "checkpoint-5" / "non_lora_state_dict.pth").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint-5 holds neither model.pth .*non_lora_state_dict.pth missing"):
        build_reward({"name": "videoreward", "path": str(folder), "device": "cpu"})
    with pytest.raises(CheckpointError, match=r"no checkpoint-7; it has steps \[5\]"):
        build_reward({"name": "videoreward", "path": str(checkpoints["adapter"]), "step": 7, "device": "cpu"})


def test_missing_and_unexpected_tensors_are_named(checkpoints, tmp_path):
    folder = _copy(checkpoints, "full", tmp_path)
    weights = folder / "checkpoint-5" / "model.pth"
    state = torch.load(weights, weights_only=True)
    del state["base_model.model.model.norm.weight"]
    state["base_model.model.extra_head.weight"] = torch.zeros(2)
    torch.save(state, weights)
    with pytest.raises(CheckpointError, match=r"missing \['model.language_model.norm.weight'\], "
                                              r"unexpected \['extra_head.weight'\]"):
        build_reward({"name": "videoreward", "path": str(folder), "device": "cpu"})


def test_the_highest_step_is_the_default_and_a_step_picks_its_folder(tmp_path):
    for name in ("checkpoint-2", "checkpoint-10", "checkpoint-best", "runs"):
        (tmp_path / name).mkdir()
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # by number, not by name
    assert find_checkpoint(tmp_path, 2) == tmp_path / "checkpoint-2"


def test_lora_that_does_not_match_peft_lora_config_is_refused(checkpoints, tmp_path):
    folder = _copy(checkpoints, "adapter", tmp_path)
    config = json.loads((folder / "model_config.json").read_text())
    config["peft_lora_config"]["lora_r"] = 8
    (folder / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"not of rank lora_r=8 .*layers\.0\.mlp\.down_proj"):
        build_reward({"name": "videoreward", "path": str(folder), "device": "cpu"})
    config["peft_lora_config"]["lora_enable"] = False
    (folder / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="lora_enable is False but the checkpoint holds 14 LoRA layers"):
        build_reward({"name": "videoreward", "path": str(folder), "device": "cpu"})
