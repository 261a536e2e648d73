"""Read the history steps of a wandb offline run file (``run-*.wandb``) with wandb's own protobuf schema.

The file is wandb's record log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of records,
each with a 7-byte header (checksum, little-endian length, kind: 1 whole, 2 first, 3 middle, 4 last part).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb run file")
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:  # block trailer padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        chunk = data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind == 0:
            continue
        pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def history_steps(path: Path) -> list[int]:
    """The ``step`` of every history row the run recorded, in order."""
    return [record.history.step.num for record in records(path) if record.WhichOneof("record_type") == "history"]


def history_rows(path: Path) -> list[dict]:
    """The logged values of every history row, keyed by metric name."""
    return [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for record in records(path)
        if record.WhichOneof("record_type") == "history"
    ]
