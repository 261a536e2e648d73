"""Checkpoint files: atomic writes (a checkpoint appears whole or not at all), base-weight fingerprints, and
the one place a model reference (a local folder or a hub id) becomes a local folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, NamedTuple

from .errors import CheckpointError, ConfigError

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


SINGLE_WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


def index_single_weights_file(directory: str | Path) -> None:
    """Write ``model.safetensors.index.json`` for a backbone saved as one ``model.safetensors``.

    transformers writes an index only for sharded weights, and vLLM's loader reads *every* ``*.safetensors``
    file of a folder unless an index names the model's files. Beside a DeScore backbone sits
    ``reward_head.safetensors``; the index keeps vLLM from taking the head for a backbone weight. Loaders that
    find ``model.safetensors`` read it directly, as before.
    """
    directory = Path(directory)
    weights = directory / SINGLE_WEIGHTS
    if (directory / WEIGHTS_INDEX).exists() or not weights.is_file():
        return
    with weights.open("rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    index = {
        "metadata": {"total_size": sum(end - start for start, end in (e["data_offsets"] for e in tensors.values()))},
        "weight_map": {name: SINGLE_WEIGHTS for name in sorted(tensors)},
    }
    (directory / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2) + "\n")


# What a model folder needs: config, weights (safetensors only), tokenizer and processor files, and the DeScore
# manifest and head. Pickled weights and remote code are never fetched.
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]


class ModelSource(NamedTuple):
    """Where a model reference resolved to: its local ``folder``, and for a hub id the id and the commit of the
    snapshot (``repo_id`` and ``commit`` are None for a local folder)."""

    folder: Path
    repo_id: str | None = None
    commit: str | None = None


def resolve_model_source(name: str | Path, *, revision: str | None = None) -> ModelSource:
    """The local folder behind ``name``: a folder on disk, or else the hub snapshot of an ``owner/name`` id.

    A folder on disk always wins over a hub id spelled the same. A hub id goes through
    ``huggingface_hub.snapshot_download`` (``revision``: branch, tag or commit; default ``main``), which
    downloads what is missing into the hub cache and, in offline mode (``HF_HUB_OFFLINE=1``), returns the cached
    snapshot without any request. The snapshot folder is named by its commit, which identifies the weights.

    Raises:
        ConfigError: ``name`` is neither a folder nor a hub id, or ``revision`` is given for a local folder.
        CheckpointError: the id is not in the cache and offline mode is on, or the hub cannot give it.
    """
    from .run_record import looks_like_hub_id

    text = str(name)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ConfigError(f"{text} is a file; give a model folder or a hub id (owner/name)")
        if revision is not None:
            raise ConfigError(f"revision {revision!r} applies to a hub id, but {text} is a local folder")
        return ModelSource(local)
    if not looks_like_hub_id(text):
        raise ConfigError(f"{text} does not exist (and is not a hub id of the form owner/name)")
    folder = _hub_snapshot(text, revision)
    return ModelSource(folder, repo_id=text, commit=folder.name)


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    wanted = repo_id + (f" (revision {revision})" if revision else "")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=MODEL_FILES))
    except LocalEntryNotFoundError as error:
        if constants.is_offline_mode():
            raise CheckpointError(
                f"{wanted} is neither a local folder nor complete in the hub cache ({constants.HF_HUB_CACHE}), and "
                "offline mode is on (HF_HUB_OFFLINE=1), so it cannot be downloaded. Download it once online "
                f"(`hf download {repo_id}`) or give a local folder."
            ) from error
        raise CheckpointError(f"{wanted}: not in the hub cache and the hub could not be reached ({error})") from error
    except HfHubHTTPError as error:  # no such repository or revision, gated, unauthorised
        raise CheckpointError(f"{wanted} cannot be fetched from the hub: {error}") from error
