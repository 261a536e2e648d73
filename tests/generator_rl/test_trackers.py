"""Jobs run one after another in one process (the demo, a notebook) each log to their own tracker run."""

from __future__ import annotations


from generator_rl.flow_dpo import FlowDpoConfig, run_flow_dpo
from generator_rl.grpo import GrpoConfig, run_grpo
from reward.cold_start import run as run_cold_start

from ..reward.helpers import tiny_config
from ..wandb_records import history_steps
from .helpers import tiny_arguments


def test_reward_training_grpo_and_flow_dpo_log_to_three_wandb_runs(
    tiny_qwen3_vl_dir, visual_pairs, tiny_wan_dir, prompt_file, tmp_path, monkeypatch
):
    """Before the fix, stage 1 left its wandb run open: GRPO got the same run back and wandb dropped every
    step below the trainer's last one. Now: three offline runs, GRPO and Flow-DPO with every step 0..2."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    train, _ = visual_pairs
    run_cold_start(tiny_config(tiny_qwen3_vl_dir, train, tmp_path / "stage1", report_to="wandb",
                               num_train_epochs=1, logging_steps=1, save_strategy="no"))
    steps = {"report_to": "wandb", "max_steps": 3, "save_steps": 3, "logging_steps": 1}
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "grpo", **steps))
    run_flow_dpo(*tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompt_file, tmp_path / "dpo", **steps))

    files = sorted(tmp_path.rglob("offline-run-*/run-*.wandb"))
    runs = {path.relative_to(tmp_path).parts[0]: path for path in files}  # WANDB_DIR's wandb/, grpo/, dpo/
    assert len(files) == 3 and set(runs) == {"wandb", "grpo", "dpo"}, files
    assert history_steps(runs["grpo"]) == [0, 1, 2]
    assert history_steps(runs["dpo"]) == [0, 1, 2]
    assert len(history_steps(runs["wandb"])) >= 8  # stage 1: 64 pairs / 8 per step, logged every step
