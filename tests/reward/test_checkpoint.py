"""Atomic writes leave the previous folder or none (never a half-written or empty one) with normal permissions;
base fingerprints tell weights apart; a single weights file gets an index. (Model references by hub id:
test_checkpoint_hub.py.)"""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch
from safetensors.torch import save_file

from reward.checkpoint import atomic_directory, atomic_file, index_single_weights_file, weights_fingerprint
from reward.errors import CheckpointError


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_a_failed_write_leaves_the_previous_folder_or_none(tmp_path):
    target = tmp_path / "final"
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as staging:
            (staging / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt  # a kill in the middle of the export
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with atomic_directory(target) as staging:
        (staging / "model.safetensors").write_bytes(b"whole")
    with pytest.raises(OSError, match="disk full"):
        with atomic_directory(target) as staging:
            (staging / "model.safetensors").write_bytes(b"half")
            raise OSError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert (target / "model.safetensors").read_bytes() == b"whole"


def test_written_files_and_folders_get_umask_permissions(tmp_path, umask_022):
    with atomic_directory(tmp_path / "final") as staging:
        (staging / "config.json").write_text("{}")
        save_file({"w": torch.zeros(2)}, staging / "model.safetensors")  # safetensors itself writes 0600
    with atomic_file(tmp_path / "run_config.json") as handle:
        handle.write("{}")
    assert _mode(tmp_path / "final") == 0o755
    assert _mode(tmp_path / "final" / "config.json") == _mode(tmp_path / "final" / "model.safetensors") == 0o644
    assert _mode(tmp_path / "run_config.json") == 0o644


def _weights(directory, seed: int, *, size: int = 64):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text('{"hidden_size": 64}')
    generator = torch.Generator().manual_seed(seed)
    save_file({"w": torch.randn(size, size, generator=generator)}, directory / "model.safetensors")
    return directory


def test_fingerprint_tells_weights_apart_and_ignores_everything_else(tmp_path):
    first = weights_fingerprint(_weights(tmp_path / "a", 0))
    assert first == weights_fingerprint(shutil.copytree(tmp_path / "a", tmp_path / "copy"))
    (tmp_path / "copy" / "README.md").write_text("not weights")
    assert weights_fingerprint(tmp_path / "copy") == first
    assert weights_fingerprint(_weights(tmp_path / "b", 1)) != first  # same shapes, other values
    (tmp_path / "copy" / "config.json").write_text('{"hidden_size": 65}')
    assert weights_fingerprint(tmp_path / "copy") != first


def test_fingerprint_samples_large_files_and_needs_safetensors(tmp_path):
    """A 64 MiB shard: 16 windows of 64 KiB are read; a change inside one (the middle one) is seen."""
    directory = _weights(tmp_path / "big", 0, size=4096)
    before = weights_fingerprint(directory)
    path = directory / "model.safetensors"
    with path.open("r+b") as handle:
        data_start = 8 + int.from_bytes(handle.read(8), "little")
        handle.seek(data_start + (path.stat().st_size - data_start) // 2 + 10)
        handle.write(b"\x00" * 4)
    assert weights_fingerprint(directory) != before
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="no \\*.safetensors weights"):
        weights_fingerprint(directory)


def test_a_single_weights_file_gets_the_index_that_shards_have(tmp_path):
    """Tensors a (2x3 float32 = 24 bytes) and b (5 bfloat16 = 10 bytes): the index maps both to
    model.safetensors with total_size 34. A folder that already has an index, or has no model.safetensors,
    is left alone."""
    save_file({"b": torch.zeros(5, dtype=torch.bfloat16), "a": torch.zeros(2, 3)}, tmp_path / "model.safetensors")
    index_single_weights_file(tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index == {"metadata": {"total_size": 34}, "weight_map": {"a": "model.safetensors", "b": "model.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    index_single_weights_file(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").read_text() == '{"weight_map": {}}'
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    index_single_weights_file(adapter)
    assert list(adapter.iterdir()) == []
