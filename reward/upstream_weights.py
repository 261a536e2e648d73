"""Reading the weights that upstream trainers save: peft-wrapped state dicts, pickled ``.pth`` files, LoRA pairs.

VideoAlign (:mod:`reward.videoreward_layout`) and the official DeScore code (:mod:`reward.official_import`) both
train a Qwen-VL under peft and save what changed in the same way: ``adapter_model.safetensors`` with the LoRA
``A``/``B`` matrices and a ``.pth`` state dict of the other trained tensors, every name behind peft's
``base_model.model.`` prefix. This module reads such files and folds the LoRA pairs into a backbone.

``.pth`` files are read with ``torch.load(weights_only=True)`` only: tensors and plain containers load, a
pickle that would build any other object (and so could run code) is refused.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .errors import CheckpointError

PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.default)?\.weight$")

LoraPairs = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (A of (r, in), B of (out, r))


def load_pickle_safely(path: Path) -> Any:
    """The content of a ``.pth`` file, loaded with ``weights_only=True`` (tensors and plain containers only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path} is not a plain tensor file; refusing to unpickle it ({error})") from error


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``.pth`` state dict: a flat mapping of names to tensors."""
    state = load_pickle_safely(path)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict (a mapping of names to tensors)")
    return dict(state)


def current_name(key: str) -> str:
    """A saved tensor name under today's Qwen-VL layout: without peft's prefix and ``.base_layer.``, and with
    transformers 4.45's names (``visual.*``, ``model.layers.*``) moved under ``model.visual`` and
    ``model.language_model`` (transformers >= 4.52 nests both towers). Today's names pass unchanged."""
    key = key.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model.") and not key.startswith(("model.language_model.", "model.visual.")):
        return "model.language_model." + key.removeprefix("model.")
    return key


def split_lora(tensors: Mapping[str, torch.Tensor], *, source: Path) -> tuple[dict[str, torch.Tensor], LoraPairs]:
    """(plain weights, LoRA pairs) of a saved state dict, every name mapped by :func:`current_name`.

    Raises:
        CheckpointError: a LoRA layer lacks its A or B half.
    """
    weights: dict[str, torch.Tensor] = {}
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _LORA_KEY.match(key)
        if match:
            halves.setdefault(current_name(match.group("module")), {})[match.group("part")] = tensor
        else:
            weights[current_name(key)] = tensor
    broken = sorted(module for module, pair in halves.items() if len(pair) != 2)
    if broken:
        raise CheckpointError(f"{source}: LoRA layers without both lora_A and lora_B: {broken}")
    return weights, {module: (pair["A"], pair["B"]) for module, pair in halves.items()}


def copy_checked(
    weights: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    *,
    required: set[str],
    also_unexpected: Sequence[str] = (),
    what: str,
) -> None:
    """Copy ``weights`` into the ``targets`` of the same names, after checking the names both ways (every
    ``required`` name given, none outside ``targets``) and every shape; ``what`` opens the error message."""
    missing = sorted(required - set(weights))
    unexpected = sorted(set(weights) - set(targets)) + list(also_unexpected)
    misshapen = [f"{name}: {tuple(t.shape)} vs {tuple(targets[name].shape)}"
                 for name, t in weights.items() if name in targets and t.shape != targets[name].shape]
    if missing or unexpected or misshapen:
        raise CheckpointError(f"{what}: missing {missing[:20]}, unexpected {unexpected[:20]}, "
                              f"shapes (file vs model) {misshapen[:20]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            targets[name].copy_(tensor)


def merge_lora(
    backbone: nn.Module, lora: LoraPairs, *, rank: int, alpha: float, use_rslora: bool, source: Path
) -> nn.Module:
    """Fold the LoRA pairs into the backbone's linear weights with peft (W + scale · B A, scale alpha / r, or
    alpha / sqrt(r) with rsLoRA) and return the plain backbone.

    Raises:
        CheckpointError: a pair names no linear layer of the backbone, or is not of rank ``rank`` and that
            layer's size.
    """
    if not lora:
        return backbone
    from peft import LoraConfig, get_peft_model

    modules = dict(backbone.named_modules())
    unknown = sorted(name for name in lora if not isinstance(modules.get(name), nn.Linear))
    misshapen = sorted(name for name, (down, up) in lora.items() if name not in unknown and (
        tuple(down.shape) != (rank, modules[name].in_features) or tuple(up.shape) != (modules[name].out_features, rank)))
    if unknown or misshapen:
        raise CheckpointError(f"{source}: LoRA layers that are not linear layers of the base: {unknown}; "
                              f"LoRA layers not of rank lora_r={rank} or of another layer's size: {misshapen}")
    config = LoraConfig(r=rank, lora_alpha=alpha, use_rslora=use_rslora, target_modules=sorted(lora),
                        lora_dropout=0.0, bias="none")
    wrapped = get_peft_model(backbone, config)
    with torch.no_grad():
        for name, (down, up) in lora.items():
            layer = wrapped.base_model.model.get_submodule(name)
            layer.lora_A["default"].weight.copy_(down)
            layer.lora_B["default"].weight.copy_(up)
    return wrapped.merge_and_unload()
