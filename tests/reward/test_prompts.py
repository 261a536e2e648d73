"""Tests for reward/prompts.py: the judge text around the video and the parser of its answer block."""

from __future__ import annotations

import json

import pytest

from reward.prompts import (
    JUDGE_TEMPLATE,
    SUB_DIMENSIONS,
    JudgeAnswer,
    JudgeText,
    judge_text,
    parse_judge_answer,
)

GOOD_SCORES = {"subject": 2, "dynamics": 1, "camera": "N/A", "environment": 0, "style": 2}


def answer_block(payload: object, *, fence: bool = True) -> str:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    if fence:
        body = f"```json\n{body}\n```"
    return f"<answer>\n{body}\n</answer>"


# --------------------------------------------------------------------------------------------------------
# judge_text
# --------------------------------------------------------------------------------------------------------


def test_judge_text_splits_the_template_at_the_video():
    """The prompt sits before the video (prefix), the scoring rules and answer format after it (suffix);
    prefix + "<video>" + suffix is the formatted template, and the prompt is stripped."""
    text = judge_text("  a red fox jumps over a log \n")
    formatted = JUDGE_TEMPLATE.format(prompt="a red fox jumps over a log")

    assert isinstance(text, JudgeText)
    assert text.prefix + "<video>" + text.suffix == formatted
    assert "Text prompt: [a red fox jumps over a log]" in text.prefix
    assert text.prefix.endswith("Video: ")
    assert "<video>" not in text.prefix and "<video>" not in text.suffix
    assert "<answer>" in text.suffix and "</answer>" in text.suffix
    assert "<answer>" not in text.prefix
    assert text.suffix.startswith("\n\nWork in three stages")


def test_judge_text_keeps_braces_in_the_prompt():
    """A prompt with format braces is inserted literally, not re-formatted."""
    assert "Text prompt: [a sign reading {hello} and {{x}}]" in judge_text("a sign reading {hello} and {{x}}").prefix


def test_instruction_override_without_marker_puts_everything_after_the_video():
    instruction = "Rate this clip of a cat.\nAnswer in <answer></answer>."
    assert judge_text("ignored", instruction=instruction) == JudgeText(prefix="", suffix=instruction)


def test_instruction_override_with_marker_is_split_verbatim():
    instruction = "Prompt: [a cat]\nVideo: <video>\nNow judge."
    assert judge_text("ignored", instruction=instruction) == JudgeText(
        prefix="Prompt: [a cat]\nVideo: ", suffix="\nNow judge."
    )


def test_two_video_markers_raise():
    with pytest.raises(ValueError, match="contains <video> more than once"):
        judge_text("x", instruction="<video> first, then <video> again")


def test_template_formats_and_names_all_sub_dimensions():
    """The template has exactly one {prompt} field (all JSON braces escaped), names the five dimensions as
    two primary and three secondary, and its own example answer parses to the scores it shows."""
    text = JUDGE_TEMPLATE.format(prompt="P")
    assert SUB_DIMENSIONS == ("subject", "dynamics", "camera", "environment", "style")
    for name, rank in zip(SUB_DIMENSIONS, ["primary", "primary", "secondary", "secondary", "secondary"]):
        assert f"- {name} ({rank}):" in text
    assert text.count("<video>") == 1
    parsed = parse_judge_answer(text)
    assert parsed.reason is None
    assert parsed.answer == JudgeAnswer(
        dimensional_scores={"subject": 2, "dynamics": 1, "camera": "N/A", "environment": 2, "style": 1},
        overall_score=3.5,
    )


# --------------------------------------------------------------------------------------------------------
# parse_judge_answer: valid answers
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fence", [True, False], ids=["fenced", "bare"])
def test_valid_answer(fence):
    cot = "The subject is right, the motion is partly off.\n" + answer_block(
        {"dimensional_scores": GOOD_SCORES, "overall_score": 3.75}, fence=fence
    )
    assert parse_judge_answer(cot) == (JudgeAnswer(GOOD_SCORES, 3.75), None)


def test_plain_fence_without_language_tag():
    cot = "<answer>```\n" + json.dumps({"dimensional_scores": GOOD_SCORES}) + "\n```</answer>"
    assert parse_judge_answer(cot) == (JudgeAnswer(GOOD_SCORES, None), None)


def test_all_not_applicable_and_integer_overall():
    """'N/A' is a valid sub-score; an integer overall score comes back as a float."""
    scores = dict.fromkeys(SUB_DIMENSIONS, "N/A")
    parsed = parse_judge_answer(answer_block({"dimensional_scores": scores, "overall_score": 4}))
    assert parsed == (JudgeAnswer(scores, 4.0), None)
    assert type(parsed.answer.overall_score) is float


def test_overall_score_absent_is_none():
    parsed = parse_judge_answer(answer_block({"dimensional_scores": GOOD_SCORES}))
    assert parsed == (JudgeAnswer(GOOD_SCORES, None), None)


def test_extra_keys_are_dropped_and_order_is_canonical():
    scores = {"style": 0, "camera": 1, "extra": 7, "environment": 2, "dynamics": 0, "subject": 1}
    parsed = parse_judge_answer(answer_block({"dimensional_scores": scores, "overall_score": 1.0, "note": "x"}))
    assert list(parsed.answer.dimensional_scores.items()) == [
        ("subject", 1), ("dynamics", 0), ("camera", 1), ("environment", 2), ("style", 0)
    ]
    assert parsed.answer.overall_score == 1.0


def test_last_answer_block_wins():
    first = answer_block({"dimensional_scores": dict.fromkeys(SUB_DIMENSIONS, 0), "overall_score": 1.0})
    last = answer_block({"dimensional_scores": GOOD_SCORES, "overall_score": 4.5})
    assert parse_judge_answer(f"draft: {first}\nrevised: {last}") == (JudgeAnswer(GOOD_SCORES, 4.5), None)
    # A broken draft does not matter, but a broken final block does.
    assert parse_judge_answer(f"<answer>oops</answer> then {last}") == (JudgeAnswer(GOOD_SCORES, 4.5), None)
    assert parse_judge_answer(f"{last} then <answer>oops</answer>").answer is None


# --------------------------------------------------------------------------------------------------------
# parse_judge_answer: failures return no answer and the reason
# --------------------------------------------------------------------------------------------------------


def _with(**changes) -> dict:
    scores = dict(GOOD_SCORES)
    for key, value in changes.items():
        if value is _DROP:
            scores.pop(key)
        else:
            scores[key] = value
    return scores


_DROP = object()

FAILURES = [
    pytest.param("I think it is good. Score: 4", "no <answer>...</answer> block", id="no-block"),
    pytest.param("<answer>{\"dimensional_scores\": {}", "no <answer>...</answer> block", id="unclosed-block"),
    pytest.param(
        answer_block("{'dimensional_scores': {}}"),
        "answer block is not valid JSON: Expecting property name enclosed in double quotes at char 1",
        id="invalid-json",
    ),
    pytest.param(answer_block({"overall_score": 3.0}), "answer JSON has no 'dimensional_scores' object", id="no-dims"),
    pytest.param(
        answer_block({"dimensional_scores": [2, 2, 2, 2, 2]}), "answer JSON has no 'dimensional_scores' object",
        id="dims-is-list",
    ),
    pytest.param(answer_block([GOOD_SCORES]), "answer JSON has no 'dimensional_scores' object", id="payload-is-list"),
    pytest.param(
        answer_block({"dimensional_scores": _with(camera=_DROP)}), "dimensional_scores lacks ['camera']",
        id="missing-dimension",
    ),
    pytest.param(
        answer_block({"dimensional_scores": _with(subject=3)}),
        "dimensional_scores['subject'] = 3 is not one of 0, 1, 2, 'N/A'", id="value-3",
    ),
    pytest.param(
        answer_block({"dimensional_scores": _with(dynamics="2")}),
        "dimensional_scores['dynamics'] = '2' is not one of 0, 1, 2, 'N/A'", id="string-2",
    ),
    pytest.param(
        answer_block({"dimensional_scores": _with(style=True)}),
        "dimensional_scores['style'] = True is not one of 0, 1, 2, 'N/A'", id="boolean-true",
    ),
    pytest.param(
        answer_block({"dimensional_scores": _with(environment="n/a")}),
        "dimensional_scores['environment'] = 'n/a' is not one of 0, 1, 2, 'N/A'", id="lowercase-na",
    ),
    pytest.param(
        answer_block({"dimensional_scores": GOOD_SCORES, "overall_score": 6}), "overall_score = 6 is outside [1, 5]",
        id="overall-6",
    ),
    pytest.param(
        answer_block({"dimensional_scores": GOOD_SCORES, "overall_score": 0.99}),
        "overall_score = 0.99 is outside [1, 5]", id="overall-0.99",
    ),
    pytest.param(
        answer_block({"dimensional_scores": GOOD_SCORES, "overall_score": "high"}),
        "overall_score = 'high' is not a number", id="overall-string",
    ),
    pytest.param(
        answer_block({"dimensional_scores": GOOD_SCORES, "overall_score": True}),
        "overall_score = True is not a number", id="overall-bool",
    ),
    pytest.param(
        answer_block('{"dimensional_scores": ' + json.dumps(GOOD_SCORES) + ', "overall_score": NaN}'),
        "overall_score = nan is not a number", id="overall-nan",
    ),
]


@pytest.mark.parametrize(("text", "reason"), FAILURES)
def test_invalid_answers_return_the_reason(text, reason):
    assert parse_judge_answer(text) == (None, reason)


def test_a_prompt_containing_the_video_marker_stays_text():
    judge = judge_text("a sign that reads <video>")
    assert "a sign that reads <video>" in judge.prefix and "<answer>" in judge.suffix
