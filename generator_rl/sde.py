"""Stochastic (and deterministic) steps of a rectified-flow sampler, with Gaussian log-probabilities.

Notation (reference/generator_rl.md §1–2): x_t = (1 − σ)·x0 + σ·ε, velocity v = ε − x0, σ runs from 1 (noise)
to 0 (data); one step goes from σ to σ_next < σ, dt = σ_next − σ < 0. Every stochastic step draws
x_next ~ N(μ, s²·I), so it has a closed-form log-probability; all maths runs in float32 (bf16 overflows in
these expressions, as flow_grpo notes).

Log-probabilities are the **mean** over the non-batch dimensions of the per-element Gaussian log-density,
as in flow_grpo and DanceGRPO — so the PPO ratio is a per-element geometric mean and clip ranges are tiny
(1e-3 … 1e-5). Unlike flow_grpo's CPS branch, which drops the 1/(2s²) factor and the constants, every
variant here uses the exact log-density.

Variants (``SdeKind``):

* ``flow_sde`` — Flow-GRPO (arXiv 2505.05470): the reverse SDE with the ODE's marginals,
  σ_t = a·√(σ/(1 − min(σ, σ_max))) with σ_max the schedule's second sigma (flow_grpo uses σ_max when σ = 1;
  the min also covers schedules whose first sigma is 0.999999), μ = x·(1 + σ_t²·dt/(2σ)) +
  v·(1 + σ_t²(1 − σ)/(2σ))·dt, s = σ_t·√(−dt). ``noise_level`` = a (default 0.7).
* ``cps`` — Coefficients-Preserving Sampling (arXiv 2509.05952): s = σ_next·sin(a·π/2),
  x̂0 = x − σ·v, x̂1 = x + (1 − σ)·v, μ = (1 − σ_next)·x̂0 + √(σ_next² − s²)·x̂1.
* ``dance`` — DanceGRPO (arXiv 2505.07818): constant η = ``noise_level``, s = η·√(σ − σ_next),
  μ = x + dt·v − ½η²·score·dt with score = −(x − (1 − σ)·x̂0)/σ².
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch

SdeKind = Literal["flow_sde", "cps", "dance"]
SDE_KINDS: tuple[str, ...] = ("flow_sde", "cps", "dance")
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class StepOutput(NamedTuple):
    """Result of one step: the next latent, its log-probability (per batch item), the Gaussian mean and std."""

    sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def ode_step(velocity: torch.Tensor, sample: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Deterministic Euler step of the probability-flow ODE: x_next = x + (σ_next − σ)·v."""
    return (sample.float() + (sigma_next - sigma) * velocity.float()).to(sample.dtype)


def step_mean_std(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: float,
    sigma_next: float,
    *,
    kind: SdeKind,
    noise_level: float,
    sigma_max: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (a 0-d tensor) of the Gaussian transition x_next | x (float32)."""
    if not sigma_next < sigma:
        raise ValueError(f"a step must lower sigma: got {sigma} -> {sigma_next}")
    x, v = sample.float(), velocity.float()
    dt = sigma_next - sigma
    if kind == "flow_sde":
        if sigma_next <= 0.0:
            raise ValueError("the flow SDE step is undefined at sigma_next = 0; take an ODE step there")
        # flow_grpo replaces σ = 1 by σ_max in the denominator; schedulers that start at 0.999999 need the same
        sigma_t = noise_level * math.sqrt(sigma / (1.0 - min(sigma, sigma_max)))
        mean = x * (1 + sigma_t**2 / (2 * sigma) * dt) + v * (1 + sigma_t**2 * (1 - sigma) / (2 * sigma)) * dt
        std = sigma_t * math.sqrt(-dt)
    elif kind == "cps":
        std = sigma_next * math.sin(noise_level * math.pi / 2)
        x0_hat, x1_hat = x - sigma * v, x + (1 - sigma) * v
        mean = (1 - sigma_next) * x0_hat + math.sqrt(max(sigma_next**2 - std**2, 0.0)) * x1_hat
    elif kind == "dance":
        x0_hat = x - sigma * v
        score = -(x - (1 - sigma) * x0_hat) / sigma**2
        mean = x + dt * v - 0.5 * noise_level**2 * score * dt
        std = noise_level * math.sqrt(-dt)
    else:
        raise ValueError(f"unknown SDE kind {kind!r}; use one of {SDE_KINDS}")
    if not std > 0:
        raise ValueError(f"the {kind} step has zero noise at sigma {sigma} -> {sigma_next}; take an ODE step there")
    return mean, torch.tensor(std, dtype=torch.float32, device=mean.device)


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean over non-batch dims of log N(sample; mean, std²) — one value per batch item (float32)."""
    sample, mean = sample.float(), mean.float()
    log_density = -((sample - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return log_density.flatten(1).mean(dim=1)


def sde_step(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: float,
    sigma_next: float,
    *,
    kind: SdeKind = "flow_sde",
    noise_level: float = 0.7,
    sigma_max: float,
    next_sample: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> StepOutput:
    """One stochastic step: x_next = μ + s·``noise`` (or the given ``next_sample`` is scored instead).

    ``sigma_max`` is the schedule's second sigma (flow_sde caps σ at it in 1 − σ). The new sample is
    detached before its log-prob is computed, so gradients flow through the mean only.
    """
    mean, std = step_mean_std(velocity, sample, sigma, sigma_next, kind=kind, noise_level=noise_level, sigma_max=sigma_max)
    if next_sample is None:
        if noise is None:
            raise ValueError("sde_step needs either the standard-normal noise or a next_sample to score")
        next_sample = (mean + std * noise.float()).detach()
    return StepOutput(next_sample, gaussian_log_prob(next_sample.detach(), mean, std), mean, std)


def gaussian_kl(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, s²) ‖ N(reference_mean, s²)) averaged over non-batch dims: mean((μ − μ_ref)²) / (2s²).

    The same-variance closed form of Flow-GRPO's KL to the reference policy (adapters disabled).
    """
    return ((mean.float() - reference_mean.float()) ** 2).flatten(1).mean(dim=1) / (2 * std**2)
