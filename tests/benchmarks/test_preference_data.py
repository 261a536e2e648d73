"""Benchmark files of every supported layout read into (prompt, A, B, label) pairs; missing videos are
skipped and listed, unknown labels and wrong options are errors naming the line or option."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from benchmarks.preference_data import BenchmarkFormat, read_benchmark
from reward.errors import ConfigError, DataError

from ..reward.helpers import small_clip


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    root = tmp_path / "bench_videos"
    (root / "videos" / "m1").mkdir(parents=True)
    (root / "videos" / "m2").mkdir(parents=True)
    for name in ("m1/a.mp4", "m2/a.mp4", "m1/b.mp4"):
        small_clip(root / "videos" / name)
    return root


def videogen_rows() -> list[dict[str, str]]:
    base = {"A_model": "m1", "B_model": "m2", "fps_A": "4", "num_frames_A": "8", "fps_B": "4", "num_frames_B": "8"}
    return [
        {"path_A": "videos/m1/a.mp4", "path_B": "videos/m2/a.mp4", "prompt": "a ball", "VQ": "A", "MQ": "same", "TA": "B",
         "Overall": "A", **base},
        {"path_A": "videos/m1/b.mp4", "path_B": "videos/m2/missing.mp4", "prompt": "a dog", "VQ": "B", "MQ": "A",
         "TA": "A", "Overall": "B", **base},
    ]


@pytest.mark.parametrize(("dimension", "label"), [(None, 1), ("VQ", 1), ("MQ", 0), ("TA", -1)])
def test_videogen_rewardbench_dimensions_and_missing_videos(videos, tmp_path, dimension, label):
    data = write_csv(tmp_path / "videogen-rewardbench.csv", videogen_rows())
    bench = read_benchmark(data, video_root=videos, dimension=dimension)
    assert bench.format is BenchmarkFormat.VIDEOGEN_REWARDBENCH and bench.dimension == (dimension or "Overall")
    assert [(pair.prompt, pair.label, pair.line) for pair in bench.pairs] == [("a ball", label, 2)]
    assert bench.pairs[0].video_a == str(videos / "videos" / "m1" / "a.mp4")
    assert bench.skipped == [(3, f"video file {videos / 'videos' / 'm2' / 'missing.mp4'} does not exist")]


def test_genai_bench_votes_map_to_labels(videos, tmp_path):
    """leftvote → A, rightvote → B, tievote and bothbad_vote → tie; JSONL rows; paths against video_root."""
    rows = [{"prompt": f"p{vote}", "left_model": "m1", "left_video": "videos/m1/a.mp4", "right_model": "m2",
             "right_video": "videos/m2/a.mp4", "vote_type": vote}
            for vote in ("leftvote", "rightvote", "tievote", "bothbad_vote")]
    data = tmp_path / "genai.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    bench = read_benchmark(data, video_root=videos)
    assert bench.format is BenchmarkFormat.GENAI_BENCH and bench.skipped == []
    assert [pair.label for pair in bench.pairs] == [1, -1, 0, 0]


def test_our_pair_format_and_descore_csv_go_through_the_kit_reader(videos, tmp_path):
    ours = write_csv(videos / "pairs.csv", [
        {"prompt": "a ball", "video_a": "videos/m1/a.mp4", "video_b": "videos/m2/a.mp4", "label": "tie"},
        {"prompt": "a dog", "video_a": "videos/m1/b.mp4", "video_b": "videos/m2/nope.mp4", "label": "A"},
    ])
    bench = read_benchmark(ours)
    assert bench.format is BenchmarkFormat.PAIRS and [(p.label, p.line) for p in bench.pairs] == [(0, 2)]
    assert [line for line, _ in bench.skipped] == [3]
    official = write_csv(videos / "stage1.csv", [{
        "videos": str([str(videos / "videos/m1/a.mp4"), str(videos / "videos/m2/a.mp4")]), "problem": "judge",
        "CoT_A": "x", "CoT_B": "y", "GSB": "B", "durations": "[1, 1]", "prompt": "a ball"}])
    assert [pair.label for pair in read_benchmark(official).pairs] == [-1]


@pytest.mark.parametrize(("case", "error", "message"), [
    ("unknown label", DataError, r"1 row\(s\) with an unknown Overall label\n  line 2: label 'C' is not one of A, B, same"),
    ("unknown dimension", ConfigError, "dimension must be one of Overall, VQ, MQ, TA, got 'XX'"),
    ("missing column", DataError, r"needs the column\(s\) TA"),
    ("options on pairs", ConfigError, "video_root and dimension do not apply"),
])
def test_bad_benchmark_input_is_named(videos, tmp_path, case, error, message):
    rows = videogen_rows()[:1]
    options = {"video_root": videos}
    if case == "unknown label":
        rows[0]["Overall"] = "C"
    elif case == "unknown dimension":
        options["dimension"] = "XX"
    elif case == "missing column":
        rows = [{key: value for key, value in rows[0].items() if key != "TA"}]
        options["dimension"] = "TA"
    data = write_csv(tmp_path / "bench.csv", rows)
    if case == "options on pairs":
        data = write_csv(tmp_path / "pairs.csv", [{"prompt": "p", "video_a": "a.mp4", "video_b": "b.mp4", "label": "A"}])
    with pytest.raises(error, match=message):
        read_benchmark(data, **options)
