"""``descore tune sample``: videos from the base model or a tuned LoRA, with fixed per-prompt seeds.

Sampling is diffusers' own ``WanPipeline.__call__`` (the checkpoint's scheduler) with the LoRA loaded by
``WanPipeline.load_lora_weights`` — so a LoRA that samples here loads in any diffusers workflow — and video
k of prompt i always uses seed ``seed + 1000·i + k``: base and tuned videos of a prompt share their noise.
Writes ``<out>/<i>_<k>.mp4`` at 16 fps and ``<out>/index.csv`` (prompt, seed, file).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import WanPipeline

from reward.errors import ConfigError
from reward.video import write_video

from .config import DTYPES, PolicyArguments, read_prompts
from .policy import LEARNER, WAN_FPS, component_dtypes


@dataclass
class SampleArguments:
    prompts: str | None = field(default=None, metadata={"help": "Prompt file (.txt or .csv with a 'prompt' column)."})
    out: str | None = field(default=None, metadata={"help": "Output folder for the mp4 files and index.csv."})
    lora: str | None = field(default=None, metadata={"help": "LoRA folder (diffusers format); none: the base model."})
    seed: int = field(default=0, metadata={"help": "Base seed; video k of prompt i uses seed + 1000·i + k."})
    videos_per_prompt: int = field(default=1, metadata={"help": "Videos per prompt."})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu; default cuda if available."})

    def __post_init__(self) -> None:
        if self.prompts is None or self.out is None:
            raise ConfigError("--prompts and --out are required")


def load_sampling_pipeline(policy_args: PolicyArguments, lora: str | None, device: torch.device) -> WanPipeline:
    dtypes = component_dtypes(DTYPES[policy_args.transformer_dtype], DTYPES[policy_args.text_encoder_dtype])
    pipeline = WanPipeline.from_pretrained(policy_args.model, dtype=dtypes)
    if lora is not None:
        if not Path(lora).is_dir():
            raise ConfigError(f"LoRA folder {lora} does not exist")
        pipeline.load_lora_weights(lora, adapter_name=LEARNER)
    if policy_args.vae_tiling:
        pipeline.vae.enable_tiling()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def run_sample(policy_args: PolicyArguments, sample: SampleArguments) -> list[Path]:
    device = torch.device(sample.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipeline = load_sampling_pipeline(policy_args, sample.lora, device)
    prompts = read_prompts(sample.prompts)
    out = Path(sample.out)
    out.mkdir(parents=True, exist_ok=True)
    written, rows = [], []
    for i, prompt in enumerate(prompts):
        for k in range(sample.videos_per_prompt):
            seed = sample.seed + 1000 * i + k
            frames = pipeline(
                prompt=prompt,
                negative_prompt=policy_args.negative_prompt,
                height=policy_args.height,
                width=policy_args.width,
                num_frames=policy_args.num_frames,
                num_inference_steps=policy_args.num_steps,
                guidance_scale=policy_args.guidance_scale,
                max_sequence_length=policy_args.max_sequence_length,
                generator=torch.Generator(device="cpu").manual_seed(seed),
                output_type="np",
            ).frames[0]
            path = write_video(out / f"{i:04d}_{k}.mp4", (frames * 255).round().astype("uint8"), WAN_FPS)
            written.append(path)
            rows.append({"prompt": prompt, "seed": seed, "file": path.name})
    with (out / "index.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "seed", "file"])
        writer.writeheader()
        writer.writerows(rows)
    return written
