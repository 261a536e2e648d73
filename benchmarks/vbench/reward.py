"""VBench's per-video dimensions as a registry reward, ``vbench``: a held-out guard (docs/guards.md), or any
reward entry, scores a video the way ``descore bench vbench`` does.

The ``reward`` package imports nothing from ``benchmarks``, so this module registers itself as a plugin: the
entry point ``vbench = "benchmarks.vbench.reward"`` in the group ``descore.rewards`` (pyproject.toml), which
the registry imports the first time the name ``vbench`` is looked up (:func:`reward.base.check_reward_entry`).

One entry scores one dimension::

    guards:
      - {name: vbench, dimension: dynamic_degree, weights: ~/.cache/vbench}
      - {name: vbench, label: subject, dimension: subject_consistency, weights: ~/.cache/vbench}

Frames. A file is read as the harness reads it (:func:`benchmarks.vbench.job.decode_video`: every frame at
native resolution, the container's fps), so its value equals the harness's per-video number. In-memory clips
(:class:`reward.video.VideoFrames`, e.g. a rollout's decoded frames at 16 fps) are quantised to uint8 as a
video encoder's input would be and scored at their stated fps. They skip the codec: the same clip written to
mp4 and then measured differs by what the compression changed (most visible in temporal flickering and
imaging quality), and dynamic degree depends on the fps a clip states (docs/vbench/harness.md).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reward.base import RewardOutput, ScoredItem, register_reward
from reward.errors import ConfigError, VideoDecodeError
from reward.scoring import default_device
from reward.video import DecodeLimits, VideoFrames, VideoSource, frames_as_uint8

from .job import check_video, decode_video
from .metrics import DIMENSIONS, Extractors, check_dimensions, score_video
from .weights import load_extractors, require_weight_files, required_fields, resolve_dtype

logger = logging.getLogger(__name__)

MIN_FRAMES = 2  # consistency and flickering compare consecutive frames; a file needs as many (reward.video)


@dataclass(frozen=True)
class VBenchSettings:
    """A ``vbench`` entry's options, checked and resolved before any weights load."""

    dimension: str
    weights: Path | None
    batch_size: int
    device: torch.device
    dtype: torch.dtype | None
    skip_invalid: bool
    decode_limits: DecodeLimits


def vbench_settings(
    *, dimension: Any, weights: Any, batch_size: Any, device: Any, dtype: Any, skip_invalid: Any, decode_limits: Any,
) -> VBenchSettings:
    """Check every option; the weight files the dimension reads must exist (:mod:`benchmarks.vbench.weights`).

    Raises:
        ConfigError: the first bad option, named with its value and what it accepts.
    """
    if not isinstance(dimension, str):
        raise ConfigError(f"vbench reward: dimension must be one of {', '.join(DIMENSIONS)}, got {dimension!r}")
    try:
        check_dimensions([dimension])
    except ValueError as error:
        raise ConfigError(f"vbench reward: {error}") from error
    folder = None if weights is None else Path(weights).expanduser()
    fields = required_fields([dimension])
    if fields and folder is None:
        raise ConfigError(f"vbench reward: {dimension} needs weights, a folder in VBench's cache layout "
                          "(as `bench vbench --weights`; docs/vbench/weights.md)")
    if fields:
        try:
            require_weight_files(folder, fields)
        except ConfigError as error:
            raise ConfigError(f"vbench reward ({dimension}): {error}") from error
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"vbench reward: batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(skip_invalid, bool):
        raise ConfigError(f"vbench reward: skip_invalid must be true or false, got {skip_invalid!r}")
    try:
        resolved_device = default_device() if device is None else torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"vbench reward: device must be cpu, cuda or cuda:N, got {device!r}") from error
    if isinstance(decode_limits, Mapping):
        try:
            decode_limits = DecodeLimits(**decode_limits)
        except TypeError as error:
            raise ConfigError(f"vbench reward: decode_limits takes max_duration_s, max_pixels_per_frame and "
                              f"max_decoded_bytes, got {dict(decode_limits)}") from error
    if decode_limits is not None and not isinstance(decode_limits, DecodeLimits):
        raise ConfigError(f"vbench reward: decode_limits must be a mapping of DecodeLimits fields, got {decode_limits!r}")
    return VBenchSettings(dimension, folder, batch_size, resolved_device, resolve_dtype(dtype), skip_invalid,
                          decode_limits or DecodeLimits())


def video_frames(video: VideoSource, *, limits: DecodeLimits) -> tuple[torch.Tensor, float]:
    """uint8 ``(T, 3, H, W)`` frames and their fps: a file's every frame and container fps (its header checked
    against ``limits`` first, as the harness does), or in-memory frames quantised to uint8 at their stated fps.

    Raises:
        VideoDecodeError: an unreadable file, one over ``limits``, or in-memory frames of a bad shape, range or
            fps, or fewer than two.
    """
    if not isinstance(video, VideoFrames):
        check_video(str(video), limits=limits)
        return decode_video(str(video))
    fps = float(video.fps)
    if not (fps > 0 and math.isfinite(fps)):
        raise VideoDecodeError(video.name, f"the frame rate must be a positive number, got {video.fps}")
    # laid out as the decoder's frames (channels last, permuted), so both run the identical computation
    frames = torch.from_numpy(np.ascontiguousarray(frames_as_uint8(video))).permute(0, 3, 1, 2)
    if len(frames) < MIN_FRAMES:
        raise VideoDecodeError(video.name, f"it has {len(frames)} frame(s); at least {MIN_FRAMES} are needed")
    return frames, fps


@register_reward("vbench")
class VBenchReward:
    """One VBench dimension of each video, the number the harness reports per video: the consistencies,
    aesthetic quality and temporal flickering in [0, 1], imaging quality the raw MUSIQ MOS (about 0..100),
    dynamic degree 1.0 (dynamic) or 0.0 (static). None of these reads the prompt.

    ``weights``: VBench's weight folder, as ``bench vbench --weights`` (temporal flickering needs none);
    ``batch_size``: frames per DINO / CLIP call; ``dtype``: DINO and CLIP's (default: as VBench runs them);
    ``skip_invalid``: an unreadable video gives NaN and its error instead of raising; ``decode_limits``:
    :class:`reward.video.DecodeLimits` fields for files (all their frames are decoded).
    """

    name = "vbench"

    def __init__(
        self,
        dimension: str,
        weights: str | Path | None = None,
        *,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        skip_invalid: bool = False,
        decode_limits: DecodeLimits | Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = vbench_settings(dimension=dimension, weights=weights, batch_size=batch_size, device=device,
                                        dtype=dtype, skip_invalid=skip_invalid, decode_limits=decode_limits)
        needs_weights = bool(required_fields([dimension]))
        self.extractors = Extractors() if not needs_weights else load_extractors(
            self.settings.weights, [dimension], device=self.settings.device, dtype=self.settings.dtype)

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Check an entry's options without loading weights (:func:`reward.base.check_reward_entry` calls this)."""
        if "dimension" not in options:
            raise ConfigError(f"vbench reward needs a dimension, one of {', '.join(DIMENSIONS)}")
        try:
            bound = inspect.signature(cls).bind(**options)
        except TypeError as error:
            raise ConfigError(f"vbench reward: {error}") from error
        bound.apply_defaults()
        vbench_settings(**bound.arguments)

    def score(self, videos: Sequence[VideoSource], prompts: Sequence[str]) -> RewardOutput:
        if len(videos) != len(prompts):
            raise ValueError(f"got {len(videos)} videos and {len(prompts)} prompts")
        items = []
        for index, video in enumerate(videos):
            try:
                frames, fps = video_frames(video, limits=self.settings.decode_limits)
            except VideoDecodeError as error:
                if not self.settings.skip_invalid:
                    raise
                logger.warning("skipping item %d: %s", index, error)
                items.append(ScoredItem(reward=math.nan, error=str(error)))
                continue
            with torch.inference_mode():
                value = score_video(self.settings.dimension, frames.to(self.settings.device), fps=fps,
                                    extractors=self.extractors, batch_size=self.settings.batch_size).value
            items.append(ScoredItem(reward=value))
        return RewardOutput(items)
