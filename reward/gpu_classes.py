"""GPU classes the planners (``descore tune plan``, ``descore reward plan``) know: memory as the driver reports it,
dense bf16 tensor peak and HBM bandwidth, from the vendors' public spec sheets. No torch import."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

GIB = 2**30
# Left free on every GPU: CUDA context, NCCL buffers and allocator fragmentation (not measured; a safety margin).
RESERVED_GIB = 2.0


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    bf16_tflops: float
    hbm_tb_per_s: float


GPUS: dict[str, Gpu] = {gpu.name: gpu for gpu in (
    Gpu("h200", 140.4, 989.0, 4.8),
    Gpu("h100-80gb", 79.6, 989.0, 3.35),  # SXM
    Gpu("a100-80gb", 80.0, 312.0, 2.04),  # SXM
    Gpu("l40s", 45.0, 362.0, 0.864),
    Gpu("4090", 24.0, 165.2, 1.008),      # bf16 with fp32 accumulation
)}


def gpu_class(name: str) -> Gpu:
    if name not in GPUS:
        raise ConfigError(f"unknown gpu {name!r}; choose from {', '.join(GPUS)}")
    return GPUS[name]


def usable_gib(gpu: Gpu) -> float:
    return gpu.memory_gib - RESERVED_GIB
