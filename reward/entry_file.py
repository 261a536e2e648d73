"""A reward named in a file: ``descore reward score --reward R.yaml`` scores with any reward of the registry.

The file holds one registry entry, as in the ``rewards:`` list of a generator recipe but without ``weight``
(a weight only means something in a training mix)::

    name: descore_no_cot
    path: runs/descore/final
    label: descore-v2        # optional: the name shown in the summary table (default: name)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .modeling import MANIFEST_NAME
from .score_output import checkpoint_fingerprint


@dataclass(frozen=True)
class RewardEntry:
    """A --reward file: the registry entry (``name`` and the model's options) and the label to report it by."""

    entry: dict[str, Any]
    label: str

    def settings(self) -> dict[str, Any]:
        """What identifies the reward in the settings record: the entry, and for a local ``path`` its resolved
        folder and, when it is a DeScore checkpoint, its content fingerprint (a retrained head differs)."""
        path = self.entry.get("path")
        local = Path(str(path)) if path is not None and Path(str(path)).exists() else None
        return {
            "entry": self.entry,
            "path": str(local.resolve()) if local is not None else None,
            "fingerprint": checkpoint_fingerprint(local) if local is not None and (local / MANIFEST_NAME).is_file() else None,
        }


def read_reward_entry(path: str) -> RewardEntry:
    """Read a --reward YAML: one mapping ``{name: ..., <options>}`` with an optional ``label``.

    Raises:
        ConfigError: the file is missing or not YAML, holds something other than one mapping with a ``name``,
            or sets ``weight`` (it only means something in a training mix).
    """
    source = Path(path)
    if not source.is_file():
        raise ConfigError(
            f"--reward {path} is not a file; give a YAML file holding one reward entry, e.g. `name: temporal_smoothness`"
        )
    try:
        entry = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"--reward {path} is not readable YAML: {error}") from error
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(
            f"--reward {path} must hold one mapping with a name, e.g. `name: temporal_smoothness` or "
            f"`{{name: descore_no_cot, path: runs/descore/final}}`; got {type(entry).__name__}: {entry!r}"
        )
    if "weight" in entry:
        raise ConfigError(f"--reward {path}: 'weight' only applies to a training reward mix; remove it to score with one reward")
    entry = dict(entry)
    label = str(entry.pop("label", entry["name"]))
    return RewardEntry(entry=entry, label=label)
