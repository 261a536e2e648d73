"""Tests for generator_rl/flow_matching.py: the shift map, the timestep sampler (exact values for a fixed
generator, empirical quantiles), noising and the velocity target, and reading the shift from a scheduler."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from torch.testing import assert_close

from generator_rl.flow_matching import (
    TimestepDensity, noised_latents, sample_sigmas, scheduler_shift, shift_sigmas, velocity_target,
)
from reward.errors import ConfigError


def test_shift_by_hand():
    """s = 3: σ = 3u/(1 + 2u): u = 0.5 → 1.5/2 = 0.75; u = 0.25 → 0.75/1.5 = 0.5; 0 and 1 stay; s = 1 is the identity."""
    u = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert_close(shift_sigmas(u, 3.0), torch.tensor([0.0, 0.5, 0.75, 1.0]))
    assert_close(shift_sigmas(u, 1.0), u)


def test_shift_is_the_one_diffusers_applies_to_its_sigmas():
    """FlowMatchEulerDiscreteScheduler(shift=s) stores shift_sigmas(linspace(1, 1/1000, 1000), s) as its sigmas."""
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    unshifted = torch.linspace(1, 1000, 1000).flip(0) / 1000
    assert_close(scheduler.sigmas.double(), shift_sigmas(unshifted.double(), 5.0), rtol=1e-6, atol=1e-6)


def test_shifted_uniform_sampler_exact_values():
    """u = torch.rand(4) of a generator seeded 0, then σ = 3u/(1 + 2u) elementwise, in float64 by hand."""
    u = torch.rand(4, generator=torch.Generator().manual_seed(0)).double()
    expected = 3 * u / (1 + 2 * u)
    sigmas = sample_sigmas(4, density=TimestepDensity.UNIFORM, shift=3.0, logit_mean=0.0, logit_std=1.0,
                           generator=torch.Generator().manual_seed(0))
    assert_close(sigmas.double(), expected, rtol=1e-6, atol=1e-7)


def test_unshifted_logit_normal_sampler_exact_values():
    """shift 1: σ = sigmoid(m + s·n) with n = torch.randn(3) of a generator seeded 1, m = 0.5, s = 2."""
    n = torch.randn(3, generator=torch.Generator().manual_seed(1)).double()
    expected = 1 / (1 + torch.exp(-(0.5 + 2 * n)))
    sigmas = sample_sigmas(3, density=TimestepDensity.LOGIT_NORMAL, shift=1.0, logit_mean=0.5, logit_std=2.0,
                           generator=torch.Generator().manual_seed(1))
    assert_close(sigmas.double(), expected, rtol=1e-6, atol=1e-7)


def test_shifted_uniform_sampler_quantiles():
    """σ = f(u) with f increasing, so the q-quantile of σ is f(q): for s = 3, f(0.1) = 0.25, f(0.5) = 0.75,
    f(0.9) = 2.7/2.8 = 0.964286. 200,000 draws put each empirical quantile within 0.005 (its standard error is
    about f'(q)·√(q(1 − q)/n) ≤ 0.002)."""
    sigmas = sample_sigmas(200_000, density=TimestepDensity.UNIFORM, shift=3.0, logit_mean=0.0, logit_std=1.0,
                           generator=torch.Generator().manual_seed(2))
    quantiles = torch.quantile(sigmas.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    assert_close(quantiles, torch.tensor([0.25, 0.75, 2.7 / 2.8], dtype=torch.float64), rtol=0, atol=0.005)
    assert 0 < float(sigmas.min()) and float(sigmas.max()) < 1


def test_noising_and_target_exact():
    """x0 = [2, −1], ε = [0.5, 1], σ = 0.25: x_t = 0.75·x0 + 0.25·ε = [1.625, −0.5]; v = ε − x0 = [−1.5, 2].
    Second item σ = 1: x_t = ε = [3, 4] (x0 = [1, 1]); v = [2, 3]."""
    clean = torch.tensor([[2.0, -1.0], [1.0, 1.0]])
    noise = torch.tensor([[0.5, 1.0], [3.0, 4.0]])
    noised = noised_latents(clean, noise, sigmas=torch.tensor([0.25, 1.0]))
    assert torch.equal(noised, torch.tensor([[1.625, -0.5], [3.0, 4.0]]))
    assert torch.equal(velocity_target(clean, noise), torch.tensor([[-1.5, 2.0], [2.0, 3.0]]))


def test_noising_broadcasts_one_sigma_per_video():
    """(B, C, F, H, W) latents with σ (B,): each item is mixed with its own σ; d x_t / dσ = ε − x0 = the target."""
    generator = torch.Generator().manual_seed(3)
    clean, noise = torch.randn(2, 4, 3, 2, 2, generator=generator), torch.randn(2, 4, 3, 2, 2, generator=generator)
    sigmas = torch.tensor([0.2, 0.7])
    noised = noised_latents(clean, noise, sigmas=sigmas)
    for item, sigma in enumerate(sigmas.tolist()):
        assert_close(noised[item], (1 - sigma) * clean[item] + sigma * noise[item])
    step = noised_latents(clean, noise, sigmas=sigmas + 0.1) - noised
    assert_close(step / 0.1, velocity_target(clean, noise), rtol=1e-4, atol=1e-4)


def test_scheduler_shift_is_read_from_the_checkpoint_config():
    """Wan's UniPC scheduler keeps it in flow_shift, FlowMatchEuler in shift; others are refused by name."""
    unipc = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    assert scheduler_shift(unipc.config) == 3.0
    assert scheduler_shift(FlowMatchEulerDiscreteScheduler(shift=7.0).config) == 7.0
    with pytest.raises(ConfigError, match="use_flow_sigmas is off"):
        scheduler_shift(UniPCMultistepScheduler().config)
    with pytest.raises(ConfigError, match="dynamic"):
        scheduler_shift(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config)
    with pytest.raises(ConfigError, match=r"no timestep shift \(no 'shift' or 'flow_shift' among \['beta_end'"):
        scheduler_shift({"beta_end": 0.02, "num_train_timesteps": 1000})


def test_unknown_density_is_refused():
    with pytest.raises(ValueError, match=r"unknown timestep density 'cosine'; use one of \['logit_normal', 'uniform'\]"):
        sample_sigmas(2, density="cosine", shift=1.0, logit_mean=0.0, logit_std=1.0, generator=torch.Generator())
    assert math.isclose(float(shift_sigmas(torch.tensor(0.5), 2.0)), 2 / 3, rel_tol=1e-6)
