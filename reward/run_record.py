"""What a run is: its fully resolved configuration, written into its output folder, and the check that a
re-run into that folder is the same run.

A resumable job writes ``run_config.json`` (every field of every config group, the library versions and the
git commit of the code, when there is one) before it trains. A later run into the same folder compares its
own resolved configuration with the recorded one: equal (outside the job's allow-list of fields that may
change on resume, such as ``max_steps`` or logging) means resume; different means a :class:`RunMismatchError`
that lists every difference. Versions and commit are recorded, not compared.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .checkpoint import atomic_file
from .errors import ConfigError
from .model_source import is_tiny

RUN_CONFIG = "run_config.json"
LIBRARIES = ("descore-kit", "torch", "transformers", "diffusers", "peft", "accelerate", "trl", "safetensors")


class RunMismatchError(ConfigError):
    """An output folder holds a run whose configuration differs from the one asked for."""


def plain(value: Any) -> Any:
    """``value`` as JSON data: dataclasses and mappings become dicts, paths strings, enums their value."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_dict") and not isinstance(value, type):
        return plain(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(item) for item in value]
    return str(value)


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def code_commit() -> str | None:
    """The git commit of the kit's source tree (None for an installed wheel or without git)."""
    source = Path(__file__).resolve().parents[1]
    if not (source / ".git").exists():
        return None
    try:
        result = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def file_sha256(path: str | Path) -> str:
    """Content digest of a data file: the same path with other content is another run."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolved_config(groups: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{group: {field: value}}`` for the config objects of a job (dataclasses or mappings)."""
    resolved = {}
    for group, config in groups.items():
        values = plain(config)
        if not isinstance(values, dict):
            raise TypeError(f"config group {group!r} is not a dataclass or mapping: {type(config).__name__}")
        resolved[group] = values
    return resolved


def config_differences(
    recorded: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]], *, allowed: Iterable[str] = ()
) -> list[str]:
    """Lines ``group.field: recorded -> current`` for every field that differs outside ``allowed``.

    ``allowed`` holds field names (any group) or ``group.field`` names.
    """
    allowed = set(allowed)
    lines = []
    for group in sorted(set(recorded) | set(current)):
        old, new = recorded.get(group, {}), current.get(group, {})
        for name in sorted(set(old) | set(new)):
            if name in allowed or f"{group}.{name}" in allowed:
                continue
            missing = "<absent>"
            if old.get(name, missing) != new.get(name, missing):
                lines.append(f"{group}.{name}: {_short(old.get(name, missing))} -> {_short(new.get(name, missing))}")
    return lines


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def read_record(path: str | Path) -> dict[str, Any] | None:
    """A record written by :func:`write_record` (``None`` if there is none)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} is not a readable run record ({error}); move it away or pick another output") from error
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ConfigError(f"{path} is not a run record (no 'config' mapping)")
    return record


def write_record(path: str | Path, job: str, config: Mapping[str, Mapping[str, Any]]) -> Path:
    """Atomically write the record of a job's output: job name, resolved config, versions, commit."""
    record = {"job": job, "config": config, "versions": library_versions(), "commit": code_commit()}
    with atomic_file(path) as handle:
        handle.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return Path(path)


def read_run_config(directory: str | Path) -> dict[str, Any] | None:
    return read_record(Path(directory) / RUN_CONFIG)


def write_run_config(directory: str | Path, job: str, config: Mapping[str, Mapping[str, Any]]) -> Path:
    """Atomically write ``directory/run_config.json``."""
    return write_record(Path(directory) / RUN_CONFIG, job, config)


RESTART_HINT = "Use another output folder, or pass --overwrite_output_dir true to restart this one from scratch."


def check_same_run(
    directory: str | Path, job: str, config: Mapping[str, Mapping[str, Any]], *, allowed: Iterable[str],
    remedy: str = RESTART_HINT,
) -> bool:
    """True when ``directory`` holds a run of ``job`` with this configuration (outside ``allowed``), False
    when it holds no run record; raises :class:`RunMismatchError` listing the differences and ``remedy``
    (what this job's user can do about it) otherwise."""
    record = read_run_config(directory)
    if record is None:
        return False
    recorded_job = record.get("job")
    if recorded_job != job:
        raise RunMismatchError(
            f"{directory} holds a {recorded_job!r} run, not {job!r}; choose another output folder"
        )
    differences = config_differences(record["config"], config, allowed=allowed)
    if differences:
        listing = "\n  ".join(differences)
        raise RunMismatchError(
            f"{directory} holds a run with a different configuration; resuming it would mix two runs:\n  {listing}\n"
            + remedy
        )
    return True


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def looks_like_hub_id(name: str) -> bool:
    """``owner/name`` with nothing that only a file-system path would have."""
    return bool(_HUB_ID.match(name)) and ".." not in name and not name.endswith((".", "-"))


def check_model_source(name: str | Path, *, what: str, ask_hub: bool = False, revision: str | None = None) -> None:
    """Fail fast on a model reference that cannot load, instead of minutes of hub retries.

    A local path must exist, unless it reads as a hub id (``owner/name``). A hub id already in the local cache
    is fine. With ``ask_hub`` (jobs do this just before loading; configs don't, so reading a recipe never
    touches the network) one short request asks the hub whether the id exists; with ``HF_HUB_OFFLINE=1`` an
    id outside the cache is refused without asking. ``revision`` (branch, tag or commit) is the one looked up
    in the cache.
    """
    text = str(name)
    if Path(text).expanduser().exists():
        return
    if is_tiny(text):  # the configs that take one resolve it to a folder before this check
        raise ConfigError(
            f"{what}: {text} is a tiny base model, which only a job's model option (model, model_name_or_path) takes; "
            "this needs a trained checkpoint, e.g. runs/demo/cold_start/final from `descore demo --output_dir runs/demo`"
        )
    if not looks_like_hub_id(text):
        raise ConfigError(f"{what}: {text} does not exist (and is not a hub id of the form owner/name)")
    if not ask_hub and os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes"):
        return
    if _in_hub_cache(text, revision):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ConfigError(f"{what}: {text} is neither a local folder nor in the hub cache, and HF_HUB_OFFLINE is set")
    _ask_hub(text, what=what)


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    """Whether the hub cache holds files of ``repo_id`` at ``revision`` (a branch or tag resolved through the
    cache's refs, or a commit). Any file counts: not every repository has a config.json (VideoReward's
    model_config.json, HPSv2's single .pt file)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    ref = folder / "refs" / (revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = folder / "snapshots" / commit if commit else None
    return snapshot is not None and snapshot.is_dir() and any(snapshot.iterdir())


def _ask_hub(repo_id: str, *, what: str) -> None:
    from huggingface_hub import model_info
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        model_info(repo_id, timeout=10)
    except RepositoryNotFoundError as error:
        raise ConfigError(f"{what}: {repo_id} is neither a local folder nor a model on the hub") from error
    except HfHubHTTPError:
        return  # the hub answered (gated, rate-limited, ...): the id exists and the loader reports the rest
    except Exception as error:  # no answer: DNS, refused connection, timeout (the HTTP client's classes vary)
        raise ConfigError(
            f"{what}: {repo_id} is not a local folder, and the hub could not be reached to fetch it ({error})"
        ) from error


def check_output_file(path: str | Path, *, option: str = "--output") -> Path:
    """An output that must be a file: refuse an existing folder (before any work is done)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file path")
    return path


def check_output_directory(path: str | Path, *, marker: str, overwrite: bool, option: str = "--output_dir") -> Path:
    """An output folder a command fills: it must be missing, empty, or this command's own earlier output
    (it holds ``marker``). Anything else is refused unless ``overwrite`` says so explicitly, so a command
    never replaces what it did not write (a training run, a dataset)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file; give a folder path")
    if not path.is_dir() or overwrite or (path / marker).is_file() or not any(path.iterdir()):
        return path
    raise ConfigError(
        f"{option} {path} already holds files this command did not write (no {marker}); refusing to replace them. "
        "Choose an empty or new folder, or pass --overwrite true to replace its contents."
    )
