"""Stage-2 maths (reward/dual_rl_losses.py) against values worked out by hand in each docstring."""

from __future__ import annotations

import math

import pytest
import torch

from reward.dual_rl_losses import (
    low_var_kl, masked_token_sum, paired_bt_loss, token_ppo_clip_loss, video_group_advantages,
)


def test_advantages_are_normalised_per_video_with_the_unbiased_std():
    """Video 7: rewards 1, 2, 3 -> mean 2, unbiased std 1 -> A = -1, 0, 1 (over 1 + 1e-6).
    Video 3: 0.5, 0.5 -> std 0 -> A = 0. Video 9 alone -> 0. Rows are interleaved on purpose."""
    rewards = torch.tensor([1.0, 0.5, 2.0, 4.0, 0.5, 3.0])
    groups = torch.tensor([7, 3, 7, 9, 3, 7])
    advantages = video_group_advantages(rewards, groups)
    scale = 1 + 1e-6
    expected = torch.tensor([-1 / scale, 0.0, 0.0, 0.0, 0.0, 1 / scale])
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-7)
    assert advantages.dtype == torch.float32


def test_advantages_use_n_minus_1():
    """Rewards 0 and 1: population std 0.5 would give ±1; the unbiased std sqrt(0.5) gives ±0.7071."""
    advantages = video_group_advantages(torch.tensor([0.0, 1.0]), torch.tensor([0, 0]))
    torch.testing.assert_close(advantages, torch.tensor([-0.5, 0.5]) / (math.sqrt(0.5) + 1e-6))


def test_advantages_refuse_non_finite_rewards():
    with pytest.raises(ValueError, match="finite"):
        video_group_advantages(torch.tensor([0.0, float("nan")]), torch.tensor([0, 0]))


def test_token_ppo_clip_with_asymmetric_range_and_dual_clip():
    """A = +1 for row 0, −2 for row 1; range [0.8, 1.3]; dual clip 3.

    row 0: ratio 1.5 -> max(−1.5, −1.3) = −1.3 (clipped); ratio 0.5 -> max(−0.5, −0.8) = −0.5.
    row 1: ratio 0.7 -> max(1.4, 1.6) = 1.6 (clipped); ratio 4 -> max(8, 2.6) = 8, capped by −A·3 = 6;
    the third token of row 1 is padding -> 0.
    """
    old = torch.zeros(2, 3)
    ratios = torch.tensor([[1.5, 0.5, 1.0], [0.7, 4.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    result = token_ppo_clip_loss(ratios.log(), old, torch.tensor([1.0, -2.0]), mask, clip_low=0.2, clip_high=0.3,
                                 dual_clip=3.0)
    torch.testing.assert_close(result.loss, torch.tensor([[-1.3, -0.5, 0.0], [1.6, 6.0, 0.0]]))
    assert result.clipped.tolist() == [[True, False, False], [True, False, False]]
    torch.testing.assert_close(result.ratio, ratios)


def test_without_dual_clip_a_large_ratio_is_not_capped():
    result = token_ppo_clip_loss(torch.tensor([[math.log(4.0)]]), torch.zeros(1, 1), torch.tensor([-2.0]),
                                 torch.ones(1, 1), clip_low=0.2, clip_high=0.3, dual_clip=None)
    torch.testing.assert_close(result.loss, torch.tensor([[8.0]]))


def test_equal_log_probs_give_ratio_one_and_the_plain_policy_gradient_loss():
    log_probs = torch.randn(3, 4)
    result = token_ppo_clip_loss(log_probs, log_probs.clone(), torch.tensor([0.5, -1.0, 2.0]), torch.ones(3, 4),
                                 clip_low=0.2, clip_high=0.3)
    assert (result.ratio == 1).all() and not result.clipped.any()
    torch.testing.assert_close(result.loss, -torch.tensor([0.5, -1.0, 2.0])[:, None].expand(3, 4))


def test_low_var_kl_is_k3_and_clamped():
    """d = log 0.25 − log 0.5 = −ln 2 -> e^d − d − 1 = 0.5 + 0.693147 − 1 = 0.193147; equal -> 0;
    d = 5 -> e^5 − 6 = 142.4, clamped to 10."""
    log_probs = torch.tensor([[math.log(0.5), -1.0, -6.0]])
    reference = torch.tensor([[math.log(0.25), -1.0, -1.0]])
    torch.testing.assert_close(low_var_kl(log_probs, reference), torch.tensor([[0.193147, 0.0, 10.0]]),
                               rtol=0, atol=1e-6)


def test_token_mean_counts_real_tokens_only():
    """(1 + 2 + 4) over the 3 real tokens: the token-mean is 7 / 3."""
    values = torch.tensor([[1.0, 2.0, 100.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert float(masked_token_sum(values, mask)) / float(mask.sum()) == pytest.approx(7 / 3)


def test_bt_pairs_rollouts_by_index_and_skips_ties():
    """Pair 0 (A better): margins 1 − 0 = 1 and 0 − 1 = −1 -> −log σ(1) = 0.313262, −log σ(−1) = 1.313262.
    Pair 1 is a tie: skipped. Pair 2 (B better): margins 0.5 and −0.5 -> −log σ(−0.5) = 0.974077,
    −log σ(0.5) = 0.474077."""
    rewards_a = torch.tensor([[1.0, 0.0], [2.0, 2.0], [0.5, 0.0]])
    rewards_b = torch.tensor([[0.0, 1.0], [1.0, 3.0], [0.0, 0.5]])
    bt = paired_bt_loss(rewards_a, rewards_b, torch.tensor([1, 0, -1]))
    torch.testing.assert_close(bt.loss, torch.tensor([0.313262, 1.313262, 0.974077, 0.474077]), rtol=0, atol=1e-6)
    assert bt.labels.tolist() == [1, 1, -1, -1] and bt.margins.tolist() == [1.0, -1.0, 0.5, -0.5]


def test_bt_of_only_ties_is_empty():
    bt = paired_bt_loss(torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([0, 0]))
    assert bt.loss.numel() == 0


def test_bt_gradient_reaches_both_rewards():
    rewards_a = torch.tensor([[1.0]], requires_grad=True)
    rewards_b = torch.tensor([[0.0]], requires_grad=True)
    paired_bt_loss(rewards_a, rewards_b, torch.tensor([1])).loss.sum().backward()
    # d/dm −log σ(m) = −σ(−m) = −0.268941 at m = 1
    assert rewards_a.grad.item() == pytest.approx(-0.268941, abs=1e-6)
    assert rewards_b.grad.item() == pytest.approx(0.268941, abs=1e-6)
