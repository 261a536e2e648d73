"""Tests for generator_rl/sde.py against values worked out by hand (plain Python ``math``, float64).

Notation: x the current latent, v the velocity, σ → σ_next one step (dt = σ_next − σ < 0), a / η the noise
level, s the transition std. The scalar examples below all use σ = 0.8, σ_next = 0.6 (dt = −0.2), x = 1,
v = 2 unless a docstring says otherwise.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from generator_rl.sde import SdeKind, gaussian_kl, gaussian_log_prob, ode_step, sde_kind, sde_step, step_mean_std

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)  # 0.918939


def close(actual: torch.Tensor, expected, *, rtol: float = 1e-6, atol: float = 1e-6) -> None:
    """Compare a float32 result with a float64 expectation computed independently."""
    assert actual.dtype == torch.float32
    assert_close(actual.double(), torch.as_tensor(expected, dtype=torch.float64), rtol=rtol, atol=atol)


def scalar(value: float) -> torch.Tensor:
    return torch.tensor([[value]], dtype=torch.float32)


# --------------------------------------------------------------------------------------------------------
# ODE step
# --------------------------------------------------------------------------------------------------------


def test_ode_step_is_an_euler_step():
    """x + (σ_next − σ)·v with σ 0.8 → 0.6: [1, −2] + (−0.2)·[0.5, 4] = [0.9, −2.8]."""
    x = torch.tensor([[1.0, -2.0]])
    v = torch.tensor([[0.5, 4.0]])
    close(ode_step(v, x, 0.8, 0.6), [[0.9, -2.8]])


def test_ode_step_keeps_the_sample_dtype():
    """bf16 in → bf16 out (the maths runs in float32): 1 + (0 − 0.5)·2 = 0 exactly."""
    x = torch.ones(1, 3, dtype=torch.bfloat16)
    v = torch.full((1, 3), 2.0, dtype=torch.bfloat16)
    out = ode_step(v, x, 0.5, 0.0)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.float(), torch.zeros(1, 3))


# --------------------------------------------------------------------------------------------------------
# step_mean_std: flow_sde
# --------------------------------------------------------------------------------------------------------


def flow_sde_expected(x: float, v: float, sigma: float, sigma_next: float, a: float, sigma_max: float):
    dt = sigma_next - sigma
    sigma_t = a * math.sqrt(sigma / (1 - min(sigma, sigma_max)))
    mean = x * (1 + sigma_t**2 / (2 * sigma) * dt) + v * (1 + sigma_t**2 * (1 - sigma) / (2 * sigma)) * dt
    return mean, sigma_t * math.sqrt(-dt)


def test_flow_sde_mean_and_std_by_hand():
    """σ 0.8 → 0.6, a = 0.7, σ_max = 0.96 (not binding):

    σ_t = 0.7·√(0.8 / 0.2) = 1.4, σ_t² = 1.96;
    mean = x·(1 + 1.96/1.6·(−0.2)) + v·(1 + 1.96·0.2/1.6)·(−0.2) = 0.755·x − 0.249·v = 0.755 − 0.498 = 0.257;
    std = 1.4·√0.2 = 0.626099.
    """
    mean, std = step_mean_std(scalar(2.0), scalar(1.0), 0.8, 0.6, kind="flow_sde", noise_level=0.7, sigma_max=0.96)
    close(mean, [[0.257]])
    close(std, 0.626099, atol=1e-6)
    assert std.ndim == 0
    expected_mean, expected_std = flow_sde_expected(1.0, 2.0, 0.8, 0.6, 0.7, 0.96)
    close(mean, [[expected_mean]])
    close(std, expected_std)


def test_flow_sde_at_sigma_one_uses_sigma_max():
    """σ = 1 → 0.96 with σ_max = 0.96: 1 − min(1, 0.96) = 0.04, σ_t = 0.7·√(1/0.04) = 3.5, σ_t² = 12.25;
    mean = x·(1 + 12.25/2·(−0.04)) + v·(1 + 0)·(−0.04) = 0.755·x − 0.04·v; std = 3.5·√0.04 = 0.7.
    For x = [1, −1], v = [2, 0.5]: mean = [0.755 − 0.08, −0.755 − 0.02] = [0.675, −0.775].
    """
    x = torch.tensor([[1.0, -1.0]])
    v = torch.tensor([[2.0, 0.5]])
    mean, std = step_mean_std(v, x, 1.0, 0.96, kind="flow_sde", noise_level=0.7, sigma_max=0.96)
    close(mean, [[0.675, -0.775]])
    close(std, 0.7)


def test_flow_sde_first_sigma_just_below_one_is_also_capped():
    """σ = 0.999999 → 0.96, σ_max = 0.96: min(σ, σ_max) = 0.96, so σ_t = 0.7·√(0.999999/0.04) ≈ 3.4999983
    (uncapped it would be 0.7·√(0.999999/1e-6) ≈ 700). std = σ_t·√0.039999 ≈ 0.699991.
    """
    mean, std = step_mean_std(scalar(2.0), scalar(1.0), 0.999999, 0.96, kind="flow_sde", noise_level=0.7, sigma_max=0.96)
    expected_mean, expected_std = flow_sde_expected(1.0, 2.0, 0.999999, 0.96, 0.7, 0.96)
    close(mean, [[expected_mean]], rtol=1e-5)
    close(std, expected_std, rtol=1e-5)
    assert abs(std.item() - 0.699991) < 1e-6


# --------------------------------------------------------------------------------------------------------
# step_mean_std: flow_sde_wan (Flow-GRPO's Wan form)
# --------------------------------------------------------------------------------------------------------


def test_flow_sde_wan_by_hand():
    """σ 0.8 → 0.6, σ_max 0.96, σ_min 0: σ_t = 0 + 0.96·0.8 = 0.768, σ_t² = 0.589824;
    mean = x·(1 + 0.589824/1.6·(−0.2)) + v·(1 + 0.589824·0.2/1.6)·(−0.2) = 0.926272·x − 0.2147456·v
    = 0.926272 − 0.4294912 = 0.4967808; std = 0.768·√0.2 = 0.3434600. The noise level plays no part.
    """
    mean, std = step_mean_std(scalar(2.0), scalar(1.0), 0.8, 0.6, kind="flow_sde_wan", noise_level=None,
                              sigma_max=0.96, sigma_min=0.0)
    close(mean, [[0.4967808]])
    close(std, 0.3434600)


def flow_grpo_wan_step(x, v, noise, sigmas, index):
    """flow_grpo's Wan step (``flow_grpo/diffusers_patch/wan_pipeline_with_logprob.py::sde_step_with_logprob``),
    restated in float64 from its formula:

        σ = sigmas[i], σ_prev = sigmas[i + 1], dt = σ_prev − σ, σ_max = sigmas[1], σ_min = sigmas[−1]
        std_t = σ_min + (σ_max − σ_min)·σ
        μ = x·(1 + std_t²/(2σ)·dt) + v·(1 + std_t²·(1 − σ)/(2σ))·dt
        x_prev = μ + std_t·√(−dt)·ε
        log p = mean over non-batch dims of [−(x_prev − μ)²/(2·(std_t·√(−dt))²) − log(std_t·√(−dt)) − log √(2π)]
    """
    sigma, sigma_prev = sigmas[index], sigmas[index + 1]
    sigma_max, sigma_min = sigmas[1], sigmas[-1]
    dt = sigma_prev - sigma
    std_t = sigma_min + (sigma_max - sigma_min) * sigma
    mean = x * (1 + std_t**2 / (2 * sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    scale = std_t * torch.sqrt(-dt)
    prev = mean + scale * noise
    log_prob = (-((prev - mean) ** 2) / (2 * scale**2) - torch.log(scale) - torch.log(torch.sqrt(2 * torch.tensor(math.pi, dtype=torch.float64))))
    return prev, log_prob.mean(dim=tuple(range(1, prev.ndim))), mean, scale


@pytest.mark.parametrize(
    "sigmas",
    [
        [1.0, 0.9376, 0.8573, 0.7504, 0.6007, 0.3764, 0.0],  # Wan's UniPC flow schedule, 6 steps, shift 3
        [0.999, 0.9, 0.7, 0.4, 0.05],  # a schedule whose last sigma is not 0 (σ_min enters std_t)
    ],
    ids=["unipc-shift3", "sigma-min-0.05"],
)
def test_flow_sde_wan_matches_flow_grpos_wan_step(sigmas):
    """Every step but the last of a schedule, on (2, 3, 2, 4) video-shaped latents, σ = 1 included: sample, mean,
    std and log-prob equal flow_grpo's Wan step evaluated in float64 (formula in ``flow_grpo_wan_step``)."""
    generator = torch.Generator().manual_seed(4)
    schedule = torch.tensor(sigmas, dtype=torch.float64)
    for index in range(len(sigmas) - 2):
        x, v, noise = (torch.randn(2, 3, 2, 4, generator=generator, dtype=torch.float64) for _ in range(3))
        expected_sample, expected_log_prob, expected_mean, expected_std = flow_grpo_wan_step(x, v, noise, schedule, index)
        out = sde_step(v.float(), x.float(), sigmas[index], sigmas[index + 1], kind="flow_sde_wan", noise_level=None,
                       sigma_max=sigmas[1], sigma_min=sigmas[-1], noise=noise.float())
        close(out.mean, expected_mean, rtol=1e-5, atol=1e-5)
        close(out.std, expected_std)
        close(out.sample, expected_sample, rtol=1e-5, atol=1e-5)
        close(out.log_prob, expected_log_prob, rtol=1e-5, atol=1e-5)


def test_flow_sde_wan_has_less_noise_than_flow_sde_at_high_sigma():
    """On the 6-step shift-3 schedule: at σ = 0.8573 flow_sde's σ_t = 0.7·√(0.8573/0.1427) = 1.7158 against the Wan
    form's 0.9376·0.8573 = 0.8038 (2.1×); at σ = 0.6007, 0.7·√(0.6007/0.3993) = 0.8586 against 0.5632 (1.5×)."""
    for sigma, sigma_next, ratio in ((0.8573, 0.7504, 2.1346), (0.6007, 0.3764, 1.5244)):
        common = dict(sigma_max=0.9376, sigma_min=0.0)
        _, sd3 = step_mean_std(scalar(0.0), scalar(0.0), sigma, sigma_next, kind="flow_sde", noise_level=0.7, **common)
        _, wan = step_mean_std(scalar(0.0), scalar(0.0), sigma, sigma_next, kind="flow_sde_wan", noise_level=None, **common)
        assert (sd3 / wan).item() == pytest.approx(ratio, abs=1e-3)


# --------------------------------------------------------------------------------------------------------
# step_mean_std: cps and dance
# --------------------------------------------------------------------------------------------------------


def test_cps_mean_and_std_by_hand():
    """CPS, a = 0.5: std = 0.6·sin(π/4) = 0.424264; √(σ_next² − std²) = √(0.36 − 0.18) = 0.424264;
    x̂0 = 1 − 0.8·2 = −0.6, x̂1 = 1 + 0.2·2 = 1.4; mean = 0.4·(−0.6) + 0.424264·1.4 = 0.353970.
    """
    mean, std = step_mean_std(scalar(2.0), scalar(1.0), 0.8, 0.6, kind="cps", noise_level=0.5, sigma_max=0.96)
    close(std, 0.6 * math.sin(math.pi / 4))
    close(mean, [[0.4 * -0.6 + math.sqrt(0.36 - 0.18) * 1.4]])
    close(mean, [[0.353970]], atol=1e-6)


def test_cps_with_full_noise_drops_the_x1_term():
    """a = 1: std = σ_next·sin(π/2) = σ_next, so √(σ_next² − std²) = 0 and mean = (1 − σ_next)·x̂0 = 0.4·(−0.6) = −0.24."""
    mean, std = step_mean_std(scalar(2.0), scalar(1.0), 0.8, 0.6, kind="cps", noise_level=1.0, sigma_max=0.96)
    close(std, 0.6)
    close(mean, [[-0.24]])


def test_dance_mean_and_std_by_hand():
    """DanceGRPO, η = 0.3: std = 0.3·√0.2 = 0.134164; x̂0 = −0.6, score = −(1 − 0.2·(−0.6))/0.64 = −1.75;
    mean = 1 + (−0.2)·2 − ½·0.09·(−1.75)·(−0.2) = 1 − 0.4 − 0.01575 = 0.58425.
    """
    mean, std = step_mean_std(scalar(2.0), scalar(1.0), 0.8, 0.6, kind="dance", noise_level=0.3, sigma_max=0.96)
    close(std, 0.3 * math.sqrt(0.2))
    close(mean, [[0.58425]])


def dance_grpo_flux_step(x, v, noise, sigmas, index, eta):
    """DanceGRPO's step (``fastvideo/train_grpo_wan_2_1.py::flux_step`` with grpo and sde_solver on), restated in
    float64 in its own order of operations:

        dσ = σ_{i+1} − σ_i; μ = x + dσ·v; x̂0 = x − σ_i·v; std = η·√(σ_i − σ_{i+1})
        score = −(x − x̂0·(1 − σ_i))/σ_i²; μ ← μ + (−½·η²·score)·dσ
        x_next = μ + std·ε            (the noise is scaled by std ...)
        log p = mean over non-batch dims of [−(x_next − μ)²/(2·std²) − log std − log √(2π)]   (... and so is the density)
    """
    sigma, sigma_next = sigmas[index], sigmas[index + 1]
    dsigma = sigma_next - sigma
    mean = x + dsigma * v
    x0_hat = x - sigma * v
    std = eta * math.sqrt(sigma - sigma_next)
    score = -(x - x0_hat * (1 - sigma)) / sigma**2
    mean = mean + (-0.5 * eta**2 * score) * dsigma
    sample = mean + noise * std
    log_prob = -((sample - mean) ** 2) / (2 * std**2) - math.log(std) - LOG_SQRT_2PI
    return sample, log_prob.mean(dim=tuple(range(1, x.ndim))), mean, std


def test_dance_matches_dancegrpos_flux_step():
    """η = 0.3 on DanceGRPO's Wan schedule (linspace(1, 0, 7) shifted by 3: σ' = 3σ/(1 + 2σ)), every step but the
    last: sample, mean, std and log-prob equal DanceGRPO's step in float64 — one std for the noise and the density."""
    generator = torch.Generator().manual_seed(5)
    sigmas = [3 * s / (1 + 2 * s) for s in torch.linspace(1, 0, 7, dtype=torch.float64).tolist()]
    for index in range(len(sigmas) - 2):
        x, v, noise = (torch.randn(2, 3, 2, 4, generator=generator, dtype=torch.float64) for _ in range(3))
        expected = dance_grpo_flux_step(x, v, noise, sigmas, index, 0.3)
        out = sde_step(v.float(), x.float(), sigmas[index], sigmas[index + 1], kind="dance", noise_level=0.3,
                       sigma_max=sigmas[1], noise=noise.float())
        close(out.sample, expected[0], rtol=1e-5, atol=1e-5)
        close(out.log_prob, expected[1], rtol=1e-5, atol=1e-5)
        close(out.mean, expected[2], rtol=1e-5, atol=1e-5)
        close(out.std, expected[3])


def test_kinds_agree_with_independent_float64_formulas_on_random_tensors():
    """Every kind on a (2, 3, 4) batch against the docstring formulas evaluated in float64 torch."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    v = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    s, sn, a, smax = 0.7, 0.55, 0.6, 0.95
    dt = sn - s
    sigma_t = a * math.sqrt(s / (1 - min(s, smax)))
    x0, x1 = x - s * v, x + (1 - s) * v
    cps_std = sn * math.sin(a * math.pi / 2)
    expected = {
        "flow_sde": (x * (1 + sigma_t**2 / (2 * s) * dt) + v * (1 + sigma_t**2 * (1 - s) / (2 * s)) * dt,
                     sigma_t * math.sqrt(-dt)),
        "cps": ((1 - sn) * x0 + math.sqrt(sn**2 - cps_std**2) * x1, cps_std),
        "dance": (x + dt * v - 0.5 * a**2 * (-(x - (1 - s) * x0) / s**2) * dt, a * math.sqrt(-dt)),
    }
    for kind, (expected_mean, expected_std) in expected.items():
        mean, std = step_mean_std(v.float(), x.float(), s, sn, kind=kind, noise_level=a, sigma_max=smax)
        close(mean, expected_mean, rtol=1e-5, atol=1e-5)
        close(std, expected_std)


# --------------------------------------------------------------------------------------------------------
# step_mean_std: errors
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flow_sde", "flow_sde_wan", "cps", "dance"])
@pytest.mark.parametrize("sigma_next", [0.8, 0.9])
def test_step_must_lower_sigma(kind, sigma_next):
    with pytest.raises(ValueError, match="must lower sigma"):
        step_mean_std(scalar(1.0), scalar(1.0), 0.8, sigma_next, kind=kind, noise_level=0.7, sigma_max=0.96)


def test_flow_sde_is_undefined_at_sigma_next_zero():
    with pytest.raises(ValueError, match="sigma_next = 0"):
        step_mean_std(scalar(1.0), scalar(1.0), 0.2, 0.0, kind="flow_sde", noise_level=0.7, sigma_max=0.96)


def test_cps_has_zero_noise_at_sigma_next_zero():
    """std = 0·sin(aπ/2) = 0: no Gaussian, so no log-prob."""
    with pytest.raises(ValueError, match="zero noise"):
        step_mean_std(scalar(1.0), scalar(1.0), 0.2, 0.0, kind="cps", noise_level=0.7, sigma_max=0.96)


def test_unknown_kind_is_rejected():
    choices = r"\['flow_sde', 'flow_sde_wan', 'cps', 'dance'\]"
    with pytest.raises(ValueError, match=f"unknown SDE kind 'ddim'; use one of {choices}"):
        step_mean_std(scalar(1.0), scalar(1.0), 0.8, 0.6, kind="ddim", noise_level=0.7, sigma_max=0.96)
    with pytest.raises(ValueError, match=f"unknown SDE kind 'ddim'; use one of {choices}"):
        sde_kind("ddim")
    assert sde_kind("flow_sde_wan") is SdeKind.FLOW_SDE_WAN


@pytest.mark.parametrize("kind", ["flow_sde", "cps", "dance"])
def test_kinds_with_a_noise_level_need_one(kind):
    with pytest.raises(ValueError, match=f"the {kind} step needs a noise_level"):
        step_mean_std(scalar(1.0), scalar(1.0), 0.8, 0.6, kind=kind, noise_level=None, sigma_max=0.96)


# --------------------------------------------------------------------------------------------------------
# gaussian_log_prob
# --------------------------------------------------------------------------------------------------------


def test_gaussian_log_prob_by_hand():
    """s = 0.5, per-element term −(x−μ)²/(2·0.25) − log 0.5 − ½log 2π = −2(x−μ)² + 0.693147 − 0.918939.

    Item 0: x − μ = [1, 2] → mean of [−2, −8] = −5, total −5.225791.
    Item 1: x = μ → −0.225791.
    """
    sample = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    mean = torch.tensor([[0.0, 0.0], [3.0, -1.0]])
    log_prob = gaussian_log_prob(sample, mean, torch.tensor(0.5))
    constant = -math.log(0.5) - LOG_SQRT_2PI
    close(log_prob, [-5.0 + constant, constant])
    close(log_prob, [-5.225791, -0.225791], atol=1e-6)


def test_gaussian_log_prob_is_the_mean_per_element_normal_log_density():
    """Equals torch.distributions.Normal(μ, s).log_prob(x) (float64) averaged over all non-batch dims."""
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(3, 2, 4, 5, generator=generator, dtype=torch.float64)
    mean = torch.randn(3, 2, 4, 5, generator=generator, dtype=torch.float64)
    std = torch.tensor(0.37, dtype=torch.float64)
    expected = torch.distributions.Normal(mean, std).log_prob(sample).mean(dim=(1, 2, 3))
    log_prob = gaussian_log_prob(sample.float(), mean.float(), std.float())
    assert log_prob.shape == (3,)
    close(log_prob, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------------
# sde_step
# --------------------------------------------------------------------------------------------------------


def test_sde_step_with_noise_is_mean_plus_std_times_noise():
    """σ 0.8 → 0.6, flow_sde a = 0.7: mean 0.257, std 0.626099 (see above); noise 1.5 → sample
    0.257 + 0.939149 = 1.196149 and log_prob = −1.5²/2 − log 0.626099 − 0.918939 = −1.125 + 0.468246 − 0.918939
    = −1.575692."""
    out = sde_step(scalar(2.0), scalar(1.0), 0.8, 0.6, kind="flow_sde", noise_level=0.7, sigma_max=0.96,
                   noise=scalar(1.5))
    std = 1.4 * math.sqrt(0.2)
    close(out.mean, [[0.257]])
    close(out.std, std)
    close(out.sample, [[0.257 + std * 1.5]])
    close(out.log_prob, [-1.125 - math.log(std) - LOG_SQRT_2PI])
    close(out.log_prob, [-1.575692], atol=1e-6)
    close(out.log_prob, gaussian_log_prob(out.sample, out.mean, out.std))


@pytest.mark.parametrize("kind", ["flow_sde", "flow_sde_wan", "cps", "dance"])
def test_scoring_the_drawn_sample_reproduces_its_log_prob(kind):
    """Rollout (draw with noise) and training (score next_sample) give the same mean, std and log-prob."""
    generator = torch.Generator().manual_seed(2)
    x, v, noise = (torch.randn(2, 3, 4, generator=generator) for _ in range(3))
    drawn = sde_step(v, x, 0.7, 0.5, kind=kind, noise_level=0.6, sigma_max=0.95, noise=noise)
    scored = sde_step(v, x, 0.7, 0.5, kind=kind, noise_level=0.6, sigma_max=0.95, next_sample=drawn.sample)
    assert torch.equal(scored.sample, drawn.sample)
    assert torch.equal(scored.mean, drawn.mean)
    assert torch.equal(scored.std, drawn.std)
    assert torch.equal(scored.log_prob, drawn.log_prob)
    # standard-normal noise: the mean over elements of −noise²/2 − log s − ½log 2π
    expected = (-(noise.double() ** 2) / 2).flatten(1).mean(1) - math.log(drawn.std.item()) - LOG_SQRT_2PI
    close(drawn.log_prob, expected, rtol=1e-5, atol=1e-5)


def test_gradient_flows_through_the_mean_only_when_scoring():
    """One element, flow_sde, σ 0.8 → 0.6, a = 0.7: μ = 0.755·x − 0.249·v, s² = 1.96·0.2 = 0.392.
    log p = −(y − μ)²/(2s²) + const, so d log p / dv = (y − μ)/s² · dμ/dv = (y − μ)/0.392 · (−0.249).
    x = 1, v = 2, y = 0.5: μ = 0.257 → 0.243/0.392·(−0.249) = −0.154355 (−0.1543546).
    """
    v = scalar(2.0).requires_grad_()
    y = scalar(0.5).requires_grad_()
    out = sde_step(v, scalar(1.0), 0.8, 0.6, kind="flow_sde", noise_level=0.7, sigma_max=0.96, next_sample=y)
    out.log_prob.sum().backward()
    expected = (0.5 - 0.257) / 0.392 * -0.249
    assert abs(v.grad.item() - expected) < 1e-6
    assert abs(v.grad.item() - (-0.1543546)) < 1e-6
    assert y.grad is None  # the scored sample is detached


def test_gradient_of_a_drawn_sample_goes_through_the_mean_only():
    """Drawing with noise ε: y = μ + s·ε is detached, so d log p / dv = (s·ε)/s² · (−0.249) = ε/s · (−0.249).
    ε = 1.5, s = 0.626099: −0.596551. (Were y not detached, y − μ would not depend on v and the gradient
    would be 0.)"""
    v = scalar(2.0).requires_grad_()
    out = sde_step(v, scalar(1.0), 0.8, 0.6, kind="flow_sde", noise_level=0.7, sigma_max=0.96, noise=scalar(1.5))
    assert not out.sample.requires_grad
    out.log_prob.sum().backward()
    expected = 1.5 / (1.4 * math.sqrt(0.2)) * -0.249
    assert abs(v.grad.item() - expected) < 1e-5
    assert abs(v.grad.item() - (-0.596551)) < 1e-5


def test_sde_step_needs_noise_or_a_next_sample():
    with pytest.raises(ValueError, match="noise or a next_sample"):
        sde_step(scalar(2.0), scalar(1.0), 0.8, 0.6, kind="flow_sde", noise_level=0.7, sigma_max=0.96)


# --------------------------------------------------------------------------------------------------------
# gaussian_kl
# --------------------------------------------------------------------------------------------------------


def test_gaussian_kl_by_hand():
    """s = 0.5 (2s² = 0.5). Item 0: μ − μ_ref = [1, −1] → mean 1 / 0.5 = 2. Item 1: [0.5, 0] → 0.125/0.5 = 0.25.
    Item 2: equal means → 0."""
    mean = torch.tensor([[1.0, 2.0], [0.5, 3.0], [4.0, 5.0]])
    reference = torch.tensor([[0.0, 3.0], [0.0, 3.0], [4.0, 5.0]])
    close(gaussian_kl(mean, reference, torch.tensor(0.5)), [2.0, 0.25, 0.0])


def test_gaussian_kl_matches_torch_normal_kl():
    """Equals KL(Normal(μ, s) ‖ Normal(μ_ref, s)) from torch.distributions (float64), averaged over elements."""
    generator = torch.Generator().manual_seed(3)
    mean = torch.randn(4, 3, 5, generator=generator, dtype=torch.float64)
    reference = torch.randn(4, 3, 5, generator=generator, dtype=torch.float64)
    std = torch.tensor(0.8, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, std), torch.distributions.Normal(reference, std)
    ).mean(dim=(1, 2))
    close(gaussian_kl(mean.float(), reference.float(), std.float()), expected, rtol=1e-5, atol=1e-6)
