"""Exact values of the stage-2 rollout rewards (reward/rollout_rewards.py) on hand-written CoTs."""

from __future__ import annotations

import json

import pytest

from reward.errors import ConfigError
from reward.rollout_rewards import (
    RolloutRewardSettings,
    format_reward,
    length_reward,
    official_ground_truth,
    quality_reward,
    rollout_reward,
)

TRUTH = {"subject": 2, "dynamics": 1, "camera": "N/A", "environment": 2, "style": 0}


def cot(scores: object, *, reasoning: str = "The cat walks left; the light is warm.\n", fence: bool = True) -> str:
    body = json.dumps({"dimensional_scores": scores, "overall_score": 3.5})
    block = f"```json\n{body}\n```" if fence else body
    return f"{reasoning}<answer>\n{block}\n</answer>"


def test_format_reward_needs_parseable_json_with_dimensional_scores():
    assert format_reward(cot(TRUTH)) == 1.0
    assert format_reward(cot(TRUTH, fence=False)) == 1.0
    assert format_reward(cot({})) == 1.0  # the official check only asks for the key
    assert format_reward("reasoning <answer>{\"dimensional_scores\": {\"subject\": 2,}}</answer>") == 0.0  # bad JSON
    assert format_reward("reasoning <answer>{\"overall_score\": 4}</answer>") == 0.0  # key missing
    assert format_reward("reasoning <answer>[1, 2]</answer>") == 0.0  # not an object
    assert format_reward("reasoning only, cut off before the answer") == 0.0  # truncated
    assert format_reward(cot(TRUTH)[:-5]) == 0.0  # truncated inside the closing tag


def test_strict_format_also_needs_reasoning_before_the_answer():
    assert format_reward(cot(TRUTH), strict=True) == 1.0
    assert format_reward(cot(TRUTH, reasoning=""), strict=True) == 0.0
    assert format_reward(cot(TRUTH, reasoning=" \n\t"), strict=True) == 0.0
    assert format_reward(cot(TRUTH, reasoning=""), strict=False) == 1.0


def test_quality_reward_counts_exact_matches():
    assert quality_reward(cot(TRUTH), TRUTH) == 1.0
    three_right = {**TRUTH, "dynamics": 2, "style": 1}
    assert quality_reward(cot(three_right), TRUTH) == 3 / 5
    # types matter as in the official comparison: "2" is not 2, N/A must be the string, true is not 1
    strings = {"subject": "2", "dynamics": 1, "camera": "N/A", "environment": 2.0, "style": False}
    assert quality_reward(cot(strings), TRUTH) == 3 / 5  # dynamics, camera, environment (2.0 == 2)
    assert quality_reward(cot({**TRUTH, "camera": None}), TRUTH) == 4 / 5
    assert quality_reward(cot({**TRUTH, "dynamics": True}), {**TRUTH}) == 4 / 5
    # a missing key is wrong, extra predicted keys do not count
    partial = {key: value for key, value in TRUTH.items() if key != "style"}
    assert quality_reward(cot({**partial, "lighting": 2}), TRUTH) == 4 / 5
    # N_total is the ground truth's key count
    assert quality_reward(cot(TRUTH), {"subject": 2, "camera": "N/A"}) == 1.0
    assert quality_reward(cot(TRUTH), {"subject": 1, "camera": "N/A"}) == 0.5


def test_quality_reward_is_zero_when_either_side_does_not_parse():
    assert quality_reward("no answer at all", TRUTH) == 0.0
    assert quality_reward("x <answer>{broken</answer>", TRUTH) == 0.0
    assert quality_reward("x <answer>{\"dimensional_scores\": [2, 1]}</answer>", TRUTH) == 0.0
    assert quality_reward(cot(TRUTH), None) == 0.0
    assert quality_reward(cot(TRUTH), {}) == 0.0


@pytest.mark.parametrize(
    ("chars", "expected"),
    [(0, 0.0), (499, 0.0), (500, 0.2), (999, 0.2), (1000, 0.4), (1499, 0.4), (1500, 0.6), (1999, 0.6), (2000, 1.0),
     (9000, 1.0)],
)
def test_official_length_reward_steps_on_characters(chars, expected):
    assert length_reward("x" * chars, num_tokens=10_000, form="official_chars") == expected


@pytest.mark.parametrize(
    ("tokens", "expected"), [(0, 0.0), (499, 0.0), (500, 0.0), (800, 0.2), (1250, 0.5), (1999, 1499 / 1500),
                             (2000, 1.0), (4096, 1.0)],
)
def test_paper_length_reward_is_linear_in_tokens(tokens, expected):
    assert length_reward("x" * 5000, num_tokens=tokens, form="paper_tokens") == pytest.approx(expected, abs=1e-15)


def test_length_bounds_move_both_forms():
    assert length_reward("", num_tokens=6, form="paper_tokens", minimum=2, maximum=10) == 0.5
    # steps at 10, 40, 70, 100 characters
    values = [length_reward("x" * n, num_tokens=0, form="official_chars", minimum=10, maximum=100)
              for n in (9, 10, 39, 40, 69, 70, 99, 100)]
    assert values == [0.0, 0.2, 0.2, 0.4, 0.4, 0.6, 0.6, 1.0]


def test_composite_reward_weights_the_terms():
    text = cot({**TRUTH, "style": 2}, reasoning="r" * 1200)  # 4/5 right, format ok, 1000 <= chars < 1500
    result = rollout_reward(text, num_tokens=300, truth=TRUTH, settings=RolloutRewardSettings())
    assert (result.quality, result.format, result.length, result.parsed) == (0.8, 1.0, 0.4, True)
    assert result.total == 0.7 * 0.8 + 0.1 * 1.0 + 0.2 * 0.4

    paper = RolloutRewardSettings(length_form="paper_tokens", quality_weight=1.0, format_weight=0.5, length_weight=2.0)
    result = rollout_reward(text, num_tokens=1250, truth=TRUTH, settings=paper)
    assert result.total == 1.0 * 0.8 + 0.5 * 1.0 + 2.0 * 0.5


def test_truncated_cot_earns_only_its_length():
    text = "r" * 2100 + "<answer>\n```json\n{\"dimensional_scores\": {\"subject\": 2"
    result = rollout_reward(text, num_tokens=4096, truth=TRUTH, settings=RolloutRewardSettings())
    assert (result.quality, result.format, result.length, result.parsed) == (0.0, 0.0, 1.0, False)
    assert result.total == 0.2


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="length_form must be one of"):
        RolloutRewardSettings(length_form="words")
    with pytest.raises(ConfigError, match="weights must be finite and >= 0"):
        RolloutRewardSettings(quality_weight=-1.0)
    with pytest.raises(ConfigError, match="need 0 <= length_min < length_max"):
        RolloutRewardSettings(length_min=2000, length_max=500)


def test_official_ground_truth():
    first, second = TRUTH, {**TRUTH, "subject": 0}
    payload = {"gsb_result": "Video 2 is better", "video_1_scores": first, "video_2_scores": second}
    truth = official_ground_truth(f"<answer>\n```json\n{json.dumps(payload)}\n```\n</answer>")
    assert (truth.label, truth.scores_a, truth.scores_b) == (-1, first, second)
    tie = official_ground_truth(f"<answer>{json.dumps({**payload, 'gsb_result': 'same'})}</answer>")
    assert tie.label == 0
    with pytest.raises(ValueError, match=r"lacks \['gsb_result'\]"):
        official_ground_truth("<answer>{\"video_1_scores\": {\"a\": 1}, \"video_2_scores\": {\"a\": 1}}</answer>")
    with pytest.raises(ValueError, match="must be non-empty objects"):
        official_ground_truth(f"<answer>{json.dumps({**payload, 'video_1_scores': []})}</answer>")
