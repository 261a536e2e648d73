"""The reward side of the DeScore kit: video contract, DeScore model, stage-1 training, scoring, registry.

>>> import reward
>>> scorer = reward.load("runs/descore/final", cot=False)          # fast one-forward mode
>>> scorer.score(["clip.mp4"], ["a red square moving left"]).rewards
>>> scorer = reward.load("owner/descore-8b", revision="main")     # a hub id (HF_HUB_OFFLINE=1: cache only)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import RewardModel, RewardOutput, ScoredItem, build_reward, register_reward, registered_rewards
from . import sanity  # noqa: F401  (registers the sanity-check rewards)
from . import clip_scorers  # noqa: F401  (registers clip_score, pickscore, hpsv2, aesthetic)
from . import videoreward  # noqa: F401  (registers videoreward)
from . import vlm_judge  # noqa: F401  (registers vlm_judge)
from . import remote  # noqa: F401  (registers remote: a client of `descore reward serve`)
from .calibration import Calibration, read_calibration
from .composite import CompositeReward
from .scoring import DeScoreReward
from .video import DecodeLimits, VideoFrames, VideoSpec, load_video, probe_video


def load(path: str | Path, *, cot: bool = True, **options: Any) -> DeScoreReward:
    """Load a DeScore checkpoint as a reward model: a local folder (a training checkpoint or an export) or a hub
    id ``owner/name``; ``options`` (e.g. ``revision``, ``device``) go to :class:`DeScoreReward`."""
    return DeScoreReward(path, use_cot=cot, **options)


__all__ = [
    "Calibration",
    "CompositeReward",
    "DeScoreReward",
    "DecodeLimits",
    "RewardModel",
    "RewardOutput",
    "ScoredItem",
    "VideoFrames",
    "VideoSpec",
    "build_reward",
    "load",
    "load_video",
    "probe_video",
    "read_calibration",
    "register_reward",
    "registered_rewards",
]
