"""Checkpoint files: atomic writes (a checkpoint appears whole or not at all) and base-weight fingerprints."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import CheckpointError

# A fingerprint reads 16 evenly spaced 64 KiB windows of every weight file: about 1 MiB per shard, so a 16 GB
# base is fingerprinted in well under a second, and a small file is read whole.
FINGERPRINT_WINDOWS = 16
FINGERPRINT_WINDOW_BYTES = 1 << 16


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def normalize_permissions(directory: str | Path) -> None:
    """Give every file under ``directory`` the permissions the umask allows (0644 under umask 022).

    safetensors (0.8) writes its files through a private temporary file, so they come out 0600 and a
    checkpoint shared with a group or another user could not be read.
    """
    mode = 0o666 & ~_umask()
    for path in Path(directory).rglob("*"):
        if path.is_file() and not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) != mode:
            path.chmod(mode)


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a staging folder next to ``target``; on success it replaces ``target`` by renames.

    The staging folder lives in the same parent, so the final ``rename`` stays on one file system. If the
    body raises, the staging folder is removed; if the process is killed, it stays behind as
    ``.<name>.staging-*``. Either way an existing ``target`` is left untouched: readers see the previous complete
    folder or none, never a partial or empty one. (Between the two final renames ``target`` is briefly absent
    while the previous folder sits at ``.<name>.previous``.) Files get the umask's permissions.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; a checkpoint gets normal permissions
    try:
        yield staging
        normalize_permissions(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = target.with_name(f".{target.name}.previous")
    if previous.exists():
        shutil.rmtree(previous)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


@contextmanager
def atomic_file(target: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to ``target`` for writing; it replaces ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(descriptor, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
        os.chmod(staging, 0o666 & ~_umask())
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def weights_fingerprint(directory: str | Path) -> str:
    """A digest that tells one model's weights from another's without reading 16 GB.

    sha256 over ``config.json`` and, for every ``*.safetensors`` file (sorted by name): its name, its size,
    its header (every tensor's name, dtype, shape and byte range) and 16 evenly spaced 64 KiB windows of its
    data. Same architecture with other weights changes the windows; a re-save with another dtype or layout
    changes the header. Weights changed only between the windows would go unnoticed, a trade for speed:
    hashing every byte of an 8B model takes about a minute, at every load.
    """
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no *.safetensors weights (pickled weights are never loaded)")
    digest = hashlib.sha256()
    digest.update((directory / "config.json").read_bytes())
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with path.open("rb") as handle:
            header_length = int.from_bytes(handle.read(8), "little")
            digest.update(handle.read(header_length))
            start = 8 + header_length
            for window in range(FINGERPRINT_WINDOWS):
                handle.seek(start + (size - start) * window // FINGERPRINT_WINDOWS)
                digest.update(handle.read(FINGERPRINT_WINDOW_BYTES))
    return f"sha256:{digest.hexdigest()}"
