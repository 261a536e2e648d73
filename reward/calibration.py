"""Calibration stats of a reward model: where its scores fall on a reference set, so that they can be put on a
common scale (the z-scores of a ``composite`` reward, docs/reward_zoo/composite.md).

``descore reward calibrate`` (:mod:`reward.calibrate_job`) scores a reference set and writes
``calibration.json``: per dimension — ``reward`` and every numeric sub-score (e.g. VideoReward's VQ/MQ/TA/
Overall) — the count, mean, standard deviation, minimum, maximum and the 1/5/25/50/75/95/99 % quantiles,
with the reward entry and the data it was computed from. Items whose scoring failed are counted, never
included.

Definitions (chosen once, written into every file):

- ``std`` is the *sample* standard deviation (n − 1 in the denominator): the reference set is a sample of the
  videos the model will score, and the n − 1 estimate does not understate their spread when the set is small.
  It is the ``std`` that ``descore reward score`` reports too. Undefined (``null``) below two values.
- A quantile at fraction q is the linear interpolation between order statistics at position (n − 1)·q of the
  sorted values (Hyndman & Fan's definition 7; numpy's default ``method="linear"``).

Any reward entry takes ``calibration: path/to/calibration.json`` (:func:`reward.base.build_reward` reads it
for every model and sets the built model's ``calibration`` attribute). A file computed for another reward is
refused (:func:`check_calibration_matches`): stats of another model would silently put a term of a training
mix on a wrong scale. DeScore checkpoints may carry their own file (``calibrate --save_to_checkpoint``).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

CALIBRATION_FILE = "calibration.json"
FORMAT_VERSION = 1
QUANTILE_PERCENTS = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)
STD_DEFINITION = "sample (n - 1 in the denominator)"
QUANTILE_DEFINITION = "linear interpolation between order statistics at (n - 1) q (Hyndman & Fan 7, numpy 'linear')"
# Reward options that decide how a model runs, not what it returns: a calibration made with other values of
# these still describes the model (``calibration`` itself names the stats, not the model).
RUNTIME_OPTIONS = frozenset({"batch_size", "device", "skip_invalid", "progress", "attn_implementation",
                             "decode_limits", "calibration"})


def quantile(sorted_values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ascending ``sorted_values``: linear between the order statistics around
    position (n − 1)·fraction (module docstring)."""
    if not sorted_values or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"need values and a fraction in [0, 1], got {len(sorted_values)} value(s), {fraction}")
    position = (len(sorted_values) - 1) * fraction
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    return sorted_values[below] + (position - below) * (sorted_values[above] - sorted_values[below])


@dataclass(frozen=True)
class DimensionStats:
    """One dimension over the items that got a finite value; ``std`` NaN below two values. ``quantiles`` maps
    a percent (e.g. 5.0) to its value."""

    count: int
    mean: float
    std: float
    minimum: float
    maximum: float
    quantiles: dict[float, float]

    @classmethod
    def of(cls, values: Iterable[float]) -> DimensionStats:
        ordered = sorted(float(value) for value in values)
        if not ordered:
            raise ValueError("no values to describe")
        return cls(
            count=len(ordered),
            mean=statistics.fmean(ordered),
            std=statistics.stdev(ordered) if len(ordered) > 1 else math.nan,
            minimum=ordered[0],
            maximum=ordered[-1],
            quantiles={percent: quantile(ordered, percent / 100) for percent in QUANTILE_PERCENTS},
        )

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "std": None if math.isnan(self.std) else self.std,
                "min": self.minimum, "max": self.maximum,
                "quantiles": {f"{percent:g}": value for percent, value in self.quantiles.items()}}

    @classmethod
    def from_json(cls, payload: Any, *, where: str) -> DimensionStats:
        keys = ("count", "mean", "std", "min", "max", "quantiles")
        if not isinstance(payload, dict) or set(payload) != set(keys):
            found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            raise ConfigError(f"{where}: expected the keys {list(keys)}, found {found}")
        numbers = {key: payload[key] for key in keys[1:5]}
        if payload["std"] is None:
            numbers["std"] = math.nan
        if not isinstance(payload["count"], int) or payload["count"] < 1 or not all(map(_is_number, numbers.values())):
            raise ConfigError(f"{where}: count must be a positive integer and mean/std/min/max numbers, got {payload}")
        quantiles = payload["quantiles"]
        try:
            parsed = {float(percent): float(value) for percent, value in quantiles.items()}
        except (AttributeError, TypeError, ValueError) as error:
            raise ConfigError(f"{where}.quantiles must map percents to numbers, got {quantiles!r}") from error
        return cls(count=payload["count"], mean=float(numbers["mean"]), std=float(numbers["std"]),
                   minimum=float(numbers["min"]), maximum=float(numbers["max"]), quantiles=parsed)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def dimension_values(records: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """``reward`` and every numeric sub-score of the score records that got a reward (``reward`` not None),
    in order of first appearance. Non-numeric sub-scores (DeScore's "N/A") and non-finite values are left out."""
    values: dict[str, list[float]] = {"reward": []}
    for record in records:
        if record.get("reward") is None:
            continue
        values["reward"].append(float(record["reward"]))
        for key, value in (record.get("sub_scores") or {}).items():
            if _is_number(value) and math.isfinite(value):
                values.setdefault(str(key), []).append(float(value))
    return values


@dataclass(frozen=True)
class Calibration:
    """A ``calibration.json``: stats per dimension, the reward they describe (``reward``: label, entry,
    identity) and where they came from (``source``: data file and digest, item counts, versions, date)."""

    dimensions: dict[str, DimensionStats]
    reward: dict[str, Any]
    source: dict[str, Any]

    def stats(self, dimension: str = "reward") -> DimensionStats:
        if dimension not in self.dimensions:
            raise ConfigError(f"calibration of {self.reward.get('label')!r} has no dimension {dimension!r}; "
                              f"it has {sorted(self.dimensions)}")
        return self.dimensions[dimension]

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "std": STD_DEFINITION, "quantiles": QUANTILE_DEFINITION,
                "reward": self.reward, "source": self.source,
                "dimensions": {name: stats.to_json() for name, stats in self.dimensions.items()}}

    def same_stats(self, other: Calibration) -> bool:
        """The same reward on the same data with the same numbers (when and with which versions aside)."""
        return (self.reward, self.dimensions) == (other.reward, other.dimensions) and \
            self.source.get("data") == other.source.get("data")


def read_calibration(path: str | Path) -> Calibration:
    """Read and check a ``calibration.json``.

    Raises:
        ConfigError: the file is missing, not JSON, of another format version, or lacks a key (named).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"calibration file {path} does not exist; write one with `descore reward calibrate "
                          "--reward R.yaml --data FILE --output_dir DIR` (it writes DIR/calibration.json)")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"calibration file {path} is not valid JSON ({error})") from error
    return calibration_from_json(payload, where=f"calibration file {path}")


def calibration_from_json(payload: Any, *, where: str) -> Calibration:
    """Check a parsed ``calibration.json`` (or the same object sent by a reward server's ``/info``).

    Raises:
        ConfigError: another format version, or a key missing or malformed (named, after ``where``).
    """
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        found = payload.get("format_version") if isinstance(payload, dict) else type(payload).__name__
        raise ConfigError(f"{where}: format_version {found!r} is not {FORMAT_VERSION}")
    for key, kind in (("reward", dict), ("source", dict), ("dimensions", dict)):
        if not isinstance(payload.get(key), kind) or not payload[key]:
            raise ConfigError(f"{where}: '{key}' must be a non-empty mapping")
    identity = payload["reward"].get("identity")
    if not isinstance(identity, dict) or not isinstance(identity.get("entry"), dict) or "fingerprint" not in identity:
        raise ConfigError(f"{where}: 'reward.identity' must map 'entry' (the reward entry the stats "
                          f"describe) and 'fingerprint', got {identity!r}")
    dimensions = {name: DimensionStats.from_json(stats, where=f"{where}: dimensions.{name}")
                  for name, stats in payload["dimensions"].items()}
    return Calibration(dimensions=dimensions, reward=payload["reward"], source=payload["source"])


def write_calibration(path: str | Path, calibration: Calibration) -> Path:
    """Atomically write ``calibration`` as JSON (NaN never appears: an undefined std is ``null``)."""
    from .checkpoint import atomic_file

    with atomic_file(path) as handle:
        handle.write(json.dumps(calibration.to_json(), indent=2, allow_nan=False) + "\n")
    return Path(path)


def reward_identity(entry: Mapping[str, Any]) -> dict[str, Any]:
    """What decides a reward's numbers: the entry without :data:`RUNTIME_OPTIONS`, a local ``path`` resolved
    to an absolute one, and for a DeScore checkpoint its content fingerprint (a head retrained in place is
    another model). Paths nested deeper (a composite's terms) are compared as written."""
    from .modeling import MANIFEST_NAME
    from .run_record import plain
    from .score_output import checkpoint_fingerprint

    options = {key: value for key, value in entry.items() if key not in RUNTIME_OPTIONS}
    fingerprint = None
    if options.get("path") is not None and Path(str(options["path"])).expanduser().exists():
        local = Path(str(options["path"])).expanduser()
        options["path"] = str(local.resolve())
        fingerprint = checkpoint_fingerprint(local) if (local / MANIFEST_NAME).is_file() else None
    return {"entry": plain(options), "fingerprint": fingerprint}


def check_calibration_matches(calibration: Calibration, entry: Mapping[str, Any], *, where: str) -> None:
    """Refuse stats computed for another reward than ``entry`` (runtime options aside). A file inside the
    entry's own checkpoint folder is that checkpoint's (it may have been exported or moved with it), so there
    the path and fingerprint are not compared.

    Raises:
        ConfigError: listing each difference as ``reward.<key>: calibrated -> given``.
    """
    from .run_record import config_differences

    recorded, current = dict(calibration.reward["identity"]), reward_identity(entry)
    carried = entry.get("path") is not None and \
        Path(where).resolve().parent == Path(str(entry["path"])).expanduser().resolve()
    if carried:
        for identity in (recorded, current):
            identity["fingerprint"] = None
            identity["entry"] = {key: value for key, value in identity["entry"].items() if key != "path"}
    differences = config_differences({"reward": _flat(recorded)}, {"reward": _flat(current)})
    if differences:
        listing = "\n  ".join(differences)
        raise ConfigError(
            f"calibration {where} was computed for another reward than {dict(entry)}:\n  {listing}\n"
            "Calibrate this reward (`descore reward calibrate`), or point `calibration:` at its own stats."
        )


def _flat(identity: Mapping[str, Any]) -> dict[str, Any]:
    return {**identity["entry"], "fingerprint": identity["fingerprint"]}


def entry_calibration(entry: Mapping[str, Any]) -> Calibration | None:
    """The stats an entry's ``calibration:`` names, checked against the entry; None without the option."""
    path = entry.get("calibration")
    if path is None:
        return None
    calibration = read_calibration(path)
    check_calibration_matches(calibration, entry, where=str(path))
    return calibration
