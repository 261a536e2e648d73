"""Preference data: CSV / JSONL files of (prompt, video A, video B, label) rows; and video indexes (prompt,
file), such as the ``index.csv`` that ``descore tune sample`` writes, for scoring.

Two layouts are read:

* ours — columns ``prompt, video_a, video_b, label`` with optional ``cot_a, cot_b`` (pre-collected chains of
  thought) and ``scores_a, scores_b`` (JSON sub-dimension ground truth, used by stage 2). Labels are ``A`` /
  ``B`` / ``tie`` or ``1`` / ``-1`` / ``0`` (``same`` is accepted as a tie, as in VideoAlign files);
* the official DeScore stage-1 CSV — ``videos`` (a Python-list string of two paths), ``problem`` (the full
  judge instruction, used verbatim), ``CoT_A``, ``CoT_B`` and ``GSB`` (``A`` / ``B`` / ``same`` /
  ``invalid``), read unchanged. ``invalid`` rows are excluded as the official code excludes them;
* the official DeScore stage-2 CSV — ``videos``, ``problem`` and ``answer`` (an answer block with ``gsb_result``,
  ``video_1_scores`` and ``video_2_scores``): the verdict becomes the label (anything but "Video 1/2 is better"
  is a tie) and the scores become ``scores_a`` / ``scores_b``;
* VideoGen-RewardBench (VideoAlign, arXiv 2501.13918) — ``path_A``, ``path_B``, ``prompt`` and the ``Overall``
  label (``A`` / ``B`` / ``same``); its per-dimension labels (``VQ``, ``MQ``, ``TA``) are not read here
  (``benchmarks.preference_data`` evaluates them).

Files are UTF-8 (a byte-order mark is allowed). Relative video paths resolve against the data file's folder.
Every problem is reported with the file and its line number (the CSV header is line 1): bytes that are not
UTF-8 (with their column and byte offset), a CSV record whose field count differs from the header's, a JSONL
line that is not a JSON object, a field longer than ``max_field_chars``, an unknown label, a missing video,
a video compared with itself. Without ``skip_invalid`` one :class:`DataError` lists them all; with it the bad
rows are dropped and counted. Pairs that are valid but suspicious — the same comparison twice, or with
contradictory labels — are kept, logged and counted in :class:`PairWarnings`.
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import ConfigError, DataError, VideoDecodeError
from .records import MAX_FIELD_CHARS, Records, read_records
from .rollout_rewards import official_ground_truth
from .video import DecodeLimits, probe_video

logger = logging.getLogger(__name__)

LABELS: dict[str, int] = {"a": 1, "1": 1, "+1": 1, "b": -1, "-1": -1, "tie": 0, "same": 0, "0": 0}
OURS_REQUIRED = ("prompt", "video_a", "video_b", "label")
OFFICIAL_REQUIRED = ("videos", "problem", "CoT_A", "CoT_B", "GSB")
OFFICIAL_STAGE2_REQUIRED = ("videos", "problem", "answer")
OURS_OPTIONAL = ("cot_a", "cot_b", "scores_a", "scores_b")
VIDEOGEN_REQUIRED = ("path_A", "path_B", "prompt", "Overall")
INDEX_REQUIRED = ("prompt", "file")  # `descore tune sample`'s index.csv
LISTED_PROBLEMS = 50


@dataclass(frozen=True)
class PreferencePair:
    """One labelled pair. ``label`` is +1 when A is preferred, −1 when B is, 0 for a tie."""

    prompt: str
    video_a: str
    video_b: str
    label: int
    line: int
    cot_a: str | None = None
    cot_b: str | None = None
    scores_a: dict[str, Any] | None = None
    scores_b: dict[str, Any] | None = None
    instruction: str | None = None

    @property
    def has_cot(self) -> bool:
        return self.cot_a is not None and self.cot_b is not None


@dataclass(frozen=True)
class PairWarnings:
    """Kept pairs that look like mistakes, each as ``(line, earlier line)``.

    Two lines are the same comparison when prompt, instruction and both videos (after resolving the paths,
    in either order) agree. A repeat with the same preference is a duplicate (it weighs that comparison
    twice); one with another preference (A vs B, or A vs tie; the label is flipped when the videos are
    swapped) contradicts the first line of that comparison.
    """

    duplicates: tuple[tuple[int, int], ...] = ()
    contradictions: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class PreferenceData:
    """The valid pairs of a file, every row that was skipped (line, reason), and the warnings on kept pairs."""

    source: Path
    pairs: list[PreferencePair]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    excluded_invalid: int = 0
    warnings: PairWarnings = PairWarnings()

    def __len__(self) -> int:
        return len(self.pairs)


def read_preferences(
    path: str | Path,
    *,
    skip_invalid: bool = False,
    reserved_tokens: tuple[str, ...] = (),
    probe_videos: bool = False,
    max_field_chars: int = MAX_FIELD_CHARS,
    limits: DecodeLimits = DecodeLimits(),
) -> PreferenceData:
    """Read and validate a preference file.

    Args:
        path: a ``.csv`` or ``.jsonl`` file in one of the two layouts above.
        skip_invalid: drop bad rows (see the module docstring) and count them, instead of raising one error
            that lists them all.
        reserved_tokens: strings that must not occur in CoT text (the ``<Reward>`` query token: a CoT that
            contains it would put a second query position into the sequence).
        probe_videos: also open every video (as :func:`check_videos` does), so that one pass reports bad
            rows and bad videos together.
        max_field_chars: the longest field accepted, in characters.
        limits: what a video may cost to decode (checked from its header when ``probe_videos``).

    Raises:
        DataError: the file is missing, has no rows, has a bad header, a CSV record that cannot be parsed
            (a field over ``max_field_chars``: the reader cannot tell where it ends), or (without
            ``skip_invalid``) invalid rows; the message lists every bad line, the first 50 in full.
    """
    path = Path(path)
    if isinstance(max_field_chars, bool) or not isinstance(max_field_chars, int) or max_field_chars < 1:
        raise ConfigError(f"max_field_chars must be a positive number of characters, got {max_field_chars!r}")
    records = read_records(path, max_field_chars=max_field_chars)
    resolve = functools.cache(os.path.realpath)  # one identity per file for self-pairs and repeats
    pairs, problems, excluded = _parse_rows(path, records, reserved_tokens, resolve)
    if probe_videos:
        video_problems = _video_problems(pairs, limits)
        problems += video_problems
        pairs = _without_lines(pairs, video_problems)
    problems.sort()
    if problems and not skip_invalid:
        raise _invalid_rows_error(path, problems)
    _log_skipped(path, problems)
    if problems or excluded:
        logger.warning(
            "%s: %d valid pair(s), %d invalid row(s) skipped, %d row(s) labelled invalid excluded",
            path, len(pairs), len(problems), excluded,
        )
    warnings = _pair_warnings(pairs, resolve)
    _log_warnings(path, warnings)
    return PreferenceData(source=path, pairs=pairs, skipped=problems, excluded_invalid=excluded, warnings=warnings)


def check_videos(data: PreferenceData, *, skip_invalid: bool = False) -> PreferenceData:
    """Open every distinct video once (container, stream and frame count; no full decode).

    Catches truncated, unreadable, zero-frame and single-frame files before a long job starts. Returns the
    data without the pairs that use a bad video (those rows are added to ``skipped``) when
    ``skip_invalid``; otherwise raises one :class:`DataError` listing every affected line. For data not
    read yet, ``read_preferences(..., probe_videos=True)`` lists bad rows and bad videos in one error.
    """
    problems = _video_problems(data.pairs)
    if not problems:
        return data
    if not skip_invalid:
        raise _invalid_rows_error(data.source, problems)
    _log_skipped(data.source, problems)
    kept = _without_lines(data.pairs, problems)
    logger.warning("%s: %d pair(s) skipped for unreadable videos, %d kept", data.source, len(data.pairs) - len(kept), len(kept))
    return replace(data, pairs=kept, skipped=sorted(data.skipped + problems))


def _video_problems(pairs: list[PreferencePair], limits: DecodeLimits = DecodeLimits()) -> list[tuple[int, str]]:
    """(line, reason) for every pair that uses a video :func:`probe_video` rejects; each video opened once."""
    videos = sorted({path for pair in pairs for path in (pair.video_a, pair.video_b)})
    bad: dict[str, str] = {}
    for path in tqdm(videos, desc="checking videos", unit="video", disable=len(videos) < 100):
        try:
            probe_video(path, limits=limits)
        except VideoDecodeError as error:
            bad[path] = error.reason
    return [
        (pair.line, "; ".join(f"video {path}: {bad[path]}" for path in dict.fromkeys((pair.video_a, pair.video_b)) if path in bad))
        for pair in pairs
        if pair.video_a in bad or pair.video_b in bad
    ]


def _without_lines(pairs: list[PreferencePair], problems: list[tuple[int, str]]) -> list[PreferencePair]:
    bad_lines = {line for line, _ in problems}
    return [pair for pair in pairs if pair.line not in bad_lines]


def _invalid_rows_error(path: Path, problems: list[tuple[int, str]]) -> DataError:
    listing = "\n".join(f"  line {line}: {reason}" for line, reason in problems[:LISTED_PROBLEMS])
    more = f"\n  ... and {len(problems) - LISTED_PROBLEMS} more" if len(problems) > LISTED_PROBLEMS else ""
    return DataError(
        f"{path}: {len(problems)} invalid row(s); fix them or set skip_invalid: true to skip them\n{listing}{more}"
    )


def _log_skipped(path: Path, problems: list[tuple[int, str]]) -> None:
    for line, reason in problems:
        logger.warning("%s line %d skipped: %s", path, line, reason)


def _pair_warnings(pairs: list[PreferencePair], resolve: Callable[[str], str]) -> PairWarnings:
    """Find repeated comparisons (see :class:`PairWarnings`); the first line of each comparison is the reference."""
    first: dict[tuple[str, str | None, str, str], tuple[int, int]] = {}
    duplicates, contradictions = [], []
    for pair in pairs:
        video_a, video_b = resolve(pair.video_a), resolve(pair.video_b)
        # Orient every pair the same way so that "A over B" and "B over A, swapped" compare equal.
        label = pair.label if video_a <= video_b else -pair.label
        key = (pair.prompt, pair.instruction, min(video_a, video_b), max(video_a, video_b))
        if key not in first:
            first[key] = (pair.line, label)
            continue
        earlier, earlier_label = first[key]
        (duplicates if label == earlier_label else contradictions).append((pair.line, earlier))
    return PairWarnings(duplicates=tuple(duplicates), contradictions=tuple(contradictions))


def _log_warnings(path: Path, warnings: PairWarnings) -> None:
    for found, kind, verb in (
        (warnings.duplicates, "duplicate pair(s) (same prompt and videos, same preference)", "repeats"),
        (warnings.contradictions, "contradictory label(s) (same prompt and videos, another preference)", "contradicts"),
    ):
        if found:
            examples = ", ".join(f"line {line} {verb} line {earlier}" for line, earlier in found[:10])
            more = f", ... and {len(found) - 10} more" if len(found) > 10 else ""
            logger.warning("%s: %d %s: %s%s", path, len(found), kind, examples, more)


@dataclass(frozen=True)
class IndexedVideo:
    """One row of a video index: a video (path resolved against the index's folder) and its prompt."""

    prompt: str
    video: str
    line: int


@dataclass(frozen=True)
class VideoIndex:
    source: Path
    videos: list[IndexedVideo]
    skipped: list[tuple[int, str]] = field(default_factory=list)


def is_video_index(path: str | Path, *, max_field_chars: int = MAX_FIELD_CHARS) -> bool:
    """A file of videos to score (columns ``prompt`` and ``file``, as ``tune sample``'s ``index.csv``), not
    a preference file."""
    columns = set(read_records(Path(path), max_field_chars=max_field_chars).columns)
    return set(INDEX_REQUIRED) <= columns and not {"video_a", "videos"} & columns


def read_video_index(path: str | Path, *, skip_invalid: bool = False, max_field_chars: int = MAX_FIELD_CHARS) -> VideoIndex:
    """Read a CSV/JSONL with ``prompt`` and ``file`` columns (other columns, e.g. ``seed``, are ignored);
    ``file`` is relative to the index's folder unless absolute.

    Raises:
        DataError: the file cannot be read, lacks a column, or (without ``skip_invalid``) has rows with an
            empty prompt or a missing video; the message lists every bad line.
    """
    path = Path(path)
    records = read_records(path, max_field_chars=max_field_chars)
    missing = [column for column in INDEX_REQUIRED if column not in records.columns]
    if missing:
        raise DataError(
            f"{path}: no {missing} column(s) (columns: {records.columns}); a video index needs {list(INDEX_REQUIRED)}"
        )
    videos, problems = [], list(records.problems)
    for line, row in records.rows:
        try:
            prompt = _text(row, "prompt", required=True)
            videos.append(IndexedVideo(prompt, _video_path(_text(row, "file", required=True), path.parent), line))
        except _RowError as error:
            problems.append((line, str(error)))
    problems.sort()
    if problems and not skip_invalid:
        raise _invalid_rows_error(path, problems)
    _log_skipped(path, problems)
    return VideoIndex(source=path, videos=videos, skipped=problems)


class _RowError(ValueError):
    pass


def _parse_rows(
    path: Path, records: Records, reserved_tokens: tuple[str, ...], resolve: Callable[[str], str]
) -> tuple[list[PreferencePair], list[tuple[int, str]], int]:
    """The valid pairs, the (line, reason) of every unreadable or invalid row, and the ``GSB = invalid`` count."""
    parse_row = _layout(path, records.columns) if records.rows else None
    pairs, problems, excluded = [], list(records.problems), 0
    for line, row in records.rows:
        try:
            pair = parse_row(row, line, path.parent)
            if pair is not None:
                _check_pair(pair, reserved_tokens, resolve)
        except _RowError as error:
            problems.append((line, str(error)))
            continue
        if pair is None:
            excluded += 1
        else:
            pairs.append(pair)
    return pairs, problems, excluded


def _layout(path: Path, columns: list[str]) -> Callable[[dict[str, Any], int, Path], PreferencePair | None]:
    """The row parser for the file's layout, told apart by its columns (a JSONL file: its first object's keys)."""
    if set(OFFICIAL_REQUIRED) <= set(columns):
        return _official_row
    if set(OFFICIAL_STAGE2_REQUIRED) <= set(columns):
        return _official_stage2_row
    if set(OURS_REQUIRED) <= set(columns):
        return _our_row
    if set(VIDEOGEN_REQUIRED) <= set(columns):
        return _videogen_row
    raise DataError(
        f"{path}: columns {sorted(columns)} match no known layout; expected {list(OURS_REQUIRED)} "
        f"(optional {list(OURS_OPTIONAL)}), the official DeScore stage-1 columns {list(OFFICIAL_REQUIRED)}, its "
        f"stage-2 columns {list(OFFICIAL_STAGE2_REQUIRED)} or VideoGen-RewardBench's {list(VIDEOGEN_REQUIRED)}"
    )


def parse_label(value: Any) -> int:
    """Map ``A``/``B``/``tie`` (or ``1``/``-1``/``0``, ``same``) to +1/−1/0."""
    key = str(value).strip().lower()
    if key.endswith(".0"):
        key = key[:-2]
    if key not in LABELS:
        raise _RowError(f"unknown label {value!r}; use A, B, tie (or 1, -1, 0)")
    return LABELS[key]


def _text(row: dict[str, Any], column: str, *, required: bool) -> str | None:
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise _RowError(f"column {column!r} is empty")
        return None
    return str(value)


def _video_path(value: str, root: Path) -> str:
    path = Path(value.strip())
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise _RowError(f"video file {path} does not exist")
    return str(path)


def _scores(row: dict[str, Any], column: str) -> dict[str, Any] | None:
    value = row.get(column)
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except (TypeError, json.JSONDecodeError) as error:
        raise _RowError(f"column {column!r} is not a JSON object: {value!r}") from error
    if not isinstance(parsed, dict):
        raise _RowError(f"column {column!r} is not a JSON object: {value!r}")
    return parsed


def _our_row(row: dict[str, Any], line: int, root: Path) -> PreferencePair:
    return PreferencePair(
        prompt=_text(row, "prompt", required=True),
        video_a=_video_path(_text(row, "video_a", required=True), root),
        video_b=_video_path(_text(row, "video_b", required=True), root),
        label=parse_label(row.get("label")),
        line=line,
        cot_a=_text(row, "cot_a", required=False),
        cot_b=_text(row, "cot_b", required=False),
        scores_a=_scores(row, "scores_a"),
        scores_b=_scores(row, "scores_b"),
    )


def _videogen_row(row: dict[str, Any], line: int, root: Path) -> PreferencePair:
    """A VideoGen-RewardBench row, labelled by its ``Overall`` preference."""
    return PreferencePair(
        prompt=_text(row, "prompt", required=True),
        video_a=_video_path(_text(row, "path_A", required=True), root),
        video_b=_video_path(_text(row, "path_B", required=True), root),
        label=parse_label(row.get("Overall")),
        line=line,
    )


def _official_row(row: dict[str, Any], line: int, root: Path) -> PreferencePair | None:
    """A row of the official stage-1 CSV; ``None`` for ``GSB = invalid`` (excluded, as upstream)."""
    verdict = str(row.get("GSB", "")).strip()
    if verdict.lower() == "invalid":
        return None
    video_a, video_b = _official_videos(row, root)
    instruction = _text(row, "problem", required=True)
    return PreferencePair(
        prompt=_text(row, "prompt", required=False) or instruction,
        video_a=video_a,
        video_b=video_b,
        label=parse_label(verdict),
        line=line,
        cot_a=_text(row, "CoT_A", required=False),
        cot_b=_text(row, "CoT_B", required=False),
        instruction=instruction,
    )


def _official_stage2_row(row: dict[str, Any], line: int, root: Path) -> PreferencePair:
    """A row of the official stage-2 CSV: the pair, its verdict and both videos' ground-truth sub-scores."""
    video_a, video_b = _official_videos(row, root)
    instruction = _text(row, "problem", required=True)
    try:
        truth = official_ground_truth(_text(row, "answer", required=True))
    except ValueError as error:
        raise _RowError(str(error)) from error
    return PreferencePair(
        prompt=_text(row, "prompt", required=False) or instruction,
        video_a=video_a,
        video_b=video_b,
        label=truth.label,
        line=line,
        scores_a=truth.scores_a,
        scores_b=truth.scores_b,
        instruction=instruction,
    )


def _official_videos(row: dict[str, Any], root: Path) -> tuple[str, str]:
    """The two paths of the official ``videos`` column (a Python-list string)."""
    try:
        videos = ast.literal_eval(str(row.get("videos")))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        raise _RowError(f"column 'videos' is not a list of two paths: {row.get('videos')!r}") from error
    if not (isinstance(videos, (list, tuple)) and len(videos) == 2 and all(isinstance(v, str) for v in videos)):
        raise _RowError(f"column 'videos' must hold exactly two paths, got {row.get('videos')!r}")
    return _video_path(videos[0], root), _video_path(videos[1], root)


def _check_pair(pair: PreferencePair, reserved_tokens: tuple[str, ...], resolve: Callable[[str], str]) -> None:
    if resolve(pair.video_a) == resolve(pair.video_b):
        # Invalid rather than a warning: no preference between a video and itself can be learnt, and such a
        # row almost always comes from a bug in whatever built the file.
        raise _RowError(f"video_a and video_b are the same file {pair.video_a}; a video is compared with itself")
    if (pair.cot_a is None) != (pair.cot_b is None):
        raise _RowError("only one of the two CoTs is given; give both or neither")
    for token in reserved_tokens:
        for column, text in (("cot_a", pair.cot_a), ("cot_b", pair.cot_b), ("prompt", pair.prompt)):
            if text is not None and token in text:
                raise _RowError(f"{column} contains the reserved token {token!r}")
