"""RAFT-large optical flow for VBench's ``dynamic_degree``: torchvision's ``raft_large`` with princeton-vl's weights.

Teed & Deng, "RAFT: Recurrent All-Pairs Field Transforms for Optical Flow", ECCV 2020. VBench runs the authors'
code (vendored as ``vbench/third_party/RAFT``) with ``raft-things.pth`` from github.com/princeton-vl/RAFT, 20
refinement iterations in test mode, on full-resolution frames in 0..255 padded to multiples of 8
(``vbench/dynamic_degree.py`` with ``InputPadder`` of ``core/utils/utils.py``). torchvision's ``raft_large``
(``torchvision/models/optical_flow/raft.py``) is the same network under other parameter names (its
``Raft_Large_Weights.C_T_V1`` were converted from that very file), so we load the released file through
:func:`princeton_to_torchvision` and run torchvision's maintained model. Two things RAFT's own forward does that
torchvision's leaves to the caller, and :class:`RaftFlow` does: map 0..255 to [-1, 1] (``2 * (x / 255) - 1``),
and replicate-pad to multiples of 8, half on each side (the odd pixel bottom/right: "sintel" mode).
docs/vbench/musiq_raft.md has the details.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reward.checkpoint import atomic_file
from reward.clip_encoders import load_strictly, read_state_dict
from reward.errors import CheckpointError, ConfigError

RAFT_ITERATIONS = 20  # VBench's ``iters=20``
RAFT_PARAMETERS = 5_257_536  # raft_large's trainable parameters (torchvision's metadata for C_T_V1)
MIN_SIDE = 128  # torchvision's correlation pyramid needs 1/8-scale feature maps of at least 16 pixels
DATA_PARALLEL_PREFIX = "module."  # the released file was saved from a DataParallel model

_ENCODERS = {"fnet": "feature_encoder", "cnet": "context_encoder"}
_ENCODER_ENDS = {"conv1": "convnormrelu.0", "norm1": "convnormrelu.1", "conv2": "conv"}
_BLOCK_PARTS = {"conv1": "convnormrelu1.0", "norm1": "convnormrelu1.1", "conv2": "convnormrelu2.0",
                "norm2": "convnormrelu2.1", "downsample.0": "downsample.0", "downsample.1": "downsample.1"}
_UPDATE_PARTS = {
    "encoder.convc1": "update_block.motion_encoder.convcorr1.0",
    "encoder.convc2": "update_block.motion_encoder.convcorr2.0",
    "encoder.convf1": "update_block.motion_encoder.convflow1.0",
    "encoder.convf2": "update_block.motion_encoder.convflow2.0",
    "encoder.conv": "update_block.motion_encoder.conv.0",
    **{f"gru.conv{gate}{half}": f"update_block.recurrent_block.convgru{half}.conv{gate}" for gate in "zrq" for half in "12"},
    "flow_head.conv1": "update_block.flow_head.conv1",
    "flow_head.conv2": "update_block.flow_head.conv2",
    "mask.0": "mask_predictor.convrelu.0",
    "mask.2": "mask_predictor.conv",
}


def _module_table() -> dict[str, str]:
    """princeton-vl module path -> torchvision module path, for every module of RAFT-large that holds tensors."""
    table = {f"update_block.{old}": new for old, new in _UPDATE_PARTS.items()}
    for old_encoder, new_encoder in _ENCODERS.items():
        table.update({f"{old_encoder}.{old}": f"{new_encoder}.{new}" for old, new in _ENCODER_ENDS.items()})
        for block in (f"layer{layer}.{index}" for layer in (1, 2, 3) for index in (0, 1)):
            table.update({f"{old_encoder}.{block}.{old}": f"{new_encoder}.{block}.{new}"
                          for old, new in _BLOCK_PARTS.items()})
    return table


PRINCETON_TO_TORCHVISION = _module_table()
TORCHVISION_TO_PRINCETON = {new: old for old, new in PRINCETON_TO_TORCHVISION.items()}
# princeton's strided blocks register their shortcut norm twice, as ``norm3`` and as ``downsample.1``: the file
# holds both copies (equal tensors); torchvision has only the second.
_NORM3 = re.compile(r"(?P<block>[cf]net\.layer[23]\.0)\.norm3$")


def princeton_to_torchvision(state: dict[str, torch.Tensor], where: str | Path) -> dict[str, torch.Tensor]:
    """``raft-things.pth`` tensors (``module.`` prefix optional) renamed to torchvision's ``raft_large``.

    A key no rule maps is a :class:`CheckpointError` that lists them all, as is a ``norm3`` copy that differs
    from its ``downsample.1`` twin. Whether every torchvision key is present is checked when loading."""
    state = {key.removeprefix(DATA_PARALLEL_PREFIX): tensor for key, tensor in state.items()}
    renamed, unmapped = {}, []
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        if duplicate := _NORM3.match(module):
            twin = f"{duplicate['block']}.downsample.1.{leaf}"
            if twin not in state or not torch.equal(state[twin], tensor):
                raise CheckpointError(f"{where}: {key} differs from (or lacks) its twin {twin}; not a RAFT checkpoint")
        elif module in PRINCETON_TO_TORCHVISION:
            renamed[f"{PRINCETON_TO_TORCHVISION[module]}.{leaf}"] = tensor
        else:
            unmapped.append(key)
    if unmapped:
        raise CheckpointError(f"{where}: {len(unmapped)} tensors are not part of princeton-vl RAFT-large "
                              f"(raft-things.pth layout; names without the {DATA_PARALLEL_PREFIX!r} prefix): {unmapped[:20]}")
    return renamed


def torchvision_to_princeton(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`princeton_to_torchvision`: torchvision ``raft_large`` tensors in the released file's
    layout (``module.`` prefix, ``norm3`` copies of the strided context-encoder blocks)."""
    princeton = {}
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        old = TORCHVISION_TO_PRINCETON[module]
        princeton[f"{DATA_PARALLEL_PREFIX}{old}.{leaf}"] = tensor
        if old.endswith(".downsample.1"):  # only strided blocks have a shortcut conv + norm
            princeton[f"{DATA_PARALLEL_PREFIX}{old.removesuffix('downsample.1')}norm3.{leaf}"] = tensor
    return princeton


def padding_to_multiple_of_8(height: int, width: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) replicate padding that makes both sides multiples of 8, split as RAFT's
    ``InputPadder`` does in its default "sintel" mode: half before, the odd pixel after."""
    pad_h, pad_w = -height % 8, -width % 8
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


class RaftFlow:
    """A :class:`benchmarks.vbench.metrics.FlowEstimator`: two ``(1, 3, H, W)`` float frames in 0..255 ->
    ``(1, 2, H, W)`` flow in pixels from the first to the second (x then y), after ``iterations`` refinements.

    ``keep_padding=True`` returns the flow of the padded frames instead, ``(1, 2, H', W')`` with H', W' the next
    multiples of 8: VBench takes its top-5% motion over that padded field (it never crops), which differs from
    the cropped one only for frame sizes that are not multiples of 8."""

    def __init__(self, model: nn.Module, device: torch.device, *, iterations: int = RAFT_ITERATIONS) -> None:
        self.model, self.device, self.iterations = model, device, iterations

    @torch.no_grad()
    def __call__(self, frame1: torch.Tensor, frame2: torch.Tensor, *, keep_padding: bool = False) -> torch.Tensor:
        if frame1.shape != frame2.shape or frame1.ndim != 4 or frame1.shape[:2] != (1, 3):
            raise ValueError(f"RAFT takes two (1, 3, H, W) frames of one size, got {tuple(frame1.shape)} and "
                             f"{tuple(frame2.shape)}")
        height, width = frame1.shape[-2:]
        padding = padding_to_multiple_of_8(height, width)
        if min(height + padding[2] + padding[3], width + padding[0] + padding[1]) < MIN_SIDE:
            raise ValueError(f"RAFT needs frames of at least {MIN_SIDE}x{MIN_SIDE} pixels, got {height}x{width}")
        images = [F.pad(2 * (frame.to(self.device, torch.float32) / 255.0) - 1, padding, mode="replicate")
                  for frame in (frame1, frame2)]
        flow = self.model(*images, num_flow_updates=self.iterations)[-1]
        if keep_padding:
            return flow
        left, _, top, _ = padding
        return flow[..., top:top + height, left:left + width]


def build_raft_large() -> nn.Module:
    """torchvision's RAFT-large architecture with freshly initialised weights (nothing is downloaded)."""
    from torchvision.models.optical_flow import raft_large

    return raft_large(weights=None, progress=False)


def load_raft(path: str | Path, device: str | torch.device = "cpu") -> RaftFlow:
    """A :class:`RaftFlow` from princeton-vl's ``raft-things.pth`` at ``path`` (read with ``weights_only=True``).

    Every tensor must map (:func:`princeton_to_torchvision`) and every torchvision tensor must be present; only
    BatchNorm's ``num_batches_tracked`` counters, which eval mode never reads and files saved before PyTorch 0.4.1
    lack, may be absent."""
    device = torch.device(device)
    state = princeton_to_torchvision(read_state_dict(Path(path)), path)
    model = build_raft_large()
    counters = {key: value for key, value in model.state_dict().items() if key.endswith("num_batches_tracked")}
    load_strictly(model, {**counters, **state}, path)
    return RaftFlow(model.float().to(device).eval().requires_grad_(False), device)


def write_random_raft(path: str | Path, size: str = "real", *, seed: int = 0) -> Path:
    """Write a random-weight RAFT-large to ``path`` in ``raft-things.pth``'s layout (princeton-vl names, ``module.``
    prefixes). RAFT's sizes are fixed (5.26 M parameters, ~20 MB), so "tiny" is the same network as "real".
    BatchNorm scales, shifts and running statistics are randomised too, so a mis-mapped norm changes the flow."""
    if size not in ("tiny", "real"):
        raise ConfigError(f"unknown RAFT size {size!r}; choose 'tiny' or 'real' (both are RAFT-large)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_raft_large()
        for norm in (module for module in model.modules() if isinstance(module, nn.BatchNorm2d)):
            nn.init.uniform_(norm.weight, 0.5, 1.5)
            nn.init.normal_(norm.bias, std=0.1)
            norm.running_mean.normal_(std=0.1)
            norm.running_var.uniform_(0.5, 1.5)
    with atomic_file(path, "wb") as handle:
        torch.save(torchvision_to_princeton(model.state_dict()), handle)
    return Path(path)
