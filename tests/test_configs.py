"""Every recipe in configs/ loads into its dataclass through the CLI parser; accelerate configs are valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from trl import TrlParser

from descore.cli import run_cli
from reward.cold_start import ColdStartConfig
from reward.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Stage-1 recipes (stage 2 ones load in tests/reward/test_dual_rl_config.py).
REWARD_RECIPES = sorted(path for path in (CONFIGS / "reward").glob("*.yaml") if "stage: dual_rl" not in path.read_text())


@pytest.mark.parametrize("recipe", REWARD_RECIPES, ids=[path.stem for path in REWARD_RECIPES])
def test_reward_recipes_load(recipe, tmp_path):
    values = yaml.safe_load(recipe.read_text())
    needs_cpu = [] if values.get("use_cpu") else ["--use_cpu", "true", "--bf16", "false"]  # no GPU here
    (config,) = TrlParser([ColdStartConfig]).parse_args_and_config(
        ["--config", str(recipe), "--train_data", "t.csv", "--output_dir", str(tmp_path), *needs_cpu]
    )
    assert config.lora_rank == values["lora_rank"] and config.learning_rate == values["learning_rate"]
    assert config.gradient_accumulation_steps * config.per_device_train_batch_size == config.effective_batch_size


def test_paper_recipe_matches_descore_stage1(tmp_path):
    (config,) = TrlParser([ColdStartConfig]).parse_args_and_config([
        "--config", str(CONFIGS / "reward" / "cold_start_qwen3vl_8b.yaml"),
        "--train_data", "t.csv", "--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false",
    ])
    assert (config.lora_rank, config.lora_alpha, config.lora_dropout) == (64, 128, 0.05)
    assert config.learning_rate == 2e-6 and config.lr_scheduler_type == "constant_with_warmup"
    assert config.warmup_steps == 0.05 and config.num_train_epochs == 2 and config.cot_drop_prob == 0.5
    assert config.effective_batch_size == 32 and config.loss == "bt" and config.full_train_modules == ["visual"]
    spec = config.video_spec(32)
    assert (spec.fps, spec.max_pixels, spec.min_pixels) == (2.0, 200_704, 131_072)


def test_unknown_yaml_key_fails_before_anything_runs(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("lora_r: 8\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown option\(s\): lora_r \(renamed: did you mean lora_rank\?\)"):
        run_cli(["reward", "train", "--config", str(recipe)])


def test_indivisible_effective_batch_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"effective_batch_size \(10\) must be divisible by .* = 4"):
        ColdStartConfig(output_dir=str(tmp_path), train_data="t.csv", effective_batch_size=10,
                        per_device_train_batch_size=4, use_cpu=True, bf16=False)


@pytest.mark.parametrize("recipe", sorted((CONFIGS / "accelerate").glob("*.yaml")), ids=lambda path: path.stem)
def test_accelerate_configs_are_valid(recipe):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(recipe))
    assert config.num_processes >= 8 and config.mixed_precision == "bf16"


GENERATOR_RECIPES = sorted((CONFIGS / "generator").glob("*.yaml"))


def _generator_inputs(recipe: Path, folder: Path) -> list[str]:
    """The prompt file a real-scale recipe leaves to the user (a tiny recipe names its own: tiny:prompts)."""
    if recipe.stem.startswith("tiny"):
        return []
    prompts = folder / "p.txt"
    prompts.write_text("a prompt\n")
    return ["--prompts", str(prompts)]


@pytest.mark.parametrize("recipe", GENERATOR_RECIPES, ids=[path.stem for path in GENERATOR_RECIPES])
def test_generator_recipes_load(recipe, tmp_path):
    from generator_rl.config import PolicyConfig, RunConfig
    from generator_rl.flow_dpo import FlowDpoConfig
    from generator_rl.grpo import GrpoConfig

    algorithm = GrpoConfig if "grpo" in recipe.stem else FlowDpoConfig
    policy, run, arguments = TrlParser([PolicyConfig, RunConfig, algorithm]).parse_args_and_config(
        ["--config", str(recipe), *_generator_inputs(recipe, tmp_path)]
    )
    values = yaml.safe_load(recipe.read_text())
    assert [term.to_dict()["name"] for term in arguments.rewards] == [entry["name"] for entry in values["rewards"]]
    assert policy.num_steps == values["num_steps"] and run.learning_rate == values["learning_rate"]


def test_wan_recipes_follow_the_reference_defaults(tmp_path):
    from generator_rl.config import PolicyConfig, RunConfig
    from generator_rl.grpo import GrpoConfig

    recipe = CONFIGS / "generator" / "grpo_wan1.3b.yaml"
    policy, run, grpo = TrlParser([PolicyConfig, RunConfig, GrpoConfig]).parse_args_and_config(
        ["--config", str(recipe), *_generator_inputs(recipe, tmp_path)]
    )
    assert (policy.num_steps, policy.guidance_scale, grpo.sde, grpo.noise_level) == (20, 4.5, "flow_sde_wan", None)
    assert (grpo.group_size, grpo.clip_range, grpo.beta, grpo.adv_clip_max) == (4, 1e-3, 0.004, 5.0)
    assert (policy.lora_rank, policy.lora_alpha) == (32, 64) and "ffn.net.0.proj" in policy.lora_target_modules
