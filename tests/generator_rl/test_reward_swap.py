"""Every reward model of the zoo drops into the tiny GRPO recipe by one YAML entry: the run trains a step,
logs the term to wandb (offline) and to the per-sample rollouts table, and the values are real scores."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from descore.cli import run_cli

from ..wandb_records import history_rows
from .helpers import RECIPES

ZOO = ["videoreward", "vlm_judge", "clip_score", "pickscore", "hpsv2", "aesthetic", "composite"]


@pytest.mark.parametrize("name", ZOO)
def test_grpo_runs_with_each_zoo_reward_swapped_in_by_yaml(name, tiny_zoo, tiny_wan_dir, prompt_file, tmp_path):
    recipe = yaml.safe_load((RECIPES / "tiny_grpo.yaml").read_text())
    label = f"zoo-{name}"
    recipe |= {"model": str(tiny_wan_dir), "prompts": str(prompt_file), "output_dir": str(tmp_path / "run"),
               "max_steps": 1, "save_steps": 1, "sample_steps": 0, "report_to": "wandb",
               "rewards": [{**tiny_zoo[name], "label": label, "weight": 0.5},
                           {"name": "temporal_smoothness", "weight": 1.0}]}
    config = tmp_path / "grpo.yaml"
    config.write_text(yaml.safe_dump(recipe))
    run_cli(["tune", "grpo", "--config", str(config)])

    rollouts = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == recipe["prompts_per_step"] * recipe["group_size"]
    for sample in rollouts:
        term, smooth = sample["terms"][label], sample["terms"]["temporal_smoothness"]
        assert math.isfinite(term) and sample["reward"] == pytest.approx(0.5 * term + smooth, rel=1e-5)
    assert len({sample["terms"][label] for sample in rollouts}) > 1  # the model scored each video, not a constant
    logged = [row for path in (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb") for row in history_rows(path)]
    means = [row[f"reward/{label}/mean"] for row in logged if f"reward/{label}/mean" in row]
    assert means == [pytest.approx(sum(s["terms"][label] for s in rollouts) / len(rollouts), rel=1e-5)]
