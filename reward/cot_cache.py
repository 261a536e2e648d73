"""The CoT cache of ``descore reward collect-cot``: one JSON line per written CoT, keyed by (video, prompt,
judge instruction), appended and fsynced after every batch so a killed run loses at most one batch.

Files, for ``--output pairs_with_cot.csv``: ``pairs_with_cot.csv.cots.jsonl`` (the cache), and under several
processes ``.cots.rank{r}.jsonl`` / ``.bad.rank{r}.json`` (each process's CoTs and bad videos) until the main
process merges them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

from .checkpoint import atomic_file
from .errors import DataError
from .records import read_records

logger = logging.getLogger(__name__)


class Item(NamedTuple):
    """One CoT to write: a video under one judge prompt (several pairs may share it)."""

    video: str
    prompt: str
    instruction: str | None


def cache_path(output: Path) -> Path:
    return output.with_name(output.name + ".cots.jsonl")


def append_lines(handle: Any, lines: list[dict[str, Any]]) -> None:
    """One batch, pushed to disk: a kill loses at most the batch being written."""
    handle.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    handle.flush()
    os.fsync(handle.fileno())


def read_cache(path: Path) -> dict[Item, dict[str, Any]]:
    """The CoTs written so far. A last line cut by a kill is dropped, and the file rewritten without it, so
    that appending resumes on a clean line; any other unreadable line is an error."""
    if not path.is_file() or path.stat().st_size == 0:
        return {}
    records = read_records(path)
    last_line = max([line for line, _ in records.rows] + [line for line, _ in records.problems])
    broken = [(line, reason) for line, reason in records.problems if line != last_line]
    if broken:
        raise DataError(f"{path}: unreadable lines {broken[:5]}; pass --overwrite true to collect afresh")
    if records.problems:
        logger.warning("%s: dropping its last line, cut short by an interrupted run", path)
        with atomic_file(path) as handle:
            handle.writelines(json.dumps(values, ensure_ascii=False) + "\n" for _, values in records.rows)
    return {Item(values["video"], values["prompt"], values["instruction"]): values for _, values in records.rows}


def read_all_caches(output: Path) -> dict[Item, dict[str, Any]]:
    """The main cache and any part files a killed multi-process run left (merged at the end of this run)."""
    done = read_cache(cache_path(output))
    for part in sorted(output.parent.glob(f"{output.name}.cots.rank*.jsonl")):
        done |= read_cache(part)
    return done


def part_path(output: Path, rank: int, kind: str) -> Path:
    """A process's own file under ``accelerate launch``: its CoTs (``cots``) or its bad videos (``bad``)."""
    return output.with_name(f"{output.name}.{kind}.rank{rank}.{'jsonl' if kind == 'cots' else 'json'}")


def merge_parts(output: Path, processes: int) -> dict[str, str]:
    """Append every process's CoTs to the main cache and collect their bad videos, then remove the part files
    (main process only)."""
    bad: dict[str, str] = {}
    with cache_path(output).open("a", encoding="utf-8") as handle:
        for rank in range(processes):
            part, bad_part = part_path(output, rank, "cots"), part_path(output, rank, "bad")
            if part.is_file():
                append_lines(handle, list(read_cache(part).values()))
                part.unlink()
            bad |= json.loads(bad_part.read_text(encoding="utf-8"))
            bad_part.unlink()
    return bad
