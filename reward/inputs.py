"""DeScore model inputs: the judge conversation, where the CoT and ``<Reward>`` go, and the processor call.

The reward is read at the ``<Reward>`` query token placed right after the CoT. Two placements exist
(docs/descore.md, "Where the CoT and <Reward> go") and the choice is stored in the checkpoint so training and
scoring agree:

* ``assistant`` — the CoT is the assistant's answer: ``<user: judge text + video> <assistant: CoT<Reward>``.
  This is how stage 2 of the official code trains and how a generated CoT naturally continues.
* ``user`` — the CoT is appended to the user turn (``… judge text CoT<Reward>``, no separator), followed
  by the generation prompt, as in the official stage 1 and ``inference.py``.

Without a CoT (the fast no-CoT mode), ``<Reward>`` takes the CoT's place.
"""

from __future__ import annotations

from typing import Literal, Sequence

from transformers import BatchFeature, ProcessorMixin

from .prompts import JudgeText
from .video import SampledVideo

CotPlacement = Literal["assistant", "user"]
COT_PLACEMENTS: tuple[str, ...] = ("assistant", "user")


def judge_messages(judge: JudgeText, tail: str = "") -> list[dict]:
    """One user turn: the judge text around the video, with ``tail`` appended to the text after it."""
    content: list[dict] = []
    if judge.prefix:
        content.append({"type": "text", "text": judge.prefix})
    content.append({"type": "video"})
    if judge.suffix + tail:
        content.append({"type": "text", "text": judge.suffix + tail})
    return [{"role": "user", "content": content}]


def generation_text(processor: ProcessorMixin, judge: JudgeText) -> str:
    """The chat-formatted prompt from which the model writes its CoT."""
    return processor.apply_chat_template(judge_messages(judge), add_generation_prompt=True, tokenize=False)


def scoring_text(
    processor: ProcessorMixin,
    judge: JudgeText,
    cot: str | None,
    *,
    placement: CotPlacement,
    reward_token: str,
) -> str:
    """The chat-formatted sequence whose ``<Reward>`` position the head reads."""
    tail = (cot or "") + reward_token
    if placement == "assistant":
        return generation_text(processor, judge) + tail
    if placement == "user":
        return processor.apply_chat_template(judge_messages(judge, tail), add_generation_prompt=True, tokenize=False)
    raise ValueError(f"unknown CoT placement {placement!r}; use one of {COT_PLACEMENTS}")


def encode(
    processor: ProcessorMixin,
    texts: Sequence[str],
    videos: Sequence[SampledVideo],
    *,
    padding_side: Literal["left", "right"] = "right",
) -> BatchFeature:
    """Tokenise ``texts`` (one video placeholder each) with their already sampled and resized ``videos``.

    Frames were sampled and resized by :func:`reward.video.load_video`, so the processor only rescales,
    normalises and patchifies them; the metadata gives Qwen3-VL its timestamps and Qwen2.5-VL its
    temporal grid spacing.
    """
    if len(texts) != len(videos):
        raise ValueError(f"got {len(texts)} texts for {len(videos)} videos")
    return encode_video_groups(processor, texts, [[video] for video in videos], padding_side=padding_side)


def encode_video_groups(
    processor: ProcessorMixin,
    texts: Sequence[str],
    video_groups: Sequence[Sequence[SampledVideo]],
    *,
    padding_side: Literal["left", "right"] = "right",
) -> BatchFeature:
    """As :func:`encode`, for texts with several video placeholders each (e.g. a pairwise judge's two clips):
    ``video_groups[i]`` holds text ``i``'s videos in the order of its placeholders."""
    if len(texts) != len(video_groups):
        raise ValueError(f"got {len(texts)} texts for {len(video_groups)} video groups")
    videos = [video for group in video_groups for video in group]
    return processor(
        text=list(texts),
        videos=[video.frames for video in videos],
        video_metadata=[video.hf_metadata() for video in videos],
        do_sample_frames=False,
        do_resize=False,
        cap_pixels_per_frame=True,  # a no-op without resizing; silences the processor's reminder
        padding=True,
        padding_side=padding_side,
        return_tensors="pt",
    )
