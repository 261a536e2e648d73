"""Group-relative advantages (GRPO) over rewards already gathered from every rank.

Samples of one prompt form a group; A_i = (r_i − mean_group) / (scale + eps) where the scale is

* ``group`` — the group's own standard deviation (Flow-GRPO's Wan config, DanceGRPO);
* ``max_group`` — the largest group standard deviation in the batch, shared by all groups (LongCat-GRPO's
  option as described in the LongCat-Video report, arXiv 2510.22200: near-tied groups are not blown up to unit
  variance; docs/generator_rl.md);
* ``global`` — the standard deviation of all rewards in the batch (Flow-GRPO's SD3 configs).

Standard deviations are the population ones (numpy's default, as flow_grpo's tracker). Items whose reward is
NaN (a failed reward call) get a NaN advantage and take no part in the statistics; the caller masks them.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

StdMode = Literal["group", "max_group", "global"]
STD_MODES: tuple[str, ...] = ("group", "max_group", "global")


class Advantages(NamedTuple):
    values: torch.Tensor  # (N,) float32, NaN where the reward was NaN
    zero_std_fraction: float  # share of groups whose rewards are all equal (no learning signal)


def group_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, std_mode: StdMode = "group", eps: float = 1e-4
) -> Advantages:
    """Normalise ``rewards`` (N,) within the groups given by integer ``group_ids`` (N,)."""
    if rewards.shape != group_ids.shape or rewards.ndim != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be equal 1-D shapes")
    if std_mode not in STD_MODES:
        raise ValueError(f"unknown std_mode {std_mode!r}; use one of {STD_MODES}")
    rewards = rewards.double()
    valid = torch.isfinite(rewards)
    advantages = torch.full_like(rewards, float("nan"))
    groups = [group_ids == group for group in torch.unique(group_ids[valid])]
    stats = []
    for members in groups:
        values = rewards[members & valid]
        stats.append((values.mean(), values.std(unbiased=False)))
    if std_mode == "global":
        shared = rewards[valid].std(unbiased=False) if valid.any() else torch.tensor(0.0, dtype=torch.float64)
    elif std_mode == "max_group":
        shared = max((std for _, std in stats), default=torch.tensor(0.0, dtype=torch.float64))
    for members, (mean, std) in zip(groups, stats):
        scale = std if std_mode == "group" else shared
        chosen = members & valid
        advantages[chosen] = (rewards[chosen] - mean) / (scale + eps)
    zero_std = sum(bool(std == 0) for _, std in stats) / len(stats) if stats else 0.0
    return Advantages(advantages.float(), zero_std)
