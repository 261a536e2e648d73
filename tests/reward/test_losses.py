"""Tests for reward/losses.py against values worked out by hand (plain Python math, float64).

Notation: σ(x) = 1 / (1 + e^(−x)), Δ = r_A − r_B, label +1 (A preferred), −1 (B preferred), 0 (tie).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from reward.losses import bradley_terry_loss, bradley_terry_ties_loss, pairwise_accuracy

LN5 = math.log(5.0)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def neg_log_sigmoid(x: float) -> float:
    """−log σ(x) = log(1 + e^(−x)), written as −log(1 / (1 + exp(−x)))."""
    return -math.log(1.0 / (1.0 + math.exp(-x)))


def close(actual: torch.Tensor, expected: list[float], *, rtol: float = 1e-6, atol: float = 1e-6) -> None:
    """Compare a float32 loss with float64 expectations computed in plain Python."""
    assert actual.dtype == torch.float32
    assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------------------
# Bradley–Terry
# --------------------------------------------------------------------------------------------------------


def test_bradley_terry_loss_values():
    """−log σ(label · Δ) per pair:

    * Δ = 2, A preferred:  −log σ(2)    = log(1 + e^−2)   = 0.126928
    * Δ = −1, A preferred: −log σ(−1)   = log(1 + e)      = 1.313262
    * Δ = 0, B preferred:  −log σ(0)    = log 2           = 0.693147
    * Δ = 0.5, B preferred: −log σ(−0.5) = log(1 + e^0.5) = 0.974077
    * Δ = −3, B preferred: −log σ(3)    = log(1 + e^−3)   = 0.048587
    """
    margin = torch.tensor([2.0, -1.0, 0.0, 0.5, -3.0])
    label = torch.tensor([1, 1, -1, -1, -1])
    loss = bradley_terry_loss(margin, label)
    expected = [neg_log_sigmoid(2.0), neg_log_sigmoid(-1.0), neg_log_sigmoid(0.0), neg_log_sigmoid(-0.5),
                neg_log_sigmoid(3.0)]
    close(loss, expected)
    close(loss, [0.126928, 1.313262, 0.693147, 0.974077, 0.048587], rtol=0, atol=1e-6)


def test_bradley_terry_loss_accepts_float_labels_and_float64_margins():
    """Labels as floats and float64 margins give the same per-pair float32 values."""
    loss = bradley_terry_loss(torch.tensor([1.5, -0.25], dtype=torch.float64), torch.tensor([1.0, -1.0]))
    close(loss, [neg_log_sigmoid(1.5), neg_log_sigmoid(0.25)])


def test_bradley_terry_loss_rejects_ties():
    with pytest.raises(ValueError, match="tied pairs; drop them or use bradley_terry_ties_loss"):
        bradley_terry_loss(torch.tensor([0.3, 1.0]), torch.tensor([1, 0]))


def test_bradley_terry_loss_is_stable_for_large_margins():
    """|Δ| = 100: −log σ(−100) = 100 + log(1 + e^−100) = 100 exactly in float32, −log σ(100) ≈ 3.7e−44;
    d/dΔ of −log σ(l Δ) is −l σ(−l Δ): −1 for the badly wrong pair, ≈ 0 for the right one."""
    margin = torch.tensor([100.0, -100.0, 100.0, -100.0], requires_grad=True)
    label = torch.tensor([1, 1, -1, -1])
    loss = bradley_terry_loss(margin, label)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(margin.grad).all()
    close(loss.detach(), [0.0, 100.0, 100.0, 0.0], rtol=1e-7, atol=1e-7)
    assert_close(margin.grad, torch.tensor([0.0, -1.0, 1.0, 0.0]), rtol=0, atol=1e-7)


# --------------------------------------------------------------------------------------------------------
# Bradley–Terry with ties (Rao–Kupper), k = 5
# --------------------------------------------------------------------------------------------------------


def rao_kupper_tie_nll(delta: float, k: float) -> float:
    """−log P(tie) = −log((k² − 1) σ(Δ − ln k) σ(−Δ − ln k))."""
    return -math.log((k * k - 1) * sigmoid(delta - math.log(k)) * sigmoid(-delta - math.log(k)))


def test_ties_loss_decided_pairs_both_orientations():
    """Decided pair: −log σ(Δ_chosen − ln 5), with Δ_chosen = Δ for A preferred and −Δ for B preferred.

    * Δ = 2, A:  −log σ(2 − 1.609438)  = log(1 + e^−0.390562) = 0.516814
    * Δ = 2, B:  −log σ(−2 − 1.609438) = log(1 + e^3.609438)  = 3.636145
    * Δ = −1, B: −log σ(1 − 1.609438)  = log(1 + e^0.609438)  = 1.043592
    * Δ = 0, A:  −log σ(−ln 5) = log 6 = 1.791759
    """
    margin = torch.tensor([2.0, 2.0, -1.0, 0.0])
    label = torch.tensor([1, -1, -1, 1])
    loss = bradley_terry_ties_loss(margin, label, k=5.0)
    close(loss, [neg_log_sigmoid(2 - LN5), neg_log_sigmoid(-2 - LN5), neg_log_sigmoid(1 - LN5),
                 neg_log_sigmoid(-LN5)])
    close(loss, [0.516814, 3.636145, 1.043592, math.log(6.0)], rtol=0, atol=2e-6)
    # B preferred with margin Δ is A preferred with margin −Δ.
    assert_close(
        bradley_terry_ties_loss(torch.tensor([0.7, -2.2]), torch.tensor([-1, -1])),
        bradley_terry_ties_loss(torch.tensor([-0.7, 2.2]), torch.tensor([1, 1])),
    )


def test_ties_loss_tie_values():
    """Tie: −log((k² − 1) σ(Δ − ln k) σ(−Δ − ln k)).

    * k = 5, Δ = 0: P(tie) = 24 · (1/6)² = 2/3 -> −log(2/3) = 0.405465
    * k = 5, Δ = ±1.3: from the formula (both signs equal)
    * k = 2, Δ = 0: P(tie) = 3 · (1/3)² = 1/3 -> log 3 = 1.098612
    """
    margin = torch.tensor([0.0, 1.3, -1.3, 4.0])
    label = torch.zeros(4, dtype=torch.long)
    loss = bradley_terry_ties_loss(margin, label, k=5.0)
    close(loss, [rao_kupper_tie_nll(d, 5.0) for d in (0.0, 1.3, -1.3, 4.0)])
    close(loss[:1], [-math.log(2 / 3)], rtol=0, atol=1e-6)
    close(bradley_terry_ties_loss(torch.tensor([0.0]), torch.tensor([0]), k=2.0), [math.log(3.0)], rtol=0, atol=1e-6)


def test_ties_loss_tie_is_symmetric_in_margin():
    deltas = torch.tensor([0.1, 0.9, 2.5, 7.0, 30.0])
    ties = torch.zeros(5)
    assert_close(bradley_terry_ties_loss(deltas, ties), bradley_terry_ties_loss(-deltas, ties), rtol=0, atol=0)


@pytest.mark.parametrize("k", [5.0, 1.5, 20.0])
def test_rao_kupper_probabilities_sum_to_one(k):
    """exp(−loss) gives P(A ≻ B), P(B ≻ A) and P(tie); for every Δ they sum to 1."""
    deltas = [-6.0, -1.7, -0.3, 0.0, 0.3, 1.0, math.log(k), 4.5, 9.0]
    margin = torch.tensor(deltas, dtype=torch.float64)
    probabilities = [
        torch.exp(-bradley_terry_ties_loss(margin, torch.full((len(deltas),), float(label)), k=k).double())
        for label in (1, -1, 0)
    ]
    total = probabilities[0] + probabilities[1] + probabilities[2]
    assert_close(total, torch.ones(len(deltas), dtype=torch.float64), rtol=0, atol=1e-6)
    # And each is the closed form: σ(Δ − ln k), σ(−Δ − ln k), (k² − 1) σ(Δ − ln k) σ(−Δ − ln k).
    log_k = math.log(k)
    assert_close(probabilities[0], torch.tensor([sigmoid(d - log_k) for d in deltas], dtype=torch.float64),
                 rtol=1e-6, atol=1e-7)
    assert_close(probabilities[1], torch.tensor([sigmoid(-d - log_k) for d in deltas], dtype=torch.float64),
                 rtol=1e-6, atol=1e-7)
    assert_close(probabilities[2], torch.tensor([math.exp(-rao_kupper_tie_nll(d, k)) for d in deltas],
                                                dtype=torch.float64), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("k", [1.0, 0.5, 0.0, -3.0])
def test_ties_loss_rejects_k_at_most_one(k):
    with pytest.raises(ValueError, match=r"tie parameter k must be > 1, got "):
        bradley_terry_ties_loss(torch.tensor([0.0]), torch.tensor([0]), k=k)


def test_ties_loss_is_stable_for_large_margins():
    """Δ = ±100, k = 5 (ln 5 = 1.609438, ln 24 = 3.178054):

    * A preferred, Δ = 100: −log σ(98.39) ≈ 0; gradient −σ(ln 5 − Δ) ≈ 0
    * A preferred, Δ = −100: −log σ(−101.609438) = 101.609438; gradient −1
    * tie, Δ = ±100: 0 + (100 + ln 5) − ln 24 = 98.431384; gradient σ(Δ + ln 5) − σ(ln 5 − Δ) = ±1
    """
    margin = torch.tensor([100.0, -100.0, 100.0, -100.0], requires_grad=True)
    label = torch.tensor([1, 1, 0, 0])
    loss = bradley_terry_ties_loss(margin, label)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(margin.grad).all()
    tie = 100 + LN5 - math.log(24.0)
    close(loss.detach(), [0.0, 100 + LN5, tie, tie], rtol=1e-6, atol=1e-6)
    assert_close(margin.grad, torch.tensor([0.0, -1.0, 1.0, -1.0]), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------------
# Pairwise accuracy
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("margin", "label", "accuracy", "count"),
    [
        # right, right, wrong, margin 0 (wrong), tie (excluded) -> 2 / 4
        ([1.0, -2.0, 0.5, 0.0, 3.0], [1, -1, -1, 1, 0], 0.5, 4),
        # all right
        ([0.1, -0.1, 5.0], [1, -1, 1], 1.0, 3),
        # two of three right: 2 / 3
        ([0.1, -0.1, 5.0], [1, 1, 1], 2 / 3, 3),
        # a model tie on a decided pair counts as wrong
        ([0.0], [-1], 0.0, 1),
        # ties never count, whatever the margin
        ([9.0, -9.0, 0.2], [0, 0, -1], 0.0, 1),
    ],
)
def test_pairwise_accuracy(margin, label, accuracy, count):
    result = pairwise_accuracy(torch.tensor(margin), torch.tensor(label))
    assert result == (accuracy, count)
    assert isinstance(result[0], float) and isinstance(result[1], int)


def test_pairwise_accuracy_only_ties_is_nan():
    accuracy, count = pairwise_accuracy(torch.tensor([1.0, -1.0]), torch.tensor([0, 0]))
    assert math.isnan(accuracy) and count == 0
    accuracy, count = pairwise_accuracy(torch.tensor([]), torch.tensor([], dtype=torch.long))
    assert math.isnan(accuracy) and count == 0
