"""Synthetic preference sets with a known answer, made of real encoded videos.

Used by the demo and the tests to show that training *learns*: a coloured square glides over a
background; in a ``visual`` set the preferred clip is clean and the rejected one is buried in noise (the
answer is in the pixels, and the CoTs describe it); in a ``cot_only`` set both clips come from the same
distribution and only the CoTs carry the answer, which shows whether the head reads the CoT.

:func:`make_photo_benchmark` films a real photograph instead (matplotlib's sample portrait of Grace Hopper,
shipped with matplotlib): a virtual camera pans across it, and the rejected clip of a pair is the same pan
blurred, noisy or stuttering — natural-image content with a known preference, for benchmarking reward models
where nothing can be downloaded.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torchvision.transforms.functional import gaussian_blur

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


def _sub_scores(good: bool) -> dict[str, int | str]:
    """The ground truth of a clip: subject and dynamics 2 when clean, 0 when buried in noise; the rest N/A."""
    return {name: (2 if good else 0) if name in ("subject", "dynamics") else "N/A" for name in SUB_DIMENSIONS}


def _cot(colour: str, direction: str, good: bool) -> str:
    if good:
        look, overall = "the frames are clean and the motion is smooth", 4.80
    else:
        look, overall = "the frames are buried in heavy noise and the square is hard to see", 1.50
    answer = json.dumps({"dimensional_scores": _sub_scores(good), "overall_score": overall})
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
    """Write ``pairs`` labelled pairs (mp4 videos + a CSV in our layout, with CoTs and the ground-truth sub-scores
    stage 2 needs) and return the CSV path.

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
            "scores_a": json.dumps(_sub_scores(a_wins)),
            "scores_b": json.dumps(_sub_scores(not a_wins)),
        })
    return write_rows(directory / file_name, rows)


PHOTO_PROMPT = "a slow, steady camera pan across a portrait photograph of a woman in uniform"
Degradation = Callable[[np.ndarray, np.random.Generator], np.ndarray]
DEGRADATIONS: dict[str, Degradation] = {
    "blurred": lambda clip, rng: gaussian_blur(torch.from_numpy(clip).permute(0, 3, 1, 2), [9, 9], [3.0, 3.0])
    .permute(0, 2, 3, 1).numpy(),
    "noisy": lambda clip, rng: np.clip(clip + rng.normal(0.0, 40.0, clip.shape), 0, 255).astype(np.uint8),
    "stuttering": lambda clip, rng: clip[np.arange(len(clip)) // 3 * 3],
}


def photo_pan_clip(photo: np.ndarray, rng: np.random.Generator, *, frames: int, size: tuple[int, int]) -> np.ndarray:
    """A ``size`` window gliding in a straight line across ``photo`` (H, W, 3 uint8), from one random corner
    region to another, resized to ``size``: real image content with smooth camera motion."""
    from PIL import Image

    height, width = size
    crop_h, crop_w = photo.shape[0] // 2, photo.shape[1] // 2
    start = rng.integers(0, [photo.shape[0] - crop_h, photo.shape[1] - crop_w])
    end = rng.integers(0, [photo.shape[0] - crop_h, photo.shape[1] - crop_w])
    clip = []
    for index in range(frames):
        top, left = np.round(start + (end - start) * index / max(frames - 1, 1)).astype(int)
        window = Image.fromarray(photo[top : top + crop_h, left : left + crop_w])
        clip.append(np.asarray(window.resize((width, height), Image.Resampling.BICUBIC)))
    return np.stack(clip)


def make_photo_benchmark(
    directory: str | Path,
    *,
    pairs: int,
    ties: int = 0,
    seed: int = 0,
    fps: float = 8.0,
    frames: int = 16,
    size: tuple[int, int] = (64, 64),
    file_name: str = "pairs.csv",
) -> Path:
    """Write a preference benchmark in our pair layout over pans across a real photograph; return the CSV.

    Each of the first ``pairs`` pairs puts a clean pan against the same pan blurred, noisy or stuttering
    (cycling), the clean one preferred, on A and B alternately; ``ties`` more pairs hold two clean pans of the
    same photo, labelled ties. Lossless encoding makes the files a function of ``seed`` alone.
    """
    from matplotlib import cbook
    from PIL import Image

    directory = Path(directory)
    photo = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(pairs + ties):
        clean = photo_pan_clip(photo, rng, frames=frames, size=size)
        if index < pairs:
            kind = list(DEGRADATIONS)[index % len(DEGRADATIONS)]
            other, label = DEGRADATIONS[kind](clean, rng), ("A" if index % 2 == 0 else "B")
            clip_a, clip_b = (clean, other) if label == "A" else (other, clean)
        else:
            clip_a, clip_b, label = clean, photo_pan_clip(photo, rng, frames=frames, size=size), "tie"
        names = (f"videos/{seed}_{index}_a.mp4", f"videos/{seed}_{index}_b.mp4")
        for name, clip in zip(names, (clip_a, clip_b)):
            write_video(directory / name, clip, fps, lossless=True)
        rows.append({"prompt": PHOTO_PROMPT, "video_a": names[0], "video_b": names[1], "label": label})
    return write_rows(directory / file_name, rows)


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    """A CSV with the first row's keys as header."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
