"""Test helpers shared by the reward tests (not fixtures: plain functions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from trl import TrlParser

from benchmarks.synthetic import square_clip
from reward.video import write_video
from reward.cold_start import ColdStartConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = REPO_ROOT / "configs" / "reward" / "tiny_cold_start.yaml"


def tiny_config(model_dir: Path, train: Path, output_dir: Path, held_out: Path | None = None, **overrides) -> ColdStartConfig:
    """The shipped tiny recipe, pointed at test data, through the same parser as the CLI."""
    args = [
        "--config", str(TINY_RECIPE),
        "--model_name_or_path", str(model_dir),
        "--train_data", str(train),
        "--output_dir", str(output_dir),
        "--report_to", "none",
        "--disable_tqdm", "true",
    ]
    if held_out is not None:
        args += ["--eval_data", str(held_out)]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    (config,) = TrlParser([ColdStartConfig]).parse_args_and_config(args)
    return config


def small_clip(path: Path, *, frames: int = 8, fps: float = 4.0, seed: int = 0) -> Path:
    """A real 8-frame 64x64 h264 clip."""
    clip = square_clip(np.random.default_rng(seed), colour="red", direction="left", noise=5.0, frames=frames)
    return write_video(path, clip, fps)


def truncated_clip(path: Path) -> Path:
    """An mp4 cut to a third of its bytes: the container index ('moov atom') is gone."""
    whole = small_clip(path.with_name("whole_" + path.name)).read_bytes()
    path.write_bytes(whole[: len(whole) // 3])
    return path
