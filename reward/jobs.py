"""The ``descore reward score`` and ``descore reward export`` jobs."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from .checkpoint import atomic_file
from .base import ScoredItem
from .data import PreferencePair, read_preferences
from .errors import ConfigError
from .losses import pairwise_accuracy
from .modeling import REWARD_TOKEN, DeScoreModel
from .scoring import DeScoreReward, GenerationSettings

logger = logging.getLogger(__name__)


@dataclass
class ScoreConfig:
    """Score videos with a DeScore checkpoint; one JSON line per (video, prompt)."""

    model: str | None = field(default=None, metadata={"help": "DeScore checkpoint directory."})
    output: str | None = field(default=None, metadata={"help": "Output JSONL file."})
    data: str | None = field(default=None, metadata={"help": "Preference CSV/JSONL; every distinct video is scored."})
    video: list[str] | None = field(default=None, metadata={"help": "Video file(s) to score (instead of --data)."})
    prompt: list[str] | None = field(
        default=None, metadata={"help": "The T2V prompt: one for all --video files, or one per file."}
    )
    cot: bool = field(default=True, metadata={"help": "Write a CoT before scoring; --no-cot scores in one pass."})
    cot_source: Literal["generate", "data"] = field(
        default="generate",
        metadata={"help": "generate: write each CoT with the model; data: use the cot_a/cot_b columns of --data."},
    )
    batch_size: int = field(default=4, metadata={"help": "Videos per generate/forward call."})
    max_new_tokens: int = field(default=2048, metadata={"help": "CoT length limit."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy CoT (DeScore's inference setting)."})
    repetition_penalty: float = field(default=1.05, metadata={"help": "CoT repetition penalty (DeScore: 1.05)."})
    skip_invalid: bool = field(
        default=False, metadata={"help": "Record unreadable videos / invalid rows and score the rest."}
    )
    device: str | None = field(default=None, metadata={"help": "cuda, cuda:1, cpu; default: cuda if available."})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = field(
        default=None, metadata={"help": "Backbone dtype; default bf16 on GPU, fp32 on CPU."}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. sdpa, flash_attention_2."})

    def __post_init__(self) -> None:
        if self.model is None or self.output is None:
            raise ConfigError("--model and --output are required")
        if (self.data is None) == (self.video is None):
            raise ConfigError("give exactly one of --data and --video")
        if self.video is not None:
            if not self.prompt or len(self.prompt) not in (1, len(self.video)):
                raise ConfigError(f"--prompt needs 1 or {len(self.video)} values for {len(self.video)} --video file(s)")
            if self.cot_source == "data":
                raise ConfigError("cot_source: data needs --data with cot_a/cot_b columns")


@dataclass(frozen=True)
class _Request:
    video: str
    prompt: str
    cot: str | None
    instruction: str | None


@dataclass(frozen=True)
class ScoreSummary:
    scored: int
    failed: int
    skipped_rows: int
    parse_failure_rate: float
    accuracy: float | None
    decided_pairs: int


def run_score(config: ScoreConfig) -> ScoreSummary:
    """Score and write ``config.output``; pairs data also gives the pairwise accuracy over decided pairs."""
    scorer = DeScoreReward(
        config.model,
        use_cot=config.cot,
        batch_size=config.batch_size,
        generation=GenerationSettings(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            repetition_penalty=config.repetition_penalty,
        ),
        skip_invalid=config.skip_invalid,
        progress=True,
        device=config.device,
        dtype=config.dtype,
        attn_implementation=config.attn_implementation,
    )
    pairs, skipped_rows = [], 0
    if config.data is not None:
        data = read_preferences(
            config.data, skip_invalid=config.skip_invalid, reserved_tokens=(REWARD_TOKEN,), probe_videos=True
        )
        pairs, skipped_rows = data.pairs, len(data.skipped)
        if config.cot and config.cot_source == "data" and not all(pair.has_cot for pair in pairs):
            raise ConfigError(f"{config.data}: cot_source: data needs cot_a and cot_b on every row")
        use_data_cot = config.cot and config.cot_source == "data"
        requests = list(dict.fromkeys(
            _Request(video, pair.prompt, cot if use_data_cot else None, pair.instruction)
            for pair in pairs
            for video, cot in ((pair.video_a, pair.cot_a), (pair.video_b, pair.cot_b))
        ))
    else:
        prompts = config.prompt * len(config.video) if len(config.prompt) == 1 else config.prompt
        requests = [_Request(str(Path(video)), prompt, None, None) for video, prompt in zip(config.video, prompts)]
    output = scorer.score(
        [request.video for request in requests],
        [request.prompt for request in requests],
        cots=[request.cot for request in requests],
        instructions=[request.instruction for request in requests],
    )
    with atomic_file(config.output) as handle:
        for request, item in zip(requests, output.items):
            record = {
                "video": request.video,
                "prompt": request.prompt,
                "reward": item.reward if item.ok else None,
                "cot": item.cot,
                "sub_scores": item.sub_scores,
                "overall_score": item.overall_score,
                "parse_ok": item.parse_ok,
            }
            if item.error is not None:
                record["error"] = item.error
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    accuracy, decided = _pair_accuracy(pairs, requests, output.items, use_data_cot=config.cot and config.cot_source == "data")
    return ScoreSummary(
        scored=len(requests) - output.failures,
        failed=output.failures,
        skipped_rows=skipped_rows,
        parse_failure_rate=output.parse_failure_rate,
        accuracy=accuracy,
        decided_pairs=decided,
    )


def _pair_accuracy(
    pairs: list[PreferencePair], requests: list[_Request], items: list[ScoredItem], *, use_data_cot: bool
) -> tuple[float | None, int]:
    if not pairs:
        return None, 0
    reward = {request: item.reward for request, item in zip(requests, items)}
    margins, labels = [], []
    for pair in pairs:
        sides = [
            _Request(video, pair.prompt, cot if use_data_cot else None, pair.instruction)
            for video, cot in ((pair.video_a, pair.cot_a), (pair.video_b, pair.cot_b))
        ]
        a, b = (reward[side] for side in sides)
        if math.isfinite(a) and math.isfinite(b):
            margins.append(a - b)
            labels.append(pair.label)
    if not margins:
        return None, 0
    return pairwise_accuracy(torch.tensor(margins, dtype=torch.float64), torch.tensor(labels))


@dataclass
class ExportConfig:
    """Write a plain backbone checkpoint (LoRA merged, processor with <Reward>) for HF or vLLM loaders."""

    model: str | None = field(default=None, metadata={"help": "DeScore checkpoint directory."})
    output: str | None = field(default=None, metadata={"help": "Directory to write."})
    merged: bool = field(default=True, metadata={"help": "Merge LoRA into the weights (the only export format)."})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(default="auto", metadata={"help": "Weight dtype."})

    def __post_init__(self) -> None:
        if self.model is None or self.output is None:
            raise ConfigError("--model and --output are required")
        if not self.merged:
            raise ConfigError("export writes merged weights; an adapter checkpoint is already what training saves")


def run_export(config: ExportConfig) -> Path:
    return DeScoreModel.from_pretrained(config.model, dtype=config.dtype).export_merged(config.output)
