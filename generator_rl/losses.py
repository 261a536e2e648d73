"""Policy losses of the generator trainers (pure tensor maths, one value per sample; callers reduce with
:func:`share_of_global_mean`)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class PolicyLoss(NamedTuple):
    loss: torch.Tensor  # (N,)
    ratio: torch.Tensor  # (N,)
    clipped: torch.Tensor  # (N,) bool: the clipped branch was taken


def ppo_clip_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_range: float,
    adv_clip_max: float = 5.0,
) -> PolicyLoss:
    """PPO-clip on one denoising step (Flow-GRPO, arXiv 2505.05470; flow_grpo ``scripts/train_wan2_1.py``).

    A = clamp(advantage, ±adv_clip_max); ratio = exp(logp − logp_old);
    loss = max(−A·ratio, −A·clamp(ratio, 1 − clip_range, 1 + clip_range)).
    """
    advantages = advantages.float().clamp(-adv_clip_max, adv_clip_max)
    ratio = torch.exp(log_prob.float() - old_log_prob.float())
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    return PolicyLoss(torch.maximum(unclipped, clipped), ratio.detach(), (clipped > unclipped).detach())


class DpoLoss(NamedTuple):
    loss: torch.Tensor  # (N,)
    margin: torch.Tensor  # (N,) the argument of log σ; > 0 means the model prefers the winner more than the reference does


def flow_dpo_loss(
    model_error_winner: torch.Tensor,
    model_error_loser: torch.Tensor,
    reference_error_winner: torch.Tensor,
    reference_error_loser: torch.Tensor,
    *,
    beta: float,
) -> DpoLoss:
    """Flow-DPO (VideoAlign, arXiv 2501.13918) with a constant β, per pair.

    Each error is ‖v − v̂(x_t)‖² averaged over the latent's elements, with the same noise and timestep for
    winner and loser; loss = −log σ(−β/2 · [(e_θ^w − e_ref^w) − (e_θ^l − e_ref^l)]).
    """
    margin = -0.5 * beta * (
        (model_error_winner.float() - reference_error_winner.float())
        - (model_error_loser.float() - reference_error_loser.float())
    )
    return DpoLoss(-F.logsigmoid(margin), margin.detach())


def share_of_global_mean(losses: torch.Tensor, *, total_terms: int, num_processes: int) -> torch.Tensor:
    """This micro-batch's share of the mean loss over every term of an optimizer step: Σ losses · P / N.

    ``losses`` holds one value per term (a (sample, step) pair for GRPO, a pair for Flow-DPO) of one micro-batch
    on one process; ``total_terms`` (N) counts the valid terms of the whole optimizer step on all ``num_processes``
    (P) processes. DDP averages gradients over the P processes, so the backward passes of all micro-batches sum
    to the gradient of (1/N)·Σ over all terms: every term weighs 1/N, however the terms are split into
    micro-batches and processes and however many samples were masked out (a per-micro-batch mean would give a
    sample in a micro-batch of 1 the weight of a whole micro-batch).
    """
    if total_terms < 1 or num_processes < 1:
        raise ValueError(f"need total_terms >= 1 and num_processes >= 1, got {total_terms} and {num_processes}")
    return losses.sum() * (num_processes / total_terms)
