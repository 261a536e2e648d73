"""GRPO on the tiny Wan: it learns, it is on-policy-consistent, it resumes exactly, it runs on two processes
with the same advantages, and any registry reward (DeScore included) plugs in."""

from __future__ import annotations

import json
import math
import os
import subprocess
import threading
import sys
from pathlib import Path

import pytest

import generator_rl.grpo as grpo_module
from generator_rl.doctor import DoctorConfig, run_doctor
from generator_rl.grpo import GrpoConfig, run_grpo
from generator_rl.sample import SampleConfig, run_sample
from reward import RewardOutput, ScoredItem, build_reward, register_reward, registered_rewards
from reward.modeling import DeScoreModel, save_descore
from reward.video import VideoSpec

from .helpers import Preempted, dies_on_call, same_lora, tiny_arguments


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]


def _smoothness(videos: list[Path]) -> float:
    return float(build_reward({"name": "temporal_smoothness"}).score(videos, [""] * len(videos)).rewards.mean())


def test_grpo_raises_the_sanity_reward(tiny_wan_dir, prompt_file, tmp_path):
    """The shipped tiny recipe (40 steps, temporal-smoothness reward): the training reward rises well beyond its
    step-to-step noise (~0.002), and fresh samples with held-out seeds through diffusers' own sampler and
    `load_lora_weights` score higher than the base model's."""
    policy, run, grpo = tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run")
    result = run_grpo(policy, run, grpo)
    history = result.reward_history
    assert len(history) == 40
    early, late = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert late - early > 0.008, (early, late)
    assert len(_records(tmp_path / "run")) == 40 * grpo.prompts_per_step * grpo.group_size
    base = run_sample(policy, SampleConfig(prompts=str(prompt_file), output_dir=str(tmp_path / "base"), seed=777,
                                              videos_per_prompt=2, device="cpu"))
    tuned = run_sample(policy, SampleConfig(prompts=str(prompt_file), output_dir=str(tmp_path / "tuned"), seed=777,
                                               videos_per_prompt=2, lora=str(result.final), device="cpu"))
    assert _smoothness(tuned) > _smoothness(base) + 0.005


def test_doctor_passes_on_the_tiny_recipe(tiny_wan_dir, prompt_file, tmp_path):
    policy, run, grpo = tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run")
    report = run_doctor(policy, run, grpo, DoctorConfig(tolerance=1e-4))
    lines = report.splitlines()
    assert len(lines) == 3 and all(line.startswith("PASS") for line in lines), report
    parity = float(lines[0].split("= ")[1].split()[0])
    assert parity < 1e-5


def test_killed_run_resumes_to_the_same_lora(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    """Kill during step 3 (checkpoint at step 2 on disk), run again: same final LoRA as a straight run —
    LoRA, optimizer, EMA, RNG and the prompt position all come back."""
    settings = {"max_steps": 4, "save_steps": 2, "ema_decay": 0.5}
    straight = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "a", **settings))
    original = grpo_module.update
    monkeypatch.setattr(grpo_module, "update", dies_on_call(original, 3))
    with pytest.raises(Preempted):
        run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "b", **settings))
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step_2"]
    monkeypatch.setattr(grpo_module, "update", original)
    resumed = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "b", **settings))
    assert resumed.reward_history == straight.reward_history[2:] and resumed.resumed_from_step == 2
    assert straight.resumed_from_step is None
    assert same_lora(tmp_path / "a", tmp_path / "b")


@pytest.mark.slow  # two processes: about 20 s on 2 cores
def test_two_processes_compute_the_same_advantages_as_one(tiny_wan_dir, prompt_file, tmp_path):
    """Samples are seeded per (step, sample id), so one and two processes draw the same videos; rewards and
    group ids are gathered before normalisation, so the advantages agree (up to float noise)."""
    overrides = {"max_steps": 2, "save_steps": 2, "std_mode": "max_group"}
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "one", **overrides))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               str(Path(__file__).with_name("grpo_worker.py")), str(tiny_wan_dir), str(prompt_file), str(tmp_path / "two")]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"})
    assert finished.returncode == 0, finished.stderr[-4000:]
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert [(r["step"], r["sample"], r["prompt"]) for r in one] == [(r["step"], r["sample"], r["prompt"]) for r in two]
    for a, b in zip(one, two):
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-5)
        assert a["advantage"] == pytest.approx(b["advantage"], abs=1e-3)
    assert {r["group"] for r in two} == {0, 1}


if "flaky_test_reward" not in registered_rewards():

    @register_reward("flaky_test_reward")
    class FlakyReward:
        """Brightness, but every third call fails on its second item (reward NaN)."""

        name = "flaky_test_reward"

        def __init__(self) -> None:
            self.brightness, self.calls = build_reward({"name": "brightness"}), 0

        def score(self, videos, prompts) -> RewardOutput:
            self.calls += 1
            items = list(self.brightness.score(videos, prompts).items)
            if self.calls % 3 == 1:
                items[1] = ScoredItem(reward=math.nan, error="simulated failure")
            return RewardOutput(items)


def test_failed_rewards_are_masked_and_counted(tiny_wan_dir, prompt_file, tmp_path):
    rewards = ["name=flaky_test_reward", "name=temporal_smoothness,weight=0.5"]
    result = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run",
                                      max_steps=2, save_steps=2, rewards=rewards))
    records = _records(tmp_path / "run")
    failed = [r for r in records if r["reward"] is None]
    assert failed and all(r["advantage"] is None and r["terms"]["flaky_test_reward"] is None for r in failed)
    assert all(r["advantage"] is not None for r in records if r["reward"] is not None)
    assert all(math.isfinite(value) for value in result.reward_history)


def test_a_descore_checkpoint_plugs_in_unchanged(tiny_wan_dir, prompt_file, tiny_qwen3_vl_dir, tmp_path):
    spec = VideoSpec(fps=2.0, min_frames=4, max_frames=8, min_pixels=1024, max_pixels=4096, pixel_factor=32)
    descore = save_descore(DeScoreModel.from_base(str(tiny_qwen3_vl_dir), video_spec=spec), tmp_path / "descore")
    rewards = [f"name=descore_no_cot,path={descore},device=cpu,batch_size=8"]
    result = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run",
                                      max_steps=2, save_steps=2, rewards=rewards))
    records = _records(tmp_path / "run")
    assert len(records) == 16 and all(isinstance(r["terms"]["descore_no_cot"], float) for r in records)
    assert len({round(r["reward"], 6) for r in records}) > 1 and len(result.reward_history) == 2


@pytest.mark.parametrize(
    "variant",
    [
        {"sde": "flow_sde_wan"},
        {"sde": "cps", "noise_level": 0.8},
        {"sde": "dance", "noise_level": 0.3, "shared_noise": "true", "train_fraction": 0.6},
        {"std_mode": "max_group", "sde_window": 1, "shared_noise": "true", "beta": 0.004},
        {"std_mode": "global", "sde_window": 2, "sde_window_range": ["1", "4"]},
    ],
    ids=["flow-sde-wan", "cps", "dance", "longcat", "fast-window"],
)
def test_variants_train_on_policy(tiny_wan_dir, prompt_file, tmp_path, variant):
    """Each SDE / advantage variant runs, starts on-policy (first ratio 1) and logs finite rewards."""
    result = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run",
                                      max_steps=2, save_steps=2, **variant))
    assert result.first_ratio == pytest.approx(1.0, abs=1e-5)
    assert all(math.isfinite(value) for value in result.reward_history)
    if variant.get("shared_noise"):
        records = _records(tmp_path / "run")
        assert {r["group"] for r in records} == {0, 1}


def test_samples_and_an_offline_wandb_run_are_written(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run",
                             max_steps=2, save_steps=2, sample_steps=1, report_to="wandb"))
    videos = sorted((tmp_path / "run" / "samples").glob("*.mp4"))
    assert [video.name for video in videos][:2] == ["step_000000_0.mp4", "step_000000_1.mp4"] and len(videos) == 8
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    from reward.video import load_video, VideoSpec

    clip = load_video(videos[0], VideoSpec(fps=16.0, min_frames=2, max_frames=64, min_pixels=64, max_pixels=4096, pixel_factor=8))
    assert clip.source_fps == pytest.approx(16.0) and clip.total_frames == 9


SCORING_THREADS: list[str] = []

if "thread_recording_test_reward" not in registered_rewards():

    @register_reward("thread_recording_test_reward")
    class ThreadRecordingReward:
        """Brightness, noting which thread scored each batch (in SCORING_THREADS)."""

        name = "thread_recording_test_reward"

        def __init__(self) -> None:
            self.brightness = build_reward({"name": "brightness"})

        def score(self, videos, prompts) -> RewardOutput:
            SCORING_THREADS.append(threading.current_thread().name)
            return self.brightness.score(videos, prompts)


def test_overlapped_scoring_gives_the_same_rollouts(tiny_wan_dir, prompt_file, tmp_path):
    """With overlap_scoring each batch is scored in the background thread while the next samples; the rewards,
    advantages and trained LoRA are those of scoring inline."""
    SCORING_THREADS.clear()
    settings = {"max_steps": 2, "save_steps": 2, "rollout_batch_size": 2, "rewards": ["name=thread_recording_test_reward"]}
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "inline",
                             overlap_scoring=False, **settings))
    assert set(SCORING_THREADS) == {threading.main_thread().name}
    SCORING_THREADS.clear()
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "overlap",
                             overlap_scoring=True, **settings))
    assert len(SCORING_THREADS) == 8 and all(name.startswith("reward") for name in SCORING_THREADS)
    assert _records(tmp_path / "inline") == _records(tmp_path / "overlap")
    assert same_lora(tmp_path / "inline", tmp_path / "overlap")
