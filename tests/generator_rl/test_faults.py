"""Numerical faults on the tiny Wan: a GRPO step whose rewards are all invalid, or a GRPO / Flow-DPO step with a
non-finite loss, is skipped (weights unchanged), counted (counts survive a resume) and training goes on; the
decision is the same on every process (two-process torchrun, no hang); N skips in a row stop the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import generator_rl.flow_dpo as dpo_module
import generator_rl.grpo as grpo_module
from generator_rl.checkpoint import LORA_WEIGHTS
from reward.faults import FaultCounters, SkipReason
from generator_rl.flow_dpo import FlowDpoConfig, run_flow_dpo
from generator_rl.grpo import GrpoConfig, run_grpo
from reward.errors import ConfigError, NumericalFaultError

from .fault_rewards import NAN_REWARD
from .helpers import Preempted, dies_on_call, same_lora, tiny_arguments


def _lora(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step_{step}" / LORA_WEIGHTS)


def _same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def _changes(run_dir: Path, steps: int) -> list[bool]:
    """For each step k ≥ 1 of a run checkpointed every step: did step k change the LoRA (step_k → step_k+1)?"""
    return [not _same(_lora(run_dir, k), _lora(run_dir, k + 1)) for k in range(1, steps)]


def _faults(skipped: int, invalid: int, nonfinite: int, consecutive: int = 0) -> dict[str, int]:
    return {"skipped_steps": skipped, "invalid_reward_steps": invalid, "nonfinite_grad": nonfinite,
            "consecutive_skipped": consecutive}


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]


def test_counters_count_and_round_trip():
    counters = FaultCounters()
    for reason in (SkipReason.INVALID_REWARDS, None, SkipReason.NONFINITE, SkipReason.NONFINITE):
        counters.record(reason)
    assert counters.state_dict() == _faults(3, 1, 2, consecutive=2)
    assert counters.metrics()["faults/skipped_steps"] == 3.0 and counters.metrics()["faults/nonfinite_grad"] == 2.0
    restored = FaultCounters()
    restored.load_state_dict(json.loads(json.dumps(counters.state_dict())))
    assert restored == counters
    with pytest.raises(NumericalFaultError, match=r"2 consecutive steps were skipped \(steps 6-7"):
        counters.stop_if_stuck(2, step=7, reason=SkipReason.NONFINITE)
    counters.stop_if_stuck(3, step=7, reason=SkipReason.NONFINITE)  # below the limit: nothing happens


@pytest.mark.parametrize("arguments", [GrpoConfig, FlowDpoConfig])
@pytest.mark.parametrize("limit", [0, -2])
def test_the_skip_limit_is_validated(arguments, limit):
    with pytest.raises(ConfigError, match=f"max_consecutive_skipped_steps must be an integer >= 1, got {limit}"):
        arguments(rewards=["name=brightness"], max_consecutive_skipped_steps=limit)


def test_all_nan_rewards_skip_one_grpo_step_and_the_counts_survive_a_resume(
    tiny_wan_dir, prompt_file, tmp_path, monkeypatch
):
    """The reward fails on every item of step 1 (its 2nd call): step 1 leaves the LoRA as it was, steps 2 and 3
    train, the skip is counted. A run killed in step 3 and resumed from step_3 ends with the same counts and
    the same LoRA (the resumed reward's call counter restarts, so its step 3 is a healthy first call)."""
    settings = {"max_steps": 4, "save_steps": 1, "rewards": [f"name={NAN_REWARD},nan_calls=2"]}
    straight = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "a", **settings))
    assert straight.faults.state_dict() == _faults(1, 1, 0)
    assert _changes(tmp_path / "a", 4) == [False, True, True]
    history = straight.reward_history
    assert history[1] != history[1] and all(value == value for value in history[::2])  # NaN only at step 1
    failed = [r for r in _records(tmp_path / "a") if r["step"] == 1]
    assert len(failed) == 8 and all(r["reward"] is None and r["advantage"] is None for r in failed)

    original = grpo_module.collect
    monkeypatch.setattr(grpo_module, "collect", dies_on_call(original, 4))
    with pytest.raises(Preempted):
        run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "b", **settings))
    monkeypatch.setattr(grpo_module, "collect", original)
    resumed = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "b", **settings))
    assert resumed.faults.state_dict() == _faults(1, 1, 0) and len(resumed.reward_history) == 1
    assert same_lora(tmp_path / "a", tmp_path / "b")


def test_a_nonfinite_grpo_loss_skips_the_update(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    """The loss of step 1 is NaN on one micro-batch: no update at step 1 (gradients dropped), steps 0 and 2
    train, the step is counted as non-finite."""
    current = []
    original_collect, original_loss = grpo_module.collect, grpo_module.step_loss

    def collect(*args, **kwargs):
        current.append(kwargs["step"])
        return original_collect(*args, **kwargs)

    poisoned = []

    def step_loss(*args, **kwargs):
        loss, clipped, kl = original_loss(*args, **kwargs)
        if current[-1] == 1 and not poisoned:
            poisoned.append(True)
            loss = loss * float("nan")
        return loss, clipped, kl

    monkeypatch.setattr(grpo_module, "collect", collect)
    monkeypatch.setattr(grpo_module, "step_loss", step_loss)
    result = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run",
                                      max_steps=3, save_steps=1))
    assert poisoned == [True] and result.faults.state_dict() == _faults(1, 0, 1)
    assert _changes(tmp_path / "run", 3) == [False, True]


def test_consecutive_skipped_steps_stop_the_run(tiny_wan_dir, prompt_file, tmp_path):
    rewards = [f"name={NAN_REWARD},nan_calls=2:3:4"]
    arguments = tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run", max_steps=6,
                               save_steps=1, rewards=rewards, max_consecutive_skipped_steps=3)
    with pytest.raises(NumericalFaultError) as raised:
        run_grpo(*arguments)
    message = str(raised.value)
    assert "3 consecutive steps were skipped (steps 1-3, max_consecutive_skipped_steps=3)" in message
    assert "every reward of a process was invalid" in message
    assert sorted(path.name for path in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_1", "step_2", "step_3"]


@pytest.mark.slow  # two processes: about 20 s on 2 cores
def test_two_processes_skip_the_same_steps_without_hanging(tiny_wan_dir, prompt_file, tmp_path):
    """torchrun, 2 processes, one prompt each. Step 1: only process 1's rewards are all invalid; step 2: every
    reward is. Both steps are skipped on both processes (no hang: the run finishes within the timeout), the
    LoRA is untouched by them, step 3 trains, and the counts are those of a single decision."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
        str(Path(__file__).with_name("grpo_worker.py")), str(tiny_wan_dir), str(prompt_file), str(tmp_path / "run"),
        "max_steps=4", "save_steps=1",
        f"rewards=name={NAN_REWARD},nan_calls=2,ranks=1,label=rank1_fails", f"rewards=name={NAN_REWARD},nan_calls=3",
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=400,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"})
    assert finished.returncode == 0, finished.stderr[-4000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["faults"] == _faults(2, 2, 0)
    assert _changes(tmp_path / "run", 4) == [False, False, True]
    rewards = {(r["step"], r["group"]): r["reward"] is None for r in _records(tmp_path / "run")}
    assert rewards == {(0, 0): False, (0, 1): False, (1, 0): False, (1, 1): True, (2, 0): True, (2, 1): True,
                       (3, 0): False, (3, 1): False}


def test_flow_dpo_skips_a_nonfinite_step_and_stops_after_repeats(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    """One micro-batch per step: a NaN loss at step 1 leaves the LoRA as it was and is counted; a loss that
    is NaN at every step stops the run after max_consecutive_skipped_steps."""
    original, calls, poisoned_calls = dpo_module.dpo_micro_step, [], {2}

    def micro_step(*args, **kwargs):
        calls.append(1)
        loss, stats = original(*args, **kwargs)
        return (loss * float("nan") if len(calls) in poisoned_calls else loss), stats

    monkeypatch.setattr(dpo_module, "dpo_micro_step", micro_step)
    settings = {"max_steps": 3, "save_steps": 1, "pair_dir": tmp_path / "pairs"}
    result = run_flow_dpo(*tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompt_file, tmp_path / "a",
                                          **settings))
    assert result.faults.state_dict() == _faults(1, 0, 1)
    assert _changes(tmp_path / "a", 3) == [False, True]
    assert result.history[1]["faults/nonfinite_grad"] == 1.0

    calls.clear()
    poisoned_calls.update(range(1, 10))
    with pytest.raises(NumericalFaultError, match=r"2 consecutive steps were skipped \(steps 0-1.*not finite"):
        run_flow_dpo(*tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompt_file, tmp_path / "b",
                                     **settings, max_consecutive_skipped_steps=2))
