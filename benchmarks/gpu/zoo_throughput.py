"""Scoring throughput (videos/s) of each reward model of the zoo at its real size, with random weights.

Why random weights: no checkpoint can be fetched on the lent GPU machines, and time and memory do not depend
on the weight values. Each model's checkpoint is written in its upstream layout by the same builders the tests
use, at the real architecture's sizes, then loaded through ``reward.build_reward`` — the code a user runs:

==============  ==========================================================================================
videoreward     Qwen2-VL-2B-Instruct + VideoAlign's LoRA r 64 / α 128 layout, one-output head (as released)
vlm_judge       a Qwen3-VL-8B-Instruct-sized judge (UnifiedReward-Think-qwen3vl-8b / VideoScore2 class),
                expected rating over "1".."5" from one forward per question
clip_score      CLIP ViT-B/32 (CLIPScore's backbone)
pickscore       CLIP ViT-H/14 in transformers' layout (PickScore_v1)
hpsv2           open_clip ViT-H/14 state dict (HPS_v2.1_compressed.pt)
aesthetic       CLIP ViT-L/14 + LAION's aesthetic MLP
==============  ==========================================================================================

Input: random uint8 clips of 5 s at 16 fps, 480×832 (Wan-2.1's output) handed over in memory, as a GRPO
rollout does; each model samples and resizes them with its own ``VideoSpec`` (part of the timed call).
Reported per model and batch size: median seconds of one ``score`` call over ``repeats`` (after one untimed
warm-up call), videos/s, peak CUDA memory, load seconds. The tokenizers are the kit's small locally trained
ones (the vocabulary sizes are the real ones), so text token counts differ a little from the real models'.

Run (one H100/H200; ~40 GB of scratch disk for the random checkpoints)::

    python -m benchmarks.gpu.zoo_throughput --json_out results/zoo_throughput.json
    python -m benchmarks.gpu.zoo_throughput --tiny --device cpu     # CPU smoke test of every model, ~1 min

A model that runs out of GPU memory is reported as OOM; any other failure is logged with its traceback, the
other models still run, and the exit code is 1.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from transformers import HfArgumentParser

from reward import VideoFrames, build_reward
from reward.errors import ConfigError
from reward.tiny_clip import (CLIP_VIT_B_32, CLIP_VIT_H_14, CLIP_VIT_L_14, OPEN_CLIP_VOCAB_SIZE, TINY_CLIP, ClipSize,
                              save_aesthetic_head, save_hf_clip, save_open_clip_checkpoint)
from reward.videoreward_layout import QWEN2_VL_2B, Qwen2VLSizes, save_tiny_videoreward

from .descore_stage1 import FULL_SCALE, TINY_SCALE, save_random_backbone
from .harness import release_memory, timed

logger = logging.getLogger(__name__)

MODELS = ("videoreward", "vlm_judge", "clip_score", "pickscore", "hpsv2", "aesthetic")
PROMPT = "A red sports car drifts around a hairpin bend on a mountain road at sunset, cinematic lighting, drone shot."
Builder = Callable[[Path, bool, torch.device, torch.dtype], dict[str, Any]]


def _videoreward(folder: Path, tiny: bool, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    sizes = Qwen2VLSizes() if tiny else QWEN2_VL_2B
    path = save_tiny_videoreward(folder, sizes=sizes, output_dim=1, lora_rank=4 if tiny else 64,
                                 lora_alpha=8.0 if tiny else 128.0, dtype=dtype)
    return {"name": "videoreward", "path": str(path)}


def _vlm_judge(folder: Path, tiny: bool, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    path = save_random_backbone(folder, TINY_SCALE if tiny else FULL_SCALE, device=device, dtype=dtype)
    spec = TINY_SCALE.video_spec.to_dict() if tiny else None
    return {"name": "vlm_judge", "path": str(path), **({"video_spec": spec} if spec else {})}


def _clip_size(tiny: bool, real: ClipSize) -> tuple[ClipSize, int | None]:
    return (TINY_CLIP, None) if tiny else (real, OPEN_CLIP_VOCAB_SIZE)


def _clip_score(folder: Path, tiny: bool, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    size, vocab = _clip_size(tiny, CLIP_VIT_B_32)
    return {"name": "clip_score", "path": str(save_hf_clip(folder, size, vocab_size=vocab))}


def _pickscore(folder: Path, tiny: bool, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    size, vocab = _clip_size(tiny, CLIP_VIT_H_14)
    return {"name": "pickscore", "path": str(save_hf_clip(folder, size, vocab_size=vocab)), "processor_path": None}


def _hpsv2(folder: Path, tiny: bool, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    weights, architecture = save_open_clip_checkpoint(folder / "HPS_v2.1_compressed.pt", TINY_CLIP if tiny else CLIP_VIT_H_14)
    return {"name": "hpsv2", "path": str(weights), "architecture": str(architecture)}


def _aesthetic(folder: Path, tiny: bool, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    size, vocab = _clip_size(tiny, CLIP_VIT_L_14)
    head = save_aesthetic_head(folder / "aesthetic-model.pth", size.projection_dim)
    return {"name": "aesthetic", "path": str(save_hf_clip(folder / "clip", size, vocab_size=vocab)), "head": str(head)}


BUILDERS: dict[str, Builder] = {"videoreward": _videoreward, "vlm_judge": _vlm_judge, "clip_score": _clip_score,
                                "pickscore": _pickscore, "hpsv2": _hpsv2, "aesthetic": _aesthetic}


@dataclass
class ZooBenchmarkConfig:
    device: str = field(default="cuda", metadata={"help": "Torch device to benchmark on."})
    tiny: bool = field(default=False, metadata={"help": "Tiny models and clips: a CPU smoke test of every model."})
    models: list[str] = field(default_factory=lambda: list(MODELS), metadata={"help": f"From {MODELS}."})
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8], metadata={"help": "Videos per score call."})
    repeats: int = field(default=3, metadata={"help": "Timed calls per batch size (median reported)."})
    json_out: str | None = field(default=None, metadata={"help": "Also write the results to this JSON file."})
    scratch_dir: str | None = field(default=None, metadata={"help": "Folder for the random checkpoints."})
    seed: int = field(default=0, metadata={"help": "Seed of the random clips."})

    def __post_init__(self) -> None:
        if set(self.models) - set(MODELS):
            raise ConfigError(f"unknown models {sorted(set(self.models) - set(MODELS))}; choose from {MODELS}")
        if self.repeats < 1 or not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"repeats and batch sizes must be >= 1, got {self.repeats} and {self.batch_sizes}")
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} was asked for but CUDA is not available; use --device cpu")
        if torch.device(self.device).type != "cuda" and not self.tiny:
            raise ConfigError("real sizes need a GPU; on CPU pass --tiny (smoke test)")

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if torch.device(self.device).type == "cuda" else torch.float32


@dataclass
class ZooMeasurement:
    model: str
    batch_size: int
    status: str = "ok"
    seconds: float | None = None
    seconds_all: list[float] = field(default_factory=list)
    videos_per_s: float | None = None
    peak_memory_gib: float | None = None
    load_seconds: float | None = None


def random_clips(count: int, *, tiny: bool, seed: int) -> list[VideoFrames]:
    """Wan-2.1 output clips (5 s at 16 fps, 480×832; tiny: 48×80) of random pixels, in memory."""
    height, width = (48, 80) if tiny else (480, 832)
    rng = np.random.default_rng(seed)
    return [VideoFrames(rng.integers(0, 256, size=(80, height, width, 3), dtype=np.uint8), fps=16.0, name=f"clip-{i}")
            for i in range(count)]


def measure_model(name: str, config: ZooBenchmarkConfig, scratch: Path, clips: list[VideoFrames]) -> list[ZooMeasurement]:
    """Write the model's random checkpoint, load it through the registry, time ``score`` per batch size."""
    device = torch.device(config.device)
    entry = BUILDERS[name](scratch / name, config.tiny, device, config.dtype)
    start = time.perf_counter()
    model = build_reward(entry | {"device": str(device), "dtype": str(config.dtype).removeprefix("torch."),
                                  "batch_size": max(config.batch_sizes)})
    load_seconds = time.perf_counter() - start
    results = []
    for batch_size in config.batch_sizes:
        videos, prompts = clips[:batch_size], [PROMPT] * batch_size
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            timed(lambda: model.score(videos, prompts), device)  # warm-up
            seconds = [timed(lambda: model.score(videos, prompts), device)[1] for _ in range(config.repeats)]
            median = statistics.median(seconds)
            result = ZooMeasurement(name, batch_size, seconds=median, seconds_all=seconds, videos_per_s=batch_size / median)
        except torch.OutOfMemoryError:
            result = ZooMeasurement(name, batch_size, status="OOM")
        release_memory(device)
        if device.type == "cuda":
            result.peak_memory_gib = torch.cuda.max_memory_allocated(device) / 2**30
        result.load_seconds = load_seconds
        logger.info("%s, batch %d: %s", name, batch_size, result)
        results.append(result)
    return results


def run(config: ZooBenchmarkConfig) -> dict[str, Any]:
    device = torch.device(config.device)
    report: dict[str, Any] = {
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dtype": str(config.dtype), "tiny": config.tiny,
        "versions": {name: version(name) for name in ("torch", "transformers", "open_clip_torch")},
        "clip": "5 s at 16 fps, " + ("48x80" if config.tiny else "480x832") + ", random pixels, in memory",
        "measurements": [], "errors": [],
    }
    clips = random_clips(max(config.batch_sizes), tiny=config.tiny, seed=config.seed)
    with tempfile.TemporaryDirectory(dir=config.scratch_dir) as scratch:
        for name in config.models:
            try:
                report["measurements"] += [asdict(m) for m in measure_model(name, config, Path(scratch), clips)]
                release_memory(device)  # the model is gone with measure_model's frame
            except Exception:  # one model's failure must not hide the others' numbers
                logger.exception("%s failed", name)
                report["errors"].append(f"{name}: {traceback.format_exc(limit=3)}")
            if config.json_out:
                Path(config.json_out).parent.mkdir(parents=True, exist_ok=True)
                Path(config.json_out).write_text(json.dumps(report, indent=2))
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [f"{report['machine']}, {report['dtype']}, {report['date']}; clips: {report['clip']}", "",
             "| model | batch | s / call | videos/s | peak GiB | load s |", "|---|---|---|---|---|---|"]
    for m in report["measurements"]:
        cells = [m["status"] if m["seconds"] is None else f"{m['seconds']:.3f}",
                 "-" if m["videos_per_s"] is None else f"{m['videos_per_s']:.2f}",
                 "-" if m["peak_memory_gib"] is None else f"{m['peak_memory_gib']:.1f}", f"{m['load_seconds']:.1f}"]
        lines.append(f"| {m['model']} | {m['batch_size']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (config,) = HfArgumentParser(ZooBenchmarkConfig).parse_args_into_dataclasses(args=argv)
    report = run(config)
    print(markdown(report))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
