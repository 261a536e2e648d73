"""The comparison statistics against closed forms: the bootstrap interval of equal deltas is that point, and for
many normal deltas it is mean ± 1.96·sd/√n; win rates count ties as half; per-prompt means skip failed seeds;
the reward-hacking rule fires on a constructed case and stays quiet on clean ones."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.paired_stats import PairedDelta, bootstrap_interval, hacked_metrics, paired_delta, prompt_means, win_rate


@pytest.mark.parametrize("value", [0.25, -0.1, 3.0])
def test_equal_deltas_give_a_point_interval(value):
    """Every resample of P equal deltas has mean equal to that delta, so both quantiles are the delta."""
    low, high = bootstrap_interval(np.full(17, value), resamples=500, seed=3)
    assert low == pytest.approx(value, abs=1e-15) and high == pytest.approx(value, abs=1e-15)
    result = paired_delta(np.arange(17.0), np.arange(17.0) + value, resamples=500)
    assert (result.mean, result.low, result.high) == pytest.approx((value, value, value), abs=1e-12)
    assert result.win_rate == (1.0 if value > 0 else 0.0) and result.prompts == 17


def test_many_normal_deltas_match_the_normal_interval():
    """For n = 4000 deltas the bootstrap distribution of the mean is normal with sd = s/√n (s with ddof 0, what
    resampling the empirical distribution gives), so the 95% percentile interval is mean ± 1.96·s/√n; the
    bootstrap's own Monte Carlo error (10,000 resamples) stays well within 4% of the half-width."""
    deltas = np.random.default_rng(7).normal(0.3, 2.0, size=4000)
    half_width = 1.959964 * deltas.std() / math.sqrt(len(deltas))
    low, high = bootstrap_interval(deltas, resamples=10_000, seed=0)
    assert low == pytest.approx(deltas.mean() - half_width, abs=0.04 * half_width)
    assert high == pytest.approx(deltas.mean() + half_width, abs=0.04 * half_width)


def test_the_interval_is_reproducible_and_depends_on_the_seed_only():
    deltas = np.random.default_rng(1).normal(size=40)
    assert bootstrap_interval(deltas, seed=5) == bootstrap_interval(deltas.copy(), seed=5)
    assert bootstrap_interval(deltas, seed=5) != bootstrap_interval(deltas, seed=6)


def test_resampling_in_blocks_equals_one_draw(monkeypatch):
    """Large suites are resampled in blocks to bound memory; the blocks draw the same numbers as one array."""
    deltas = np.random.default_rng(2).normal(size=50)
    whole = bootstrap_interval(deltas, resamples=300, seed=9)
    monkeypatch.setattr("benchmarks.paired_stats._BLOCK_ELEMENTS", 50 * 7)  # 7 resamples per block
    assert bootstrap_interval(deltas, resamples=300, seed=9) == pytest.approx(whole, abs=0)


def test_win_rate_counts_a_tie_as_half():
    # tuned beats base on prompts 0 and 3, ties on 1, loses on 2: (1 + 0.5 + 0 + 1) / 4
    assert win_rate(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 1.0, 5.0])) == 0.625


def test_prompt_means_skip_failed_seeds_and_pairs_skip_missing_prompts():
    means = prompt_means(np.array([[1.0, 3.0], [math.nan, 2.0], [math.nan, math.nan], [4.0, 4.0]]))
    np.testing.assert_array_equal(means, [2.0, 2.0, math.nan, 4.0])
    result = paired_delta(means, np.array([3.0, math.nan, 1.0, 5.0]), resamples=200)
    assert result.prompts == 2 and result.mean == 1.0  # prompts 0 and 3: deltas 1 and 1
    assert paired_delta(np.array([math.nan]), np.array([1.0])) is None


@pytest.mark.parametrize("bad", [np.array([]), np.array([1.0, math.nan]), np.ones((2, 2))])
def test_bad_deltas_are_refused(bad):
    with pytest.raises(ValueError, match="non-empty 1-D array of finite deltas"):
        bootstrap_interval(bad)


def _delta(low: float, high: float) -> PairedDelta:
    return PairedDelta(mean=(low + high) / 2, low=low, high=high, win_rate=0.5, prompts=10)


def test_hacking_fires_when_the_training_reward_rose_and_a_held_out_metric_fell():
    deltas = {"descore": _delta(0.1, 0.4), "aesthetic_quality": _delta(-0.05, -0.01), "imaging_quality": _delta(-0.02, 0.03),
              "dynamic_degree": _delta(-0.3, -0.1)}
    assert hacked_metrics(deltas, trained_on="descore") == ["aesthetic_quality", "dynamic_degree"]


@pytest.mark.parametrize(("deltas", "why"), [
    ({"descore": _delta(0.1, 0.4), "aesthetic_quality": _delta(-0.05, 0.01)}, "held-out interval reaches 0"),
    ({"descore": _delta(-0.01, 0.4), "aesthetic_quality": _delta(-0.05, -0.01)}, "training reward did not rise"),
    ({"descore": _delta(0.1, 0.4), "aesthetic_quality": None}, "held-out metric without values"),
    ({"other": _delta(0.1, 0.4), "aesthetic_quality": _delta(-0.05, -0.01)}, "training reward not measured"),
])
def test_hacking_stays_quiet_on_clean_cases(deltas, why):
    assert hacked_metrics(deltas, trained_on="descore") == [], why


def test_hacking_from_constructed_per_prompt_values():
    """End to end through paired_delta: the trained reward rises by 1 on every prompt (± noise), a held-out
    metric drops by 0.5 on every prompt, another one only moves by noise around 0."""
    generator = np.random.default_rng(0)
    base = {name: generator.normal(size=30) for name in ("trained", "fell", "flat")}
    tuned = {"trained": base["trained"] + 1 + 0.1 * generator.normal(size=30),
             "fell": base["fell"] - 0.5 + 0.1 * generator.normal(size=30),
             "flat": base["flat"] + 0.1 * generator.normal(size=30) - 0.1 * generator.normal(size=30)}
    deltas = {name: paired_delta(base[name], tuned[name], resamples=2000) for name in base}
    assert deltas["trained"].rose and deltas["fell"].fell and not (deltas["flat"].rose or deltas["flat"].fell)
    assert hacked_metrics(deltas, trained_on="trained") == ["fell"]
    clean = deltas | {"fell": deltas["flat"]}
    assert hacked_metrics(clean, trained_on="trained") == []
