"""`descore bench ablate` on the tiny Wan: two sanity rewards, a few GRPO steps each with the same recipe, one
comparison with the cross-evaluation matrix; a re-run skips the finished runs and writes the same report. The
matrix marks the training reward and the reward-hacking flags of a constructed case; bad settings are refused
before anything trains."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from trl import TrlParser

import benchmarks.ablate as ablate_module
from benchmarks.ablate import AblateConfig, parse_recipe, run_ablate, sampling_policy, training_plans
from benchmarks.compare import CompareConfig, merged_rewards, summarise
from benchmarks.report import HACKED_MARK, TRAINED_MARK, ablation_blocks, to_markdown
from descore.cli import main
from generator_rl.checkpoint import LORA_WEIGHTS
from generator_rl.config import PolicyConfig, RunConfig
from generator_rl.grpo import GrpoConfig
from generator_rl.rewards import RewardTerm
from reward.errors import ConfigError
from reward.run_record import RunMismatchError

from ..conftest import REPO_ROOT

RECIPES = REPO_ROOT / "configs" / "bench"


def test_tiny_ablation_trains_compares_and_skips_finished_runs(tmp_path, monkeypatch, one_thread):
    """Two rewards x two trainers (tiny_grpo, tiny_flow_dpo), two steps each, then one comparison of all; three
    prompts for training and comparison keep it short."""
    prompts, output = tmp_path / "prompts.txt", tmp_path / "ablation"
    prompts.write_text("a red square moving left\na blue ball bouncing\nwaves in slow motion\n")
    overrides = ["max_steps=2", "num_steps=2", "guidance_scale=1.0", "save_steps=1", "sample_steps=0", "report_to=none",
                 f"prompts={prompts}"]
    argv = ["bench", "ablate", "--config", "tiny_ablate", "--train_overrides", *overrides, "--prompts", str(prompts),
            "--output_dir", str(output)]
    assert main(argv) == 0
    trained_on = {"grpo-smooth": "smooth", "grpo-bright": "bright", "flow-dpo-smooth": "smooth", "flow-dpo-bright": "bright"}
    names = {"smooth": "temporal_smoothness", "bright": "brightness"}
    for run, reward in trained_on.items():
        record = json.loads((output / "runs" / run / "final" / "run_config.json").read_text())["config"]
        assert (output / "runs" / run / "final" / LORA_WEIGHTS).is_file() and record["run"]["max_steps"] == 2
        algorithm = record["grpo" if run.startswith("grpo") else "dpo"]
        assert [term["name"] for term in algorithm["rewards"]] == [names[reward]]  # only the reward differs
    report = json.loads((output / "report.json").read_text())
    assert report["metrics"] == ["jpeg", "smooth", "bright"]  # held-out rewards, then every training reward
    assert report["ablation"]["trained_on"] == trained_on
    for model, trained in trained_on.items():
        deltas = report["deltas"][model]
        expected = [metric for metric in report["metrics"] if metric != trained and deltas[metric]["high"] < 0] \
            if deltas[trained]["low"] > 0 else []
        assert report["ablation"]["reward_hacking"][model] == expected
    markdown = (output / "report.md").read_text()
    matrix = markdown.split("## Cross-evaluation matrix")[1].split("## Reward hacking")[0]
    assert "| model | jpeg | smooth | bright |" in matrix
    assert "| flow-dpo-smooth (trained on smooth) |" in matrix
    assert f"{TRAINED_MARK} {_delta(report, 'grpo-bright', 'bright')}" in matrix
    before = {name: (output / name).read_text() for name in ("report.md", "report.json")}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    for trainer, (config, _, job, group) in list(ablate_module.TRAINERS.items()):
        monkeypatch.setitem(ablate_module.TRAINERS, trainer, (config, no_training, job, group))
    assert main(argv) == 0
    assert {name: (output / name).read_text() for name in before} == before

    # A longer budget is not finished: the first run resumes (here: would train again).
    with pytest.raises(AssertionError, match="a finished run was trained again"):
        main([*argv, "--train_overrides", "max_steps=3", *overrides[1:]])


def _delta(report: dict, model: str, metric: str) -> str:
    delta = report["deltas"][model][metric]
    return f"{delta['mean']:+.4g} [{delta['low']:+.4g}, {delta['high']:+.4g}]"


def test_the_matrix_flags_a_constructed_hacking_case(tmp_path):
    """Per-prompt values made up so that the model trained on `a` gains on `a` and loses on the held-out `b`
    everywhere, while the model trained on `b` gains on `b` and leaves `a` unchanged up to noise."""
    generator = np.random.default_rng(0)
    base = {metric: generator.normal(size=(12, 2)) for metric in ("a", "b")}
    noise = lambda: 0.01 * generator.normal(size=(12, 2))  # noqa: E731
    values = {"base": base,
              "trained-a": {"a": base["a"] + 1 + noise(), "b": base["b"] - 1 + noise()},
              "trained-b": {"a": base["a"] + noise() - noise(), "b": base["b"] + 1 + noise()}}
    compare = CompareConfig(prompts="tiny:prompts", output_dir=str(tmp_path), rewards=[{"name": "brightness"}],
                            vbench_dimensions=[], bootstrap_resamples=1000)
    comparison = summarise(values, models=list(values), metrics=["a", "b"], compare=compare,
                           trained_on={"trained-a": "a", "trained-b": "b"})
    assert comparison.hacking == {"trained-a": ["b"], "trained-b": []}
    text = to_markdown(ablation_blocks(comparison))
    row_a = next(line for line in text.splitlines() if line.startswith("| trained-a"))
    row_b = next(line for line in text.splitlines() if line.startswith("| trained-b"))
    assert row_a.count(TRAINED_MARK) == 1 and row_a.count(HACKED_MARK) == 1 and HACKED_MARK not in row_b
    assert f"{HACKED_MARK} trained-a: trained on a" in text and "No model is flagged" not in text


# ----- settings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    ({"train_rewards": None}, "--train_rewards is required"),
    ({"train_rewards": [{"name": "brightness", "weight": 0.5}]}, "put a weighted mix in a `composite` entry"),
    ({"train_rewards": [{"name": "brightness"}, {"name": "brightness"}]}, "train reward label(s) brightness given twice"),
    ({"trainers": ["ppo"]}, "--trainers must name one or more of grpo, flow-dpo"),
    ({"trainers": ["flow-dpo"]}, "trainer flow-dpo needs --flow_dpo_recipe"),
    ({"train_overrides": ["max_steps"]}, "expected key=value"),
    ({"train_overrides": ["rewards=x"]}, "cannot set rewards"),
])
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError) as raised:
        AblateConfig(**{"train_rewards": [{"name": "brightness"}], "grpo_recipe": "tiny_grpo"} | overrides)
    assert message in str(raised.value)


def test_a_missing_recipe_and_an_unknown_override_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shipped recipe of that name"):
        AblateConfig(train_rewards=[{"name": "brightness"}], grpo_recipe="tiny_grpoo")
    ablate = AblateConfig(train_rewards=[{"name": "brightness"}], grpo_recipe="tiny_grpo", train_overrides=["max_stepz=3"])
    with pytest.raises(ConfigError, match="max_stepz"):
        training_plans(ablate, tmp_path)


def test_loras_are_the_ablations_own(tmp_path):
    compare = CompareConfig(prompts="tiny:prompts", output_dir=str(tmp_path), rewards=[{"name": "brightness"}],
                            vbench_dimensions=[], loras=[str(tmp_path)])
    with pytest.raises(ConfigError, match="--loras / --labels are set by the ablation"):
        run_ablate(AblateConfig(train_rewards=[{"name": "brightness"}], grpo_recipe="tiny_grpo"), compare)


def test_recipes_that_sample_differently_are_refused(tmp_path):
    """GRPO and Flow-DPO recipes must share the sampling settings, or their LoRAs are not compared alike."""
    recipe = yaml.safe_load((REPO_ROOT / "configs" / "generator" / "tiny_flow_dpo.yaml").read_text())
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(recipe | {"num_steps": 4}))
    ablate = AblateConfig(train_rewards=[{"name": "brightness"}], trainers=["grpo", "flow-dpo"], grpo_recipe="tiny_grpo",
                          flow_dpo_recipe=str(tmp_path / "dpo.yaml"))
    plans = training_plans(ablate, tmp_path / "runs")
    assert [plan.name for plan in plans] == ["grpo-brightness", "flow-dpo-brightness"]
    assert plans[1].run.output_dir == str(tmp_path / "runs" / "flow-dpo-brightness")
    with pytest.raises(ConfigError, match=r"num_steps: 6 \(grpo\) vs 4 \(flow-dpo\)"):
        sampling_policy(plans)


def test_a_run_folder_of_another_configuration_is_refused(tmp_path):
    """A finished run is recognised by its record; a run folder recording other settings is not overwritten."""
    ablate = AblateConfig(train_rewards=[{"name": "brightness"}], grpo_recipe="tiny_grpo")
    (plan,) = training_plans(ablate, tmp_path)
    other = dataclasses.replace(plan, run=dataclasses.replace(plan.run, learning_rate=0.5))
    Path(plan.run.output_dir).mkdir(parents=True)
    from generator_rl.run import run_record
    from reward.run_record import write_run_config

    write_run_config(plan.run.output_dir, "tune-grpo",
                     run_record({"policy": other.policy, "run": other.run, "grpo": other.algorithm}, prompts=plan.run.prompts))
    with pytest.raises(RunMismatchError, match=r"run.learning_rate: 0.5 -> 0.03"):
        ablate_module.is_finished(plan)


def test_the_shipped_recipes_load(tmp_path):
    ablate, compare = TrlParser([AblateConfig, CompareConfig]).parse_args_and_config(
        ["--config", str(RECIPES / "tiny_ablate.yaml"), "--output_dir", str(tmp_path)])
    assert [term.label for term in ablate.train_rewards] == ["smooth", "bright"] and compare.loras is None
    policy, run, _ = parse_recipe(ablate.grpo_recipe, [PolicyConfig, RunConfig, GrpoConfig],
                                  overrides=ablate.train_overrides)
    assert run.max_steps == 2 and policy.num_steps == 2
    weights = tmp_path / "weights"
    weights.mkdir()
    full_info = tmp_path / "VBench_full_info.json"
    full_info.write_text(json.dumps([{"prompt_en": "a cat", "dimension": ["subject_consistency"]}]))
    ablate, compare = TrlParser([AblateConfig, CompareConfig]).parse_args_and_config(
        ["--config", str(RECIPES / "ablate_rewards.yaml"), "--output_dir", str(tmp_path), "--train_rewards",
         "name=brightness", "name=temporal_smoothness", "--vbench_weights", str(weights), "--vbench_prompts",
         str(full_info)])
    values = yaml.safe_load((RECIPES / "ablate_rewards.yaml").read_text())
    assert ablate.trainers == values["trainers"] and ablate.train_overrides == values["train_overrides"]
    assert compare.vbench_dimensions == values["vbench_dimensions"] and compare.rewards == []


def test_a_label_may_not_name_two_rewards():
    held_out, trained = RewardTerm({"name": "brightness", "label": "r"}), RewardTerm({"name": "temporal_smoothness", "label": "r"})
    with pytest.raises(ConfigError, match="reward label r names two entries"):
        merged_rewards([held_out], [trained])
    assert merged_rewards([held_out], [RewardTerm({"name": "brightness", "label": "r"})]) == [held_out]
