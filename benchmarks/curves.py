"""Training curves for the terminal and for a PNG: a unicode sparkline per curve, and one plot per curve.

A curve is a list of ``(step, value)`` points, read back from what a run wrote (so a resumed or finished run
still shows its whole curve). NaN marks a step without a value (e.g. a GRPO step whose rewards all failed).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from reward.errors import DataError

BARS = "▁▂▃▄▅▆▇█"
Curve = list[tuple[int, float]]


def sparkline(values: Sequence[float], *, width: int = 60) -> str:
    """One bar per value (or per bucket mean when there are more than ``width``), from the lowest finite value
    (▁) to the highest (█); a flat curve is all ▁ and a NaN is a space."""
    buckets = _buckets(list(values), width)
    finite = [value for value in buckets if math.isfinite(value)]
    if not finite:
        return " " * len(buckets)
    low, high = min(finite), max(finite)
    scale = (len(BARS) - 1) / (high - low) if high > low else 0.0
    return "".join(BARS[round((value - low) * scale)] if math.isfinite(value) else " " for value in buckets)


def _buckets(values: list[float], width: int) -> list[float]:
    """``values`` averaged over consecutive runs of ``ceil(len / width)`` (NaNs left out; all-NaN stays NaN)."""
    size = max(1, math.ceil(len(values) / width))
    means = []
    for start in range(0, len(values), size):
        finite = [value for value in values[start : start + size] if math.isfinite(value)]
        means.append(sum(finite) / len(finite) if finite else math.nan)
    return means


def curve_line(label: str, curve: Curve, *, digits: int = 4) -> str:
    """``label  sparkline  step a x -> step b y (min m, max M)`` (or ``label  no steps recorded``)."""
    if not curve:
        return f"{label}  no steps recorded"
    values = [value for _, value in curve]
    finite = [value for value in values if math.isfinite(value)]
    (first_step, first), (last_step, last) = curve[0], curve[-1]
    extremes = f" (min {min(finite):.{digits}f}, max {max(finite):.{digits}f})" if finite else ""
    ends = f"step {first_step} {first:.{digits}f} -> step {last_step} {last:.{digits}f}"
    return f"{label}  {sparkline(values)}  {ends}{extremes}"


def grpo_reward_curve(rollouts: Path) -> Curve:
    """Mean reward per step from a GRPO run's ``rollouts.jsonl`` (failed rewards, stored as null, left out) —
    the ``reward/total/mean`` the run logged. Resume cuts that log back to the checkpoint, so it holds each
    step once."""
    rewards: dict[int, list[float]] = defaultdict(list)
    with rollouts.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
                step, reward = int(record["step"]), record["reward"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise DataError(f"{rollouts}:{number}: not a rollout record ({error})") from error
            rewards[step] += [] if reward is None else [float(reward)]
    return [(step, sum(values) / len(values) if values else math.nan) for step, values in sorted(rewards.items())]


def plot_curves(path: Path, curves: Mapping[str, Curve]) -> Path:
    """One panel per curve, side by side, written as a PNG. Uses matplotlib's object API with the Agg canvas,
    so no GUI backend is touched and nothing global (pyplot state) changes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2 * len(curves), 3.2), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, (label, curve) in zip(figure.subplots(1, len(curves), squeeze=False)[0], curves.items()):
        axes.plot([step for step, _ in curve], [value for _, value in curve], marker=".", linewidth=1.2)
        axes.set_title(label, fontsize=10)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
    figure.savefig(path, dpi=110)
    return path
