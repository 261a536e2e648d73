"""Tests for reward/data.py: reading, validating and checking preference files (our layout and the official
DeScore stage-1 CSV). Line numbers are physical lines of the file; the CSV header is line 1."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from reward.video import DecodeLimits, _write_tone, write_video
from reward.data import PairWarnings, PreferencePair, check_videos, read_preferences
from reward.errors import ConfigError, DataError

from .helpers import small_clip, truncated_clip

LABEL_HINT = "use A, B, tie (or 1, -1, 0)"


@pytest.fixture(scope="module")
def source_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real tiny videos (8 frames, 32x32, h264) plus unreadable ones, written once per module."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    clips = {
        "a.mp4": write_video(root / "a.mp4", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), 8.0),
        "b.mp4": write_video(root / "b.mp4", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), 8.0),
        "one_frame.mp4": write_video(root / "one_frame.mp4", np.full((1, 32, 32, 3), 90, np.uint8), 8.0),
    }
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())
    clips["corrupt.mp4"] = corrupt
    # An mp4 holding only an audio track: a "video" with no video frames at all.
    audio_only = root / "audio_only.mp4"
    with av.open(str(audio_only), mode="w") as container:
        _write_tone(container, container.add_stream("aac", rate=44100), seconds=0.5)
    clips["audio_only.mp4"] = audio_only
    return clips


@pytest.fixture
def folder(tmp_path: Path, source_clips) -> Path:
    """A data folder holding a.mp4 and b.mp4 (and the bad clips), for files that reference them."""
    for name, path in source_clips.items():
        shutil.copy(path, tmp_path / name)
    return tmp_path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, lines: list[dict | str]) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines), encoding="utf-8"
    )
    return path


# --------------------------------------------------------------------------------------------------------
# Our layout
# --------------------------------------------------------------------------------------------------------


def test_our_csv_labels_and_fields(folder):
    """Every accepted label spelling maps to +1 / -1 / 0; CoTs and JSON scores are carried through."""
    labels = ["A", "B", "tie", "1", "-1", "0", "same", "a", "b", "TIE", "+1", " B ", "1.0"]
    expected_labels = [1, -1, 0, 1, -1, 0, 0, 1, -1, 0, 1, -1, 1]
    rows = [[f"prompt {i}", "a.mp4", "b.mp4", label, "", "", "", ""] for i, label in enumerate(labels)]
    rows[0][4:] = ["cot of A", "cot of B", '{"subject": 2, "camera": "N/A"}', '{"subject": 0}']
    path = write_csv(
        folder / "prefs.csv",
        ["prompt", "video_a", "video_b", "label", "cot_a", "cot_b", "scores_a", "scores_b"],
        rows,
    )

    data = read_preferences(path)

    a, b = str(folder / "a.mp4"), str(folder / "b.mp4")
    first = PreferencePair(
        prompt="prompt 0", video_a=a, video_b=b, label=1, line=2, cot_a="cot of A", cot_b="cot of B",
        scores_a={"subject": 2, "camera": "N/A"}, scores_b={"subject": 0},
    )
    rest = [
        PreferencePair(prompt=f"prompt {i}", video_a=a, video_b=b, label=label, line=i + 2)
        for i, label in enumerate(expected_labels) if i > 0
    ]
    assert data.pairs == [first, *rest]
    assert data.source == path
    assert data.skipped == [] and data.excluded_invalid == 0
    assert len(data) == 13
    assert data.pairs[0].has_cot and not data.pairs[1].has_cot


def test_our_jsonl_labels_and_fields(folder):
    """JSONL takes string or numeric labels, JSON objects for scores, and skips blank lines (line 3 here)
    without renumbering: the records are on lines 1, 2, 4, 5, 6, 7, 8."""
    path = write_jsonl(
        folder / "prefs.jsonl",
        [
            {"prompt": "p1", "video_a": "a.mp4", "video_b": "b.mp4", "label": "A", "cot_a": "ca", "cot_b": "cb",
             "scores_a": {"subject": 2}, "scores_b": '{"subject": 1}'},
            {"prompt": "p2", "video_a": "a.mp4", "video_b": "b.mp4", "label": 1},
            "",
            {"prompt": "p4", "video_a": "a.mp4", "video_b": "b.mp4", "label": -1},
            {"prompt": "p5", "video_a": "a.mp4", "video_b": "b.mp4", "label": 0},
            {"prompt": "p6", "video_a": "a.mp4", "video_b": "b.mp4", "label": "same"},
            {"prompt": "p7", "video_a": "a.mp4", "video_b": "b.mp4", "label": 1.0},
            {"prompt": "p8", "video_a": "b.mp4", "video_b": "a.mp4", "label": "b"},
        ],
    )

    data = read_preferences(path)

    a, b = str(folder / "a.mp4"), str(folder / "b.mp4")
    assert data.pairs == [
        PreferencePair("p1", a, b, 1, 1, cot_a="ca", cot_b="cb", scores_a={"subject": 2}, scores_b={"subject": 1}),
        PreferencePair("p2", a, b, 1, 2),
        PreferencePair("p4", a, b, -1, 4),
        PreferencePair("p5", a, b, 0, 5),
        PreferencePair("p6", a, b, 0, 6),
        PreferencePair("p7", a, b, 1, 7),
        PreferencePair("p8", b, a, -1, 8),
    ]


def test_relative_video_paths_resolve_against_the_data_file(folder, tmp_path, monkeypatch):
    """Paths are relative to the data file's folder, not to the working directory; absolute paths stay."""
    data_dir = folder / "data"
    (data_dir / "clips").mkdir(parents=True)
    shutil.copy(folder / "a.mp4", data_dir / "clips" / "a.mp4")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = write_csv(
        data_dir / "prefs.csv",
        ["prompt", "video_a", "video_b", "label"],
        [["p", "clips/a.mp4", str(folder / "b.mp4"), "A"], ["q", "../b.mp4", "clips/a.mp4", "B"]],
    )
    monkeypatch.chdir(elsewhere)  # a.mp4 is not reachable from here as "clips/a.mp4"

    pairs = read_preferences(path).pairs

    assert pairs[0].video_a == str(data_dir / "clips" / "a.mp4")
    assert pairs[0].video_b == str(folder / "b.mp4")
    assert Path(pairs[1].video_a).resolve() == (folder / "b.mp4").resolve()
    assert pairs[1].video_b == str(data_dir / "clips" / "a.mp4")


def test_multiline_cot_keeps_line_numbers(folder):
    """Quoted multi-line CoTs: each record's line is the physical line it starts on.

    File layout: line 1 header; record 1 spans lines 2-4 (cot_a has two newlines); record 2 spans
    lines 5-6 (cot_b has one); record 3 is line 7 (bad label); record 4 spans lines 8-10 and names a
    missing video; record 5 is line 11.
    """
    text = (
        "prompt,video_a,video_b,label,cot_a,cot_b\n"
        'p1,a.mp4,b.mp4,A,"first line\nsecond line\nthird line",short\n'
        'p2,a.mp4,b.mp4,B,short,"one\ntwo"\n'
        "p3,a.mp4,b.mp4,X,short,short\n"
        'p4,a.mp4,gone.mp4,A,"x\n\ny",short\n'
        "p5,b.mp4,a.mp4,tie,short,short\n"
    )
    path = folder / "cot.csv"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(DataError) as caught:
        read_preferences(path)
    assert str(caught.value) == (
        f"{path}: 2 invalid row(s); fix them or set skip_invalid: true to skip them\n"
        f"  line 7: unknown label 'X'; {LABEL_HINT}\n"
        f"  line 8: video file {folder / 'gone.mp4'} does not exist"
    )

    data = read_preferences(path, skip_invalid=True)
    assert [(pair.line, pair.prompt) for pair in data.pairs] == [(2, "p1"), (5, "p2"), (11, "p5")]
    assert data.pairs[0].cot_a == "first line\nsecond line\nthird line"
    assert data.pairs[1].cot_b == "one\ntwo"
    assert data.skipped == [
        (7, f"unknown label 'X'; {LABEL_HINT}"),
        (8, f"video file {folder / 'gone.mp4'} does not exist"),
    ]


def test_multiline_cot_with_crlf_line_endings(folder):
    """The same numbering holds for a file written with csv's default CRLF line ends (record 2 on line 4)."""
    path = write_csv(
        folder / "crlf.csv",
        ["prompt", "video_a", "video_b", "label", "cot_a", "cot_b"],
        [["p1", "a.mp4", "b.mp4", "A", "one\r\ntwo\r\nthree", "c"], ["p2", "a.mp4", "b.mp4", "Z", "c", "c"]],
    )
    assert path.read_bytes().count(b"\r\n") == 5  # header, 2 + 1 for record 1, 1 for record 2
    data = read_preferences(path, skip_invalid=True)
    assert [pair.line for pair in data.pairs] == [2]
    assert data.skipped == [(5, f"unknown label 'Z'; {LABEL_HINT}")]


def test_blank_line_does_not_shift_line_numbers(folder):
    """Line 3 is blank; the bad record is on line 4 and must be reported as line 4."""
    path = folder / "blank.csv"
    path.write_text("prompt,video_a,video_b,label\np1,a.mp4,b.mp4,A\n\np2,a.mp4,b.mp4,X\n", encoding="utf-8")
    data = read_preferences(path, skip_invalid=True)
    assert [pair.line for pair in data.pairs] == [2]
    assert data.skipped == [(4, f"unknown label 'X'; {LABEL_HINT}")]


# --------------------------------------------------------------------------------------------------------
# The official DeScore stage-1 CSV
# --------------------------------------------------------------------------------------------------------

OFFICIAL_HEADER = ["videos", "problem", "durations", "prompt", "CoT_A", "CoT_B", "GSB"]


def official_problem(prompt: str) -> str:
    return f"Judge the video.\nText prompt: [{prompt}]\n<video>\nAnswer in JSON."


def test_official_stage1_csv_is_read_unchanged(folder):
    """GSB A / B / same -> +1 / -1 / 0, ``invalid`` rows (any case) excluded and counted even when their
    videos are missing; the instruction is the ``problem`` column verbatim; an empty ``prompt`` falls back
    to the instruction. Each row spans 6 physical lines (the problem has 3 newlines, each CoT 1), so the
    rows start on lines 2, 8, 14, 20, 26 and 32."""
    rows = [
        ["['a.mp4', 'b.mp4']", official_problem("a cat"), "[2.0, 2.0]", "a cat", "A is clean\nscore", "B\nnoisy", "A"],
        ["['b.mp4', 'a.mp4']", official_problem("a dog"), "[2.0, 2.0]", "a dog", "x\ny", "z\nw", "B"],
        ["['a.mp4', 'gone.mp4']", official_problem("x"), "[2.0, 2.0]", "x", "x\ny", "z\nw", "invalid"],
        ["['a.mp4', 'b.mp4']", official_problem("a car"), "[2.0, 2.0]", "a car", "x\ny", "z\nw", "same"],
        ["not a list", official_problem("y"), "[2.0, 2.0]", "y", "x\ny", "z\nw", "Invalid"],
        ["['a.mp4', 'b.mp4']", official_problem("a cow"), "[2.0, 2.0]", "", "x\ny", "z\nw", "A"],
    ]
    path = write_csv(folder / "stage1.csv", OFFICIAL_HEADER, rows)

    data = read_preferences(path)

    a, b = str(folder / "a.mp4"), str(folder / "b.mp4")
    assert data.pairs == [
        PreferencePair("a cat", a, b, 1, 2, cot_a="A is clean\nscore", cot_b="B\nnoisy",
                       instruction=official_problem("a cat")),
        PreferencePair("a dog", b, a, -1, 8, cot_a="x\ny", cot_b="z\nw", instruction=official_problem("a dog")),
        PreferencePair("a car", a, b, 0, 20, cot_a="x\ny", cot_b="z\nw", instruction=official_problem("a car")),
        PreferencePair(official_problem("a cow"), a, b, 1, 32, cot_a="x\ny", cot_b="z\nw",
                       instruction=official_problem("a cow")),
    ]
    assert data.excluded_invalid == 2
    assert data.skipped == []


def test_official_stage1_csv_bad_rows(folder):
    """Malformed ``videos`` lists, missing files and unknown verdicts are reported by line.

    Each row spans 4 physical lines (the problem text has 3 newlines): rows start on 2, 6, 10, ..., 26."""
    videos = ["['a.mp4', 'b.mp4']", "['a.mp4']", "a.mp4, b.mp4", "['a.mp4', 'gone.mp4']", "['a.mp4' 'b.mp4']",
              "[1, 2]", "['a.mp4', 'b.mp4']"]
    verdicts = ["A", "A", "A", "B", "A", "A", "maybe"]
    rows = [[v, official_problem("p"), "[1.0, 1.0]", "p", "c", "c", g] for v, g in zip(videos, verdicts)]
    path = write_csv(folder / "stage1.csv", OFFICIAL_HEADER, rows)

    expected = [
        (6, "column 'videos' must hold exactly two paths, got \"['a.mp4']\""),
        (10, "column 'videos' is not a list of two paths: 'a.mp4, b.mp4'"),
        (14, f"video file {folder / 'gone.mp4'} does not exist"),
        (18, "column 'videos' must hold exactly two paths, got \"['a.mp4' 'b.mp4']\""),
        (22, "column 'videos' must hold exactly two paths, got '[1, 2]'"),
        (26, f"unknown label 'maybe'; {LABEL_HINT}"),
    ]
    with pytest.raises(DataError) as caught:
        read_preferences(path)
    assert str(caught.value) == (
        f"{path}: 6 invalid row(s); fix them or set skip_invalid: true to skip them\n"
        + "\n".join(f"  line {line}: {reason}" for line, reason in expected)
    )
    data = read_preferences(path, skip_invalid=True)
    assert [pair.line for pair in data.pairs] == [2]
    assert data.skipped == expected


def test_official_videos_that_literal_eval_rejects_with_type_error(folder):
    """``{['a.mp4'], 'b.mp4'}`` is malformed like any other bad ``videos`` value: skipped with its line."""
    rows = [["{['a.mp4'], 'b.mp4'}", "p", "", "p", "c", "c", "A"], ["['a.mp4', 'b.mp4']", "p", "", "p", "c", "c", "A"]]
    path = write_csv(folder / "stage1.csv", OFFICIAL_HEADER, rows)
    data = read_preferences(path, skip_invalid=True)
    assert [pair.line for pair in data.pairs] == [3]
    assert [line for line, _ in data.skipped] == [2]


def stage2_answer(verdict: str, first: dict, second: dict) -> str:
    payload = json.dumps({"gsb_result": verdict, "video_1_scores": first, "video_2_scores": second})
    return f"<answer>\n```json\n{payload}\n```\n</answer>"


def test_official_stage2_csv_gives_labels_and_ground_truth(folder):
    """Verdicts map to +1 / -1 / 0 (anything else is a tie); the scores become scores_a / scores_b; an answer
    without its keys or JSON is an invalid row named by line."""
    first = {"subject": 2, "dynamics": 1, "camera": "N/A", "environment": 2, "style": 0}
    second = {"subject": 0, "dynamics": 0, "camera": 1, "environment": 1, "style": "N/A"}
    rows = [
        ["['a.mp4', 'b.mp4']", "judge a cat <video>", stage2_answer("Video 1 is better", first, second)],
        ["['b.mp4', 'a.mp4']", "judge a dog <video>", stage2_answer("Video 2 is better", second, first)],
        ["['a.mp4', 'b.mp4']", "judge a car <video>", stage2_answer("Both are equally good", first, first)],
        ["['a.mp4', 'b.mp4']", "judge a cow <video>", "<answer>{\"gsb_result\": \"Video 1 is better\"}</answer>"],
        ["['a.mp4', 'b.mp4']", "judge a fox <video>", "no answer here"],
    ]
    path = write_csv(folder / "stage2.csv", ["videos", "problem", "answer"], rows)

    data = read_preferences(path, skip_invalid=True)

    a, b = str(folder / "a.mp4"), str(folder / "b.mp4")
    assert [(p.video_a, p.video_b, p.label, p.scores_a, p.scores_b) for p in data.pairs] == [
        (a, b, 1, first, second), (b, a, -1, second, first), (a, b, 0, first, first)]
    assert [pair.instruction for pair in data.pairs] == ["judge a cat <video>", "judge a dog <video>", "judge a car <video>"]
    # the first three answers span 5 physical lines each
    assert data.skipped == [(17, "column 'answer' lacks ['video_1_scores', 'video_2_scores']"),
                            (18, "column 'answer': no <answer>...</answer> block")]


# --------------------------------------------------------------------------------------------------------
# Invalid rows and files
# --------------------------------------------------------------------------------------------------------


def test_invalid_rows_are_all_listed(folder):
    """One DataError lists every bad line with its reason; skip_invalid returns the good pairs instead."""
    header = ["prompt", "video_a", "video_b", "label", "cot_a", "cot_b", "scores_a"]
    rows = [
        ["ok", "a.mp4", "b.mp4", "A", "", "", ""],  # line 2
        ["bad label", "a.mp4", "b.mp4", "X", "", "", ""],  # line 3
        ["no video", "a.mp4", "gone.mp4", "A", "", "", ""],  # line 4
        ["one cot", "a.mp4", "b.mp4", "B", "only A", "", ""],  # line 5
        ["reserved", "a.mp4", "b.mp4", "B", "fine", "then <Reward> here", ""],  # line 6
        ["", "a.mp4", "b.mp4", "A", "", "", ""],  # line 7
        ["bad scores", "a.mp4", "b.mp4", "A", "", "", "not json"],  # line 8
        ["list scores", "a.mp4", "b.mp4", "A", "", "", "[1, 2]"],  # line 9
        ["ok too", "b.mp4", "a.mp4", "tie", "c", "c", ""],  # line 10
    ]
    path = write_csv(folder / "prefs.csv", header, rows)
    expected = [
        (3, f"unknown label 'X'; {LABEL_HINT}"),
        (4, f"video file {folder / 'gone.mp4'} does not exist"),
        (5, "only one of the two CoTs is given; give both or neither"),
        (6, "cot_b contains the reserved token '<Reward>'"),
        (7, "column 'prompt' is empty"),
        (8, "column 'scores_a' is not a JSON object: 'not json'"),
        (9, "column 'scores_a' is not a JSON object: '[1, 2]'"),
    ]

    with pytest.raises(DataError) as caught:
        read_preferences(path, reserved_tokens=("<Reward>",))
    assert str(caught.value) == (
        f"{path}: 7 invalid row(s); fix them or set skip_invalid: true to skip them\n"
        + "\n".join(f"  line {line}: {reason}" for line, reason in expected)
    )

    data = read_preferences(path, skip_invalid=True, reserved_tokens=("<Reward>",))
    assert [(pair.line, pair.prompt, pair.label) for pair in data.pairs] == [(2, "ok", 1), (10, "ok too", 0)]
    assert data.skipped == expected
    # Without the reserved token, line 6 is a valid pair.
    relaxed = read_preferences(path, skip_invalid=True)
    assert [pair.line for pair in relaxed.pairs] == [2, 6, 10]


def test_more_than_fifty_invalid_rows_are_summarised(folder):
    """60 bad rows: lines 2..51 are listed, then '... and 10 more'."""
    rows = [[f"p{i}", "a.mp4", "b.mp4", "X"] for i in range(60)]
    path = write_csv(folder / "prefs.csv", ["prompt", "video_a", "video_b", "label"], rows)
    with pytest.raises(DataError) as caught:
        read_preferences(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: 60 invalid row(s);")
    assert re.findall(r"line (\d+):", message) == [str(line) for line in range(2, 52)]
    assert message.endswith("\n  ... and 10 more")


def test_unknown_columns_name_every_layout(folder):
    path = write_csv(folder / "prefs.csv", ["prompt", "left", "right", "winner"], [["p", "a.mp4", "b.mp4", "A"]])
    with pytest.raises(DataError) as caught:
        read_preferences(path)
    assert str(caught.value) == (
        f"{path}: columns ['left', 'prompt', 'right', 'winner'] match no known layout; expected "
        "['prompt', 'video_a', 'video_b', 'label'] (optional ['cot_a', 'cot_b', 'scores_a', 'scores_b']), "
        "the official DeScore stage-1 columns ['videos', 'problem', 'CoT_A', 'CoT_B', 'GSB'], its stage-2 "
        "columns ['videos', 'problem', 'answer'] or VideoGen-RewardBench's ['path_A', 'path_B', 'prompt', 'Overall']"
    )


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.csv"
    with pytest.raises(DataError, match=re.escape(f"preference file {path} does not exist")):
        read_preferences(path)


@pytest.mark.parametrize("name", ["prefs.tsv", "prefs.parquet", "prefs"])
def test_unsupported_extension(folder, name):
    path = folder / name
    path.write_text("prompt\tvideo_a\tvideo_b\tlabel\n", encoding="utf-8")
    suffix = Path(name).suffix
    with pytest.raises(DataError) as caught:
        read_preferences(path)
    assert str(caught.value) == f"{path}: unsupported extension {suffix!r}; use .csv or .jsonl"


def test_header_only_csv_has_no_rows(folder):
    path = write_csv(folder / "prefs.csv", ["prompt", "video_a", "video_b", "label"], [])
    with pytest.raises(DataError) as caught:
        read_preferences(path)
    assert str(caught.value) == f"{path}: no data rows"


# --------------------------------------------------------------------------------------------------------
# Bad files: every error names the file and the line
# --------------------------------------------------------------------------------------------------------

HEADER = b"prompt,video_a,video_b,label\n"  # 29 bytes
COT_HEADER = b"prompt,video_a,video_b,label,cot_a,cot_b\n"  # 41 bytes
GOOD = b"p1,a.mp4,b.mp4,A\n"  # 17 bytes
GOOD_COT = b"p9,b.mp4,a.mp4,B,c,c\n"
NOT_UTF8 = "is not valid UTF-8; save the file as UTF-8"
QUOTE_HINT = "quote fields that contain commas, quotes or line breaks"


def jsonl_bytes(*lines: dict | bytes) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


ROW = {"prompt": "p", "video_a": "a.mp4", "video_b": "b.mp4", "label": "A"}  # 69 bytes as JSON, 70 with the line end

# (file name, bytes, read_preferences options, [(line, reason)] of the bad rows, lines of the good rows).
# Byte offsets count from 0; columns from 1, in bytes.
BAD_ROWS = {
    "latin-1 byte in a row": (
        "prefs.csv", HEADER + GOOD + b"caf\xe9,a.mp4,b.mp4,A\n" + GOOD, {},
        [(3, f"byte 0xe9 at column 4 of line 3 (byte offset 49 in the file) {NOT_UTF8}")], [2, 4],
    ),
    "cp1252 byte on the second line of a quoted CoT": (
        # the record starts on line 2 (24 bytes: p1,a.mp4,b.mp4,A,"first + line end); 0x96 is byte 8 of line 3
        "prefs.csv", COT_HEADER + b'p1,a.mp4,b.mp4,A,"first\nsecond \x96 line",c\n' + GOOD_COT, {},
        [(2, f"byte 0x96 at column 8 of line 3 (byte offset 72 in the file) {NOT_UTF8}")], [4],
    ),
    "byte-order mark counted in the offsets": (
        "prefs.csv", b"\xef\xbb\xbf" + HEADER + b"\xff1,a.mp4,b.mp4,A\n" + GOOD, {},
        [(2, f"byte 0xff at column 1 of line 2 (byte offset 32 in the file) {NOT_UTF8}")], [3],
    ),
    "latin-1 byte in a JSONL line": (
        # '{"prompt": "caf' is 15 bytes, so the bad byte is column 16 of line 2, offset 70 + 15
        "prefs.jsonl", jsonl_bytes(ROW, b'{"prompt": "caf\xe9", "video_a": "a.mp4", "video_b": "b.mp4", "label": "A"}', ROW),
        {}, [(2, f"byte 0xe9 at column 16 of line 2 (byte offset 85 in the file) {NOT_UTF8}")], [1, 3],
    ),
    "unquoted comma: one field too many": (
        "prefs.csv", HEADER + GOOD + b"a cat, running,a.mp4,b.mp4,A\n" + GOOD, {},
        [(3, f"5 field(s) but the header has 4; {QUOTE_HINT}")], [2, 4],
    ),
    "missing field": (
        "prefs.csv", HEADER + b"p1,a.mp4,b.mp4\n" + GOOD, {}, [(2, f"3 field(s) but the header has 4; {QUOTE_HINT}")], [3],
    ),
    "unclosed quote swallows the following lines": (
        "prefs.csv", COT_HEADER + GOOD_COT + b'p2,a.mp4,b.mp4,A,"unclosed,c\n' + GOOD_COT + GOOD_COT, {},
        [(3, f"5 field(s) but the header has 6 (the record runs to line 5); {QUOTE_HINT}")], [2],
    ),
    "JSONL field over max_field_chars": (
        "prefs.jsonl", jsonl_bytes(ROW, {**ROW, "cot_a": "x" * 51, "cot_b": "y"}, ROW), {"max_field_chars": 50},
        [(2, "column 'cot_a' has 51 characters, more than max_field_chars=50")], [1, 3],
    ),
    "JSONL line cut short": (
        "prefs.jsonl", jsonl_bytes(ROW, b'{"prompt": "p", "video_a": ', ROW), {},
        [(2, "not valid JSON at column 28 (Expecting value)")], [1, 3],
    ),
    "JSONL line that is not an object": (
        "prefs.jsonl", jsonl_bytes(ROW, b"[1, 2]", b'"p"', ROW), {},
        [(2, "expected a JSON object, got list"), (3, "expected a JSON object, got str")], [1, 4],
    ),
    "video compared with itself": (
        "prefs.csv", HEADER + GOOD + b"p2,a.mp4,./a.mp4,tie\n" + b"p3,b.mp4,clips/../b.mp4,A\n", {},
        [(3, "video_a and video_b are the same file FOLDER/a.mp4; a video is compared with itself"),
         (4, "video_a and video_b are the same file FOLDER/b.mp4; a video is compared with itself")],
        [2],
    ),
}


@pytest.mark.parametrize("case", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_bad_rows_name_file_and_line(folder, case):
    """Strict: one DataError names the file and lists each bad line with its reason. skip_invalid: the
    same (line, reason) list is recorded and the good rows are kept, with their own line numbers."""
    name, content, options, problems, kept = case
    (folder / "clips").mkdir()
    path = folder / name
    path.write_bytes(content)
    problems = [(line, reason.replace("FOLDER", str(folder))) for line, reason in problems]

    with pytest.raises(DataError) as caught:
        read_preferences(path, **options)
    assert str(caught.value) == (
        f"{path}: {len(problems)} invalid row(s); fix them or set skip_invalid: true to skip them\n"
        + "\n".join(f"  line {line}: {reason}" for line, reason in problems)
    )

    data = read_preferences(path, skip_invalid=True, **options)
    assert data.skipped == problems
    assert [pair.line for pair in data.pairs] == kept


BAD_FILES = {
    "UTF-16 file": (
        "prefs.csv", "prompt,video_a,video_b,label\n".encode("utf-16"), {},
        f"PATH line 1 (the header): byte 0xff at column 1 of line 1 (byte offset 0 in the file) {NOT_UTF8}",
    ),
    "column named twice": (
        "prefs.csv", b"prompt,video_a,video_b,label,label\n" + b"p1,a.mp4,b.mp4,A,B\n", {},
        "PATH line 1 (the header): column(s) ['label'] appear more than once",
    ),
    "CSV field over max_field_chars": (
        "prefs.csv", COT_HEADER + GOOD_COT + b"p2,a.mp4,b.mp4,A,c,\"" + b"y\n" * 30 + b'"\n', {"max_field_chars": 50},
        "PATH line 3: cannot parse the CSV record that starts here (field larger than field limit (50)); a field "
        'is longer than max_field_chars=50 characters, usually because a quote (") is not closed and the rest of '
        "the file became one field",
    ),
    "empty file": ("prefs.csv", b"", {}, "PATH: no data rows"),
    "blank lines only": ("prefs.jsonl", b"\n \n\n", {}, "PATH: no data rows"),
}


@pytest.mark.parametrize("case", BAD_FILES.values(), ids=BAD_FILES.keys())
@pytest.mark.parametrize("skip_invalid", [False, True])
def test_unreadable_files_name_file_and_line(folder, case, skip_invalid):
    """Problems past which nothing can be trusted stop the read, even with skip_invalid: a header that is
    not UTF-8 or names a column twice, and a CSV field over the limit (the reader can't tell where it ends)."""
    name, content, options, message = case
    path = folder / name
    path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        read_preferences(path, skip_invalid=skip_invalid, **options)
    assert str(caught.value) == message.replace("PATH", str(path))


def test_long_fields_within_the_bound_are_read(folder):
    """A 200,000-character CoT is over csv's own default field limit (131,072) but under max_field_chars;
    it is read whole, and csv's limit is put back afterwards (even when a read fails)."""
    default_limit = csv.field_size_limit()
    long_cot = "word " * 40_000
    path = write_csv(
        folder / "prefs.csv", ["prompt", "video_a", "video_b", "label", "cot_a", "cot_b"],
        [["p1", "a.mp4", "b.mp4", "A", long_cot, "short"], ["p2", "b.mp4", "a.mp4", "B", "c", "c"]],
    )
    data = read_preferences(path)
    assert [pair.cot_a for pair in data.pairs] == [long_cot, "c"]
    assert csv.field_size_limit() == default_limit
    with pytest.raises(DataError, match="line 2: cannot parse the CSV record"):
        read_preferences(path, max_field_chars=100_000)
    assert csv.field_size_limit() == default_limit


@pytest.mark.parametrize("value", [0, -5, 1.5, True, "1000"])
def test_max_field_chars_must_be_a_positive_integer(folder, value):
    path = write_csv(folder / "prefs.csv", ["prompt", "video_a", "video_b", "label"], [["p", "a.mp4", "b.mp4", "A"]])
    with pytest.raises(ConfigError) as caught:
        read_preferences(path, max_field_chars=value)
    assert str(caught.value) == f"max_field_chars must be a positive number of characters, got {value!r}"


# --------------------------------------------------------------------------------------------------------
# check_videos: open every video before a long job
# --------------------------------------------------------------------------------------------------------


def _pairs_with_bad_videos(folder: Path) -> Path:
    return write_csv(
        folder / "prefs.csv",
        ["prompt", "video_a", "video_b", "label"],
        [
            ["ok", "a.mp4", "b.mp4", "A"],  # line 2
            ["corrupt b", "a.mp4", "corrupt.mp4", "A"],  # line 3
            ["one frame a", "one_frame.mp4", "b.mp4", "B"],  # line 4
            ["ok swapped", "b.mp4", "a.mp4", "B"],  # line 5
            ["both bad", "corrupt.mp4", "audio_only.mp4", "tie"],  # line 6
            ["bad label", "a.mp4", "b.mp4", "?"],  # line 7
        ],
    )


def test_check_videos_passes_readable_videos(folder):
    path = write_csv(
        folder / "prefs.csv", ["prompt", "video_a", "video_b", "label"],
        [["p", "a.mp4", "b.mp4", "A"], ["q", "b.mp4", "a.mp4", "tie"]],
    )
    data = read_preferences(path)
    assert check_videos(data) == data


def test_check_videos_lists_lines_using_bad_videos(folder):
    """corrupt.mp4 (lines 3, 6), one_frame.mp4 (line 4) and audio_only.mp4 (line 6) are reported."""
    data = read_preferences(_pairs_with_bad_videos(folder), skip_invalid=True)
    assert [pair.line for pair in data.pairs] == [2, 3, 4, 5, 6]

    with pytest.raises(DataError) as caught:
        check_videos(data)
    message = str(caught.value)
    assert message.startswith(f"{folder / 'prefs.csv'}: ")
    assert "3 invalid row(s)" in message  # one entry per row, both bad videos of line 6 on it
    rows = re.findall(r"line (\d+): (.*)", message)
    assert [int(line) for line, _ in rows] == [3, 4, 6]
    listed = [(line, *re.fullmatch(r"video (\S+): (.*)", part).groups()) for line, text in rows for part in re.split(r"; (?=video )", text)]
    by_video = {(int(line), Path(video).name) for line, video, _ in listed}
    assert by_video == {(3, "corrupt.mp4"), (4, "one_frame.mp4"), (6, "corrupt.mp4"), (6, "audio_only.mp4")}
    reasons = {Path(video).name: reason for _, video, reason in listed}
    assert reasons["one_frame.mp4"] == "it has 1 frame(s); at least 2 are needed"
    assert reasons["audio_only.mp4"] == "the file has no video stream"
    assert reasons["corrupt.mp4"].startswith("unreadable container: ")


def test_check_videos_skip_invalid_drops_and_counts(folder):
    """With skip_invalid the three pairs on lines 3, 4 and 6 are dropped and recorded next to the
    row already skipped for its label (line 7); the skipped list stays sorted by line."""
    data = read_preferences(_pairs_with_bad_videos(folder), skip_invalid=True)
    assert data.skipped == [(7, f"unknown label '?'; {LABEL_HINT}")]

    checked = check_videos(data, skip_invalid=True)

    assert [(pair.line, pair.prompt) for pair in checked.pairs] == [(2, "ok"), (5, "ok swapped")]
    assert len(data) - len(checked) == 3
    assert sorted({line for line, _ in checked.skipped}) == [3, 4, 6, 7]
    assert checked.skipped == sorted(checked.skipped)
    assert (4, f"video {folder / 'one_frame.mp4'}: it has 1 frame(s); at least 2 are needed") in checked.skipped
    assert checked.source == data.source and checked.excluded_invalid == data.excluded_invalid
    # The input is left as it was.
    assert [pair.line for pair in data.pairs] == [2, 3, 4, 5, 6]
    assert replace(checked, pairs=data.pairs, skipped=data.skipped) == data


def test_csv_with_a_byte_order_mark_is_read(folder):
    """Spreadsheet exports start with a UTF-8 BOM; the first column must still be 'prompt'."""
    path = folder / "bom.csv"
    path.write_text("\ufeffprompt,video_a,video_b,label\np1,a.mp4,b.mp4,A\n", encoding="utf-8")
    assert [pair.prompt for pair in read_preferences(path).pairs] == ["p1"]


# --------------------------------------------------------------------------------------------------------
# One pass over rows and videos
# --------------------------------------------------------------------------------------------------------


def _rows_and_videos_both_bad(folder: Path) -> Path:
    small_clip(folder / "clip.mp4")
    truncated_clip(folder / "truncated.mp4")
    path = folder / "prefs.csv"
    path.write_text(
        "prompt,video_a,video_b,label\n"
        "ok,clip.mp4,b.mp4,A\n"  # line 2
        "bad label,clip.mp4,b.mp4,?\n"  # line 3
        "corrupt,corrupt.mp4,clip.mp4,B\n"  # line 4
        "a cat, running,clip.mp4,b.mp4,A\n"  # line 5: unquoted comma
        "truncated,clip.mp4,truncated.mp4,tie\n"  # line 6
        "gone,clip.mp4,gone.mp4,A\n"  # line 7
        "ok too,b.mp4,clip.mp4,B\n",  # line 8
        encoding="utf-8",
    )
    return path


def test_strict_pass_lists_bad_rows_and_bad_videos_together(folder):
    """probe_videos=True: the malformed rows (3, 5, 7) and the rows whose video cannot be opened (4: random
    bytes, 6: an mp4 cut short) come back in one error, in line order."""
    path = _rows_and_videos_both_bad(folder)

    with pytest.raises(DataError) as caught:
        read_preferences(path, probe_videos=True)

    message = str(caught.value)
    assert message.startswith(f"{path}: 5 invalid row(s); fix them or set skip_invalid: true to skip them\n")
    listed = re.findall(r"\n  line (\d+): (.*)", message)
    assert [int(line) for line, _ in listed] == [3, 4, 5, 6, 7]
    reasons = dict((int(line), reason) for line, reason in listed)
    assert reasons[3] == f"unknown label '?'; {LABEL_HINT}"
    assert reasons[4].startswith(f"video {folder / 'corrupt.mp4'}: unreadable container: ")
    assert reasons[5] == f"5 field(s) but the header has 4; {QUOTE_HINT}"
    assert reasons[6].startswith(f"video {folder / 'truncated.mp4'}: ")
    assert reasons[7] == f"video file {folder / 'gone.mp4'} does not exist"
    # Without probing, only the rows are checked: the same three row problems, no video ones.
    with pytest.raises(DataError) as rows_only:
        read_preferences(path)
    assert [int(line) for line in re.findall(r"\n  line (\d+):", str(rows_only.value))] == [3, 5, 7]


def test_decode_limits_apply_to_the_videos_a_file_names(folder):
    """The limits reach the header check: with frames capped at 1,000 px, the good rows' 64x64 clips (4,096
    px) are listed too, each with the limit it exceeds."""
    path = _rows_and_videos_both_bad(folder)
    with pytest.raises(DataError) as caught:
        read_preferences(path, probe_videos=True, limits=DecodeLimits(max_pixels_per_frame=1000))
    listed = dict((int(line), reason) for line, reason in re.findall(r"\n  line (\d+): (.*)", str(caught.value)))
    assert sorted(listed) == [2, 3, 4, 5, 6, 7, 8]
    assert "64x64 = 4,096 px exceeds DecodeLimits.max_pixels_per_frame = 1,000 px" in listed[2]


def test_skip_invalid_pass_drops_bad_rows_and_bad_videos(folder):
    """The same file with skip_invalid: the two good rows are kept, the five others recorded with the
    reasons the strict pass lists; check_videos afterwards has nothing left to drop."""
    path = _rows_and_videos_both_bad(folder)
    with pytest.raises(DataError) as caught:
        read_preferences(path, probe_videos=True)
    listed = [(int(line), reason) for line, reason in re.findall(r"\n  line (\d+): (.*)", str(caught.value))]

    data = read_preferences(path, skip_invalid=True, probe_videos=True)

    assert [(pair.line, pair.prompt) for pair in data.pairs] == [(2, "ok"), (8, "ok too")]
    assert data.skipped == listed
    assert check_videos(data) == data


# --------------------------------------------------------------------------------------------------------
# Warnings on kept pairs: duplicates and contradictions
# --------------------------------------------------------------------------------------------------------


def test_duplicates_and_contradictions_are_counted_and_logged(folder, caplog):
    """The same comparison is the same prompt and the same two files, in either order (the label flips with
    the order). Each repeat is checked against the comparison's first line."""
    (folder / "clips").mkdir()
    shutil.copy(folder / "a.mp4", folder / "clips" / "c.mp4")
    path = write_csv(
        folder / "prefs.csv", ["prompt", "video_a", "video_b", "label"],
        [
            ["cat", "a.mp4", "b.mp4", "A"],  # line 2: first "cat" comparison, a preferred
            ["cat", "a.mp4", "b.mp4", "A"],  # line 3: duplicate of 2
            ["cat", "b.mp4", "a.mp4", "B"],  # line 4: duplicate of 2 (swapped, a still preferred)
            ["cat", "b.mp4", "a.mp4", "A"],  # line 5: contradicts 2 (swapped-A prefers b)
            ["cat", "./a.mp4", "clips/../b.mp4", "B"],  # line 6: contradicts 2 (same files, other spelling)
            ["dog", "a.mp4", "b.mp4", "tie"],  # line 7: first "dog" comparison
            ["dog", "b.mp4", "a.mp4", "0"],  # line 8: duplicate of 7 (a tie stays a tie when swapped)
            ["dog", "a.mp4", "b.mp4", "A"],  # line 9: contradicts 7
            ["cat", "a.mp4", "clips/c.mp4", "A"],  # line 10: another file (a copy of a.mp4): a new comparison
            ["Cat", "a.mp4", "b.mp4", "B"],  # line 11: another prompt: a new comparison
        ],
    )

    with caplog.at_level(logging.WARNING, logger="reward.data"):
        data = read_preferences(path)

    assert [pair.line for pair in data.pairs] == list(range(2, 12))  # warned about, not dropped
    assert data.skipped == []
    assert data.warnings == PairWarnings(duplicates=((3, 2), (4, 2), (8, 7)), contradictions=((5, 2), (6, 2), (9, 7)))
    assert [record.getMessage() for record in caplog.records] == [
        f"{path}: 3 duplicate pair(s) (same prompt and videos, same preference): "
        "line 3 repeats line 2, line 4 repeats line 2, line 8 repeats line 7",
        f"{path}: 3 contradictory label(s) (same prompt and videos, another preference): "
        "line 5 contradicts line 2, line 6 contradicts line 2, line 9 contradicts line 7",
    ]


def test_official_layout_duplicates_and_warning_summary(folder, caplog):
    """Official rows compare on the instruction too; more than ten repeats are summarised in the log."""
    row = ["['a.mp4', 'b.mp4']", official_problem("a cat"), "[2.0, 2.0]", "a cat", "x", "y", "A"]
    other_instruction = [row[0], official_problem("a cat") + " Be brief.", *row[2:]]
    path = write_csv(folder / "stage1.csv", OFFICIAL_HEADER, [row] * 13 + [other_instruction])
    # Each official_problem row spans 4 physical lines: rows start on 2, 6, ..., 54.

    with caplog.at_level(logging.WARNING, logger="reward.data"):
        data = read_preferences(path)

    assert data.warnings == PairWarnings(duplicates=tuple((line, 2) for line in range(6, 54, 4)))
    (message,) = [record.getMessage() for record in caplog.records]
    assert message.startswith(f"{path}: 12 duplicate pair(s) (same prompt and videos, same preference): line 6 repeats line 2, ")
    assert message.endswith(", line 42 repeats line 2, ... and 2 more")


def test_self_comparisons_are_invalid_rows_and_warnings_cover_kept_pairs_only(folder, caplog):
    """A video against itself is an invalid row (skipped and counted, never trained on); a duplicate whose
    twin was skipped is no duplicate. Lines 2 and 3 are self-comparisons, line 4 has a bad label and
    line 5 (the same comparison as line 4) is the only valid pair."""
    path = write_csv(
        folder / "prefs.csv", ["prompt", "video_a", "video_b", "label"],
        [["cat", "a.mp4", "a.mp4", "A"], ["cat", "b.mp4", "./b.mp4", "tie"], ["cat", "a.mp4", "b.mp4", "?"],
         ["cat", "a.mp4", "b.mp4", "A"]],
    )
    with caplog.at_level(logging.WARNING, logger="reward.data"):
        data = read_preferences(path, skip_invalid=True)
    same = "a video is compared with itself"
    assert data.skipped == [
        (2, f"video_a and video_b are the same file {folder / 'a.mp4'}; {same}"),
        (3, f"video_a and video_b are the same file {folder / 'b.mp4'}; {same}"),
        (4, f"unknown label '?'; {LABEL_HINT}"),
    ]
    assert [pair.line for pair in data.pairs] == [5]
    assert data.warnings == PairWarnings()
    assert caplog.records[-1].getMessage() == (
        f"{path}: 1 valid pair(s), 3 invalid row(s) skipped, 0 row(s) labelled invalid excluded"
    )
