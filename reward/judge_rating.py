"""The maths and the configuration checks of a VLM judge that rates by next-token probabilities.

A judge is asked a question whose answer is one token of a closed set: a rating label ("1" … "5", or words)
or, in pairwise mode, the number of the better video ("1", "2", optionally a tie label). One forward gives
the next-token distribution p at the position after the prompt; the answer set's share of it is renormalised:

    q(s) = p(s) / Σ_s' p(s'),   expected rating E = Σ_s value(s) · q(s),   rating mass M = Σ_s p(s)

E is the Q-Align reading of discrete levels (Wu et al., "Q-Align: Teaching LMMs for Visual Scoring via
Discrete Text-Defined Levels", arXiv 2312.17090, Eq. 3: a softmax over the level tokens' logits, which equals
q). M says whether the judge is answering at all: a model that wants to write "The video …" puts little mass
on the labels, and its E is noise. Nothing here touches a model or a file; docs/reward_zoo/vlm_judge.md is
the user's description.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any, NamedTuple

import torch

from .errors import ConfigError

# Placeholders a question may hold: the generation prompt and the list of allowed answers.
PLACEHOLDERS: tuple[str, ...] = ("prompt", "answers")
_PLACEHOLDER = re.compile(r"\{(\w*)\}")


# ----- configuration ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RatingScale:
    """The answers a judge may give and the value each stands for, worst first."""

    labels: tuple[str, ...]
    values: tuple[float, ...]

    @classmethod
    def from_option(cls, scale: Any) -> RatingScale:
        """``[low, high]`` (integers, both included), a list of labels (valued 1, 2, … in order) or a
        mapping ``{label: value}``.

        Raises:
            ConfigError: any other shape, fewer than two answers, repeated or empty labels, non-finite values.
        """
        if isinstance(scale, Mapping):
            labels, values = list(scale), list(scale.values())
        elif isinstance(scale, Sequence) and not isinstance(scale, str) and all(_is_int(v) for v in scale):
            if len(scale) != 2 or not scale[0] < scale[1]:
                raise ConfigError(f"scale {list(scale)!r}: an integer scale is [low, high] with low < high, e.g. [1, 5]")
            numbers = range(scale[0], scale[1] + 1)
            labels, values = [str(n) for n in numbers], list(numbers)
        elif isinstance(scale, Sequence) and not isinstance(scale, str) and all(isinstance(v, str) for v in scale):
            labels, values = list(scale), list(range(1, len(scale) + 1))
        else:
            raise ConfigError(
                f"scale {scale!r} is not understood; give [low, high] (integers), a list of labels worst first "
                "(['bad', 'fair', 'good']) or a mapping {label: value}"
            )
        if len(labels) < 2:
            raise ConfigError(f"scale {scale!r} needs at least two answers")
        if not all(isinstance(label, str) and label.strip() for label in labels):
            raise ConfigError(f"scale {scale!r}: every label must be a non-empty string")
        if len(set(labels)) != len(labels):
            raise ConfigError(f"scale {scale!r} repeats a label")
        if not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ConfigError(f"scale {scale!r}: every value must be a finite number")
        return cls(tuple(labels), tuple(float(v) for v in values))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_question(name: str, template: Any) -> str:
    """A question template: a non-empty string whose only placeholders are ``{prompt}`` and ``{answers}``.

    Raises:
        ConfigError: naming the question and the unknown placeholder (a typo such as ``{promt}`` would
            otherwise reach the judge verbatim).
    """
    if not isinstance(template, str) or not template.strip():
        raise ConfigError(f"question {name!r} must be a non-empty string, got {template!r}")
    unknown = sorted(set(_PLACEHOLDER.findall(template)) - set(PLACEHOLDERS))
    if unknown:
        raise ConfigError(
            f"question {name!r} has placeholder(s) {['{' + u + '}' for u in unknown]}; "
            f"a question may use only {['{' + p + '}' for p in PLACEHOLDERS]}"
        )
    return template


def render_question(template: str, *, prompt: str, answers: str) -> str:
    """Fill the placeholders (``{answers}`` first, so a prompt that contains ``{answers}`` stays as written)."""
    return template.replace("{answers}", answers).replace("{prompt}", prompt)


def question_weights(names: Sequence[str], weights: Mapping[str, float] | None) -> tuple[float, ...]:
    """One weight per question (all 1 without ``weights``).

    Raises:
        ConfigError: ``weights`` misses or adds a question, or holds a negative, non-finite or all-zero weight.
    """
    if weights is None:
        return tuple(1.0 for _ in names)
    if not isinstance(weights, Mapping) or set(weights) != set(names):
        raise ConfigError(f"weights must map every question to a number: questions {list(names)}, weights {weights!r}")
    values = tuple(weights[name] for name in names)
    if not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(f"weights must be finite numbers >= 0, got {dict(weights)!r}")
    if sum(values) <= 0:
        raise ConfigError(f"weights must not all be zero, got {dict(weights)!r}")
    return tuple(float(v) for v in values)


class AnswerTokens(NamedTuple):
    """Where the answer is read: the text the prompt ends with, and the one token id of each label."""

    answer_prefix: str
    token_ids: tuple[int, ...]


def answer_tokens(tokenizer: Any, context: str, answer_prefix: str, labels: Sequence[str]) -> AnswerTokens:
    """The single token each label is written as right after ``context + answer_prefix``.

    A label counts as one token when tokenising the prompt followed by the label gives the prompt's own tokens
    plus exactly one more. Tokenisers differ on where a space goes: Qwen splits "Rating: 3" into
    ``… ':', ' ', '3'`` while a GPT-2-style BPE writes ``… ':', ' 3'``. So when ``answer_prefix`` ends in
    whitespace and the labels do not fit after it, that whitespace moves into the labels (the prompt then
    ends at "Rating:" and the answer tokens are " 1" … " 5").

    Raises:
        ConfigError: a label is not one token in either form (the message lists each label's tokens), or two
            labels share a token.
    """
    candidates = [(answer_prefix, list(labels))]
    stripped = answer_prefix.rstrip()
    if stripped != answer_prefix:
        space = answer_prefix[len(stripped):]
        candidates.append((stripped, [space + label for label in labels]))
    for prefix, written in candidates:
        ids = [_single_token(tokenizer, context + prefix, text) for text in written]
        if all(token is not None for token in ids):
            if len(set(ids)) != len(ids):
                raise ConfigError(f"answers {list(labels)} do not map to distinct tokens: {ids}")
            return AnswerTokens(prefix, tuple(ids))
    pieces = {
        repr(text): tokenizer.convert_ids_to_tokens(tokenizer.encode(text, add_special_tokens=False))
        for _, written in candidates for text in written
    }
    raise ConfigError(
        f"every answer must be exactly one token of the judge's tokenizer after the answer prefix "
        f"{answer_prefix!r}, but {pieces} (label: its tokens); use labels that are single tokens "
        "(e.g. the digits 1-9 for Qwen tokenizers, where '10' is two tokens)"
    )


def _single_token(tokenizer: Any, prompt: str, label: str) -> int | None:
    before = tokenizer.encode(prompt, add_special_tokens=False)
    after = tokenizer.encode(prompt + label, add_special_tokens=False)
    if len(after) == len(before) + 1 and after[: len(before)] == before:
        return after[-1]
    return None


# ----- maths --------------------------------------------------------------------------------------------


class AnswerDistribution(NamedTuple):
    """``probabilities`` (B, S): q over the S answers, each row summing to 1; ``mass`` (B,): M."""

    probabilities: torch.Tensor
    mass: torch.Tensor


def answer_distribution(logits: torch.Tensor, token_ids: Sequence[int]) -> AnswerDistribution:
    """q and M from next-token ``logits`` (B, V), computed in float32 whatever the model's dtype."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)[:, list(token_ids)]
    return AnswerDistribution(torch.softmax(log_probs, dim=-1), log_probs.exp().sum(dim=-1))


def expected_rating(probabilities: torch.Tensor, values: Sequence[float]) -> torch.Tensor:
    """E = Σ value(s) · q(s) per row of ``probabilities`` (B, S) → (B,)."""
    return probabilities @ torch.tensor(values, dtype=probabilities.dtype, device=probabilities.device)


@dataclass(frozen=True)
class ChoiceProbabilities:
    """One order's answer as shown: q("video 1 better"), q("video 2 better"), q(tie) (None without a tie
    answer), and the mass M the answers got."""

    first: float
    second: float
    tie: float | None
    mass: float


@dataclass(frozen=True)
class PairJudgement:
    """A pairwise judge's verdict on (A, B), averaged over both presentation orders.

    With (first, second) the answer when A is shown first and (first', second') when B is shown first:
    ``prob_a`` = (first + second') / 2, ``prob_b`` = (second + first') / 2, ``prob_tie`` = (tie + tie') / 2.
    A judge that prefers whichever video comes first (position bias) adds the same amount to both sides, so
    the average cancels it. ``orders`` keeps both raw answers: (A first, B first). NaN probabilities and
    ``error`` (a video could not be read) or ``parse_error`` (the answers got less mass than
    ``min_rating_mass``) mark a failure.
    """

    prob_a: float
    prob_b: float
    prob_tie: float | None
    orders: tuple[ChoiceProbabilities, ChoiceProbabilities] | None = None
    parse_error: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.parse_error is None and math.isfinite(self.prob_a)

    @property
    def margin(self) -> float:
        """log P(A better) − log P(B better): the score difference the preference-accuracy metrics take."""
        return math.log(self.prob_a) - math.log(self.prob_b) if self.ok else math.nan

    @property
    def decision(self) -> int | None:
        """+1 (A better), −1 (B better) or 0 (tie): the most probable of the three (without a tie answer,
        0 only when P(A) = P(B) exactly); None for a failed judgement."""
        if not self.ok:
            return None
        if self.prob_tie is not None and self.prob_tie > max(self.prob_a, self.prob_b):
            return 0
        return (self.prob_a > self.prob_b) - (self.prob_a < self.prob_b)


def combine_orders(a_first: ChoiceProbabilities, b_first: ChoiceProbabilities) -> PairJudgement:
    """Average the two presentation orders of one pair (see :class:`PairJudgement`)."""
    tie = None if a_first.tie is None else (a_first.tie + b_first.tie) / 2
    return PairJudgement(
        prob_a=(a_first.first + b_first.second) / 2,
        prob_b=(a_first.second + b_first.first) / 2,
        prob_tie=tie,
        orders=(a_first, b_first),
    )
