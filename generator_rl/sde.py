"""Stochastic (and deterministic) steps of a rectified-flow sampler, with Gaussian log-probabilities.

Notation (docs/generator_rl.md, "SDE steps"): x_t = (1 − σ)·x0 + σ·ε, velocity v = ε − x0, σ runs from 1
(noise) to 0 (data); one step goes from σ to σ_next < σ, dt = σ_next − σ < 0. Every stochastic step draws
x_next ~ N(μ, s²·I), so it has a closed-form log-probability; all maths runs in float32 (bf16 overflows in
these expressions, as flow_grpo notes).

Log-probabilities are the **mean** over the non-batch dimensions of the per-element Gaussian log-density,
as in flow_grpo and DanceGRPO — so the PPO ratio is a per-element geometric mean and clip ranges are tiny
(1e-3 … 1e-5). Unlike flow_grpo's CPS branch, which drops the 1/(2s²) factor and the constants, every
variant here uses the exact log-density (docs/generator_rl.md explains what that means for CPS clip ranges).

Variants (``SdeKind``); the schedule's ends are σ_max = its second sigma and σ_min = its last sigma:

* ``flow_sde`` — Flow-GRPO's SD3 form (arXiv 2505.05470; flow_grpo ``sd3_sde_with_logprob.py``): the reverse
  SDE with the ODE's marginals, σ_t = a·√(σ/(1 − min(σ, σ_max))) (flow_grpo uses σ_max when σ = 1; the min also
  covers schedules whose first sigma is 0.999999), μ = x·(1 + σ_t²·dt/(2σ)) + v·(1 + σ_t²(1 − σ)/(2σ))·dt,
  s = σ_t·√(−dt). ``noise_level`` = a (default 0.7).
* ``flow_sde_wan`` — Flow-GRPO's Wan form (flow_grpo ``wan_pipeline_with_logprob.py::sde_step_with_logprob``):
  the same μ and s with σ_t = σ_min + (σ_max − σ_min)·σ, linear in σ and with no noise level (≈ σ_max·σ
  for schedules ending at 0) — 2–3× less noise than ``flow_sde`` at high σ.
* ``cps`` — Coefficients-Preserving Sampling (arXiv 2509.05952): s = σ_next·sin(a·π/2),
  x̂0 = x − σ·v, x̂1 = x + (1 − σ)·v, μ = (1 − σ_next)·x̂0 + √(σ_next² − s²)·x̂1.
* ``dance`` — DanceGRPO (arXiv 2505.07818; ``fastvideo/train_grpo_wan_2_1.py::flux_step``): constant
  η = ``noise_level``, s = η·√(σ − σ_next) for both the noise and the log-density,
  μ = x + dt·v − ½η²·score·dt with score = −(x − (1 − σ)·x̂0)/σ² — the ``flow_sde`` family with σ_t = η.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Callable, NamedTuple

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class SdeKind(StrEnum):
    """The stochastic step of a rollout; a config turns its string option into one of these once."""

    FLOW_SDE = "flow_sde"
    FLOW_SDE_WAN = "flow_sde_wan"
    CPS = "cps"
    DANCE = "dance"


SDE_KINDS: tuple[str, ...] = tuple(kind.value for kind in SdeKind)
# The noise level each kind uses when none is given (flow_grpo's SD3 default, flow_grpo README's CPS advice,
# DanceGRPO's Wan script); flow_sde_wan has none — its noise is fixed by the schedule.
DEFAULT_NOISE_LEVELS: dict[SdeKind, float | None] = {
    SdeKind.FLOW_SDE: 0.7, SdeKind.FLOW_SDE_WAN: None, SdeKind.CPS: 0.8, SdeKind.DANCE: 0.3,
}


class StepOutput(NamedTuple):
    """Result of one step: the next latent, its log-probability (per batch item), the Gaussian mean and std."""

    sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


class StepSigmas(NamedTuple):
    """One step σ → σ_next and the ends of its schedule (σ_max = second sigma, σ_min = last sigma)."""

    sigma: float
    sigma_next: float
    sigma_max: float
    sigma_min: float


# (x, v, sigmas, noise level) -> (mean, std) of x_next | x, all in float32
Transition = Callable[[torch.Tensor, torch.Tensor, StepSigmas, float | None], tuple[torch.Tensor, float]]


def ode_step(velocity: torch.Tensor, sample: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Deterministic Euler step of the probability-flow ODE: x_next = x + (σ_next − σ)·v."""
    return (sample.float() + (sigma_next - sigma) * velocity.float()).to(sample.dtype)


def _reverse_sde_mean(x: torch.Tensor, v: torch.Tensor, step: StepSigmas, sigma_t: float) -> torch.Tensor:
    """Euler–Maruyama mean of the marginal-preserving reverse SDE with diffusion σ_t (Flow-GRPO eq. 9)."""
    sigma, dt = step.sigma, step.sigma_next - step.sigma
    return x * (1 + sigma_t**2 / (2 * sigma) * dt) + v * (1 + sigma_t**2 * (1 - sigma) / (2 * sigma)) * dt


def _needs_noise_level(kind: SdeKind, noise_level: float | None) -> float:
    if noise_level is None:
        raise ValueError(f"the {kind} step needs a noise_level")
    return noise_level


def _flow_sde(x: torch.Tensor, v: torch.Tensor, step: StepSigmas, noise_level: float | None) -> tuple[torch.Tensor, float]:
    if step.sigma_next <= 0.0:
        raise ValueError("the flow SDE step is undefined at sigma_next = 0; take an ODE step there")
    a = _needs_noise_level(SdeKind.FLOW_SDE, noise_level)
    # flow_grpo replaces σ = 1 by σ_max in the denominator; schedulers that start at 0.999999 need the same
    sigma_t = a * math.sqrt(step.sigma / (1.0 - min(step.sigma, step.sigma_max)))
    return _reverse_sde_mean(x, v, step, sigma_t), sigma_t * math.sqrt(step.sigma - step.sigma_next)


def _flow_sde_wan(x: torch.Tensor, v: torch.Tensor, step: StepSigmas, noise_level: float | None) -> tuple[torch.Tensor, float]:
    sigma_t = step.sigma_min + (step.sigma_max - step.sigma_min) * step.sigma
    return _reverse_sde_mean(x, v, step, sigma_t), sigma_t * math.sqrt(step.sigma - step.sigma_next)


def _cps(x: torch.Tensor, v: torch.Tensor, step: StepSigmas, noise_level: float | None) -> tuple[torch.Tensor, float]:
    a = _needs_noise_level(SdeKind.CPS, noise_level)
    std = step.sigma_next * math.sin(a * math.pi / 2)
    x0_hat, x1_hat = x - step.sigma * v, x + (1 - step.sigma) * v
    return (1 - step.sigma_next) * x0_hat + math.sqrt(max(step.sigma_next**2 - std**2, 0.0)) * x1_hat, std


def _dance(x: torch.Tensor, v: torch.Tensor, step: StepSigmas, noise_level: float | None) -> tuple[torch.Tensor, float]:
    eta = _needs_noise_level(SdeKind.DANCE, noise_level)
    sigma, dt = step.sigma, step.sigma_next - step.sigma
    x0_hat = x - sigma * v
    score = -(x - (1 - sigma) * x0_hat) / sigma**2
    return x + dt * v - 0.5 * eta**2 * score * dt, eta * math.sqrt(-dt)


TRANSITIONS: dict[SdeKind, Transition] = {
    SdeKind.FLOW_SDE: _flow_sde, SdeKind.FLOW_SDE_WAN: _flow_sde_wan, SdeKind.CPS: _cps, SdeKind.DANCE: _dance,
}


def sde_kind(name: str) -> SdeKind:
    """``name`` as an :class:`SdeKind`; an unknown name raises ``ValueError`` listing the kinds."""
    try:
        return SdeKind(name)
    except ValueError:
        raise ValueError(f"unknown SDE kind {name!r}; use one of {list(SDE_KINDS)}") from None


def step_mean_std(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: float,
    sigma_next: float,
    *,
    kind: SdeKind,
    noise_level: float | None,
    sigma_max: float,
    sigma_min: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (a 0-d tensor) of the Gaussian transition x_next | x (float32).

    ``sigma_max`` / ``sigma_min`` are the schedule's second and last sigmas (``sigma_min`` is 0 for every
    schedule that ends at data, which is all the policy accepts); ``noise_level`` is None for flow_sde_wan.
    """
    if not sigma_next < sigma:
        raise ValueError(f"a step must lower sigma: got {sigma} -> {sigma_next}")
    transition = TRANSITIONS.get(kind)
    if transition is None:
        raise ValueError(f"unknown SDE kind {kind!r}; use one of {list(SDE_KINDS)}")
    step = StepSigmas(sigma, sigma_next, sigma_max, sigma_min)
    mean, std = transition(sample.float(), velocity.float(), step, noise_level)
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
    kind: SdeKind = SdeKind.FLOW_SDE,
    noise_level: float | None = 0.7,
    sigma_max: float,
    sigma_min: float = 0.0,
    next_sample: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> StepOutput:
    """One stochastic step: x_next = μ + s·``noise`` (or the given ``next_sample`` is scored instead).

    ``sigma_max`` / ``sigma_min`` are the schedule's second and last sigmas (see :func:`step_mean_std`). The
    new sample is detached before its log-prob is computed, so gradients flow through the mean only.
    """
    mean, std = step_mean_std(velocity, sample, sigma, sigma_next, kind=kind, noise_level=noise_level,
                              sigma_max=sigma_max, sigma_min=sigma_min)
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
