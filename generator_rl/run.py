"""Run plumbing shared by the generator jobs: setting a training run up and down, stable per-sample seeds,
permuted data order, sample videos."""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

from reward.video import write_video

from .checkpointing import RunState, export_final, latest_checkpoint, register_lora_hooks
from .config import read_prompts
from .policy import WAN_FPS, WanPolicy
from .rewards import RewardMix, RewardTerm

logger = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """Everything a generator trainer works with, set up identically for GRPO and Flow-DPO."""

    run_dir: Path
    accelerator: Accelerator
    policy: WanPolicy
    model: torch.nn.Module  # the transformer as prepared by accelerate (DDP-wrapped on several processes)
    optimizer: torch.optim.Optimizer
    state: RunState
    ema: Any  # diffusers EMAModel of the LoRA weights, or None
    rewards: RewardMix
    prompts: list[str]

    def after_optimizer_step(self, step: int) -> None:
        if self.ema is not None:
            self.ema.step(self.policy.trainable_parameters())
        self.state.step = step + 1

    def after_skipped_step(self, step: int) -> None:
        """A skipped step moves the data position on but leaves the weights and the EMA as they were."""
        self.state.step = step + 1


def start_run(policy_args: Any, run_args: Any, reward_terms: list[RewardTerm], *, project: str, config: dict[str, Any]) -> TrainingRun:
    """Accelerator and trackers, the policy with cached prompts, rewards, AdamW on the LoRA weights, the EMA,
    checkpoint hooks, and — if ``output_dir`` holds a checkpoint — everything restored from the newest one."""
    run_dir = Path(run_args.output_dir)
    accelerator = make_accelerator(run_args, project=project, config=config)
    set_seed(run_args.seed)
    prompts = read_prompts(run_args.prompts)
    policy = policy_args.load_policy(accelerator.device)
    policy.cache_prompts(prompts)
    policy.offload_text_encoder()
    rewards = RewardMix(reward_terms)
    optimizer = torch.optim.AdamW(
        policy.trainable_parameters(), lr=run_args.learning_rate, betas=(0.9, 0.999), weight_decay=run_args.weight_decay,
        eps=1e-8,
    )
    model, optimizer = accelerator.prepare(policy.transformer, optimizer)
    policy.runner = model
    state = RunState()
    accelerator.register_for_checkpointing(state)
    ema = None
    if run_args.ema_decay is not None:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(policy.trainable_parameters(), decay=run_args.ema_decay)
        accelerator.register_for_checkpointing(ema)
    register_lora_hooks(accelerator, policy)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        logger.info("resuming from %s", checkpoint)
        accelerator.load_state(str(checkpoint))
    return TrainingRun(run_dir, accelerator, policy, model, optimizer, state, ema, rewards, prompts)


def finish_run(run: TrainingRun, *, fused: bool) -> Path:
    """Swap the EMA weights in (if any), export ``final/`` from the main process, close the trackers."""
    run.accelerator.wait_for_everyone()
    if run.ema is not None:
        run.ema.copy_to(run.policy.trainable_parameters())
    final = run.run_dir / "final"
    if run.accelerator.is_main_process:
        export_final(run.policy, run.run_dir, fused=fused)
    close_run(run.accelerator)
    return final


def make_accelerator(run_args: Any, *, project: str, config: dict[str, Any]) -> Accelerator:
    """An accelerator logging to ``run_args.report_to`` under ``output_dir`` (wandb offline by default)."""
    run_dir = Path(run_args.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tracker = None if run_args.report_to == "none" else run_args.report_to
    accelerator = Accelerator(
        mixed_precision=run_args.mixed_precision,
        log_with=tracker,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        # Without a GPU, cpu=True is what makes accelerate join a torchrun group (gloo) instead of running alone.
        cpu=not torch.cuda.is_available(),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise RuntimeError(
            f"launched with WORLD_SIZE={launched} but accelerate sees {accelerator.num_processes} process(es); "
            "the processes would train independently — check the launcher and the accelerate config"
        )
    if tracker is not None:
        flat = {f"{group}.{key}": _plain(value) for group, args in config.items() for key, value in vars(args).items()}
        init = {"wandb": {"dir": str(run_dir)}} if tracker == "wandb" else {}
        accelerator.init_trackers(project, config=flat, init_kwargs=init)
    return accelerator


def close_run(accelerator: Accelerator) -> None:
    """Finish the trackers and reset wandb's process-wide settings, so a later run in the same process (the
    demo, a notebook, a test session) logs to its own directory instead of this one's."""
    accelerator.end_training()
    if any(tracker.name == "wandb" for tracker in accelerator.trackers):
        import wandb

        wandb.teardown()


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str([item.to_dict() if hasattr(item, "to_dict") else item for item in value]) if isinstance(value, list) else str(value)


def seeded_generator(seed: int, step: int, *keys: Any) -> torch.Generator:
    """A CPU generator whose seed is a stable hash of (seed, step, keys) — the same in every process and run."""
    words = [seed, step, *(key if isinstance(key, int) else zlib.crc32(str(key).encode()) for key in keys)]
    state = np.random.SeedSequence([int(word) & 0xFFFFFFFF for word in words]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def write_samples(accelerator: Accelerator, folder: Path, step: int, frames: torch.Tensor, prompts: list[str]) -> list[Path]:
    """Write (N, T, 3, H, W) frames in [0, 1] as 16 fps mp4s and log them to wandb when it is the tracker."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, video in enumerate(frames):
        array = (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        height, width = array.shape[1:3]
        if height % 2 or width % 2:  # yuv420p needs even sizes
            array = array[:, : height - height % 2, : width - width % 2]
        paths.append(write_video(folder / f"step_{step:06d}_{index}.mp4", array, WAN_FPS))
    if any(tracker.name == "wandb" for tracker in accelerator.trackers) and os.environ.get("WANDB_MODE") != "disabled":
        import wandb

        accelerator.get_tracker("wandb").log(
            {"samples": [wandb.Video(str(path), caption=prompts[i]) for i, path in enumerate(paths)]}, step=step
        )
    return paths


def permuted_slice(count: int, step: int, per_step: int, seed: int) -> list[int]:
    """Items of ``step`` when every epoch visits ``count`` items in a seeded random order: positions
    [step·per_step, (step + 1)·per_step) of the concatenated per-epoch permutations. Pure in its arguments,
    so a resumed run continues exactly where it stopped."""
    first, last = step * per_step, (step + 1) * per_step
    order: list[int] = []
    for epoch in range(first // count, (last - 1) // count + 1):
        order += torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    offset = (first // count) * count
    return order[first - offset : last - offset]
