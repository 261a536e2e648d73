"""vlm_judge: expected ratings and pairwise verdicts against forwards written here, file = frames, the rubric
options, and every configuration error."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import decord
import pytest
import torch
import yaml
from transformers import AutoModelForImageTextToText, AutoProcessor

from reward import build_reward
from reward.errors import ConfigError, VideoDecodeError
from reward.jobs import ScoreConfig, run_score
from reward.judge_rating import ChoiceProbabilities, RatingScale, answer_tokens, combine_orders
from reward.tiny_models import build_tiny_tokenizer
from reward.video import VideoFrames, load_video
from reward.vlm_judge import VlmJudge, judge_video_spec

from ..conftest import TINY_SPEC
from .helpers import small_clip, truncated_clip

SPEC = {name: value for name, value in TINY_SPEC.to_dict().items() if name != "pixel_factor"}
PROMPTS = ["a red square moving left", "a cat", "a long prompt about a red square that glides to the left"]
QUESTION = "Does the video show {prompt}? Answer with one of {answers}."


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("judge-clips")
    return [small_clip(root / f"{i}.mp4", seed=i, frames=6 + 2 * i) for i in range(3)]


@pytest.fixture(scope="module", params=["qwen3_vl", "qwen2_5_vl"])
def judge_dir(request, tmp_path_factory) -> Path:
    """The tiny model of each family with its output layer scaled by 6: a random head at init scale answers
    almost uniformly (every rating ≈ 3); sharper, the ratings differ by item and a misread position shows."""
    source = request.getfixturevalue("tiny_qwen3_vl_dir" if request.param == "qwen3_vl" else "tiny_qwen2_5_vl_dir")
    model = AutoModelForImageTextToText.from_pretrained(source)
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)
    target = tmp_path_factory.mktemp(f"judge-{request.param}")
    model.save_pretrained(target)
    AutoProcessor.from_pretrained(source).save_pretrained(target)
    return target


def judge(path: Path, **options) -> VlmJudge:
    return VlmJudge(path, device="cpu", video_spec=SPEC, **options)


def reference_answers(path: Path, contents: list[list[dict]], clips: list[list], labels: list[str]) -> list[torch.Tensor]:
    """Per sequence, unbatched: chat template + "Rating: ", the processor on the sampled frames, a full forward,
    softmax over the whole vocabulary in float64, the labels' probabilities."""
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    ids = processor.tokenizer.convert_tokens_to_ids(labels)
    answers = []
    for content, videos in zip(contents, clips):
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False) + "Rating: "
        inputs = processor(text=[text], videos=[v.frames for v in videos], video_metadata=[v.hf_metadata() for v in videos],
                           do_sample_frames=False, do_resize=False, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        answers.append(torch.softmax(logits.double(), dim=-1)[ids])
    return answers


def test_expected_rating_equals_an_independent_forward(judge_dir, clips):
    scorer = judge(judge_dir, questions={"match": QUESTION}, answer_prefix="Rating: ", batch_size=3)
    output = scorer.score(clips, PROMPTS)
    sampled = [load_video(clip, scorer.video_spec) for clip in clips]
    contents = [[{"type": "video"}, {"type": "text", "text": QUESTION.format(prompt=p, answers="1, 2, 3, 4, 5")}]
                for p in PROMPTS]
    for item, p in zip(output.items, reference_answers(judge_dir, contents, [[s] for s in sampled], list("12345"))):
        expected = float((torch.arange(1, 6, dtype=torch.float64) * p).sum() / p.sum())
        assert item.reward == pytest.approx(expected, abs=1e-5) and item.sub_scores["match"] == item.reward
        assert item.sub_scores["match_rating_mass"] == pytest.approx(float(p.sum()), rel=1e-4)
        assert item.parse_ok is None and item.error is None
    assert max(output.rewards) - min(output.rewards) > 1e-2  # the items do differ


def test_file_and_in_memory_frames_score_identically(tiny_qwen3_vl_dir, clips):
    reader = decord.VideoReader(str(clips[1]))
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    scorer = judge(tiny_qwen3_vl_dir)
    from_file = scorer.score([clips[1]], PROMPTS[:1]).items[0]
    from_memory = scorer.score([VideoFrames(frames, fps=reader.get_avg_fps())], PROMPTS[:1]).items[0]
    from_float = scorer.score([VideoFrames(torch.from_numpy(frames).permute(0, 3, 1, 2) / 255.0, fps=4.0)], PROMPTS[:1]).items[0]
    assert from_file == from_memory == from_float


def test_questions_are_asked_separately_and_averaged(tiny_qwen2_5_vl_dir, clips, tmp_path):
    rubric = {"looks": "How good does the video look? {answers}", "match": QUESTION}
    weighted = judge(tiny_qwen2_5_vl_dir, questions=rubric, weights={"looks": 1.0, "match": 3.0}).score(clips, PROMPTS)
    alone = {name: judge(tiny_qwen2_5_vl_dir, questions={name: text}).score(clips, PROMPTS) for name, text in rubric.items()}
    for row, item in enumerate(weighted.items):
        looks, match = alone["looks"].items[row].reward, alone["match"].items[row].reward
        assert item.sub_scores["looks"] == pytest.approx(looks, abs=1e-6) and item.sub_scores["match"] == pytest.approx(match, abs=1e-6)
        assert item.reward == pytest.approx((looks + 3 * match) / 4, abs=1e-6)
    rubric_file = tmp_path / "rubric.yaml"
    rubric_file.write_text("looks: 'How good does the video look? {answers}'\nmatch: '" + QUESTION + "'\n")
    from_file = judge(tiny_qwen2_5_vl_dir, questions_file=str(rubric_file), dimension="match").score(clips, PROMPTS)
    assert [item.reward for item in from_file.items] == [item.sub_scores["match"] for item in from_file.items]
    for mixed, chosen in zip(weighted.items, from_file.items):
        assert chosen.sub_scores == pytest.approx(mixed.sub_scores)


def test_a_judge_below_min_rating_mass_fails_instead_of_scoring(tiny_qwen3_vl_dir, clips):
    silent = judge(tiny_qwen3_vl_dir, min_rating_mass=0.5).score(clips[:2], PROMPTS[:2])
    assert all(math.isnan(item.reward) and item.parse_ok is False for item in silent.items)
    assert "min_rating_mass 0.5" in silent.items[0].parse_error and "'overall'" in silent.items[0].parse_error
    assert silent.parse_failure_rate == 1.0 and silent.failures == 2
    assert silent.items[0].sub_scores["overall_rating_mass"] < 0.5  # the ratings are still reported
    answering = judge(tiny_qwen3_vl_dir, min_rating_mass=0.0).score(clips[:2], PROMPTS[:2])
    assert all(item.ok and item.parse_ok for item in answering.items) and answering.parse_failure_rate == 0.0
    (pair,) = judge(tiny_qwen3_vl_dir, mode="pairwise", min_rating_mass=0.5).compare(clips[:1], clips[1:2], PROMPTS[:1])
    assert pair.decision is None and math.isnan(pair.prob_a) and "'A first'" in pair.parse_error
    assert pair.orders[0].mass < 0.5 and pair.error is None


def test_word_labels_from_the_registry(tiny_qwen3_vl_dir, clips):
    scorer = build_reward({"name": "vlm_judge", "path": str(tiny_qwen3_vl_dir), "device": "cpu", "video_spec": SPEC,
                           "scale": {"A": 0.0, "B": 0.5, "C": 1.0}, "batch_size": 2})
    rewards = scorer.score(clips, PROMPTS).rewards
    assert scorer.name == "vlm_judge" and ((rewards > 0) & (rewards < 1)).all()


def test_pairwise_averages_both_orders_like_an_independent_forward(judge_dir, clips):
    comparer = judge(judge_dir, mode="pairwise", tie_label="0", answer_prefix="Rating: ", batch_size=2)
    (template,) = comparer.rubric.questions.values()
    verdicts = comparer.compare(clips[:2], clips[1:], PROMPTS[:2])
    sampled = [load_video(clip, comparer.video_spec) for clip in clips]
    contents, groups = [], []
    for row, prompt in enumerate(PROMPTS[:2]):
        text = template.replace("{answers}", "1, 2, 0").replace("{prompt}", prompt)
        content = [{"type": "text", "text": "Video 1:"}, {"type": "video"}, {"type": "text", "text": "\nVideo 2:"},
                   {"type": "video"}, {"type": "text", "text": "\n" + text}]
        contents += [content, content]
        groups += [[sampled[row], sampled[row + 1]], [sampled[row + 1], sampled[row]]]
    answers = reference_answers(judge_dir, contents, groups, ["1", "2", "0"])
    for row, verdict in enumerate(verdicts):
        a_first, b_first = (p / p.sum() for p in answers[2 * row : 2 * row + 2])
        assert verdict.prob_a == pytest.approx(float(a_first[0] + b_first[1]) / 2, abs=1e-5)
        assert verdict.prob_b == pytest.approx(float(a_first[1] + b_first[0]) / 2, abs=1e-5)
        assert verdict.prob_tie == pytest.approx(float(a_first[2] + b_first[2]) / 2, abs=1e-5)
        assert verdict.margin == pytest.approx(math.log(verdict.prob_a / verdict.prob_b))
        best = max((verdict.prob_a, 1), (verdict.prob_b, -1), (verdict.prob_tie, 0))[1]
        assert verdict.decision == best
    swapped = comparer.compare(clips[1:], clips[:2], PROMPTS[:2])
    assert [(v.prob_b, v.prob_a, v.prob_tie) for v in swapped] == [(v.prob_a, v.prob_b, v.prob_tie) for v in verdicts]


def test_pair_judgement_arithmetic():
    """A first: 1 → 0.6, 2 → 0.3, tie 0.1; B first: 1 → 0.2, 2 → 0.7, tie 0.1. P(A) = (0.6 + 0.7) / 2 = 0.65,
    P(B) = (0.3 + 0.2) / 2 = 0.25, P(tie) = 0.1; margin ln(0.65 / 0.25) = ln 2.6; A wins."""
    verdict = combine_orders(ChoiceProbabilities(0.6, 0.3, 0.1, 0.9), ChoiceProbabilities(0.2, 0.7, 0.1, 0.8))
    assert (verdict.prob_a, verdict.prob_b, verdict.prob_tie) == pytest.approx((0.65, 0.25, 0.1))
    assert verdict.margin == pytest.approx(math.log(2.6)) and verdict.decision == 1
    tie = combine_orders(ChoiceProbabilities(0.3, 0.2, 0.5, 1.0), ChoiceProbabilities(0.3, 0.2, 0.5, 1.0))
    assert tie.decision == 0 and tie.margin == 0.0  # position bias alone (always "1") cancels
    failed = dataclasses.replace(verdict, parse_error="silent")
    assert failed.decision is None and math.isnan(failed.margin)
    assert combine_orders(ChoiceProbabilities(0.5, 0.5, None, 1.0), ChoiceProbabilities(0.5, 0.5, None, 1.0)).decision == 0


def test_unreadable_videos_fail_their_item_only(tiny_qwen3_vl_dir, clips, tmp_path):
    broken = truncated_clip(tmp_path / "broken.mp4")
    scored = judge(tiny_qwen3_vl_dir, skip_invalid=True).score([clips[0], broken], PROMPTS[:2]).items
    assert scored[0].ok and math.isnan(scored[1].reward) and "broken.mp4" in scored[1].error
    verdicts = judge(tiny_qwen3_vl_dir, mode="pairwise", skip_invalid=True).compare([clips[0], clips[0]], [broken, clips[1]], PROMPTS[:2])
    assert verdicts[0].decision is None and "broken.mp4" in verdicts[0].error and verdicts[1].ok
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        judge(tiny_qwen3_vl_dir).score([broken], PROMPTS[:1])


def test_whitespace_ending_the_answer_prefix_moves_into_the_labels():
    """The tokenizer as trained (GPT-2-style pre-tokenizer) writes "Rating: 3" as ':', ' 3'; after
    save/load it splits digits as Qwen does (':', ' ', '3'), and the prefix keeps its space."""
    tokenizer = build_tiny_tokenizer()
    moved = answer_tokens(tokenizer, "<|im_start|>assistant\n", "Rating: ", ["1", "2", "3"])
    assert moved.answer_prefix == "Rating:"
    assert tokenizer.convert_ids_to_tokens(list(moved.token_ids)) == ["Ġ1", "Ġ2", "Ġ3"]
    kept = answer_tokens(tokenizer, "<|im_start|>assistant\n", "", ["1", "2", "3"])
    assert kept.answer_prefix == "" and tokenizer.convert_ids_to_tokens(list(kept.token_ids)) == ["1", "2", "3"]


def test_scales():
    assert RatingScale.from_option([1, 3]) == RatingScale(("1", "2", "3"), (1.0, 2.0, 3.0))
    assert RatingScale.from_option(["bad", "good"]) == RatingScale(("bad", "good"), (1.0, 2.0))
    assert RatingScale.from_option({"no": 0, "yes": 1}) == RatingScale(("no", "yes"), (0.0, 1.0))


@pytest.mark.parametrize("scale, message", [
    ([5, 1], "low < high"), ([1, 3, 5], "low < high"), ([1.5, 3], "not understood"), ("1-5", "not understood"),
    (["a"], "at least two"), (["a", "a"], "repeats"), (["a", ""], "non-empty"), ({"a": 1, "b": float("inf")}, "finite"),
    ([True, 3], "not understood"),
])
def test_bad_scales_are_refused(scale, message):
    with pytest.raises(ConfigError, match=message):
        RatingScale.from_option(scale)


@pytest.mark.parametrize("options, message", [
    ({"scale": [1, 10]}, r"exactly one token.*'10'"),
    ({"scale": ["good", "bad"]}, r"exactly one token.*'good'"),
    ({"mode": "ranking"}, r"mode must be one of \('pointwise', 'pairwise'\), got 'ranking'"),
    ({"questions": {"q": "Rate {promt}"}}, r"question 'q' has placeholder\(s\) \['\{promt\}'\]"),
    ({"questions": {"a": "x", "b": "y"}, "weights": {"a": 1}}, "weights must map every question"),
    ({"questions": {"a": "x"}, "dimension": "b"}, "dimension 'b' is not a question"),
    ({"mode": "pairwise", "scale": [1, 5]}, r"\['scale'\] apply to mode: pointwise only"),
    ({"mode": "pairwise", "tie_label": "1"}, "tie_label must be a non-empty string other than"),
    ({"tie_label": "0"}, "tie_label applies to mode: pairwise only"),
    ({"mode": "pairwise", "questions": {"a": "x", "b": "y"}}, "exactly one question"),
    ({"video_spec": {"pixel_factor": 28}}, "pixel_factor is 28 but the judge's processor merges patches to 32 px"),
    ({"min_rating_mass": 2}, r"min_rating_mass must lie in \[0, 1\]"),
])
def test_bad_options_are_refused(tiny_qwen3_vl_dir, options, message):
    with pytest.raises(ConfigError, match=message):
        VlmJudge(tiny_qwen3_vl_dir, device="cpu", **options)


def test_each_mode_refuses_the_other_modes_call(tiny_qwen3_vl_dir, clips):
    with pytest.raises(ConfigError, match="mode 'pairwise': it only compares pairs of videos; call compare"):
        judge(tiny_qwen3_vl_dir, mode="pairwise").score(clips[:1], PROMPTS[:1])
    with pytest.raises(ConfigError, match="compare\\(\\) needs a vlm_judge built with mode: pairwise"):
        judge(tiny_qwen3_vl_dir).compare(clips[:1], clips[1:2], PROMPTS[:1])
    with pytest.raises(ConfigError, match=r"does not take options \['rubric'\]"):
        build_reward({"name": "vlm_judge", "path": str(tiny_qwen3_vl_dir), "rubric": {}})


def test_default_video_spec_follows_the_processor(tiny_qwen3_vl_dir, tiny_qwen2_5_vl_dir):
    for path, factor in ((tiny_qwen3_vl_dir, 32), (tiny_qwen2_5_vl_dir, 28)):
        spec = judge_video_spec(AutoProcessor.from_pretrained(path))
        assert (spec.fps, spec.max_pixels, spec.min_pixels, spec.pixel_factor) == (2.0, 200_704, 128 * factor**2, factor)


def test_descore_reward_score_runs_the_judge_from_yaml(tiny_qwen3_vl_dir, clips, tmp_path):
    entry = {"name": "vlm_judge", "path": str(tiny_qwen3_vl_dir), "device": "cpu", "video_spec": SPEC,
             "questions": {"match": QUESTION, "looks": "Rate its looks: {answers}"}, "min_rating_mass": 0.0}
    reward_file = tmp_path / "judge.yaml"
    reward_file.write_text(yaml.safe_dump(entry))
    output = tmp_path / "scores.jsonl"
    run_score(ScoreConfig(reward=str(reward_file), video=[str(c) for c in clips], prompt=PROMPTS, output=str(output)))
    records = [json.loads(line) for line in output.read_text().splitlines()]
    direct = judge(tiny_qwen3_vl_dir, questions=entry["questions"], min_rating_mass=0.0).score(clips, PROMPTS).items
    assert [(r["reward"], r["sub_scores"], r["parse_ok"]) for r in records] == [(i.reward, i.sub_scores, True) for i in direct]
    reward_file.write_text(yaml.safe_dump(entry | {"mode": "pairwise", "questions": {"q": QUESTION}}))
    with pytest.raises(ConfigError, match="it only compares pairs of videos"):
        run_score(ScoreConfig(reward=str(reward_file), video=[str(clips[0])], prompt=PROMPTS[:1], output=str(tmp_path / "p.jsonl")))
