"""The Wan-2.1 policy: diffusers ``WanPipeline`` components, LoRA on attention and FFN, a reference policy.

* Components load from a local directory or a hub id with a dtype each; the VAE stays float32 (diffusers'
  recommendation for Wan), the transformer and text encoder default to bf16 on GPU.
* Precision: the LoRA weights (learner and reference adapters) are float32 whatever the transformer's dtype;
  the frozen base keeps its load dtype and the forward runs under accelerate's autocast. AdamW keeps no
  float32 master copy, so a bf16 LoRA would round small updates away (bf16 resolves about 3 significant
  digits: a 1e-5 step on a weight of 0.2 is lost).
* LoRA (peft, through diffusers' ``add_adapter``) targets the attention projections of ``attn1`` (self) and
  ``attn2`` (cross) **and** the FFN (flow_grpo's Wan script leaves the FFN out; users asked for it).
* The reference policy is the same transformer with adapters disabled (``reference()``), or, for online
  Flow-DPO, a frozen float32 copy of the learner LoRA weights (``refresh_reference``) that stands in for the
  learner's during reference forwards (``torch.func.functional_call``). One adapter only: a second peft adapter
  would be injected next to the first, which peft warns about, and peft's ``set_adapter`` would make it
  trainable.
* Prompt embeddings are computed once and cached; ``offload_text_encoder`` then frees its memory.
* ``velocity`` applies classifier-free guidance as Wan's pipeline does: v = v_u + w·(v_c − v_u), with the
  conditional and unconditional halves in one batched forward.
* ``decode`` returns frames in [0, 1] (B, T, 3, H, W) that go to reward models in memory, at Wan's 16 fps.
* Speed switches: ``compile_transformer_blocks`` compiles each repeated transformer block (regional
  compilation: one graph serves every block, so compiling costs one block, not the whole model) with static shapes,
  after LoRA injection so the adapters are traced into the graph; ``set_attention`` pins the
  scaled-dot-product attention kernel of every attention call (None: PyTorch chooses per call). The pin lives in
  the attention modules (diffusers' per-module attention backend), not in a context around the forward, so the
  recomputation of activation checkpointing in backward runs the same kernel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import WanPipeline
from diffusers.training_utils import cast_training_params
from peft import LoraConfig

from reward import VideoFrames

WAN_FPS = 16.0
LEARNER = "default"
# SDPA kernels one can pin (torch.nn.attention.SDPBackend names, lower-case) and the diffusers attention backend
# that calls scaled_dot_product_attention under that kernel alone, inside each attention call.
ATTENTION_BACKENDS = {
    "math": "_native_math",
    "flash_attention": "_native_flash",
    "efficient_attention": "_native_efficient",
    "cudnn_attention": "_native_cudnn",
}


def attention_backend(name: str) -> str:
    """The canonical (lower-case) name of the SDPA kernel ``name``; a ValueError lists the valid names."""
    if name.lower() not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend {name!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
    return name.lower()


def compiled_graphs() -> int:
    """Graphs torch.compile has captured in this process so far (whole-graph compiles: one per compilation).
    A compiled block is compiled again for each new input shape or dtype; the count growing during training
    means it keeps recompiling."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def compile_transformer_blocks(transformer: torch.nn.Module) -> int:
    """Compile the transformer's repeated blocks in place (diffusers' regional compilation), whole-graph and
    with static shapes; call it after LoRA injection. Returns ``compiled_graphs()`` before the first compile,
    the baseline of ``WanPolicy.recompiles``."""
    transformer.compile_repeated_blocks(fullgraph=True, dynamic=False)
    return compiled_graphs()


@dataclass(frozen=True)
class LoraSpec:
    """LoRA on the Wan transformer. Defaults: flow_grpo's rank 32 / alpha 64, attention and FFN."""

    rank: int = 32
    alpha: int = 64
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")
    init: str = "gaussian"

    def peft_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.rank, lora_alpha=self.alpha, target_modules=list(self.target_modules), init_lora_weights=self.init
        )


def component_dtypes(transformer: torch.dtype, text_encoder: torch.dtype) -> dict[str, torch.dtype]:
    """Per-component load dtypes; the VAE stays float32 (diffusers' recommendation for Wan)."""
    return {"transformer": transformer, "text_encoder": text_encoder, "vae": torch.float32, "default": transformer}


@dataclass(frozen=True)
class VideoShape:
    height: int = 480
    width: int = 832
    num_frames: int = 81


@dataclass
class WanPolicy:
    """A Wan pipeline with a trainable LoRA on its transformer and cached prompt embeddings."""

    pipeline: WanPipeline
    device: torch.device
    max_sequence_length: int = 512
    negative_prompt: str = ""
    # What `velocity` calls: the transformer, or its distributed wrapper once accelerate has prepared it.
    runner: torch.nn.Module | None = field(default=None, repr=False)
    # Online Flow-DPO's frozen reference: learner parameter name -> float32 copy; None: the base model.
    reference_lora: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    # The SDPA kernel pinned in every attention call (see ``set_attention``); None: PyTorch's own choice per call.
    attention: str | None = None
    # compiled_graphs() when the blocks were compiled; None: the transformer runs eagerly.
    compile_baseline: int | None = None
    _in_reference: bool = field(default=False, repr=False)
    _embeddings: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _schedules: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        *,
        device: str | torch.device = "cpu",
        transformer_dtype: torch.dtype = torch.float32,
        text_encoder_dtype: torch.dtype = torch.float32,
        lora: LoraSpec | None = None,
        max_sequence_length: int = 512,
        vae_tiling: bool = False,
        vae_slicing: bool = False,
        compile_transformer: bool = False,
        attention: str | None = None,
    ) -> WanPolicy:
        pipeline = WanPipeline.from_pretrained(str(model), dtype=component_dtypes(transformer_dtype, text_encoder_dtype))
        if vae_tiling:
            pipeline.vae.enable_tiling()
        if vae_slicing:
            pipeline.vae.enable_slicing()
        pipeline.to(device)
        pipeline.set_progress_bar_config(disable=True)
        pipeline.transformer.requires_grad_(False)
        pipeline.text_encoder.requires_grad_(False)
        pipeline.vae.requires_grad_(False)
        policy = cls(pipeline, torch.device(device), max_sequence_length)
        if attention is not None:
            policy.set_attention(attention)
        if lora is not None:
            pipeline.transformer.add_adapter(lora.peft_config(), adapter_name=LEARNER)
            # Trainable LoRA weights in float32 even when the frozen base is bf16 (AdamW on bf16 loses updates).
            cast_training_params(pipeline.transformer, dtype=torch.float32)
        if compile_transformer:
            policy.compile_baseline = compile_transformer_blocks(pipeline.transformer)
        return policy

    def set_attention(self, name: str | None) -> None:
        """Pin the SDPA kernel ``name`` (a key of :data:`ATTENTION_BACKENDS`) in every attention module; a kernel
        that cannot run raises instead of falling back to another. None: unpinned again (PyTorch chooses)."""
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        if name is None and self.attention is None:
            return
        # diffusers also makes the backend the process-wide default of every attention module without one of its
        # own (another policy, the reference copy of a test); only this transformer's modules are meant.
        process_default, _ = _AttentionBackendRegistry.get_active_backend()
        try:
            self.transformer.set_attention_backend("native" if name is None else ATTENTION_BACKENDS[attention_backend(name)])
        finally:
            _AttentionBackendRegistry.set_active_backend(process_default)
        self.attention = None if name is None else attention_backend(name)

    @property
    def recompiles(self) -> int:
        """Compilations beyond the first since the blocks were compiled (0 when eager). Training adds two (with
        gradients: the first block, whose input needs none, and the later ones, whose input carries the LoRA's
        gradient), each new input shape more; then the count stays put while shapes repeat."""
        if self.compile_baseline is None:
            return 0
        return max(0, compiled_graphs() - self.compile_baseline - 1)

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipeline.transformer

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.named_trainable_parameters().values())

    def named_trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The learner LoRA weights by name, in module order (float32: see ``from_pretrained``)."""
        return {name: parameter for name, parameter in self.transformer.named_parameters() if parameter.requires_grad}

    # ----- prompts -------------------------------------------------------------------------------------

    @torch.no_grad()
    def cache_prompts(self, prompts: Sequence[str]) -> None:
        """Encode every distinct prompt (and the negative prompt) once."""
        missing = [prompt for prompt in dict.fromkeys([*prompts, self.negative_prompt]) if prompt not in self._embeddings]
        if not missing:
            return
        if self.pipeline.text_encoder is None:
            raise RuntimeError(f"the text encoder was offloaded; {len(missing)} prompt(s) were never cached")
        embeds, _ = self.pipeline.encode_prompt(
            missing,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
            device=self.device,
            dtype=self.transformer.dtype,
        )
        self._embeddings.update(zip(missing, embeds))

    def offload_text_encoder(self) -> None:
        """Drop the text encoder once every prompt is cached (UMT5-XXL is ~11 GB in bf16)."""
        self.pipeline.text_encoder = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def prompt_embeddings(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditional, unconditional) embeddings, each (B, L, D)."""
        self.cache_prompts(prompts)
        conditional = torch.stack([self._embeddings[prompt] for prompt in prompts])
        unconditional = self._embeddings[self.negative_prompt].expand_as(conditional)
        return conditional, unconditional

    # ----- denoising -----------------------------------------------------------------------------------

    def latent_shape(self, batch: int, shape: VideoShape) -> tuple[int, ...]:
        pipe = self.pipeline
        if (shape.num_frames - 1) % pipe.vae_scale_factor_temporal:
            raise ValueError(f"num_frames - 1 must be divisible by {pipe.vae_scale_factor_temporal}, got {shape.num_frames}")
        multiple = pipe.vae_scale_factor_spatial * self.transformer.config.patch_size[1]
        if shape.height % multiple or shape.width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple}, got {shape.height}x{shape.width}")
        return (
            batch,
            self.transformer.config.in_channels,
            (shape.num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
            shape.height // pipe.vae_scale_factor_spatial,
            shape.width // pipe.vae_scale_factor_spatial,
        )

    def schedule(self, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmas (num_steps + 1,) ending at 0, transformer timesteps (num_steps,)) from the checkpoint's scheduler."""
        if num_steps in self._schedules:
            return self._schedules[num_steps]
        scheduler = self.pipeline.scheduler
        scheduler.set_timesteps(num_steps, device="cpu")
        sigmas = scheduler.sigmas.float().cpu()
        if len(sigmas) != num_steps + 1 or sigmas[-1] != 0:
            raise ValueError(f"{type(scheduler).__name__} gave sigmas {sigmas.tolist()}; expected {num_steps} steps ending at 0")
        self._schedules[num_steps] = (sigmas, scheduler.timesteps.cpu())
        return self._schedules[num_steps]

    def velocity(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | float,
        conditional: torch.Tensor,
        unconditional: torch.Tensor,
        guidance_scale: float,
    ) -> torch.Tensor:
        """The (guided) velocity in float32. ``timestep`` is on the transformer's 0–1000 scale."""
        batch = latents.shape[0]
        dtype = self.transformer.dtype
        guided = guidance_scale > 1.0
        hidden = torch.cat([latents, latents]) if guided else latents
        text = torch.cat([conditional, unconditional]) if guided else conditional
        steps = torch.as_tensor(timestep, device=latents.device).float().expand(hidden.shape[0])
        inputs = dict(hidden_states=hidden.to(dtype), timestep=steps, encoder_hidden_states=text.to(dtype),
                      return_dict=False)
        if self._in_reference:
            # The frozen copy replaces the learner's LoRA tensors for this call only; nothing is trained
            # through it, so the bare transformer runs (no DDP wrapper, whose forward prepares a gradient sync).
            output = torch.func.functional_call(self.transformer, self.reference_lora, args=(), kwargs=inputs)[0]
        else:
            output = (self.runner if self.runner is not None else self.transformer)(**inputs)[0]
        output = output.float()
        if not guided:
            return output
        cond, uncond = output[:batch], output[batch:]
        return uncond + guidance_scale * (cond - uncond)

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Run the reference policy: the frozen LoRA copy if ``refresh_reference`` made one, else the base
        (adapters off)."""
        if self.reference_lora is not None:
            self._in_reference = True
            try:
                yield
            finally:
                self._in_reference = False
            return
        transformer = self.transformer
        transformer.disable_adapters()
        try:
            yield
        finally:
            transformer.enable_adapters()

    def refresh_reference(self) -> None:
        """Freeze a copy of the learner LoRA weights as the reference — online Flow-DPO. float32 like the
        learner, so the copy is exact on a bf16 transformer too."""
        self.reference_lora = {
            name: parameter.detach().clone() for name, parameter in self.named_trainable_parameters().items()
        }

    # ----- decoding ------------------------------------------------------------------------------------

    def _latent_statistics(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel latent mean and std, shaped (1, C, 1, 1, 1): Wan's transformer works on
        (z − mean) / std."""
        config = self.pipeline.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(device)
        std = torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(device)
        return mean, std

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, T, 3, H, W) in [0, 1] → clean latents (B, C, F, H/8, W/8), float32: the inverse of
        ``decode``. Deterministic: the mode (= mean) of the VAE's latent distribution, as diffusers' Wan
        pipelines take it for conditioning latents (``retrieve_latents(..., sample_mode="argmax")``)."""
        vae = self.pipeline.vae
        video = (frames.to(self.device, torch.float32) * 2 - 1).permute(0, 2, 1, 3, 4)  # (B, 3, T, H, W) in [-1, 1]
        latents = vae.encode(video.to(vae.dtype)).latent_dist.mode().float()
        mean, std = self._latent_statistics(latents.device)
        return (latents - mean) / std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → frames (B, T, 3, H, W) in [0, 1], float32, decoded by the float32 VAE."""
        vae = self.pipeline.vae
        mean, std = self._latent_statistics(latents.device)
        video = vae.decode((latents.float() * std + mean).to(vae.dtype), return_dict=False)[0]
        return self.pipeline.video_processor.postprocess_video(video, output_type="pt").float()

    @staticmethod
    def as_reward_inputs(frames: torch.Tensor) -> list[VideoFrames]:
        """Decoded frames handed to reward models in memory, at Wan's 16 fps (no mp4 round trip)."""
        return [VideoFrames(video.cpu(), fps=WAN_FPS, name=f"<rollout {index}>") for index, video in enumerate(frames)]
