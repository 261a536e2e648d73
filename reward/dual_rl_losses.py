"""DeScore stage-2 maths (arXiv 2605.05922, Fig. 2(c): GRPO loss on CoT rollouts + BT loss on ``<Reward>``
rewards): per-video group advantages, token-level PPO-clip, the k3 KL estimator and Bradley–Terry over
index-aligned rollouts. Pure tensors in, tensors out; the caller reduces.

Notation: B sequences (rollouts), T response tokens (right-padded, ``mask`` 1 on real tokens), G rollouts per
video, P pairs of videos. Behaviour matched: EasyR1's ``verl/trainer/core_algos.py``
(``compute_grpo_outcome_advantage``, ``compute_policy_loss``, ``compute_kl`` with ``low_var_kl``) as used by
the official DeScore ``dual_rl`` code.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .losses import bradley_terry_loss


def video_group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages A_i = (R_i − mean_g) / (std_g + eps) within each video's group of rollouts.

    ``rewards`` (B,), ``group_ids`` (B,) integers (one id per video: A and B of a pair are different groups).
    std is the unbiased (n − 1) one, as ``torch.std`` in the official code; a group of one rollout has
    advantage 0 (its std is undefined). Returns float32 (B,).
    """
    if rewards.shape != group_ids.shape or rewards.ndim != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be equal 1-D shapes")
    if not torch.isfinite(rewards).all():
        raise ValueError("rollout rewards must be finite (a failed parse scores 0, never NaN)")
    rewards = rewards.double()
    advantages = torch.zeros_like(rewards)
    for group in torch.unique(group_ids):
        members = group_ids == group
        values = rewards[members]
        if len(values) > 1:
            advantages[members] = (values - values.mean()) / (values.std(unbiased=True) + eps)
    return advantages.float()


class TokenPolicyLoss(NamedTuple):
    loss: torch.Tensor  # (B, T) per-token PPO-clip loss, 0 on padding
    ratio: torch.Tensor  # (B, T) exp(logp − logp_old), detached
    clipped: torch.Tensor  # (B, T) bool: the clipped branch was taken on a real token


def token_ppo_clip_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None = None,
) -> TokenPolicyLoss:
    """PPO-clip per token with an asymmetric range (DAPO's clip-higher; DeScore: 0.2 / 0.3).

    ratio = exp(logp − logp_old); per token: max(−A·ratio, −A·clamp(ratio, 1 − clip_low, 1 + clip_high)); with
    ``dual_clip`` c (> 1, EasyR1 default 3.0) the loss of a negative-advantage token is capped at −A·c
    (Dual-clip PPO, arXiv 1912.09729). ``advantages`` (B,) is broadcast over the sequence's tokens.
    """
    if dual_clip is not None and dual_clip <= 1:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    advantage = advantages.float()[:, None].expand_as(log_probs)
    ratio = torch.exp((log_probs.float() - old_log_probs.float()).clamp(-20.0, 20.0))
    unclipped = -advantage * ratio
    clipped = -advantage * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    took_clip = clipped > unclipped
    if dual_clip is not None:
        loss = torch.where(advantage < 0, torch.minimum(loss, -advantage * dual_clip), loss)
    real = mask.bool()
    return TokenPolicyLoss(loss * real, ratio.detach(), (took_clip & real).detach())


def low_var_kl(log_probs: torch.Tensor, reference_log_probs: torch.Tensor, *, bound: float = 10.0) -> torch.Tensor:
    """k3 estimator of KL(π ‖ π_ref) per token (Schulman, "Approximating KL divergence", 2020; verl's
    ``low_var_kl``): with d = logp_ref − logp, k3 = exp(d) − d − 1 ≥ 0, clamped to [−bound, bound]. Shapes (B, T)."""
    difference = (reference_log_probs.float() - log_probs.float()).clamp(-20.0, 20.0)
    return (torch.exp(difference) - difference - 1.0).clamp(-bound, bound)


def masked_token_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ values over real tokens: divided by the token count of the whole update (every process), this is
    the token-mean loss of ``loss_avg_mode: token`` — every token weighs the same however sequences are split
    into micro-batches."""
    return (values * mask).sum()


class PairedBt(NamedTuple):
    loss: torch.Tensor  # (K,) −log σ(label·(r_A − r_B)) of each decided rollout pair, K = decided pairs × G
    margins: torch.Tensor  # (K,) r_A − r_B of the decided rollout pairs (detached)
    labels: torch.Tensor  # (K,) +1 / −1


def paired_bt_loss(rewards_a: torch.Tensor, rewards_b: torch.Tensor, labels: torch.Tensor) -> PairedBt:
    """Bradley–Terry over index-aligned rollouts: rollout i of video A against rollout i of video B.

    ``rewards_a``, ``rewards_b`` (P, G) head rewards; ``labels`` (P,) +1 (A better), −1 (B better), 0 (tie or no
    valid label: skipped, as the official ``compute_bt_loss``). Returns the per-rollout-pair losses; their mean
    is L_BT (empty when every pair is tied).
    """
    if rewards_a.shape != rewards_b.shape or rewards_a.ndim != 2 or labels.shape != rewards_a.shape[:1]:
        raise ValueError(f"need rewards (P, G) twice and labels (P,), got {tuple(rewards_a.shape)}, "
                         f"{tuple(rewards_b.shape)}, {tuple(labels.shape)}")
    decided = labels != 0
    margins = (rewards_a[decided] - rewards_b[decided]).flatten()
    expanded = labels[decided][:, None].expand(-1, rewards_a.shape[1]).flatten()
    return PairedBt(bradley_terry_loss(margins, expanded), margins.detach(), expanded)

