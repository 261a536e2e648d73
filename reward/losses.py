"""Pairwise reward-model losses and the pairwise accuracy that tracks them (pure tensor maths).

Notation: ``margin = r_A − r_B`` and ``label`` ∈ {+1 (A preferred), −1 (B preferred), 0 (tie)}; both are 1-D
tensors of the same length. Losses return one value per pair (the caller reduces), in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bradley_terry_loss(margin: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry loss −log σ(label · margin) per pair (DeScore stage 1, arXiv 2605.05922 Eq. 3).

    Ties carry no Bradley–Terry likelihood; passing one is an error (drop ties, or use
    :func:`bradley_terry_ties_loss`).
    """
    if (label == 0).any():
        raise ValueError("bradley_terry_loss got tied pairs; drop them or use bradley_terry_ties_loss")
    return -F.logsigmoid(label.to(margin.dtype) * margin).float()


def bradley_terry_ties_loss(margin: torch.Tensor, label: torch.Tensor, k: float = 5.0) -> torch.Tensor:
    """Rao–Kupper Bradley–Terry-with-ties loss with tie parameter θ = ``k`` (VideoAlign's ``btt``, k = 5).

    With Δ = r_chosen − r_rejected (chosen = the preferred video; for ties either order, the loss is symmetric):

    * decided pair: −log P(chosen ≻ rejected) = −log σ(Δ − ln k)
    * tie: −log P(tie) = −log σ(Δ − ln k) − log σ(−Δ − ln k) − ln(k² − 1)

    since P(A ≻ B) = σ(Δ − ln θ) and P(tie) = (θ² − 1) σ(Δ − ln θ) σ(−Δ − ln θ) sum to one with P(B ≻ A)
    (Rao and Kupper 1967, JASA 62; as ``trainer.py::VideoVLMRewardTrainer.compute_loss`` of
    KwaiVGI/VideoAlign, arXiv 2501.13918).
    """
    if k <= 1:
        raise ValueError(f"the Rao–Kupper tie parameter k must be > 1, got {k}")
    log_k = math.log(k)
    label = label.to(margin.dtype)
    # Orient each margin so that "chosen" comes first; ties keep A first (the loss is symmetric in them).
    delta = torch.where(label < 0, -margin, margin)
    win = -F.logsigmoid(delta - log_k)
    tie = -F.logsigmoid(delta - log_k) - F.logsigmoid(-delta - log_k) - math.log(k * k - 1)
    return torch.where(label == 0, tie, win).float()


def pairwise_accuracy(margin: torch.Tensor, label: torch.Tensor) -> tuple[float, int]:
    """Accuracy over decided pairs (ties excluded): a pair counts as correct iff label · margin > 0.

    An exact model tie (margin = 0) counts as wrong, as in VideoAlign's accuracy without ties. Returns
    ``(accuracy, number of decided pairs)``; the accuracy is NaN when there are none.
    """
    decided = label != 0
    count = int(decided.sum())
    if count == 0:
        return float("nan"), 0
    correct = (label[decided].to(margin.dtype) * margin[decided] > 0).sum()
    return float(correct) / count, count
