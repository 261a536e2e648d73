"""CoT writing throughput (videos/s) of HF ``generate`` and vLLM at the same batch, at Qwen3-VL-8B size with
random weights (docs/descore_generation.md).

Why random weights: no checkpoint is reachable from the lent GPU machines, and time does not depend on the
weight values. The backbone is the real ``Qwen3VLForConditionalGeneration`` built from Qwen3-VL-8B-Instruct's
configuration (``benchmarks/gpu/descore_stage1.py`` builds and saves it), wrapped as a merged DeScore
checkpoint (``<Reward>`` added, random head) so that vLLM opens the same folder HF loads.

Measured per backend, on ``batch_size`` random 5 s clips of 480×832 at 16 fps sampled by the stage-1
``VideoSpec`` (the input of a Wan rollout): one ``generate`` call of the backend writing a greedy CoT of at
most ``gen_tokens`` tokens per clip (collection: videos/s and generated tokens/s from the tokens actually
written), and the same followed by the HF head forward over the written CoTs (scoring: videos/s). The target
the kit aims for is vLLM ≥ 8× HF at the same batch.

Run (one H100/H200, vLLM installed; ~18 GB of scratch disk)::

    python -m benchmarks.gpu.cot_throughput --json_out results/cot_throughput.json
    python -m benchmarks.gpu.cot_throughput --tiny --device cpu --backends hf     # CPU check of the HF half
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from transformers import HfArgumentParser

from reward.errors import ConfigError
from reward.generation import CotBackend, GenerationSettings, build_backend
from reward.modeling import DeScoreModel, save_descore
from reward.prompts import judge_text
from reward.scoring import DeScoreReward
from reward.video import SampledVideo

from .descore_stage1 import FULL_SCALE, PROMPT, TINY_SCALE, Scale, save_random_backbone, synthetic_clip
from .harness import release_memory, timed

logger = logging.getLogger(__name__)
BACKENDS = ("hf", "vllm")


@dataclass
class CotBenchConfig:
    device: str = field(default="cuda", metadata={"help": "Torch device of the HF model."})
    tiny: bool = field(default=False, metadata={"help": "Tiny Qwen3-VL and clips: a CPU check of the paths."})
    backends: list[str] = field(default_factory=lambda: list(BACKENDS), metadata={"help": f"From {BACKENDS}."})
    batch_size: int = field(default=8, metadata={"help": "Clips per generate call (tiny: 2)."})
    gen_tokens: int | None = field(default=None, metadata={"help": "Most new tokens per CoT (256; tiny 8)."})
    gpu_memory_utilization: float = field(default=0.5, metadata={"help": "vLLM's share (the HF model holds the rest)."})
    json_out: str | None = field(default=None, metadata={"help": "Also write the results to this JSON file."})
    scratch_dir: str | None = field(default=None, metadata={"help": "Folder for the random checkpoint."})
    seed: int = field(default=0, metadata={"help": "Seed of the weights and clips."})

    def __post_init__(self) -> None:
        if set(self.backends) - set(BACKENDS):
            raise ConfigError(f"unknown backends {sorted(set(self.backends) - set(BACKENDS))}; choose from {BACKENDS}")
        if torch.device(self.device).type != "cuda" and not self.tiny:
            raise ConfigError("the 8B scale needs a GPU; on CPU pass --tiny")
        if self.tiny:
            self.batch_size = min(self.batch_size, 2)
        self.gen_tokens = self.gen_tokens or (8 if self.tiny else 256)

    @property
    def scale(self) -> Scale:
        return TINY_SCALE if self.tiny else FULL_SCALE

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if torch.device(self.device).type == "cuda" else torch.float32


@dataclass
class Row:
    backend: str
    videos: int
    generate_s: float
    generated_tokens: int
    truncated: int
    score_s: float
    collect_videos_per_s: float
    score_videos_per_s: float


def build_checkpoint(directory: Path, config: CotBenchConfig) -> Path:
    """A merged DeScore checkpoint over the random backbone: the folder both HF and vLLM open."""
    device = torch.device(config.device)
    save_random_backbone(directory / "backbone", config.scale, device=device, dtype=config.dtype)
    model = DeScoreModel.from_base(str(directory / "backbone"), video_spec=config.scale.video_spec, dtype=config.dtype)
    return save_descore(model, directory / "descore")


def measure(backend: CotBackend, name: str, reward: DeScoreReward, clips: list[SampledVideo],
            settings: GenerationSettings) -> Row:
    """One untimed warm-up call, then one timed generate and one timed head forward over its CoTs."""
    judges = [judge_text(PROMPT, template=reward.model.judge_template)] * len(clips)
    backend.generate(judges[:1], clips[:1], settings=settings)
    written, generate_s = timed(lambda: backend.generate(judges, clips, settings=settings), reward.device)
    cots = [samples[0].text for samples in written]
    _, score_s = timed(lambda: reward.head_rewards(judges, clips, cots), reward.device)
    return Row(
        backend=name, videos=len(clips), generate_s=generate_s,
        generated_tokens=sum(len(samples[0].token_ids) for samples in written),
        truncated=sum(samples[0].truncated for samples in written), score_s=score_s,
        collect_videos_per_s=len(clips) / generate_s, score_videos_per_s=len(clips) / (generate_s + score_s),
    )


def backend_for(name: str, reward: DeScoreReward, folder: Path, config: CotBenchConfig) -> tuple[CotBackend, GenerationSettings]:
    settings = GenerationSettings(backend=name, max_new_tokens=config.gen_tokens,
                                  gpu_memory_utilization=config.gpu_memory_utilization)
    return build_backend(settings, model=reward.model, model_path=folder, device=reward.device), settings


def run(config: CotBenchConfig) -> dict:
    device = torch.device(config.device)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    result = {"scale": config.scale.name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})",
              "batch_size": config.batch_size, "gen_tokens": config.gen_tokens, "rows": [], "errors": []}
    with tempfile.TemporaryDirectory(prefix="descore-cot-", dir=config.scratch_dir) as scratch:
        folder = build_checkpoint(Path(scratch), config)
        reward = DeScoreReward(folder, use_cot=True, device=device, dtype=config.dtype)
        clips = [synthetic_clip(rng, config.scale, name=f"random-clip-{i}") for i in range(config.batch_size)]
        for name in config.backends:
            try:
                backend, settings = backend_for(name, reward, folder, config)
                result["rows"].append(asdict(measure(backend, name, reward, clips, settings)))
            except Exception as error:  # one failed backend must not cost the other's numbers on a GPU lease
                logger.exception("backend %s failed", name)
                result["errors"].append(f"{name}: {type(error).__name__}: {error}")
            release_memory(device)
    rows = {row["backend"]: row for row in result["rows"]}
    if {"hf", "vllm"} <= set(rows):
        result["vllm_speedup"] = rows["vllm"]["collect_videos_per_s"] / rows["hf"]["collect_videos_per_s"]
    if config.json_out:
        Path(config.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(config.json_out).write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (config,) = HfArgumentParser(CotBenchConfig).parse_args_into_dataclasses(args=argv)
    result = run(config)
    print(json.dumps(result, indent=2))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
