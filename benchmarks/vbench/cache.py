"""The per-video cache of ``descore bench vbench``: one JSONL file per dimension, appended as each video ends.

In ``{output_dir}/per_video/``, for each dimension::

    subject_consistency.jsonl           {"video": absolute path, "value": ..., "pairs": ..., "similarity_sum": ...}
    subject_consistency.settings.json   what produced the lines: the dimension's weight files (sha256), backend

A line is written and flushed to disk as soon as its video is scored, so a killed run loses at most the
video in progress; a re-run with the same settings scores only the videos that have no line yet (a line cut
short by the kill is dropped). Other settings — another weight file, another backend — would mix two
measurements in one file, so the run stops and lists the differences. Dimensions are cached apart so that a
later run may add a dimension, or videos, to an output folder without redoing the rest (the same layout
``descore reward score`` uses for its output, :mod:`reward.score_output`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from reward.errors import DataError
from reward.run_record import RunMismatchError, config_differences, read_record, write_record
from reward.score_output import append_records

from .metrics import VideoScore

JOB = "bench vbench"
FOLDER = "per_video"


def cache_path(output_dir: Path, dimension: str) -> Path:
    return output_dir / FOLDER / f"{dimension}.jsonl"


def settings_path(cache: Path) -> Path:
    return cache.with_name(cache.stem + ".settings.json")


def open_cache(cache: Path, settings: Mapping[str, Mapping[str, Any]]) -> dict[str, VideoScore]:
    """The scores an earlier run with these ``settings`` left in ``cache`` (video path -> score), after
    recording the settings for this run.

    Raises:
        RunMismatchError: the earlier run used other settings (listed), or lines are there without a record.
        DataError: a line (other than a last line cut short) is not a score record.
    """
    record_path = settings_path(cache)
    record = read_record(record_path)
    if record is None and cache.exists():
        raise RunMismatchError(f"{cache} has no {record_path.name} saying how it was measured; move it away")
    if record is not None:
        if record.get("job") != JOB:
            raise RunMismatchError(f"{record_path} is not a settings record of {JOB!r}; move it away")
        differences = config_differences(record["config"], settings)
        if differences:
            listing = "\n  ".join(differences)
            raise RunMismatchError(
                f"{cache} was measured with other settings; adding to it would mix two measurements:\n  {listing}\n"
                f"Choose another --output_dir, or delete {cache} and {record_path.name} to measure again."
            )
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_record(record_path, JOB, settings)
    return _read_scores(cache) if cache.is_file() else {}


def _read_scores(cache: Path) -> dict[str, VideoScore]:
    """Every complete line of ``cache``; a last line without its newline (cut by a kill) is cut off the file."""
    data = cache.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with cache.open("r+b") as handle:
            handle.truncate(len(data))
    scores = {}
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
            scores[record["video"]] = VideoScore(record["value"], record.get("pairs"), record.get("similarity_sum"))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataError(f"{cache} line {number} is not a score record ({error}); delete the file to measure again") from error
    return scores


@contextmanager
def appending(caches: Mapping[str, Path]) -> Iterator[dict[str, IO[str]]]:
    """Each dimension's cache, opened for appending."""
    handles: dict[str, IO[str]] = {}
    try:
        for dimension, cache in caches.items():
            handles[dimension] = cache.open("a", encoding="utf-8")
        yield handles
    finally:
        for handle in handles.values():
            handle.close()


def append_score(handle: IO[str], video: str, score: VideoScore) -> None:
    """One video's line, on disk before the next video starts."""
    record = {"video": video, "value": score.value}
    if score.pairs is not None:
        record |= {"pairs": score.pairs, "similarity_sum": score.similarity_sum}
    append_records(handle, [record])
