"""Flow-matching training maths: training timesteps, noising and the velocity target (pure tensor functions).

Rectified flow (docs/generator_rl.md, "Flow-DPO"): x_t = (1 − σ)·x0 + σ·ε with σ in (0, 1) (1 is pure noise),
and the model predicts the velocity v = ε − x0. Training draws σ from a density over (0, 1) and, optionally,
bends it with the checkpoint's timestep shift s: σ = s·u / (1 + (s − 1)·u) — the map diffusers' flow-matching
schedulers apply to their sigmas (``FlowMatchEulerDiscreteScheduler`` with ``shift``, ``UniPCMultistepScheduler``
with ``use_flow_sigmas`` and ``flow_shift``). s > 1 moves training towards high noise, where Wan's sampler
spends most of its steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import torch

from reward.errors import ConfigError


class TimestepDensity(StrEnum):
    """Density of u in (0, 1) before the optional shift."""

    LOGIT_NORMAL = "logit_normal"  # u = sigmoid(m + s·n), n ~ N(0, 1) (SD3 paper; flow_grpo's Flow-DPO: m 0, s 1)
    UNIFORM = "uniform"  # u ~ U(0, 1)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """s·σ / (1 + (s − 1)·σ): monotone on [0, 1], fixes 0 and 1; s = 1 is the identity."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(
    count: int,
    *,
    density: TimestepDensity,
    shift: float,
    logit_mean: float,
    logit_std: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """``count`` training sigmas (float32, CPU): u from ``density`` (one draw of ``count`` numbers from
    ``generator``), then :func:`shift_sigmas` with ``shift`` (1: no shift)."""
    if density == TimestepDensity.LOGIT_NORMAL:
        u = torch.sigmoid(logit_mean + logit_std * torch.randn(count, generator=generator))
    elif density == TimestepDensity.UNIFORM:
        u = torch.rand(count, generator=generator)
    else:
        raise ValueError(f"unknown timestep density {density!r}; use one of {[d.value for d in TimestepDensity]}")
    return u if shift == 1 else shift_sigmas(u, shift)


def noised_latents(clean: torch.Tensor, noise: torch.Tensor, *, sigmas: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − σ)·x0 + σ·ε, with one σ per batch item (``sigmas`` (B,), latents (B, ...))."""
    sigmas = sigmas.view(-1, *([1] * (clean.ndim - 1))).to(clean.device)
    return (1 - sigmas) * clean + sigmas * noise


def velocity_target(clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rectified-flow velocity v = dx_t/dσ = ε − x0 that the model is trained to predict."""
    return noise - clean


def scheduler_shift(config: Mapping[str, Any]) -> float:
    """The timestep shift a diffusers scheduler ``config`` applies to its sigmas (read, never assumed).

    ``UniPCMultistepScheduler`` (what Wan2.1-Diffusers checkpoints ship) keeps it in ``flow_shift`` and applies it
    only with ``use_flow_sigmas``; ``FlowMatchEulerDiscreteScheduler`` keeps it in ``shift``. A resolution-dependent
    (dynamic) shift has no single value and is refused.
    """
    if config.get("use_dynamic_shifting"):
        raise ConfigError("the checkpoint's scheduler uses a dynamic (resolution-dependent) shift; shifted "
                          "timestep sampling needs a fixed one (use shift_timesteps: false)")
    if "flow_shift" in config:
        if not config.get("use_flow_sigmas"):
            raise ConfigError("the checkpoint's scheduler has flow_shift but use_flow_sigmas is off: it is not a "
                              "flow-matching schedule, so it has no timestep shift to follow")
        return float(config["flow_shift"])
    if "shift" in config:
        return float(config["shift"])
    raise ConfigError(f"the checkpoint's scheduler config has no timestep shift (no 'shift' or 'flow_shift' among "
                      f"{sorted(key for key in config if not key.startswith('_'))})")
