"""The LoRA optimizer of a generator run: ``fused_adamw`` picks PyTorch's fused AdamW kernel or the foreach
kernel (the default), and switching it is allowed on resume (the optimizer state is the same)."""

from __future__ import annotations

import pytest

from generator_rl.grpo import GrpoConfig, run_grpo
from generator_rl.run import training_run

from .helpers import tiny_arguments


@pytest.mark.parametrize("fused", [True, False])
def test_the_run_steps_adamw_with_the_chosen_kernel(tiny_wan_dir, prompt_file, tmp_path, fused):
    policy, run, grpo = tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run",
                                       max_steps=1, report_to="none", fused_adamw=fused)
    with training_run(policy, run, grpo.rewards, job="tune-grpo", project="descore-grpo",
                      config={"policy": policy, "run": run, "grpo": grpo}) as started:
        defaults = started.optimizer.optimizer.defaults
        assert (bool(defaults["fused"]), bool(defaults["foreach"])) == (fused, not fused)
        assert [group["params"] for group in started.optimizer.param_groups] == [started.policy.trainable_parameters()]


def test_a_run_resumes_with_the_other_kernel(tiny_wan_dir, prompt_file, tmp_path):
    arguments = dict(max_steps=1, save_steps=1)
    first = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run", **arguments,
                                     fused_adamw=True))
    again = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run", **arguments))
    assert len(first.reward_history) == 1 and again.reward_history == []  # resumed, finished: not refused
