"""``descore tune sample``: videos from the base model or a tuned LoRA, with fixed per-prompt seeds.

Sampling is diffusers' own ``WanPipeline.__call__`` (the checkpoint's scheduler) with the LoRA loaded by
``WanPipeline.load_lora_weights`` — so a LoRA that samples here loads in any diffusers workflow — and video
k of prompt i always uses seed ``seed + 1000·i + k``: base and tuned videos of a prompt share their noise.
Writes ``<output_dir>/<i>_<k>.mp4`` at 16 fps, ``<output_dir>/index.csv`` (prompt, seed, file) and, before the first video,
``<output_dir>/samples.json`` (model, LoRA, sampler settings and the planned videos). ``--output_dir`` must be new, empty or
an earlier ``tune sample`` output (it holds ``samples.json``); any other folder is refused unless
``--overwrite true``, so sampling never replaces files it did not write.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import WanPipeline

from reward.checkpoint import atomic_file
from reward.errors import ConfigError
from reward.run_record import check_model_source, check_output_directory
from reward.video import write_video

from .config import DTYPES, PolicyConfig, read_prompts
from .policy import LEARNER, WAN_FPS, component_dtypes

SAMPLES_RECORD = "samples.json"  # written first: it marks a folder as `tune sample` output


@dataclass
class SampleConfig:
    prompts: str | None = field(default=None, metadata={"help": "Prompt file (.txt or .csv with a 'prompt' column)."})
    output_dir: str | None = field(default=None, metadata={"help": "Output folder for the mp4 files and index.csv."})
    lora: str | None = field(default=None, metadata={"help": "LoRA folder (diffusers format); none: the base model."})
    seed: int = field(default=0, metadata={"help": "Base seed; video k of prompt i uses seed + 1000·i + k."})
    videos_per_prompt: int = field(default=1, metadata={"help": "Videos per prompt."})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu; default cuda if available."})
    overwrite: bool = field(
        default=False, metadata={"help": "Write into a non-empty --output_dir that is not an earlier `tune sample` output."}
    )

    def __post_init__(self) -> None:
        if self.prompts is None or self.output_dir is None:
            raise ConfigError("--prompts and --output_dir are required")
        count = self.videos_per_prompt
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"videos_per_prompt must be an integer >= 1, got {self.videos_per_prompt!r}")
        if self.device is not None and _device_type(self.device) not in ("cpu", "cuda"):
            raise ConfigError(f"device must be cpu or cuda (optionally cuda:N), got {self.device!r}")
        if self.lora is not None and not Path(self.lora).is_dir():
            raise ConfigError(f"--lora {self.lora} is not a folder (expected a diffusers-format LoRA folder)")


def _device_type(name: str) -> str | None:
    try:
        return torch.device(name).type
    except RuntimeError:
        return None


def sample_device(requested: str | None) -> torch.device:
    if requested is not None and torch.device(requested).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested} was asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


def write_samples_record(
    out: Path, policy_args: PolicyConfig, sample: SampleConfig, videos: list[dict[str, Any]]
) -> Path:
    """``out/samples.json``: what was sampled and how; it also marks the folder as this command's output."""
    record = {
        "model": policy_args.model,
        "lora": sample.lora,
        "settings": {name: getattr(policy_args, name) for name in (
            "transformer_dtype", "text_encoder_dtype", "height", "width", "num_frames", "num_steps", "guidance_scale",
            "negative_prompt", "max_sequence_length")},
        "videos": videos,
    }
    with atomic_file(out / SAMPLES_RECORD) as handle:
        handle.write(json.dumps(record, indent=2) + "\n")
    return out / SAMPLES_RECORD


def load_sampling_pipeline(policy_args: PolicyConfig, lora: str | None, device: torch.device) -> WanPipeline:
    dtypes = component_dtypes(DTYPES[policy_args.transformer_dtype], DTYPES[policy_args.text_encoder_dtype])
    pipeline = WanPipeline.from_pretrained(policy_args.model, dtype=dtypes)
    if lora is not None:
        pipeline.load_lora_weights(lora, adapter_name=LEARNER)
    if policy_args.vae_tiling:
        pipeline.vae.enable_tiling()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def run_sample(policy_args: PolicyConfig, sample: SampleConfig) -> list[Path]:
    """Sample every prompt; the inputs, the output folder and the device are checked before the model loads."""
    prompts = read_prompts(sample.prompts)
    out = check_output_directory(sample.output_dir, marker=SAMPLES_RECORD, overwrite=sample.overwrite)
    device = sample_device(sample.device)
    check_model_source(policy_args.model, what="--model", ask_hub=True)
    rows = [
        {"prompt": prompt, "seed": sample.seed + 1000 * i + k, "file": f"{i:04d}_{k}.mp4"}
        for i, prompt in enumerate(prompts)
        for k in range(sample.videos_per_prompt)
    ]
    pipeline = load_sampling_pipeline(policy_args, sample.lora, device)
    out.mkdir(parents=True, exist_ok=True)
    write_samples_record(out, policy_args, sample, rows)
    written = []
    for row in rows:
        frames = pipeline(
            prompt=row["prompt"],
            negative_prompt=policy_args.negative_prompt,
            height=policy_args.height,
            width=policy_args.width,
            num_frames=policy_args.num_frames,
            num_inference_steps=policy_args.num_steps,
            guidance_scale=policy_args.guidance_scale,
            max_sequence_length=policy_args.max_sequence_length,
            generator=torch.Generator(device="cpu").manual_seed(row["seed"]),
            output_type="np",
        ).frames[0]
        written.append(write_video(out / row["file"], (frames * 255).round().astype("uint8"), WAN_FPS))
    with (out / "index.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "seed", "file"])
        writer.writeheader()
        writer.writerows(rows)
    return written
