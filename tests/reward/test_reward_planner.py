"""DeScore's step-cost planner (``descore reward plan``): the measured H100 points come back, local checkpoints
are counted exactly, and the command prints what fits."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from descore.cli import run_cli
from reward import planner
from reward.errors import ConfigError
from reward.gpu_classes import GPUS

from ..conftest import REPO_ROOT

MEASURED = json.loads((REPO_ROOT / "benchmarks/gpu/results/descore_stage1_h100_2026-11-26.json").read_text())
H100 = GPUS["h100-80gb"]
MODEL = planner.HUB[planner.QWEN3_VL_8B]


def measured(name: str, videos: int) -> dict:
    return next(m for m in MEASURED["measurements"] if m["name"].startswith(name) and m["videos"] == videos)


def test_the_benchmark_clip_gives_its_900_video_tokens():
    # BENCHMARKS.md: 5 s at 480x832 through the stage-1 contract -> 10 frames at 320x576 -> 900 tokens.
    assert planner.video_tokens(5.0, 480, 832, fps=2.0, min_frames=4, max_frames=768, max_pixels=200_704) == 900
    assert MODEL.params == MEASURED["parameters"]
    assert MODEL.vision_params + MODEL.lora_params(64) == MEASURED["trainable_parameters"]


def test_reproduces_the_measured_h100_points():
    train = measured("train step", 2)
    e = planner.train_estimate(MODEL, H100, lora_rank=64, pairs=1, checkpointing=True, tokens=train["seq_len"],
                               accumulation=1)
    assert e.seconds == pytest.approx(train["seconds"], rel=0.15)
    assert e.peak_gib == pytest.approx(train["peak_memory_gib"], rel=0.15)
    for videos in (1, 8):
        point = measured("score no-CoT", videos)
        e = planner.score_estimate(MODEL, H100, batch=videos, tokens=point["seq_len"])
        assert e.seconds == pytest.approx(point["seconds"], rel=0.15)
        assert e.peak_gib == pytest.approx(point["peak_memory_gib"], rel=0.15)


def test_a_local_checkpoint_is_counted_from_its_weights(tiny_qwen3_vl_dir):
    counts = {"all": 0, "visual": 0}
    for path in tiny_qwen3_vl_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as weights:
            for name in weights.keys():
                numel = weights.get_tensor(name).numel()
                counts["all"] += numel
                counts["visual"] += numel if "visual" in name.split(".") else 0
    backbone = planner.qwen_vl(str(tiny_qwen3_vl_dir))
    assert (backbone.params, backbone.vision_params) == (counts["all"], counts["visual"]) and counts["visual"] > 0
    # As a reward term beside Wan (81 frames = 5.06 s -> 10 frames at 2 fps, 320x576: 900 video tokens + 695).
    gib, note = planner.reward_term_gib({"name": "descore_no_cot", "path": str(tiny_qwen3_vl_dir), "batch_size": 2},
                                        num_frames=81, height=480, width=832)
    assert gib == pytest.approx(planner.score_estimate(backbone, H100, batch=2, tokens=900 + 695).peak_gib)
    assert str(tiny_qwen3_vl_dir) in note


def test_reward_plan_command(capsys):
    assert run_cli(["reward", "plan", "--config", "cold_start_qwen3vl_8b", "--gpu", "4090"]) == 0
    table = capsys.readouterr().out
    assert "EXTRAPOLATED" in table and "the recipe as written (does NOT fit)" in table and "--batch_size 16" in table
    assert run_cli(["reward", "plan", "--config", "cold_start_qwen3vl_8b", "--gpu", "h100-80gb", "--json", "true"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["recipe"]["peak_gib"] == pytest.approx(measured("train step", 2)["peak_memory_gib"], rel=0.15)
    # effective_batch_size 32 on 8 GPUs: 4 pairs per GPU, so only 1, 2 and 4 pairs per micro-step keep it.
    assert {e["flags"].split()[1] for e in plan["training"]} <= {"1", "2", "4"}
    with pytest.raises(ConfigError, match="the planner reads a local Qwen3-VL folder or knows Qwen/Qwen3-VL-8B-Instruct"):
        run_cli(["reward", "plan", "--config", "cold_start_qwen3vl_8b", "--model_name_or_path", "org/other-vlm"])
