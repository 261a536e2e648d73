"""Tests for generator_rl/advantages.py against values worked out by hand (plain Python, float64).

The running example has three groups (ids interleaved on purpose):

* group 0: rewards [1, 2, 3] → mean 2, population std √(2/3) = 0.816497
* group 1: rewards [4, 8]    → mean 6, population std 2
* group 2: rewards [5, 5]    → mean 5, population std 0 (no learning signal)

All seven rewards: mean 28/7 = 4, squared deviations 9 + 4 + 1 + 0 + 16 + 1 + 1 = 32, population std
√(32/7) = 2.138090. A_i = (r_i − mean_group) / (scale + 1e-4).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from generator_rl.advantages import group_advantages

EPS = 1e-4
NAN = float("nan")
#                        g0   g1   g2   g0   g1   g2   g0
REWARDS = torch.tensor([1.0, 4.0, 5.0, 2.0, 8.0, 5.0, 3.0])
GROUPS = torch.tensor([0, 1, 2, 0, 1, 2, 0])


def close(actual: torch.Tensor, expected: list[float]) -> None:
    assert actual.dtype == torch.float32
    assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-6, equal_nan=True)


def test_group_mode_divides_by_each_groups_own_std():
    """g0: (−1, 0, 1)/(0.816497 + 1e-4) = ∓1.224595; g1: ∓2/2.0001 = ∓0.999950; g2: 0/(0 + 1e-4) = 0."""
    out = group_advantages(REWARDS, GROUPS, std_mode="group")
    g0 = 1 / (math.sqrt(2 / 3) + EPS)
    g1 = 2 / (2 + EPS)
    close(out.values, [-g0, -g1, 0.0, 0.0, g1, 0.0, g0])
    close(out.values, [-1.224595, -0.999950, 0.0, 0.0, 0.999950, 0.0, 1.224595])
    assert out.zero_std_fraction == pytest.approx(1 / 3)


def test_max_group_mode_divides_every_group_by_the_largest_group_std():
    """Largest group std is 2 (group 1): g0 → (−1, 0, 1)/2.0001 = ∓0.499975, g1 → ∓0.999950, g2 → 0."""
    out = group_advantages(REWARDS, GROUPS, std_mode="max_group")
    scale = 2 + EPS
    close(out.values, [-1 / scale, -2 / scale, 0.0, 0.0, 2 / scale, 0.0, 1 / scale])
    close(out.values, [-0.499975, -0.999950, 0.0, 0.0, 0.999950, 0.0, 0.499975])
    assert out.zero_std_fraction == pytest.approx(1 / 3)


def test_global_mode_divides_by_the_std_of_all_rewards_but_centres_per_group():
    """scale = √(32/7) + 1e-4 = 2.138190: g0 → (−1, 0, 1)/2.138190 = ∓0.467685, g1 → ∓0.935370, g2 → 0."""
    out = group_advantages(REWARDS, GROUPS, std_mode="global")
    scale = math.sqrt(32 / 7) + EPS
    close(out.values, [-1 / scale, -2 / scale, 0.0, 0.0, 2 / scale, 0.0, 1 / scale])
    close(out.values, [-0.467685, -0.935370, 0.0, 0.0, 0.935370, 0.0, 0.467685])


def test_eps_is_added_to_the_scale():
    """eps = 1: g1 → ∓2/(2 + 1) = ∓2/3, g0 → ∓1/(0.816497 + 1) = ∓0.550510."""
    out = group_advantages(REWARDS, GROUPS, std_mode="group", eps=1.0)
    g0 = 1 / (math.sqrt(2 / 3) + 1)
    close(out.values, [-g0, -2 / 3, 0.0, 0.0, 2 / 3, 0.0, g0])


def test_nan_rewards_get_nan_and_are_left_out_of_the_statistics():
    """Group 0 is [1, NaN, 3] → mean 2, population std 1 → (−1/1.0001, NaN, 1/1.0001) = (∓0.999900, NaN).
    Group 1 is [4, 8, NaN] → mean 6, std 2 → ∓0.999950. Group 2 is [NaN, NaN]: no valid member, NaN
    advantages, not counted as a group. Global: valid rewards [1, 3, 4, 8], mean 4, squared deviations
    9 + 1 + 0 + 16 = 26, std √6.5 = 2.549510. Zero-std groups: none of the two with valid members.
    """
    rewards = torch.tensor([1.0, NAN, 3.0, 4.0, 8.0, NAN, NAN, NAN])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    out = group_advantages(rewards, groups, std_mode="group")
    g0, g1 = 1 / (1 + EPS), 2 / (2 + EPS)
    close(out.values, [-g0, NAN, g0, -g1, g1, NAN, NAN, NAN])
    assert out.zero_std_fraction == 0.0

    out = group_advantages(rewards, groups, std_mode="global")
    scale = math.sqrt(6.5) + EPS
    close(out.values, [-1 / scale, NAN, 1 / scale, -2 / scale, 2 / scale, NAN, NAN, NAN])


def test_infinite_rewards_are_treated_like_failures():
    """+inf is not finite: NaN advantage, and the rest of its group [2, 4] → ∓1/(1 + 1e-4)."""
    out = group_advantages(torch.tensor([2.0, float("inf"), 4.0]), torch.tensor([0, 0, 0]))
    close(out.values, [-1 / (1 + EPS), NAN, 1 / (1 + EPS)])


def test_zero_std_fraction_counts_groups_with_equal_rewards():
    """Groups [1, 1], [2, 3], [7, 7], [0, 5]: two of four have equal rewards → 0.5. A group whose only valid
    reward is one value ([NaN, 4]) also has std 0 → [1,1], [7,7], [NaN,4] of five groups = 0.6."""
    rewards = torch.tensor([1.0, 1.0, 2.0, 3.0, 7.0, 7.0, 0.0, 5.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert group_advantages(rewards, groups).zero_std_fraction == 0.5
    rewards = torch.cat([rewards, torch.tensor([NAN, 4.0])])
    groups = torch.cat([groups, torch.tensor([4, 4])])
    out = group_advantages(rewards, groups)
    assert out.zero_std_fraction == pytest.approx(0.6)
    assert out.values[-1].item() == 0.0


def test_all_rewards_failed():
    """No valid reward: every advantage NaN, no groups, zero_std_fraction 0."""
    out = group_advantages(torch.tensor([NAN, NAN]), torch.tensor([0, 1]), std_mode="global")
    assert torch.isnan(out.values).all()
    assert out.zero_std_fraction == 0.0


@pytest.mark.parametrize("std_mode", ["group", "max_group", "global"])
def test_shuffling_the_inputs_permutes_the_outputs(std_mode):
    """Advantages depend on group membership, not on position."""
    permutation = torch.randperm(len(REWARDS), generator=torch.Generator().manual_seed(0))
    reference = group_advantages(REWARDS, GROUPS, std_mode=std_mode)
    shuffled = group_advantages(REWARDS[permutation], GROUPS[permutation], std_mode=std_mode)
    assert torch.equal(shuffled.values, reference.values[permutation])
    assert shuffled.zero_std_fraction == reference.zero_std_fraction


def test_output_is_float32_for_float64_input():
    out = group_advantages(REWARDS.double(), GROUPS)
    assert out.values.dtype == torch.float32 and out.values.shape == (7,)


@pytest.mark.parametrize(
    "rewards, groups",
    [
        (torch.zeros(4), torch.zeros(3, dtype=torch.long)),
        (torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long)),
        (torch.zeros(4), torch.zeros(4, 1, dtype=torch.long)),
    ],
)
def test_shape_errors(rewards, groups):
    with pytest.raises(ValueError, match="must be equal 1-D shapes"):
        group_advantages(rewards, groups)


def test_unknown_std_mode():
    with pytest.raises(ValueError, match="unknown std_mode 'batch'"):
        group_advantages(REWARDS, GROUPS, std_mode="batch")
