"""Rule-based rewards of DeScore stage-2 rollouts: R = w_q·R_qual + w_f·R_fmt + w_l·R_len (default 0.7 / 0.1 / 0.2).

Each rollout is one CoT written for one video; its ground truth is that video's five sub-dimension scores.

* R_fmt ∈ {0, 1}: the last ``<answer>`` block holds JSON (optionally json-fenced) with a ``dimensional_scores``
  key, as the official reward function checks. ``strict`` also requires reasoning text before the block — the
  project page's reading; the released prompt has no ``<think>`` tags, so "reasoning" is any non-blank text.
* R_qual = N_correct / N_total over the ground truth's keys, each compared with Python ``==`` as the official code
  does: ``2`` and ``"2"`` differ, ``"N/A"`` matches only ``"N/A"``. 0 when either side does not parse.
* R_len has two published forms (docs/descore_stage2.md): ``official_chars`` — steps 0 / 0.2 / 0.4 / 0.6 / 1.0 of the
  response's character count at 500 / 1000 / 1500 / 2000 (the released code, our default, as it trained the released
  model) — and ``paper_tokens`` — 0 below 500 tokens, linear up to 2000, then 1 (the paper). ``minimum`` and
  ``maximum`` move the bounds (the four steps sit at equal spacing between them).

The official code rounds R to three decimals; we keep the exact sum. A truncated CoT (cut at the token limit) has no
closing answer, so it earns R_fmt = R_qual = 0 and only its length reward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from .errors import ConfigError
from .prompts import answer_json

LengthForm = Literal["official_chars", "paper_tokens"]
LENGTH_FORMS: tuple[str, ...] = ("official_chars", "paper_tokens")
OFFICIAL_LENGTH_STEPS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6)  # below the 1st, 2nd, 3rd, 4th bound; 1.0 above


@dataclass(frozen=True)
class RolloutRewardSettings:
    """Weights and forms of the rollout reward; defaults are the official stage-2 settings."""

    quality_weight: float = 0.7
    format_weight: float = 0.1
    length_weight: float = 0.2
    length_form: LengthForm = "official_chars"
    length_min: int = 500
    length_max: int = 2000
    strict_format: bool = False

    def __post_init__(self) -> None:
        if self.length_form not in LENGTH_FORMS:
            raise ConfigError(f"length_form must be one of {LENGTH_FORMS}, got {self.length_form!r}")
        weights = (self.quality_weight, self.format_weight, self.length_weight)
        if not all(math.isfinite(weight) and weight >= 0 for weight in weights):
            raise ConfigError(f"rollout reward weights must be finite and >= 0, got {weights}")
        if not 0 <= self.length_min < self.length_max:
            raise ConfigError(f"need 0 <= length_min < length_max, got {self.length_min} and {self.length_max}")


@dataclass(frozen=True)
class RolloutReward:
    """One rollout's reward and its terms; ``parsed`` says whether the answer JSON had ``dimensional_scores``."""

    total: float
    quality: float
    format: float
    length: float
    parsed: bool


def predicted_scores(text: str) -> dict[str, Any] | None:
    """The ``dimensional_scores`` object of the answer block, or None if there is none."""
    payload, _ = answer_json(text)
    scores = payload.get("dimensional_scores") if isinstance(payload, dict) else None
    return scores if isinstance(scores, dict) else None


def format_reward(text: str, *, strict: bool = False) -> float:
    """1.0 if the answer block parses and holds ``dimensional_scores``; ``strict`` also needs text before it."""
    payload, _ = answer_json(text)
    if not (isinstance(payload, dict) and "dimensional_scores" in payload):
        return 0.0
    if strict and not text[: text.rfind("<answer>")].strip():
        return 0.0
    return 1.0


def quality_reward(text: str, truth: Mapping[str, Any] | None) -> float:
    """Share of the ground truth's sub-scores the rollout reproduces exactly (0 if either side does not parse)."""
    predicted = predicted_scores(text)
    if predicted is None or not isinstance(truth, Mapping) or not truth:
        return 0.0
    correct = sum(key in predicted and _same_score(predicted[key], value) for key, value in truth.items())
    return correct / len(truth)


def _same_score(predicted: Any, truth: Any) -> bool:
    """Python ``==`` as the official comparison, except that a JSON ``true`` is not the score 1."""
    return isinstance(predicted, bool) == isinstance(truth, bool) and predicted == truth


def length_reward(text: str, num_tokens: int, *, form: LengthForm, minimum: int = 500, maximum: int = 2000) -> float:
    """R_len of a response of ``len(text)`` characters and ``num_tokens`` tokens, in the given form."""
    if form == "official_chars":
        length, width = len(text), (maximum - minimum) / 3
        for step, value in enumerate(OFFICIAL_LENGTH_STEPS):
            if length < minimum + step * width:
                return value
        return 1.0
    if form == "paper_tokens":
        return min(max((num_tokens - minimum) / (maximum - minimum), 0.0), 1.0)
    raise ConfigError(f"length form must be one of {LENGTH_FORMS}, got {form!r}")


def rollout_reward(
    text: str, *, num_tokens: int, truth: Mapping[str, Any] | None, settings: RolloutRewardSettings
) -> RolloutReward:
    """The weighted rollout reward of one decoded response (special tokens skipped) and its terms."""
    quality = quality_reward(text, truth)
    fmt = format_reward(text, strict=settings.strict_format)
    length = length_reward(
        text, num_tokens, form=settings.length_form, minimum=settings.length_min, maximum=settings.length_max
    )
    total = settings.quality_weight * quality + settings.format_weight * fmt + settings.length_weight * length
    return RolloutReward(total=total, quality=quality, format=fmt, length=length, parsed=predicted_scores(text) is not None)


@dataclass(frozen=True)
class OfficialAnswer:
    """The ground truth of an official stage-2 row: the preference (+1 video 1, −1 video 2, 0 neither) and the
    sub-scores of each video."""

    label: int
    scores_a: dict[str, Any]
    scores_b: dict[str, Any]


OFFICIAL_VERDICTS = {"video 1 is better": 1, "video 2 is better": -1}


def official_ground_truth(answer: str) -> OfficialAnswer:
    """Read the ``answer`` column of the official stage-2 CSV: an answer block holding ``gsb_result``,
    ``video_1_scores`` and ``video_2_scores``. Any verdict other than the two "better" ones is a tie (the official
    code skips those pairs in the BT term).

    Raises:
        ValueError: the block is missing or not JSON, or a key is missing or not of the expected type.
    """
    payload, reason = answer_json(answer)
    if reason is not None:
        raise ValueError(f"column 'answer': {reason}")
    if not isinstance(payload, dict):
        raise ValueError(f"column 'answer' holds {type(payload).__name__}, not a JSON object")
    missing = [key for key in ("gsb_result", "video_1_scores", "video_2_scores") if key not in payload]
    if missing:
        raise ValueError(f"column 'answer' lacks {missing}")
    scores = payload["video_1_scores"], payload["video_2_scores"]
    if not all(isinstance(value, dict) and value for value in scores):
        raise ValueError("column 'answer': video_1_scores and video_2_scores must be non-empty objects")
    verdict = str(payload["gsb_result"]).strip().lower()
    return OfficialAnswer(label=OFFICIAL_VERDICTS.get(verdict, 0), scores_a=scores[0], scores_b=scores[1])
