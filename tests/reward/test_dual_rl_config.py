"""Stage-2 settings: the shipped recipes through the CLI parser, `reward train` dispatching on `stage`,
refused values."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from descore.cli import parse_command, selected_command
from descore.commands import COMMANDS
from reward.cold_start import ColdStartConfig
from reward.dual_rl_config import DualRlConfig
from reward.errors import ConfigError

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "reward"
TRAIN = COMMANDS[("reward", "train")]


def _parse(argv: list[str]) -> tuple:
    return parse_command(selected_command(TRAIN, argv), argv, prog="descore reward train")


def test_official_recipe_holds_the_stage2_settings(tmp_path):
    (config,) = _parse(["--config", str(RECIPES / "dual_rl_qwen3vl_8b.yaml"), "--train_data", "rl.csv",
                        "--output_dir", str(tmp_path)])
    assert isinstance(config, DualRlConfig) and config.stage == "dual_rl"
    assert (config.pairs_per_step, config.pairs_per_update, config.num_generations) == (128, 4, 8)
    assert config.pairs_per_step // config.pairs_per_update == 32  # optimizer updates per rollout step
    assert (config.temperature, config.top_p, config.max_new_tokens) == (1.0, 1.0, 4096)
    assert (config.clip_low, config.clip_high, config.dual_clip, config.ppo_epochs) == (0.2, 0.3, 3.0, 1)
    assert (config.kl_coef, config.bt_weight, config.weight_decay) == (1e-5, 5e-3, 0.01)
    # LoRA at 1e-5 (the unsharded loop cannot hold full-LLM AdamW state at 8B), the head at the official 1e-6
    assert (config.adaptation, config.lora_rank, config.lora_alpha) == ("lora", 64, 128)
    assert (config.learning_rate, config.head_learning_rate) == (1e-5, 1e-6)
    assert (config.max_grad_norm, config.max_steps) == (1.0, 65)
    assert (config.quality_weight, config.format_weight, config.length_weight) == (0.7, 0.1, 0.2)
    assert (config.length_form, config.length_min, config.length_max) == ("official_chars", 500, 2000)
    spec = config.video_spec(32)
    assert (spec.fps, spec.max_pixels, spec.min_pixels) == (2.0, 307_200, 3_136)
    settings = config.rollout_settings()
    assert (settings.temperature, settings.top_k, settings.repetition_penalty) == (1.0, 0, 1.0)


def test_dataclass_defaults_are_the_official_recipe(tmp_path):
    defaults = DualRlConfig(train_data="rl.csv", model_name_or_path="ckpt", output_dir=str(tmp_path))
    (recipe,) = _parse(["--config", str(RECIPES / "dual_rl_qwen3vl_8b.yaml"), "--train_data", "rl.csv",
                        "--model_name_or_path", "ckpt", "--output_dir", str(tmp_path)])
    # the recipe names the attention kernel and trains LoRA; otherwise the defaults are the official run's
    official = replace(recipe, attn_implementation=None, adaptation="full", learning_rate=1e-6, head_learning_rate=None)
    assert official == defaults


def test_tiny_recipe_loads_and_flags_override_it(tmp_path):
    (config,) = _parse(["--config", str(RECIPES / "tiny_dual_rl.yaml"), "--train_data", "rl.csv",
                        "--output_dir", str(tmp_path), "--num_generations", "2"])
    assert config.num_generations == 2 and config.length_form == "paper_tokens" and config.max_new_tokens == 8


def test_stage_flag_picks_stage2_and_no_stage_keeps_stage1(tmp_path):
    (stage2,) = _parse(["--stage", "dual_rl", "--train_data", "rl.csv", "--model_name_or_path", "ckpt",
                        "--output_dir", str(tmp_path)])
    assert isinstance(stage2, DualRlConfig)
    (stage1,) = _parse(["--config", str(RECIPES / "tiny_cold_start.yaml"), "--train_data", "t.csv",
                        "--output_dir", str(tmp_path)])
    assert isinstance(stage1, ColdStartConfig) and stage1.stage == "cold_start"


def test_unknown_stage_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"stage must be one of \['cold_start', 'dual_rl'\], got 'dual'"):
        _parse(["--stage", "dual", "--train_data", "t.csv", "--output_dir", str(tmp_path)])


def test_stage1_keys_in_a_stage2_recipe_are_unknown(tmp_path):
    recipe = tmp_path / "mixed.yaml"
    recipe.write_text("stage: dual_rl\ncot_drop_prob: 0.5\n")
    with pytest.raises(ConfigError, match=r"unknown option\(s\): cot_drop_prob"):
        _parse(["--config", str(recipe), "--train_data", "rl.csv", "--output_dir", str(tmp_path)])


@pytest.mark.parametrize(("overrides", "message"), [
    ({"pairs_per_update": 3}, r"pairs_per_step \(128\) must be a multiple of pairs_per_update \(3\)"),
    ({"num_generations": 1}, r"num_generations must be >= 2"),
    ({"temperature": 0.0}, r"temperature must be > 0"),
    ({"dual_clip": 1.0}, r"dual_clip must be > 1 or null"),
    ({"length_form": "words"}, r"length_form must be one of \('official_chars', 'paper_tokens'\)"),
])
def test_bad_values_name_the_field(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        DualRlConfig(train_data="rl.csv", model_name_or_path="ckpt", output_dir=str(tmp_path), **overrides)


def test_required_fields(tmp_path):
    with pytest.raises(ConfigError, match="model_name_or_path is required"):
        DualRlConfig(train_data="rl.csv", output_dir=str(tmp_path))


def test_vllm_rollouts_are_colocated_with_room_for_prompt_and_response(tmp_path):
    config = DualRlConfig(train_data="rl.csv", model_name_or_path="ckpt", output_dir=str(tmp_path),
                          generation_backend="vllm")
    settings = config.rollout_settings()
    assert (settings.backend, settings.vllm_mode, settings.max_model_len) == ("vllm", "colocate", 6200 + 4096)
    assert settings.gpu_memory_utilization == 0.6 and settings.max_new_tokens == 4096
