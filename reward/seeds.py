"""Seeds and data order that are pure functions of (seed, step, keys): shared by the RL loops (generator GRPO /
Flow-DPO, DeScore stage 2), so a resumed run and a run on several processes draw exactly what a straight
single-process run draws."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch


def seeded_generator(seed: int, step: int, *keys: Any) -> torch.Generator:
    """A CPU generator whose seed is a stable hash of (seed, step, keys) — the same in every process and run."""
    words = [seed, step, *(key if isinstance(key, int) else zlib.crc32(str(key).encode()) for key in keys)]
    state = np.random.SeedSequence([int(word) & 0xFFFFFFFF for word in words]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def permuted_slice(count: int, step: int, per_step: int, seed: int) -> list[int]:
    """Items of ``step`` when every epoch visits ``count`` items in a seeded random order: positions
    [step·per_step, (step + 1)·per_step) of the concatenated per-epoch permutations. Pure in its arguments,
    so a resumed run continues exactly where it stopped."""
    first, last = step * per_step, (step + 1) * per_step
    order: list[int] = []
    for epoch in range(first // count, (last - 1) // count + 1):
        order += torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    offset = (first // count) * count
    return order[first - offset : last - offset]
