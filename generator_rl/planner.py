"""Step-cost planner: peak memory per GPU and time per step of a Wan GRPO / Flow-DPO recipe, before a GPU is rented.

The model is analytical (parameters, LoRA and optimizer states, activations per token and layer, matmul and
attention FLOPs, VAE decode) with a few constants fitted to the measured Wan-2.1 1.3B points of BENCHMARKS.md
(one H200, bf16, SDPA, 2026-11-26: ``benchmarks/gpu/results/wan_rl_steps_h200_2026-11-26.json``). Only those
points are measurements; every other GPU class is an extrapolation (time scaled by dense bf16 peak, the VAE by
memory bandwidth), and so is every number for the 14B model, FSDP or checkpointing turned off. The formulas and
their limits are in docs/generator_rl.md ("Planning a run: memory and time").

Nothing here imports torch, so these functions answer in milliseconds; the command is generator_rl/plan_job.py.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from reward.errors import ConfigError
from reward.gpu_classes import GIB, GPUS, Gpu, usable_gib

CALIBRATION_GPU = "h200"

# ----- constants fitted to the H200 1.3B points (33 and 81 frames, 480x832, batch 1, checkpointing on) ------
# Time = FLOPs / (bf16 peak x efficiency) + a fixed per-call overhead (kernel launches, SDE step, Python), fitted
# exactly through the two rollout-step points and the two GRPO train-step points; the Flow-DPO micro-steps are
# then predicted (within 2 %).
ROLLOUT_EFFICIENCY, ROLLOUT_OVERHEAD_S = 0.4183, 0.1208
TRAIN_EFFICIENCY, TRAIN_OVERHEAD_S = 0.4347, 0.3488
# Activation bytes per video token in units of one block's saved activations (``block_activation_bytes``): an
# inference forward keeps about one block's worth alive; a checkpointed backward keeps every block's input plus
# about two blocks' worth (the recomputed block and its gradients). Means of the two frame counts' fits
# (0.90 / 0.99 and 2.01 / 2.10).
INFERENCE_LIVE_BLOCKS = 0.94
BACKWARD_LIVE_BLOCKS = 2.05
# VAE decode: seconds per output pixel-frame (scaled by HBM bandwidth on other GPUs) and bytes held per output
# pixel of a frame while decoding (Wan's VAE decodes frame chunks, so this barely grows with frames).
VAE_SECONDS_PER_PIXEL_FRAME = 8.636e-8
VAE_BYTES_PER_PIXEL = 21_650.0
# diffusers' tiled decode of the Wan VAE: 256 px tiles every 192 px.
VAE_TILE, VAE_TILE_STRIDE = 256, 192
# Counted from diffusers' AutoencoderKLWan() (Wan-2.1's VAE); it runs in float32.
WAN_VAE_PARAMS = 126_892_531

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LORA_STATE_BYTES = 16  # fp32 weight + fp32 gradient + AdamW's two fp32 moments


@dataclass(frozen=True)
class WanArch:
    """The Wan transformer's shape (diffusers ``WanTransformer3DModel`` config keys)."""

    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    ffn_dim: int
    text_dim: int = 4096
    in_channels: int = 16
    out_channels: int = 16
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    cross_attn_norm: bool = True

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def block_params(self) -> int:
        d, f = self.width, self.ffn_dim
        attention = 2 * (4 * (d * d + d) + 2 * d)  # self + cross: q, k, v, out (+ bias) and q/k RMS norms
        return 6 * d + attention + (2 * d if self.cross_attn_norm else 0) + (d * f + f) + (f * d + d)

    def params(self) -> int:
        d, patch = self.width, math.prod(self.patch_size)
        embeddings = (d * self.in_channels * patch + d) + (d * self.freq_dim + d + d * d + d) + (6 * d * d + 6 * d)
        embeddings += (d * self.text_dim + d + d * d + d) + (self.out_channels * patch * d + self.out_channels * patch)
        return self.num_layers * self.block_params() + embeddings + 2 * d

    def lora_params(self, rank: int, targets: tuple[str, ...], *, on_text: bool | None = None) -> int:
        """LoRA parameters over all blocks for the kit's target names (attention in both attn1 and attn2);
        ``on_text`` True / False: only those applied to text tokens (cross-attention keys, values) / video tokens."""
        d, f = self.width, self.ffn_dim
        # name -> (fan in, fan out, sees text tokens) per block
        shapes = {"to_q": [(d, d, False)] * 2, "to_k": [(d, d, False), (d, d, True)],
                  "to_v": [(d, d, False), (d, d, True)], "to_out.0": [(d, d, False)] * 2,
                  "ffn.net.0.proj": [(d, f, False)], "ffn.net.2": [(f, d, False)]}
        unknown = sorted(set(targets) - set(shapes))
        if unknown:
            raise ConfigError(f"the planner knows the LoRA targets {sorted(shapes)}, not {unknown}")
        return self.num_layers * sum(rank * (n_in + n_out) for name in targets for n_in, n_out, text in shapes[name]
                                     if on_text is None or text == on_text)

    def block_activation_bytes(self, dtype_bytes: int) -> int:
        """Bytes one block saves for backward per video token: ~16 width-sized tensors (norms, q/k/v, attention
        and projection outputs, residuals, modulation) and two FFN-sized ones (GELU input and output)."""
        return dtype_bytes * (16 * self.width + 2 * self.ffn_dim)


# Hub checkpoints by name (no download): the diffusers configs of Wan-2.1 T2V.
WAN_HUB = {"1.3B": WanArch(30, 12, 128, 8960), "14B": WanArch(40, 40, 128, 13824)}
# UMT5-XXL encoder (Wan's text encoder): vocab, width, layers, heads x head dim, gated FFN width.
UMT5_XXL = dict(vocab_size=256_384, d_model=4096, num_layers=24, num_heads=64, d_kv=64, d_ff=10_240)


def wan_architecture(model: str) -> WanArch:
    """The transformer shape of a local diffusers folder (its ``transformer/config.json``) or a Wan-2.1 hub id."""
    config = Path(model) / "transformer" / "config.json"
    if config.is_file():
        values = json.loads(config.read_text())
        known = {name: values[name] for name in WanArch.__dataclass_fields__ if name in values}
        known["patch_size"] = tuple(known.get("patch_size", (1, 2, 2)))
        return WanArch(**known)
    for size, arch in WAN_HUB.items():
        if f"-{size}" in model:
            return arch
    raise ConfigError(f"model {model!r}: the planner reads a local diffusers folder's transformer/config.json or "
                      f"knows the Wan-2.1 hub ids with {' or '.join(WAN_HUB)} in their name")


def text_encoder_params(model: str) -> int:
    """UMT5 encoder parameters (embedding, attention, gated FFN, norms, per-layer relative position bias)."""
    config = Path(model) / "text_encoder" / "config.json"
    c = {**UMT5_XXL, **({k: v for k, v in json.loads(config.read_text()).items() if k in UMT5_XXL}
                        if config.is_file() else {})}
    inner = c["num_heads"] * c["d_kv"]
    layer = 4 * c["d_model"] * inner + 3 * c["d_model"] * c["d_ff"] + 2 * c["d_model"] + 32 * c["num_heads"]
    return c["vocab_size"] * c["d_model"] + c["num_layers"] * layer + c["d_model"]


@dataclass(frozen=True)
class Workload:
    """What one recipe asks of each GPU, independent of the memory/speed settings the planner varies."""

    algorithm: Literal["grpo", "flow-dpo"]
    arch: WanArch
    height: int
    width: int
    num_frames: int
    num_steps: int
    cfg: bool
    text_tokens: int
    lora_rank: int
    lora_targets: tuple[str, ...]
    transformer_dtype: str
    text_encoder_params: int
    text_encoder_dtype: str
    videos_per_step: int        # GRPO: prompts_per_step x group_size (all GPUs); Flow-DPO: samples_per_prompt
    trained_steps: int          # GRPO: timesteps trained per video; Flow-DPO: 1
    kl_reference: bool          # GRPO beta > 0; Flow-DPO always
    accumulation: int = 1       # Flow-DPO micro-steps per optimizer step
    reward_gib: float = 0.0     # reward models held on the same GPU (weights + a scoring batch)
    reward_notes: tuple[str, ...] = ()  # how each reward term was counted

    @property
    def tokens(self) -> int:
        pt, ph, pw = self.arch.patch_size
        latent_frames = (self.num_frames - 1) // 4 + 1
        return (latent_frames // pt) * (self.height // 8 // ph) * (self.width // 8 // pw)

    def forward_flops(self, videos: int = 1) -> float:
        """Matmul FLOPs of one transformer forward over ``videos`` videos: 2 x params x tokens for each linear
        layer and LoRA factor on the tokens it sees (cross-attention keys/values and the text embedder see the
        text), plus 4 T^2 d self-attention and 4 T L d cross-attention per layer. Norms, softmax and other
        elementwise work are left out (as in MFU)."""
        a, t, text = self.arch, self.tokens, self.text_tokens
        d, f, patch = a.width, a.ffn_dim, math.prod(a.patch_size)
        lora_token = a.lora_params(self.lora_rank, self.lora_targets, on_text=False)
        lora_text = a.lora_params(self.lora_rank, self.lora_targets, on_text=True)
        per_token = a.num_layers * (6 * d * d + 2 * d * f) + d * a.in_channels * patch + a.out_channels * patch * d
        per_token += lora_token
        per_text = a.num_layers * 2 * d * d + a.text_dim * d + d * d + lora_text
        per_video = a.freq_dim * d + d * d + 6 * d * d
        attention = a.num_layers * (4 * t * t * d + 4 * t * text * d)
        return videos * (2 * (t * per_token + text * per_text + per_video) + attention)


@dataclass(frozen=True)
class Settings:
    """The knobs the planner varies; each maps to a flag of ``descore tune grpo / flow-dpo``."""

    gradient_checkpointing: bool
    vae_tiling: bool
    vae_slicing: bool
    rollout_batch_size: int
    train_batch_size: int
    fsdp: bool = False

    def flags(self, algorithm: str) -> str:
        words = [f"--gradient_checkpointing {str(self.gradient_checkpointing).lower()}",
                 f"--vae_tiling {str(self.vae_tiling).lower()}", f"--vae_slicing {str(self.vae_slicing).lower()}",
                 f"--train_batch_size {self.train_batch_size}"]
        if algorithm == "grpo":
            words.insert(3, f"--rollout_batch_size {self.rollout_batch_size}")
        if self.fsdp:
            words.append("(launch: --config_file configs/accelerate/fsdp_wan_8gpu.yaml)")
        return " ".join(words)


@dataclass(frozen=True)
class Estimate:
    """Peak memory per GPU (GiB) by phase and seconds per step, for one workload, settings, GPU and GPU count."""

    settings: Settings
    peak_gib: dict[str, float]
    rollout_step_s: float       # one guided transformer call over a rollout batch (+ SDE step)
    decode_s: float             # VAE decode of one rollout batch
    train_micro_step_s: float   # one train micro-batch: forward(s), reference, backward
    optimizer_step_s: float     # GRPO: rollouts + decode + training; Flow-DPO: its micro-steps (pairs given)
    pair_sampling_s: float | None = None  # Flow-DPO: sampling + decoding one prompt's candidates

    @property
    def peak(self) -> float:
        return max(self.peak_gib.values())

    def dominant(self) -> str:
        return max(self.peak_gib, key=self.peak_gib.get)


def _resident_gib(work: Workload, shards: int) -> float:
    """Weights and trainable state held through the run: the frozen base (sharded by FSDP), fp32 LoRA with its
    gradient and AdamW moments (sharded too), the float32 VAE and the reward models on the same GPU."""
    base = work.arch.params() * DTYPE_BYTES[work.transformer_dtype]
    gathered = 2 * work.arch.block_params() * DTYPE_BYTES[work.transformer_dtype] if shards > 1 else 0
    lora = work.arch.lora_params(work.lora_rank, work.lora_targets) * LORA_STATE_BYTES
    return ((base + lora) / shards + gathered + WAN_VAE_PARAMS * 4) / GIB + work.reward_gib


def _vae_pixels(height: int, width: int, tiled: bool) -> tuple[int, int]:
    """(pixels decoded per frame, pixels held at once): tiles overlap, so tiling decodes more and holds less."""
    if not tiled:
        return height * width, height * width

    def covered(size: int) -> int:
        return sum(min(VAE_TILE, size - start) for start in range(0, size, VAE_TILE_STRIDE))

    return covered(height) * covered(width), min(VAE_TILE, height) * min(VAE_TILE, width)


def estimate(work: Workload, settings: Settings, *, gpu: Gpu, gpus: int = 1) -> Estimate:
    """Peak memory and step times of ``work`` under ``settings`` on ``gpus`` GPUs of class ``gpu``."""
    dtype = DTYPE_BYTES[work.transformer_dtype]
    shards = gpus if settings.fsdp else 1
    resident = _resident_gib(work, shards)
    block = work.arch.block_activation_bytes(dtype)
    guided = 2 if work.cfg else 1
    flops_per_s = gpu.bf16_tflops * 1e12
    tokens = work.tokens

    roll_videos = settings.rollout_batch_size if work.algorithm == "grpo" else work.videos_per_step
    rollout_act = INFERENCE_LIVE_BLOCKS * block * tokens * guided * roll_videos / GIB
    rollout_s = work.forward_flops(guided * roll_videos) / (flops_per_s * ROLLOUT_EFFICIENCY) + ROLLOUT_OVERHEAD_S

    decoded, held = _vae_pixels(work.height, work.width, settings.vae_tiling)
    at_once = 1 if settings.vae_slicing else roll_videos
    video_bytes = work.num_frames * 3 * work.height * work.width * 4 * roll_videos
    decode_gib = (VAE_BYTES_PER_PIXEL * held * at_once + video_bytes) / GIB
    bandwidth = GPUS[CALIBRATION_GPU].hbm_tb_per_s / gpu.hbm_tb_per_s
    decode_s = VAE_SECONDS_PER_PIXEL_FRAME * decoded * work.num_frames * roll_videos * bandwidth

    # GRPO trains one video under CFG (cond + uncond); Flow-DPO a winner and a loser, unguided.
    grad_videos = settings.train_batch_size * (guided if work.algorithm == "grpo" else 2)
    layers = work.arch.num_layers
    if settings.gradient_checkpointing:
        saved = layers * work.arch.width * dtype + BACKWARD_LIVE_BLOCKS * block
        passes = 4  # forward, recomputation, backward (2x)
    else:
        saved = (layers + BACKWARD_LIVE_BLOCKS - 1) * block
        passes = 3
    train_act = saved * tokens * grad_videos / GIB
    reference_act = INFERENCE_LIVE_BLOCKS * block * tokens * grad_videos / GIB if work.kl_reference else 0.0
    units = passes * grad_videos + (grad_videos if work.kl_reference else 0)
    train_s = work.forward_flops(units) / (flops_per_s * TRAIN_EFFICIENCY) + TRAIN_OVERHEAD_S

    text_encoder = work.text_encoder_params * DTYPE_BYTES[work.text_encoder_dtype] / GIB
    peak = {"prompt encoding (UMT5 resident)": resident + text_encoder, "rollout": resident + rollout_act,
            "VAE decode": resident + decode_gib, "training": resident + max(train_act, reference_act)}

    if work.algorithm == "grpo":
        videos = math.ceil(work.videos_per_step / gpus)
        batches = math.ceil(videos / settings.rollout_batch_size)
        micro = math.ceil(videos * work.trained_steps / settings.train_batch_size)
        step_s = batches * (work.num_steps * rollout_s + decode_s) + micro * train_s
        return Estimate(settings, peak, rollout_s, decode_s, train_s, step_s)
    return Estimate(settings, peak, rollout_s, decode_s, train_s, work.accumulation * train_s,
                    pair_sampling_s=work.num_steps * rollout_s + decode_s)


def candidate_settings(work: Workload, recipe: Settings, *, gpus: int) -> list[Settings]:
    """Every combination of the knobs around the recipe's own values (batch sizes 1, 2, 4, 8 that divide the
    per-GPU work; FSDP only with more than one GPU)."""
    videos = math.ceil(work.videos_per_step / gpus) if work.algorithm == "grpo" else 1
    rollout = sorted({recipe.rollout_batch_size, *(b for b in (1, 2, 4, 8) if videos % b == 0)})
    train = sorted({recipe.train_batch_size, 1, 2, 4})
    return [Settings(*combo) for combo in itertools.product(
        (True, False), (False, True), (False, True), rollout if work.algorithm == "grpo" else [recipe.rollout_batch_size],
        train, (False, True) if gpus > 1 else (False,))
        if not (combo[2] and (combo[3] if work.algorithm == "grpo" else work.videos_per_step) == 1)]


@dataclass(frozen=True)
class Plan:
    """The recipe's own estimate and the settings that fit, fastest first."""

    workload: Workload
    gpu: Gpu
    gpus: int
    recipe: Estimate
    fitting: list[Estimate] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return self.gpu.name == CALIBRATION_GPU


def make_plan(work: Workload, recipe: Settings, *, gpu: Gpu, gpus: int = 1) -> Plan:
    """Estimate the recipe as written and rank every candidate that fits by optimizer-step time; at equal time
    without FSDP first (its communication is not modelled), then by memory.

    Raises:
        ConfigError: nothing fits; the message names the phase and the term that dominate the smallest peak.
    """
    if gpus < 1:
        raise ConfigError(f"gpus must be >= 1, got {gpus}")
    estimates = [estimate(work, s, gpu=gpu, gpus=gpus) for s in candidate_settings(work, recipe, gpus=gpus)]
    ranked = sorted((e for e in estimates if e.peak <= usable_gib(gpu)),
                    key=lambda e: (e.optimizer_step_s, e.settings.fsdp, e.peak,
                                   e.settings.vae_tiling + e.settings.vae_slicing))
    # A knob that changes neither time nor memory (slicing when the decode is not the peak) adds a row of noise.
    fitting = [e for i, e in enumerate(ranked) if i == 0 or _outcome(e) != _outcome(ranked[i - 1])]
    if not fitting:
        best = min(estimates, key=lambda e: e.peak)
        raise ConfigError(
            f"no setting fits {gpus} x {gpu.name} ({usable_gib(gpu):.1f} GiB usable each): the smallest peak is "
            f"{best.peak:.1f} GiB, in {best.dominant()}, with {_resident_gib(work, gpus if best.settings.fsdp else 1):.1f} "
            f"GiB of weights, LoRA state and reward models; {_advice(work, best)}")
    return Plan(work, gpu, gpus, estimate(work, recipe, gpu=gpu, gpus=gpus), fitting)


def _outcome(e: Estimate) -> tuple[float, float]:
    return round(e.optimizer_step_s, 3), round(e.peak, 3)


def _advice(work: Workload, best: Estimate) -> str:
    hints = []
    if work.reward_gib:
        hints.append(f"the reward models take {work.reward_gib:.1f} GiB: serve them from other GPUs (descore reward "
                     "serve + a remote reward term)")
    if best.dominant().startswith("prompt encoding"):
        hints.append(f"UMT5 takes {work.text_encoder_params * DTYPE_BYTES[work.text_encoder_dtype] / GIB:.1f} GiB "
                     "while prompts are encoded")
    rest = "fewer frames or pixels, more GPUs (FSDP) or a GPU with more memory"
    return "; ".join([*hints, f"else {rest}" if hints else rest])
