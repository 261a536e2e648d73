"""What ``descore reward score`` prints when it ends: counts, then a table of the rewards (and of the mean
reward per prompt when there are few prompts). Pure functions of the job's :class:`~reward.jobs.ScoreSummary`.

Statistics are over the items that got a reward; ``failures`` counts the others (unreadable video, a reward
model that failed). ``std`` is the sample standard deviation (n − 1 in the denominator), undefined ("-")
below two values; numbers are shown with 4 significant digits.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .jobs import ScoreSummary

PER_PROMPT_LIMIT = 20  # per-prompt means are listed for 2 to this many distinct prompts
PROMPT_WIDTH = 50  # longer prompts are cut in the per-prompt table


@dataclass(frozen=True)
class RewardStats:
    """One reward over the scored items; NaN where a statistic is undefined (no value, or std of one)."""

    name: str
    count: int
    failures: int
    mean: float
    std: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, name: str, rewards: Iterable[float | None]) -> RewardStats:
        """``rewards`` holds None for an item that failed."""
        rewards = list(rewards)
        values = [float(reward) for reward in rewards if reward is not None]
        return cls(
            name=name,
            count=len(values),
            failures=len(rewards) - len(values),
            mean=statistics.fmean(values) if values else math.nan,
            std=statistics.stdev(values) if len(values) > 1 else math.nan,
            minimum=min(values, default=math.nan),
            maximum=max(values, default=math.nan),
        )


@dataclass(frozen=True)
class PromptMean:
    prompt: str
    count: int  # items of this prompt that got a reward
    mean: float  # NaN when none did


def prompt_means(records: Sequence[Mapping[str, Any]]) -> tuple[PromptMean, ...]:
    """Mean reward per prompt, prompts in order of first appearance (records: ``prompt`` and ``reward``)."""
    grouped: dict[str, list[float]] = {}
    for record in records:
        values = grouped.setdefault(record["prompt"], [])
        if record["reward"] is not None:
            values.append(float(record["reward"]))
    return tuple(
        PromptMean(prompt, len(values), statistics.fmean(values) if values else math.nan) for prompt, values in grouped.items()
    )


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns two spaces apart; the first left-aligned, the others right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return [
        "  ".join([cells[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))]).rstrip()
        for cells in (header, *rows)
    ]


def reward_table(stats: Sequence[RewardStats]) -> list[str]:
    rows = [[s.name, str(s.count), *(_number(v) for v in (s.mean, s.std, s.minimum, s.maximum)), str(s.failures)] for s in stats]
    return _table(["reward", "count", "mean", "std", "min", "max", "failures"], rows)


def prompt_table(means: Sequence[PromptMean]) -> list[str]:
    def cut(prompt: str) -> str:
        return prompt if len(prompt) <= PROMPT_WIDTH else prompt[: PROMPT_WIDTH - 3] + "..."

    return _table(["prompt", "count", "mean"], [[cut(m.prompt), str(m.count), _number(m.mean)] for m in means])


def format_score_report(summary: ScoreSummary) -> str:
    """The text ``descore reward score`` prints at the end."""
    lines = [f"scored {summary.scored} video(s), {summary.failed} failed, {summary.skipped_rows} data row(s) skipped"]
    if summary.resumed:
        lines.append(f"{summary.resumed} of them were already in the output from an earlier run and not scored again")
    if not math.isnan(summary.parse_failure_rate):  # CoTs were parsed
        lines.append(f"CoT answer parse failures: {summary.parse_failure_rate:.1%}")
    if summary.truncated:
        lines.append(f"{summary.truncated} CoT(s) hit max_new_tokens before they ended (scored; 'truncated' in the output)")
    if summary.accuracy is not None:
        lines.append(f"pairwise accuracy: {summary.accuracy:.4f} over {summary.decided_pairs} decided pair(s)")
    if summary.rewards:
        lines += ["", *reward_table(summary.rewards)]
    if 2 <= len(summary.prompt_means) <= PER_PROMPT_LIMIT:
        lines += ["", *prompt_table(summary.prompt_means)]
    return "\n".join(lines)
