"""Sanity-check rewards: cheap, programmatic, no weights.

They are **not** measures of video quality. They exist so a user can confirm that an RL run learns — the
reward curve rises within a few steps on a tiny model — before spending GPU hours on a real reward model.
Each reads videos through the video contract (its own ``VideoSpec``, 16 fps by default so that temporal
measures see Wan's frames) and follows the reward-model interface.
"""

from __future__ import annotations

import functools
import io
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .base import RewardOutput, ScoredItem, register_reward
from .errors import VideoDecodeError
from .video import VideoSource, VideoSpec, load_video

SANITY_SPEC = VideoSpec(fps=16.0, min_frames=2, max_frames=256, min_pixels=64, max_pixels=256 * 256, pixel_factor=8)
FrameMeasure = Callable[[torch.Tensor], float]


def brightness(frames: torch.Tensor) -> float:
    """Mean pixel value in [0, 1]. Any policy can raise it by washing the video out — a sanity check only."""
    return float(frames.mean() / 255.0)


def jpeg_compressibility(frames: torch.Tensor) -> float:
    """Minus the JPEG size (bits per pixel at quality 95) averaged over frames: flatter frames score higher.
    The video analogue of flow_grpo's JPEG-compressibility check."""
    sizes = []
    for frame in frames.round().to(torch.uint8).permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
        sizes.append(8 * buffer.tell() / (frame.shape[0] * frame.shape[1]))
    return -float(np.mean(sizes))


def temporal_smoothness(frames: torch.Tensor) -> float:
    """Minus the mean absolute change between consecutive frames, in [0, 1] units: a still video scores 0."""
    return -float((frames[1:] - frames[:-1]).abs().mean() / 255.0)


class FrameStatisticReward:
    """A reward computed from each video's frames (T, 3, H, W), values in [0, 255]."""

    def __init__(self, name: str, measure: FrameMeasure, *, spec: VideoSpec = SANITY_SPEC, skip_invalid: bool = False) -> None:
        self.name, self.measure, self.spec, self.skip_invalid = name, measure, spec, skip_invalid

    def score(self, videos: Sequence[VideoSource], prompts: Sequence[str]) -> RewardOutput:
        if len(videos) != len(prompts):
            raise ValueError(f"got {len(videos)} videos and {len(prompts)} prompts")
        items = []
        for video in videos:
            try:
                frames = load_video(video, self.spec).frames.clamp(0, 255)
            except VideoDecodeError as error:
                if not self.skip_invalid:
                    raise
                items.append(ScoredItem(reward=float("nan"), error=str(error)))
                continue
            items.append(ScoredItem(reward=self.measure(frames)))
        return RewardOutput(items)


for _measure in (brightness, jpeg_compressibility, temporal_smoothness):
    register_reward(_measure.__name__)(functools.partial(FrameStatisticReward, _measure.__name__, _measure))
