"""The Wan policy over diffusers: LoRA on attention and FFN, CFG, reference policy, prompt cache, decoding;
and the LoRA round trip through the diffusers format."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanPipeline

from generator_rl.checkpoint import LORA_WEIGHTS, load_lora, save_lora
from generator_rl.config import PolicyConfig
from generator_rl.policy import VideoShape
from generator_rl.rollout import SdeSettings, sample_trajectory
from reward.errors import CheckpointError

from .conftest import PROMPTS


TINY_SHAPE = VideoShape(height=32, width=32, num_frames=9)


def tiny_policy_arguments(model) -> PolicyConfig:
    return PolicyConfig(
        model=str(model), transformer_dtype="float32", text_encoder_dtype="float32", lora_rank=4, lora_alpha=8,
        gradient_checkpointing=False, height=32, width=32, num_frames=9, num_steps=6, guidance_scale=3.0,
        max_sequence_length=16,
    )


def _perturb_lora(policy) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in policy.trainable_parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))


@pytest.fixture
def policy(tiny_wan_dir):
    return tiny_policy_arguments(tiny_wan_dir).load_policy(torch.device("cpu"))


def test_lora_covers_attention_and_ffn_and_only_lora_trains(policy):
    trainable = [name for name, parameter in policy.transformer.named_parameters() if parameter.requires_grad]
    assert trainable and all(".lora_" in name for name in trainable)
    for module in ("attn1.to_q", "attn1.to_out.0", "attn2.to_k", "ffn.net.0.proj", "ffn.net.2"):
        assert any(f"blocks.0.{module}.lora_A" in name for name in trainable), module
    assert all(parameter.dtype == torch.float32 for parameter in policy.trainable_parameters())


def test_guided_velocity_is_the_cfg_combination(policy):
    conditional, unconditional = policy.prompt_embeddings(PROMPTS[:2])
    latents = torch.randn(policy.latent_shape(2, TINY_SHAPE), generator=torch.Generator().manual_seed(0))
    cond = policy.velocity(latents, 500.0, conditional, unconditional, 1.0)
    uncond = policy.velocity(latents, 500.0, unconditional, unconditional, 1.0)
    torch.testing.assert_close(policy.velocity(latents, 500.0, conditional, unconditional, 3.0), uncond + 3.0 * (cond - uncond))


def test_reference_is_the_base_model(policy, tiny_wan_dir):
    """Adapters disabled = the checkpoint without LoRA, even after the LoRA has moved."""
    _perturb_lora(policy)
    base = WanPipeline.from_pretrained(str(tiny_wan_dir)).transformer
    conditional, unconditional = policy.prompt_embeddings(PROMPTS[:1])
    latents = torch.randn(policy.latent_shape(1, TINY_SHAPE), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = base(hidden_states=latents, timestep=torch.tensor([500.0]), encoder_hidden_states=conditional, return_dict=False)[0]
        tuned = policy.velocity(latents, 500.0, conditional, unconditional, 1.0)
        with policy.reference():
            reference = policy.velocity(latents, 500.0, conditional, unconditional, 1.0)
        after = policy.velocity(latents, 500.0, conditional, unconditional, 1.0)
    torch.testing.assert_close(reference, expected)
    assert (tuned - expected).abs().max() > 1e-3
    torch.testing.assert_close(after, tuned)


def test_refreshed_reference_follows_the_learner_then_stays_frozen(policy):
    conditional, unconditional = policy.prompt_embeddings(PROMPTS[:1])
    latents = torch.randn(policy.latent_shape(1, TINY_SHAPE), generator=torch.Generator().manual_seed(0))
    _perturb_lora(policy)
    policy.refresh_reference()
    with torch.no_grad():
        learner = policy.velocity(latents, 500.0, conditional, unconditional, 1.0)
        with policy.reference():
            reference = policy.velocity(latents, 500.0, conditional, unconditional, 1.0)
    torch.testing.assert_close(reference, learner)
    assert all(".reference." not in name for name, p in policy.transformer.named_parameters() if p.requires_grad)
    _perturb_lora(policy)
    with torch.no_grad(), policy.reference():
        torch.testing.assert_close(policy.velocity(latents, 500.0, conditional, unconditional, 1.0), reference)


def test_prompt_cache_survives_text_encoder_offload(policy):
    before, _ = policy.prompt_embeddings(PROMPTS[:2])
    policy.offload_text_encoder()
    after, negative = policy.prompt_embeddings(PROMPTS[:2])
    assert torch.equal(before, after) and negative.shape == after.shape
    with pytest.raises(RuntimeError, match="offloaded; 1 prompt"):
        policy.prompt_embeddings(["a prompt never cached"])


def test_decode_gives_frames_in_unit_range_for_reward_models(policy):
    shape = TINY_SHAPE
    frames = policy.decode(torch.randn(policy.latent_shape(2, shape)))
    assert frames.shape == (2, shape.num_frames, 3, shape.height, shape.width)
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    inputs = policy.as_reward_inputs(frames)
    assert len(inputs) == 2 and inputs[0].fps == 16.0


def test_bad_video_shapes_are_rejected(policy):
    with pytest.raises(ValueError, match="num_frames - 1 must be divisible by 4"):
        policy.latent_shape(1, VideoShape(32, 32, 10))
    with pytest.raises(ValueError, match="multiples of 16"):
        policy.latent_shape(1, VideoShape(40, 32, 9))


def test_lora_round_trip_through_the_diffusers_format(policy, tiny_wan_dir, tmp_path):
    """The saved adapter loads with WanPipeline.load_lora_weights; a pipeline with it reproduces the trained
    policy's sampling for the same seed, and differs from the base."""
    _perturb_lora(policy)
    save_lora(policy, tmp_path / "lora")
    assert (tmp_path / "lora" / LORA_WEIGHTS).is_file()
    arguments = tiny_policy_arguments(tiny_wan_dir)
    call = dict(prompt=PROMPTS[0], negative_prompt="", height=32, width=32, num_frames=9, num_inference_steps=4,
                guidance_scale=3.0, max_sequence_length=16, output_type="pt")
    base = WanPipeline.from_pretrained(str(tiny_wan_dir))
    loaded = WanPipeline.from_pretrained(str(tiny_wan_dir))
    loaded.load_lora_weights(str(tmp_path / "lora"))
    base_video = base(**call, generator=torch.Generator().manual_seed(3)).frames
    loaded_video = loaded(**call, generator=torch.Generator().manual_seed(3)).frames
    trained_video = policy.pipeline(**call, generator=torch.Generator().manual_seed(3)).frames
    torch.testing.assert_close(loaded_video, trained_video, rtol=1e-5, atol=1e-5)
    assert (loaded_video - base_video).abs().max() > 1e-3
    # and back into a fresh policy's learner adapter
    fresh = arguments.load_policy(torch.device("cpu"))
    load_lora(fresh, tmp_path / "lora")
    for (name, a), (_, b) in zip(sorted(policy.transformer.named_parameters()), sorted(fresh.transformer.named_parameters())):
        assert torch.equal(a, b), name


def test_loading_a_mismatched_lora_fails(policy, tiny_wan_dir, tmp_path):
    save_lora(policy, tmp_path / "lora")
    other = PolicyConfig(**{**tiny_policy_arguments(tiny_wan_dir).__dict__, "lora_target_modules": ["to_q"]})
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_lora(other.load_policy(torch.device("cpu")), tmp_path / "lora")
    with pytest.raises(CheckpointError, match="missing"):
        load_lora(policy, tmp_path / "nowhere")


def test_trajectory_log_probs_match_re_scoring(policy, tiny_wan_dir):
    """Sampling-time and training-time log-probs agree in fp32 (the basis of ratio == 1)."""
    from generator_rl.sde import sde_step

    arguments = tiny_policy_arguments(tiny_wan_dir)
    sigmas, timesteps = policy.schedule(arguments.num_steps)
    conditional, unconditional = policy.prompt_embeddings(PROMPTS[:2])
    velocity = lambda latents, index: policy.velocity(latents, timesteps[index], conditional, unconditional, 3.0)  # noqa: E731
    noise = torch.randn(policy.latent_shape(2, arguments.shape), generator=torch.Generator().manual_seed(0))
    trajectory = sample_trajectory(velocity, noise, sigmas, settings=SdeSettings(), stochastic=[0, 2, 4],
                                   generators=[torch.Generator().manual_seed(i) for i in range(2)])
    assert trajectory.steps == [0, 2, 4] and trajectory.states.shape[:2] == (2, 3)
    for position, step in enumerate(trajectory.steps):
        rescored = sde_step(velocity(trajectory.states[:, position], step), trajectory.states[:, position],
                            float(sigmas[step]), float(sigmas[step + 1]), sigma_max=float(sigmas[1]),
                            next_sample=trajectory.next_states[:, position])
        torch.testing.assert_close(rescored.log_prob, trajectory.log_probs[:, position], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="the last step is an ODE step"):
        sample_trajectory(velocity, noise, sigmas, settings=SdeSettings(), stochastic=[5], generators=[torch.Generator()] * 2)


def test_fused_export_is_a_plain_transformer_with_the_lora_inside(policy, tmp_path):
    from diffusers import WanTransformer3DModel

    from generator_rl.checkpoint import export_final

    _perturb_lora(policy)
    conditional, unconditional = policy.prompt_embeddings(PROMPTS[:1])
    latents = torch.randn(policy.latent_shape(1, TINY_SHAPE), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tuned = policy.velocity(latents, 500.0, conditional, unconditional, 1.0)
    final = export_final(policy, tmp_path, fused=True, job="tune-test", config={"run": {"seed": 0}})
    plain, info = WanTransformer3DModel.from_pretrained(final / "transformer_fused", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        fused = plain(hidden_states=latents, timestep=torch.tensor([500.0]), encoder_hidden_states=conditional, return_dict=False)[0]
    torch.testing.assert_close(fused, tuned, rtol=1e-4, atol=1e-4)


def test_sde_window_places_w_consecutive_stochastic_steps():
    settings = SdeSettings(window=2, window_range=(1, 5))
    starts = set()
    for seed in range(40):
        steps = settings.stochastic_steps(8, torch.Generator().manual_seed(seed))
        assert len(steps) == 2 and steps[1] == steps[0] + 1 and 1 <= steps[0] and steps[1] < 5
        starts.add(steps[0])
    assert starts == {1, 2, 3}
    assert SdeSettings().stochastic_steps(6, torch.Generator()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="does not fit"):
        SdeSettings(window=5, window_range=(0, 3)).stochastic_steps(8, torch.Generator())
