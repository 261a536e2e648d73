"""Shared fixtures: tiny real-architecture models and synthetic preference data, built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from benchmarks.synthetic import make_preference_set
from reward.modeling import DeScoreModel, LoraSettings, save_descore
from reward.tiny_models import save_tiny_vlm
from reward.video import VideoSpec

# Frames small enough for CPU: at most 64x64 px (4 merged tokens per frame for Qwen3-VL), 4-8 frames.
TINY_SPEC = VideoSpec(fps=2.0, min_frames=4, max_frames=8, min_pixels=1024, max_pixels=4096, pixel_factor=32)
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def tiny_source_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``tiny:`` sources build into a folder of this session, not the user's ~/.cache/descore (subprocesses
    inherit it)."""
    folder = tmp_path_factory.mktemp("descore-cache")
    previous = os.environ.get("DESCORE_CACHE")
    os.environ["DESCORE_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("DESCORE_CACHE")
    else:
        os.environ["DESCORE_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_qwen3_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vlm(tmp_path_factory.mktemp("tiny-qwen3-vl"), "qwen3_vl")


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vlm(tmp_path_factory.mktemp("tiny-qwen2.5-vl"), "qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_descore_dir(tiny_qwen3_vl_dir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A merged DeScore checkpoint over the tiny Qwen3-VL (random head, seeded). Tests copy it before changing it."""
    torch.manual_seed(0)
    model = DeScoreModel.from_base(str(tiny_qwen3_vl_dir), video_spec=TINY_SPEC, lora=LoraSettings(r=4, alpha=8))
    return save_descore(model.merge_lora_(), tmp_path_factory.mktemp("descore") / "ckpt")


@pytest.fixture(scope="session")
def tiny_zoo(tiny_qwen3_vl_dir, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """A registry entry per zoo reward model, each over a tiny random-weight checkpoint in its upstream layout
    (the VLM judge: the tiny Qwen3-VL, with small frames)."""
    from reward.tiny_clip import TINY_CLIP, save_aesthetic_head, save_hf_clip, save_open_clip_checkpoint
    from reward.videoreward_layout import save_tiny_videoreward

    root = tmp_path_factory.mktemp("tiny-zoo")
    clip = save_hf_clip(root / "clip")
    hps, hps_config = save_open_clip_checkpoint(root / "hps" / "HPS_v2.1_compressed.pt")
    return {
        "clip_score": {"name": "clip_score", "path": str(clip)},
        "pickscore": {"name": "pickscore", "path": str(clip), "processor_path": None},
        "hpsv2": {"name": "hpsv2", "path": str(hps), "architecture": str(hps_config)},
        "aesthetic": {"name": "aesthetic", "path": str(clip),
                      "head": str(save_aesthetic_head(root / "aesthetic-model.pth", TINY_CLIP.projection_dim))},
        "videoreward": {"name": "videoreward", "path": str(save_tiny_videoreward(root / "videoreward")), "dimension": "TA"},
        "vlm_judge": {"name": "vlm_judge", "path": str(tiny_qwen3_vl_dir), "video_spec": TINY_SPEC.to_dict()},
        "composite": {"name": "composite", "terms": [{"name": "clip_score", "path": str(clip), "normalize": "rank"},
                                                     {"name": "brightness", "weight": 0.5}]},
    }


@pytest.fixture(scope="session")
def visual_pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train.csv, eval.csv) of the synthetic task whose answer is in the pixels (and the CoTs)."""
    root = tmp_path_factory.mktemp("visual-pairs")
    train = make_preference_set(root, pairs=64, task="visual", seed=0, file_name="train.csv")
    held_out = make_preference_set(root, pairs=32, task="visual", seed=1, file_name="eval.csv")
    return train, held_out
