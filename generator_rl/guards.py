"""Reward-hacking guards: cheap frame statistics, the noise band of a held-out metric, the alert rule and the
reference win rate. Pure functions over frames and per-video numbers; no I/O (docs/guards.md).

Notation: V held-out videos (prompts × seeds), each sampled from the same initial noise at every evaluation,
so video v of the baseline (the frozen reference) and video v of the policy are paired. Frames of one video
are (T, 3, H, W) floats in [0, 1], as ``WanPolicy.decode`` returns them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch

from reward import sanity

# ITU-R BT.601 luma weights of R, G, B (the Y of JPEG's YCbCr and of PIL's "L" mode).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# A pixel is dark when its luma is below this (in [0, 1]; 0.1 ≈ 25/255, the bottom tenth of the range).
DARK_LUMA = 0.1


def luma(frames: torch.Tensor) -> torch.Tensor:
    """(T, H, W) BT.601 luma of (T, 3, H, W) RGB frames in [0, 1]."""
    weights = torch.tensor(LUMA_WEIGHTS, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    return (frames * weights).sum(dim=1)


def brightness(frames: torch.Tensor) -> float:
    """Mean pixel value in [0, 1] (the ``brightness`` sanity reward's measure)."""
    return sanity.brightness(frames * 255.0)


def saturation(frames: torch.Tensor) -> float:
    """Mean HSV saturation (max − min) / max over pixels, 0 for black pixels: over-saturated, cartoonish
    videos (a common way a policy games a reward) push it up."""
    high, low = frames.amax(dim=1), frames.amin(dim=1)
    return float(torch.where(high > 0, (high - low) / high.clamp_min(1e-12), torch.zeros_like(high)).mean())


def contrast(frames: torch.Tensor) -> float:
    """RMS contrast: the standard deviation of luma within a frame (population std), averaged over frames."""
    return float(luma(frames).flatten(1).std(dim=1, unbiased=False).mean())


def dark_pixel_fraction(frames: torch.Tensor) -> float:
    """Share of pixels whose luma is below :data:`DARK_LUMA`: a policy that blacks out backgrounds raises it
    (UniRL PR 407: 0.45 → 0.93 under an OCR reward, https://github.com/Tencent-Hunyuan/UniRL/pull/407)."""
    return float((luma(frames) < DARK_LUMA).float().mean())


def frame_difference_energy(frames: torch.Tensor) -> float:
    """Mean squared change between consecutive frames, per pixel and channel: 0 for a frozen video, large
    for flicker or noise. NaN for a single frame (there is no change to measure)."""
    if frames.shape[0] < 2:
        return math.nan
    return float(((frames[1:] - frames[:-1]) ** 2).mean())


class Direction(str, Enum):
    """Which way a metric gets worse: a reward is better higher; some statistics have no better side."""

    HIGHER_IS_BETTER = "higher_is_better"
    LOWER_IS_BETTER = "lower_is_better"
    EITHER_WAY = "either_way"  # moving beyond the band in either direction counts as getting worse


FrameStatistic = Callable[[torch.Tensor], float]
STATISTICS: dict[str, tuple[FrameStatistic, Direction]] = {
    "brightness": (brightness, Direction.EITHER_WAY),
    "saturation": (saturation, Direction.EITHER_WAY),
    "contrast": (contrast, Direction.EITHER_WAY),
    "dark_pixel_fraction": (dark_pixel_fraction, Direction.LOWER_IS_BETTER),
    "frame_difference_energy": (frame_difference_energy, Direction.EITHER_WAY),
}


def frame_statistics(frames: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """The named statistics of one video's frames (T, 3, H, W) in [0, 1]."""
    frames = frames.float()
    return {name: STATISTICS[name][0](frames) for name in names}


@dataclass(frozen=True)
class NoiseBand:
    """Baseline mean ± ``half_width``; a held-out mean outside it moved beyond the noise."""

    center: float
    half_width: float

    @property
    def low(self) -> float:
        return self.center - self.half_width

    @property
    def high(self) -> float:
        return self.center + self.half_width

    def movement(self, value: float) -> int:
        """+1 above the band, −1 below it, 0 inside it or when ``value`` is NaN."""
        if not math.isfinite(value):
            return 0
        return 1 if value > self.high else -1 if value < self.low else 0


def noise_band(baseline: Sequence[float] | np.ndarray, *, sigma: float) -> NoiseBand:
    """mean ± sigma · s / √n over the n finite per-video baseline values (s: sample standard deviation,
    n − 1 in the denominator): ``sigma`` standard errors of the baseline mean. With fewer than two finite
    values the noise cannot be estimated and the band is infinite (nothing moves beyond it)."""
    values = np.asarray(baseline, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return NoiseBand(float(values.mean()) if len(values) else math.nan, math.inf)
    return NoiseBand(float(values.mean()), sigma * float(values.std(ddof=1)) / math.sqrt(len(values)))


def worsened(movement: int, direction: Direction) -> bool:
    """Whether a move beyond the band (``movement`` ±1) is a move in the metric's worse direction."""
    if direction is Direction.HIGHER_IS_BETTER:
        return movement < 0
    if direction is Direction.LOWER_IS_BETTER:
        return movement > 0
    return movement != 0


def alerting_guards(training: int, guards: Mapping[str, tuple[int, Direction]]) -> list[str]:
    """The alert rule: when the training reward rose beyond its band (``training`` = +1), the guards that
    moved beyond theirs in their worse direction, in the order given; none otherwise (a falling or flat
    training reward has no gain to explain away). ``guards`` maps a name to (movement, direction)."""
    if training <= 0:
        return []
    return [name for name, (movement, direction) in guards.items() if worsened(movement, direction)]


def win_rate(base: np.ndarray, tuned: np.ndarray) -> float:
    """Share of paired items where ``tuned``'s value beats ``base``'s; an exact tie counts one half."""
    base, tuned = np.asarray(base, dtype=np.float64), np.asarray(tuned, dtype=np.float64)
    return float(np.mean((tuned > base) + 0.5 * (tuned == base)))


def reference_win_rate(reference: np.ndarray, policy: np.ndarray) -> float:
    """Share of held-out videos where the reference's video beats the policy's video of the same (prompt,
    seed) under a guard, ties counting one half, over the videos both scored; NaN when there are none. 0.5:
    no change; towards 1: the policy got worse under the guard."""
    reference, policy = np.asarray(reference, dtype=np.float64), np.asarray(policy, dtype=np.float64)
    both = np.isfinite(reference) & np.isfinite(policy)
    return win_rate(policy[both], reference[both]) if both.any() else math.nan
