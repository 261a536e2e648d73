"""Run records: the resolved config of a run, the differences a re-run is refused for, output and model checks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reward.errors import ConfigError
from reward.run_record import (
    RUN_CONFIG,
    RunMismatchError,
    check_model_source,
    check_output_directory,
    check_output_file,
    check_same_run,
    config_differences,
    resolved_config,
    write_run_config,
)


@dataclass
class Train:
    data: Path = Path("a.csv")
    lr: float = 1e-4
    steps: int = 10
    layers: list[str] = field(default_factory=lambda: ["q", "k"])


def test_resolved_config_is_plain_json_data():
    assert resolved_config({"train": Train(lr=float("nan"))}) == {
        "train": {"data": "a.csv", "lr": "nan", "steps": 10, "layers": ["q", "k"]}
    }


def test_differences_name_group_field_and_both_values_outside_the_allow_list():
    old = resolved_config({"train": Train()})
    new = resolved_config({"train": Train(data=Path("b.csv"), lr=2e-4, steps=99, layers=["q"])})
    assert config_differences(old, new, allowed={"steps"}) == [
        'train.data: a.csv -> b.csv',
        'train.layers: ["q", "k"] -> ["q"]',
        "train.lr: 0.0001 -> 0.0002",
    ]
    assert config_differences(old, new, allowed={"train.steps", "data", "lr", "layers"}) == []
    assert config_differences({"a": {}}, {"b": {"x": 1}}) == ["b.x: <absent> -> 1"]


def test_same_run_resumes_and_another_is_refused_with_every_difference(tmp_path):
    record = resolved_config({"train": Train()})
    assert check_same_run(tmp_path, "job", record, allowed=()) is False  # nothing recorded yet
    write_run_config(tmp_path, "job", record)
    written = json.loads((tmp_path / RUN_CONFIG).read_text())
    assert written["job"] == "job" and written["config"] == record and "torch" in written["versions"]
    assert check_same_run(tmp_path, "job", resolved_config({"train": Train(steps=50)}), allowed={"steps"}) is True
    with pytest.raises(RunMismatchError) as raised:
        check_same_run(tmp_path, "job", resolved_config({"train": Train(lr=1.0, steps=50)}), allowed={"steps"})
    message = str(raised.value)
    assert "train.lr: 0.0001 -> 1.0" in message and "steps" not in message and "--overwrite_output_dir" in message
    with pytest.raises(RunMismatchError, match="holds a 'job' run, not 'other'"):
        check_same_run(tmp_path, "other", record, allowed=())
    (tmp_path / RUN_CONFIG).write_text("{not json")
    with pytest.raises(ConfigError, match="is not a readable run record"):
        check_same_run(tmp_path, "job", record, allowed=())


def test_model_sources_fail_fast(tmp_path, monkeypatch):
    check_model_source(tmp_path, what="model")  # an existing folder
    check_model_source("Qwen/Qwen3-VL-8B-Instruct", what="model")  # a hub id: not asked about unless ask_hub
    with pytest.raises(ConfigError, match=r"model: runs/nowhere-3b1f/tiny-wan does not exist \(and is not a hub id"):
        check_model_source("runs/nowhere-3b1f/tiny-wan", what="model")
    with pytest.raises(ConfigError, match="does not exist"):
        check_model_source("./local-folder", what="model")
    # No answer (this machine has no route to the hub) or "no such repository": either way one clear error.
    with pytest.raises(ConfigError, match="descore-kit-tests/no-such-model-3b1f is (not a local folder|neither)"):
        check_model_source("descore-kit-tests/no-such-model-3b1f", what="model", ask_hub=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="neither a local folder nor in the hub cache, and HF_HUB_OFFLINE is set"):
        check_model_source("Qwen/Qwen3-VL-8B-Instruct", what="model")


def test_output_targets(tmp_path):
    with pytest.raises(ConfigError, match=f"--output {tmp_path} is a folder; give a file path"):
        check_output_file(tmp_path)
    assert check_output_file(tmp_path / "scores.jsonl") == tmp_path / "scores.jsonl"
    target = tmp_path / "export"
    assert check_output_directory(target, marker="mine.json", overwrite=False) == target  # missing
    target.mkdir()
    check_output_directory(target, marker="mine.json", overwrite=False)  # empty
    (target / "weights.bin").write_bytes(b"someone else's")
    with pytest.raises(ConfigError, match="already holds files this command did not write \\(no mine.json\\)"):
        check_output_directory(target, marker="mine.json", overwrite=False)
    check_output_directory(target, marker="mine.json", overwrite=True)
    (target / "mine.json").write_text("{}")
    check_output_directory(target, marker="mine.json", overwrite=False)  # its own earlier output
    with pytest.raises(ConfigError, match="is a file; give a folder path"):
        check_output_directory(target / "weights.bin", marker="mine.json", overwrite=False)
    assert (target / "weights.bin").read_bytes() == b"someone else's"
