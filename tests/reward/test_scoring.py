"""The reward-model interface: DeScore with and without CoT, batches equal singles, files equal frames,
and the registry resolves config entries."""

from __future__ import annotations

import math
from pathlib import Path

import decord
import pytest
import torch

from reward import build_reward, load, registered_rewards
from reward.base import RewardModel
from reward.errors import ConfigError
from reward.generation import GenerationSettings
from reward.scoring import DeScoreReward
from reward.video import VideoFrames

from .helpers import small_clip, truncated_clip


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("score-clips")
    return [small_clip(root / f"{i}.mp4", seed=i, frames=6 + 2 * i) for i in range(3)]


PROMPTS = ["a red square moving left", "a cat", "a long prompt about a red square that glides to the left"]


@pytest.mark.parametrize("use_cot", [False, True], ids=["no-cot", "cot"])
def test_batch_scores_equal_single_scores(checkpoint, clips, use_cot):
    """Padding (right for scoring, left for generation) must not change any item's reward or CoT."""
    settings = GenerationSettings(max_new_tokens=6)
    batched = DeScoreReward(checkpoint, use_cot=use_cot, batch_size=3, generation=settings, device="cpu")
    single = DeScoreReward(checkpoint, use_cot=use_cot, batch_size=1, generation=settings, device="cpu")
    together = batched.score(clips, PROMPTS)
    alone = single.score(clips, PROMPTS)
    torch.testing.assert_close(together.rewards, alone.rewards, rtol=1e-5, atol=1e-5)
    assert [item.cot for item in together.items] == [item.cot for item in alone.items]
    if use_cot:
        assert all(isinstance(item.cot, str) and item.parse_ok is False for item in together.items)
        assert together.parse_failure_rate == 1.0
        assert all("<Reward>" not in item.cot for item in together.items)
    else:
        assert all(item.cot is None and item.parse_ok is None for item in together.items)


def test_in_memory_frames_score_like_the_file(checkpoint, clips):
    reader = decord.VideoReader(str(clips[1]))
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    scorer = DeScoreReward(checkpoint, use_cot=False, device="cpu")
    from_file = scorer.score([clips[1]], PROMPTS[:1]).rewards
    from_memory = scorer.score([VideoFrames(frames, fps=reader.get_avg_fps())], PROMPTS[:1]).rewards
    from_float = scorer.score([VideoFrames(torch.from_numpy(frames).permute(0, 3, 1, 2) / 255.0, fps=4.0)], PROMPTS[:1]).rewards
    assert torch.equal(from_file, from_memory) and torch.equal(from_file, from_float)


def test_pre_written_cots_are_scored_and_parsed(checkpoint, clips):
    answer = '<answer>```json\n{"dimensional_scores": {"subject": 2, "dynamics": 1, "camera": "N/A", ' \
             '"environment": 2, "style": 0}, "overall_score": 3.5}\n```</answer>'
    scorer = DeScoreReward(checkpoint, use_cot=True, device="cpu")
    output = scorer.score(clips[:2], PROMPTS[:2], cots=["A red square. " + answer, "nothing parseable"])
    first, second = output.items
    assert first.parse_ok and first.sub_scores["dynamics"] == 1 and first.overall_score == 3.5
    assert second.parse_ok is False and "no <answer>" in second.parse_error
    assert math.isfinite(second.reward)  # the head still scores an unparseable CoT; the flag reports it
    assert output.parse_failure_rate == 0.5


def test_unreadable_video_raises_or_is_reported(checkpoint, clips, tmp_path):
    broken = truncated_clip(tmp_path / "broken.mp4")
    with pytest.raises(ValueError, match="broken.mp4"):
        DeScoreReward(checkpoint, use_cot=False, device="cpu").score([clips[0], broken], PROMPTS[:2])
    output = DeScoreReward(checkpoint, use_cot=False, device="cpu", skip_invalid=True).score([clips[0], broken], PROMPTS[:2])
    assert output.items[0].ok and not output.items[1].ok and output.failures == 1
    assert math.isnan(output.rewards[1]) and "broken.mp4" in output.items[1].error


def test_registry_builds_both_descore_modes(checkpoint, clips):
    assert {"descore", "descore_no_cot"} <= set(registered_rewards())
    fast = build_reward({"name": "descore_no_cot", "path": str(checkpoint), "device": "cpu", "batch_size": 2})
    slow = build_reward({"name": "descore", "path": str(checkpoint), "device": "cpu", "generation": {"max_new_tokens": 3}})
    assert isinstance(fast, RewardModel) and fast.name == "descore_no_cot" and slow.name == "descore"
    assert not fast.use_cot and slow.use_cot and slow.generation.max_new_tokens == 3
    expected = DeScoreReward(checkpoint, use_cot=False, device="cpu").score(clips[:1], PROMPTS[:1]).rewards
    assert torch.equal(fast.score(clips[:1], PROMPTS[:1]).rewards, expected)
    assert torch.equal(load(checkpoint, cot=False, device="cpu").score(clips[:1], PROMPTS[:1]).rewards, expected)


def test_registry_rejects_unknown_names_and_options(checkpoint):
    with pytest.raises(ConfigError, match="unknown reward model 'nope'; registered: .*descore"):
        build_reward({"name": "nope"})
    with pytest.raises(ConfigError, match=r"does not take options \['batchsize'\]"):
        build_reward({"name": "descore", "path": str(checkpoint), "batchsize": 2})
