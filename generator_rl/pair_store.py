"""On-disk preference pairs for Flow-DPO: clean latents of winner and loser, the prompt embedding, rewards.

Layout of a store directory::

    store.json                 the settings the pairs were made with (model, sampler, seed, pairing, rewards)
    index_rank<r>.jsonl        one line per pair written by process r (appended, flushed per pair); a line
                               with an empty ``file`` marks a prompt whose samples gave no pair
    pairs/<round>_<prompt>_<k>.safetensors   winner, loser (clean latents) and prompt_embeds

A pair file is written to a temporary name and renamed before its index line is appended, so an interrupted
build leaves no half pair; ``done_prompts`` tells a resumed build which prompts of a round are finished.

Pairs are identified by (round, prompt index), so a store is only reusable by a run that would make the same
pairs: :meth:`PairStore.for_run` writes ``store.json`` into a new store and refuses an existing one whose
settings differ, or whose recorded prompt texts differ from the prompts file at the same index. Rounds after
the first (online Flow-DPO) are sampled by the policy being trained, so their settings include its training
(group ``training``); a store holding only first-round pairs may be reused by a run that trains differently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from reward.errors import CheckpointError, ConfigError
from reward.run_record import RunMismatchError, config_differences, plain, read_record, write_record

MANIFEST = "store.json"
STORE_JOB = "flow-dpo pair store"
TRAINING = "training"  # the settings group that only pairs of rounds after the first depend on


@dataclass(frozen=True)
class PairRecord:
    round: int
    prompt_index: int
    prompt: str
    file: str
    winner_reward: float
    loser_reward: float
    model: str
    latent_shape: list[int]


class PairStore:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        (self.directory / "pairs").mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_run(
        cls, directory: str | Path, *, settings: Mapping[str, Mapping[str, Any]], prompts: Sequence[str]
    ) -> PairStore:
        """The store of a run whose pairs are made with ``settings`` (``{group: {field: value}}``) from
        ``prompts``: a new store records the settings; an existing one must match them and the prompts."""
        store = cls(directory)
        current = plain(settings)
        manifest = store.directory / MANIFEST
        if manifest.is_file():
            recorded = _recorded_settings(manifest)
            store._check_settings(recorded, current)
            if recorded != current:  # only the training settings differed, and no pair depends on them yet
                store._write_manifest(current)
        elif any(store.directory.glob("index_rank*.jsonl")):
            raise RunMismatchError(
                f"pair store {store.directory} has pairs but no {MANIFEST}: it was made before stores recorded their "
                "settings, so it cannot be checked against this run; use another --pair_dir or delete this one"
            )
        else:
            store._write_manifest(current)
        store._check_prompts(prompts)
        return store

    def _write_manifest(self, settings: Mapping[str, Any]) -> None:
        write_record(self.directory / MANIFEST, STORE_JOB, settings)

    def _check_settings(self, recorded: Mapping[str, Any], current: Mapping[str, Any]) -> None:
        """Every group must match; ``training`` (what shapes the online policy) only once the store holds
        pairs of a later round, the first round being sampled by the untrained reference."""
        if not any(record.round > 0 for record in self._records()):
            recorded, current = ({k: v for k, v in group.items() if k != TRAINING} for group in (recorded, current))
        differences = config_differences(recorded, current)
        if differences:
            listing = "\n  ".join(differences)
            raise RunMismatchError(
                f"pair store {self.directory} was made with other settings; its pairs do not belong to this run:\n"
                f"  {listing}\nUse another --pair_dir, or delete this one to build it again."
            )

    def _check_prompts(self, prompts: Sequence[str]) -> None:
        differences = sorted({
            f"prompt {record.prompt_index}: {record.prompt!r} -> "
            f"{prompts[record.prompt_index] if record.prompt_index < len(prompts) else '<absent>'!r}"
            for record in self._records()
            if record.prompt_index >= len(prompts) or prompts[record.prompt_index] != record.prompt
        })
        if differences:
            listing = "\n  ".join(differences[:10])
            more = f"\n  ... and {len(differences) - 10} more" if len(differences) > 10 else ""
            raise RunMismatchError(
                f"pair store {self.directory} holds pairs of other prompts than the prompts file (index: stored -> "
                f"now):\n  {listing}{more}\nUse another --pair_dir, or delete this one to build it again."
            )

    def _records(self) -> list[PairRecord]:
        records = []
        for index_file in sorted(self.directory.glob("index_rank*.jsonl")):
            for line_number, line in enumerate(index_file.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    try:
                        records.append(PairRecord(**json.loads(line)))
                    except (json.JSONDecodeError, TypeError) as error:
                        raise CheckpointError(f"{index_file} line {line_number}: not a pair record ({error})") from error
        return records

    def pairs(self, round_: int) -> list[PairRecord]:
        """Pairs of one round, in a fixed order (independent of which process wrote them)."""
        return sorted((r for r in self._records() if r.round == round_ and r.file), key=lambda r: (r.prompt_index, r.file))

    def done_prompts(self, round_: int) -> set[int]:
        """Prompts of a round already processed, with or without a pair (their samples may have tied)."""
        return {r.prompt_index for r in self._records() if r.round == round_}

    def _append(self, rank: int, record: PairRecord) -> None:
        with (self.directory / f"index_rank{rank}.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(record)) + "\n")
            handle.flush()

    def mark_without_pair(self, rank: int, record: PairRecord) -> None:
        """Record that a prompt was processed but gave no pair above the margin (``file`` empty)."""
        self._append(rank, record)

    def add(
        self,
        rank: int,
        record: PairRecord,
        *,
        winner: torch.Tensor,
        loser: torch.Tensor,
        prompt_embeds: torch.Tensor,
    ) -> None:
        path = self.directory / record.file
        staging = path.with_name(f".{path.name}.tmp")
        tensors = {"winner": winner, "loser": loser, "prompt_embeds": prompt_embeds}
        save_file({key: value.detach().float().cpu().contiguous() for key, value in tensors.items()}, str(staging))
        os.replace(staging, path)
        self._append(rank, record)

    def load(self, record: PairRecord) -> dict[str, torch.Tensor]:
        path = self.directory / record.file
        if not path.is_file():
            raise CheckpointError(f"pair file {path} listed in the index is missing")
        tensors = load_file(str(path))
        expected = {"winner", "loser", "prompt_embeds"}
        if set(tensors) != expected:
            raise CheckpointError(f"{path}: keys {sorted(tensors)}, expected {sorted(expected)}")
        return tensors


def _recorded_settings(manifest: Path) -> dict[str, Any]:
    try:
        record = read_record(manifest)
    except ConfigError as error:
        raise CheckpointError(f"{manifest} is not a pair-store record ({error}); delete the store to build it again") from error
    if record.get("job") != STORE_JOB:
        raise CheckpointError(f"{manifest} is not a pair-store record; delete the store to build it again")
    return record["config"]
