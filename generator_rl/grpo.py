"""GRPO on flow matching for Wan-2.1 (Flow-GRPO, with the DanceGRPO and LongCat-GRPO variants).

One optimizer step = one rollout:

1. **Prompts.** ``prompts_per_step`` prompts (over all processes) walk through seeded permutations of the
   prompt file; each process takes an equal share and samples ``group_size`` videos per prompt.
2. **Rollout.** Trajectories along the checkpoint's schedule with CFG; the stochastic steps (all but the last,
   or a Flow-GRPO-Fast window) record their log-probabilities. Every sample draws its noise from its own
   generator seeded by (seed, step, sample id): samples do not depend on the batch or the number of processes.
   ``shared_noise`` gives a group one initial noise (DanceGRPO).
3. **Rewards.** Frames decoded in memory go to the weighted reward mix (any registry reward); each term logged.
4. **Advantages.** Rewards and group ids are gathered from every process, normalised per group (``std_mode``:
   group / LongCat ``max_group`` / ``global``), and each process keeps its own rows. NaN rewards are masked;
   when a process has no valid reward at all, the step is skipped on every process.
5. **Update.** PPO-clip on each stochastic step with the advantage clamped, plus β · closed-form KL to the
   reference (adapters disabled); CFG in training as in sampling; gradients accumulated over samples and steps.
   A non-finite loss or gradient norm skips the update. Skipped steps are counted, and
   ``max_consecutive_skipped_steps`` of them in a row stop the run (``faults.py``).

Resumable from ``output_dir/checkpoints``; metrics through accelerate's trackers, per-sample records in
``rollouts.jsonl``, sample mp4s in ``samples/``, the LoRA (diffusers format) in ``final/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from reward.errors import ConfigError

from .advantages import group_advantages
from .checkpoint import save_checkpoint
from .config import PolicyConfig, RunConfig
from .faults import SkipReason, check_skip_limit, guarded_optimizer_step
from .losses import PolicyLoss, ppo_clip_loss
from .policy import WanPolicy
from .progress import RunProgress
from .rewards import RewardMix, RewardTerm
from .rollout import Trajectory, sample_trajectory
from .run import TrainingRun, finish_run, permuted_slice, seeded_generator, training_run, write_samples
from .sde import StepOutput, gaussian_kl, sde_step, step_mean_std

logger = logging.getLogger(__name__)


@dataclass
class GrpoConfig:
    """GRPO-specific settings (defaults: Flow-GRPO's Wan recipe, reference/generator_rl.md §1.8)."""

    rewards: list[RewardTerm] | None = field(
        default=None, metadata={"help": "Reward terms, e.g. name=descore_no_cot,path=runs/descore/final,weight=1.0"}
    )
    group_size: int = field(default=4, metadata={"help": "Videos per prompt (the GRPO group)."})
    prompts_per_step: int = field(default=8, metadata={"help": "Prompts per optimizer step over all processes."})
    rollout_batch_size: int = field(default=4, metadata={"help": "Videos sampled per forward on a process."})
    train_batch_size: int = field(default=2, metadata={"help": "Videos per training micro-batch on a process."})
    shared_noise: bool = field(default=False, metadata={"help": "One initial noise per group (DanceGRPO)."})
    std_mode: Literal["group", "max_group", "global"] = field(
        default="group", metadata={"help": "Advantage scale: group std, LongCat max group std, or batch std."}
    )
    clip_range: float = field(default=1e-3, metadata={"help": "PPO ratio clip (Wan: 1e-3)."})
    adv_clip_max: float = field(default=5.0, metadata={"help": "Advantage clamp."})
    beta: float = field(default=0.004, metadata={"help": "KL weight to the reference (adapters disabled); 0: off."})
    train_fraction: float = field(
        default=1.0, metadata={"help": "Share of the stochastic steps trained per micro-batch (DanceGRPO: 0.6)."}
    )
    max_consecutive_skipped_steps: int = field(
        default=5, metadata={"help": "Stop the run after this many steps in a row were skipped (all rewards of a "
                                     "process invalid, or a non-finite loss or gradient norm)."}
    )

    def __post_init__(self) -> None:
        if not self.rewards:
            raise ConfigError("rewards is required, e.g. --rewards name=brightness,weight=1.0")
        self.rewards = [term if isinstance(term, RewardTerm) else RewardTerm(term) for term in self.rewards]
        if self.group_size < 2:
            raise ConfigError(f"group_size must be >= 2 for group-relative advantages, got {self.group_size}")
        if not 0 < self.train_fraction <= 1:
            raise ConfigError(f"train_fraction must lie in (0, 1], got {self.train_fraction}")
        for name in ("prompts_per_step", "rollout_batch_size", "train_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.clip_range < math.inf:
            raise ConfigError(f"clip_range must be > 0 (Flow-GRPO's Wan recipe: 1e-3), got {self.clip_range}")
        if not 0 < self.adv_clip_max < math.inf:
            raise ConfigError(f"adv_clip_max must be > 0, got {self.adv_clip_max}")
        if not 0 <= self.beta < math.inf:
            raise ConfigError(f"beta must be >= 0 (0 turns the KL term off), got {self.beta}")
        check_skip_limit(self.max_consecutive_skipped_steps)


@dataclass
class Rollout:
    prompts: list[str]
    group_ids: torch.Tensor  # (N,) global group index within the step
    sample_ids: torch.Tensor  # (N,) global sample index within the step
    trajectory: Trajectory
    rewards: torch.Tensor  # (N,) total
    terms: dict[str, torch.Tensor]
    frames: torch.Tensor  # (group_size, T, 3, H, W) in [0, 1]: the first group's videos, for sample files


def collect(
    policy: WanPolicy,
    rewards: RewardMix,
    prompts: list[str],
    *,
    policy_args: PolicyConfig,
    grpo: GrpoConfig,
    step: int,
    seed: int,
    group_offset: int,
    accelerator: Accelerator,
    progress: RunProgress | None = None,
) -> Rollout:
    """Sample ``group_size`` videos for each local prompt, decode them and score them."""
    progress = progress or RunProgress.off()
    sigmas, timesteps = policy.schedule(policy_args.num_steps)
    stochastic = policy_args.sde_settings.stochastic_steps(policy_args.num_steps, seeded_generator(seed, step, "window"))
    group_ids = torch.arange(len(prompts)).repeat_interleave(grpo.group_size) + group_offset
    sample_ids = group_ids * grpo.group_size + torch.arange(grpo.group_size).repeat(len(prompts))
    sample_prompts = [prompts[i] for i in range(len(prompts)) for _ in range(grpo.group_size)]
    shape = policy.latent_shape(1, policy_args.shape)[1:]
    trajectories, frames, scores = [], [], []
    progress.start("sampling", total=math.ceil(len(sample_prompts) / grpo.rollout_batch_size))
    for start in range(0, len(sample_prompts), grpo.rollout_batch_size):
        progress.label("sampling")
        ids = range(start, min(start + grpo.rollout_batch_size, len(sample_prompts)))
        noise_keys = [("noise", int(group_ids[i])) if grpo.shared_noise else ("noise", "sample", int(sample_ids[i])) for i in ids]
        noise = torch.stack([torch.randn(shape, generator=seeded_generator(seed, step, *key)) for key in noise_keys])
        conditional, unconditional = policy.prompt_embeddings([sample_prompts[i] for i in ids])
        with accelerator.autocast():
            trajectory = sample_trajectory(
                lambda latents, index: policy.velocity(
                    latents, timesteps[index], conditional, unconditional, policy_args.guidance_scale
                ),
                noise.to(policy.device),
                sigmas,
                settings=policy_args.sde_settings,
                stochastic=stochastic,
                generators=[seeded_generator(seed, step, "sde", int(sample_ids[i])) for i in ids],
            )
        progress.advance()
        progress.label("scoring")
        decoded = policy.decode(trajectory.final)
        scores.append(rewards.score(policy.as_reward_inputs(decoded), [sample_prompts[i] for i in ids]))
        trajectories.append(trajectory)
        kept = grpo.group_size - sum(len(chunk) for chunk in frames)  # sample videos show the first group only
        frames.append(decoded[: max(kept, 0)].cpu())
    return Rollout(
        prompts=sample_prompts,
        group_ids=group_ids,
        sample_ids=sample_ids,
        trajectory=Trajectory(
            steps=trajectories[0].steps,
            states=torch.cat([t.states for t in trajectories]),
            next_states=torch.cat([t.next_states for t in trajectories]),
            log_probs=torch.cat([t.log_probs for t in trajectories]),
            final=torch.cat([t.final for t in trajectories]),
        ),
        rewards=torch.cat([score.total for score in scores]),
        terms={label: torch.cat([score.terms[label] for score in scores]) for label in scores[0].terms},
        frames=torch.cat(frames),
    )


class StepAdvantages(NamedTuple):
    values: torch.Tensor  # (N,) this process's rows, NaN where the reward was invalid
    zero_std_fraction: float
    trainable: bool  # every process holds at least one valid advantage (the same answer on every process)


def gathered_advantages(accelerator: Accelerator, rollout: Rollout, std_mode: str) -> StepAdvantages:
    """Gather rewards and group ids from every process, normalise per group, return this process's rows.

    ``trainable`` is False when some process has no valid reward at all: it would have nothing to run
    forward and backward, and DDP's gradient all-reduce would wait for it, so the step is skipped everywhere.
    """
    local = torch.stack([rollout.rewards.float(), rollout.group_ids.float()], dim=1).to(accelerator.device)
    everything = accelerator.gather(local).cpu()
    advantages = group_advantages(everything[:, 0], everything[:, 1].long(), std_mode=std_mode)
    rows = len(rollout.rewards)
    per_process = torch.isfinite(advantages.values).view(accelerator.num_processes, rows)
    mine = advantages.values[accelerator.process_index * rows : (accelerator.process_index + 1) * rows]
    return StepAdvantages(mine, advantages.zero_std_fraction, bool(per_process.any(dim=1).all()))


def score_step(
    policy: WanPolicy,
    policy_args: PolicyConfig,
    state: torch.Tensor,
    next_state: torch.Tensor,
    step: int,
    *,
    conditional: torch.Tensor,
    unconditional: torch.Tensor,
) -> StepOutput:
    """Log-probability of a recorded transition under the current policy — the training-time twin of the
    sampling step (same guidance, same SDE), so a fresh policy reproduces the sampling log-prob exactly."""
    sigmas, timesteps = policy.schedule(policy_args.num_steps)
    velocity = policy.velocity(state, timesteps[step], conditional, unconditional, policy_args.guidance_scale)
    return sde_step(
        velocity, state, float(sigmas[step]), float(sigmas[step + 1]), kind=policy_args.sde,
        noise_level=policy_args.noise_level, sigma_max=float(sigmas[1]), next_sample=next_state,
    )


def update(
    policy: WanPolicy,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    rollout: Rollout,
    advantages: torch.Tensor,
    *,
    policy_args: PolicyConfig,
    grpo: GrpoConfig,
    max_grad_norm: float,
    generator: torch.Generator,
    progress: RunProgress | None = None,
) -> tuple[dict[str, float], bool]:
    """One optimizer step of PPO-clip (+ KL) over every valid sample and trained step of the rollout; this
    process must hold at least one valid sample (``StepAdvantages.trainable``). Returns the metrics and
    whether the update was applied (False: a loss or the gradient norm was not finite on some process)."""
    trajectory = rollout.trajectory
    valid = torch.isfinite(advantages).nonzero().flatten()
    order = valid[torch.randperm(len(valid), generator=generator)]
    batches = list(order.split(grpo.train_batch_size))
    count = max(1, round(len(trajectory.steps) * grpo.train_fraction))
    stats: dict[str, list[float]] = {key: [] for key in ("loss", "policy_loss", "kl", "ratio", "clipped")}
    total = len(batches) * count
    parameters = policy.trainable_parameters()
    progress = progress or RunProgress.off()
    progress.start("update", total=total)
    for batch_index, indices in enumerate(batches):
        positions = torch.randperm(len(trajectory.steps), generator=generator)[:count].sort().values.tolist()
        conditional, unconditional = policy.prompt_embeddings([rollout.prompts[i] for i in indices.tolist()])
        for position_index, position in enumerate(positions):
            last = batch_index == len(batches) - 1 and position_index == len(positions) - 1
            with (contextlib.nullcontext() if last else accelerator.no_sync(model)), accelerator.autocast():
                loss, clipped, kl = step_loss(
                    policy, policy_args, grpo, trajectory, indices, position, advantages,
                    conditional=conditional, unconditional=unconditional,
                )
                accelerator.backward(loss / total)
            progress.advance()
            stats["loss"].append(loss.item())
            stats["policy_loss"].append(clipped.loss.mean().item())
            stats["kl"].append(float(kl))
            stats["ratio"] += clipped.ratio.cpu().tolist()
            stats["clipped"] += clipped.clipped.float().cpu().tolist()
    grad_norm, applied = guarded_optimizer_step(accelerator, optimizer, parameters, max_grad_norm=max_grad_norm,
                                                losses=stats["loss"])
    ratios = np.array(stats["ratio"])
    metrics = {
        **{f"train/{key}": float(np.mean(stats[key])) for key in ("loss", "policy_loss", "kl")},
        "train/ratio_mean": float(ratios.mean()),
        "train/ratio_min": float(ratios.min()),
        "train/ratio_max": float(ratios.max()),
        "train/clip_fraction": float(np.mean(stats["clipped"])),
        "train/approx_kl": float(0.5 * np.mean(np.log(ratios) ** 2)),
        "train/first_ratio": float(ratios[0]),
        "train/grad_norm": grad_norm,
        "train/trained_samples": float(len(valid)),
    }
    return metrics, applied


def step_loss(
    policy: WanPolicy,
    policy_args: PolicyConfig,
    grpo: GrpoConfig,
    trajectory: Trajectory,
    indices: torch.Tensor,
    position: int,
    advantages: torch.Tensor,
    *,
    conditional: torch.Tensor,
    unconditional: torch.Tensor,
) -> tuple[torch.Tensor, PolicyLoss, torch.Tensor]:
    """PPO-clip + β·KL of micro-batch ``indices`` on the ``position``-th stochastic step of the trajectory."""
    step = trajectory.steps[position]
    state = trajectory.states[indices, position]
    output = score_step(policy, policy_args, state, trajectory.next_states[indices, position], step,
                        conditional=conditional, unconditional=unconditional)
    device = output.log_prob.device
    clipped = ppo_clip_loss(output.log_prob, trajectory.log_probs[indices, position].to(device),
                            advantages[indices].to(device), clip_range=grpo.clip_range, adv_clip_max=grpo.adv_clip_max)
    kl = torch.zeros((), device=device)
    if grpo.beta > 0:
        sigmas, timesteps = policy.schedule(policy_args.num_steps)
        with torch.no_grad(), policy.reference():
            reference = policy.velocity(state, timesteps[step], conditional, unconditional, policy_args.guidance_scale)
        reference_mean, _ = step_mean_std(reference, state, float(sigmas[step]), float(sigmas[step + 1]),
                                          kind=policy_args.sde, noise_level=policy_args.noise_level, sigma_max=float(sigmas[1]))
        kl = gaussian_kl(output.mean, reference_mean, output.std).mean()
    return clipped.loss.mean() + grpo.beta * kl, clipped, kl.detach()  # the KL returned is a statistic only


def run_grpo(policy_args: PolicyConfig, run_args: RunConfig, grpo: GrpoConfig) -> dict[str, Any]:
    """Train; returns the per-step mean reward history (NaN for a step without a valid reward), the PPO ratio
    of the first micro-batch of this run's first applied update (1 when the code is on-policy-consistent),
    where the final LoRA went and the skipped-step counts (``faults``)."""
    with training_run(policy_args, run_args, grpo.rewards, job="tune-grpo", project="descore-grpo",
                      config={"policy": policy_args, "run": run_args, "grpo": grpo}) as run:
        return _train_grpo(run, policy_args, run_args, grpo)


def _train_grpo(run: TrainingRun, policy_args: PolicyConfig, run_args: RunConfig, grpo: GrpoConfig) -> dict[str, Any]:
    accelerator, policy = run.accelerator, run.policy
    if grpo.prompts_per_step % accelerator.num_processes:
        raise ConfigError(
            f"prompts_per_step ({grpo.prompts_per_step}) must be divisible by the number of processes "
            f"({accelerator.num_processes})"
        )
    per_process = grpo.prompts_per_step // accelerator.num_processes
    history: list[float] = []
    first_ratio = None
    progress = RunProgress.for_run(desc="GRPO", total=run_args.max_steps, initial=run.state.step,
                                   is_main_process=accelerator.is_main_process, disable_tqdm=run_args.disable_tqdm)
    for step in range(run.state.step, run_args.max_steps):
        started, learning_rate = time.perf_counter(), run.learning_rate
        indices = permuted_slice(len(run.prompts), step, grpo.prompts_per_step, run_args.seed)
        mine = indices[accelerator.process_index * per_process : (accelerator.process_index + 1) * per_process]
        rollout = collect(
            policy, run.rewards, [run.prompts[i] for i in mine], policy_args=policy_args, grpo=grpo, step=step,
            seed=run_args.seed, group_offset=accelerator.process_index * per_process, accelerator=accelerator,
            progress=progress,
        )
        sampled = time.perf_counter()
        advantages = gathered_advantages(accelerator, rollout, grpo.std_mode)
        metrics, skip = {}, SkipReason.INVALID_REWARDS
        if advantages.trainable:
            metrics, applied = update(
                policy, run.model, run.optimizer, accelerator, rollout, advantages.values, policy_args=policy_args,
                grpo=grpo, max_grad_norm=run_args.max_grad_norm,
                generator=seeded_generator(run_args.seed, step, "shuffle", accelerator.process_index),
                progress=progress,
            )
            skip = None if applied else SkipReason.NONFINITE
        if skip is None:
            run.after_optimizer_step(step)
            first_ratio = metrics["train/first_ratio"] if first_ratio is None else first_ratio
        else:
            run.after_skipped_step(step)
            logger.warning("step %d skipped: %s", step, skip.value)
        run.state.faults.record(skip)
        metrics |= _reward_metrics(accelerator, rollout, advantages.values, advantages.zero_std_fraction)
        metrics |= run.state.faults.metrics()
        metrics |= {"time/rollout_s": sampled - started, "time/update_s": time.perf_counter() - sampled,
                    "train/learning_rate": learning_rate}
        history.append(metrics["reward/total/mean"])
        _record(accelerator, run.run_dir, step, rollout, advantages.values)
        if accelerator.is_main_process and step % run_args.logging_steps == 0:
            accelerator.log(metrics, step=step)
        progress.step_done(reward=f"{metrics['reward/total/mean']:.4f}")
        run.state.faults.stop_if_stuck(grpo.max_consecutive_skipped_steps, step=step, reason=skip)
        if run_args.sample_steps and step % run_args.sample_steps == 0 and accelerator.is_main_process:
            write_samples(accelerator, run.run_dir / "samples", step, rollout.frames, rollout.prompts)
        if run.state.step % run_args.save_steps == 0 or run.state.step == run_args.max_steps:
            save_checkpoint(accelerator, run.run_dir, run.state.step, {"reward_mean": metrics["reward/total/mean"]},
                            save_total_limit=run_args.save_total_limit)
    progress.close()
    final = finish_run(run, fused=run_args.save_fused)
    return {"reward_history": history, "first_ratio": first_ratio, "final": str(final),
            "faults": run.state.faults.state_dict()}


def _reward_metrics(accelerator: Accelerator, rollout: Rollout, advantages: torch.Tensor, zero_std: float) -> dict[str, float]:
    local = torch.stack([rollout.rewards, *rollout.terms.values()], dim=1).to(accelerator.device)
    everything = accelerator.gather(local).cpu().double()
    metrics = {"advantage/zero_std_group_fraction": zero_std}
    for column, label in enumerate(["total", *rollout.terms]):
        values = everything[:, column]
        finite = values[torch.isfinite(values)]
        metrics[f"reward/{label}/mean"] = float(finite.mean()) if len(finite) else math.nan
        metrics[f"reward/{label}/std"] = float(finite.std(unbiased=False)) if len(finite) else math.nan
        metrics[f"reward/{label}/failures"] = float(len(values) - len(finite))
    finite = advantages[torch.isfinite(advantages)]
    metrics["advantage/abs_max"] = float(finite.abs().max()) if len(finite) else 0.0
    return metrics


def _record(accelerator: Accelerator, run_dir: Path, step: int, rollout: Rollout, advantages: torch.Tensor) -> None:
    """Append one JSON line per sample (prompt, group, each reward term, advantage) to rollouts.jsonl."""
    records = [
        {
            "step": step,
            "sample": int(rollout.sample_ids[i]),
            "group": int(rollout.group_ids[i]),
            "prompt": rollout.prompts[i],
            "reward": _number(rollout.rewards[i]),
            "terms": {label: _number(values[i]) for label, values in rollout.terms.items()},
            "advantage": _number(advantages[i]),
        }
        for i in range(len(rollout.prompts))
    ]
    records = gather_object(records)
    if accelerator.is_main_process:
        with (run_dir / "rollouts.jsonl").open("a", encoding="utf-8") as handle:
            for record in sorted(records, key=lambda r: r["sample"]):
                handle.write(json.dumps(record) + "\n")


def _number(value: torch.Tensor) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
