"""GRPO and Flow-DPO step costs for Wan-2.1 T2V 1.3B at 480×832 (33 and 81 frames), random-init weights.

Why random weights: no checkpoint is reachable from the lent GPU machines; speed and memory do not depend on
the values. The transformer is ``WanTransformer3DModel`` with the 1.3B configuration (30 layers, 12 heads × 128,
FFN 8960, text dim 4096), the VAE ``AutoencoderKLWan`` with its default (real) configuration; prompt embeddings
are random (512 × 4096) because UMT5-XXL is only used once per prompt and then dropped. The policy is the kit's
own ``WanPolicy`` (LoRA r32/α64 on attention and FFN, bf16 base, float32 LoRA, activation checkpointing).

Measured units (median of ``--repeats`` after one warm-up), each at 33 and 81 frames:

* rollout step — one guided velocity (CFG: conditional + unconditional in one batch) and one flow-SDE step for
  one video, no gradient;
* GRPO train step — one video, one denoising step: guided velocity with gradient, log-prob, PPO-clip loss,
  reference velocity (adapters off) for the KL, backward;
* Flow-DPO micro-step — one pair: winner and loser velocities with gradient (no CFG), the same two with the
  reference, DPO loss, backward;
* VAE decode of one video.

From them, a full GRPO optimizer step of the Wan recipe is estimated (per GPU: ``--videos`` videos × 20
sampling steps + decode + 19 trained steps each); that line is arithmetic on measured units, not a measured
run. MFU counts 2·P·T matmul FLOPs plus 4·T²·d self-attention FLOPs per layer and forward, ×3 for
forward + backward (recomputation by checkpointing is not counted as useful work), against ``--peak-tflops``.

    python -m benchmarks.gpu.wan_rl_steps --json-out wan_rl_steps.json
    python -m benchmarks.gpu.wan_rl_steps --tiny --device cpu     # CPU smoke test of every path
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from diffusers.training_utils import cast_training_params

from generator_rl.flow_dpo import FlowDpoConfig, dpo_micro_step
from generator_rl.losses import ppo_clip_loss
from generator_rl.policy import LEARNER, LoraSpec, VideoShape, WanPolicy, compiled_graphs
from generator_rl.sde import gaussian_kl, sde_step, step_mean_std

from .harness import (
    cell, failure_status, machine_name, markdown_table, mfu, peak_gib, release_memory, repeated, reset_peak, write_json,
)

WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
# Wan-2.1 T2V 14B: the 1.3B block with 40 layers of 40 heads x 128 and a 13,824-wide FFN (same text width).
WAN_14B = dict(WAN_1_3B, num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40)
TINY = dict(WAN_1_3B, num_attention_heads=2, attention_head_dim=12, text_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32)
# The tiny stand-in of the 14B: one layer and one head more than TINY, so the two builds differ.
TINY_14B = dict(TINY, num_attention_heads=3, num_layers=3)
UNITS = ("rollout", "grpo", "dpo", "decode")
UNIT_NAMES = {
    "rollout": "rollout step (CFG, 1 video)",
    "grpo": "GRPO train step (CFG + KL ref, 1 video)",
    "dpo": "Flow-DPO micro-step (1 pair + ref)",
    "decode": "VAE decode (1 video)",
}


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules directly in ``dtype``: a 14B transformer made in float32 first would need 56 GB."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_policy(
    tiny: bool, device: torch.device, dtype: torch.dtype, transformer: dict[str, Any] | None = None
) -> tuple[WanPolicy, int]:
    """The kit's ``WanPolicy`` over a random-init transformer (``transformer``: its config; default the 1.3B, or
    TINY) with LoRA, float32 LoRA weights and activation checkpointing; returns it and the base parameter count."""
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        model = WanTransformer3DModel(**(transformer or (TINY if tiny else WAN_1_3B))).to(dtype)  # buffers too
    with torch.device(device):
        vae = AutoencoderKLWan(base_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1) if tiny else AutoencoderKLWan()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipeline = WanPipeline(tokenizer=None, text_encoder=None, vae=vae.float(), scheduler=scheduler, transformer=model)
    pipeline.transformer.requires_grad_(False)
    pipeline.vae.requires_grad_(False)
    pipeline.transformer.add_adapter(LoraSpec().peft_config(), adapter_name=LEARNER)
    cast_training_params(pipeline.transformer, dtype=torch.float32)
    pipeline.transformer.enable_gradient_checkpointing()
    policy = WanPolicy(pipeline, device)
    text_dim = pipeline.transformer.config.text_dim
    for prompt in ("benchmark prompt", ""):
        policy._embeddings[prompt] = torch.randn(512, text_dim, device=device, dtype=dtype)
    return policy, sum(p.numel() for n, p in pipeline.transformer.named_parameters() if "lora_" not in n)


def forward_flops(params: int, tokens: int, layers: int, width: int, text_tokens: int = 512) -> float:
    """Matmul FLOPs of one transformer forward over ``tokens`` video tokens: 2·P·T for the weights, plus per
    layer 4·T²·d for self-attention (QKᵀ and AV) and 4·T·512·d for cross-attention to the text."""
    return 2 * params * tokens + layers * (4 * tokens * tokens * width + 4 * tokens * text_tokens * width)


@dataclass
class Unit:
    """One measured workload: the call, and its useful FLOPs (None: not a transformer workload, no MFU)."""

    name: str
    call: Callable[[], object]
    flops: float | None


def video_tokens(policy: WanPolicy, shape: VideoShape) -> int:
    latent = policy.latent_shape(1, shape)
    return latent[2] * latent[3] * latent[4] // 4  # 1x2x2 patches


def units(policy: WanPolicy, params: int, shape: VideoShape, device: torch.device) -> dict[str, Unit]:
    """The four workloads at ``shape`` with their useful FLOPs: a gradient forward counts 3 forwards (forward +
    backward; checkpointing's recomputation is not useful work), a no-grad forward 1, CFG doubles the batch."""
    config = policy.transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    latent = policy.latent_shape(1, shape)
    sigmas, timesteps = policy.schedule(20)
    conditional, unconditional = policy.prompt_embeddings(["benchmark prompt"])
    state = torch.randn(latent, device=device)
    noise = torch.randn(latent, device=device)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-6)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    sigma, sigma_next, sigma_max = float(sigmas[5]), float(sigmas[6]), float(sigmas[1])

    def rollout_step():
        with torch.no_grad(), autocast:
            velocity = policy.velocity(state, timesteps[5], conditional, unconditional, 4.5)
            return sde_step(velocity, state, sigma, sigma_next, sigma_max=sigma_max, noise=noise)

    def grpo_step():
        with autocast:
            velocity = policy.velocity(state, timesteps[5], conditional, unconditional, 4.5)
            output = sde_step(velocity, state, sigma, sigma_next, sigma_max=sigma_max, next_sample=noise)
            loss = ppo_clip_loss(output.log_prob, output.log_prob.detach(), torch.ones(1, device=device), clip_range=1e-3).loss.mean()
            with torch.no_grad(), policy.reference():
                reference = policy.velocity(state, timesteps[5], conditional, unconditional, 4.5)
            reference_mean, _ = step_mean_std(reference, state, sigma, sigma_next, kind="flow_sde", noise_level=0.7, sigma_max=sigma_max)
            loss = loss + 0.004 * gaussian_kl(output.mean, reference_mean, output.std).mean()
        loss.backward()
        optimizer.zero_grad(set_to_none=True)

    pair = {"winner": torch.randn(latent, device=device), "loser": torch.randn(latent, device=device), "prompt_embeds": conditional}
    dpo = FlowDpoConfig(rewards=["name=brightness"])

    def dpo_step():
        with autocast:
            losses, _ = dpo_micro_step(policy, pair, dpo=dpo, shift=1.0, generator=torch.Generator().manual_seed(0))
        losses.mean().backward()
        optimizer.zero_grad(set_to_none=True)

    def decode():
        return policy.decode(state)

    forward = forward_flops(params, video_tokens(policy, shape), config.num_layers, width)
    calls = {"rollout": (rollout_step, 2 * forward), "grpo": (grpo_step, 2 * 3 * forward + 2 * forward),
             "dpo": (dpo_step, 2 * 3 * forward + 2 * forward), "decode": (decode, None)}
    return {key: Unit(UNIT_NAMES[key], call, flops) for key, (call, flops) in calls.items()}


def run_unit(
    unit: Unit, device: torch.device, *, repeats: int, warmup: int = 1, peak_tflops: float | None
) -> dict[str, Any]:
    """Median seconds of ``repeats`` calls after ``warmup`` untimed ones, their peak GiB, MFU, and the graphs
    torch.compile captured during the warm-up and during the timed calls (the latter should be 0). An OOM or
    a missing attention kernel is a status, not a crash."""
    before = compiled_graphs()
    try:
        for _ in range(warmup):
            unit.call()
        warm = compiled_graphs()
        reset_peak(device)  # the peak of the timed calls, as in the measurements recorded before
        seconds = statistics.median(repeated(unit.call, device, repeats=repeats))
        result = {"seconds": seconds, "peak_gib": peak_gib(device), "mfu": mfu(unit.flops, seconds, peak_tflops),
                  "status": "ok", "graphs_warmup": warm - before, "graphs_timed": compiled_graphs() - warm}
    except (torch.OutOfMemoryError, RuntimeError) as error:
        status = failure_status(error)
        if status == "error":
            raise
        result = {"seconds": None, "peak_gib": None, "mfu": None, "status": status, "error": str(error).splitlines()[0]}
    release_memory(device)  # after the except block, so the traceback's tensors are gone
    return result


def measure(policy: WanPolicy, params: int, shape: VideoShape, device: torch.device, repeats: int, peak_tflops: float) -> list[dict]:
    tokens = video_tokens(policy, shape)
    return [{"frames": shape.num_frames, "tokens": tokens, "measurement": unit.name,
             **run_unit(unit, device, repeats=repeats, peak_tflops=peak_tflops)}
            for unit in units(policy, params, shape, device).values()]


def estimate_grpo_step(rows: list[dict], videos: int, steps: int = 20) -> dict:
    unit = {row["measurement"].split(" (")[0]: row["seconds"] for row in rows}
    needed = (unit.get("rollout step"), unit.get("VAE decode"), unit.get("GRPO train step"))
    seconds = None if None in needed else videos * (steps * needed[0] + needed[1] + (steps - 1) * needed[2])
    return {"frames": rows[0]["frames"], "videos_per_gpu": videos, "sampling_steps": steps, "estimated_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny transformer/VAE and 32x32 frames (CPU smoke test)")
    parser.add_argument("--frames", type=int, nargs="+", default=[33, 81])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--videos", type=int, default=8, help="videos per GPU per GRPO step for the estimate")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    policy, params = build_policy(args.tiny, device, dtype)
    rows = []
    for frames in args.frames:
        shape = VideoShape(32, 32, frames) if args.tiny else VideoShape(480, 832, frames)
        rows += measure(policy, params, shape, device, args.repeats, args.peak_tflops)
    estimates = [estimate_grpo_step([r for r in rows if r["frames"] == f], args.videos) for f in args.frames]
    machine = machine_name(device)
    report = {"machine": machine, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "transformer_params": params, "rows": rows, "grpo_step_estimates": estimates}
    table = markdown_table(
        ["frames", "tokens", "measurement", "seconds", "peak GiB", "MFU", "status"],
        [[str(row["frames"]), str(row["tokens"]), row["measurement"], cell(row["seconds"], ".3f"),
          cell(row["peak_gib"], ".1f"), cell(row["mfu"], ".1%"), row["status"]] for row in rows],
        numeric=[True, True, False, True, True, True, False])
    lines = [f"### Wan-2.1 RL step costs ({'tiny' if args.tiny else '1.3B'}, random init) on {machine}, {report['date']}", "", table]
    for estimate in estimates:
        lines.append(f"\nestimated GRPO optimizer step, {estimate['frames']} frames, {estimate['videos_per_gpu']} videos/GPU: "
                     f"{cell(estimate['estimated_seconds'], '.1f')} s (arithmetic on the units above)")
    print("\n".join(lines))
    write_json(report, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
