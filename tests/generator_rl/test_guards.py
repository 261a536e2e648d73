"""The pure pieces of the reward-hacking guards: frame statistics on hand-made frames, the noise band and the
alert rule on constructed numbers, and the reference win rate with ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from generator_rl.evaluation import metric_directions, summarize
from generator_rl.guards import (
    STATISTICS, Direction, alerting_guards, frame_statistics, noise_band, reference_win_rate, worsened,
)


def _frames() -> torch.Tensor:
    """Two frames of 1 x 2 pixels (T, 3, H, W):
    frame 0: a = red (1, 0, 0), b = black (0, 0, 0); frame 1: a = grey (.5, .5, .5), b = (.2, .1, 0)."""
    pixels = [[(1.0, 0.0, 0.0), (0.0, 0.0, 0.0)], [(0.5, 0.5, 0.5), (0.2, 0.1, 0.0)]]
    return torch.tensor(pixels, dtype=torch.float64).permute(0, 2, 1).unsqueeze(2)  # (2, 3, 1, 2)


def test_statistics_of_hand_made_frames():
    """brightness: (1 + 1.8) / 12 values. saturation (max-min)/max: 1, 0 (black), 0 (grey), 1 -> 0.5.
    luma .299R + .587G + .114B: .299, 0 | .5, .1185. contrast = mean of per-frame population stds:
    (.1495 + .19075) / 2. dark (luma < .1): one pixel of four. frame-difference energy: squared changes
    .25, .25, .25 (a) and .04, .01, 0 (b) over 6 values."""
    stats = frame_statistics(_frames(), list(STATISTICS))
    expected = {"brightness": 2.8 / 12, "saturation": 0.5, "contrast": (0.1495 + 0.19075) / 2,
                "dark_pixel_fraction": 0.25, "frame_difference_energy": 0.8 / 6}
    assert stats == pytest.approx(expected, abs=1e-6)
    assert math.isnan(frame_statistics(_frames()[:1], ["frame_difference_energy"])["frame_difference_energy"])


def test_noise_band_is_sigma_standard_errors_of_the_baseline_mean():
    """[1, 2, 3, 4, NaN]: mean 2.5, sample std sqrt(5/3), n = 4 -> half width 2 * sqrt(5/3) / 2 = 1.29099."""
    band = noise_band([1.0, 2.0, 3.0, 4.0, math.nan], sigma=2.0)
    assert band.center == 2.5 and band.half_width == pytest.approx(math.sqrt(5 / 3))
    assert [band.movement(value) for value in (3.8, 3.7, 1.3, 1.2, math.nan)] == [1, 0, 0, -1, 0]
    assert noise_band([7.0, math.nan], sigma=2.0).movement(1e9) == 0  # one value: no noise estimate, no move


def test_alert_rule_needs_a_rise_of_the_training_reward_and_a_guard_moving_the_wrong_way():
    guards = {"aesthetic": (-1, Direction.HIGHER_IS_BETTER), "dark": (1, Direction.LOWER_IS_BETTER),
              "saturation": (1, Direction.EITHER_WAY), "flat": (0, Direction.EITHER_WAY)}
    assert alerting_guards(1, guards) == ["aesthetic", "dark", "saturation"]
    assert alerting_guards(1, {"aesthetic": (0, Direction.HIGHER_IS_BETTER)}) == []  # rise + flat
    assert alerting_guards(1, {"aesthetic": (1, Direction.HIGHER_IS_BETTER)}) == []  # rise + rise
    assert alerting_guards(-1, guards) == [] and alerting_guards(0, guards) == []  # no gain to explain away
    assert not worsened(-1, Direction.LOWER_IS_BETTER) and worsened(-1, Direction.EITHER_WAY)


def test_reference_win_rate_counts_ties_half_and_skips_unscored_videos():
    """Pairs (reference, policy): (1, 2) lost, (2, 2) tie, (3, 1) won, (NaN, 5) skipped -> 1.5 / 3."""
    assert reference_win_rate(np.array([1.0, 2.0, 3.0, math.nan]), np.array([2.0, 2.0, 1.0, 5.0])) == 0.5
    assert math.isnan(reference_win_rate(np.array([math.nan]), np.array([1.0])))


def test_summary_of_constructed_evaluations():
    """Training reward baseline [1, 2, 3, 4] (band 2.5 +- 1.29) against [4, 4, 4, 4]: rose. A guard falling
    from [1, 1, 1, 1.2] to [0, 0, 0, 1.3] alerts (the reference wins 3 of 4); a guard that did not move, or
    the same numbers with the training reward flat, do not."""
    directions = metric_directions([], ["falls", "holds"], ["dark_pixel_fraction"])
    baseline = {"reward/total": [1, 2, 3, 4], "guard/falls": [1, 1, 1, 1.2], "guard/holds": [1, 1, 1, 1],
                "stat/dark_pixel_fraction": [0.1, 0.2, 0.1, 0.2]}
    current = {"reward/total": [4, 4, 4, 4], "guard/falls": [0, 0, 0, 1.3], "guard/holds": [1, 1, 1, 1],
               "stat/dark_pixel_fraction": [0.1, 0.1, 0.1, 0.1]}
    summary = summarize(baseline, current, directions=directions, sigma=2.0)
    assert summary.alerts == ["guard/falls"]
    assert summary.win_rates == {"guard/falls": 0.75, "guard/holds": 0.5}
    assert summary.means["guard/falls"] == pytest.approx(0.325)
    assert summary.metrics()["eval/alert"] == 1.0 and summary.metrics()["eval/win_rate/falls"] == 0.75
    flat = summarize(baseline, current | {"reward/total": [2, 3, 2, 3]}, directions=directions, sigma=2.0)
    assert flat.alerts == [] and flat.metrics()["eval/alert"] == 0.0
