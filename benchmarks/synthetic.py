"""Synthetic preference sets with a known answer, made of real encoded videos.

Used by the demo and the tests to show that training *learns*: a coloured square glides over a
background; in a ``visual`` set the preferred clip is clean and the rejected one is buried in noise (the
answer is in the pixels, and the CoTs describe it); in a ``cot_only`` set both clips come from the same
distribution and only the CoTs carry the answer, which shows whether the head reads the CoT.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Literal

import numpy as np

from reward.prompts import SUB_DIMENSIONS
from reward.video import write_video

Task = Literal["visual", "cot_only"]
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 230), "yellow": (230, 210, 40)}
DIRECTIONS = ("left", "right")


def square_clip(
    rng: np.random.Generator,
    *,
    colour: str,
    direction: str,
    noise: float,
    frames: int = 8,
    size: tuple[int, int] = (64, 64),
) -> np.ndarray:
    """A square of ``colour`` gliding ``direction`` over a grey background, with Gaussian pixel ``noise``."""
    height, width = size
    side = height // 3
    background = rng.integers(60, 120)
    clip = np.full((frames, height, width, 3), background, dtype=np.float32)
    top = rng.integers(0, height - side)
    for index in range(frames):
        progress = index / max(frames - 1, 1)
        left = int(progress * (width - side)) if direction == "right" else int((1 - progress) * (width - side))
        clip[index, top : top + side, left : left + side] = COLOURS[colour]
    clip += rng.normal(0.0, noise, size=clip.shape)
    return np.clip(clip, 0, 255).astype(np.uint8)


def _cot(colour: str, direction: str, good: bool) -> str:
    if good:
        look, subject, overall = "the frames are clean and the motion is smooth", 2, 4.80
    else:
        look, subject, overall = "the frames are buried in heavy noise and the square is hard to see", 0, 1.50
    scores = {name: subject if name in ("subject", "dynamics") else "N/A" for name in SUB_DIMENSIONS}
    answer = json.dumps({"dimensional_scores": scores, "overall_score": overall})
    return (
        f"The prompt asks for a {colour} square moving {direction}. The video shows a {colour} square; {look}.\n"
        f"<answer>\n```json\n{answer}\n```\n</answer>"
    )


def make_preference_set(
    directory: str | Path,
    *,
    pairs: int,
    task: Task = "visual",
    seed: int = 0,
    fps: float = 4.0,
    frames: int = 8,
    size: tuple[int, int] = (64, 64),
    file_name: str = "pairs.csv",
) -> Path:
    """Write ``pairs`` labelled pairs (mp4 videos + a CSV in our layout) and return the CSV path.

    Labels alternate between A and B so a constant predictor scores 0.5.
    """
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(pairs):
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        direction = DIRECTIONS[rng.integers(2)]
        if task == "visual":
            noises = (3.0, 90.0)
        else:
            level = float(rng.uniform(3.0, 40.0))
            noises = (level, level)
        preferred, rejected = (
            square_clip(rng, colour=colour, direction=direction, noise=noise, frames=frames, size=size)
            for noise in noises
        )
        a_wins = index % 2 == 0
        clip_a, clip_b = (preferred, rejected) if a_wins else (rejected, preferred)
        name_a, name_b = f"videos/{seed}_{index}_a.mp4", f"videos/{seed}_{index}_b.mp4"
        write_video(directory / name_a, clip_a, fps, lossless=True)
        write_video(directory / name_b, clip_b, fps, lossless=True)
        rows.append({
            "prompt": f"a {colour} square moving {direction}",
            "video_a": name_a,
            "video_b": name_b,
            "label": "A" if a_wins else "B",
            "cot_a": _cot(colour, direction, good=a_wins),
            "cot_b": _cot(colour, direction, good=not a_wins),
        })
    path = directory / file_name
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
