"""Tests for generator_rl/losses.py against values worked out by hand (plain Python ``math``, float64).

PPO-clip: A = clamp(adv, ±5), r = exp(logp − logp_old), loss = max(−A·r, −A·clamp(r, 0.8, 1.2)) with
clip_range 0.2. Flow-DPO: margin = −β/2·[(e_w − e_ref_w) − (e_l − e_ref_l)], loss = −log σ(margin)
= log(1 + e^(−margin)).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from generator_rl.losses import flow_dpo_loss, ppo_clip_loss, share_of_global_mean

LN2 = math.log(2.0)


def close(actual: torch.Tensor, expected: list[float], *, rtol: float = 1e-6, atol: float = 1e-6) -> None:
    assert actual.dtype == torch.float32
    assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=rtol, atol=atol)


def neg_log_sigmoid(x: float) -> float:
    return math.log(1.0 + math.exp(-x))


# --------------------------------------------------------------------------------------------------------
# PPO-clip
# --------------------------------------------------------------------------------------------------------


def ppo_case(ratios: list[float], advantages: list[float], **kwargs):
    old = torch.tensor([-1.0] * len(ratios))
    log_prob = old + torch.log(torch.tensor(ratios, dtype=torch.float64)).float()
    return ppo_clip_loss(log_prob, old, torch.tensor(advantages), clip_range=0.2, **kwargs)


def test_ppo_clip_loss_inside_and_outside_the_clip_range():
    """clip range 0.2 (r clamped to [0.8, 1.2]):

    | A  | r    | −A·r | −A·clamp(r) | loss | clipped branch |
    | 2  | 1.1  | −2.2 | −2.2        | −2.2 | no (equal)     |
    | 2  | 1.5  | −3.0 | −2.4        | −2.4 | yes            |
    | 2  | 0.5  | −1.0 | −1.6        | −1.0 | no             |
    | −1 | 0.5  | 0.5  | 0.8         | 0.8  | yes            |
    | −1 | 1.5  | 1.5  | 1.2         | 1.5  | no             |
    | −1 | 0.9  | 0.9  | 0.9         | 0.9  | no (equal)     |
    | 0  | 3.0  | 0    | 0           | 0    | no             |
    """
    out = ppo_case([1.1, 1.5, 0.5, 0.5, 1.5, 0.9, 3.0], [2.0, 2.0, 2.0, -1.0, -1.0, -1.0, 0.0])
    close(out.loss, [-2.2, -2.4, -1.0, 0.8, 1.5, 0.9, 0.0])
    assert out.clipped.tolist() == [False, True, False, True, False, False, False]
    close(out.ratio, [1.1, 1.5, 0.5, 0.5, 1.5, 0.9, 3.0])


def test_ppo_advantages_are_clamped_at_adv_clip_max():
    """A = 10 → 5 and A = −10 → −5 (default adv_clip_max 5):
    r = 1: −5·1 = −5; r = 1.5 with A = −5: max(7.5, 6.0) = 7.5. With adv_clip_max = 3: −3 and max(4.5, 3.6) = 4.5.
    """
    out = ppo_case([1.0, 1.5], [10.0, -10.0])
    close(out.loss, [-5.0, 7.5])
    assert out.clipped.tolist() == [False, False]
    out = ppo_case([1.0, 1.5], [10.0, -10.0], adv_clip_max=3.0)
    close(out.loss, [-3.0, 4.5])


def test_ppo_ratio_is_exp_of_the_log_prob_difference():
    """logp − logp_old = [0.01, −0.003, 0]: ratio = [e^0.01, e^−0.003, 1] = [1.010050, 0.997004, 1]."""
    log_prob = torch.tensor([-2.0 + 0.01, 0.5 - 0.003, 3.0], dtype=torch.float64)
    old = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)
    out = ppo_clip_loss(log_prob, old, torch.ones(3), clip_range=1e-3)
    close(out.ratio, [math.exp(0.01), math.exp(-0.003), 1.0])
    # tiny clip range (flow_grpo's 1e-4…1e-3 regime), A = 1: loss = −max-pessimistic = −min(r, clamp(r))
    close(out.loss, [-1.001, -math.exp(-0.003), -1.0])
    assert out.clipped.tolist() == [True, False, False]


def test_ppo_gradient_is_zero_on_the_clipped_branch():
    """A = 2, r = 1.5 → loss −2.4 is constant in logp (gradient 0); r = 1.1 → loss −2·e^(Δ), d/dlogp = −2.2."""
    old = torch.tensor([0.0, 0.0])
    log_prob = torch.tensor([math.log(1.5), math.log(1.1)], requires_grad=True)
    out = ppo_clip_loss(log_prob, old, torch.tensor([2.0, 2.0]), clip_range=0.2)
    out.loss.sum().backward()
    close(log_prob.grad, [0.0, -2.2])
    assert not out.ratio.requires_grad and not out.clipped.requires_grad


# --------------------------------------------------------------------------------------------------------
# Flow-DPO
# --------------------------------------------------------------------------------------------------------


def test_flow_dpo_loss_by_hand():
    """Pair 0, β = 2: (0.3 − 0.5) − (0.6 − 0.4) = −0.4 → margin = −1·(−0.4) = 0.4,
    loss = log(1 + e^−0.4) = 0.513015 (< log 2: the model prefers the winner more than the reference).
    Pair 1: (0.5 − 0.4) − (0.3 − 0.3) = 0.1 → margin = −0.1, loss = log(1 + e^0.1) = 0.744397.
    Pair 2: equal errors → margin 0, loss = log 2 = 0.693147.
    """
    out = flow_dpo_loss(
        torch.tensor([0.3, 0.5, 0.7]),
        torch.tensor([0.6, 0.3, 0.2]),
        torch.tensor([0.5, 0.4, 0.7]),
        torch.tensor([0.4, 0.3, 0.2]),
        beta=2.0,
    )
    close(out.margin, [0.4, -0.1, 0.0])
    close(out.loss, [neg_log_sigmoid(0.4), neg_log_sigmoid(-0.1), LN2])
    close(out.loss, [0.513015, 0.744397, 0.693147], atol=1e-6)
    assert out.loss[0] < LN2 < out.loss[1]


def test_flow_dpo_beta_scales_the_margin():
    """Same pair 1 as above with β = 10: margin = −5·0.1 = −0.5, loss = log(1 + e^0.5) = 0.974077."""
    out = flow_dpo_loss(torch.tensor([0.5]), torch.tensor([0.3]), torch.tensor([0.4]), torch.tensor([0.3]), beta=10.0)
    close(out.margin, [-0.5])
    close(out.loss, [0.974077])


def test_flow_dpo_equal_errors_give_log_two():
    """Model = reference on both samples → margin 0 → −log σ(0) = log 2, whatever β."""
    errors = torch.tensor([0.1, 2.0, 7.5])
    for beta in (0.5, 5000.0):
        out = flow_dpo_loss(errors, errors.flip(0), errors, errors.flip(0), beta=beta)
        close(out.loss, [LN2] * 3)


def test_flow_dpo_gradient_lowers_winner_error_and_raises_loser_error():
    """d loss/d margin = −σ(−margin); d margin/d e_w = −β/2, d margin/d e_l = +β/2. Pair 0 above (β = 2,
    margin 0.4): d loss/d e_w = σ(−0.4) = 0.401312 > 0, d loss/d e_l = −0.401312 < 0 — descending the loss
    lowers the winner's error and raises the loser's."""
    winner = torch.tensor([0.3], requires_grad=True)
    loser = torch.tensor([0.6], requires_grad=True)
    out = flow_dpo_loss(winner, loser, torch.tensor([0.5]), torch.tensor([0.4]), beta=2.0)
    out.loss.sum().backward()
    expected = 1.0 / (1.0 + math.exp(0.4))
    close(winner.grad, [expected])
    close(loser.grad, [-expected])
    close(winner.grad, [0.401312])
    assert not out.margin.requires_grad


def test_flow_dpo_is_finite_for_large_margins():
    """β = 1e4, margin = −5000·(−1) = 5000 → loss ≈ e^−5000 = 0; margin −5000 → loss ≈ 5000 (no overflow)."""
    out = flow_dpo_loss(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]), torch.zeros(2), torch.zeros(2), beta=1e4)
    close(out.loss, [0.0, 5000.0])
    assert torch.isfinite(out.loss).all()


# --------------------------------------------------------------------------------------------------------
# share_of_global_mean: a term's weight does not depend on micro-batching, processes or masking
# --------------------------------------------------------------------------------------------------------


def _ppo_gradient(theta0: torch.Tensor, features: torch.Tensor, advantages: torch.Tensor, batches: list[list[int]], *,
                  num_processes: int, total_terms: int) -> torch.Tensor:
    """Accumulate PPO-clip gradients of a toy policy log p_ij = θ·f_ij over ``batches`` of sample indices and every
    step j (one backward per (micro-batch, step), as the trainer does), each scaled by share_of_global_mean."""
    theta = theta0.clone().requires_grad_()
    old = features.double() @ theta0.double()  # (N, K) log-probs of the sampling policy θ0 − 0.1
    for batch in batches:
        for step in range(features.shape[1]):
            log_prob = features[batch, step] @ theta
            losses = ppo_clip_loss(log_prob, (old[batch, step] - 0.1).float(), advantages[batch], clip_range=10.0).loss
            share_of_global_mean(losses, total_terms=total_terms, num_processes=num_processes).backward()
    return theta.grad.double()


def test_the_loss_weight_of_a_term_is_one_over_the_global_count():
    """7 samples × K = 2 steps, samples 2 and 5 masked (NaN advantage): N = 5·2 = 10 valid terms.

    By hand (float64): ℓ_ij = −A_i·r_ij with r_ij = exp(θ·f_ij − (θ·f_ij − 0.1)) = e^0.1 (clip range 10 never
    binds), so ∂ℓ_ij/∂θ = −A_i·e^0.1·f_ij and the gradient of the step's loss is (1/N)·Σ_valid −A_i·e^0.1·f_ij.
    Micro-batches of 1, of 4 (4 + 1: one partial), and two processes holding 3 and 2 samples (gradients averaged,
    as DDP does) all give it. A per-micro-batch mean instead gives the lone sample of the partial batch 4× the
    weight — and a different gradient.
    """
    generator = torch.Generator().manual_seed(6)
    features = torch.randn(7, 2, 3, generator=generator)
    advantages = torch.tensor([1.0, -0.5, math.nan, 2.0, -1.5, math.nan, 0.7])
    theta0 = torch.randn(3, generator=generator)
    valid = [0, 1, 3, 4, 6]
    expected = sum(-advantages[i].double() * math.exp(0.1) * features[i, j].double() for i in valid for j in range(2)) / 10

    def gradient(batches, processes=1):
        return _ppo_gradient(theta0, features, advantages, batches, num_processes=processes, total_terms=10)

    singles = gradient([[i] for i in valid])
    fours = gradient([valid[:4], valid[4:]])
    two_processes = (gradient([[0, 1], [3]], processes=2) + gradient([[4, 6]], processes=2)) / 2
    for actual in (singles, fours, two_processes):
        assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    old_style = torch.zeros(3, dtype=torch.float64)  # mean per micro-batch, then averaged over micro-steps
    for batch in (valid[:4], valid[4:]):
        for j in range(2):
            old_style += sum(-advantages[i].double() * math.exp(0.1) * features[i, j].double() for i in batch) / len(batch) / 4
    assert not torch.allclose(old_style, expected, rtol=1e-3)


def test_share_of_global_mean_by_hand():
    """losses [1, 2, 3] on one of 2 processes, 12 terms in the step: (1 + 2 + 3)·2/12 = 1."""
    close(share_of_global_mean(torch.tensor([1.0, 2.0, 3.0]), total_terms=12, num_processes=2).view(1), [1.0])
    with pytest.raises(ValueError, match="total_terms >= 1"):
        share_of_global_mean(torch.tensor([1.0]), total_terms=0, num_processes=1)
