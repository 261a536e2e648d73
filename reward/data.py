"""Preference data: CSV / JSONL files of (prompt, video A, video B, label) rows.

Two layouts are read:

* ours — columns ``prompt, video_a, video_b, label`` with optional ``cot_a, cot_b`` (pre-collected chains of
  thought) and ``scores_a, scores_b`` (JSON sub-dimension ground truth, used by stage 2). Labels are ``A`` /
  ``B`` / ``tie`` or ``1`` / ``-1`` / ``0`` (``same`` is accepted as a tie, as in VideoAlign files);
* the official DeScore stage-1 CSV — ``videos`` (a Python-list string of two paths), ``problem`` (the full
  judge instruction, used verbatim), ``CoT_A``, ``CoT_B`` and ``GSB`` (``A`` / ``B`` / ``same`` /
  ``invalid``), read unchanged. ``invalid`` rows are excluded as the official code excludes them.

Relative video paths resolve against the data file's folder. Every problem is reported with its line
number (the CSV header is line 1); ``skip_invalid=True`` drops bad rows and counts them instead.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import DataError, VideoDecodeError
from .video import probe_video

logger = logging.getLogger(__name__)

LABELS: dict[str, int] = {"a": 1, "1": 1, "+1": 1, "b": -1, "-1": -1, "tie": 0, "same": 0, "0": 0}
OURS_REQUIRED = ("prompt", "video_a", "video_b", "label")
OFFICIAL_REQUIRED = ("videos", "problem", "CoT_A", "CoT_B", "GSB")
OURS_OPTIONAL = ("cot_a", "cot_b", "scores_a", "scores_b")


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
class PreferenceData:
    """The valid pairs of a file plus every row that was skipped (line, reason)."""

    source: Path
    pairs: list[PreferencePair]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    excluded_invalid: int = 0

    def __len__(self) -> int:
        return len(self.pairs)


def read_preferences(
    path: str | Path,
    *,
    skip_invalid: bool = False,
    reserved_tokens: tuple[str, ...] = (),
) -> PreferenceData:
    """Read and validate a preference file.

    Args:
        path: a ``.csv`` or ``.jsonl`` file in one of the two layouts above.
        skip_invalid: drop bad rows (unknown label, missing video file, malformed field) and count them,
            instead of raising one error that lists them all.
        reserved_tokens: strings that must not occur in CoT text (the ``<Reward>`` query token: a CoT that
            contains it would put a second query position into the sequence).

    Raises:
        DataError: the file is missing or unreadable, lacks required columns, or (without ``skip_invalid``)
            has invalid rows; the message lists every bad line.
    """
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"{path}: no data rows")
    columns = set(rows[0][1])
    if set(OFFICIAL_REQUIRED) <= columns:
        parse_row = _official_row
    elif set(OURS_REQUIRED) <= columns:
        parse_row = _our_row
    else:
        raise DataError(
            f"{path}: columns {sorted(columns)} match neither layout; expected {list(OURS_REQUIRED)} "
            f"(optional {list(OURS_OPTIONAL)}) or the official DeScore stage-1 columns {list(OFFICIAL_REQUIRED)}"
        )
    pairs, problems, excluded = [], [], 0
    for line, row in rows:
        try:
            pair = parse_row(row, line, path.parent)
            if pair is not None:
                _check_pair(pair, reserved_tokens)
        except _RowError as error:
            problems.append((line, str(error)))
            continue
        if pair is None:
            excluded += 1
        else:
            pairs.append(pair)
    if problems and not skip_invalid:
        raise _invalid_rows_error(path, problems)
    for line, reason in problems:
        logger.warning("%s line %d skipped: %s", path, line, reason)
    if problems or excluded:
        logger.warning(
            "%s: %d valid pair(s), %d invalid row(s) skipped, %d row(s) labelled invalid excluded",
            path, len(pairs), len(problems), excluded,
        )
    return PreferenceData(source=path, pairs=pairs, skipped=problems, excluded_invalid=excluded)


def check_videos(data: PreferenceData, *, skip_invalid: bool = False) -> PreferenceData:
    """Open every distinct video once (container, stream and frame count; no full decode).

    Catches truncated, unreadable, zero-frame and single-frame files before a long job starts. Returns the
    data without the pairs that use a bad video (those rows are added to ``skipped``) when
    ``skip_invalid``; otherwise raises one :class:`DataError` listing every affected line.
    """
    videos = sorted({path for pair in data.pairs for path in (pair.video_a, pair.video_b)})
    bad: dict[str, str] = {}
    for path in tqdm(videos, desc="checking videos", unit="video", disable=len(videos) < 100):
        try:
            probe_video(path)
        except VideoDecodeError as error:
            bad[path] = error.reason
    if not bad:
        return data
    problems = [
        (pair.line, "; ".join(f"video {path}: {bad[path]}" for path in dict.fromkeys((pair.video_a, pair.video_b)) if path in bad))
        for pair in data.pairs
        if pair.video_a in bad or pair.video_b in bad
    ]
    if not skip_invalid:
        raise _invalid_rows_error(data.source, problems)
    for line, reason in problems:
        logger.warning("%s line %d skipped: %s", data.source, line, reason)
    kept = [pair for pair in data.pairs if pair.video_a not in bad and pair.video_b not in bad]
    logger.warning("%s: %d pair(s) skipped for unreadable videos, %d kept", data.source, len(data.pairs) - len(kept), len(kept))
    return replace(data, pairs=kept, skipped=sorted(data.skipped + problems))


def _invalid_rows_error(path: Path, problems: list[tuple[int, str]]) -> DataError:
    listing = "\n".join(f"  line {line}: {reason}" for line, reason in problems[:50])
    more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
    return DataError(
        f"{path}: {len(problems)} invalid row(s); fix them or set skip_invalid: true to skip them\n{listing}{more}"
    )


class _RowError(ValueError):
    pass


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise DataError(f"preference file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        # utf-8-sig: spreadsheet exports often start with a byte-order mark
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = []
            for row in reader:
                # line_num is the record's last physical line; quoted CoTs may span several lines
                inner_breaks = sum(value.count("\n") for value in row.values() if isinstance(value, str))
                rows.append((reader.line_num - inner_breaks, row))
            return rows
    if suffix in (".jsonl", ".json"):
        rows = []
        with path.open(encoding="utf-8-sig") as handle:
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path} line {line}: not valid JSON ({error.msg})") from error
                if not isinstance(row, dict):
                    raise DataError(f"{path} line {line}: expected a JSON object, got {type(row).__name__}")
                rows.append((line, row))
        return rows
    raise DataError(f"{path}: unsupported extension {suffix!r}; use .csv or .jsonl")


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


def _official_row(row: dict[str, Any], line: int, root: Path) -> PreferencePair | None:
    """A row of the official stage-1 CSV; ``None`` for ``GSB = invalid`` (excluded, as upstream)."""
    verdict = str(row.get("GSB", "")).strip()
    if verdict.lower() == "invalid":
        return None
    try:
        videos = ast.literal_eval(str(row.get("videos")))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        raise _RowError(f"column 'videos' is not a list of two paths: {row.get('videos')!r}") from error
    if not (isinstance(videos, (list, tuple)) and len(videos) == 2 and all(isinstance(v, str) for v in videos)):
        raise _RowError(f"column 'videos' must hold exactly two paths, got {row.get('videos')!r}")
    instruction = _text(row, "problem", required=True)
    return PreferencePair(
        prompt=_text(row, "prompt", required=False) or instruction,
        video_a=_video_path(videos[0], root),
        video_b=_video_path(videos[1], root),
        label=parse_label(verdict),
        line=line,
        cot_a=_text(row, "CoT_A", required=False),
        cot_b=_text(row, "CoT_B", required=False),
        instruction=instruction,
    )


def _check_pair(pair: PreferencePair, reserved_tokens: tuple[str, ...]) -> None:
    if (pair.cot_a is None) != (pair.cot_b is None):
        raise _RowError("only one of the two CoTs is given; give both or neither")
    for token in reserved_tokens:
        for column, text in (("cot_a", pair.cot_a), ("cot_b", pair.cot_b), ("prompt", pair.prompt)):
            if text is not None and token in text:
                raise _RowError(f"{column} contains the reserved token {token!r}")
