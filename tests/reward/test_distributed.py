"""Two CPU processes (torchrun, gloo backend) run stage 1; the ranks end with identical weights, the gradient
accumulation steps follow the world size, and bf16 training keeps float32 trainables under DDP too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from reward.modeling import DeScoreModel

from .helpers import REPO_ROOT
from .test_precision import BF16_STEPS, assert_every_trainable_tensor_changed


def _torchrun(model_dir: Path, train: Path, output_dir: Path, port: int, overrides: dict | None = None) -> list[dict]:
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", "2", "--master_port", str(port),
        str(Path(__file__).with_name("ddp_worker.py")),
        str(model_dir), str(train), str(output_dir), json.dumps(overrides or {}),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    finished = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-4000:]
    return [json.loads((output_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def test_two_process_cpu_run_keeps_ranks_in_sync(tiny_qwen3_vl_dir, visual_pairs, tmp_path):
    train, _ = visual_pairs
    output_dir = tmp_path / "ddp"
    ranks = _torchrun(tiny_qwen3_vl_dir, train, output_dir, 29517)
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert all(rank["world_size"] == 2 and rank["global_step"] == 3 for rank in ranks)
    # effective_batch_size 8 = 4 pairs per device x 2 processes x 1 accumulation step
    assert all(rank["gradient_accumulation_steps"] == 1 for rank in ranks)
    assert DeScoreModel.from_pretrained(output_dir / "final").training_info["global_step"] == 3


def test_two_process_bf16_steps_change_every_trainable_tensor(tiny_qwen3_vl_dir, visual_pairs, tmp_path):
    """The single-process precision check (test_precision.py) under DDP; final/ is merged in bf16 and its vision
    tower differs from the base's."""
    train, _ = visual_pairs
    output_dir = tmp_path / "ddp"
    ranks = _torchrun(tiny_qwen3_vl_dir, train, output_dir, 29518, BF16_STEPS)
    assert ranks[0]["digest"] == ranks[1]["digest"]
    for rank in (0, 1):
        assert_every_trainable_tensor_changed(json.loads((output_dir / f"changes-rank{rank}.json").read_text()))
    merged = load_file(output_dir / "final" / "model.safetensors")
    base = load_file(tiny_qwen3_vl_dir / "model.safetensors")
    assert {tensor.dtype for tensor in merged.values()} == {torch.bfloat16}
    visual = [key for key in merged if ".visual." in key and key in base]
    assert visual and sum(int((merged[key] != base[key].to(torch.bfloat16)).sum()) for key in visual) > 0
