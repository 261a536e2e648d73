"""Calibration stats (`reward/calibration.py`) and `descore reward calibrate` (`reward/calibrate_job.py`): the
numbers against numpy and hand computations, the job end to end on real mp4s (resume without rescoring, a
corrupt video counted and left out, another reward or data set refused), `calibration:` on any entry (refused
for another reward), and a DeScore checkpoint carrying its stats (saved when asked, never over other stats,
picked up by DeScoreReward, carried by export)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from descore.cli import main
from reward import build_reward, load
from reward.base import check_reward_entry
from reward.calibrate_job import CalibrateConfig, run_calibrate
from reward.calibration import (
    CALIBRATION_FILE,
    QUANTILE_PERCENTS,
    Calibration,
    DimensionStats,
    dimension_values,
    quantile,
    read_calibration,
    write_calibration,
)
from reward.errors import ConfigError, DataError
from reward.jobs import ExportConfig, run_export
from reward.run_record import RunMismatchError
from reward.sanity import FrameStatisticReward

from .helpers import small_clip, truncated_clip
from .test_jobs import Calls


def write_index(folder: Path, files: list[Path], name: str = "index.csv") -> Path:
    with (folder / name).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "file"])
        writer.writerows([f"prompt {i}", str(file)] for i, file in enumerate(files))
    return folder / name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, list[str]]:
    """An index of four real clips (different noise) and one corrupt mp4; returns (index, good videos)."""
    folder = tmp_path_factory.mktemp("reference")
    good = [small_clip(folder / f"{i}.mp4", seed=i, frames=6 + i) for i in range(4)]
    bad = truncated_clip(folder / "corrupt.mp4")
    return write_index(folder, [*good, bad]), [str(path) for path in good]


def entry_file(folder: Path, text: str, name: str = "reward.yaml") -> Path:
    (folder / name).write_text(text)
    return folder / name


# ----- the numbers ------------------------------------------------------------------------------------------


def test_quantiles_are_linear_between_order_statistics():
    """Sorted [1, 2, 4, 7, 11], position (n − 1)·q = 4q: q=.05 -> 0.2 -> 1 + 0.2·1 = 1.2; q=.25 -> 1 -> 2;
    q=.5 -> 2 -> 4; q=.75 -> 3 -> 7; q=.99 -> 3.96 -> 7 + 0.96·4 = 10.84."""
    values = [1.0, 2.0, 4.0, 7.0, 11.0]
    assert [quantile(values, q) for q in (0.0, 0.05, 0.25, 0.5, 0.75, 0.99, 1.0)] == pytest.approx(
        [1.0, 1.2, 2.0, 4.0, 7.0, 10.84, 11.0], abs=1e-12)
    randoms = sorted(np.random.default_rng(0).normal(size=37).tolist())
    fractions = np.linspace(0, 1, 21)
    assert [quantile(randoms, q) for q in fractions] == pytest.approx(np.quantile(randoms, fractions, method="linear"), abs=1e-12)
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_dimension_stats_against_numpy():
    values = np.random.default_rng(1).normal(2.0, 3.0, size=50)
    stats = DimensionStats.of(values.tolist())
    assert stats.count == 50
    assert stats.mean == pytest.approx(values.mean(), abs=1e-12)
    assert stats.std == pytest.approx(values.std(ddof=1), abs=1e-12)  # sample std: n - 1
    assert (stats.minimum, stats.maximum) == (values.min(), values.max())
    expected = np.quantile(values, np.array(QUANTILE_PERCENTS) / 100)
    assert list(stats.quantiles) == list(QUANTILE_PERCENTS)
    assert list(stats.quantiles.values()) == pytest.approx(expected, abs=1e-12)
    lone = DimensionStats.of([4.0])
    assert math.isnan(lone.std) and lone.to_json()["std"] is None and lone.quantiles[99.0] == 4.0


def test_dimensions_are_the_reward_and_numeric_sub_scores_of_scored_items():
    records = [
        {"reward": 1.5, "sub_scores": {"VQ": 2, "MQ": 0.5, "camera": "N/A", "flag": True}},
        {"reward": None, "sub_scores": {"VQ": 100}, "error": "cannot read video"},  # failed: left out entirely
        {"reward": -0.5, "sub_scores": {"VQ": 1, "MQ": float("nan")}},
        {"reward": 2.0, "sub_scores": None},
    ]
    assert dimension_values(records) == {"reward": [1.5, -0.5, 2.0], "VQ": [2.0, 1.0], "MQ": [0.5]}


def test_a_calibration_file_round_trips(tmp_path):
    calibration = Calibration(
        dimensions={"reward": DimensionStats.of([1.0, 2.0, 4.0]), "VQ": DimensionStats.of([3.0])},
        reward={"label": "x", "entry": {"name": "brightness"}, "identity": {"entry": {"name": "brightness"}, "fingerprint": None}},
        source={"data": {"path": "/d.csv", "sha256": "0" * 64}},
    )
    path = write_calibration(tmp_path / CALIBRATION_FILE, calibration)
    again = read_calibration(path)
    assert again.dimensions["reward"] == calibration.dimensions["reward"]
    assert again.same_stats(calibration) and math.isnan(again.stats("VQ").std)
    assert json.loads(path.read_text())["std"].startswith("sample")
    with pytest.raises(ConfigError, match=r"has no dimension 'TA'; it has \['VQ', 'reward'\]"):
        again.stats("TA")


@pytest.mark.parametrize("content, message", [
    (None, r"calibration file .*missing.json does not exist; write one with `descore reward calibrate"),
    ("{not json", r"is not valid JSON"),
    ('{"format_version": 7}', r"format_version 7 is not 1"),
    ('{"format_version": 1, "reward": {"identity": {}}, "source": {"a": 1}}', r"'dimensions' must be a non-empty mapping"),
    ('{"format_version": 1, "reward": {"label": "x"}, "source": {"a": 1}, "dimensions": {"reward": {}}}',
     r"'reward.identity' must map 'entry' \(the reward entry the stats describe\) and 'fingerprint', got None"),
    ('{"format_version": 1, "reward": {"identity": {"entry": {}, "fingerprint": null}}, "source": {"a": 1}, '
     '"dimensions": {"reward": {"count": 2}}}',
     r"dimensions.reward: expected the keys \['count', 'mean', 'std', 'min', 'max', 'quantiles'\], found \['count'\]"),
])
def test_a_bad_calibration_file_is_refused_naming_it(content, message, tmp_path):
    path = tmp_path / ("missing.json" if content is None else "calibration.json")
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_calibration(path)
    with pytest.raises(ConfigError, match=message):
        build_reward({"name": "brightness", "calibration": str(path)})


# ----- the job ------------------------------------------------------------------------------------------------


def test_calibrate_scores_once_counts_failures_and_refuses_another_run(reference, tmp_path, monkeypatch, capsys):
    index, good = reference
    reward = entry_file(tmp_path, "name: temporal_smoothness\nlabel: smooth\n")
    output = tmp_path / "calib"
    argv = ["reward", "calibrate", "--reward", str(reward), "--data", str(index), "--output_dir", str(output)]
    assert main(argv) == 0
    report = capsys.readouterr().out
    assert "scored 4 video(s), 1 failed (left out), 0 data row(s) skipped" in report and f"wrote {output / CALIBRATION_FILE}" in report

    expected = [item.reward for item in build_reward({"name": "temporal_smoothness"}).score(good, ["p"] * 4).items]
    payload = json.loads((output / CALIBRATION_FILE).read_text())
    stats = payload["dimensions"]["reward"]
    assert list(payload["dimensions"]) == ["reward"]
    assert stats["count"] == 4 and stats["mean"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert stats["std"] == pytest.approx(np.std(expected, ddof=1), abs=1e-12)
    assert stats["quantiles"]["50"] == pytest.approx(np.median(expected), abs=1e-12)
    assert (stats["min"], stats["max"]) == (min(expected), max(expected))
    assert payload["reward"]["label"] == "smooth" and payload["reward"]["entry"] == {"name": "temporal_smoothness"}
    assert payload["source"]["data"] == {"path": str(index.resolve()), "sha256": hashlib.sha256(index.read_bytes()).hexdigest()}
    items = payload["source"]["items"]
    assert (items["scored"], items["failed"]) == (4, 1) and items["failures"][0]["video"].endswith("corrupt.mp4")
    assert "cannot read video" in items["failures"][0]["error"]
    assert payload["source"]["versions"]["torch"] and payload["source"]["created"].endswith("+00:00")

    scored = Calls(monkeypatch, FrameStatisticReward, "score")
    again = run_calibrate(CalibrateConfig(reward=str(reward), data=str(index), output_dir=str(output)))
    assert scored.count == 0 and again.resumed == 4 and again.calibration.dimensions == read_calibration(output / CALIBRATION_FILE).dimensions

    other = entry_file(tmp_path, "name: brightness\n", "other.yaml")
    with pytest.raises(RunMismatchError, match=r"calibration\.reward: .*temporal_smoothness.*brightness"):
        run_calibrate(CalibrateConfig(reward=str(other), data=str(index), output_dir=str(output)))
    subset = write_index(tmp_path, [Path(good[0]), Path(good[1])], "subset.csv")
    with pytest.raises(RunMismatchError, match=r"(?s)calibration\.data: .*A folder calibrates one reward on one data set"):
        run_calibrate(CalibrateConfig(reward=str(reward), data=str(subset), output_dir=str(output)))
    assert scored.count == 0


def test_calibrate_refuses_bad_arguments_before_scoring(reference, tmp_path):
    index, _ = reference
    reward = entry_file(tmp_path, "name: brightness\n")
    with pytest.raises(ConfigError, match="--data nope.csv is not a file"):
        CalibrateConfig(reward=str(reward), data="nope.csv", output_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"--save_to_checkpoint stores stats in a DeScore checkpoint; reward 'brightness'"):
        CalibrateConfig(reward=str(reward), data=str(index), output_dir=str(tmp_path / "out"), save_to_checkpoint=True)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"already holds files this command did not write"):
        CalibrateConfig(reward=str(reward), data=str(index), output_dir=str(tmp_path / "taken"))


def test_nothing_to_calibrate_on_is_an_error_naming_the_failures(tmp_path):
    index = write_index(tmp_path, [truncated_clip(tmp_path / "corrupt.mp4")])
    reward = entry_file(tmp_path, "name: brightness\n")
    with pytest.raises(DataError, match=r"none of the 1 item\(s\) got a reward, .*\(cannot read video .*corrupt.mp4"):
        run_calibrate(CalibrateConfig(reward=str(reward), data=str(index), output_dir=str(tmp_path / "calib")))
    assert not (tmp_path / "calib" / CALIBRATION_FILE).exists()


def test_calibration_of_another_reward_is_refused_runtime_options_aside(reference, tmp_path):
    index, _ = reference
    run_calibrate(CalibrateConfig(reward=str(entry_file(tmp_path, "name: temporal_smoothness\n")), data=str(index),
                                  output_dir=str(tmp_path / "calib")))
    path = str(tmp_path / "calib" / CALIBRATION_FILE)
    built = build_reward({"name": "temporal_smoothness", "skip_invalid": True, "calibration": path})
    assert built.calibration.dimensions == read_calibration(path).dimensions
    assert build_reward({"name": "temporal_smoothness"}).calibration is None
    with pytest.raises(ConfigError, match=r"computed for another reward .*\n  reward\.name: temporal_smoothness -> brightness"):
        check_reward_entry({"name": "brightness", "calibration": path})


# ----- a DeScore checkpoint carrying its stats ------------------------------------------------------------------


def test_a_descore_checkpoint_carries_its_stats(checkpoint, reference, tmp_path):
    index, good = reference
    model = shutil.copytree(checkpoint, tmp_path / "ckpt")
    reward = entry_file(tmp_path, f"name: descore_no_cot\npath: {model}\ndevice: cpu\n")
    summary = run_calibrate(CalibrateConfig(reward=str(reward), data=str(index), output_dir=str(tmp_path / "calib"),
                                            save_to_checkpoint=True))
    carried = model / CALIBRATION_FILE
    assert summary.checkpoint == carried and carried.read_bytes() == (tmp_path / "calib" / CALIBRATION_FILE).read_bytes()
    assert summary.calibration.stats().count == 4

    # The same stats again: kept; other stats (another data set): refused, the checkpoint's file untouched.
    run_calibrate(CalibrateConfig(reward=str(reward), data=str(index), output_dir=str(tmp_path / "calib"),
                                  save_to_checkpoint=True))
    subset = write_index(tmp_path, [Path(good[0]), Path(good[2])], "subset.csv")
    before = carried.read_bytes()
    with pytest.raises(ConfigError, match=rf"{carried} already holds other calibration stats"):
        run_calibrate(CalibrateConfig(reward=str(reward), data=str(subset), output_dir=str(tmp_path / "subset"),
                                      save_to_checkpoint=True))
    assert carried.read_bytes() == before

    scorer = build_reward({"name": "descore_no_cot", "path": str(model), "device": "cpu"})
    assert scorer.calibration.dimensions == summary.calibration.dimensions
    explicit = str(tmp_path / "subset" / CALIBRATION_FILE)  # written before the refusal above
    chosen = build_reward({"name": "descore_no_cot", "path": str(model), "device": "cpu", "calibration": explicit})
    assert chosen.calibration.dimensions == read_calibration(explicit).dimensions != summary.calibration.dimensions
    assert load(model, cot=True, device="cpu").calibration is None  # computed without CoT: not this mode's stats
    composite = build_reward({"name": "composite", "terms": [
        {"name": "descore_no_cot", "path": str(model), "device": "cpu", "normalize": "zscore", "weight": 2.0}]})
    raw = scorer.score(good[:2], ["prompt 0", "prompt 1"]).rewards.tolist()
    stats = summary.calibration.stats()
    assert [item.reward for item in composite.score(good[:2], ["prompt 0", "prompt 1"]).items] == pytest.approx(
        [2.0 * (value - stats.mean) / stats.std for value in raw], abs=1e-6)

    export = run_export(ExportConfig(model=str(model), output_dir=str(tmp_path / "export")))
    assert (export / CALIBRATION_FILE).read_bytes() == before
    assert load(export, cot=False, device="cpu").calibration.dimensions == summary.calibration.dimensions
    check_reward_entry({"name": "descore_no_cot", "path": str(export), "calibration": str(export / CALIBRATION_FILE)})
    with pytest.raises(ConfigError, match=r"\n  reward\.path: .*ckpt -> .*export\n"):
        check_reward_entry({"name": "descore_no_cot", "path": str(export), "calibration": explicit})
