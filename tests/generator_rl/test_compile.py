"""Speed switches of the Wan policy: compiled transformer blocks give the eager samples, log-probs and LoRA
gradients and stop recompiling after warm-up; a pinned SDPA backend gives the default output; unknown names
are refused.

Compiling on this CPU (inductor writes and builds C++ kernels with gcc) takes one to two minutes per graph,
so the compile tests are slow and share one compiled policy."""

from __future__ import annotations

import math

import pytest
import torch

from generator_rl.config import PolicyConfig
from generator_rl.grpo import GrpoConfig, run_grpo
from generator_rl.policy import compiled_graphs
from generator_rl.rollout import SdeSettings, ode_sample, sample_trajectory
from generator_rl.sde import sde_step
from reward.errors import ConfigError

from ..wandb_records import history_rows
from .conftest import PROMPTS
from .helpers import tiny_arguments

# Compiled (or math-kernel) vs eager in float32: fused and reordered float sums differ by rounding only.
# Measured on the tiny Wan: ODE samples (values up to 4.4) by 2.7e-6 compiled and 6.2e-6 with the math kernel
# after 3 steps, SDE log-probs by at most 1.2e-7.
ATOL = 1e-5


def tiny_policy(model, **switches) -> PolicyConfig:
    settings = dict(
        model=str(model), transformer_dtype="float32", text_encoder_dtype="float32", lora_rank=4, lora_alpha=8,
        gradient_checkpointing=False, height=32, width=32, num_frames=9, num_steps=3, guidance_scale=3.0,
        max_sequence_length=16,
    )
    return PolicyConfig(**settings | switches)


def _perturbed(policy):
    """The same non-zero LoRA in every policy, so the LoRA path is traced with weights that matter."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in policy.trainable_parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return policy


def _velocity(policy, arguments: PolicyConfig):
    _, timesteps = policy.schedule(arguments.num_steps)
    conditional, unconditional = policy.prompt_embeddings(PROMPTS[:1])
    return lambda latents, index: policy.velocity(latents, timesteps[index], conditional, unconditional, 3.0)


def _samples(policy, arguments: PolicyConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ODE sample, SDE trajectory log-probs, log-probs re-scored step by step) on fixed noise."""
    sigmas, _ = policy.schedule(arguments.num_steps)
    velocity = _velocity(policy, arguments)
    noise = torch.randn(policy.latent_shape(1, arguments.shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ode = ode_sample(velocity, noise, sigmas)
        trajectory = sample_trajectory(velocity, noise, sigmas, settings=SdeSettings(), stochastic=[0, 1],
                                       generators=[torch.Generator().manual_seed(i) for i in range(1)])
    return ode, trajectory.log_probs, trajectory


@pytest.fixture(scope="module")
def eager(tiny_wan_dir):
    return _perturbed(tiny_policy(tiny_wan_dir).load_policy(torch.device("cpu")))


@pytest.fixture(scope="module")
def compiled(tiny_wan_dir):
    return _perturbed(tiny_policy(tiny_wan_dir, compile_transformer=True).load_policy(torch.device("cpu")))


# ----- attention backend (default run) ---------------------------------------------------------------


def test_math_attention_gives_the_default_output(tiny_wan_dir, eager):
    pinned = _perturbed(tiny_policy(tiny_wan_dir, attention_backend="math").load_policy(torch.device("cpu")))
    assert pinned.attention == "math"
    conditional, unconditional = eager.prompt_embeddings(PROMPTS[:1])
    latents = torch.randn(eager.latent_shape(1, tiny_policy(tiny_wan_dir).shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        default = eager.velocity(latents, 500.0, conditional, unconditional, 3.0)
        math_kernel = pinned.velocity(latents, 500.0, conditional, unconditional, 3.0)
    torch.testing.assert_close(math_kernel, default, rtol=0, atol=ATOL)


def _lora_gradients(policy, arguments: PolicyConfig) -> list[torch.Tensor]:
    latents = torch.randn(policy.latent_shape(1, arguments.shape), generator=torch.Generator().manual_seed(0))
    _velocity(policy, arguments)(latents, 1).square().mean().backward()
    gradients = [parameter.grad.clone() for parameter in policy.trainable_parameters()]
    policy.transformer.zero_grad(set_to_none=True)
    return gradients


def test_a_pinned_kernel_also_runs_the_recomputation_of_activation_checkpointing(tiny_wan_dir):
    """Checkpointing recomputes each block in backward; the pin must hold there too, or PyTorch's own choice
    (flash on this CPU) recomputes different values and checkpointing refuses them."""
    arguments = tiny_policy(tiny_wan_dir, attention_backend="math", gradient_checkpointing=True)
    pinned = _perturbed(arguments.load_policy(torch.device("cpu")))
    assert pinned.transformer.is_gradient_checkpointing
    plain = _perturbed(tiny_policy(tiny_wan_dir).load_policy(torch.device("cpu")))
    for checkpointed, reference in zip(_lora_gradients(pinned, arguments), _lora_gradients(plain, arguments)):
        torch.testing.assert_close(checkpointed, reference, rtol=1e-4, atol=1e-6)
    pinned.set_attention(None)  # unpinned again: the default kernel, as in a policy that never pinned one
    assert pinned.attention is None and _lora_gradients(pinned, arguments)


def test_a_pinned_backend_that_cannot_run_fails_instead_of_falling_back(tiny_wan_dir):
    """Memory-efficient attention has no CPU kernel: pinning it fails instead of silently using another."""
    pinned = tiny_policy(tiny_wan_dir, attention_backend="EFFICIENT_ATTENTION").load_policy(torch.device("cpu"))
    conditional, unconditional = pinned.prompt_embeddings(PROMPTS[:1])
    latents = torch.zeros(pinned.latent_shape(1, tiny_policy(tiny_wan_dir).shape))
    with torch.no_grad(), pytest.raises(RuntimeError, match="No viable backend"):
        pinned.velocity(latents, 500.0, conditional, unconditional, 1.0)
    # The pin is this policy's only: a policy loaded afterwards still lets PyTorch choose.
    unpinned = tiny_policy(tiny_wan_dir).load_policy(torch.device("cpu"))
    with torch.no_grad():
        assert torch.isfinite(unpinned.velocity(latents, 500.0, conditional, unconditional, 1.0)).all()


def test_backend_names_are_case_insensitive_and_an_unknown_one_is_refused(tiny_wan_dir):
    assert tiny_policy(tiny_wan_dir, attention_backend="MATH").attention_backend == "math"
    with pytest.raises(ConfigError, match=r"attention_backend 'flash3' is not one of math, flash_attention, "
                                          r"efficient_attention, cudnn_attention$"):
        tiny_policy(tiny_wan_dir, attention_backend="flash3")


# ----- compiled blocks -------------------------------------------------------------------------------


def test_the_compile_counter_sees_each_new_shape():
    """What ``WanPolicy.recompiles`` counts: one compilation per new static shape, none for a repeated one
    (dynamo's eager backend, so no C++ build)."""
    layer = torch.nn.Linear(4, 4)
    layer.compile(backend="eager", fullgraph=True, dynamic=False)
    before = compiled_graphs()
    with torch.no_grad():
        layer(torch.zeros(2, 4))
        layer(torch.ones(2, 4))
        assert compiled_graphs() == before + 1
        layer(torch.zeros(3, 4))
    assert compiled_graphs() == before + 2



@pytest.mark.slow
def test_compiled_blocks_give_the_eager_samples_and_log_probs(tiny_wan_dir, eager, compiled):
    assert all(block._compiled_call_impl is not None for block in compiled.transformer.blocks)
    arguments = tiny_policy(tiny_wan_dir)
    eager_ode, eager_log_probs, _ = _samples(eager, arguments)
    compiled_ode, compiled_log_probs, trajectory = _samples(compiled, arguments)
    torch.testing.assert_close(compiled_ode, eager_ode, rtol=0, atol=ATOL)
    torch.testing.assert_close(compiled_log_probs, eager_log_probs, rtol=0, atol=ATOL)
    # Re-scoring a recorded transition with gradients on (the training path) gives the sampling log-prob.
    sigmas, _ = compiled.schedule(arguments.num_steps)
    velocity = _velocity(compiled, arguments)
    rescored = sde_step(velocity(trajectory.states[:, 1], 1), trajectory.states[:, 1], float(sigmas[1]),
                        float(sigmas[2]), sigma_max=float(sigmas[1]), next_sample=trajectory.next_states[:, 1])
    torch.testing.assert_close(rescored.log_prob.detach(), trajectory.log_probs[:, 1], rtol=0, atol=ATOL)
    rescored.log_prob.sum().backward()
    gradients = [parameter.grad for parameter in compiled.trainable_parameters()]
    assert all(gradient is not None for gradient in gradients)
    assert sum(float(gradient.abs().sum()) for gradient in gradients) > 0
    # Warm-up recompiled twice (TORCH_LOGS=recompiles): gradients on, then the blocks after the first, whose
    # input carries the LoRA's gradient. The same calls again compile nothing.
    warm = compiled.recompiles
    _samples(compiled, arguments)
    velocity(trajectory.states[:, 0], 0).square().mean().backward()
    assert compiled.recompiles == warm


@pytest.mark.slow
def test_grpo_runs_on_policy_with_compiled_blocks(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    """Rollout and training micro-batches of one shape: after the first step, nothing recompiles."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run",
                                      compile_transformer="true", num_steps=3, max_steps=3, save_steps=3,
                                      group_size=2, prompts_per_step=1, rollout_batch_size=1, train_batch_size=1,
                                      report_to="wandb"))
    assert result.first_ratio == pytest.approx(1.0, abs=1e-5)
    assert all(math.isfinite(value) for value in result.reward_history)
    [path] = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    recompiles = [row["perf/recompiles"] for row in history_rows(path) if "perf/recompiles" in row]
    assert len(recompiles) == 3 and recompiles[0] <= 2 and len(set(recompiles)) == 1
