"""wandb tables of a generator run: the held-out evaluation's videos with every score, and GRPO's training
rollouts per logged step (prompt, group, each reward term, total, advantage, the first group's videos), the
video counterpart of trl's completions table. Logged from the main process, only when wandb is the tracker."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator

from reward.json_values import finite_or_none

from .run import logs_media, write_mp4

if TYPE_CHECKING:
    from .grpo import Rollout

EVAL_TABLE, ROLLOUT_TABLE = "eval/videos", "train/rollouts"


def log_evaluation_table(accelerator: Accelerator, step: int, run_dir: Path, rows: Sequence[Mapping[str, Any]],
                         labels: Sequence[str]) -> None:
    """One row per held-out video: prompt, seed, the video (its mp4 under ``run_dir``) and each label's value."""
    if not logs_media(accelerator):
        return
    import wandb

    table = wandb.Table(columns=["prompt", "seed", "video", *labels])
    for row in rows:
        table.add_data(row["prompt"], row["seed"], wandb.Video(str(run_dir / row["file"]), format="mp4"),
                       *(finite_or_none(row["values"][label]) for label in labels))
    accelerator.get_tracker("wandb").log({EVAL_TABLE: table}, step=step)


def log_rollout_table(accelerator: Accelerator, step: int, rollout: Rollout, advantages: torch.Tensor) -> None:
    """One row per rollout sample of this process: prompt, group, each reward term, total, advantage, and the
    video for the first group's samples (the videos ``Rollout.frames`` keeps)."""
    if not logs_media(accelerator):
        return
    import wandb

    terms = list(rollout.terms)
    table = wandb.Table(columns=["prompt", "group", *terms, "total", "advantage", "video"])
    with tempfile.TemporaryDirectory() as folder:  # wandb copies each file into the run when it is logged
        for index, prompt in enumerate(rollout.prompts):
            video = None
            if index < len(rollout.frames):
                video = wandb.Video(str(write_mp4(Path(folder) / f"{index}.mp4", rollout.frames[index])), format="mp4")
            table.add_data(prompt, int(rollout.group_ids[index]), *(finite_or_none(rollout.terms[t][index]) for t in terms),
                           finite_or_none(rollout.rewards[index]), finite_or_none(advantages[index]), video)
        accelerator.get_tracker("wandb").log({ROLLOUT_TABLE: table}, step=step)
