"""``descore tune doctor``: a few tiny GRPO steps that catch the classic silent bugs before a long run.

Checks (the Flow-GRPO README's advice, github.com/yifan123/flow_grpo; docs/generator_rl.md):

1. **log-prob parity** — re-scoring every recorded transition of a rollout with the training code path gives
   the log-probabilities recorded while sampling (max |Δ| under ``tolerance``).
2. **ratio == 1 at the first inner step** — before any update the PPO ratio of the first micro-batch is 1.
3. **reward rises** — after ``steps`` GRPO steps, the same evaluation rollout (same prompts, same noise) scores
   higher with the trained LoRA than with the starting policy. Paired on noise and prompts, so the comparison is
   not drowned by how much rewards differ between prompts.

The evaluation rollout before training and the parity check on it run first and are timed: from them the
doctor logs how long the rest will take ("about N s") before the training starts. ``--quick`` shrinks a real
recipe to the smallest sizes that still exercise every check (:data:`QUICK_POLICY`, :data:`QUICK_GRPO`: 5
frames, at most 4 denoising steps, one prompt, a group of 2), so a real model and reward are checked in
minutes. The evaluation policy stays loaded while the trial run trains: two copies of the transformer are in
memory at once.
"""

from __future__ import annotations

import csv
import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_lora
from .config import PolicyConfig, RunConfig, read_prompts
from .grpo import GrpoConfig, Rollout, collect, run_grpo, score_step
from .rewards import RewardMix
from .rollout import SdeSettings
from .run import close_run, make_accelerator

logger = logging.getLogger(__name__)

EVALUATION_STEP = 1_000_000  # a step index training never reaches: its noise is the evaluation noise
# --quick: the smallest valid sizes. All SDE steps are stochastic (no window), so parity covers each of them;
# num_steps is capped separately (min(recipe, QUICK_MAX_STEPS)).
QUICK_POLICY: dict[str, Any] = {"num_frames": 5}
QUICK_GRPO: dict[str, Any] = {
    "sde_window": None, "sde_window_range": None,
    "prompts_per_step": 1, "group_size": 2, "rollout_batch_size": 2, "train_batch_size": 2,
}
QUICK_MAX_STEPS = 4
# Training a transition (forward + backward) costs about three forwards of it.
TRAIN_COST_PER_FORWARD = 3.0


class DoctorError(RuntimeError):
    """At least one check failed; the message is the full report."""


@dataclass
class DoctorConfig:
    steps: int = field(default=20, metadata={"help": "GRPO steps before the reward-rises check."})
    tolerance: float = field(default=1e-4, metadata={"help": "Largest allowed |log-prob difference| and |ratio - 1|."})
    quick: bool = field(
        default=False,
        metadata={"help": f"Check a real model and reward in minutes: {QUICK_POLICY['num_frames']} frames, at most "
                          f"{QUICK_MAX_STEPS} denoising steps, the first prompt only, groups of "
                          f"{QUICK_GRPO['group_size']} (the recipe's other settings are kept)."},
    )


def quick_configs(policy_args: PolicyConfig, grpo: GrpoConfig) -> tuple[PolicyConfig, GrpoConfig]:
    """``policy_args`` and ``grpo`` shrunk to the quick sizes (checked again by their ``__post_init__``)."""
    num_steps = min(policy_args.num_steps, QUICK_MAX_STEPS)
    return replace(policy_args, **QUICK_POLICY, num_steps=num_steps), replace(grpo, **QUICK_GRPO)


def estimate_seconds(*, rollout_s: float, rescore_s: float, steps: int, train_fraction: float) -> float:
    """Seconds for ``steps`` GRPO steps and the final evaluation rollout, from a timed rollout of a step's size
    and the time the parity check took to re-score each of its stochastic transitions forward: a step is a
    rollout plus an update, which trains ``train_fraction`` of those transitions at
    :data:`TRAIN_COST_PER_FORWARD` forwards each. Model loading is not counted."""
    step_s = rollout_s + TRAIN_COST_PER_FORWARD * train_fraction * rescore_s
    return steps * step_s + rollout_s


def run_doctor(policy_args: PolicyConfig, run_args: RunConfig, grpo: GrpoConfig, doctor: DoctorConfig) -> str:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="descore-doctor-") as scratch:
        trial = replace(run_args, output_dir=str(Path(scratch) / "run"), max_steps=doctor.steps, save_steps=doctor.steps,
                        sample_steps=0, report_to="none")
        prompts = read_prompts(run_args.prompts)
        if doctor.quick:
            policy_args, grpo = quick_configs(policy_args, grpo)
            prompts = prompts[:1]
            trial = replace(trial, prompts=str(_write_prompt(Path(scratch) / "prompt.csv", prompts[0])))
        prompts = prompts[: grpo.prompts_per_step]
        accelerator = make_accelerator(replace(trial, output_dir=str(Path(scratch) / "eval")), project="doctor", config={})
        policy = policy_args.load_policy(accelerator.device)
        policy.cache_prompts(prompts)
        policy.offload_text_encoder()
        rewards = RewardMix(grpo.rewards)
        sde = grpo.sde_settings(policy_args.num_steps)

        def evaluate() -> Rollout:
            return collect(policy, rewards, prompts, policy_args=policy_args, grpo=grpo, sde=sde, step=EVALUATION_STEP,
                           seed=run_args.seed, group_offset=0, accelerator=accelerator)

        timed = time.perf_counter()
        before = evaluate()
        rollout_s, timed = time.perf_counter() - timed, time.perf_counter()
        worst = _parity(policy, policy_args, sde, before, accelerator)
        rescore_s = time.perf_counter() - timed
        estimate = estimate_seconds(rollout_s=rollout_s, rescore_s=rescore_s, steps=doctor.steps,
                                    train_fraction=grpo.train_fraction)
        logger.info("doctor: a rollout took %.1f s and re-scoring it %.1f s; %d GRPO steps and the last checks will "
                    "take about %.0f s (plus loading the model once more)", rollout_s, rescore_s, doctor.steps, estimate)
        result = run_grpo(policy_args, trial, grpo)
        load_lora(policy, result.final)
        after = evaluate()
        close_run(accelerator)
    first_ratio = result.first_ratio
    reward_before, reward_after = float(before.rewards.nanmean()), float(after.rewards.nanmean())
    checks = [
        ("log-prob parity (sampling vs training)", worst <= doctor.tolerance,
         f"max |Δ log p| = {worst:.2e} over {len(before.trajectory.steps)} steps"),
        ("ratio == 1 at the first inner step", abs(first_ratio - 1) <= doctor.tolerance, f"ratio {first_ratio:.8f}"),
        ("reward rises", reward_after > reward_before,
         f"same prompts and noise: {reward_before:.5f} before, {reward_after:.5f} after {doctor.steps} steps"),
    ]
    report = "\n".join(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}" for name, ok, detail in checks)
    logger.info("doctor: took %.0f s in all (estimated about %.0f s after the first rollout)",
                time.perf_counter() - started, estimate)
    if not all(ok for _, ok, _ in checks):
        raise DoctorError(report)
    return report


def _write_prompt(path: Path, prompt: str) -> Path:
    """A one-prompt file (CSV, so a prompt holding a line break stays one prompt)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["prompt"], [prompt]])
    return path


def _parity(policy, policy_args: PolicyConfig, sde: SdeSettings, rollout: Rollout, accelerator) -> float:
    """Largest |log p(training path) − log p(sampling)| over every recorded transition."""
    trajectory, worst = rollout.trajectory, 0.0
    conditional, unconditional = policy.prompt_embeddings(rollout.prompts)
    with torch.no_grad(), accelerator.autocast():
        for position, step in enumerate(trajectory.steps):
            output = score_step(policy, policy_args, trajectory.states[:, position], trajectory.next_states[:, position],
                                step, sde=sde, conditional=conditional, unconditional=unconditional)
            worst = max(worst, float((output.log_prob.cpu() - trajectory.log_probs[:, position].cpu()).abs().max()))
    return worst
