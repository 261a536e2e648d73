"""descore reward collect-cot: the output trains stage 1 unchanged, an interrupted run resumes without
regenerating, other settings are refused, bad videos are listed and skipped, the official layout works."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from benchmarks.synthetic import make_preference_set
from reward import collect_cot
from reward.cold_start import run as train_stage1
from reward.collect_cot import CollectCotConfig, meta_path, run_collect_cot
from reward.cot_cache import cache_path
from reward.data import read_preferences
from reward.generation import GenerationSettings, HfBackend
from reward.modeling import DeScoreModel
from reward.prompts import judge_text
from reward.run_record import RunMismatchError
from reward.video import load_video

from .helpers import tiny_config, truncated_clip

ONE_STEP = {"max_steps": 1, "eval_strategy": "no", "save_strategy": "no", "merge_final": "false", "effective_batch_size": 4}
SMALL_VIDEO = {"video_max_frames": 8, "video_min_pixels": 1024, "video_max_pixels": 4096}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """Four pairs in our layout, without CoTs, and one more row that reuses pair 0's videos and prompt."""
    root = tmp_path_factory.mktemp("collect-pairs")
    with_cots = make_preference_set(root, pairs=4, seed=3, file_name="with_cots.csv")
    rows = list(csv.DictReader(with_cots.open()))
    rows.append({**rows[0], "label": "B", "video_a": rows[0]["video_b"], "video_b": rows[0]["video_a"]})
    path = root / "pairs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "video_a", "video_b", "label"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def config(model: Path, data: Path, output: Path, **overrides) -> CollectCotConfig:
    fields = {"model": str(model), "data": str(data), "output": str(output), "max_new_tokens": 6, "batch_size": 4,
              "device": "cpu", **SMALL_VIDEO, **overrides}
    return CollectCotConfig(**fields)


def test_collected_cots_train_stage1_unchanged(tiny_qwen3_vl_dir, pairs, tmp_path):
    output = tmp_path / "pairs_with_cot.csv"
    summary = run_collect_cot(config(tiny_qwen3_vl_dir, pairs, output))
    assert summary.rows_written == 5 and not summary.rows_skipped and not summary.bad_videos
    assert summary.generated == 8 and summary.reused == 0  # 10 videos in 5 rows, the 5th reuses pair 0's two
    assert summary.truncated == 8 and summary.parse_failures == 8  # 6 tokens of a random model
    lines = [json.loads(line) for line in cache_path(output).read_text().splitlines()]
    assert len(lines) == 8 and len({(line["video"], line["prompt"]) for line in lines}) == 8
    data = read_preferences(output)
    assert len(data.pairs) == 5 and all(pair.has_cot for pair in data.pairs)
    assert data.pairs[4].cot_a == data.pairs[0].cot_b and data.pairs[4].scores_a is None
    rows = list(csv.DictReader(output.open()))
    assert list(rows[0]) == ["prompt", "video_a", "video_b", "label", "cot_a", "cot_b", "judge_scores_a",
                             "judge_scores_b", "truncated_a", "truncated_b"]
    assert {row["truncated_a"] for row in rows} == {"true"}
    meta = json.loads(meta_path(output).read_text())
    assert meta["config"]["generation"]["max_new_tokens"] == 6 and "{prompt}" in meta["config"]["judge"]["template"]
    assert meta["summary"]["rows_written"] == 5
    metrics = train_stage1(tiny_config(tiny_qwen3_vl_dir, output, tmp_path / "stage1", **ONE_STEP))
    assert metrics == {} and (tmp_path / "stage1" / "final" / "descore_config.json").is_file()


def test_interrupted_run_resumes_without_regenerating(tiny_qwen3_vl_dir, pairs, tmp_path, monkeypatch):
    output = tmp_path / "resumed.csv"
    real_batch = collect_cot._batch_lines
    calls = []

    def failing_after_two(*args, **kwargs):
        calls.append([item.video for item in args[3]])
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the job were killed while writing its third batch
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(collect_cot, "_batch_lines", failing_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_collect_cot(config(tiny_qwen3_vl_dir, pairs, output, batch_size=2))
    first = cache_path(output).read_bytes()
    assert len(first.splitlines()) == 4 and not output.exists()

    calls.clear()
    summary = run_collect_cot(config(tiny_qwen3_vl_dir, pairs, output, batch_size=2))
    assert summary.reused == 4 and summary.generated == 4
    assert sum(len(videos) for videos in calls) == 4  # only the missing CoTs went to the model
    assert cache_path(output).read_bytes().startswith(first)  # the first four lines are untouched

    monkeypatch.setattr(collect_cot, "_batch_lines", real_batch)
    whole = tmp_path / "whole.csv"
    run_collect_cot(config(tiny_qwen3_vl_dir, pairs, whole, batch_size=2))
    assert output.read_bytes() == whole.read_bytes()

    again = run_collect_cot(config(tiny_qwen3_vl_dir, pairs, output, batch_size=3))  # batch size is not a setting
    assert again.generated == 0 and again.reused == 8 and output.read_bytes() == whole.read_bytes()

    with pytest.raises(RunMismatchError, match=r"generation.max_new_tokens: 6 -> 7"):
        run_collect_cot(config(tiny_qwen3_vl_dir, pairs, output, max_new_tokens=7))
    with pytest.raises(RunMismatchError, match=r"video.max_pixels: 4096 -> 2048"):
        run_collect_cot(config(tiny_qwen3_vl_dir, pairs, output, video_max_pixels=2048))


def test_bad_video_is_listed_and_its_rows_skipped(tiny_qwen3_vl_dir, pairs, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(pairs.parent, root)
    broken = truncated_clip(root / "videos" / "broken.mp4")
    rows = list(csv.DictReader((root / "pairs.csv").open()))
    rows[1]["video_b"] = "videos/broken.mp4"
    with (root / "pairs.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:3])
    output = tmp_path / "out.jsonl"
    summary = run_collect_cot(config(tiny_qwen3_vl_dir, root / "pairs.csv", output))
    assert [video for video, _ in summary.bad_videos] == [str(broken)]
    assert [line for line, _ in summary.rows_skipped] == [3] and "broken.mp4" in summary.rows_skipped[0][1]
    assert summary.rows_written == 2 and summary.generated == 5  # 6 videos, one unreadable
    assert len(read_preferences(output).pairs) == 2
    meta = json.loads(meta_path(output).read_text())
    assert meta["summary"]["bad_videos"][0][0] == str(broken)


def test_official_layout_uses_the_problem_text(checkpoint, pairs, tmp_path):
    """Official stage-1 CSV in, CoT_A/CoT_B out; the CoT is the one the problem text prompts (checked against
    the HF backend called directly), and the DeScore checkpoint's <Reward> is never written."""
    source = list(csv.DictReader(pairs.open()))[:2]
    problems = [f"Judge this clip: <video> Does it show {row['prompt']}? End with an <answer> block." for row in source]
    official = pairs.parent / "official.csv"
    with official.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["videos", "problem", "GSB"])
        writer.writeheader()
        for row, problem in zip(source, problems):
            writer.writerow({"videos": str([row["video_a"], row["video_b"]]), "problem": problem, "GSB": row["label"]})
    output = tmp_path / "official_with_cot.csv"
    run_collect_cot(CollectCotConfig(model=str(checkpoint), data=str(official), output=str(output), max_new_tokens=5,
                                     device="cpu"))
    data = read_preferences(output)
    assert [pair.instruction for pair in data.pairs] == problems and all(pair.has_cot for pair in data.pairs)
    model = DeScoreModel.from_pretrained(checkpoint, dtype="float32").eval()
    clip = load_video(data.pairs[0].video_a, model.video_spec)
    direct = HfBackend(model.backbone, model.processor, device="cpu", suppress_token_ids=(model.reward_token_id,))
    judge = judge_text(problems[0], problems[0])
    (expected,) = direct.generate([judge], [clip], settings=GenerationSettings(max_new_tokens=5))[0]
    assert data.pairs[0].cot_a == expected.text
    assert "CoT_A" in next(csv.reader(output.open()))


def test_template_is_refused_with_a_checkpoint_and_checked_for_a_plain_model(checkpoint, tiny_qwen3_vl_dir, pairs, tmp_path):
    template = tmp_path / "template.txt"
    template.write_text("Rate {prompt} <video> <video>")
    from reward.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--template, --video_fps apply to a plain model"):
        run_collect_cot(CollectCotConfig(model=str(checkpoint), data=str(pairs), output=str(tmp_path / "a.csv"),
                                         template=str(template), video_fps=4.0))
    with pytest.raises(ConfigError, match=r"it has 2 <video> markers \(exactly one is needed\)"):
        run_collect_cot(config(tiny_qwen3_vl_dir, pairs, tmp_path / "b.csv", template=str(template)))


@pytest.mark.slow
def test_two_processes_write_what_one_writes(tiny_qwen3_vl_dir, pairs, tmp_path):
    """torchrun with two CPU processes: each writes every other CoT into its own part, rank 0 merges; the
    output is byte-identical to a single-process run (greedy CoTs do not depend on the batch)."""
    import os
    import subprocess
    import sys

    from .helpers import REPO_ROOT

    def collect(output: Path, processes: int) -> None:
        flags = {"--model": str(tiny_qwen3_vl_dir), "--data": str(pairs), "--output": str(output),
                 "--max_new_tokens": "6", "--batch_size": "4", "--device": "cpu",
                 **{f"--{key}": str(value) for key, value in SMALL_VIDEO.items()}}
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(29530 + processes), "-m", "descore", "reward", "collect-cot",
                   *[part for pair in flags.items() for part in pair]]
        # One thread per process in both runs, so that float reductions (and so greedy ties) are the same.
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
        finished = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600)
        assert finished.returncode == 0, finished.stderr[-4000:]

    single, sharded = tmp_path / "single.csv", tmp_path / "sharded.csv"
    collect(single, 1)
    collect(sharded, 2)
    assert sharded.read_bytes() == single.read_bytes()
    assert len(cache_path(sharded).read_text().splitlines()) == 8
    assert not list(tmp_path.glob("sharded.csv.*.rank*"))  # the parts were merged and removed


def test_cache_drops_a_line_cut_by_a_kill_and_refuses_other_damage(tmp_path):
    from reward.cot_cache import Item, read_cache
    from reward.errors import DataError

    lines = [{"video": f"{i}.mp4", "prompt": "p", "instruction": None, "cot": f"cot {i}", "judge_scores": None,
              "parse_error": "x", "truncated": True} for i in range(2)]
    whole = "".join(json.dumps(line) + "\n" for line in lines)
    cache = tmp_path / "out.csv.cots.jsonl"
    cache.write_text(whole + '{"video": "2.mp4", "prompt": "p", "instr')
    assert list(read_cache(cache)) == [Item("0.mp4", "p", None), Item("1.mp4", "p", None)]
    assert cache.read_text() == whole  # cut back to the last complete line, so appending starts clean
    cache.write_text('{"video": "0.mp4", broken\n' + whole)
    with pytest.raises(DataError, match="unreadable lines"):
        read_cache(cache)
