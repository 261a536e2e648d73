"""Stage-1 runs know what they are: bad values and missing inputs stop before any model loads, a re-run with
another configuration is refused with the differences, overwrite restarts and removes only the run's own files,
and the wandb run is closed when training ends."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
import torch
import wandb
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback

from reward.cold_start import last_complete_checkpoint, run
from reward.errors import ConfigError
from reward.run_record import RunMismatchError

from ..planted import Planted
from ..wandb_records import history_rows
from .helpers import tiny_config

ONE_STEP = {"max_steps": 1, "eval_strategy": "no", "save_strategy": "no", "merge_final": "false"}


class ModelLoaded(AssertionError):
    pass


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any attempt to load a backbone or processor fails the test."""

    def refuse(*args, **kwargs):
        raise ModelLoaded("a model was loaded")

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", refuse)
    monkeypatch.setattr(AutoProcessor, "from_pretrained", refuse)


BAD_VALUES = [
    ({"learning_rate": 0}, "learning_rate must be a finite number > 0, got 0.0"),
    ({"learning_rate": -0.5}, "learning_rate must be a finite number > 0, got -0.5"),
    ({"learning_rate": "nan"}, "learning_rate must be a finite number > 0, got nan"),
    ({"max_grad_norm": -1}, "max_grad_norm must be >= 0 (0 turns clipping off), got -1.0"),
    ({"lora_rank": 0}, "lora_rank must be >= 1, got 0"),
    ({"lora_alpha": 0}, "lora_alpha must be > 0, got 0"),
    ({"lora_dropout": 1.0}, "lora_dropout must lie in [0, 1), got 1.0"),
    ({"cot_drop_prob": 1.5}, "cot_drop_prob must lie in [0, 1], got 1.5"),
    ({"loss": "bt_ties", "tie_k": 1}, "tie_k must be > 1 for loss: bt_ties, got 1.0"),
    ({"num_train_epochs": 0}, "num_train_epochs (0.0) and max_steps (-1) would train 0 steps"),
    ({"video_fps": 0}, "video_fps must be > 0, got 0.0"),
    ({"video_min_frames": 0}, "need 1 <= video_min_frames <= video_max_frames, got 0 and 8"),
    ({"video_min_frames": 9}, "need 1 <= video_min_frames <= video_max_frames, got 9 and 8"),
    ({"video_min_pixels": 8192}, "need 0 < video_min_pixels <= video_max_pixels, got 8192 and 4096"),
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size must be >= 1, got 0"),
    ({"effective_batch_size": 128}, "64 usable pair(s), fewer than one optimizer step takes (128 ="),
    ({"train_data": "{tmp}/missing.csv"}, "train_data: {tmp}/missing.csv does not exist"),
    ({"eval_data": "{tmp}/missing.csv"}, "eval_data: {tmp}/missing.csv does not exist"),
    ({"model_name_or_path": "runs/nowhere-3b1f/x"}, "model_name_or_path: runs/nowhere-3b1f/x does not exist"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_VALUES, ids=[next(iter(o)) + str(i) for i, (o, _) in enumerate(BAD_VALUES)])
def test_bad_values_are_refused_before_any_model_loads(
    tiny_qwen3_vl_dir, visual_pairs, tmp_path, no_model_loads, overrides, message
):
    train, _ = visual_pairs
    overrides = {key: str(value).format(tmp=tmp_path) for key, value in overrides.items()}
    with pytest.raises(ConfigError) as error:
        run(tiny_config(tiny_qwen3_vl_dir, train, tmp_path / "run", **{"num_train_epochs": 1, **overrides}))
    assert message.format(tmp=tmp_path) in str(error.value)
    assert not (tmp_path / "run").exists()  # nothing written either


def test_rerun_with_another_configuration_is_refused_and_an_allowed_change_resumes(
    tiny_qwen3_vl_dir, visual_pairs, tmp_path, monkeypatch
):
    train, _ = visual_pairs
    data = tmp_path / "train.csv"
    data.write_text(train.read_text().replace("videos/", f"{train.parent}/videos/"))
    run(tiny_config(tiny_qwen3_vl_dir, data, tmp_path / "run", **ONE_STEP))
    for folder in (tmp_path / "run", tmp_path / "run" / "final"):
        record = json.loads((folder / "run_config.json").read_text())
        assert record["job"] == "reward-train" and record["config"]["config"]["learning_rate"] == 0.001
        assert record["config"]["data_sha256"]["train_data"] == hashlib.sha256(data.read_bytes()).hexdigest()
        assert record["versions"]["transformers"]

    def refuse(*args, **kwargs):
        raise ModelLoaded("a model was loaded")

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", refuse)
    with pytest.raises(RunMismatchError, match=r"config\.learning_rate: 0\.001 -> 0\.002\n.*--overwrite_output_dir") as error:
        run(tiny_config(tiny_qwen3_vl_dir, data, tmp_path / "run", **{**ONE_STEP, "learning_rate": 0.002}))
    assert "config.lora_rank" not in str(error.value)
    with pytest.raises(RunMismatchError, match=r"config\.loss: bt -> bt_ties"):
        run(tiny_config(tiny_qwen3_vl_dir, data, tmp_path / "run", **{**ONE_STEP, "loss": "bt_ties"}))
    # same path, other content
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(RunMismatchError, match=r"data_sha256\.train_data: [0-9a-f]{64} -> [0-9a-f]{64}"):
        run(tiny_config(tiny_qwen3_vl_dir, data, tmp_path / "run", **ONE_STEP))
    data.write_text(train.read_text().replace("videos/", f"{train.parent}/videos/"))
    # allowed: train longer, log differently -> the check passes and loading starts
    with pytest.raises(ModelLoaded):
        run(tiny_config(tiny_qwen3_vl_dir, data, tmp_path / "run", **{**ONE_STEP, "max_steps": 5, "logging_steps": 1}))


def test_overwrite_restarts_and_removes_only_what_stage1_wrote(tiny_qwen3_vl_dir, visual_pairs, tmp_path):
    train, _ = visual_pairs
    output = tmp_path / "run"
    run(tiny_config(tiny_qwen3_vl_dir, train, output, **{**ONE_STEP, "save_strategy": "steps", "save_steps": 1}))
    assert (output / "checkpoint-1" / "trainer_state.json").is_file()
    (output / "notes.txt").write_text("mine")
    (output / "data").mkdir()
    (output / "data" / "pairs.csv").write_text("mine too")
    run(tiny_config(tiny_qwen3_vl_dir, train, output, **{**ONE_STEP, "learning_rate": 0.002, "overwrite_output_dir": "true"}))
    assert sorted(path.name for path in output.iterdir()) == ["data", "final", "notes.txt", "run_config.json"]
    assert (output / "notes.txt").read_text() == "mine" and (output / "data" / "pairs.csv").read_text() == "mine too"
    assert json.loads((output / "run_config.json").read_text())["config"]["config"]["learning_rate"] == 0.002


def test_checkpoints_without_a_run_record_are_not_resumed(tiny_qwen3_vl_dir, visual_pairs, tmp_path, no_model_loads):
    train, _ = visual_pairs
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint-3" / "trainer_state.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"holds checkpoints but no run_config\.json"):
        run(tiny_config(tiny_qwen3_vl_dir, train, tmp_path / "run", **ONE_STEP))


class _FailAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"killed at step {self.step}")


def test_each_run_closes_its_wandb_run_with_every_step_logged(tiny_qwen3_vl_dir, visual_pairs, tmp_path, monkeypatch):
    """Two runs in one process (as in the demo), the second failing at step 2: each has its own offline run
    next to its outputs, holding all of its steps, and no run is left open."""
    train, _ = visual_pairs
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    settings = {**ONE_STEP, "max_steps": 3, "logging_steps": 1, "report_to": "wandb", "save_strategy": "steps", "save_steps": 3}
    wandb.teardown()  # settings an earlier test may have left in this process
    previous = os.umask(0o022)
    try:
        monkeypatch.setenv("WANDB_DIR", str(tmp_path / "first"))
        run(tiny_config(tiny_qwen3_vl_dir, train, tmp_path / "first", **settings))
    finally:
        os.umask(previous)
    assert wandb.run is None
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "second"))
    with pytest.raises(RuntimeError, match="killed at step 2"):
        run(tiny_config(tiny_qwen3_vl_dir, train, tmp_path / "second", **settings), callbacks=[_FailAt(2)])
    assert wandb.run is None
    for name, expected in (("first", [1, 2, 3]), ("second", [1])):  # the second died during step 2
        (run_file,) = (tmp_path / name / "wandb").glob("offline-run-*/run-*.wandb")
        assert sorted({row["train/global_step"] for row in history_rows(run_file) if "train/global_step" in row}) == expected
    # the Trainer's checkpoint folders and our final/ get normal permissions
    for path in [tmp_path / "first" / "checkpoint-3", *(tmp_path / "first" / "checkpoint-3").iterdir(),
                 tmp_path / "first" / "final", *(tmp_path / "first" / "final").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


def test_a_planted_pickle_in_the_trainer_state_is_not_executed(tiny_qwen3_vl_dir, visual_pairs, tmp_path):
    """The Trainer's optimizer, scheduler and RNG files are read with torch.load(weights_only=True): a pickle
    planted in their place stops the resume with an error and is never run."""
    train, _ = visual_pairs
    run(tiny_config(tiny_qwen3_vl_dir, train, tmp_path / "run", **{**ONE_STEP, "save_strategy": "steps", "save_steps": 1}))
    checkpoint = last_complete_checkpoint(tmp_path / "run")
    marker = tmp_path / "executed"
    planted = [name for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth") if (checkpoint / name).is_file()]
    assert planted == ["optimizer.pt", "scheduler.pt", "rng_state.pth"]
    for name in planted:
        torch.save(Planted(marker), checkpoint / name)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        run(tiny_config(tiny_qwen3_vl_dir, train, tmp_path / "run", **{**ONE_STEP, "max_steps": 2}))
    assert not marker.exists()
