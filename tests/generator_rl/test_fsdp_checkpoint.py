"""LoRA-only checkpoints under FSDP2: two gloo (CPU) ranks shard the tiny Wan policy with ``fully_shard``, train
two steps, save the LoRA, the EMA and a frozen reference through ``generator_rl.checkpoint`` and load them into
a fresh policy sharded differently (fsdp_worker.py). accelerate 1.15 runs its FSDP plugin only on accelerator
devices (on CPU it falls back to DDP), so the sharding here is built directly with torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import WanPipeline
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from generator_rl.checkpoint import EMA_WEIGHTS, LORA_WEIGHTS, REFERENCE_WEIGHTS, load_lora
from generator_rl.policy import LEARNER
from tests.generator_rl.test_policy import tiny_policy_arguments


def _file_key(name: str) -> str:
    """A trainable parameter's name as the diffusers LoRA file spells it."""
    return "transformer." + name.replace(f".{LEARNER}.", ".")


def _stage(tensors: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
    return {name.removeprefix(f"{stage}/"): value for name, value in tensors.items() if name.startswith(f"{stage}/")}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]) for key in a)


@pytest.mark.slow
def test_fsdp2_lora_ema_and_reference_round_trip_bit_exactly(tiny_wan_dir, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537",
               str(Path(__file__).with_name("fsdp_worker.py")), str(tiny_wan_dir), str(tmp_path)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-4000:]
    saved = load_file(tmp_path / "checkpoint" / LORA_WEIGHTS)
    saved_ema = load_file(tmp_path / "checkpoint" / EMA_WEIGHTS)
    saved_reference = load_file(tmp_path / "checkpoint" / REFERENCE_WEIGHTS)
    for rank in range(2):
        result = load_file(tmp_path / f"rank_{rank}.safetensors")
        assert result["sharded"] and result["local_equal"], rank  # each rank held a slice; loading restored it
        trained = _stage(result, "trained")
        # (a) the file holds the LoRA gathered in memory, whole, bit for bit (and nothing else)
        assert _equal({_file_key(name): value for name, value in trained.items()}, saved)
        assert _equal(_stage(result, "ema_trained"), saved_ema)
        assert _equal(trained, saved_reference)  # the reference was frozen from the trained LoRA
        # (b) the fresh, differently sharded policy (other initial LoRA) got exactly those weights back
        assert _equal(_stage(result, "loaded"), trained)
        assert _equal(_stage(result, "ema_loaded"), _stage(result, "ema_trained"))
        assert _equal(_stage(result, "reference_loaded"), trained)
    assert any(value.abs().max() > 0 for name, value in saved.items() if "lora_B" in name)  # it trained
    # (c) one process: the file loads with diffusers, and into an unsharded policy, unchanged
    pipeline = WanPipeline.from_pretrained(str(tiny_wan_dir))
    pipeline.load_lora_weights(str(tmp_path / "checkpoint"), adapter_name="tuned")
    in_pipeline = get_peft_model_state_dict(pipeline.transformer, adapter_name="tuned")
    assert _equal({f"transformer.{name}": value for name, value in in_pipeline.items()}, saved)
    policy = tiny_policy_arguments(tiny_wan_dir).load_policy(torch.device("cpu"))
    load_lora(policy, tmp_path / "checkpoint")
    assert _equal({_file_key(name): value.detach() for name, value in policy.named_trainable_parameters().items()},
                  saved)


def test_an_fsdp_config_without_gpus_is_refused(tmp_path):
    """On CPU accelerate ignores an FSDP config and would train unsharded (DDP): refused, naming why."""
    code = ("import sys; from types import SimpleNamespace; from generator_rl.run import new_accelerator; "
            "new_accelerator(SimpleNamespace(output_dir=sys.argv[1], mixed_precision='no', report_to='none'))")
    finished = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_FSDP": "true",
                                   "FSDP_VERSION": "2", "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert finished.returncode != 0
    assert ("ConfigError: the accelerate config asks for FSDP but accelerate runs NO here: its FSDP needs "
            "accelerator devices (GPUs)") in finished.stderr, finished.stderr[-2000:]
