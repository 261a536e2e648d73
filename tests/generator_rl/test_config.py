"""Bad values of the shared generator arguments are refused when the arguments are built, before any model
loads, with a message naming the option and the value."""

from __future__ import annotations

import pytest

from descore.cli import run_cli
from generator_rl.config import PolicyConfig, RunConfig
from generator_rl.flow_dpo import FlowDpoConfig
from generator_rl.grpo import GrpoConfig
from generator_rl.sde import SdeKind
from reward.errors import ConfigError

POLICY_CASES = [
    ({"guidance_scale": 0.5}, r"guidance_scale must be >= 1 .* got 0\.5"),
    ({"num_steps": 1}, r"num_steps must be >= 2 .* got 1"),
    ({"height": 40}, r"height must be a positive multiple of 16 .* got 40"),
    ({"width": 0}, r"width must be a positive multiple of 16 .* got 0"),
    ({"num_frames": 10}, r"num_frames must be 4k \+ 1 .* got 10"),
    ({"lora_rank": 0}, r"lora_rank must be >= 1 and lora_alpha > 0, got 0 and 64"),
    ({"lora_alpha": 0}, r"lora_rank must be >= 1 and lora_alpha > 0, got 32 and 0"),
    ({"lora_target_modules": []}, r"lora_target_modules is empty"),
    ({"model": "runs/nowhere/tiny-wan"}, r"model: runs/nowhere/tiny-wan does not exist"),
]

RUN_CASES = [
    ({"learning_rate": 0.0}, r"learning_rate must be > 0, got 0\.0"),
    ({"learning_rate": float("nan")}, r"learning_rate must be > 0, got nan"),
    ({"max_grad_norm": 0.0}, r"max_grad_norm must be > 0 .* got 0\.0"),
    ({"weight_decay": -1e-4}, r"weight_decay must be >= 0, got -0\.0001"),
    ({"ema_decay": 1.0}, r"ema_decay must lie in \(0, 1\) .* got 1\.0"),
    ({"ema_decay": 0.0}, r"ema_decay must lie in \(0, 1\) .* got 0\.0"),
    ({"max_steps": 0}, r"max_steps must be >= 1, got 0"),
    ({"save_steps": 0}, r"save_steps must be >= 1, got 0"),
    ({"logging_steps": 0}, r"logging_steps must be >= 1, got 0"),
    ({"sample_steps": -1}, r"sample_steps must be >= 0, got -1"),
    ({"prompts": "missing-prompts.txt"}, r"prompts: missing-prompts.txt is not a file"),
]


@pytest.mark.parametrize(("values", "message"), POLICY_CASES, ids=[str(case[0]) for case in POLICY_CASES])
def test_bad_policy_values_are_refused(values, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        PolicyConfig(**{"model": str(tmp_path), **values})


@pytest.mark.parametrize(("values", "message"), RUN_CASES, ids=[str(case[0]) for case in RUN_CASES])
def test_bad_run_values_are_refused(values, message, prompt_file, tmp_path):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**{"output_dir": str(tmp_path / "run"), "prompts": str(prompt_file), **values})


def test_good_values_pass(prompt_file, tmp_path):
    policy = PolicyConfig(model=str(tmp_path), guidance_scale=1.0)
    run = RunConfig(output_dir=str(tmp_path / "run"), prompts=str(prompt_file), ema_decay=0.9, sample_steps=0)
    grpo = GrpoConfig(rewards=["name=brightness"], sde="cps", sde_window=2, sde_window_range=[1, 5])
    settings = grpo.sde_settings(policy.num_steps)
    assert settings.window_range == (1, 5) and settings.kind is SdeKind.CPS and settings.noise_level == 0.8
    assert policy.guidance_scale == 1.0 and run.ema_decay == 0.9 and not run.overwrite_output_dir


@pytest.mark.parametrize(
    ("values", "kind", "noise_level"),
    [({}, SdeKind.FLOW_SDE_WAN, None), ({"sde": "flow_sde"}, SdeKind.FLOW_SDE, 0.7),
     ({"sde": "dance"}, SdeKind.DANCE, 0.3), ({"sde": "cps", "noise_level": 0.5}, SdeKind.CPS, 0.5)],
    ids=str,
)
def test_the_sde_option_is_resolved_once_with_its_noise_level(values, kind, noise_level):
    """The string option becomes an SdeKind in the config; an unset noise level takes the kind's documented
    default (Flow-GRPO SD3 0.7, CPS 0.8, DanceGRPO 0.3), and flow_sde_wan has none."""
    grpo = GrpoConfig(rewards=["name=brightness"], **values)
    assert grpo.sde is kind and grpo.noise_level == noise_level


SDE_WINDOW_CASES = [
    ({"sde_window": 20}, r"sde_window must lie in \[1, num_steps - 1 = 19\], got 20"),
    ({"sde_window_range": [5, 20]}, r"sde_window_range \[5, 20\) must end at or before num_steps - 1 = 19"),
]


@pytest.mark.parametrize(("values", "message"), SDE_WINDOW_CASES, ids=str)
def test_an_sde_window_beyond_the_policy_steps_is_refused(values, message, tmp_path):
    """The window's bounds depend on the policy's num_steps (20 here), so they are checked when run_grpo builds the
    SDE settings — before the run folder is claimed or a model loads."""
    with pytest.raises(ConfigError, match=message):
        GrpoConfig(rewards=["name=brightness"], **values).sde_settings(PolicyConfig(model=str(tmp_path)).num_steps)


def test_the_cli_refuses_a_bad_value_before_any_work(tmp_path, prompt_file):
    """`descore tune grpo --learning_rate 0` fails while parsing, without creating the output folder."""
    with pytest.raises(ConfigError, match=r"learning_rate must be > 0, got 0\.0"):
        run_cli(["tune", "grpo", "--model", str(tmp_path), "--prompts", str(prompt_file), "--output_dir",
                 str(tmp_path / "run"), "--rewards", "name=brightness", "--learning_rate", "0"])
    assert not (tmp_path / "run").exists()


GRPO_CASES = [
    ({"group_size": 1}, r"group_size must be >= 2"),
    ({"train_fraction": 0.0}, r"train_fraction must lie in \(0, 1\], got 0\.0"),
    ({"prompts_per_step": 0}, r"prompts_per_step must be >= 1, got 0"),
    ({"rollout_batch_size": 0}, r"rollout_batch_size must be >= 1, got 0"),
    ({"train_batch_size": 0}, r"train_batch_size must be >= 1, got 0"),
    ({"clip_range": 0.0}, r"clip_range must be > 0 .* got 0\.0"),
    ({"adv_clip_max": -1.0}, r"adv_clip_max must be > 0, got -1\.0"),
    ({"beta": -0.1}, r"beta must be >= 0 .* got -0\.1"),
    ({"beta": float("inf")}, r"beta must be >= 0 .* got inf"),
    ({"max_consecutive_skipped_steps": 0}, r"max_consecutive_skipped_steps must be an integer >= 1, got 0"),
    ({"std_mode": "median"}, r"std_mode must be one of \['group', 'max_group', 'global'\], got 'median'"),
    ({"sde": "ddim"}, r"sde must be one of \['flow_sde', 'flow_sde_wan', 'cps', 'dance'\], got 'ddim'"),
    ({"sde": "flow_sde_wan", "noise_level": 0.7}, r"noise_level does not apply to sde flow_sde_wan .* got 0\.7"),
    ({"sde": "flow_sde", "noise_level": -0.1}, r"noise_level must be >= 0, got -0\.1"),
    ({"sde_window": 0}, r"sde_window must be >= 1, got 0"),
    ({"sde_window_range": [3]}, r"sde_window_range needs two numbers"),
    ({"sde_window_range": [5, 2]}, r"sde_window_range \[5, 2\) must satisfy 0 <= first < last"),
    ({"sde_window": 4, "sde_window_range": [0, 3]}, r"sde_window 4 does not fit in sde_window_range \[0, 3\)"),
]

FLOW_DPO_CASES = [
    ({"samples_per_prompt": 1}, r"samples_per_prompt must be >= 2"),
    ({"beta": 0.0}, r"beta must be > 0 .* got 0\.0"),
    ({"pair_margin": -1.0}, r"pair_margin must be >= 0, got -1\.0"),
    ({"train_batch_size": 0}, r"train_batch_size must be >= 1, got 0"),
    ({"gradient_accumulation_steps": 0}, r"gradient_accumulation_steps must be >= 1, got 0"),
    ({"logit_std": 0.0}, r"logit_std must be > 0 and logit_mean finite, got 0\.0 and 0\.0"),
    ({"online_every": -1}, r"online_every must be >= 1 \(0 or unset: offline\), got -1"),
    ({"pair_mode": "top_k"}, r"pair_mode must be one of \['best_worst', 'all_above_margin'\], got 'top_k'"),
    ({"timestep_sampling": "cosine"}, r"timestep_sampling must be one of \['logit_normal', 'uniform'\], got 'cosine'"),
]


@pytest.mark.parametrize(("values", "message"), GRPO_CASES, ids=str)
def test_bad_grpo_values_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        GrpoConfig(**{"rewards": ["name=brightness"], **values})


@pytest.mark.parametrize(("values", "message"), FLOW_DPO_CASES, ids=str)
def test_bad_flow_dpo_values_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        FlowDpoConfig(**{"rewards": ["name=brightness"], **values})


@pytest.mark.parametrize(
    ("term", "message"),
    [
        ("name=brightnes", r"unknown reward model 'brightnes'; registered: \[.*'brightness'"),
        ("name=brightness,colour=red", r"reward model 'brightness' does not take options \['colour'\]"),
        ("name=descore_no_cot,path=runs/nowhere/final", r"reward model 'descore_no_cot' path: runs/nowhere/final does not exist"),
    ],
)
def test_reward_entries_are_checked_before_the_generator_loads(term, message, tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    """A misspelt reward or a missing reward checkpoint fails before Wan loads (the loader is never reached)."""
    def no_load(*args, **kwargs):
        raise AssertionError("the generator was loaded before the bad reward entry was refused")

    monkeypatch.setattr(PolicyConfig, "load_policy", no_load)
    with pytest.raises(ConfigError, match=message):
        run_cli(["tune", "grpo", "--model", str(tiny_wan_dir), "--prompts", str(prompt_file), "--output_dir",
                 str(tmp_path / "run"), "--rewards", term, "--report_to", "none"])
