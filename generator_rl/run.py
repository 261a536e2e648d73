"""Run plumbing shared by the generator jobs: the accelerator, stable per-sample seeds, sample videos."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from reward.video import write_video

from .policy import WAN_FPS


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
