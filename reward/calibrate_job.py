"""``descore reward calibrate``: score a reference set with one reward and write its calibration stats.

The scoring is ``descore reward score``'s own job (:func:`reward.jobs.run_score`) into
``output_dir/scores.jsonl``, so it is cached as it goes, a killed run resumes without rescoring, and a video
that cannot be read is recorded as failed (counted and listed in the stats' ``source``, never included). Then
``output_dir/calibration.json`` (:mod:`reward.calibration`) is written. ``output_dir/run_config.json`` names the
reward and the data (with its sha256): another reward or data set in the same folder is refused.

With ``--save_to_checkpoint true`` the stats are also written into the DeScore checkpoint folder that was
scored, where :class:`reward.scoring.DeScoreReward` picks them up and ``descore reward export`` carries them
along. A checkpoint that already holds other stats is never overwritten.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .base import check_reward_entry
from .calibration import (
    CALIBRATION_FILE,
    Calibration,
    DimensionStats,
    dimension_values,
    read_calibration,
    reward_identity,
    write_calibration,
)
from .entry_file import RewardEntry, read_reward_entry
from .errors import ConfigError, DataError
from .jobs import ScoreConfig, run_score
from .modeling import MANIFEST_NAME
from .run_record import (
    RUN_CONFIG,
    check_output_directory,
    check_same_run,
    code_commit,
    file_sha256,
    library_versions,
    write_run_config,
)
from .score_report import _number, _table  # the number and table format of `reward score`'s report

logger = logging.getLogger(__name__)

JOB = "reward calibrate"
SCORES = "scores.jsonl"
DESCORE_REWARDS = ("descore", "descore_no_cot")  # the registry entries that read a checkpoint's stats


@dataclass
class CalibrateConfig:
    """Score a reference set with one reward and write calibration.json (per-dimension stats)."""

    reward: str | None = field(
        default=None, metadata={"help": "YAML file holding one reward-registry entry (as for `reward score`)."})
    data: str | None = field(
        default=None, metadata={"help": "Reference set: a video index (prompt, file) or a preference CSV/JSONL "
                                        "(every distinct video is scored)."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Folder for scores.jsonl (the resumable cache) and calibration.json."})
    batch_size: int = field(default=4, metadata={"help": "Videos per scoring call."})
    save_to_checkpoint: bool = field(
        default=False, metadata={"help": "Also write calibration.json into the DeScore checkpoint folder the "
                                         "reward's path names (never over other stats)."})

    def __post_init__(self) -> None:
        if self.reward is None or self.data is None or self.output_dir is None:
            raise ConfigError("--reward, --data and --output_dir are required")
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1, got {self.batch_size}")
        if not Path(self.data).is_file():
            raise ConfigError(f"--data {self.data} is not a file")
        entry = read_reward_entry(self.reward)
        check_reward_entry(entry.entry)
        check_output_directory(self.output_dir, marker=RUN_CONFIG, overwrite=False)
        if self.save_to_checkpoint:
            checkpoint_folder(entry.entry)


@dataclass(frozen=True)
class CalibrationSummary:
    """``scored``/``failed`` count the reference items; ``resumed`` of them came from an earlier run's cache."""

    path: Path
    calibration: Calibration
    scored: int
    failed: int
    skipped_rows: int
    resumed: int
    checkpoint: Path | None = None  # where the stats were also saved


def run_calibrate(config: CalibrateConfig) -> CalibrationSummary:
    """Steps: claim the output folder; score (cached, resumable); compute and write the stats; optionally
    store them in the checkpoint."""
    entry = read_reward_entry(config.reward)
    output = _claim(config, entry)
    summary = run_score(ScoreConfig(reward=config.reward, data=config.data, output=str(output / SCORES),
                                    skip_invalid=True, batch_size=config.batch_size))
    records = [json.loads(line) for line in (output / SCORES).read_text(encoding="utf-8").splitlines()]
    failures = [{"video": record["video"], "prompt": record["prompt"], "error": record.get("error")}
                for record in records if record["reward"] is None]
    if failures:
        logger.warning("%d of %d item(s) could not be scored; they are left out of the stats",
                       len(failures), len(records))
    source = {
        "data": _data_identity(config.data),
        "items": {"scored": len(records) - len(failures), "failed": len(failures),
                  "skipped_rows": summary.skipped_rows, "failures": failures},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "commit": code_commit(),
    }
    calibration = calibration_of(records, entry, source=source)
    path = write_calibration(output / CALIBRATION_FILE, calibration)
    saved = store_in_checkpoint(checkpoint_folder(entry.entry), calibration) if config.save_to_checkpoint else None
    return CalibrationSummary(path=path, calibration=calibration, scored=summary.scored, failed=summary.failed,
                              skipped_rows=summary.skipped_rows, resumed=summary.resumed, checkpoint=saved)


def calibration_of(records: list[dict[str, Any]], entry: RewardEntry, *, source: dict[str, Any]) -> Calibration:
    """The stats of score records (``reward`` None where scoring failed).

    Raises:
        DataError: no item got a reward (the message shows the first errors).
    """
    values = dimension_values(records)
    if not values["reward"]:
        errors = "; ".join(str(record.get("error")) for record in records[:3])
        raise DataError(f"none of the {len(records)} item(s) got a reward, so there is nothing to calibrate on "
                        f"({errors})")
    return Calibration(
        dimensions={name: DimensionStats.of(numbers) for name, numbers in values.items()},
        reward={"label": entry.label, "entry": entry.entry, "identity": reward_identity(entry.entry)},
        source=source,
    )


def _data_identity(data: str) -> dict[str, str]:
    return {"path": str(Path(data).resolve()), "sha256": file_sha256(data)}


def _claim(config: CalibrateConfig, entry: RewardEntry) -> Path:
    """The output folder, refused when it holds another reward's or another data set's calibration."""
    output = Path(config.output_dir)
    record = {"calibration": {"reward": entry.settings(), "data": _data_identity(config.data)}}
    check_same_run(output, JOB, record, allowed=(),
                   remedy="A folder calibrates one reward on one data set: give this one another --output_dir.")
    output.mkdir(parents=True, exist_ok=True)
    write_run_config(output, JOB, record)
    return output


def checkpoint_folder(entry: dict[str, Any]) -> Path:
    """The local DeScore checkpoint folder a reward entry scores with (where --save_to_checkpoint writes).

    Raises:
        ConfigError: the entry is not DeScore, or its path is not a local checkpoint folder (a hub id's cache
            is not ours to write into).
    """
    if entry["name"] not in DESCORE_REWARDS:
        raise ConfigError(f"--save_to_checkpoint stores stats in a DeScore checkpoint; reward {entry['name']!r} "
                          f"is not one of {', '.join(DESCORE_REWARDS)} (its calibration.json in --output_dir is "
                          "what `calibration:` points at)")
    folder = Path(str(entry.get("path"))).expanduser()
    if not (folder / MANIFEST_NAME).is_file():
        raise ConfigError(f"--save_to_checkpoint: path {entry.get('path')} is not a local DeScore checkpoint folder "
                          f"(no {MANIFEST_NAME}); download a hub checkpoint to a folder first")
    return folder


def store_in_checkpoint(folder: Path, calibration: Calibration) -> Path:
    """Write ``calibration.json`` into a checkpoint folder atomically; the same stats already there are kept.

    Raises:
        ConfigError: the folder holds stats of another reward or data set (they are never replaced here).
    """
    target = folder / CALIBRATION_FILE
    if target.is_file():
        if read_calibration(target).same_stats(calibration):
            return target
        raise ConfigError(f"{target} already holds other calibration stats; this job never replaces them. Remove "
                          "that file to store these, or point `calibration:` at this run's calibration.json.")
    return write_calibration(target, calibration)


def format_calibration_report(summary: CalibrationSummary) -> str:
    """What ``descore reward calibrate`` prints: counts, one row per dimension, the files written."""
    lines = [f"scored {summary.scored} video(s), {summary.failed} failed (left out), "
             f"{summary.skipped_rows} data row(s) skipped"]
    if summary.resumed:
        lines.append(f"{summary.resumed} of them were already scored by an earlier run")
    rows = [[name, str(s.count), *map(_number, (s.mean, s.std, s.minimum, s.quantiles[5.0], s.quantiles[50.0],
                                                 s.quantiles[95.0], s.maximum))]
            for name, s in summary.calibration.dimensions.items()]
    lines += ["", *_table(["dimension", "count", "mean", "std", "min", "5%", "50%", "95%", "max"], rows), ""]
    lines.append(f"wrote {summary.path}" + (f" and {summary.checkpoint}" if summary.checkpoint else ""))
    return "\n".join(lines)
