"""Tests for generator_rl/rewards.py (reward terms and mixes) and reward/sanity.py (the sanity rewards).

Sanity rewards see frames through ``load_video`` with ``SANITY_SPEC`` (16 fps, pixel factor 8, 2–256 frames):
a 16-fps clip keeps an even number of frames (qwen-vl-utils floors the count to a multiple of 2, indices
``linspace(0, T − 1, n).round()``), sizes are rounded to multiples of 8 and capped by the per-frame budget
min(768 tokens·8², 256²) = 49,152 pixels, and constant frames stay constant through the bicubic resize.
Float frames in [0, 1] are quantised as round(255·x) (round half to even: 0.5 → 127.5 → 128).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

import reward
from generator_rl.rewards import MixedRewards, RewardMix, RewardTerm, scoring_executor
from reward import base as reward_base
from reward.base import RewardOutput, ScoredItem
from reward.errors import ConfigError, VideoDecodeError
from reward.sanity import SANITY_SPEC, brightness, jpeg_compressibility, temporal_smoothness
from reward.video import load_video

NAN = float("nan")


def constant_clip(level: int, *, frames: int = 4, height: int = 16, width: int = 16) -> reward.VideoFrames:
    return reward.VideoFrames(np.full((frames, height, width, 3), level, dtype=np.uint8), fps=16)


def alternating_clip(frames: int) -> reward.VideoFrames:
    """Black, white, black, … uint8 frames of 16x16."""
    array = np.zeros((frames, 16, 16, 3), dtype=np.uint8)
    array[1::2] = 255
    return reward.VideoFrames(array, fps=16)


def noise_clip(seed: int = 0) -> reward.VideoFrames:
    return reward.VideoFrames(np.random.default_rng(seed).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8), fps=16)


def score(name: str, videos, **options) -> RewardOutput:
    return reward.build_reward({"name": name, **options}).score(videos, ["a prompt"] * len(videos))


# --------------------------------------------------------------------------------------------------------
# RewardTerm
# --------------------------------------------------------------------------------------------------------


def test_term_from_a_command_line_string():
    """`name=x,weight=0.5,path=p,flag=true`: strings stay strings, 0.5 a float, `true` a bool, 3 an int."""
    term = RewardTerm("name=x,weight=0.5,path=p,flag=true,steps=3")
    assert term.weight == 0.5
    assert term.label == "x"
    assert term.entry == {"name": "x", "path": "p", "flag": True, "steps": 3}
    assert isinstance(term.entry["steps"], int)
    assert term.to_dict() == {"name": "x", "path": "p", "flag": True, "steps": 3, "weight": 0.5, "label": "x"}


def test_term_string_parsing_details():
    """Spaces around keys and values are stripped, empty parts (`,,`, a trailing comma) skipped, `False` is a
    bool, an integer weight becomes 2.0, and an explicit label replaces the name as label."""
    term = RewardTerm(" name = brightness ,, weight = 2 , skip_invalid = False , label = bright ,")
    assert term.entry == {"name": "brightness", "skip_invalid": False}
    assert term.weight == 2.0 and isinstance(term.weight, float)
    assert term.label == "bright"


def test_term_from_a_dict_does_not_modify_it():
    """Dict form (YAML): weight defaults to 1.0, label to the name; the caller's dict is left alone."""
    entry = {"name": "descore_no_cot", "path": "runs/descore/final"}
    term = RewardTerm(entry)
    assert (term.weight, term.label) == (1.0, "descore_no_cot")
    assert term.entry == {"name": "descore_no_cot", "path": "runs/descore/final"}
    assert entry == {"name": "descore_no_cot", "path": "runs/descore/final"}
    weighted = RewardTerm({"name": "brightness", "weight": "0.25", "label": "b"})
    assert (weighted.weight, weighted.label, weighted.entry) == (0.25, "b", {"name": "brightness"})


@pytest.mark.parametrize("value", ["weight=1.0,path=p", {"weight": 1.0}, "", {}])
def test_term_without_a_name_is_rejected(value):
    with pytest.raises(ConfigError, match="has no name"):
        RewardTerm(value)


@pytest.mark.parametrize("text", ["name=brightness,weight", "brightness", "name=brightness, ,weight=1"])
def test_term_with_a_bad_pair_is_rejected(text):
    """Every non-empty comma-separated part must contain `=` (a blank part is not empty)."""
    with pytest.raises(ConfigError, match="expected key=value pairs"):
        RewardTerm(text)


def test_term_value_may_contain_equals_and_semicolons():
    """Only the first `=` of a part splits key from value; `;` is not a separator."""
    assert RewardTerm("name=brightness;weight=1").entry == {"name": "brightness;weight=1"}
    assert RewardTerm("name=x,path=a=b").entry == {"name": "x", "path": "a=b"}


@pytest.mark.parametrize(
    "value", ["name=brightness,weight=nan", "name=brightness,weight=inf", {"name": "brightness", "weight": -math.inf}]
)
def test_term_with_a_non_finite_weight_is_rejected(value):
    with pytest.raises(ConfigError, match="non-finite weight"):
        RewardTerm(value)


def test_term_with_a_non_numeric_weight_is_a_config_error():
    with pytest.raises(ConfigError, match="name=brightness,weight=heavy"):
        RewardTerm("name=brightness,weight=heavy")


# --------------------------------------------------------------------------------------------------------
# RewardMix
# --------------------------------------------------------------------------------------------------------


class FixedReward:
    """A stub reward model that returns preset rewards (NaN = failed item), registered for one test."""

    name = "fixed"

    def __init__(self, values: tuple[float, ...]) -> None:
        self.values = values

    def score(self, videos, prompts) -> RewardOutput:
        assert len(videos) == len(self.values)
        return RewardOutput([ScoredItem(reward=v, error=None if math.isfinite(v) else "failed") for v in self.values])


@pytest.fixture
def fixed_reward(monkeypatch):
    monkeypatch.setitem(reward_base._REGISTRY, "test_fixed", FixedReward)
    return "test_fixed"


def test_mix_total_is_the_weighted_sum():
    """Videos: constant level 51 and 204 (16x16, 4 frames). brightness = [0.2, 0.8], smoothness = [0, 0].
    Weights 2 and 0.5: total = 2·[0.2, 0.8] + 0.5·[0, 0] = [0.4, 1.6]."""
    mix = RewardMix([RewardTerm("name=brightness,weight=2"), RewardTerm({"name": "temporal_smoothness", "weight": 0.5})])
    out = mix.score([constant_clip(51), constant_clip(204)], ["a", "b"])
    assert isinstance(out, MixedRewards)
    assert set(out.terms) == {"brightness", "temporal_smoothness"}
    torch.testing.assert_close(out.terms["brightness"], torch.tensor([0.2, 0.8]))
    torch.testing.assert_close(out.terms["temporal_smoothness"], torch.tensor([0.0, 0.0]))
    assert out.total.dtype == torch.float32
    torch.testing.assert_close(out.total, torch.tensor([0.4, 1.6]))


def test_mix_with_negative_weight_and_repeated_model_under_two_labels():
    """brightness twice (labels b1 weight 1, b2 weight −3) on level 51: 0.2 − 0.6 = −0.4; alternating
    black/white 4-frame clip: brightness 0.5 → 0.5 − 1.5 = −1.0."""
    mix = RewardMix([RewardTerm("name=brightness,label=b1"), RewardTerm("name=brightness,label=b2,weight=-3")])
    out = mix.score([constant_clip(51), alternating_clip(4)], ["a", "b"])
    torch.testing.assert_close(out.total, torch.tensor([-0.4, -1.0]))


def test_mix_total_is_nan_where_any_term_failed(fixed_reward):
    """Stub term [1, NaN, 3] (weight 2) + brightness (weight 1) of levels 0, 255, 51 = [0, 1, 0.2]:
    total = [2 + 0, NaN, 6 + 0.2] = [2, NaN, 6.2]; the per-term values are kept as they were."""
    mix = RewardMix([RewardTerm({"name": fixed_reward, "values": (1.0, NAN, 3.0), "weight": 2.0}),
                     RewardTerm("name=brightness")])
    out = mix.score([constant_clip(0), constant_clip(255), constant_clip(51)], ["a"] * 3)
    torch.testing.assert_close(out.total, torch.tensor([2.0, NAN, 6.2]), equal_nan=True)
    torch.testing.assert_close(out.terms[fixed_reward], torch.tensor([1.0, NAN, 3.0]), equal_nan=True)
    torch.testing.assert_close(out.terms["brightness"], torch.tensor([0.0, 1.0, 0.2]))


def test_mix_with_skip_invalid_term_gives_nan_for_a_missing_file(tmp_path):
    """brightness with skip_invalid (a bool parsed from the string) scores a missing file NaN → total NaN."""
    mix = RewardMix([RewardTerm("name=brightness,skip_invalid=true,weight=4")])
    out = mix.score([constant_clip(51), str(tmp_path / "missing.mp4")], ["a", "b"])
    torch.testing.assert_close(out.total, torch.tensor([0.8, NAN]), equal_nan=True)


def test_mix_needs_terms_and_unique_labels():
    with pytest.raises(ConfigError, match="at least one reward term"):
        RewardMix([])
    with pytest.raises(ConfigError, match="labels must be unique"):
        RewardMix([RewardTerm("name=brightness"), RewardTerm("name=brightness,weight=2")])
    with pytest.raises(ConfigError, match="labels must be unique"):
        RewardMix([RewardTerm("name=brightness,label=x"), RewardTerm("name=temporal_smoothness,label=x")])


def test_mix_rejects_unknown_models_and_options():
    with pytest.raises(ConfigError, match="unknown reward model 'no_such_reward'"):
        RewardMix([RewardTerm("name=no_such_reward")])
    with pytest.raises(ConfigError, match=r"does not take options \['colour'\]"):
        RewardMix([RewardTerm("name=brightness,colour=red")])


# --------------------------------------------------------------------------------------------------------
# The frames sanity rewards see
# --------------------------------------------------------------------------------------------------------


def test_sanity_frames_are_resized_to_multiples_of_eight():
    """30x50 → round(30/8)·8 = 32, round(50/8)·8 = 48 (1,536 px, within budget): (T, 3, 32, 48)."""
    frames = load_video(constant_clip(10, height=30, width=50), SANITY_SPEC).frames
    assert frames.shape == (4, 3, 32, 48)
    assert torch.equal(frames, torch.full_like(frames, 10.0))


def test_sanity_frames_are_shrunk_to_the_pixel_budget():
    """300x400 = 120,000 px > 49,152: β = √(120000/49152) = 1.5625 → floor(192/8)·8 = 192, floor(256/8)·8 = 256."""
    assert SANITY_SPEC.frame_pixel_budget(2) == 49_152
    frames = load_video(constant_clip(7, frames=2, height=300, width=400), SANITY_SPEC).frames
    assert frames.shape == (2, 3, 192, 256)


def test_sanity_frames_are_resampled_to_16_fps():
    """8 frames at 32 fps → 8/32·16 = 4 frames at indices round(linspace(0, 7, 4)) = [0, 2, 5, 7]."""
    clip = reward.VideoFrames(np.zeros((8, 16, 16, 3), dtype=np.uint8), fps=32)
    assert load_video(clip, SANITY_SPEC).frame_indices == [0, 2, 5, 7]


# --------------------------------------------------------------------------------------------------------
# brightness, temporal smoothness, JPEG compressibility
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 1, 51, 128, 255])
def test_brightness_of_a_constant_level_is_level_over_255(level):
    assert score("brightness", [constant_clip(level)]).rewards.item() == pytest.approx(level / 255, abs=1e-7)


def test_brightness_of_float_frames_uses_the_quantised_values():
    """Float 0.5 → round(127.5) = 128 → 128/255 = 0.501961; float 0.2 → round(51.0) = 51 → 0.2."""
    clips = [reward.VideoFrames(torch.full((2, 3, 16, 16), value), fps=16) for value in (0.5, 0.2)]
    rewards = score("brightness", clips).rewards
    assert rewards.tolist() == pytest.approx([128 / 255, 51 / 255], abs=1e-7)


def test_brightness_measure_by_hand():
    """Pixels 0 and 255 in equal number (T, 3, H, W): mean 127.5 → 0.5; [0, 51, 102] × same count → 51/255 = 0.2."""
    frames = torch.zeros(2, 3, 4, 4)
    frames[1] = 255
    assert brightness(frames) == pytest.approx(0.5)
    assert brightness(torch.tensor([0.0, 51.0, 102.0]).view(3, 1, 1, 1).expand(3, 3, 2, 2)) == pytest.approx(0.2)


def test_smoothness_of_still_frames_is_zero():
    assert score("temporal_smoothness", [constant_clip(200, frames=6)]).rewards.tolist() == [0.0]


def test_smoothness_of_alternating_black_and_white_is_minus_one():
    """4 frames at 16 fps are all kept: |255 − 0| every step → −255/255 = −1."""
    assert score("temporal_smoothness", [alternating_clip(4)]).rewards.item() == pytest.approx(-1.0)


def test_smoothness_of_five_alternating_frames_sees_the_sampled_four():
    """5 frames → 4 kept (floored to a multiple of 2) at round(linspace(0, 4, 4)) = [0, 1, 3, 4], i.e. black,
    white, white, black: changes 1, 0, 1 → −2/3."""
    assert score("temporal_smoothness", [alternating_clip(5)]).rewards.item() == pytest.approx(-2 / 3)


def test_smoothness_measure_by_hand():
    """Frame levels 0, 51, 51 → mean |Δ| = (51 + 0)/2 = 25.5 → −25.5/255 = −0.1."""
    frames = torch.tensor([0.0, 51.0, 51.0]).view(3, 1, 1, 1).expand(3, 3, 2, 2)
    assert temporal_smoothness(frames) == pytest.approx(-0.1)


def jpeg_bits_per_pixel(frame: np.ndarray) -> float:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
    return 8 * len(buffer.getvalue()) / (frame.shape[0] * frame.shape[1])


def test_jpeg_compressibility_is_minus_mean_bits_per_pixel():
    """Two different 64x64 frames, each JPEG-encoded with PIL at quality 95 here: reward = −mean(bits/pixel)."""
    rng = np.random.default_rng(1)
    frames = np.stack([np.full((64, 64, 3), 90, dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)])
    expected = -(jpeg_bits_per_pixel(frames[0]) + jpeg_bits_per_pixel(frames[1])) / 2
    measured = jpeg_compressibility(torch.from_numpy(frames).permute(0, 3, 1, 2).float())
    assert measured == pytest.approx(expected)


def test_flat_frames_compress_better_than_noise():
    """A flat 64x64 frame needs far fewer bits than uniform noise, so it scores higher (less negative)."""
    flat, noisy = score("jpeg_compressibility", [constant_clip(100, frames=2, height=64, width=64), noise_clip()]).rewards
    assert flat < 0 and noisy < 0
    assert flat > noisy
    assert noisy < 4 * flat  # noise costs several times more bits per pixel


# --------------------------------------------------------------------------------------------------------
# Failures and the registry
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["brightness", "jpeg_compressibility", "temporal_smoothness"])
def test_skip_invalid_turns_unreadable_videos_into_nan(name, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video" * 100)
    missing = tmp_path / "missing.mp4"
    out = score(name, [str(corrupt), constant_clip(51), str(missing)], skip_invalid=True)
    rewards = out.rewards
    assert math.isnan(rewards[0]) and math.isnan(rewards[2]) and math.isfinite(rewards[1])
    assert out.failures == 2
    assert "corrupt.mp4" in out.items[0].error and "no such file" in out.items[2].error
    assert out.items[1].ok


@pytest.mark.parametrize("path", ["corrupt.mp4", "missing.mp4"])
def test_without_skip_invalid_unreadable_videos_raise(path, tmp_path):
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(VideoDecodeError, match=path):
        score("brightness", [constant_clip(51), str(tmp_path / path)])


def test_sanity_rewards_need_one_prompt_per_video():
    model = reward.build_reward({"name": "brightness"})
    with pytest.raises(ValueError, match="got 2 videos and 1 prompts"):
        model.score([constant_clip(1), constant_clip(2)], ["a"])


def test_registry_builds_the_sanity_rewards():
    for name in ("brightness", "jpeg_compressibility", "temporal_smoothness"):
        assert name in reward.registered_rewards()
        model = reward.build_reward({"name": name})
        assert isinstance(model, reward.RewardModel)
        assert (model.name, model.skip_invalid, model.spec) == (name, False, SANITY_SPEC)
    assert reward.build_reward({"name": "brightness", "skip_invalid": True}).skip_invalid is True


def test_registry_rejects_unknown_options_and_names():
    with pytest.raises(ConfigError, match=r"does not take options \['fps'\]"):
        reward.build_reward({"name": "brightness", "fps": 8})
    with pytest.raises(ConfigError, match="unknown reward model 'brightnes'"):
        reward.build_reward({"name": "brightnes"})
    with pytest.raises(ConfigError, match="unknown reward model None"):
        reward.build_reward({})


@pytest.mark.parametrize("overlap", [True, False])
def test_scoring_executor_returns_results_and_raises_errors_at_result(overlap):
    with scoring_executor(overlap) as executor:
        done = executor.submit(lambda a, b: a + b, 2, b=3)
        failed = executor.submit(lambda: 1 / 0)
    assert done.result() == 5
    with pytest.raises(ZeroDivisionError):
        failed.result()
