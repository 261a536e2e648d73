"""Checkpoints of generator runs: LoRA in the diffusers format, resumable state, final export.

* LoRA weights are written with ``WanPipeline.save_lora_weights`` (``pytorch_lora_weights.safetensors``), so
  ``WanPipeline.load_lora_weights(dir)`` loads them. accelerate's save/load hooks route the transformer
  through this format instead of pickling the whole model. The weights are float32 (the trained LoRA is
  kept in float32 whatever the transformer's dtype).
* The loop state (``run_state.json``) and the EMA (``ema.safetensors`` + ``ema.json``) are files we write
  and read ourselves in the same hooks; nothing of ours is pickled, so no code runs when they are loaded.
  accelerate still writes the optimizer (``optimizer.bin``) and the RNG states (``random_states_<rank>.pkl``)
  and reads them with ``torch.load(weights_only=True)``, which refuses to build arbitrary objects.
* The learning-rate scheduler's state (``lr_scheduler.json``) and online Flow-DPO's frozen reference LoRA
  (``reference_lora.safetensors``) are written by the same hooks, so a resumed run continues bit for bit.
* ``save_checkpoint`` writes ``checkpoints/step_N`` through a staging folder renamed at the end: only
  complete checkpoints carry the final name, and resuming picks the newest one. ``export_final`` replaces
  ``final/`` the same way: a kill leaves the previous complete ``final/`` or none.
* Under FSDP2 the LoRA (and the EMA that shadows it) are DTensors, each rank holding a slice: they are gathered
  whole before writing (:func:`lora_state_dict`, a collective every rank joins) and sliced again like the
  model's parameters when loading, so the files are the same whatever the sharding or number of processes.
* ``rotate_checkpoints`` (``save_total_limit``) deletes the oldest ``checkpoints/step_N`` folders, each first
  renamed out of the ``step_N`` pattern in one atomic step, so a kill mid-rotation never leaves a half-deleted
  folder that resuming could pick.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers import WanPipeline
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor, distribute_tensor

from reward.checkpoint import atomic_directory
from reward.errors import CheckpointError
from reward.faults import FaultCounters
from reward.run_record import write_run_config

from .policy import LEARNER, WanPolicy

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
REFERENCE_WEIGHTS = "reference_lora.safetensors"
RUN_STATE = "run_state.json"
LR_SCHEDULER_STATE = "lr_scheduler.json"
EMA_WEIGHTS, EMA_STATE = "ema.safetensors", "ema.json"
CHECKPOINTS, FINAL = "checkpoints", "final"


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


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in full: an FSDP2 DTensor is gathered from every rank (a collective, so every rank must call
    this); any other tensor is returned as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def laid_out_like(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A whole tensor read from a file, placed like ``target``: under FSDP2 this rank's slice of it (every rank
    read the same file, so no communication), otherwise ``value`` on ``target``'s device."""
    if isinstance(target, DTensor):
        return distribute_tensor(value.to(target.device), target.device_mesh, target.placements, src_data_rank=None)
    return value.to(target.device)


def lora_state_dict(policy: WanPolicy) -> dict[str, torch.Tensor]:
    """The learner LoRA in peft's naming, each tensor whole. Under FSDP2 every rank must call this."""
    state = get_peft_model_state_dict(policy.transformer, adapter_name=LEARNER)
    return {name: whole(tensor).detach() for name, tensor in state.items()}


def save_lora(policy: WanPolicy, directory: str | Path, lora: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write the learner LoRA of ``policy`` in the diffusers Wan LoRA format. Under FSDP2 pass ``lora`` (from
    :func:`lora_state_dict`, called on every rank) so that only the main process writes."""
    transformer = policy.transformer
    WanPipeline.save_lora_weights(
        save_directory=str(directory),
        transformer_lora_layers=dict(lora) if lora is not None else lora_state_dict(policy),
        transformer_lora_adapter_metadata=lora_metadata(transformer.peft_config[LEARNER].to_dict()),
        safe_serialization=True,
    )
    return Path(directory)


def lora_fingerprint(path: str | Path) -> str:
    """sha256 of a LoRA file's content: its metadata and every tensor (name, dtype, shape, bytes), in sorted
    order. Not of the file's bytes: safetensors writes the header's metadata keys in an order that changes from
    one save to the next, so the same LoRA saved twice (a resumed run's final export) differs byte-wise."""
    digest = hashlib.sha256()
    with safe_open(str(path), "pt") as handle:
        digest.update(json.dumps(handle.metadata() or {}, sort_keys=True).encode())
        for name in sorted(handle.keys()):
            tensor = handle.get_tensor(name).contiguous()
            digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def lora_metadata(config: dict[str, Any]) -> dict[str, Any]:
    """The adapter config stored in the LoRA file, with sets as sorted lists: peft keeps ``target_modules`` as a
    set, whose order follows Python's per-process string hashing, so the same weights would otherwise be
    written as different bytes by every process (and a resumed run's final LoRA would not match its own
    earlier export)."""
    return {key: sorted(value) if isinstance(value, (set, frozenset)) else value for key, value in config.items()}


def load_lora(policy: WanPolicy, directory: str | Path) -> None:
    """Load a diffusers-format LoRA into the learner adapter, failing on any key mismatch; under FSDP2 each rank
    keeps its slice of every tensor."""
    path = Path(directory) / LORA_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{directory}: {LORA_WEIGHTS} is missing")
    stored = {key.removeprefix("transformer."): value for key, value in load_file(path).items()}
    expected = get_peft_model_state_dict(policy.transformer, adapter_name=LEARNER)
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}")
    placed = {name: laid_out_like(value, expected[name]) for name, value in stored.items()}
    set_peft_model_state_dict(policy.transformer, placed, adapter_name=LEARNER)


def save_run_state(state: Any, directory: str | Path, name: str = RUN_STATE) -> None:
    """``state.state_dict()`` (plain JSON data: floats round-trip exactly) as ``name``."""
    (Path(directory) / name).write_text(json.dumps(state.state_dict(), indent=2, sort_keys=True) + "\n")


def load_run_state(state: Any, directory: str | Path, name: str = RUN_STATE) -> None:
    state.load_state_dict(_read_json(Path(directory) / name))


def reference_state(policy: WanPolicy) -> dict[str, torch.Tensor] | None:
    """Online Flow-DPO's frozen reference LoRA (``None``: there is none), each tensor whole, keyed like the
    learner parameters. Under FSDP2 every rank must call this."""
    if policy.reference_lora is None:
        return None
    return {name: whole(tensor).contiguous() for name, tensor in policy.reference_lora.items()}


def save_reference(reference: Mapping[str, torch.Tensor] | None, directory: str | Path) -> None:
    """Write :func:`reference_state`'s tensors, if there are any."""
    if reference is not None:
        save_file(dict(reference), str(Path(directory) / REFERENCE_WEIGHTS))


def load_reference(policy: WanPolicy, directory: str | Path) -> None:
    """Restore the frozen reference saved by :func:`save_reference`; a checkpoint without one leaves the
    reference as the base model. Keys and shapes must match the learner's."""
    path = Path(directory) / REFERENCE_WEIGHTS
    if not path.is_file():
        policy.reference_lora = None
        return
    stored, learner = load_file(str(path)), policy.named_trainable_parameters()
    missing, unexpected = sorted(set(learner) - set(stored)), sorted(set(stored) - set(learner))
    wrong = [name for name in set(learner) & set(stored) if stored[name].shape != learner[name].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path}: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}, "
                              f"other shapes {sorted(wrong)[:10]}")
    policy.reference_lora = {name: laid_out_like(stored[name], parameter) for name, parameter in learner.items()}


def ema_state(ema: Any, named: Mapping[str, torch.nn.Parameter]) -> dict[str, Any]:
    """``ema.state_dict()`` with its shadow weights whole and named like the parameters they follow. Under
    FSDP2 every rank must call this (the shadows are sliced like the parameters)."""
    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    state["shadow_params"] = {name: whole(tensor).detach().contiguous() for name, tensor in zip(named, shadow)}
    return state


def save_ema(ema: Any, named: Mapping[str, torch.nn.Parameter], directory: str | Path,
             state: dict[str, Any] | None = None) -> None:
    """An EMA (diffusers ``EMAModel``) as safetensors, its shadow weights named like the parameters they
    follow, and JSON for its scalars (decay, step count, warm-up settings). Under FSDP2 pass ``state`` (from
    :func:`ema_state`, called on every rank) so that only the main process writes."""
    state = dict(state if state is not None else ema_state(ema, named))
    save_file(state.pop("shadow_params"), str(Path(directory) / EMA_WEIGHTS))
    (Path(directory) / EMA_STATE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


def load_ema(ema: Any, named: Mapping[str, torch.nn.Parameter], directory: str | Path) -> None:
    """Restore ``ema`` from :func:`save_ema`'s files; each shadow tensor is placed like its parameter (device,
    FSDP2 slice) and keeps the stored dtype (float32). A key or shape mismatch is a :class:`CheckpointError`."""
    path = Path(directory) / EMA_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{directory}: {EMA_WEIGHTS} is missing (was the run saved without an EMA?)")
    stored = load_file(str(path))
    missing, unexpected = sorted(set(named) - set(stored)), sorted(set(stored) - set(named))
    if missing or unexpected:
        raise CheckpointError(f"{path}: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}")
    for name, parameter in named.items():
        if stored[name].shape != parameter.shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(stored[name].shape)}, the model's is {tuple(parameter.shape)}"
            )
    state = _read_json(Path(directory) / EMA_STATE)
    state["shadow_params"] = [laid_out_like(stored[name], parameter) for name, parameter in named.items()]
    try:
        ema.load_state_dict(state)
    except ValueError as error:
        raise CheckpointError(f"{Path(directory) / EMA_STATE}: {error}") from error


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: {path.name} is missing; not a checkpoint of this version of the kit")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return value


def register_checkpoint_hooks(
    accelerator: Accelerator, policy: WanPolicy, state: Any, ema: Any, lr_scheduler: Any
) -> None:
    """Make ``accelerator.save_state``/``load_state`` keep the transformer as a diffusers LoRA file (and the
    frozen reference, if any), and the run state, learning-rate scheduler and EMA (``None``: off) as JSON +
    safetensors, instead of accelerate's pickled custom state."""

    def is_transformer(model: torch.nn.Module) -> bool:
        return accelerator.unwrap_model(model) is policy.transformer

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        # Gathers run on every rank (collectives under FSDP2); only the main process writes.
        for index in reversed(range(len(models))):
            if is_transformer(models[index]):
                lora, reference = lora_state_dict(policy), reference_state(policy)
                if accelerator.is_main_process:
                    save_lora(policy, output_dir, lora)
                    save_reference(reference, output_dir)
                if weights:  # accelerate passes no weights under FSDP: it saves the model itself
                    weights.pop(index)
        named = policy.named_trainable_parameters()
        shadow = ema_state(ema, named) if ema is not None else None
        if accelerator.is_main_process:
            save_run_state(state, output_dir)
            save_run_state(lr_scheduler, output_dir, LR_SCHEDULER_STATE)
            if ema is not None:
                save_ema(ema, named, output_dir, shadow)

    def load_hook(models: list, input_dir: str) -> None:
        for index in reversed(range(len(models))):
            if is_transformer(models[index]):
                load_lora(policy, input_dir)
                models.pop(index)
        load_reference(policy, input_dir)  # also under FSDP, where accelerate loads the model itself
        load_run_state(state, input_dir)
        load_run_state(lr_scheduler, input_dir, LR_SCHEDULER_STATE)
        if ema is not None:
            load_ema(ema, policy.named_trainable_parameters(), input_dir)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int, metadata: dict[str, Any], *,
                    save_total_limit: int | None = None) -> Path:
    """Save the full resumable state to ``run_dir/checkpoints/step_<step>`` (complete or absent); then, with
    ``save_total_limit``, delete the oldest checkpoints beyond it (:func:`rotate_checkpoints`)."""
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
        normal_permissions(staging)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        if save_total_limit is not None:
            rotate_checkpoints(run_dir, keep=save_total_limit)
    accelerator.wait_for_everyone()
    return final


def refuse_pickled_state(checkpoint: Path) -> None:
    """A checkpoint must not hold accelerate's pickled custom state (``custom_checkpoint_*.pkl``): this kit
    never writes it, and unpickling runs code. Older checkpoints and tampered folders stop here, unread."""
    pickled = sorted(path.name for path in checkpoint.glob("custom_checkpoint_*"))
    if pickled:
        raise CheckpointError(
            f"{checkpoint} holds {', '.join(pickled)}: pickled state this version never writes and will not load "
            "(it could run code). Resume from a checkpoint written by this version, or restart with "
            "--overwrite_output_dir true."
        )


def checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run (``checkpoints/step_<N>``), oldest step first."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    complete = [path for path in folder.glob("step_*") if path.name.removeprefix("step_").isdigit() and path.is_dir()]
    return sorted(complete, key=lambda path: int(path.name.removeprefix("step_")))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def rotate_checkpoints(run_dir: Path, *, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` (>= 1) checkpoints of ``run_dir``, and what an earlier rotation left
    half-deleted. Only ``checkpoints/step_<N>`` folders are touched. Each is first renamed to
    ``.step_<N>.deleting`` (one atomic rename: from then on no resume can pick it), then removed. Returns the
    names deleted."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the newest checkpoint is never deleted), got {keep}")
    folder = run_dir / CHECKPOINTS
    for leftover in folder.glob(".step_*.deleting"):
        shutil.rmtree(leftover)
    deleted = [path.name for path in checkpoints(run_dir)[:-keep]]
    for name in deleted:
        (folder / name).rename(folder / f".{name}.deleting")
    for name in deleted:
        shutil.rmtree(folder / f".{name}.deleting")
    return deleted


def export_final(policy: WanPolicy, run_dir: Path, *, fused: bool, job: str, config: Mapping[str, Any],
                 lora: Mapping[str, torch.Tensor] | None = None) -> Path:
    """``run_dir/final``: the LoRA (diffusers format), the run's ``run_config.json`` and, if asked, a plain
    transformer with the LoRA fused in (``transformer_fused/``, loadable by
    ``WanTransformer3DModel.from_pretrained``). Written in a staging folder that replaces ``final/`` at the end,
    so a kill leaves the previous complete export or none. Fusing removes the adapters from ``policy``, so it
    is the last thing a run does. ``lora``: as in :func:`save_lora`."""
    final = run_dir / FINAL
    with atomic_directory(final) as staging:
        save_lora(policy, staging, lora)
        write_run_config(staging, job, config)
        if fused:
            transformer = policy.transformer
            transformer.fuse_lora(adapter_names=[LEARNER])
            transformer.unload_lora()
            transformer.save_pretrained(staging / "transformer_fused")
        normal_permissions(staging)
    return final


def normal_permissions(folder: Path) -> None:
    """Give ``folder`` and everything in it the permissions the umask gives new files (safetensors writes its
    files private, 0600), so a checkpoint can be shared like any other output."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
