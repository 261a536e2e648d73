"""``descore tune doctor --quick``: the recipe shrunk to the smallest valid sizes, an estimate of the run time
from one timed rollout logged before training starts, and the same three checks passing on the tiny Wan."""

from __future__ import annotations

import logging
import re

import pytest
from trl import TrlParser

from generator_rl.config import PolicyConfig, RunConfig
from generator_rl.doctor import QUICK_MAX_STEPS, DoctorConfig, estimate_seconds, quick_configs, run_doctor
from generator_rl.grpo import GrpoConfig

from .helpers import RECIPES, tiny_arguments


def test_quick_sizes_shrink_the_recipe_and_keep_the_rest(tiny_wan_dir, prompt_file, tmp_path):
    policy, _, grpo = tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path, num_steps=6,
                                     sde_window=2, sde_window_range=["1", "4"])
    assert (grpo.sde_window, grpo.sde_window_range) == (2, [1, 4])
    small_policy, small_grpo = quick_configs(policy, grpo)
    assert (small_policy.num_frames, small_policy.num_steps) == (5, QUICK_MAX_STEPS)
    assert (small_grpo.sde_window, small_grpo.sde_window_range) == (None, None)
    assert (small_grpo.prompts_per_step, small_grpo.group_size, small_grpo.rollout_batch_size,
            small_grpo.train_batch_size) == (1, 2, 2, 2)
    assert (small_policy.height, small_policy.model, small_grpo.rewards, small_grpo.clip_range) == (
        policy.height, policy.model, grpo.rewards, grpo.clip_range)
    fewer, _ = quick_configs(tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path,
                                            num_steps=3)[0], grpo)
    assert fewer.num_steps == 3  # a recipe with fewer steps keeps them


def test_estimate_counts_rollouts_and_updates():
    """A 10 s rollout whose transitions took 2 s to re-score; training 60 % of them at 3 forwards each: a step is
    10 + 3 * 0.6 * 2 = 13.6 s; 20 steps and the final evaluation rollout: 20 * 13.6 + 10 = 282 s."""
    assert estimate_seconds(rollout_s=10.0, rescore_s=2.0, steps=20, train_fraction=0.6) == pytest.approx(282.0)


def test_quick_is_a_flag_of_the_doctor_command(tiny_wan_dir, prompt_file):
    *_, doctor = TrlParser([PolicyConfig, RunConfig, GrpoConfig, DoctorConfig]).parse_args_and_config(
        ["--config", str(RECIPES / "tiny_grpo.yaml"), "--model", str(tiny_wan_dir), "--prompts", str(prompt_file),
         "--quick", "--steps", "8"])
    assert doctor.quick is True and doctor.steps == 8


def test_quick_doctor_passes_on_the_tiny_recipe_and_logs_its_estimate(tiny_wan_dir, prompt_file, tmp_path, caplog):
    """5 GRPO steps on the first prompt (mean reward of the evaluation group -0.2016 before, -0.1942 after)."""
    policy, run, grpo = tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="generator_rl.doctor"):
        report = run_doctor(policy, run, grpo, DoctorConfig(quick=True, steps=5))
    lines = report.splitlines()
    assert len(lines) == 3 and all(line.startswith("PASS") for line in lines), report
    assert "over 3 steps" in lines[0]  # 4 denoising steps, the last one deterministic
    estimates = [record.getMessage() for record in caplog.records if "will take about" in record.getMessage()]
    assert len(estimates) == 1 and re.search(r"5 GRPO steps and the last checks will take about \d+ s", estimates[0])
    first_message = next(record.getMessage() for record in caplog.records if record.name == "generator_rl.doctor")
    assert first_message == estimates[0]  # said before the training started
