"""DeScore scoring: think (generate a CoT), then score (read the head at ``<Reward>``).

With CoT, each video gets one greedy CoT from HF ``generate`` (batched, left-padded; DeScore's inference
uses greedy decoding with repetition penalty 1.05), then the CoT + ``<Reward>`` sequence goes through one
forward pass. Without CoT, video + prompt + ``<Reward>`` is scored in a single forward — valid because
stage 1 drops the CoT for half of the pairs, and the fast mode RL loops need.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .base import RewardOutput, ScoredItem, register_reward, sampled_batches
from .calibration import CALIBRATION_FILE, Calibration, read_calibration
from .checkpoint import resolve_model_source
from .errors import ConfigError
from .inputs import encode, generation_text, scoring_text
from .modeling import DeScoreModel
from .prompts import JudgeText, judge_text, parse_judge_answer
from .video import DecodeLimits, SampledVideo, VideoSource

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    """How the CoT is written. ``temperature`` 0 means greedy decoding."""

    max_new_tokens: int = 2048
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.05

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1 (the CoT needs room for an answer), got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy decoding), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must lie in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ConfigError(f"repetition_penalty must be > 0 (1 = no penalty; DeScore uses 1.05), got {self.repetition_penalty}")

    def generate_kwargs(self) -> dict:
        sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p} if self.temperature > 0 else {"do_sample": False}
        return {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty, **sampling}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(dtype: str | torch.dtype | None, device: torch.device) -> str | torch.dtype:
    """The backbone dtype when none is given: bf16 on GPU, fp32 on CPU (where bf16 matmuls are slow)."""
    if dtype is not None:
        return dtype
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class DeScoreReward:
    """DeScore as a :class:`reward.base.RewardModel`.

    Args:
        path: a DeScore checkpoint: a local folder (a training checkpoint or an export) or a hub id
            ``owner/name``; a local folder wins over a hub id spelled the same (alternatively pass a loaded
            ``model``).
        revision: branch, tag or commit of a hub id (default: ``main``); refused with a local folder.
        use_cot: generate a CoT before scoring (``False``: the one-forward fast mode).
        batch_size: videos per generate / forward call.
        generation: CoT decoding settings.
        skip_invalid: record unreadable videos as failed items (reward NaN, ``error`` set) instead of raising.
        progress: show a progress bar over batches (the CLI does; RL loops don't).
        device, dtype: where and in which dtype to load the backbone (default: CUDA if present, bf16 there).
        decode_limits: what one video file may cost to decode (:class:`reward.video.DecodeLimits`, or its
            fields as a mapping, e.g. from a reward entry in YAML); default: the defaults.

    ``calibration`` holds the stats the checkpoint carries (its ``calibration.json``, written by ``descore
    reward calibrate --save_to_checkpoint``) when they were computed in this mode (CoT or not) with these CoT
    settings, else None; an entry's ``calibration:`` replaces them (:func:`reward.base.build_reward`).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        model: DeScoreModel | None = None,
        revision: str | None = None,
        use_cot: bool = True,
        batch_size: int = 4,
        generation: GenerationSettings | Mapping[str, Any] | None = None,
        skip_invalid: bool = False,
        progress: bool = False,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        attn_implementation: str | None = None,
        decode_limits: DecodeLimits | Mapping[str, Any] | None = None,
    ) -> None:
        if (path is None) == (model is None):
            raise ValueError("pass exactly one of path and model")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else default_device()
        folder = None
        if model is None:
            folder = resolve_model_source(path, revision=revision).folder
            model = DeScoreModel.from_pretrained(
                folder, dtype=default_dtype(dtype, self.device), attn_implementation=attn_implementation
            )
        self.model = model.to(self.device).eval()
        self.use_cot = use_cot
        self.batch_size = batch_size
        if isinstance(generation, Mapping):
            generation = GenerationSettings(**generation)
        self.generation = generation or GenerationSettings()
        if isinstance(decode_limits, Mapping):
            decode_limits = DecodeLimits(**decode_limits)
        self.decode_limits = decode_limits or DecodeLimits()
        self.skip_invalid = skip_invalid
        self.progress = progress
        self.name = "descore" if use_cot else "descore_no_cot"
        self.calibration = self._carried_calibration(folder) if folder is not None else None

    def _carried_calibration(self, folder: Path) -> Calibration | None:
        """The checkpoint's own stats, if they describe this mode (and, with CoT, these decoding settings)."""
        if not (folder / CALIBRATION_FILE).is_file():
            return None
        calibration = read_calibration(folder / CALIBRATION_FILE)
        recorded = calibration.reward["identity"]["entry"]
        generation = GenerationSettings(**(recorded.get("generation") or {}))
        same_generation = not self.use_cot or generation == self.generation
        if recorded.get("name") != self.name or not same_generation:
            logger.warning("%s: its calibration stats were computed as %s, not as %s with %s; not using them",
                           folder, recorded, self.name, self.generation)
            return None
        return calibration

    def score(
        self,
        videos: Sequence[VideoSource],
        prompts: Sequence[str],
        *,
        cots: Sequence[str | None] | None = None,
        instructions: Sequence[str | None] | None = None,
    ) -> RewardOutput:
        """Score each video against its prompt.

        ``cots`` supplies pre-written CoTs (e.g. the ``cot_a``/``cot_b`` columns) instead of generating;
        ``instructions`` replaces the judge template per item (the official CSV's ``problem`` text).
        """
        if len(videos) != len(prompts):
            raise ValueError(f"got {len(videos)} videos and {len(prompts)} prompts")
        count = len(videos)
        cots = list(cots) if cots is not None else [None] * count
        instructions = list(instructions) if instructions is not None else [None] * count
        items: list[ScoredItem | None] = [None] * count
        batches = sampled_batches(videos, self.model.video_spec, self.decode_limits, batch_size=self.batch_size,
                                  skip_invalid=self.skip_invalid, items=items,
                                  progress=f"scoring ({self.name})" if self.progress else None)
        for loaded in batches:
            indices = [index for index, _ in loaded]
            clips = [clip for _, clip in loaded]
            judges = [judge_text(prompts[i], instructions[i], template=self.model.judge_template) for i in indices]
            chunk_cots = [cots[i] for i in indices]
            if self.use_cot:
                missing = [j for j, cot in enumerate(chunk_cots) if cot is None]
                if missing:
                    written = self.generate_cots([judges[j] for j in missing], [clips[j] for j in missing])
                    for j, text in zip(missing, written):
                        chunk_cots[j] = text
            rewards = self.head_rewards(judges, clips, chunk_cots if self.use_cot else [None] * len(clips))
            for index, reward, cot in zip(indices, rewards.tolist(), chunk_cots):
                items[index] = _scored(reward, cot if self.use_cot else None)
        return RewardOutput(items=items)

    @torch.no_grad()
    def generate_cots(self, judges: Sequence[JudgeText], videos: Sequence[SampledVideo]) -> list[str]:
        processor = self.model.processor
        texts = [generation_text(processor, judge) for judge in judges]
        batch = encode(processor, texts, videos, padding_side="left").to(self.device)
        output = self.model.backbone.generate(
            **batch,
            **self.generation.generate_kwargs(),
            suppress_tokens=[self.model.reward_token_id],
            pad_token_id=processor.tokenizer.pad_token_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return processor.batch_decode(new_tokens, skip_special_tokens=True)

    @torch.no_grad()
    def head_rewards(
        self, judges: Sequence[JudgeText], videos: Sequence[SampledVideo], cots: Sequence[str | None]
    ) -> torch.Tensor:
        model = self.model
        texts = [
            scoring_text(model.processor, judge, cot, placement=model.cot_placement, reward_token=model.reward_token)
            for judge, cot in zip(judges, cots)
        ]
        batch = encode(model.processor, texts, videos).to(self.device)
        return model(**batch).float().cpu()


def _scored(reward: float, cot: str | None) -> ScoredItem:
    if cot is None:
        return ScoredItem(reward=reward)
    parsed = parse_judge_answer(cot)
    answer = parsed.answer
    return ScoredItem(
        reward=reward,
        cot=cot,
        sub_scores=answer.dimensional_scores if answer else None,
        overall_score=answer.overall_score if answer else None,
        parse_ok=answer is not None,
        parse_error=parsed.reason,
    )


register_reward("descore")(functools.partial(DeScoreReward, use_cot=True))
register_reward("descore_no_cot")(functools.partial(DeScoreReward, use_cot=False))
