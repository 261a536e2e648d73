"""DeScore scoring: think (generate a CoT), then score (read the head at ``<Reward>``).

With CoT, each video gets one greedy CoT from the generation backend that ``generation.backend`` names (HF
``generate``, batched and left-padded, or vLLM; :mod:`reward.generation`; DeScore's inference uses greedy
decoding with repetition penalty 1.05), then the CoT + ``<Reward>`` sequence goes through one forward pass. A
CoT cut by ``max_new_tokens`` is still scored, and flagged ``truncated``. Without CoT, video + prompt +
``<Reward>`` is scored in a single forward — valid because stage 1 drops the CoT for half of the pairs, and
the fast mode RL loops need.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .base import RewardOutput, ScoredItem, register_reward, sampled_batches
from .calibration import CALIBRATION_FILE, Calibration, read_calibration
from .checkpoint import resolve_model_source
from .generation import CotBackend, Generation, GenerationSettings, build_backend
from .inputs import encode, scoring_text
from .modeling import DeScoreModel
from .prompts import JudgeText, judge_text, parse_judge_answer
from .video import DecodeLimits, SampledVideo, VideoSource

logger = logging.getLogger(__name__)


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
        generation: CoT decoding settings and backend (:class:`reward.generation.GenerationSettings`, or its
            fields as a mapping); vLLM loads ``path``, which must then be a merged export.
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
        self.folder = folder
        self.calibration = self._carried_calibration(folder) if folder is not None else None

    @functools.cached_property
    def backend(self) -> CotBackend:
        """The CoT writer, built on first use (a vLLM engine is only started when a CoT is needed)."""
        return build_backend(self.generation, model=self.model, model_path=self.folder, device=self.device)

    def _carried_calibration(self, folder: Path) -> Calibration | None:
        """The checkpoint's own stats, if they describe this mode (and, with CoT, these decoding settings)."""
        if not (folder / CALIBRATION_FILE).is_file():
            return None
        calibration = read_calibration(folder / CALIBRATION_FILE)
        recorded = calibration.reward["identity"]["entry"]
        generation = GenerationSettings(**(recorded.get("generation") or {}))
        same_generation = not self.use_cot or generation.decoding() == self.generation.decoding()
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
            truncated: list[bool | None] = [None] * len(clips)  # known only for the CoTs written here
            if self.use_cot:
                missing = [j for j, cot in enumerate(chunk_cots) if cot is None]
                if missing:
                    written = self.generate_cots([judges[j] for j in missing], [clips[j] for j in missing])
                    for j, generation in zip(missing, written):
                        chunk_cots[j], truncated[j] = generation.text, generation.truncated
            rewards = self.head_rewards(judges, clips, chunk_cots if self.use_cot else [None] * len(clips))
            for position, (index, reward) in enumerate(zip(indices, rewards.tolist())):
                cot = chunk_cots[position] if self.use_cot else None
                items[index] = _scored(reward, cot, truncated=truncated[position])
        return RewardOutput(items=items)

    def generate_cots(self, judges: Sequence[JudgeText], videos: Sequence[SampledVideo]) -> list[Generation]:
        """One CoT per video from :attr:`backend` with :attr:`generation` (text, ids, truncation flag)."""
        return [samples[0] for samples in self.backend.generate(judges, videos, settings=self.generation)]

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


def _scored(reward: float, cot: str | None, *, truncated: bool | None) -> ScoredItem:
    """``truncated``: whether ``max_new_tokens`` cut the CoT (None: not written here)."""
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
        truncated=truncated,
    )


register_reward("descore")(functools.partial(DeScoreReward, use_cot=True))
register_reward("descore_no_cot")(functools.partial(DeScoreReward, use_cot=False))
