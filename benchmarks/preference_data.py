"""Preference benchmarks read into one shape: (prompt, video A, video B, human label) per pair.

Formats (the file's columns tell them apart; ``format=`` forces one):

- **VideoGen-RewardBench** (``KwaiVGI/VideoGen-RewardBench``, ``videogen-rewardbench.csv``): ``path_A``,
  ``path_B``, ``prompt`` and one label column per dimension — ``Overall``, ``VQ`` (visual quality), ``MQ``
  (motion quality), ``TA`` (text alignment) — holding ``A``, ``B`` or ``same``. ``dimension`` picks the
  column (default ``Overall``).
- **GenAI-Bench video** (``TIGER-Lab/GenAI-Bench``, ``video_generation``): ``prompt``, ``left_video``,
  ``right_video``, ``vote_type``; ``leftvote`` → A, ``rightvote`` → B, ``tievote`` and ``bothbad_vote`` → tie
  (VideoAlign's mapping).
- **Preference pairs**: our pair format and the official DeScore stage-1 CSV, read by
  :func:`reward.data.read_preferences` (paths relative to the file's folder, as everywhere in the kit).

Labels: +1 (A preferred), −1 (B preferred), 0 (tie). Benchmark video paths resolve against ``video_root``
(default: the data file's folder); pairs hold absolute paths. A pair whose video is missing is skipped and listed with its line, so a
partly downloaded benchmark still runs and says how much of it was scored; an unknown label is an error.
CSV and JSONL files are read (a JSON array, as some copies ship, converts with
``python -c "import json,sys; [print(json.dumps(r)) for r in json.load(open(sys.argv[1]))]" data.json``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from reward.data import read_preferences
from reward.errors import ConfigError, DataError
from reward.records import read_records


class BenchmarkFormat(StrEnum):
    VIDEOGEN_REWARDBENCH = "videogen_rewardbench"
    GENAI_BENCH = "genai_bench"
    PAIRS = "pairs"


VIDEOGEN_DIMENSIONS = ("Overall", "VQ", "MQ", "TA")
VIDEOGEN_LABELS = {"A": 1, "B": -1, "same": 0}
GENAI_VOTES = {"leftvote": 1, "rightvote": -1, "tievote": 0, "bothbad_vote": 0}
# format -> its (prompt, video A, video B) columns
_COLUMNS = {
    BenchmarkFormat.VIDEOGEN_REWARDBENCH: ("prompt", "path_A", "path_B"),
    BenchmarkFormat.GENAI_BENCH: ("prompt", "left_video", "right_video"),
}


@dataclass(frozen=True)
class BenchmarkPair:
    prompt: str
    video_a: str
    video_b: str
    label: int
    line: int


@dataclass(frozen=True)
class Benchmark:
    """The pairs of one benchmark file, and the (line, reason) of every pair left out."""

    source: Path
    format: BenchmarkFormat
    dimension: str | None
    pairs: list[BenchmarkPair]
    skipped: list[tuple[int, str]]


def detect_format(columns: list[str]) -> BenchmarkFormat:
    """The format whose columns the file has."""
    if {"path_A", "path_B"} <= set(columns):
        return BenchmarkFormat.VIDEOGEN_REWARDBENCH
    if {"left_video", "right_video", "vote_type"} <= set(columns):
        return BenchmarkFormat.GENAI_BENCH
    return BenchmarkFormat.PAIRS


def read_benchmark(
    path: str | Path,
    *,
    video_root: str | Path | None = None,
    dimension: str | None = None,
    benchmark_format: BenchmarkFormat | str | None = None,
) -> Benchmark:
    """Read one benchmark file (module docstring; ``benchmark_format`` overrides detection); raises DataError naming every
    line with an unknown label."""
    path = Path(path)
    records = read_records(path)
    kind = BenchmarkFormat(benchmark_format) if benchmark_format is not None else detect_format(records.columns)
    if kind is BenchmarkFormat.PAIRS:
        if video_root is not None or dimension is not None:
            raise ConfigError(f"{path} is a preference-pair file: its videos resolve against its own folder and it has "
                              "one label, so video_root and dimension do not apply")
        data = read_preferences(path, skip_invalid=True)
        pairs = [BenchmarkPair(pair.prompt, os.path.abspath(pair.video_a), os.path.abspath(pair.video_b), pair.label, pair.line)
                 for pair in data.pairs]
        return Benchmark(path, kind, None, pairs, data.skipped)
    if kind is BenchmarkFormat.VIDEOGEN_REWARDBENCH:
        dimension = dimension or "Overall"
        if dimension not in VIDEOGEN_DIMENSIONS:
            raise ConfigError(f"dimension must be one of {', '.join(VIDEOGEN_DIMENSIONS)}, got {dimension!r}")
        label_column, labels = dimension, VIDEOGEN_LABELS
    else:
        if dimension is not None:
            raise ConfigError(f"{path} is GenAI-Bench: it has one vote per pair, so dimension does not apply")
        label_column, labels = "vote_type", GENAI_VOTES
    missing = [name for name in (*_COLUMNS[kind], label_column) if name not in records.columns]
    if missing:
        raise DataError(f"{path}: a {kind.value} file needs the column(s) {', '.join(missing)} (columns: {records.columns})")
    root = Path(video_root) if video_root is not None else path.parent
    pairs, skipped, bad_labels = _benchmark_pairs(records.rows, kind, label_column, labels, root)
    if bad_labels:
        listing = "\n".join(f"  line {line}: {reason}" for line, reason in bad_labels[:50])
        raise DataError(f"{path}: {len(bad_labels)} row(s) with an unknown {label_column} label\n{listing}")
    return Benchmark(path, kind, dimension, pairs, sorted(records.problems + skipped))


def _benchmark_pairs(
    rows: list[tuple[int, dict[str, Any]]], kind: BenchmarkFormat, label_column: str, labels: dict[str, int], root: Path
) -> tuple[list[BenchmarkPair], list[tuple[int, str]], list[tuple[int, str]]]:
    """The pairs, the (line, reason) of pairs with a missing video, and of rows with an unknown label."""
    prompt_column, a_column, b_column = _COLUMNS[kind]
    exists: dict[str, bool] = {}
    pairs, skipped, bad_labels = [], [], []
    for line, row in rows:
        value = str(row.get(label_column) or "").strip()
        if value not in labels:
            bad_labels.append((line, f"label {value!r} is not one of {', '.join(labels)}"))
            continue
        videos = [os.path.abspath(root / str(row[column] or "")) for column in (a_column, b_column)]
        absent = [video for video in videos if not exists.setdefault(video, os.path.isfile(video))]
        if absent:
            skipped.append((line, "; ".join(f"video file {video} does not exist" for video in absent)))
            continue
        pairs.append(BenchmarkPair(str(row[prompt_column] or ""), videos[0], videos[1], labels[value], line))
    return pairs, skipped, bad_labels
