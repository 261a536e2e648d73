"""Fixtures of the reward tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reward.modeling import DeScoreModel, LoraSettings, save_descore

from ..conftest import TINY_SPEC


@pytest.fixture(scope="package")
def checkpoint(tiny_qwen3_vl_dir, tmp_path_factory) -> Path:
    """A merged DeScore checkpoint over the tiny Qwen3-VL (random head, seeded). Tests copy it before changing it."""
    torch.manual_seed(0)
    model = DeScoreModel.from_base(str(tiny_qwen3_vl_dir), video_spec=TINY_SPEC, lora=LoraSettings(r=4, alpha=8))
    return save_descore(model.merge_lora_(), tmp_path_factory.mktemp("descore") / "ckpt")
