"""``descore tune doctor``: a few tiny GRPO steps that catch the classic silent bugs before a long run.

Checks (Flow-GRPO README's advice, reference/generator_rl.md §1.6):

1. **log-prob parity** — re-scoring every recorded transition with the training code path gives the
   log-probabilities recorded while sampling (max |Δ| under ``tolerance``; fp32 on CPU agrees to ~1e-6,
   bf16 on GPU to ~1e-3).
2. **ratio == 1 at the first inner step** — before any update the PPO ratio of the first micro-batch is 1.
3. **reward rises** — over ``steps`` GRPO steps the mean reward of the last third beats the first third.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .config import PolicyArguments, RunArguments, read_prompts
from .grpo import GrpoArguments, collect, run_grpo, score_step
from .rewards import RewardMix
from .run import close_run, make_accelerator


class DoctorError(RuntimeError):
    """At least one check failed; the message is the full report."""


@dataclass
class DoctorArguments:
    steps: int = field(default=12, metadata={"help": "GRPO steps for the reward-rises check."})
    tolerance: float = field(default=1e-4, metadata={"help": "Largest allowed |log-prob difference| and |ratio - 1|."})


def run_doctor(policy_args: PolicyArguments, run_args: RunArguments, grpo: GrpoArguments, doctor: DoctorArguments) -> str:
    checks = [_parity(policy_args, run_args, grpo, doctor.tolerance)]
    with tempfile.TemporaryDirectory(prefix="descore-doctor-") as scratch:
        trial = replace(run_args, output_dir=scratch, max_steps=doctor.steps, save_every=doctor.steps,
                        sample_every=0, report_to="none")
        result = run_grpo(policy_args, trial, grpo)
    first_ratio = result["first_ratio"]
    checks.append(("ratio == 1 at the first inner step", abs(first_ratio - 1) <= doctor.tolerance, f"ratio {first_ratio:.8f}"))
    history = np.array(result["reward_history"])
    third = max(1, len(history) // 3)
    early, late = float(np.nanmean(history[:third])), float(np.nanmean(history[-third:]))
    checks.append(("reward rises", late > early, f"mean reward {early:.5f} (first {third} steps) -> {late:.5f} (last {third})"))
    report = "\n".join(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}" for name, ok, detail in checks)
    if not all(ok for _, ok, _ in checks):
        raise DoctorError(report)
    return report


def _parity(policy_args: PolicyArguments, run_args: RunArguments, grpo: GrpoArguments, tolerance: float):
    with tempfile.TemporaryDirectory(prefix="descore-doctor-") as scratch:
        accelerator = make_accelerator(replace(run_args, output_dir=scratch, report_to="none"), project="doctor", config={})
        policy = policy_args.load_policy(accelerator.device)
        prompts = read_prompts(run_args.prompts)[: grpo.prompts_per_step]
        rollout = collect(policy, RewardMix(grpo.rewards), prompts, policy_args=policy_args, grpo=grpo, step=0,
                          seed=run_args.seed, group_offset=0, accelerator=accelerator)
        trajectory, worst = rollout.trajectory, 0.0
        with torch.no_grad(), accelerator.autocast():
            for position, step in enumerate(trajectory.steps):
                conditional, unconditional = policy.prompt_embeddings(rollout.prompts)
                output = score_step(policy, policy_args, trajectory.states[:, position], trajectory.next_states[:, position],
                                    step, conditional=conditional, unconditional=unconditional)
                worst = max(worst, float((output.log_prob.cpu() - trajectory.log_probs[:, position].cpu()).abs().max()))
        close_run(accelerator)
    return ("log-prob parity (sampling vs training)", worst <= tolerance, f"max |Δ log p| = {worst:.2e} over {len(trajectory.steps)} steps")
