"""The learning-rate schedule of the generator trainers: transformers' schedules with warm-up, checked when the
configuration is built, logged as ``train/learning_rate``, and saved with the resumable state so that a killed
run resumes bit for bit; a schedule stretched over ``max_steps`` makes ``max_steps`` part of the run's identity."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import get_scheduler

import generator_rl.grpo as grpo_module
from generator_rl.checkpoint import RunState
from generator_rl.config import LR_SCHEDULES, RunConfig
from generator_rl.grpo import GrpoConfig, run_grpo
from generator_rl.run import RESUMABLE_CHANGES, TrainingRun, resumable_changes
from reward.errors import ConfigError
from reward.run_record import RunMismatchError

from ..wandb_records import history_rows, history_steps
from .helpers import Preempted, dies_on_call, same_lora, tiny_arguments

# Cosine with 1 warm-up step over 4 steps at learning_rate 0.03 (transformers' formula): step 0 warms up from
# 0; then 0.03 * (1 + cos(pi * (s - 1) / 3)) / 2 for s = 1, 2, 3 -> 0.03 * (1, 3/4, 1/4).
COSINE = {"lr_scheduler_type": "cosine", "warmup_steps": 1, "max_steps": 4}
COSINE_RATES = [0.0, 0.03, 0.0225, 0.0075]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lr_scheduler_type": "cosine_annealing"}, r"lr_scheduler_type 'cosine_annealing' is not one of constant, "),
        ({"lr_scheduler_type": "reduce_lr_on_plateau"}, r"'reduce_lr_on_plateau' is not one of"),
        ({"warmup_steps": 2}, r"constant has no warm-up, but warmup_steps is 2: use constant_with_warmup"),
        ({"lr_scheduler_type": "linear", "warmup_steps": -1}, r"warmup_steps must lie in \[0, max_steps = 100\], got -1"),
        ({"lr_scheduler_type": "linear", "warmup_steps": 101}, r"warmup_steps must lie in \[0, max_steps = 100\], got 101"),
        ({"save_total_limit": 0}, r"save_total_limit must be >= 1 \(the newest checkpoint is always kept\)"),
    ],
)
def test_bad_schedule_or_rotation_settings_are_refused(prompt_file, tmp_path, values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(output_dir=str(tmp_path), prompts=str(prompt_file), **values)


def test_the_default_schedule_is_constant_and_lets_a_resumed_run_train_longer(prompt_file, tmp_path):
    run = RunConfig(output_dir=str(tmp_path), prompts=str(prompt_file))
    assert (run.lr_scheduler_type, run.warmup_steps, run.save_total_limit) == ("constant", 0, None)
    assert resumable_changes("constant") == RESUMABLE_CHANGES and "max_steps" in RESUMABLE_CHANGES
    stretched = [name for name in LR_SCHEDULES if "max_steps" not in resumable_changes(name)]
    assert stretched == ["linear", "cosine", "cosine_with_restarts", "polynomial"]


def test_killed_run_with_a_cosine_schedule_resumes_to_the_same_lora(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    """Kill during step 3 (checkpoint at step 2): the resumed run logs the same learning rates as the straight one
    (worked out in COSINE_RATES) and ends with the same LoRA, bit for bit. Asking the finished run for more
    steps is refused: the cosine is stretched over max_steps."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    settings = {**COSINE, "save_steps": 2, "report_to": "wandb", "group_size": 2, "prompts_per_step": 1,
                "rollout_batch_size": 2, "train_batch_size": 2}
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "a", **settings))
    original = grpo_module.update
    monkeypatch.setattr(grpo_module, "update", dies_on_call(original, 3))
    with pytest.raises(Preempted):
        run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "b", **settings))
    monkeypatch.setattr(grpo_module, "update", original)
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "b", **settings))
    assert same_lora(tmp_path / "a", tmp_path / "b")
    straight = _learning_rates(tmp_path / "a")
    assert straight == pytest.approx(COSINE_RATES, abs=1e-12)
    assert len(list((tmp_path / "b" / "wandb").glob("offline-run-*"))) == 2  # steps 0-1, then 2-3 resumed
    assert _learning_rates(tmp_path / "b") == straight
    with pytest.raises(RunMismatchError, match=r"run\.max_steps: 4 -> 6"):
        run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "a",
                                 **{**settings, "max_steps": 6}))


def _learning_rates(run_dir) -> list[float]:
    """train/learning_rate of every logged row over the run's wandb runs, by step (two runs started within one
    second have folder names that sort by their random ids, not by time)."""
    rows = [(step, row["train/learning_rate"]) for path in (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
            for step, row in zip(history_steps(path), history_rows(path), strict=True) if "train/learning_rate" in row]
    return [rate for _, rate in sorted(rows)]


def test_a_skipped_step_leaves_the_schedule_where_it_was(tmp_path):
    """As transformers' Trainer, the schedule counts applied updates: linear warm-up over 2 of 4 steps at 0.1 gives
    0 (step 0), then a skipped step keeps 0 without torch's "scheduler before optimizer" warning, then 0.05
    after the first applied update."""
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([parameter], lr=0.1)
    run = TrainingRun(run_dir=tmp_path, accelerator=None, policy=None, model=None, optimizer=optimizer,
                      lr_scheduler=get_scheduler("linear", optimizer, num_warmup_steps=2, num_training_steps=4),
                      state=RunState(), ema=None, rewards=None, prompts=[], job="tune-test", record={})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run.learning_rate == 0.0
        run.after_skipped_step(0)
        assert (run.learning_rate, run.state.step) == (0.0, 1)
        optimizer.step()
        run.after_optimizer_step(1)
    assert (run.learning_rate, run.state.step) == (pytest.approx(0.05), 2)
