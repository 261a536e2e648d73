"""The speed-switch GPU benchmark (benchmarks/gpu/speed_suite.py) at tiny size on CPU, so what a lent GPU runs cannot rot
between loans: every part and variant gives a row that is measured or honestly ``unsupported``; plus its pieces —
the MFU formula against a hand count and the numbers recorded on the H200, the attention-backend table, the
budget split and the speed-up column."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.gpu import harness, speed_suite, wan_rl_steps
from benchmarks.gpu.harness import Deadline
from reward.errors import ConfigError
from ..conftest import REPO_ROOT

OK = {"ok", "unsupported"}


def test_forward_flops_is_the_stated_formula():
    # 2·P·T = 2·1000·10 = 20,000; per layer 4·T²·d = 4·100·4 = 1,600 and cross-attention 4·T·512·d = 81,920;
    # two layers: 20,000 + 2·(1,600 + 81,920) = 187,040.
    assert wan_rl_steps.forward_flops(1000, 10, 2, 4) == 187_040
    # 3 forwards' worth (forward + backward) in 2 s on a 1e-6 TFLOP/s (1 MFLOP/s) peak
    assert harness.mfu(3 * 187_040, 2.0, 1e-6) == pytest.approx(0.28056)
    assert harness.mfu(None, 2.0, 989.0) is None and harness.mfu(1e12, 1.0, None) is None


def test_mfu_reproduces_the_h200_measurements():
    """The recorded 1.3B rows (BENCHMARKS.md): rollout = 2 forwards (CFG), train steps = 2·3 + 2 reference."""
    recorded = json.loads((REPO_ROOT / "benchmarks/gpu/results/wan_rl_steps_h200_2026-11-26.json").read_text())
    forwards = {"rollout step": 2, "GRPO train step": 8, "Flow-DPO micro-step": 8}
    checked = 0
    for row in recorded["rows"]:
        kind = row["measurement"].split(" (")[0]
        if kind not in forwards:
            continue
        flops = forwards[kind] * wan_rl_steps.forward_flops(recorded["transformer_params"], row["tokens"], 30, 12 * 128)
        assert harness.mfu(flops, row["seconds"], 989.0) == pytest.approx(row["mfu"], rel=1e-9)
        checked += 1
    assert checked == 6


def test_backend_table_on_this_cpu():
    """math and PyTorch's CPU flash kernel run here; cuDNN and memory-efficient attention are CUDA-only."""
    cpu = torch.device("cpu")
    assert speed_suite.backend_problem("math", cpu, torch.float32, 12) is None
    assert speed_suite.backend_problem("flash_attention", cpu, torch.float32, 12) is None
    for name in ("cudnn_attention", "efficient_attention"):
        problem = speed_suite.backend_problem(name, cpu, torch.float32, 12)
        assert harness.failure_status(RuntimeError(problem)) == "unsupported", problem
    assert harness.failure_status(torch.OutOfMemoryError("CUDA out of memory")) == "OOM"
    assert harness.failure_status(ValueError("bad")) == "error"
    assert harness.dense_bf16_peak("NVIDIA H200") == 989.0 and harness.dense_bf16_peak("NVIDIA H100 80GB HBM3") == 989.0
    assert harness.dense_bf16_peak("NVIDIA GeForce RTX 4090") is None


def test_shares_split_the_time_left_by_weight():
    deadline = Deadline(100.0)
    (first, a), (second, b) = list(speed_suite.shares({"wan": 3.0, "descore": 1.0}, deadline))
    assert (first, second) == ("wan", "descore")
    assert a.left() == pytest.approx(75.0, abs=1.0) and b.left() == pytest.approx(100.0, abs=1.0)  # a's rest rolls on
    assert all(not late.left() > 0 for _, late in speed_suite.shares({"x": 1.0}, Deadline(-5.0)))


def test_speedups_are_relative_to_each_parts_baseline():
    rows = [{"part": "wan", "variant": "eager", "frames": 33, "measurement": "m", "seconds": 2.0},
            {"part": "wan", "variant": "compiled", "frames": 33, "measurement": "m", "seconds": 1.6},
            {"part": "wan", "variant": "math", "frames": 33, "measurement": "m", "status": "OOM"},
            {"part": "descore", "variant": "sdpa", "measurement": "m", "seconds": 1.0},
            {"part": "descore", "variant": "eager", "measurement": "m", "seconds": 4.0}]
    assert [row["speedup"] for row in speed_suite.with_speedups(rows)] == [1.0, 1.25, None, 1.0, 0.25]


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown variants"):
        speed_suite.SuiteConfig(out=str(tmp_path), tiny=True, device="cpu", variants=["xformers"])
    with pytest.raises(ConfigError, match="4k\\+1"):
        speed_suite.SuiteConfig(out=str(tmp_path), tiny=True, device="cpu", frames=[8])
    with pytest.raises(ConfigError, match="needs a GPU"):
        speed_suite.SuiteConfig(out=str(tmp_path), device="cpu")


def _rows(out) -> list[dict]:
    report = json.loads((out / "speed_suite.json").read_text())
    assert report["errors"] == [] and report["mfu_formula"] == speed_suite.MFU_FORMULA
    return report["rows"]


def _sane(row: dict) -> None:
    assert row["status"] in OK, row
    if row["status"] == "ok":
        assert math.isfinite(row["seconds"]) and row["seconds"] > 0 and row["speedup"] > 0, row
        if row.get("unit") in ("rollout", "grpo", "dpo"):
            assert 0 < row["mfu"] < 1, row  # on a made-up 1 TFLOP/s peak: tiny FLOPs, a small positive fraction


def test_driver_runs_the_wan_14b_and_optimizer_parts_on_cpu(tmp_path, one_thread):
    """Eager, the pinned math/flash/cuDNN kernels (cuDNN: unsupported on CPU), the 14B stand-in plain and
    under FSDP2 on one gloo rank, and both AdamW kernels on each LoRA."""
    out = tmp_path / "run"
    assert speed_suite.main(["--out", str(out), "--tiny", "--device", "cpu", "--parts", "wan", "wan14b", "optimizer",
                             "--frames", "5",
                         "--variants", "eager", "math", "flash_attention", "cudnn_attention",
                         "--peak_tflops", "1"]) == 0
    rows = _rows(out)
    for row in rows:
        _sane(row)
    trained = ("rollout", "grpo", "dpo")
    wan = {(row["variant"], row["unit"]): row["status"] for row in rows if row["part"] == "wan"}
    # math's train steps run because the pin holds in checkpointing's recomputation too (WanPolicy.set_attention).
    assert wan == {**{("eager", unit): "ok" for unit in (*trained, "decode")},
                   **{(name, unit): "ok" for name in ("math", "flash_attention") for unit in trained},
                   **{("cudnn_attention", unit): "unsupported" for unit in trained}}
    big = {(row["variant"], row["unit"]) for row in rows if row["part"] == "wan14b" and row["status"] == "ok"}
    assert big == {(variant, unit) for variant in ("LoRA + checkpointing", "FSDP2, 1 rank") for unit in trained[:2]}
    adamw = {(row["variant"], row["measurement"]) for row in rows if row["part"] == "optimizer" and row["status"] == "ok"}
    assert adamw == {(kernel, f"AdamW step, Wan {model} LoRA") for kernel in ("foreach", "fused") for model in ("1.3b", "14b")}
    table = (out / "speed_suite.md").read_text()
    assert "| wan14b | FSDP2, 1 rank | 5 | GRPO train step" in table and "unsupported" in table


@pytest.mark.slow
def test_driver_runs_every_part_with_compile_on_cpu(tmp_path, one_thread):
    """The whole driver at tiny size: the Wan variants including ``compiled`` (inductor builds C++ kernels here:
    minutes), DeScore per attention implementation, the 14B stand-in and both AdamW kernels."""
    out = tmp_path / "run"
    assert speed_suite.main(["--out", str(out), "--tiny", "--device", "cpu", "--frames", "5", "--units", "rollout",
                         "--variants", "eager", "efficient_attention", "compiled", "--budget_s", "3600",
                         "--peak_tflops", "1"]) == 0
    rows = _rows(out)
    for row in rows:
        _sane(row)
    compiled = [row for row in rows if row["variant"] == "compiled"]
    assert [row["status"] for row in compiled] == ["ok"] and compiled[0]["graphs_warmup"] >= 1
    assert compiled[0]["graphs_timed"] == 0  # no recompiles once warm
    assert {row["status"] for row in rows if row["variant"] == "efficient_attention"} == {"unsupported"}
    descore = {(row["variant"], row["unit"]) for row in rows if row["part"] == "descore"}
    assert descore == {(attn, unit) for attn in ("sdpa", "eager")
                       for unit in ("train step (1 pair = 2 seqs)", "score no-CoT")}
    assert {row["part"] for row in rows} == {"wan", "descore", "wan14b", "optimizer"}
    assert {row["status"] for row in rows if row["part"] == "optimizer"} == {"ok"}


def test_a_spent_budget_skips_parts_and_says_so(tmp_path):
    out = tmp_path / "run"
    assert speed_suite.main(["--out", str(out), "--tiny", "--device", "cpu", "--budget_s", "1e-9"]) == 0
    rows = _rows(out)
    assert [(row["part"], row["status"], row["error"]) for row in rows] == [
        (part, "skipped", "time budget") for part in speed_suite.PARTS]
    assert "| wan | all | - | all |" in (out / "speed_suite.md").read_text()
