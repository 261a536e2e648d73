"""DeScore stage 2, the update: advantages over every process, the micro-batches of each optimizer update,
old and reference log-probs, and one guarded AdamW step of PPO-clip + KL + paired BT.

Every loss term is divided by its count over the whole update on every process (response tokens for the
token-mean PPO-clip and KL, decided rollout pairs for BT), and the gradients are summed over processes, so a
term weighs the same however rollouts are split into micro-batches and processes. The official code instead
sums BT micro-batch means (its effective BT weight grows with the micro-batches per device); we use the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from .dual_rl_config import DualRlConfig
from .dual_rl_losses import low_var_kl, masked_token_sum, paired_bt_loss, token_ppo_clip_loss, video_group_advantages
from .dual_rl_policy import Policy
from .dual_rl_rollout import SequenceBatch, VideoRollouts, head_rewards, response_log_probs, reward_response, sequence_batch
from .faults import guarded_optimizer_step


def gathered_advantages(accelerator: Accelerator, rollouts: list[VideoRollouts]) -> torch.Tensor:
    """Advantages of this process's rollouts (rows in rollout order), normalised per video over the rewards
    of every process (a group always lives on one process, but gathering keeps that an implementation detail)."""
    local = torch.tensor([[r.total, float(video.video_id)] for video in rollouts for r in video.rewards],
                         dtype=torch.float64, device=accelerator.device)
    everything = accelerator.gather(local).cpu()
    advantages = video_group_advantages(everything[:, 0], everything[:, 1].long())
    rows = len(local)
    return advantages[accelerator.process_index * rows: (accelerator.process_index + 1) * rows]


@dataclass
class MicroBatch:
    """Index-aligned rollouts of video pairs in one forward: rows [A_i0, B_i0, A_i1, B_i1, ...]."""

    policy: SequenceBatch
    reward: SequenceBatch | None
    advantages: torch.Tensor  # (B,)
    labels: torch.Tensor  # (B/2,) pair labels, 0 for ties
    old_log_probs: torch.Tensor | None = None
    reference_log_probs: torch.Tensor | None = None


def micro_batches(config: DualRlConfig, rollouts: list[VideoRollouts], advantages: torch.Tensor,
                  labels: list[int], *, reward_token_id: int, end_ids: Sequence[int], pad_token_id: int
                  ) -> list[list[MicroBatch]]:
    """The micro-batches of each update (this process's share), in training order."""
    per_video = config.num_generations
    rows = advantages.view(len(rollouts), per_video)
    units = []  # (video A, video B, rollout index, pair index)
    for pair_index in range(len(rollouts) // 2):
        for index in range(per_video):
            units.append((2 * pair_index, 2 * pair_index + 1, index, pair_index))
    pairs_here = len(rollouts) // 2
    share = pairs_here // (config.pairs_per_step // config.pairs_per_update)
    updates = []
    for update_start in range(0, pairs_here, share):
        update_units = [u for u in units if update_start <= u[3] < update_start + share]
        batches = []
        for start in range(0, len(update_units), config.micro_batch_pairs):
            chunk = update_units[start:start + config.micro_batch_pairs]
            policy_items, reward_items, chunk_advantages = [], [], []
            for a, b, index, _ in chunk:
                for video in (a, b):
                    generation = rollouts[video].generations[index]
                    policy_items.append((rollouts[video].prompt, generation.token_ids))
                    reward_items.append((rollouts[video].prompt, reward_response(
                        generation.token_ids, reward_token_id=reward_token_id, end_token_ids=end_ids)))
                    chunk_advantages.append(rows[video, index])
            chunk_labels = torch.tensor([labels[pair] for *_, pair in chunk])
            batches.append(MicroBatch(
                sequence_batch(policy_items, pad_token_id=pad_token_id),
                sequence_batch(reward_items, pad_token_id=pad_token_id) if config.bt_weight > 0 else None,
                torch.stack(chunk_advantages), chunk_labels))
        updates.append(batches)
    return updates


@torch.no_grad()
def fill_old_and_reference(config: DualRlConfig, policy: Policy, accelerator: Accelerator,
                           updates: list[list[MicroBatch]]) -> None:
    """Old log-probs (the current policy) and, with a KL term, reference log-probs of every micro-batch."""
    device = accelerator.device
    for batch in (b for update in updates for b in update):
        inputs = batch.policy.to(device)
        with accelerator.autocast():
            batch.old_log_probs = response_log_probs(policy.model.backbone, inputs, temperature=config.temperature)
            if config.kl_coef > 0:
                with policy.reference_mode() as reference:
                    batch.reference_log_probs = response_log_probs(reference, inputs, temperature=config.temperature)


def global_sum(accelerator: Accelerator, value: float) -> float:
    return float(accelerator.reduce(torch.tensor([value], dtype=torch.float64, device=accelerator.device), "sum"))


def train_update(config: DualRlConfig, policy: Policy, optimizer: torch.optim.Optimizer, accelerator: Accelerator,
                 batches: list[MicroBatch]) -> tuple[dict[str, list[float]], bool]:
    """One optimizer step over one update's micro-batches; returns per-item stats and whether it was applied."""
    device = accelerator.device
    tokens = global_sum(accelerator, sum(float(b.policy.response_mask.sum()) for b in batches))
    decided = global_sum(accelerator, sum(float((b.labels != 0).sum()) for b in batches))
    stats: dict[str, list[float]] = {key: [] for key in ("pg", "kl", "ratio", "clipped", "bt", "bt_correct", "loss")}
    for batch in batches:
        inputs = batch.policy.to(device)
        mask = inputs.response_mask
        with accelerator.autocast():
            log_probs = response_log_probs(policy.model.backbone, inputs, temperature=config.temperature)
            clipped = token_ppo_clip_loss(log_probs, batch.old_log_probs, batch.advantages.to(device), mask,
                                          clip_low=config.clip_low, clip_high=config.clip_high,
                                          dual_clip=config.dual_clip)
            loss = masked_token_sum(clipped.loss, mask) / tokens
            kl = torch.zeros_like(log_probs)
            if config.kl_coef > 0:
                kl = low_var_kl(log_probs, batch.reference_log_probs)
                loss = loss + config.kl_coef * masked_token_sum(kl, mask) / tokens
            bt = None
            if batch.reward is not None and decided > 0:
                rewards = head_rewards(policy.model, batch.reward.to(device)).view(-1, 2)
                bt = paired_bt_loss(rewards[:, :1], rewards[:, 1:], batch.labels.to(device))
                loss = loss + config.bt_weight * bt.loss.sum() / decided
        accelerator.backward(loss)
        real = mask.bool()
        stats["loss"].append(float(loss.detach()))
        stats["pg"] += clipped.loss[real].detach().cpu().tolist()
        stats["kl"] += kl[real].detach().cpu().tolist()
        stats["ratio"] += clipped.ratio[real].cpu().tolist()
        stats["clipped"] += clipped.clipped[real].float().cpu().tolist()
        if bt is not None:
            stats["bt"] += bt.loss.detach().cpu().tolist()
            stats["bt_correct"] += (bt.labels * bt.margins > 0).float().cpu().tolist()
    parameters = list(policy.parameters.values())
    sum_gradients(accelerator, parameters)
    _, applied = guarded_optimizer_step(accelerator, optimizer, parameters, max_grad_norm=config.max_grad_norm,
                                        losses=stats["loss"])
    return stats, applied


def sum_gradients(accelerator: Accelerator, parameters: list[torch.nn.Parameter]) -> None:
    """Sum every gradient over the processes (each loss term is already divided by its global count). The
    model is not DDP-wrapped: one optimizer step takes two forwards per micro-batch (policy and head).

    A tensor that got a gradient on some process is summed everywhere (zeros where it got none); one that got
    none on any process (the head in an update whose pairs are all ties) keeps ``grad = None``, so AdamW leaves
    it alone exactly as a single process would.
    """
    if accelerator.num_processes == 1:
        return
    local = torch.tensor([float(parameter.grad is not None) for parameter in parameters], device=accelerator.device)
    anywhere = accelerator.reduce(local, "sum") > 0
    for parameter, needed in zip(parameters, anywhere.tolist()):
        if not needed:
            continue
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        parameter.grad = accelerator.reduce(parameter.grad, "sum")
