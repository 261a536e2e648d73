"""Pair datasets and the collator that turns pairs into one batched DeScore forward.

A batch of N pairs becomes 2N sequences (all A videos, then all B videos) so both sides share one forward
pass, with ``labels`` holding the N pair labels. Stage 1 drops the CoT of *both* videos of a pair with
probability ``cot_drop_prob`` (one draw per pair, as ``cold_start/data.py`` of KlingAIResearch/DeScore does;
docs/descore.md, "CoT dropout"), which teaches the head to score from video + prompt alone as well as from the
CoT. The draw is a pure function of (seed, epoch, pair index): the same in every dataloader worker and exactly
reproduced after a resume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import BatchFeature, ProcessorMixin

from .data import PreferencePair
from .errors import VideoDecodeError
from .inputs import CotPlacement, encode, scoring_text
from .prompts import JUDGE_TEMPLATE, judge_text
from .video import DecodeLimits, SampledVideo, VideoSpec, load_video

logger = logging.getLogger(__name__)

CotMode = Literal["random", "keep", "drop"]


@dataclass(frozen=True)
class PairExample:
    pair: PreferencePair
    video_a: SampledVideo
    video_b: SampledVideo
    use_cot: bool


class PairDataset(Dataset):
    """Decodes both videos of a pair through the video contract and decides whether the CoT is used.

    ``cot_mode``: ``random`` (training: dropped with probability ``cot_drop_prob``), ``keep`` (always) or
    ``drop`` (never). ``set_epoch`` (called by the trainer at each epoch start) changes the random draws.
    With ``skip_invalid``, a pair whose video fails to decode mid-run is skipped with a warning naming the
    file and the next pair is served instead; otherwise the error propagates.
    """

    def __init__(
        self,
        pairs: Sequence[PreferencePair],
        spec: VideoSpec,
        *,
        cot_mode: CotMode,
        cot_drop_prob: float = 0.5,
        seed: int = 0,
        skip_invalid: bool = False,
        limits: DecodeLimits = DecodeLimits(),
    ) -> None:
        if not pairs:
            raise ValueError("a PairDataset needs at least one pair")
        if cot_mode == "keep" and not all(pair.has_cot for pair in pairs):
            raise ValueError("cot_mode='keep' needs a CoT for every pair (columns cot_a and cot_b)")
        if not 0.0 <= cot_drop_prob <= 1.0:
            raise ValueError(f"cot_drop_prob must lie in [0, 1], got {cot_drop_prob}")
        self.pairs, self.spec, self.cot_mode = list(pairs), spec, cot_mode
        self.cot_drop_prob, self.seed, self.skip_invalid, self.limits = cot_drop_prob, seed, skip_invalid, limits
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def use_cot(self, index: int) -> bool:
        pair = self.pairs[index]
        if self.cot_mode == "drop" or not pair.has_cot:
            return False
        if self.cot_mode == "keep":
            return True
        draw = np.random.default_rng((self.seed, self.epoch, index)).random()
        return bool(draw >= self.cot_drop_prob)

    def __getitem__(self, index: int) -> PairExample:
        for offset in range(len(self.pairs)):
            position = (index + offset) % len(self.pairs)
            pair = self.pairs[position]
            try:
                video_a, video_b = (
                    load_video(pair.video_a, self.spec, limits=self.limits),
                    load_video(pair.video_b, self.spec, limits=self.limits),
                )
            except VideoDecodeError as error:
                if not self.skip_invalid:
                    raise VideoDecodeError(error.source, f"{error.reason} (data line {pair.line})") from error
                logger.warning("skipping the pair on data line %d: %s", pair.line, error)
                continue
            return PairExample(pair, video_a, video_b, self.use_cot(position))
        raise VideoDecodeError("<dataset>", "no pair in the dataset can be decoded")


@dataclass
class PairCollator:
    """Builds the scoring sequences of a batch of pairs and tokenises them with their videos.

    ``judge_template`` is the model's (``DeScoreModel.judge_template``); a pair's own ``instruction`` (the
    official CSV's ``problem``) is used verbatim instead.
    """

    processor: ProcessorMixin
    reward_token: str
    placement: CotPlacement
    judge_template: str = JUDGE_TEMPLATE

    def __call__(self, examples: Sequence[PairExample]) -> BatchFeature:
        texts_a, texts_b = [], []
        for example in examples:
            pair = example.pair
            judge = judge_text(pair.prompt, pair.instruction, template=self.judge_template)
            for texts, cot in ((texts_a, pair.cot_a), (texts_b, pair.cot_b)):
                texts.append(
                    scoring_text(
                        self.processor,
                        judge,
                        cot if example.use_cot else None,
                        placement=self.placement,
                        reward_token=self.reward_token,
                    )
                )
        videos = [example.video_a for example in examples] + [example.video_b for example in examples]
        batch = encode(self.processor, texts_a + texts_b, videos)
        batch["labels"] = torch.tensor([example.pair.label for example in examples], dtype=torch.long)
        return batch
