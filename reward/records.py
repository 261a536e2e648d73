"""The records of a UTF-8 CSV or JSONL file, each with the line it starts on.

What cannot be read is reported with the file and the line: a byte that is not UTF-8 (with its column and
byte offset), a CSV record whose field count differs from the header's, a JSONL line that is not a JSON
object, a field longer than ``max_field_chars``. Such records are returned as problems so that the caller
can list or skip them; only what leaves the rest of the file untrustworthy raises at once (a bad header, a
CSV field over the limit: usually an unclosed quote, after which the reader can't tell where records start).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import DataError

# Far above any real prompt or chain of thought (a long CoT is ~10k characters); a CSV field this long is
# almost always an unclosed quote that swallowed the rest of the file.
MAX_FIELD_CHARS = 1_000_000


@dataclass(frozen=True)
class Records:
    """A file's column names (a JSONL file: its first object's keys), its (line, row) records and the
    (line, reason) of every record that could not be read."""

    columns: list[str]
    rows: list[tuple[int, dict[str, Any]]]
    problems: list[tuple[int, str]]


def read_records(path: Path, *, max_field_chars: int = MAX_FIELD_CHARS) -> Records:
    """Split a ``.csv`` or ``.jsonl`` file into records; blank lines are skipped without renumbering.

    Raises:
        DataError: the file is missing, empty, of another type, has a header that is not UTF-8 or names a
            column twice, or a CSV field over ``max_field_chars``.
    """
    if not path.is_file():
        raise DataError(f"preference file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = _read_csv(path, max_field_chars)
    elif suffix in (".jsonl", ".json"):
        records = _read_jsonl(path, max_field_chars)
    else:
        raise DataError(f"{path}: unsupported extension {suffix!r}; use .csv or .jsonl")
    if not records.rows and not records.problems:
        raise DataError(f"{path}: no data rows")
    return records


def _decoded_lines(handle: BinaryIO, undecodable: dict[int, str]) -> Iterator[str]:
    """The file's lines as text. The first byte that is not UTF-8 on a line is described in ``undecodable``
    (line -> reason); the line itself is still yielded (with a replacement character) so that the CSV
    reader keeps its place, and its record is rejected later."""
    offset = 0
    for number, raw in enumerate(handle, start=1):
        start = len(codecs.BOM_UTF8) if number == 1 and raw.startswith(codecs.BOM_UTF8) else 0
        try:
            text = raw[start:].decode("utf-8")
        except UnicodeDecodeError as error:
            column = start + error.start  # counted in bytes: the line has no valid characters to count
            undecodable[number] = (
                f"byte 0x{raw[column]:02x} at column {column + 1} of line {number} (byte offset {offset + column} "
                "in the file) is not valid UTF-8; save the file as UTF-8"
            )
            text = raw[start:].decode("utf-8", errors="replace")
        offset += len(raw)
        yield text


@contextlib.contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    """csv keeps its field limit (131,072 by default) in module state; set ours while reading, then restore."""
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_csv(path: Path, max_field_chars: int) -> Records:
    undecodable: dict[int, str] = {}
    rows, problems = [], []
    with path.open("rb") as handle, _csv_field_limit(max_field_chars):
        records = _csv_records(_decoded_lines(handle, undecodable), path, max_field_chars)
        start, end, header = next(records, (1, 1, []))
        if broken := _first_undecodable(undecodable, start, end):
            raise DataError(f"{path} line {start} (the header): {broken}")
        if repeated := sorted({name for name in header if header.count(name) > 1}):
            raise DataError(f"{path} line {start} (the header): column(s) {repeated} appear more than once")
        for start, end, record in records:
            if broken := _first_undecodable(undecodable, start, end):
                problems.append((start, broken))
            elif len(record) != len(header):
                span = f" (the record runs to line {end})" if end > start else ""
                problems.append((start, (
                    f"{len(record)} field(s) but the header has {len(header)}{span}; "
                    "quote fields that contain commas, quotes or line breaks"
                )))
            else:
                rows.append((start, dict(zip(header, record))))
    return Records(columns=header, rows=rows, problems=problems)


def _csv_records(lines: Iterator[str], path: Path, max_field_chars: int) -> Iterator[tuple[int, int, list[str]]]:
    """(first line, last line, fields) of each CSV record; blank lines are skipped. A record the csv module
    cannot parse stops the read: past a broken quote it can no longer tell where records start."""
    reader = csv.reader(lines)
    end = 0
    while True:
        try:
            record = next(reader, None)
        except csv.Error as error:
            hint = ""
            if "field limit" in str(error):
                hint = (
                    f"; a field is longer than max_field_chars={max_field_chars:,} characters, usually because a "
                    'quote (") is not closed and the rest of the file became one field'
                )
            raise DataError(f"{path} line {end + 1}: cannot parse the CSV record that starts here ({error}){hint}") from error
        if record is None:
            return
        # A record starts on the line after the previous one ends; quoted fields may span several lines.
        start, end = end + 1, reader.line_num
        if record:
            yield start, end, record


def _first_undecodable(undecodable: dict[int, str], start: int, end: int) -> str | None:
    return next((undecodable[line] for line in range(start, end + 1) if line in undecodable), None)


def _read_jsonl(path: Path, max_field_chars: int) -> Records:
    undecodable: dict[int, str] = {}
    rows, problems = [], []
    with path.open("rb") as handle:
        for line, text in enumerate(_decoded_lines(handle, undecodable), start=1):
            if not text.strip() and line not in undecodable:
                continue
            try:
                if line in undecodable:
                    raise _RecordError(undecodable[line])
                rows.append((line, _json_object(text, max_field_chars)))
            except _RecordError as error:
                problems.append((line, str(error)))
    return Records(columns=list(rows[0][1]) if rows else [], rows=rows, problems=problems)


class _RecordError(ValueError):
    pass


def _json_object(text: str, max_field_chars: int) -> dict[str, Any]:
    try:
        row = json.loads(text.rstrip("\r\n"))  # so that an error at the end has this line's column
    except json.JSONDecodeError as error:
        raise _RecordError(f"not valid JSON at column {error.colno} ({error.msg})") from error
    if not isinstance(row, dict):
        raise _RecordError(f"expected a JSON object, got {type(row).__name__}")
    for column, value in row.items():
        if isinstance(value, str) and len(value) > max_field_chars:
            raise _RecordError(f"column {column!r} has {len(value):,} characters, more than max_field_chars={max_field_chars:,}")
    return row
