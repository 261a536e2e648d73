"""Trajectory sampling with log-probabilities: which steps are stochastic, and the sampling loop.

A trajectory runs the checkpoint's sigma schedule from pure noise to data. Stochastic steps (SDE, with a
log-probability) are where the policy is trained; all others are deterministic Euler steps of the ODE. The
last step (σ_next = 0) is always an ODE step and never trained: its Gaussian would have zero or near-zero
variance. ``window`` gives Flow-GRPO-Fast / LongCat-style rollouts: only W consecutive steps, placed at random
inside ``window_range``, are stochastic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .sde import SdeKind, ode_step, sde_step

VelocityFn = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class SdeSettings:
    """Which step a rollout takes where it is stochastic (``sde.py``) and where those steps are."""

    kind: SdeKind = SdeKind.FLOW_SDE
    noise_level: float | None = 0.7  # None for flow_sde_wan, whose noise the schedule fixes
    window: int | None = None
    window_range: tuple[int, int] | None = None

    def stochastic_steps(self, num_steps: int, generator: torch.Generator) -> list[int]:
        """Indices of the SDE steps among ``num_steps`` (the last one is never stochastic)."""
        trainable = num_steps - 1
        if self.window is None:
            return list(range(trainable))
        low, high = self.window_range or (0, trainable)
        high = min(high, trainable)
        if not 1 <= self.window <= high - low:
            raise ValueError(f"window {self.window} does not fit in steps [{low}, {high}) of {num_steps}")
        start = low + int(torch.randint(0, high - low - self.window + 1, (1,), generator=generator))
        return list(range(start, start + self.window))


@dataclass
class Trajectory:
    """What training needs from a rollout: per stochastic step j, the latent before it, the sampled latent
    after it and its log-probability under the sampling policy."""

    steps: list[int]  # scheduler step indices, ascending
    states: torch.Tensor  # (B, S, C, F, H, W): latent entering each stochastic step
    next_states: torch.Tensor  # (B, S, C, F, H, W): latent it produced
    log_probs: torch.Tensor  # (B, S) float32
    final: torch.Tensor  # (B, C, F, H, W) denoised latents


@torch.no_grad()
def sample_trajectory(
    velocity: VelocityFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    settings: SdeSettings,
    stochastic: list[int],
    generators: list[torch.Generator],
) -> Trajectory:
    """Denoise ``noise`` along ``sigmas``; ``velocity(latents, step_index)`` returns the (guided) velocity.

    ``generators`` (one CPU generator per sample) draw each sample's SDE noise, so a sample is the same
    whatever batch or process it is drawn in.
    """
    if len(generators) != noise.shape[0]:
        raise ValueError(f"need one generator per sample: {len(generators)} for a batch of {noise.shape[0]}")
    num_steps = len(sigmas) - 1
    if any(not 0 <= index < num_steps - 1 for index in stochastic):
        raise ValueError(f"stochastic steps {stochastic} must lie in [0, {num_steps - 1}): the last step is an ODE step")
    sigma_max = float(sigmas[1]) if num_steps > 1 else float(sigmas[0])
    sigma_min = float(sigmas[-1])
    latents = noise.float()
    states, next_states, log_probs = [], [], []
    chosen = set(stochastic)
    for index in range(num_steps):
        sigma, sigma_next = float(sigmas[index]), float(sigmas[index + 1])
        v = velocity(latents, index)
        if index in chosen:
            step_noise = torch.stack([torch.randn(noise.shape[1:], generator=g) for g in generators]).to(noise.device)
            step = sde_step(
                v, latents, sigma, sigma_next, kind=settings.kind, noise_level=settings.noise_level,
                sigma_max=sigma_max, sigma_min=sigma_min, noise=step_noise,
            )
            states.append(latents)
            next_states.append(step.sample)
            log_probs.append(step.log_prob)
            latents = step.sample
        else:
            latents = ode_step(v, latents, sigma, sigma_next)
    batch = noise.shape[0]
    empty = noise.new_zeros((batch, 0, *noise.shape[1:]))
    return Trajectory(
        steps=sorted(chosen),
        states=torch.stack(states, dim=1) if states else empty,
        next_states=torch.stack(next_states, dim=1) if next_states else empty,
        log_probs=torch.stack(log_probs, dim=1) if log_probs else noise.new_zeros((batch, 0)),
        final=latents,
    )


@torch.no_grad()
def ode_sample(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Denoise ``noise`` along ``sigmas`` with Euler steps of the probability-flow ODE only — the rollout's
    deterministic path (no step is stochastic); returns the float32 latents at σ = 0."""
    latents = noise.float()
    for index in range(len(sigmas) - 1):
        latents = ode_step(velocity(latents, index), latents, float(sigmas[index]), float(sigmas[index + 1]))
    return latents
