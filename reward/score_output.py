"""The output file of ``descore reward score``: written as it goes, resumed after a kill, never mixed.

Three files sit side by side (for ``--output scores.jsonl``)::

    scores.jsonl                  the finished result: one JSON line per item, in request order
    scores.jsonl.partial          while scoring: each batch's lines are appended and flushed as soon as it ends
    scores.jsonl.settings.json    what produced the lines (model path and fingerprint, CoT and decoding settings)

A re-run reads the settings record first. Different settings would mix two scorings in one file, so the run
stops and lists the differences (``--overwrite true`` starts afresh). Same settings: the lines already in the
output and the partial file count as done, and only the rest is scored. At the end the whole result is
written atomically in request order and the partial file is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .checkpoint import atomic_file
from .errors import DataError
from .modeling import HEAD_NAME, MANIFEST_NAME
from .run_record import RunMismatchError, config_differences, read_record, write_record

JOB = "reward score"


def partial_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def settings_path(output: Path) -> Path:
    return output.with_name(output.name + ".settings.json")


def checkpoint_fingerprint(directory: str | Path) -> str:
    """SHA-256 of the manifest and the head weights: any retraining changes the head, so a checkpoint
    overwritten in place is told apart from the one an output was scored with (a path alone would not)."""
    digest = hashlib.sha256()
    for name in (MANIFEST_NAME, HEAD_NAME):
        digest.update((Path(directory) / name).read_bytes())
    return digest.hexdigest()


def earlier_records(output: Path, settings: Mapping[str, Mapping[str, Any]], *, overwrite: bool) -> list[dict[str, Any]]:
    """The records an earlier run with these ``settings`` left in ``output`` and its partial file (in the
    order they were written), after checking that run's settings.

    Raises:
        RunMismatchError: the earlier run used other settings (the message lists them), or files are there
            without a settings record (written by something else), and ``overwrite`` is off.
    """
    partial, record_path = partial_path(output), settings_path(output)
    if overwrite or not (output.exists() or partial.exists() or record_path.exists()):
        return []
    if not record_path.is_file():
        raise RunMismatchError(
            f"{output} exists but has no {record_path.name} saying how it was scored, so it cannot be resumed. "
            "Choose another --output, or pass --overwrite true to replace it."
        )
    differences = config_differences(_read_settings(record_path), settings)
    if differences:
        listing = "\n  ".join(differences)
        raise RunMismatchError(
            f"{output} was scored with other settings; adding to it would mix two scorings:\n  {listing}\n"
            "Choose another --output, or pass --overwrite true to score everything again into this one."
        )
    records = _read_lines(output) if output.is_file() else []
    return records + (_read_lines(partial, repair_tail=True) if partial.is_file() else [])


def _read_settings(path: Path) -> dict[str, Any]:
    record = read_record(path)
    if record.get("job") != JOB:
        raise RunMismatchError(f"{path} is not a settings record of {JOB!r}; pass --overwrite true")
    return record["config"]


def _read_lines(path: Path, *, repair_tail: bool = False) -> list[dict[str, Any]]:
    """JSON lines of ``path``. With ``repair_tail`` a last line cut short by a kill (no newline) is dropped
    and cut off the file, so appending resumes on a clean line."""
    data = path.read_bytes()
    if repair_tail and data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with path.open("r+b") as handle:
            handle.truncate(len(data))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text ({error}); pass --overwrite true to score again") from error
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path} line {number} is not JSON ({error}); pass --overwrite true to score again") from error
        if not isinstance(record, dict) or "video" not in record or "prompt" not in record:
            raise DataError(f"{path} line {number} is not a score record (no video/prompt); pass --overwrite true")
        records.append(record)
    return records


def start(output: Path, settings: Mapping[str, Mapping[str, Any]], *, overwrite: bool) -> None:
    """Before the first line is appended: with ``overwrite`` drop what an earlier run left (so its lines can
    never be taken for this run's), then record the settings, so every line on disk is accounted for."""
    if overwrite:
        output.unlink(missing_ok=True)
        partial_path(output).unlink(missing_ok=True)
    write_record(settings_path(output), JOB, settings)


@contextmanager
def appending(output: Path) -> Iterator[IO[str]]:
    """The partial file, opened for appending."""
    with partial_path(output).open("a", encoding="utf-8") as handle:
        yield handle


def append_records(handle: IO[str], records: list[dict[str, Any]]) -> None:
    """Append one batch and push it to disk: a kill loses at most the batch being scored."""
    handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    handle.flush()
    os.fsync(handle.fileno())


def finish(output: Path, records: list[dict[str, Any]]) -> None:
    """Write the final file atomically, then drop the partial file it supersedes."""
    with atomic_file(output) as handle:
        handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    partial_path(output).unlink(missing_ok=True)
