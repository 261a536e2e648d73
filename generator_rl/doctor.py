"""``descore tune doctor``: a few tiny GRPO steps that catch the classic silent bugs before a long run.

Checks (the Flow-GRPO README's advice, github.com/yifan123/flow_grpo; docs/generator_rl.md):

1. **log-prob parity** — re-scoring every recorded transition of a rollout with the training code path gives
   the log-probabilities recorded while sampling (max |Δ| under ``tolerance``).
2. **ratio == 1 at the first inner step** — before any update the PPO ratio of the first micro-batch is 1.
3. **reward rises** — after ``steps`` GRPO steps, the same evaluation rollout (same prompts, same noise) scores
   higher with the trained LoRA than with the starting policy. Paired on noise and prompts, so the comparison is
   not drowned by how much rewards differ between prompts.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .checkpoint import load_lora
from .config import PolicyConfig, RunConfig, read_prompts
from .grpo import GrpoConfig, Rollout, collect, run_grpo, score_step
from .rewards import RewardMix
from .rollout import SdeSettings
from .run import close_run, make_accelerator

EVALUATION_STEP = 1_000_000  # a step index training never reaches: its noise is the evaluation noise


class DoctorError(RuntimeError):
    """At least one check failed; the message is the full report."""


@dataclass
class DoctorConfig:
    steps: int = field(default=20, metadata={"help": "GRPO steps before the reward-rises check."})
    tolerance: float = field(default=1e-4, metadata={"help": "Largest allowed |log-prob difference| and |ratio - 1|."})


def run_doctor(policy_args: PolicyConfig, run_args: RunConfig, grpo: GrpoConfig, doctor: DoctorConfig) -> str:
    with tempfile.TemporaryDirectory(prefix="descore-doctor-") as scratch:
        trial = replace(run_args, output_dir=str(Path(scratch) / "run"), max_steps=doctor.steps, save_steps=doctor.steps,
                        sample_steps=0, report_to="none")
        result = run_grpo(policy_args, trial, grpo)
        accelerator = make_accelerator(replace(trial, output_dir=str(Path(scratch) / "eval")), project="doctor", config={})
        policy = policy_args.load_policy(accelerator.device)
        prompts = read_prompts(run_args.prompts)[: grpo.prompts_per_step]
        rewards = RewardMix(grpo.rewards)
        sde = grpo.sde_settings(policy_args.num_steps)

        def evaluate() -> Rollout:
            return collect(policy, rewards, prompts, policy_args=policy_args, grpo=grpo, sde=sde, step=EVALUATION_STEP,
                           seed=run_args.seed, group_offset=0, accelerator=accelerator)

        before = evaluate()
        worst = _parity(policy, policy_args, sde, before, accelerator)
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
    if not all(ok for _, ok, _ in checks):
        raise DoctorError(report)
    return report


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
