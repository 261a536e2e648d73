"""DeScore stage 2, the resumable state: ``output_dir/checkpoints/step_N`` holds everything a resumed run needs
to continue bit for bit — the trained weights (float32, safetensors), the head, the AdamW moments, every
process's RNG states, the step and the fault counters.

Files (each checkpoint is written in a staging folder renamed at the end, so only complete ones carry the
``step_N`` name and a resume picks the newest of them)::

    trainable.safetensors   every trained tensor by parameter name (the LLM or its LoRA, and ``head.weight``)
    optimizer.pt            AdamW's state dict (tensors and numbers only: read with weights_only=True)
    rng_<rank>.safetensors  torch's CPU (and CUDA) generator states of each process
    run_state.json          {"step": N, "faults": {...}}
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch

from .checkpoint import atomic_directory
from .errors import CheckpointError
from .faults import FaultCounters

CHECKPOINTS = "checkpoints"
TRAINABLE, OPTIMIZER, RUN_STATE = "trainable.safetensors", "optimizer.pt", "run_state.json"


class RunState:
    """Finished steps (trained or skipped) and the skipped-step counts: what survives a restart."""

    def __init__(self) -> None:
        self.step = 0
        self.faults = FaultCounters()

    def state_dict(self) -> dict:
        return {"step": self.step, "faults": self.faults.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.faults.load_state_dict(state["faults"])


def save_state(
    directory: Path, *, parameters: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer, state: RunState,
    rng_states: dict[int, dict[str, torch.Tensor]],
) -> Path:
    """Atomically write ``directory`` (``rng_states``: every process's :func:`rng_state`, by rank)."""
    with atomic_directory(directory) as staging:
        tensors = {name: parameter.detach().float().cpu().contiguous() for name, parameter in parameters.items()}
        safetensors.torch.save_file(tensors, staging / TRAINABLE)
        torch.save(optimizer.state_dict(), staging / OPTIMIZER)
        for rank, rng in rng_states.items():
            safetensors.torch.save_file(rng, staging / f"rng_{rank}.safetensors")
        (staging / RUN_STATE).write_text(json.dumps(state.state_dict(), indent=2, sort_keys=True) + "\n")
    return directory


def load_state(
    directory: Path, *, parameters: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer, state: RunState,
    rank: int,
) -> None:
    """Restore weights, optimizer, this process's RNG and the run state from ``directory``; every trained
    tensor must be there and nothing else."""
    stored = safetensors.torch.load_file(directory / TRAINABLE)
    missing, unexpected = sorted(set(parameters) - set(stored)), sorted(set(stored) - set(parameters))
    if missing or unexpected:
        raise CheckpointError(f"{directory / TRAINABLE}: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(stored[name])
    optimizer.load_state_dict(torch.load(directory / OPTIMIZER, weights_only=True))
    rng_file = directory / f"rng_{rank}.safetensors"
    if not rng_file.is_file():
        raise CheckpointError(f"{directory}: no RNG state for process {rank} (was it written by another number of "
                              "processes? resume with the same launch)")
    restore_rng(safetensors.torch.load_file(rng_file))
    state.load_state_dict(json.loads((directory / RUN_STATE).read_text()))


def rng_state() -> dict[str, torch.Tensor]:
    """torch's generator states of this process."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states |= {f"cuda_{index}": state for index, state in enumerate(torch.cuda.get_rng_state_all())}
    return states


def restore_rng(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    cuda = [states[key] for key in sorted(states) if key.startswith("cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / CHECKPOINTS / f"step_{step}"


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete ``checkpoints/step_N`` (staging folders are dot-named, so never picked)."""
    folder = output_dir / CHECKPOINTS
    found = [path for path in folder.glob("step_*") if path.name.removeprefix("step_").isdigit()] if folder.is_dir() else []
    return max(found, key=lambda path: int(path.name.removeprefix("step_")), default=None)
