"""``vlm_judge``: any instruct image-text-to-text model as a reward, read from its answer probabilities.

The judge sees the video and a rubric question ending in "answer with one of: 1, 2, 3, 4, 5"; the reward is
the expected rating under its next-token distribution restricted to the rating tokens (one forward, no
sampling; :mod:`reward.judge_rating` has the maths). Several questions may be asked (one forward each) and
averaged. Pairwise-only judges are asked which of two videos is better, in both orders.

Works with Qwen2.5-VL, Qwen3-VL and checkpoints built on them (VideoScore2, UnifiedReward): whatever
``AutoModelForImageTextToText`` and ``AutoProcessor`` open. Options, defaults and deviations from those
models' own inference scripts: docs/reward_zoo/vlm_judge.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

from .base import RewardOutput, ScoredItem, register_reward, sampled_batches
from .checkpoint import resolve_model_source
from .errors import CheckpointError, ConfigError, VideoDecodeError
from .inputs import encode_video_groups
from .judge_rating import (
    AnswerDistribution,
    ChoiceProbabilities,
    PairJudgement,
    RatingScale,
    answer_distribution,
    answer_tokens,
    check_question,
    combine_orders,
    expected_rating,
    question_weights,
    render_question,
)
from .modeling import pixel_factor
from .scoring import default_device, default_dtype
from .video import DecodeLimits, SampledVideo, VideoSource, VideoSpec, load_video

logger = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("pointwise", "pairwise")
DEFAULT_SCALE = (1, 5)
MASS_SUFFIX = "_rating_mass"
DEFAULT_QUESTION = (
    'This video was generated from the text prompt "{prompt}". Rate it on the scale {answers}, from worst to '
    "best, judging its visual quality, its motion and how faithfully it shows the prompt. Reply with the rating only."
)
PAIR_QUESTION = (
    'Both videos were generated from the text prompt "{prompt}". Which one is better, judging visual quality, '
    "motion and how faithfully it shows the prompt? Reply with one of {answers} only: 1 if Video 1 is better, "
    "2 if Video 2 is better"
)
PAIR_LABELS = ("1", "2")
# qwen-vl-utils' default video sampling (2 fps, 4-768 frames, at least 128 merged tokens per frame) with
# VideoReward's and DeScore's 448² frames, so a judge and DeScore side by side see the same pixels.
DEFAULT_FPS = 2.0
DEFAULT_MAX_PIXELS = 200_704
MIN_TOKENS_PER_FRAME = 128


def judge_video_spec(processor: ProcessorMixin, overrides: Mapping[str, Any] | None = None) -> VideoSpec:
    """The judge's :class:`VideoSpec`: the defaults above with the processor's pixel factor (32 for Qwen3-VL,
    28 for Qwen2.5-VL), then ``overrides`` (any VideoSpec field).

    Raises:
        ConfigError: an unknown field, or a ``pixel_factor`` other than the processor's.
    """
    factor = pixel_factor(processor)
    values = {"fps": DEFAULT_FPS, "min_pixels": MIN_TOKENS_PER_FRAME * factor**2, "max_pixels": DEFAULT_MAX_PIXELS,
              "pixel_factor": factor}
    overrides = dict(overrides or {})
    if overrides.get("pixel_factor", factor) != factor:
        raise ConfigError(f"video_spec.pixel_factor is {overrides['pixel_factor']} but the judge's processor merges "
                          f"patches to {factor} px; leave it out (it is read from the processor)")
    try:
        return VideoSpec.from_dict(values | overrides)
    except ValueError as error:
        raise ConfigError(f"video_spec: {error}") from error


def read_questions(questions: Mapping[str, str] | None, questions_file: str | Path | None) -> dict[str, str] | None:
    """The rubric: ``{name: template}`` given inline or in a YAML file of that shape; None if neither.

    Raises:
        ConfigError: both given, the file is missing or holds no mapping, or a template is invalid.
    """
    if questions is not None and questions_file is not None:
        raise ConfigError("give questions or questions_file, not both")
    if questions_file is not None:
        source = Path(questions_file)
        if not source.is_file():
            raise ConfigError(f"questions_file {source} is not a file")
        try:
            questions = yaml.safe_load(source.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ConfigError(f"questions_file {source} is not readable YAML: {error}") from error
    if questions is None:
        return None
    if not isinstance(questions, Mapping) or not questions:
        raise ConfigError(f"questions must be a non-empty mapping {{name: template}}, got {questions!r}")
    return {str(name): check_question(str(name), template) for name, template in questions.items()}


class Rubric(NamedTuple):
    """What the judge is asked and how its answers count: ``values`` and ``weights`` (one per question, the
    reward being their weighted mean) are None in pairwise mode."""

    questions: dict[str, str]
    labels: tuple[str, ...]
    values: tuple[float, ...] | None
    weights: tuple[float, ...] | None


def pointwise_rubric(
    questions: dict[str, str] | None, *, scale: Any, weights: Mapping[str, float] | None, dimension: str | None,
    tie_label: str | None,
) -> Rubric:
    """The rating questions (default: ``overall``), their scale (default [1, 5]) and weights; ``dimension``
    is the weight 1 on one question and 0 on the others.

    Raises:
        ConfigError: a bad scale or weights, an unknown dimension, dimension with weights, or a tie label.
    """
    if tie_label is not None:
        raise ConfigError("tie_label applies to mode: pairwise only")
    questions = questions or {"overall": DEFAULT_QUESTION}
    names = list(questions)
    if dimension is not None:
        if weights is not None:
            raise ConfigError("give weights (a weighted mean of the questions) or dimension (one question), not both")
        if dimension not in names:
            raise ConfigError(f"dimension {dimension!r} is not a question; questions: {names}")
        weights = {name: float(name == dimension) for name in names}
    rating = RatingScale.from_option(list(DEFAULT_SCALE) if scale is None else scale)
    return Rubric(questions, rating.labels, rating.values, question_weights(names, weights))


def pairwise_rubric(questions: dict[str, str] | None, *, tie_label: str | None, **pointwise_options: Any) -> Rubric:
    """One question (default: which video is better) answered "1", "2" or ``tie_label``.

    Raises:
        ConfigError: several questions, a tie label that is a video's number, or a pointwise option.
    """
    given = sorted(name for name, value in pointwise_options.items() if value is not None)
    if given:
        raise ConfigError(f"{given} apply to mode: pointwise only; a pairwise judge answers {list(PAIR_LABELS)} (+ tie_label)")
    labels = PAIR_LABELS
    if tie_label is not None:
        if not isinstance(tie_label, str) or not tie_label.strip() or tie_label in PAIR_LABELS:
            raise ConfigError(f"tie_label must be a non-empty string other than {list(PAIR_LABELS)}, got {tie_label!r}; e.g. '0'")
        labels += (tie_label,)
    if questions is None:
        tail = f", {tie_label} if they are equally good." if tie_label is not None else "."
        questions = {"preference": PAIR_QUESTION + tail}
    if len(questions) != 1:
        raise ConfigError(f"mode: pairwise asks exactly one question, got {list(questions)}")
    return Rubric(questions, labels, None, None)


@register_reward("vlm_judge")
class VlmJudge:
    """A VLM judge as a :class:`reward.base.RewardModel` (pointwise) or a pair comparer (pairwise).

    Args:
        path: an instruct ``AutoModelForImageTextToText`` checkpoint: a local folder or a hub id.
        revision: branch, tag or commit of a hub id.
        mode: ``pointwise`` (:meth:`score`: one expected rating per video) or ``pairwise`` (:meth:`compare`).
        scale: pointwise answers: ``[low, high]`` integers, labels worst first, or ``{label: value}``
            (default ``[1, 5]``); every label must be one token.
        questions: ``{name: template}``; templates may use ``{prompt}`` and ``{answers}`` (default: one
            question ``overall``; in pairwise mode exactly one question).
        questions_file: a YAML file holding that mapping instead.
        weights: pointwise ``{name: weight}``: the reward is the weighted mean of the questions' ratings.
        dimension: pointwise: the one question whose rating is the reward (the others are still asked).
        answer_prefix: text the answer starts with, e.g. ``"Rating: "``, after the chat's generation prompt.
        tie_label: pairwise: a third answer meaning "equally good" (default: none; the judge must choose).
        min_rating_mass: below this answer mass an item fails (NaN, ``parse_error``) instead of being scored.
        video_spec: :class:`VideoSpec` fields overriding the judge's defaults (see :func:`judge_video_spec`).
        batch_size: videos (pointwise) or pairs (pairwise) per forward.
        skip_invalid: record unreadable videos as failed items instead of raising.
        progress, device, dtype, attn_implementation, decode_limits: as for ``descore``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        revision: str | None = None,
        mode: str = "pointwise",
        scale: Any = None,
        questions: Mapping[str, str] | None = None,
        questions_file: str | Path | None = None,
        weights: Mapping[str, float] | None = None,
        dimension: str | None = None,
        answer_prefix: str = "",
        tie_label: str | None = None,
        min_rating_mass: float | None = None,
        video_spec: Mapping[str, Any] | None = None,
        batch_size: int = 4,
        skip_invalid: bool = False,
        progress: bool = False,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        attn_implementation: str | None = None,
        decode_limits: DecodeLimits | Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"vlm_judge mode must be one of {MODES}, got {mode!r}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if min_rating_mass is not None and not 0 <= min_rating_mass <= 1:
            raise ConfigError(f"min_rating_mass must lie in [0, 1], got {min_rating_mass}")
        questions = read_questions(questions, questions_file)
        if mode == "pointwise":
            self.rubric = pointwise_rubric(questions, scale=scale, weights=weights, dimension=dimension, tie_label=tie_label)
        else:
            self.rubric = pairwise_rubric(questions, tie_label=tie_label, scale=scale, weights=weights, dimension=dimension)
        self.mode, self.min_rating_mass = mode, min_rating_mass
        self.batch_size, self.skip_invalid, self.progress = batch_size, skip_invalid, progress
        if isinstance(decode_limits, Mapping):
            decode_limits = DecodeLimits(**decode_limits)
        self.decode_limits = decode_limits or DecodeLimits()
        self.device = torch.device(device) if device is not None else default_device()
        self.model, self.processor = _load_judge(path, revision, default_dtype(dtype, self.device), attn_implementation)
        self.model.to(self.device).eval()
        self.video_spec = judge_video_spec(self.processor, video_spec)
        context = self.processor.apply_chat_template(self._messages("?"), add_generation_prompt=True, tokenize=False)
        labels = self.rubric.labels
        self.answer_prefix, self.token_ids = answer_tokens(self.processor.tokenizer, context, answer_prefix, labels)
        self.name = "vlm_judge"

    # ----- pointwise ------------------------------------------------------------------------------------

    def score(self, videos: Sequence[VideoSource], prompts: Sequence[str]) -> RewardOutput:
        """One expected rating per video; ``sub_scores`` hold each question's rating and answer mass."""
        if self.mode != "pointwise":
            raise ConfigError("this vlm_judge is in mode 'pairwise': it only compares pairs of videos; call "
                              "compare(videos_a, videos_b, prompts), or build it with mode: pointwise to score videos")
        if len(videos) != len(prompts):
            raise ValueError(f"got {len(videos)} videos and {len(prompts)} prompts")
        items: list[ScoredItem | None] = [None] * len(videos)
        batches = sampled_batches(videos, self.video_spec, self.decode_limits, batch_size=self.batch_size,
                                  skip_invalid=self.skip_invalid, items=items,
                                  progress="scoring (vlm_judge)" if self.progress else None)
        for loaded in batches:
            ratings = {}
            for name, template in self.rubric.questions.items():
                texts = [self._prompt_text(template, prompts[index]) for index, _ in loaded]
                answers = self._answer([[clip] for _, clip in loaded], texts)
                expected = expected_rating(answers.probabilities, self.rubric.values)
                ratings[name] = (expected.tolist(), answers.mass.tolist())
            for row, (index, _) in enumerate(loaded):
                items[index] = self._rated({name: (value[row], mass[row]) for name, (value, mass) in ratings.items()})
        return RewardOutput(items=items)

    def _rated(self, ratings: Mapping[str, tuple[float, float]]) -> ScoredItem:
        sub_scores = {}
        for name, (value, mass) in ratings.items():
            sub_scores[name], sub_scores[name + MASS_SUFFIX] = value, mass
        quiet = self._quiet({name: mass for name, (_, mass) in ratings.items()})
        if quiet:
            return ScoredItem(reward=math.nan, sub_scores=sub_scores, parse_ok=False, parse_error=quiet)
        weights = self.rubric.weights
        reward = sum(w * ratings[name][0] for name, w in zip(self.rubric.questions, weights)) / sum(weights)
        return ScoredItem(reward=reward, sub_scores=sub_scores, parse_ok=None if self.min_rating_mass is None else True)

    def _quiet(self, masses: Mapping[str, float]) -> str | None:
        """Why the judge counts as not answering (answer mass below ``min_rating_mass``), or None."""
        if self.min_rating_mass is None:
            return None
        low = {name: round(mass, 6) for name, mass in masses.items() if mass < self.min_rating_mass}
        if not low:
            return None
        return (f"the answer tokens {list(self.rubric.labels)} got probability mass {low}, "
                f"below min_rating_mass {self.min_rating_mass}: the judge is not answering on the scale")

    # ----- pairwise -------------------------------------------------------------------------------------

    def compare(
        self, videos_a: Sequence[VideoSource], videos_b: Sequence[VideoSource], prompts: Sequence[str]
    ) -> list[PairJudgement]:
        """Which of each pair is better, asked with A shown first and with B shown first, then averaged
        (:class:`reward.judge_rating.PairJudgement`; ``margin`` and ``decision`` feed the accuracy metrics)."""
        if self.mode != "pairwise":
            raise ConfigError("compare() needs a vlm_judge built with mode: pairwise; this one rates single videos")
        if not len(videos_a) == len(videos_b) == len(prompts):
            raise ValueError(f"got {len(videos_a)} A videos, {len(videos_b)} B videos and {len(prompts)} prompts")
        (template,) = self.rubric.questions.values()
        judgements: list[PairJudgement | None] = [None] * len(prompts)
        for start in tqdm(range(0, len(prompts), self.batch_size), desc="comparing (vlm_judge)", disable=not self.progress):
            loaded = []
            for index in range(start, min(start + self.batch_size, len(prompts))):
                pair = (self._load(videos_a[index]), self._load(videos_b[index]))
                failed = [str(clip) for clip in pair if isinstance(clip, VideoDecodeError)]
                if failed:
                    judgements[index] = PairJudgement(math.nan, math.nan, None, error="; ".join(failed))
                else:
                    loaded.append((index, pair))
            if not loaded:
                continue
            texts = [self._prompt_text(template, prompts[index]) for index, _ in loaded]
            a_first = self._answer([[a, b] for _, (a, b) in loaded], texts)
            b_first = self._answer([[b, a] for _, (a, b) in loaded], texts)
            for row, (index, _) in enumerate(loaded):
                judgements[index] = self._judged(_choices(a_first, row), _choices(b_first, row))
        return judgements

    def _judged(self, a_first: ChoiceProbabilities, b_first: ChoiceProbabilities) -> PairJudgement:
        quiet = self._quiet({"A first": a_first.mass, "B first": b_first.mass})
        if quiet:
            tie = None if a_first.tie is None else math.nan
            return PairJudgement(math.nan, math.nan, tie, orders=(a_first, b_first), parse_error=quiet)
        return combine_orders(a_first, b_first)

    # ----- shared ---------------------------------------------------------------------------------------

    def _messages(self, question: str) -> list[dict]:
        """One user turn: the video then the question, or "Video 1:", video, "Video 2:", video, question."""
        if self.mode == "pointwise":
            content = [{"type": "video"}, {"type": "text", "text": question}]
        else:
            content = [{"type": "text", "text": "Video 1:"}, {"type": "video"}, {"type": "text", "text": "\nVideo 2:"},
                       {"type": "video"}, {"type": "text", "text": "\n" + question}]
        return [{"role": "user", "content": content}]

    def _prompt_text(self, template: str, prompt: str) -> str:
        """The chat-formatted text up to where the answer token is read."""
        question = render_question(template, prompt=prompt, answers=", ".join(self.rubric.labels))
        chat = self.processor.apply_chat_template(self._messages(question), add_generation_prompt=True, tokenize=False)
        return chat + self.answer_prefix

    @torch.no_grad()
    def _answer(self, video_groups: Sequence[Sequence[SampledVideo]], texts: Sequence[str]) -> AnswerDistribution:
        """One forward over the batch, left-padded so that the last position is every row's answer position."""
        batch = encode_video_groups(self.processor, texts, video_groups, padding_side="left").to(self.device)
        logits = self.model(**batch, logits_to_keep=1).logits[:, -1]
        answers = answer_distribution(logits, self.token_ids)
        return AnswerDistribution(answers.probabilities.cpu(), answers.mass.cpu())

    def _load(self, source: VideoSource) -> SampledVideo | VideoDecodeError:
        try:
            return load_video(source, self.video_spec, limits=self.decode_limits)
        except VideoDecodeError as error:
            if not self.skip_invalid:
                raise
            logger.warning("skipping %s", error)
            return error


def _choices(answers: AnswerDistribution, row: int) -> ChoiceProbabilities:
    probabilities = answers.probabilities[row].double().tolist()
    tie = probabilities[2] if len(probabilities) == 3 else None
    return ChoiceProbabilities(probabilities[0], probabilities[1], tie, float(answers.mass[row]))


def _load_judge(path: str | Path, revision: str | None, dtype: Any, attn_implementation: str | None):
    """The judge model and its processor, every weight key checked."""
    folder = resolve_model_source(path, revision=revision).folder
    model, info = AutoModelForImageTextToText.from_pretrained(
        folder, dtype=dtype, attn_implementation=attn_implementation, output_loading_info=True, use_safetensors=True
    )
    problems = {kind: info.get(kind) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(kind)}
    if problems:
        raise CheckpointError(f"{folder}: the judge's weights do not match its config: {problems}")
    return model, AutoProcessor.from_pretrained(folder)
