"""What every GPU benchmark script shares: timing with device synchronisation, peak memory, MFU, a failure's
status (OOM, an attention kernel the machine lacks, any other error), a time budget, and the JSON/markdown output.

MFU (model FLOPs utilisation) = useful FLOPs / seconds / the GPU's dense bf16 peak. Which FLOPs count as useful is
each workload's formula (``wan_rl_steps.forward_flops``); the peaks are the vendors' dense (no sparsity) bf16
figures, so an unknown GPU gets no MFU rather than a guessed one.
"""

from __future__ import annotations

import gc
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import torch

Result = TypeVar("Result")

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets; the H200 has the H100 SXM's compute.
DENSE_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
# What PyTorch raises when a pinned SDPA backend cannot run these inputs on this machine (older and newer wording).
NO_KERNEL = ("No available kernel", "No viable backend")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], Result], device: torch.device) -> tuple[Result, float]:
    """``function()``'s result and its wall time, with the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return result, time.perf_counter() - start


def repeated(function: Callable[[], object], device: torch.device, *, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls."""
    return [timed(function, device)[1] for _ in range(repeats)]


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak allocated memory since ``reset_peak``; None off CUDA (no allocator statistics)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def dense_bf16_peak(machine: str) -> float | None:
    """The dense bf16 peak (TFLOP/s) of a GPU named ``machine`` (``torch.cuda.get_device_name``), None if unknown."""
    return next((peak for name, peak in DENSE_BF16_TFLOPS.items() if name in machine.upper()), None)


def mfu(flops: float | None, seconds: float | None, peak_tflops: float | None) -> float | None:
    """Useful FLOPs per second over the peak; None when any input is missing."""
    if flops is None or seconds is None or peak_tflops is None or not seconds > 0:
        return None
    return flops / seconds / (peak_tflops * 1e12)


def failure_status(error: BaseException) -> str:
    """``OOM``, ``unsupported`` (a pinned attention kernel this GPU/torch lacks) or ``error``."""
    if isinstance(error, torch.OutOfMemoryError):
        return "OOM"
    if isinstance(error, RuntimeError) and any(text in str(error) for text in NO_KERNEL):
        return "unsupported"
    return "error"


def machine_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"


def versions(packages: Sequence[str] = ("torch", "diffusers", "transformers", "peft")) -> dict[str, str]:
    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "absent"
    return found


class Deadline:
    """A wall-clock budget: work that would start after it is skipped and recorded as skipped."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    @property
    def passed(self) -> bool:
        return self.left() <= 0


def cell(value: Any, spec: str = "") -> str:
    """A table cell: '-' for a missing or NaN number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Sequence[bool]) -> str:
    """A GitHub markdown table; ``numeric`` columns are right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if right else "---" for right in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(data: Any, path: str | Path | None) -> None:
    """Write ``data`` (NaN as null) to ``path``, creating its folder; nothing when ``path`` is None."""
    if path is None:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(_no_nan(data), indent=2))


def _no_nan(data: Any) -> Any:
    """NaN is not JSON: it becomes null."""
    if isinstance(data, float) and math.isnan(data):
        return None
    if isinstance(data, dict):
        return {key: _no_nan(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_no_nan(value) for value in data]
    return data
