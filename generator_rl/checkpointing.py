"""Checkpoints of generator runs: LoRA in the diffusers format, resumable accelerate state, final export.

* LoRA weights are written with ``WanPipeline.save_lora_weights`` (``pytorch_lora_weights.safetensors``), so
  ``WanPipeline.load_lora_weights(dir)`` loads them. accelerate's save/load hooks route the transformer
  through this format instead of pickling the whole model.
* ``save_checkpoint`` writes ``checkpoints/step_N`` through a staging folder renamed at the end: only
  complete checkpoints carry the final name, and resuming picks the newest one.
* What accelerate saves beside the LoRA (optimizer, RNG states, registered objects such as the run state and
  the EMA) is written and read by accelerate itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers import WanPipeline
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from reward.errors import CheckpointError

from .faults import FaultCounters
from .policy import LEARNER, REFERENCE, WanPolicy

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
REFERENCE_WEIGHTS = "reference_lora.safetensors"
CHECKPOINTS = "checkpoints"


class RunState:
    """Progress that must survive a restart: the number of finished steps (trained or skipped) and the
    counts of skipped steps."""

    def __init__(self) -> None:
        self.step = 0
        self.faults = FaultCounters()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "faults": self.faults.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.faults.load_state_dict(state["faults"])


def save_lora(policy: WanPolicy, directory: str | Path) -> Path:
    """Write the learner LoRA of ``policy`` in the diffusers Wan LoRA format."""
    transformer = policy.transformer
    WanPipeline.save_lora_weights(
        save_directory=str(directory),
        transformer_lora_layers=get_peft_model_state_dict(transformer, adapter_name=LEARNER),
        transformer_lora_adapter_metadata=transformer.peft_config[LEARNER].to_dict(),
        safe_serialization=True,
    )
    return Path(directory)


def load_lora(policy: WanPolicy, directory: str | Path) -> None:
    """Load a diffusers-format LoRA into the learner adapter, failing on any key mismatch."""
    path = Path(directory) / LORA_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{directory}: {LORA_WEIGHTS} is missing")
    stored = {key.removeprefix("transformer."): value for key, value in load_file(path).items()}
    expected = set(get_peft_model_state_dict(policy.transformer, adapter_name=LEARNER))
    missing, unexpected = sorted(expected - set(stored)), sorted(set(stored) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{path}: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}")
    set_peft_model_state_dict(policy.transformer, stored, adapter_name=LEARNER)


def register_lora_hooks(accelerator: Accelerator, policy: WanPolicy) -> None:
    """Make ``accelerator.save_state``/``load_state`` keep the transformer as a diffusers LoRA file."""

    def is_transformer(model: torch.nn.Module) -> bool:
        return accelerator.unwrap_model(model) is policy.transformer

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for index in reversed(range(len(models))):
            if is_transformer(models[index]):
                if accelerator.is_main_process:
                    save_lora(policy, output_dir)
                    if REFERENCE in policy.transformer.peft_config:  # online Flow-DPO's refreshed reference
                        state = get_peft_model_state_dict(policy.transformer, adapter_name=REFERENCE)
                        save_file({key: value.contiguous() for key, value in state.items()}, str(Path(output_dir) / REFERENCE_WEIGHTS))
                weights.pop(index)

    def load_hook(models: list, input_dir: str) -> None:
        for index in reversed(range(len(models))):
            if is_transformer(models[index]):
                load_lora(policy, input_dir)
                reference = Path(input_dir) / REFERENCE_WEIGHTS
                if reference.is_file():
                    policy.refresh_reference()
                    set_peft_model_state_dict(policy.transformer, load_file(str(reference)), adapter_name=REFERENCE)
                models.pop(index)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int, metadata: dict[str, Any]) -> Path:
    """Save the full resumable state to ``run_dir/checkpoints/step_<step>`` (complete or absent)."""
    final = run_dir / CHECKPOINTS / f"step_{step}"
    staging = run_dir / CHECKPOINTS / f".step_{step}.staging"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / "run.json").write_text(json.dumps({"step": step, **metadata}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return None
    complete = [path for path in folder.glob("step_*") if path.name.removeprefix("step_").isdigit()]
    return max(complete, key=lambda path: int(path.name.removeprefix("step_")), default=None)


def export_final(policy: WanPolicy, run_dir: Path, *, fused: bool) -> Path:
    """``run_dir/final``: the LoRA (diffusers format) and, if asked, a plain transformer with the LoRA fused
    in (``transformer_fused/``, loadable by ``WanTransformer3DModel.from_pretrained``). Fusing removes the
    adapters from ``policy``, so it is the last thing a run does."""
    final = run_dir / "final"
    save_lora(policy, final)
    if fused:
        transformer = policy.transformer
        transformer.fuse_lora(adapter_names=[LEARNER])
        transformer.unload_lora()
        transformer.save_pretrained(final / "transformer_fused")
    return final
