"""The DeScore judge prompt and the parser for its answer block.

The prompt follows the structure of the official DeScore judge (``TEMP`` in ``inference.py`` of
KlingAIResearch/DeScore; docs/descore.md, "The judge prompt and the answer"), written in our
own words: the model first decodes the T2V prompt into expected visuals, then describes what the clip
really shows, then scores five sub-dimensions (2 / 1 / 0 / "N/A") and gives an overall score in 1–5,
and finally emits only a JSON object inside ``<answer>`` tags. Like the official parser (and unlike the
project page), no ``<think>`` block is required (docs/descore.md, "Where the kit departs").
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .errors import ConfigError

SUB_DIMENSIONS: tuple[str, ...] = ("subject", "dynamics", "camera", "environment", "style")
VIDEO_PLACEHOLDER = "<video>"
SUB_SCORE_VALUES: tuple[object, ...] = (0, 1, 2, "N/A")

JUDGE_TEMPLATE = """You are a strict, expert judge of text-to-video alignment. Decide how faithfully the generated \
video below realises its text prompt.

Text prompt: [{prompt}]

Video: <video>

Work in three stages and write your reasoning as plain text.
1. Expected visuals. Before looking at the video, derive a reference from the prompt: the objects, people, \
actions and on-screen text it names explicitly, and, for abstract wording (a mood, a "cinematic" look, chaos), \
the observable cues that would express it, such as lighting, depth of field or the pace of camera motion.
2. Visual evidence. Report neutrally what the video actually shows, without bending the description towards \
the prompt: the main subject, exactly what moves and how, and any visual defects, invented content or \
misspelled text.
3. Dimensional analysis. Compare the evidence with the expectations on five dimensions:
- subject (primary): the main entities, and correct spelling of any rendered text;
- dynamics (primary): actions, physical plausibility, how events unfold over time;
- camera (secondary): camera motion, viewing angle, shot type and framing;
- environment (secondary): scene, background and lighting;
- style (secondary): artistic style, aesthetics and overall visual quality.
Score each dimension 2 (fully correct), 1 (partly correct or minor flaws), 0 (failed or hallucinated) or \
"N/A" (the prompt does not constrain it).

Then give an overall score between 1.00 and 5.00:
- 5.00: subject and dynamics are 2, every secondary dimension is 2 or "N/A", and nothing is wrong;
- 4.00-4.99: subject and dynamics are 2, and the only defects are in secondary dimensions;
- 3.00-3.99: one primary dimension is 1, or the main intent is met but secondary dimensions clearly fail;
- 2.00-2.99: one primary dimension is 0, with serious hallucinated content;
- 1.00-1.99: subject and dynamics are both 0, so video and prompt are unrelated.

After your reasoning, output only a JSON object, with no reasoning inside it, between <answer> and </answer>, \
fenced as json, in exactly this form:
<answer>
```json
{{"dimensional_scores": {{"subject": 2, "dynamics": 1, "camera": "N/A", "environment": 2, "style": 1}}, \
"overall_score": 3.50}}
```
</answer>"""


@dataclass(frozen=True)
class JudgeText:
    """The user-turn text around the video: ``prefix`` comes before the video, ``suffix`` after it."""

    prefix: str
    suffix: str


def check_judge_template(template: str) -> str:
    """Return ``template`` if it can build judge text, else raise ConfigError saying what is wrong.

    A template is ``str.format`` text: one ``{prompt}`` placeholder or more (the T2V prompt), literal braces
    written ``{{`` and ``}}``, no other field, and exactly one ``<video>`` marker where the video goes.
    """
    problems = []
    markers = template.count(VIDEO_PLACEHOLDER)
    if markers != 1:
        problems.append(f"it has {markers} {VIDEO_PLACEHOLDER} markers (exactly one is needed)")
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as error:
        problems.append(f"its braces do not parse ({error}); write a literal brace as {{{{ or }}}}")
    else:
        if "prompt" not in fields:
            problems.append("it has no {prompt} placeholder")
        others = sorted(fields - {"prompt"})
        if others:
            problems.append(f"it has placeholders other than {{prompt}}: {others} (write literal braces as {{{{ }}}})")
    if problems:
        raise ConfigError(f"judge template {template[:80]!r}...: " + "; ".join(problems))
    return template


def read_judge_template(path: str | Path) -> str:
    """A judge template from a text file (see :func:`check_judge_template`); one final newline, which editors
    add, is dropped, so a file holding exactly the template text reproduces it."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"judge template file {path} does not exist")
    try:
        text = file.read_text(encoding="utf-8").removesuffix("\n")
    except UnicodeDecodeError as error:
        raise ConfigError(f"judge template file {path} is not UTF-8 text ({error})") from error
    try:
        return check_judge_template(text)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def template_sha256(template: str) -> str:
    """Content digest naming a template in run records and score settings."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def judge_text(prompt: str, instruction: str | None = None, *, template: str | None = None) -> JudgeText:
    """Return the judge instruction for a T2V ``prompt``, split at the video position.

    ``template`` is the model's judge template (``DeScoreModel.judge_template``, stored in its checkpoint;
    None: the kit's :data:`JUDGE_TEMPLATE`). ``instruction`` overrides it verbatim (the ``problem`` column of
    the official DeScore CSVs, the prompt already filled in). An instruction without a ``<video>`` marker puts
    the video first, as the official stage-1 collator does.
    """
    if instruction is None:
        template = JUDGE_TEMPLATE if template is None else check_judge_template(template)
        # Split before formatting, so a prompt that itself contains "<video>" stays text.
        prefix, _, suffix = template.partition(VIDEO_PLACEHOLDER)
        return JudgeText(prefix=prefix.format(prompt=prompt.strip()), suffix=suffix.format(prompt=prompt.strip()))
    if instruction.count(VIDEO_PLACEHOLDER) > 1:
        raise ValueError(f"the judge instruction contains {VIDEO_PLACEHOLDER} more than once: {instruction[:200]!r}")
    prefix, marker, suffix = instruction.partition(VIDEO_PLACEHOLDER)
    if not marker:
        return JudgeText(prefix="", suffix=instruction)
    return JudgeText(prefix=prefix, suffix=suffix)


@dataclass(frozen=True)
class JudgeAnswer:
    """The structured answer of one judged video."""

    dimensional_scores: dict[str, int | str]
    overall_score: float | None


class ParsedAnswer(NamedTuple):
    """``answer`` when the CoT ends in a valid answer block, else ``None`` and the ``reason``."""

    answer: JudgeAnswer | None
    reason: str | None


_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_JSON_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def answer_json(text: str) -> tuple[Any, str | None]:
    """The JSON value in the last ``<answer>`` block of ``text`` (an optional json fence stripped), or None and
    why not. The one reader of answer blocks: the judge's CoT, stage-2 rollouts and their ground truth."""
    blocks = _ANSWER_BLOCK.findall(text)
    if not blocks:
        return None, "no <answer>...</answer> block"
    content = blocks[-1].strip()
    fenced = _JSON_FENCE.match(content)
    if fenced:
        content = fenced.group(1)
    try:
        return json.loads(content), None
    except json.JSONDecodeError as error:
        return None, f"answer block is not valid JSON: {error.msg} at char {error.pos}"


def parse_judge_answer(text: str) -> ParsedAnswer:
    """Parse the last ``<answer>`` block of a CoT into sub-scores and the overall score.

    Requires all five sub-dimensions with values in 0/1/2/"N/A"; ``overall_score`` may be absent (the
    official format reward only requires ``dimensional_scores``) but, when present, must lie in [1, 5].
    """
    payload, reason = answer_json(text)
    if reason is not None:
        return ParsedAnswer(None, reason)
    if not isinstance(payload, dict) or not isinstance(payload.get("dimensional_scores"), dict):
        return ParsedAnswer(None, "answer JSON has no 'dimensional_scores' object")
    scores = payload["dimensional_scores"]
    missing = [name for name in SUB_DIMENSIONS if name not in scores]
    if missing:
        return ParsedAnswer(None, f"dimensional_scores lacks {missing}")
    for name in SUB_DIMENSIONS:
        value = scores[name]
        if isinstance(value, bool) or value not in SUB_SCORE_VALUES:
            return ParsedAnswer(None, f"dimensional_scores[{name!r}] = {value!r} is not one of 0, 1, 2, 'N/A'")
    overall = payload.get("overall_score")
    if overall is not None:
        if isinstance(overall, bool) or not isinstance(overall, (int, float)) or not math.isfinite(overall):
            return ParsedAnswer(None, f"overall_score = {overall!r} is not a number")
        if not 1.0 <= overall <= 5.0:
            return ParsedAnswer(None, f"overall_score = {overall} is outside [1, 5]")
        overall = float(overall)
    answer = JudgeAnswer(dimensional_scores={name: scores[name] for name in SUB_DIMENSIONS}, overall_score=overall)
    return ParsedAnswer(answer, None)
