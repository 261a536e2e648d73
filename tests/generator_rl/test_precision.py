"""Precision of generator training: with a bf16 transformer under bf16 autocast, the LoRA weights are float32,
so an update far below bf16's resolution still lands, on one process and on two (DDP over gloo), and the
saved LoRA keeps it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from generator_rl.checkpoint import LORA_WEIGHTS
from generator_rl.config import PolicyConfig
from generator_rl.policy import LEARNER

from .test_policy import tiny_policy_arguments

# One step of AdamW moves a weight by about the learning rate: 1e-5 is ~1/100 of bf16's spacing at the LoRA
# A weights' size (~0.2), and ~100 000 times float32's.
BF16_RUN = {"transformer_dtype": "bfloat16", "mixed_precision": "bf16", "learning_rate": 1e-5, "weight_decay": 0.0,
            "max_steps": 2, "save_steps": 1, "group_size": 2}


def _lora(run_dir: Path, folder: str) -> dict[str, torch.Tensor]:
    return load_file(run_dir / folder / LORA_WEIGHTS)


def _changed_fraction(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((before != after).float().mean())


def _check_one_step_lands(run_dir: Path) -> None:
    """Step 1 moves B off zero (A has no gradient while B = 0); step 2 (one optimizer step, between the two
    saved checkpoints) moves >= 90% of the entries of every LoRA tensor, A included; final/ keeps it."""
    first, second = _lora(run_dir, "checkpoints/step_1"), _lora(run_dir, "checkpoints/step_2")
    assert len(first) == 40 and all(tensor.dtype == torch.float32 for tensor in second.values())
    for name in first:
        if ".lora_B." in name:
            assert float((first[name] != 0).float().mean()) >= 0.9, name
        assert _changed_fraction(first[name], second[name]) >= 0.9, (name, _changed_fraction(first[name], second[name]))
    a_weights = [name for name in first if ".lora_A." in name]
    stored_in_bf16 = [_changed_fraction(first[n].bfloat16(), second[n].bfloat16()) for n in a_weights]
    assert max(stored_in_bf16) < 0.1, stored_in_bf16  # a bf16 copy of the same weights would not have moved
    final = _lora(run_dir, "final")
    assert all(torch.equal(final[name], second[name]) for name in second)


@pytest.mark.parametrize("processes", [1, 2])
def test_one_bf16_step_changes_every_lora_tensor(tiny_wan_dir, prompt_file, tmp_path, processes):
    """In a fresh process: accelerate's precision setting is process-wide, and the other tests train in fp32."""
    worker = Path(__file__).with_name("run_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(29536 + processes), str(worker), str(tiny_wan_dir), str(prompt_file),
               str(tmp_path / "run"), *(f"{key}={value}" for key, value in BF16_RUN.items())]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"})
    assert finished.returncode == 0, finished.stderr[-4000:]
    _check_one_step_lands(tmp_path / "run")


def test_the_refreshed_reference_is_an_exact_float32_copy(tiny_wan_dir):
    """Online Flow-DPO's frozen reference LoRA is float32 too: on a bf16 transformer it equals the learner bit
    for bit after a refresh (a bf16 reference would round the learner's small updates away)."""
    arguments = PolicyConfig(**{**tiny_policy_arguments(tiny_wan_dir).__dict__, "transformer_dtype": "bfloat16"})
    policy = arguments.load_policy(torch.device("cpu"))
    with torch.no_grad():
        for parameter in policy.trainable_parameters():
            parameter.add_(1e-5)
    policy.refresh_reference()
    learner, reference = policy.named_trainable_parameters(), policy.reference_lora
    assert learner.keys() == reference.keys() and len(learner) == 40
    assert all(f".{LEARNER}." in key for key in learner)
    assert all(reference[key].dtype == torch.float32 and torch.equal(reference[key], learner[key]) for key in learner)
