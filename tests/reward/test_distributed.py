"""Two CPU processes (torchrun, gloo backend) run stage 1; the ranks end with identical weights and the
gradient accumulation steps follow the world size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from reward.modeling import DeScoreModel

from .helpers import REPO_ROOT


def test_two_process_cpu_run_keeps_ranks_in_sync(tiny_qwen3_vl_dir, visual_pairs, tmp_path):
    train, _ = visual_pairs
    output_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", "2", "--master_port", "29517",
        str(Path(__file__).with_name("ddp_worker.py")),
        str(tiny_qwen3_vl_dir), str(train), str(output_dir),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    finished = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-4000:]
    ranks = [json.loads((output_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert all(rank["world_size"] == 2 and rank["global_step"] == 3 for rank in ranks)
    # effective_batch_size 8 = 4 pairs per device x 2 processes x 1 accumulation step
    assert all(rank["gradient_accumulation_steps"] == 1 for rank in ranks)
    assert DeScoreModel.from_pretrained(output_dir / "final").training_info["global_step"] == 3
