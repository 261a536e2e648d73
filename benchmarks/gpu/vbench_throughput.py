"""Throughput of the VBench harness (videos/s per dimension) on Wan-2.1's output size, random-weight extractors.

Why random weights: time and memory do not depend on the weight values, and no weight file can be fetched on
the lent GPU machines. ``benchmarks.vbench.weights.write_random_weights(size="real")`` writes every file of
VBench's layout at the real architectures' sizes (DINO ViT-B/16, OpenAI CLIP ViT-B/32 and ViT-L/14, the LAION
head, MUSIQ-SPAQ, RAFT-things), and ``load_extractors`` loads them exactly as ``descore bench vbench`` does.

Input: random uint8 clips of 81 frames at 480×832 and 16 fps (Wan-2.1 T2V 1.3B's output), already decoded and on
the device, so the numbers are the metric and extractor cost alone (decoding an mp4 is measured separately, as
``decode``: the kit's reader on a lossless file of the same clip). Per dimension: median seconds per video over
``repeats`` videos after one untimed warm-up video, videos/s, peak CUDA memory.

Run (one H100/H200; ~2 GB of scratch disk)::

    python -m benchmarks.gpu.vbench_throughput --json_out results/vbench_throughput.json
    python -m benchmarks.gpu.vbench_throughput --tiny --device cpu     # CPU smoke test, tiny sizes and clips
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import HfArgumentParser

from benchmarks.vbench.metrics import DIMENSIONS, score_video
from benchmarks.vbench.weights import load_extractors, write_random_weights
from reward.decoding import open_reader
from reward.errors import ConfigError
from reward.video import write_video

from .harness import release_memory, timed

logger = logging.getLogger(__name__)


@dataclass
class VBenchBenchmarkConfig:
    device: str = field(default="cuda", metadata={"help": "Torch device to benchmark on."})
    tiny: bool = field(default=False, metadata={"help": "Tiny extractors and 9-frame 128x160 clips: a CPU smoke test."})
    dimensions: list[str] = field(default_factory=lambda: list(DIMENSIONS), metadata={"help": f"From {DIMENSIONS}."})
    repeats: int = field(default=3, metadata={"help": "Timed videos per dimension (median reported)."})
    batch_size: int = field(default=32, metadata={"help": "Frames per encoder forward (VBench: 32 for aesthetic)."})
    json_out: str | None = field(default=None, metadata={"help": "Also write the results to this JSON file."})
    scratch_dir: str | None = field(default=None, metadata={"help": "Folder for the random weight files."})
    seed: int = field(default=0, metadata={"help": "Seed of the random clips."})

    def __post_init__(self) -> None:
        unknown = sorted(set(self.dimensions) - set(DIMENSIONS))
        if unknown:
            raise ConfigError(f"unknown dimensions {unknown}; choose from {DIMENSIONS}")
        if self.repeats < 1 or self.batch_size < 1:
            raise ConfigError(f"repeats and batch_size must be >= 1, got {self.repeats} and {self.batch_size}")
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} was asked for but CUDA is not available; use --device cpu")
        if torch.device(self.device).type != "cuda" and not self.tiny:
            raise ConfigError("real sizes need a GPU; on CPU pass --tiny (smoke test)")

    @property
    def clip_shape(self) -> tuple[int, int, int]:
        """(frames, height, width) of the input clips."""
        return (9, 128, 160) if self.tiny else (81, 480, 832)  # RAFT needs 128 px at least


@dataclass
class DimensionMeasurement:
    dimension: str
    status: str = "ok"
    seconds: float | None = None
    seconds_all: list[float] = field(default_factory=list)
    videos_per_s: float | None = None
    peak_memory_gib: float | None = None


def random_clip(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    frames, height, width = shape
    return rng.integers(0, 256, size=(frames, height, width, 3), dtype=np.uint8)


def decode_seconds(clip: np.ndarray, folder: Path, device: torch.device) -> float:
    """Seconds to read every frame of a lossless 16-fps mp4 of ``clip`` with the kit's reader."""
    path = write_video(folder / "clip.mp4", clip, 16.0, lossless=True)

    def read() -> int:
        reader = open_reader(str(path))
        return len(reader.frames(list(range(reader.total_frames))).to(device))

    return timed(read, device)[1]


def measure_dimension(dimension: str, clips: list[torch.Tensor], config: VBenchBenchmarkConfig, extractors: Any) -> DimensionMeasurement:
    device = torch.device(config.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    score = lambda frames: score_video(dimension, frames, fps=16.0, extractors=extractors, batch_size=config.batch_size)  # noqa: E731
    try:
        timed(lambda: score(clips[0]), device)  # warm-up
        seconds = [timed(lambda: score(frames), device)[1] for frames in clips[1:]]
        median = statistics.median(seconds)
        result = DimensionMeasurement(dimension, seconds=median, seconds_all=seconds, videos_per_s=1 / median)
    except torch.OutOfMemoryError:
        result = DimensionMeasurement(dimension, status="OOM")
    release_memory(device)
    if device.type == "cuda":
        result.peak_memory_gib = torch.cuda.max_memory_allocated(device) / 2**30
    logger.info("%s: %s", dimension, result)
    return result


def run(config: VBenchBenchmarkConfig) -> dict[str, Any]:
    device = torch.device(config.device)
    rng = np.random.default_rng(config.seed)
    clips = [random_clip(rng, config.clip_shape) for _ in range(config.repeats + 1)]
    frames, height, width = config.clip_shape
    report: dict[str, Any] = {
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "tiny": config.tiny,
        "versions": {name: version(name) for name in ("torch", "torchvision", "timm", "open_clip_torch")},
        "clip": f"{frames} frames {height}x{width} at 16 fps, random pixels, decoded", "measurements": [],
    }
    with tempfile.TemporaryDirectory(dir=config.scratch_dir) as scratch:
        report["decode_seconds"] = decode_seconds(clips[0], Path(scratch), device)
        weights = write_random_weights(Path(scratch) / "weights", size="tiny" if config.tiny else "real", seed=config.seed)
        extractors = load_extractors(weights, config.dimensions, device=device)
        on_device = [torch.from_numpy(clip).permute(0, 3, 1, 2).float().to(device) for clip in clips]
        for dimension in config.dimensions:
            report["measurements"].append(asdict(measure_dimension(dimension, on_device, config, extractors)))
            if config.json_out:
                Path(config.json_out).parent.mkdir(parents=True, exist_ok=True)
                Path(config.json_out).write_text(json.dumps(report, indent=2))
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [f"{report['machine']}, {report['date']}; clips: {report['clip']}; decoding one clip's mp4: "
             f"{report['decode_seconds']:.3f} s", "", "| dimension | s / video | videos/s | peak GiB |", "|---|---|---|---|"]
    for m in report["measurements"]:
        seconds = m["status"] if m["seconds"] is None else f"{m['seconds']:.3f}"
        rate = "-" if m["videos_per_s"] is None else f"{m['videos_per_s']:.2f}"
        memory = "-" if m["peak_memory_gib"] is None else f"{m['peak_memory_gib']:.1f}"
        lines.append(f"| {m['dimension']} | {seconds} | {rate} | {memory} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (config,) = HfArgumentParser(VBenchBenchmarkConfig).parse_args_into_dataclasses(args=argv)
    report = run(config)
    print(markdown(report))
    return 0 if all(m["status"] == "ok" for m in report["measurements"]) else 1


if __name__ == "__main__":
    sys.exit(main())
