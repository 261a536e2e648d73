"""On-disk preference pairs for Flow-DPO: clean latents of winner and loser, the prompt embedding, rewards.

Layout of a store directory::

    index_rank<r>.jsonl        one line per pair written by process r (appended, flushed per pair); a line
                               with an empty ``file`` marks a prompt whose samples gave no pair
    pairs/<round>_<prompt>_<k>.safetensors   winner, loser (clean latents) and prompt_embeds

A pair file is written to a temporary name and renamed before its index line is appended, so an interrupted
build leaves no half pair; ``done_prompts`` tells a resumed build which prompts of a round are finished. The
store can be reused by later runs with the same model and resolution (the index records both).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from reward.errors import CheckpointError


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
