"""The summary `descore reward score` prints: statistics worked out by hand, and the exact table text."""

from __future__ import annotations

import math

import pytest

from reward.jobs import ScoreSummary
from reward.score_report import PER_PROMPT_LIMIT, PromptMean, RewardStats, format_score_report, prompt_means

RECORDS = [
    {"prompt": "a cat", "reward": -0.5},
    {"prompt": "a dog", "reward": 1.0},
    {"prompt": "a cat", "reward": 0.25},
    {"prompt": "a dog", "reward": None},  # failed
]


def _summary(records, **overrides) -> ScoreSummary:
    failed = sum(record["reward"] is None for record in records)
    values = {
        "scored": len(records) - failed, "failed": failed, "skipped_rows": 0, "parse_failure_rate": math.nan,
        "accuracy": None, "decided_pairs": 0,
        "rewards": (RewardStats.of("temporal_smoothness", [record["reward"] for record in records]),),
        "prompt_means": prompt_means(records),
    }
    return ScoreSummary(**values | overrides)


def test_statistics_by_hand():
    """Values −0.5, 1.0, 0.25 (one failure): mean 0.75/3 = 0.25; deviations −0.75, 0.75, 0 → sample variance
    (0.5625 + 0.5625)/2 = 0.5625, std 0.75. Per prompt: a cat (−0.5 + 0.25)/2 = −0.125; a dog 1.0 (one value)."""
    stats = RewardStats.of("r", [record["reward"] for record in RECORDS])
    assert stats == RewardStats("r", count=3, failures=1, mean=0.25, std=0.75, minimum=-0.5, maximum=1.0)
    assert prompt_means(RECORDS) == (PromptMean("a cat", 2, -0.125), PromptMean("a dog", 1, 1.0))
    single, none = RewardStats.of("r", [2.0]), RewardStats.of("r", [None, None])
    assert (single.mean, math.isnan(single.std)) == (2.0, True)
    assert none.count == 0 and none.failures == 2 and all(math.isnan(v) for v in (none.mean, none.std, none.minimum, none.maximum))


def test_the_report_text():
    assert format_score_report(_summary(RECORDS)) == (
        "scored 3 video(s), 1 failed, 0 data row(s) skipped\n"
        "\n"
        "reward               count  mean   std   min  max  failures\n"
        "temporal_smoothness      3  0.25  0.75  -0.5    1         1\n"
        "\n"
        "prompt  count    mean\n"
        "a cat       2  -0.125\n"
        "a dog       1       1"
    )


def test_undefined_values_show_as_dashes_and_long_prompts_are_cut():
    records = [{"prompt": "p" * 60, "reward": 0.123456}, {"prompt": "q", "reward": None}]
    lines = format_score_report(_summary(records, resumed=1, accuracy=0.5, decided_pairs=2)).splitlines()
    assert lines[:3] == ["scored 1 video(s), 1 failed, 0 data row(s) skipped",
                         "1 of them were already in the output from an earlier run and not scored again",
                         "pairwise accuracy: 0.5000 over 2 decided pair(s)"]
    assert lines[5] == "temporal_smoothness      1  0.1235    -  0.1235  0.1235         1"
    assert lines[8] == "p" * 47 + "...      1  0.1235"
    assert lines[9] == "q" + " " * 49 + "      0       -"


@pytest.mark.parametrize(("prompts", "shown"), [(1, False), (2, True), (PER_PROMPT_LIMIT, True), (PER_PROMPT_LIMIT + 1, False)])
def test_per_prompt_means_only_for_a_few_prompts(prompts, shown):
    records = [{"prompt": f"prompt {i}", "reward": float(i)} for i in range(prompts)]
    lines = format_score_report(_summary(records)).splitlines()
    assert (["prompt", "count", "mean"] in [line.split() for line in lines]) is shown
