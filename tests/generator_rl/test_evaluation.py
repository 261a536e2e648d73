"""Held-out evaluation in tiny GRPO and Flow-DPO runs: a reward-hacking run alerts and stops, a clean one does
not, the evaluation logs curves and tables to wandb, resumes without re-sampling its baseline, keeps the best
LoRA, and a finished run pushes final/ to the hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import generator_rl.evaluation as evaluation_module
import generator_rl.grpo as grpo_module
from descore.cli import parse_command
from descore.commands import COMMANDS
from generator_rl.checkpoint import LORA_WEIGHTS
from generator_rl.config import RunConfig
from generator_rl.evaluation import EvalConfig, metric_directions, read_best, summarize
from generator_rl.flow_dpo import FlowDpoConfig, run_flow_dpo
from generator_rl.grpo import GrpoConfig, run_grpo
from generator_rl.guards import STATISTICS
from reward.errors import ConfigError
from reward.run_record import RunMismatchError

from ..wandb_records import history_rows, history_steps
from .helpers import Preempted, dies_on_call, tiny_arguments

# Brightness trained hard (large steps, a wide PPO clip): on the tiny Wan, the held-out brightness rises beyond
# its noise band within three updates (by about 3 standard errors; the tests use bands of 1). "darkness" = minus brightness, a guard that must fall when it rises.
HACKING = {"rewards": ["name=brightness"], "learning_rate": 0.3, "clip_range": 1.0}
DARKNESS = {"name": "composite", "terms": [{"name": "brightness", "weight": -1}], "label": "darkness"}


@pytest.fixture(scope="module")
def eval_prompt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eval-prompts") / "held_out.txt"
    path.write_text("a cat on a sofa\na car at night\n")
    return path


def _evaluations(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]


def test_eval_options_are_checked_and_parsed_with_the_job(eval_prompt_file, tmp_path):
    with pytest.raises(ConfigError, match="eval_prompts is required"):
        EvalConfig(eval_every=2)
    with pytest.raises(ConfigError, match="guards, stop_on_alert need held-out evaluation"):
        EvalConfig(guards=["name=brightness"], stop_on_alert=True)
    with pytest.raises(ConfigError, match="statistics must be distinct names"):
        EvalConfig(eval_every=1, eval_prompts=str(eval_prompt_file), statistics=["sharpness"])
    with pytest.raises(ConfigError, match="guard 'brightness' has weight 2.0"):
        EvalConfig(eval_every=1, eval_prompts=str(eval_prompt_file), guards=["name=brightness,weight=2"])
    with pytest.raises(ConfigError, match="unknown reward model 'brightnes'"):
        EvalConfig(eval_every=1, eval_prompts=str(eval_prompt_file), guards=["name=brightnes"])
    with pytest.raises(ConfigError, match="keep_best_by 'guard/aesthetic' is not a guard"):
        EvalConfig(eval_every=1, eval_prompts=str(eval_prompt_file), keep_best_by="guard/aesthetic")
    with pytest.raises(ConfigError, match="keep_best_by must be reward/total"):
        EvalConfig(eval_every=1, eval_prompts=str(eval_prompt_file), keep_best_by="stat/contrast")
    one = tmp_path / "one.txt"
    one.write_text("a lonely prompt\n")
    with pytest.raises(ConfigError, match="the noise band needs at least two"):
        EvalConfig(eval_every=1, eval_prompts=str(one), eval_seeds=1)
    config = EvalConfig(eval_every=1, eval_prompts=str(eval_prompt_file), keep_best_by="reward/smooth")
    with pytest.raises(ConfigError, match=r"'reward/smooth' is not a training reward; choose one of \['reward/total'"):
        config.check_training_terms(GrpoConfig(rewards=["name=brightness"]).rewards)
    with pytest.raises(ConfigError, match="push_to_hub needs hub_model_id"):
        RunConfig(output_dir=str(tmp_path), prompts=str(one), push_to_hub=True)
    with pytest.raises(ConfigError, match="hub_model_id must be a hub repo id owner/name, got 'no-owner'"):
        RunConfig(output_dir=str(tmp_path), prompts=str(one), push_to_hub=True, hub_model_id="no-owner")

    flags = ["--config", "tiny_grpo", "--output_dir", str(tmp_path / "run"), "--eval_every", "5", "--eval_prompts",
             str(eval_prompt_file), "--guards", "name=brightness", "name=jpeg_compressibility,label=flat",
             "--statistics", "saturation", "--keep_best_by", "guard/flat"]
    *_, parsed = parse_command(COMMANDS[("tune", "grpo")], flags, prog="descore tune grpo")
    assert (parsed.eval_every, parsed.statistics, parsed.keep_best_by) == (5, ["saturation"], "guard/flat")
    assert [term.label for term in parsed.guards] == ["brightness", "flat"]


def test_a_best_folder_the_run_did_not_write_is_never_replaced(tmp_path):
    assert read_best(tmp_path / "best") is None
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "my_lora.safetensors").write_bytes(b"not ours")
    with pytest.raises(RunMismatchError, match="holds no best.json: this run did not write it"):
        read_best(tmp_path / "best")
    (tmp_path / "best" / "best.json").write_text('{"step": 4, "metric": "reward/total", "value": 0.5}')
    assert read_best(tmp_path / "best") == {"step": 4, "metric": "reward/total", "value": 0.5}


def test_a_rising_reward_with_a_falling_guard_alerts_stops_and_keeps_the_best(
    tiny_wan_dir, prompt_file, eval_prompt_file, tmp_path, monkeypatch
):
    """Train on brightness with the guard darkness = -brightness: at the step-3 evaluation the training reward
    rose beyond its band, darkness fell beyond its band -> alert; stop_on_alert ends the run there with a
    checkpoint and final/; the brightness guard itself (clean) is not among the alerts; best/ holds step 3.
    wandb got the held-out curves, the alert and both tables."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # where wandb stages the tables' videos
    run_dir = tmp_path / "run"
    arguments = tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, run_dir, max_steps=4, save_steps=4,
                               report_to="wandb", **HACKING)
    evaluation = EvalConfig(eval_every=3, eval_prompts=str(eval_prompt_file), eval_seeds=2, stop_on_alert=True,
                            guards=[DARKNESS, {"name": "brightness"}], keep_best_by="reward/total", alert_sigma=1.0)
    result = run_grpo(*arguments, evaluation)

    baseline, last = _evaluations(run_dir)
    assert (baseline["step"], baseline["reference"], baseline["alerts"]) == (0, True, [])
    assert last["step"] == 3 and "guard/darkness" in last["alerts"] and "guard/brightness" not in last["alerts"]
    assert last["means"]["reward/total"] > last["bands"]["reward/total"][1]
    assert last["means"]["guard/darkness"] < last["bands"]["guard/darkness"][0]
    assert last["win_rates"]["guard/darkness"] > 0.5 and last["win_rates"]["guard/brightness"] < 0.5
    assert result.stopped is not None and "guard/darkness" in result.stopped and len(result.reward_history) == 3
    assert (run_dir / "checkpoints" / "step_3").is_dir() and (run_dir / "final" / LORA_WEIGHTS).is_file()
    best = json.loads((run_dir / "best" / "best.json").read_text())
    assert best == {"step": 3, "metric": "reward/total", "value": last["means"]["reward/total"]}
    assert (run_dir / "best" / LORA_WEIGHTS).is_file()
    assert sorted(path.name for path in (run_dir / "eval" / "videos" / "step_000003").iterdir()) == [
        "0_0.mp4", "0_1.mp4", "1_0.mp4", "1_1.mp4"]

    # A run guarded by brightness alone (a clean guard for a brightness reward) would not have alerted.
    directions = metric_directions(["brightness"], ["brightness"], [])
    columns = [{label: [video["values"][label] for video in record["videos"]] for label in directions}
               for record in (baseline, last)]
    assert summarize(*columns, directions=directions, sigma=1.0).alerts == []

    (wandb_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    rows = dict(zip(history_steps(wandb_file), history_rows(wandb_file)))
    assert sorted(rows) == [0, 1, 2, 3]
    assert rows[0]["eval/alert"] == 0 and rows[3]["eval/alert"] == 1
    assert rows[3]["eval/reward/total/mean"] == pytest.approx(last["means"]["reward/total"])
    assert rows[3]["eval/win_rate/darkness"] == last["win_rates"]["guard/darkness"]
    assert rows[0]["eval/videos/_type"] == rows[3]["eval/videos/_type"] == "table-file"
    assert all(rows[step]["train/rollouts/nrows"] == 8 for step in (0, 1, 2))  # 2 prompts x group of 4
    files = wandb_file.parent / "files"
    table = json.loads((files / rows[3]["eval/videos/path"]).read_text())
    assert table["columns"] == ["prompt", "seed", "video", *metric_directions(
        ["brightness"], ["darkness", "brightness"], list(STATISTICS))]
    assert [row[:3] for row in table["data"]] == [[video["prompt"], video["seed"], "Video"] for video in last["videos"]]
    assert table["data"][0][3] == pytest.approx(last["videos"][0]["values"]["reward/total"])
    rollouts = json.loads((files / rows[0]["train/rollouts/path"]).read_text())
    assert rollouts["columns"] == ["prompt", "group", "brightness", "total", "advantage", "video"]
    assert [row[-1] for row in rollouts["data"]] == ["Video"] * 4 + [None] * 4  # the first group's videos


def test_flow_dpo_runs_the_same_held_out_evaluation(tiny_wan_dir, eval_prompt_file, tmp_path):
    run_dir = tmp_path / "run"
    arguments = tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, eval_prompt_file, run_dir, max_steps=1,
                               save_steps=1, samples_per_prompt=2, train_batch_size=2)
    run_flow_dpo(*arguments, EvalConfig(eval_every=1, eval_prompts=str(eval_prompt_file), eval_seeds=1,
                                        statistics=["brightness"]))
    reference, trained = _evaluations(run_dir)
    assert (reference["step"], reference["reference"], trained["step"], trained["reference"]) == (0, True, 1, False)
    assert set(trained["means"]) == {"reward/total", "reward/temporal_smoothness", "stat/brightness"}
    assert trained["videos"][0]["values"] != reference["videos"][0]["values"]  # one DPO step moved the policy
    saved = json.loads((run_dir / "eval" / "baseline.json").read_text())
    assert saved["prompts"] == ["a cat on a sofa", "a car at night"] and saved["videos"] == reference["videos"]


def test_push_to_hub_creates_the_repo_and_uploads_final(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    """The hub cannot be reached here: HfApi's two calls record their arguments and what final/ held."""
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **options: calls.append(("create_repo", repo_id, options)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **options: calls.append(
        ("upload_folder", options, sorted(path.name for path in Path(options["folder_path"]).iterdir()))))
    run_dir = tmp_path / "run"
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, run_dir, max_steps=1, save_steps=1,
                             prompts_per_step=1, group_size=2, push_to_hub="true", hub_model_id="me/wan-grpo-lora"))
    assert calls[0] == ("create_repo", "me/wan-grpo-lora", {"repo_type": "model", "private": True, "exist_ok": True})
    name, options, files = calls[1]
    assert name == "upload_folder" and len(calls) == 2
    assert options["repo_id"] == "me/wan-grpo-lora" and Path(options["folder_path"]) == run_dir / "final"
    assert LORA_WEIGHTS in files and "run_config.json" in files


@pytest.mark.slow
def test_resumed_run_reuses_its_baseline_and_logs_each_evaluation_once(
    tiny_wan_dir, prompt_file, eval_prompt_file, tmp_path, monkeypatch
):
    """Killed in step 2 (after its evaluation, checkpoint at step 2 on disk), run again: the baseline is read
    from eval/baseline.json, not sampled again, and eval.jsonl holds steps 0, 2 and 4 once each."""
    references = []
    sample_and_score = evaluation_module.HeldOutEvaluation._sample_and_score

    def recording(self, step, *, reference):
        references.append((step, reference))
        return sample_and_score(self, step, reference=reference)

    monkeypatch.setattr(evaluation_module.HeldOutEvaluation, "_sample_and_score", recording)
    run_dir = tmp_path / "run"
    settings = {"max_steps": 4, "save_steps": 2, "prompts_per_step": 1, "group_size": 2}
    evaluation = EvalConfig(eval_every=2, eval_prompts=str(eval_prompt_file), eval_seeds=1, statistics=["contrast"])
    original = grpo_module.update
    monkeypatch.setattr(grpo_module, "update", dies_on_call(original, 3))
    with pytest.raises(Preempted):
        run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, run_dir, **settings), evaluation)
    assert [record["step"] for record in _evaluations(run_dir)] == [0, 2]
    assert references == [(0, True), (2, False)]
    monkeypatch.setattr(grpo_module, "update", original)
    references.clear()
    result = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, run_dir, **settings),
                      evaluation)
    assert result.resumed_from_step == 2
    assert references == [(2, False), (4, False)]
    assert [record["step"] for record in _evaluations(run_dir)] == [0, 2, 4]


@pytest.mark.slow
def test_a_clean_guard_does_not_alert(tiny_wan_dir, prompt_file, eval_prompt_file, tmp_path):
    """The same brightness training, guarded by brightness itself: the reward rises beyond its band, no alert,
    and stop_on_alert lets the run finish."""
    run_dir = tmp_path / "run"
    arguments = tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, run_dir, max_steps=3, save_steps=3,
                               **HACKING)
    result = run_grpo(*arguments, EvalConfig(eval_every=3, eval_prompts=str(eval_prompt_file), stop_on_alert=True,
                                             guards=["name=brightness"], statistics=[], alert_sigma=1.0))
    evaluations = _evaluations(run_dir)
    assert [record["step"] for record in evaluations] == [0, 3] and all(not r["alerts"] for r in evaluations)
    assert evaluations[1]["means"]["reward/total"] > evaluations[1]["bands"]["reward/total"][1]
    assert result.stopped is None and len(result.reward_history) == 3
