"""The statistics of a base-vs-tuned comparison: paired bootstrap intervals over prompts, win rates, and the
reward-hacking rule of an ablation. Pure functions over per-prompt numbers; no I/O (``docs/vbench/compare.md``).

Notation: P prompts. Every model samples the same prompts with the same seeds, so a prompt's videos of two
models are paired. A model's value on a prompt is the mean of its per-seed values (seeds are repeated
measurements of one prompt, not independent cases). The unit of resampling is the prompt: a confidence
interval says how much the mean delta would move on another draw of prompts from the same population, which
is the question a prompt suite answers (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13:
the percentile interval).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from generator_rl.guards import Direction, alerting_guards, win_rate

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
_BLOCK_ELEMENTS = 1 << 22  # resampled indices drawn at a time, so memory stays bounded for large suites


@dataclass(frozen=True)
class PairedDelta:
    """Tuned minus base over the prompts both models have a value for; ``low``/``high`` bound the percentile
    bootstrap interval of ``mean`` at ``confidence``; ``win_rate`` counts a tie as half a win."""

    mean: float
    low: float
    high: float
    win_rate: float
    prompts: int
    confidence: float = CONFIDENCE

    @property
    def rose(self) -> bool:
        """The whole interval lies above 0: the tuned model is better on this metric beyond the noise."""
        return self.low > 0

    @property
    def fell(self) -> bool:
        """The whole interval lies below 0."""
        return self.high < 0

    @property
    def movement(self) -> int:
        """+1 rose, −1 fell, 0 the interval holds 0."""
        return 1 if self.rose else -1 if self.fell else 0


def prompt_means(values: Sequence[Sequence[float]]) -> np.ndarray:
    """(P,) mean over each prompt's per-seed values, NaN values left out; NaN where a prompt has none."""
    means = np.full(len(values), math.nan)
    for index, seeds in enumerate(values):
        finite = [value for value in seeds if math.isfinite(value)]
        if finite:
            means[index] = float(np.mean(finite))
    return means


def bootstrap_interval(
    deltas: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``deltas`` (P,): draw P of them with replacement
    ``resamples`` times (numpy's PCG64 seeded with ``seed``, so a report is reproducible), take the mean of each
    draw, and return the (1 − confidence)/2 and (1 + confidence)/2 quantiles of those means (linear
    interpolation between order statistics, numpy's default)."""
    deltas = np.asarray(deltas, dtype=np.float64)
    if deltas.ndim != 1 or len(deltas) == 0 or not np.isfinite(deltas).all():
        raise ValueError(f"bootstrap_interval needs a non-empty 1-D array of finite deltas, got {deltas!r}")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"resamples must be >= 1 and confidence in (0, 1), got {resamples} and {confidence}")
    generator = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // len(deltas))
    means = np.concatenate([
        deltas[generator.integers(0, len(deltas), size=(min(block, resamples - start), len(deltas)))].mean(axis=1)
        for start in range(0, resamples, block)
    ])
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def paired_delta(
    base: np.ndarray, tuned: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
    confidence: float = CONFIDENCE,
) -> PairedDelta | None:
    """The paired comparison of per-prompt means (P,) of two models; prompts where either is NaN are left
    out. None when no prompt has both."""
    base, tuned = np.asarray(base, dtype=np.float64), np.asarray(tuned, dtype=np.float64)
    if base.shape != tuned.shape:
        raise ValueError(f"base and tuned must be per-prompt arrays of one shape, got {base.shape} and {tuned.shape}")
    both = np.isfinite(base) & np.isfinite(tuned)
    if not both.any():
        return None
    deltas = tuned[both] - base[both]
    low, high = bootstrap_interval(deltas, resamples=resamples, seed=seed, confidence=confidence)
    return PairedDelta(mean=float(deltas.mean()), low=low, high=high, win_rate=win_rate(base[both], tuned[both]),
                       prompts=int(both.sum()), confidence=confidence)


def hacked_metrics(deltas: Mapping[str, PairedDelta | None], *, trained_on: str) -> list[str]:
    """The reward-hacking rule of an ablation row (a model trained on the reward ``trained_on``).

    The row is flagged when the training reward rose beyond its interval (its delta's whole interval above
    0) while a held-out metric — any other column — fell beyond its interval (whole interval below 0);
    the held-out metrics that fell are returned, in column order. Nothing is flagged when the training
    reward did not rise (no gain to explain away) or is not among the columns.
    """
    trained = deltas.get(trained_on)
    if trained is None:
        return []
    held_out = {metric: (delta.movement, Direction.HIGHER_IS_BETTER) for metric, delta in deltas.items()
                if metric != trained_on and delta is not None}
    return alerting_guards(trained.movement, held_out)  # the training-time guards' rule (docs/guards.md)
