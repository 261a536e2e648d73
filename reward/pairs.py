"""Pair datasets and the collator that turns pairs into one batched DeScore forward.

A batch of N pairs becomes 2N sequences (all A videos, then all B videos) so both sides share one forward
pass, with ``labels`` holding the N pair labels. Stage 1 drops the CoT of *both* videos of a pair with
probability ``cot_drop_prob`` (one draw per pair, reference/descore.md §3.2), which teaches the head to
score from video + prompt alone as well as from the CoT.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch.utils.data import Dataset
from transformers import BatchFeature, ProcessorMixin

from .data import PreferencePair
from .errors import VideoDecodeError
from .inputs import CotPlacement, encode, scoring_text
from .prompts import judge_text
from .video import SampledVideo, VideoSpec, load_video

logger = logging.getLogger(__name__)

CotMode = Literal["random", "keep", "drop"]


@dataclass(frozen=True)
class PairExample:
    pair: PreferencePair
    video_a: SampledVideo
    video_b: SampledVideo
    cot_mode: CotMode


class PairDataset(Dataset):
    """Decodes both videos of a pair through the video contract.

    ``cot_mode``: ``random`` (training: the collator draws the drop), ``keep`` (always score with the CoT)
    or ``drop`` (never). With ``skip_invalid``, a pair whose video fails to decode mid-run is skipped with a
    warning naming the file and the next pair is served instead; otherwise the error propagates.
    """

    def __init__(
        self, pairs: Sequence[PreferencePair], spec: VideoSpec, *, cot_mode: CotMode, skip_invalid: bool = False
    ) -> None:
        if not pairs:
            raise ValueError("a PairDataset needs at least one pair")
        if cot_mode == "keep" and not all(pair.has_cot for pair in pairs):
            raise ValueError("cot_mode='keep' needs a CoT for every pair (columns cot_a and cot_b)")
        self.pairs, self.spec, self.cot_mode, self.skip_invalid = list(pairs), spec, cot_mode, skip_invalid

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> PairExample:
        for offset in range(len(self.pairs)):
            pair = self.pairs[(index + offset) % len(self.pairs)]
            try:
                return PairExample(pair, load_video(pair.video_a, self.spec), load_video(pair.video_b, self.spec), self.cot_mode)
            except VideoDecodeError as error:
                if not self.skip_invalid:
                    raise VideoDecodeError(error.source, f"{error.reason} (data line {pair.line})") from error
                logger.warning("skipping the pair on data line %d: %s", pair.line, error)
        raise VideoDecodeError("<dataset>", "no pair in the dataset can be decoded")


@dataclass
class PairCollator:
    """Builds the scoring sequences of a batch of pairs and tokenises them with their videos."""

    processor: ProcessorMixin
    reward_token: str
    placement: CotPlacement
    cot_drop_prob: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.cot_drop_prob <= 1.0:
            raise ValueError(f"cot_drop_prob must lie in [0, 1], got {self.cot_drop_prob}")

    def use_cot(self, example: PairExample) -> bool:
        if example.cot_mode == "keep":
            return True
        if example.cot_mode == "drop" or not example.pair.has_cot:
            return False
        # Global torch RNG: seeded by the Trainer and restored on resume, so the draws are reproducible.
        return bool(torch.rand(()) >= self.cot_drop_prob)

    def __call__(self, examples: Sequence[PairExample]) -> BatchFeature:
        texts_a, texts_b = [], []
        for example in examples:
            pair, keep = example.pair, self.use_cot(example)
            judge = judge_text(pair.prompt, pair.instruction)
            for texts, cot in ((texts_a, pair.cot_a), (texts_b, pair.cot_b)):
                texts.append(
                    scoring_text(
                        self.processor, judge, cot if keep else None, placement=self.placement, reward_token=self.reward_token
                    )
                )
        videos = [example.video_a for example in examples] + [example.video_b for example in examples]
        batch = encode(self.processor, texts_a + texts_b, videos)
        batch["labels"] = torch.tensor([example.pair.label for example in examples], dtype=torch.long)
        return batch
