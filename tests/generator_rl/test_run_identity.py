"""A generator run knows what it is: a re-run into an existing output folder with another configuration stops
before any model loads and lists the differences, the same configuration resumes, ``overwrite_output_dir``
restarts and removes only what a run writes, append-only logs are cut back to the checkpoint, and a run
that raises closes its tracker."""

from __future__ import annotations

import json
import shutil

import pytest

import generator_rl.grpo as grpo_module
from generator_rl.config import PolicyConfig
from generator_rl.flow_dpo import FlowDpoConfig, run_flow_dpo
from generator_rl.grpo import GrpoConfig, run_grpo
from generator_rl.run import training_run, truncate_log
from reward.errors import DataError
from reward.run_record import RunMismatchError

from .helpers import Preempted, dies_on_call, tiny_arguments

SHORT = {"max_steps": 1, "save_steps": 1}


def _no_model_loads(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the configuration was refused")

    monkeypatch.setattr(PolicyConfig, "load_policy", refuse)


def _steps(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]


def test_grpo_rerun_with_another_reward_or_other_prompts_is_refused(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    shutil.copy(prompt_file, prompts)
    run_dir = tmp_path / "run"
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompts, run_dir, **SHORT))
    recorded = json.loads((run_dir / "run_config.json").read_text())
    assert recorded["job"] == "tune-grpo" and set(recorded["config"]) == {"policy", "run", "grpo"}
    assert recorded["config"]["grpo"]["rewards"] == [{"name": "temporal_smoothness", "weight": 1.0, "label": "temporal_smoothness"}]
    assert json.loads((run_dir / "final" / "run_config.json").read_text())["config"] == recorded["config"]
    before = (run_dir / "rollouts.jsonl").read_bytes()

    _no_model_loads(monkeypatch)
    with pytest.raises(RunMismatchError, match=r"(?s)different configuration.*grpo\.rewards: .*temporal_smoothness.* -> .*brightness"):
        run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompts, run_dir, **SHORT,
                                 rewards=["name=brightness"]))
    prompts.write_text(prompts.read_text() + "a new prompt\n")  # same path, other content
    with pytest.raises(RunMismatchError, match=r"run\.prompts_sha256: [0-9a-f]{64} -> [0-9a-f]{64}") as refused:
        run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompts, run_dir, **SHORT, learning_rate=0.01))
    assert "run.learning_rate: 0.03 -> 0.01" in str(refused.value) and "overwrite_output_dir" in str(refused.value)
    assert (run_dir / "rollouts.jsonl").read_bytes() == before
    assert json.loads((run_dir / "run_config.json").read_text()) == recorded


def test_flow_dpo_rerun_with_other_data_is_refused(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_flow_dpo(*tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompt_file, run_dir, **SHORT))
    assert json.loads((run_dir / "run_config.json").read_text())["job"] == "tune-flow-dpo"
    other = tmp_path / "other.txt"
    other.write_text("a cat on a sofa\na train at night\n")
    _no_model_loads(monkeypatch)
    with pytest.raises(RunMismatchError) as refused:
        run_flow_dpo(*tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, other, run_dir, **SHORT,
                                     rewards=["name=brightness"]))
    message = str(refused.value)
    assert f"run.prompts: {prompt_file} -> {other}" in message and "run.prompts_sha256:" in message
    assert "dpo.rewards:" in message and "brightness" in message
    with pytest.raises(RunMismatchError, match=r"holds a 'tune-flow-dpo' run, not 'tune-grpo'"):
        run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, run_dir, **SHORT))


def test_same_configuration_resumes_and_may_train_longer(tiny_wan_dir, prompt_file, tmp_path):
    run_dir = tmp_path / "run"
    first = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, run_dir, **SHORT))
    again = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, run_dir, **SHORT))
    assert len(first.reward_history) == 1 and again.reward_history == []  # finished: nothing to train
    longer = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, run_dir,
                                      max_steps=2, save_steps=1, logging_steps=2))
    assert len(longer.reward_history) == 1
    assert _steps(run_dir) == [0] * 8 + [1] * 8
    assert json.loads((run_dir / "run_config.json").read_text())["config"]["run"]["max_steps"] == 2


def test_overwrite_restarts_and_keeps_files_no_run_wrote(tiny_wan_dir, prompt_file, tmp_path):
    run_dir = tmp_path / "run"
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, run_dir, max_steps=2, save_steps=1))
    (run_dir / "notes.txt").write_text("mine")
    (run_dir / "data").mkdir()
    (run_dir / "data" / "clip.mp4").write_bytes(b"not a run output")
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, run_dir, **SHORT,
                             rewards=["name=brightness"], overwrite_output_dir="true"))
    assert (run_dir / "notes.txt").read_text() == "mine" and (run_dir / "data" / "clip.mp4").read_bytes() == b"not a run output"
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["step_1"]  # step_2 was the old run's
    records = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(set(record["terms"]) == {"brightness"} for record in records)


def test_outputs_without_a_run_record_are_refused(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    (tmp_path / "run" / "checkpoints" / "step_3").mkdir(parents=True)
    _no_model_loads(monkeypatch)
    with pytest.raises(RunMismatchError, match=r"holds checkpoints of a run without run_config\.json"):
        run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run", **SHORT))


def test_resumed_grpo_logs_every_step_once(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    """Killed after step 2 was logged but before its checkpoint (the newest is step_2, i.e. after step 1): the
    resumed run trains step 2 again, and rollouts.jsonl equals the uninterrupted run's, line for line."""
    settings = {"max_steps": 3, "save_steps": 2}
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "a", **settings))
    original = grpo_module.save_checkpoint
    monkeypatch.setattr(grpo_module, "save_checkpoint", dies_on_call(original, 2))
    with pytest.raises(Preempted):
        run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "b", **settings))
    assert _steps(tmp_path / "b") == [0] * 8 + [1] * 8 + [2] * 8
    monkeypatch.setattr(grpo_module, "save_checkpoint", original)
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "b", **settings))
    assert (tmp_path / "b" / "rollouts.jsonl").read_text() == (tmp_path / "a" / "rollouts.jsonl").read_text()


def test_truncate_log_keeps_earlier_steps_and_drops_a_torn_line(tmp_path):
    log = tmp_path / "rollouts.jsonl"
    log.write_text('{"step": 0, "x": 1}\n{"step": 1}\n{"step": 2}\n{"step": 1, "late": true}\n{"step": 3, "cut')
    assert truncate_log(log, before_step=2) == 2
    assert log.read_text() == '{"step": 0, "x": 1}\n{"step": 1}\n{"step": 1, "late": true}\n'
    assert truncate_log(log, before_step=2) == 0 and truncate_log(tmp_path / "absent.jsonl", before_step=0) == 0
    log.write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(DataError, match=r"rollouts\.jsonl:2: not a JSON record with a 'step'"):
        truncate_log(log, before_step=1)
    assert log.read_text() == '{"step": 0}\nnot json\n{"step": 1}\n'


def test_a_run_that_raises_closes_its_tracker(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    """The next run in the same process then logs to a wandb run of its own, from step 0."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    policy, run, grpo = tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "crashed",
                                       **SHORT, report_to="wandb")
    with pytest.raises(Preempted):
        with training_run(policy, run, grpo.rewards, job="tune-grpo", project="descore-grpo",
                          config={"policy": policy, "run": run, "grpo": grpo}) as started:
            assert wandb.run is not None and started.state.step == 0
            started.accelerator.log({"loss": 1.0}, step=0)
            raise Preempted("the loop failed")
    assert wandb.run is None
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "next", **SHORT,
                             report_to="wandb"))
    assert list((tmp_path / "next" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert wandb.run is None
