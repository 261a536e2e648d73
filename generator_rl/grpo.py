"""GRPO on flow matching for Wan-2.1 (Flow-GRPO, with the DanceGRPO and LongCat-GRPO variants).

One optimizer step = one rollout:

1. **Prompts.** ``prompts_per_step`` prompts (over all processes) walk through seeded permutations of the
   prompt file; each process takes an equal share and samples ``group_size`` videos per prompt.
2. **Rollout.** Trajectories along the checkpoint's schedule with CFG; the stochastic steps (all but the last,
   or a Flow-GRPO-Fast window; the step kind is ``sde``, see ``sde.py``) record their log-probabilities. Every sample draws its noise from its own
   generator seeded by (seed, step, sample id): samples do not depend on the batch or the number of processes.
   ``shared_noise`` gives a group one initial noise (DanceGRPO).
3. **Rewards.** Frames decoded in memory go to the weighted reward mix (any registry reward); each term logged. With
   ``overlap_scoring`` a batch is scored in a background thread while the next one samples.
4. **Advantages.** Rewards and group ids are gathered from every process, normalised per group (``std_mode``:
   group / LongCat ``max_group`` / ``global``), and each process keeps its own rows. NaN rewards are masked;
   when a process has no valid reward at all, the step is skipped on every process.
5. **Update.** PPO-clip on each stochastic step with the advantage clamped, plus β · closed-form KL to the
   reference (adapters disabled); CFG in training as in sampling; gradients accumulated over samples and steps,
   the loss averaged over every valid (sample, step) term of every process (``losses.share_of_global_mean``).
   A non-finite loss or gradient norm skips the update. Skipped steps are counted, and
   ``max_consecutive_skipped_steps`` of them in a row stop the run (``reward/faults.py``).

Resumable from ``output_dir/checkpoints``; metrics through accelerate's trackers, per-sample records in
``rollouts.jsonl``, sample mp4s in ``samples/``, the LoRA (diffusers format) in ``final/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from reward.errors import ConfigError
from reward.faults import FaultCounters, SkipReason, check_skip_limit, guarded_optimizer_step
from reward.json_values import finite_or_none
from reward.seeds import permuted_slice, seeded_generator

from .advantages import STD_MODES, StdMode, group_advantages
from .checkpoint import save_checkpoint
from .config import PolicyConfig, RunConfig
from .evaluation import EvalConfig, HeldOutEvaluation
from .losses import PolicyLoss, ppo_clip_loss, share_of_global_mean
from .policy import WanPolicy
from .progress import RunProgress
from .rewards import RewardMix, RewardTerm, scoring_executor
from .rollout import SdeSettings, Trajectory, sample_trajectory
from .run import TrainingRun, finish_run, training_run, write_samples
from .tables import log_rollout_table
from .sde import DEFAULT_NOISE_LEVELS, SDE_KINDS, SdeKind, StepOutput, gaussian_kl, sde_kind, sde_step, step_mean_std

logger = logging.getLogger(__name__)


@dataclass
class GrpoConfig:
    """GRPO-specific settings. Defaults: Flow-GRPO's Wan recipe (flow_grpo ``config/grpo.py::general_ocr_wan2_1``,
    its Wan noise form included); the formulas and our deviations are in docs/generator_rl.md."""

    rewards: list[RewardTerm] | None = field(
        default=None, metadata={"help": "Reward terms, e.g. name=descore_no_cot,path=runs/descore/final,weight=1.0"}
    )
    group_size: int = field(default=4, metadata={"help": "Videos per prompt (the GRPO group)."})
    prompts_per_step: int = field(default=8, metadata={"help": "Prompts per optimizer step over all processes."})
    rollout_batch_size: int = field(default=4, metadata={"help": "Videos sampled per forward on a process."})
    train_batch_size: int = field(default=2, metadata={"help": "Videos per training micro-batch on a process."})
    shared_noise: bool = field(default=False, metadata={"help": "One initial noise per group (DanceGRPO)."})
    std_mode: StdMode = field(
        default="group", metadata={"help": "Advantage scale: group std, LongCat max group std, or batch std."}
    )
    sde: SdeKind = field(
        default=SdeKind.FLOW_SDE_WAN,
        metadata={"help": "Stochastic rollout step (generator_rl/sde.py): flow_sde_wan (Flow-GRPO's Wan form, noise "
                          "std (sigma_min + (sigma_max - sigma_min)*sigma), no noise level), flow_sde (Flow-GRPO's SD3 "
                          "form a*sqrt(sigma/(1-sigma))), cps (coefficients-preserving) or dance (DanceGRPO, constant eta)."},
    )
    noise_level: float | None = field(
        default=None,
        metadata={"help": "flow_sde/cps noise level a, or DanceGRPO's eta; unset: 0.7 (flow_sde), 0.8 (cps), 0.3 "
                          "(dance). flow_sde_wan takes none (its noise is fixed by the schedule)."},
    )
    sde_window: int | None = field(
        default=None, metadata={"help": "Flow-GRPO-Fast: only this many consecutive steps are stochastic and trained."}
    )
    sde_window_range: list[int] | None = field(
        default=None, metadata={"help": "[first, last) step range the window is placed in; default all but the last."}
    )
    clip_range: float = field(
        default=1e-3,
        metadata={"help": "PPO ratio clip (Flow-GRPO's Wan: 1e-3). Log-probs are per-element means, so ratios sit "
                          "within ~1e-3 of 1. sde cps: our log-prob is the exact Gaussian one, so its log-ratios are "
                          "flow_grpo's (which drops 1/(2 s^2)) divided by 2 s^2, s = sigma_next*sin(a*pi/2): use "
                          "flow_grpo's 1e-5 / (2 s^2) at the trained steps, i.e. ~1e-5 on a high-noise window "
                          "(sigma_next >= 0.5), far more when low-noise steps are trained (docs/generator_rl.md)."},
    )
    adv_clip_max: float = field(default=5.0, metadata={"help": "Advantage clamp."})
    beta: float = field(default=0.004, metadata={"help": "KL weight to the reference (adapters disabled); 0: off."})
    train_fraction: float = field(
        default=1.0, metadata={"help": "Share of the stochastic steps trained per micro-batch (DanceGRPO: 0.6)."}
    )
    max_consecutive_skipped_steps: int = field(
        default=5, metadata={"help": "Stop the run after this many steps in a row were skipped (all rewards of a "
                                     "process invalid, or a non-finite loss or gradient norm)."}
    )
    overlap_scoring: bool = field(
        default=True,
        metadata={"help": "Score each rollout batch in a background thread while the next batch samples (the rewards "
                          "are the same either way; a remote reward server then works while the GPU samples)."},
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
        if self.std_mode not in STD_MODES:
            raise ConfigError(f"std_mode must be one of {list(STD_MODES)}, got {self.std_mode!r}")
        if not 0 < self.clip_range < math.inf:
            raise ConfigError(f"clip_range must be > 0 (Flow-GRPO's Wan recipe: 1e-3), got {self.clip_range}")
        if not 0 < self.adv_clip_max < math.inf:
            raise ConfigError(f"adv_clip_max must be > 0, got {self.adv_clip_max}")
        if not 0 <= self.beta < math.inf:
            raise ConfigError(f"beta must be >= 0 (0 turns the KL term off), got {self.beta}")
        check_skip_limit(self.max_consecutive_skipped_steps)
        self._resolve_sde()

    def _resolve_sde(self) -> None:
        """The SDE option as an :class:`SdeKind` (once, here) and its noise level checked or filled in."""
        try:
            self.sde = sde_kind(self.sde)
        except ValueError:
            raise ConfigError(f"sde must be one of {list(SDE_KINDS)}, got {self.sde!r}") from None
        default = DEFAULT_NOISE_LEVELS[self.sde]
        if default is None and self.noise_level is not None:
            raise ConfigError(f"noise_level does not apply to sde {self.sde.value} (its noise std is "
                              f"sigma_min + (sigma_max - sigma_min)*sigma, fixed by the schedule); remove it, "
                              f"or use sde flow_sde to set a noise level, got {self.noise_level}")
        if self.noise_level is None:
            self.noise_level = default
        elif not 0 <= self.noise_level < math.inf:
            raise ConfigError(f"noise_level must be >= 0, got {self.noise_level}")
        if self.sde_window is not None and self.sde_window < 1:
            raise ConfigError(f"sde_window must be >= 1, got {self.sde_window}")
        if self.sde_window_range is not None:
            if len(self.sde_window_range) != 2:
                raise ConfigError(f"sde_window_range needs two numbers [first, last), got {self.sde_window_range}")
            first, last = self.sde_window_range
            if not 0 <= first < last:
                raise ConfigError(f"sde_window_range [{first}, {last}) must satisfy 0 <= first < last")
            if self.sde_window is not None and self.sde_window > last - first:
                raise ConfigError(f"sde_window {self.sde_window} does not fit in sde_window_range [{first}, {last})")

    def sde_settings(self, num_steps: int) -> SdeSettings:
        """The rollout's SDE settings for ``num_steps`` denoising steps, whose last step is never stochastic;
        checked against ``num_steps`` here because that lives on the policy's config."""
        stochastic = num_steps - 1
        if self.sde_window is not None and self.sde_window > stochastic:
            raise ConfigError(f"sde_window must lie in [1, num_steps - 1 = {stochastic}], got {self.sde_window}")
        if self.sde_window_range is not None and self.sde_window_range[1] > stochastic:
            first, last = self.sde_window_range
            raise ConfigError(f"sde_window_range [{first}, {last}) must end at or before num_steps - 1 = {stochastic}")
        window_range = tuple(self.sde_window_range) if self.sde_window_range else None
        return SdeSettings(kind=self.sde, noise_level=self.noise_level, window=self.sde_window, window_range=window_range)


@dataclass(frozen=True)
class GrpoResult:
    """What one ``run_grpo`` call did (a resumed call reports the steps it trained itself)."""

    final: Path  # the LoRA folder (diffusers format): output_dir/final
    reward_history: list[float]  # mean reward of each step this call ran; NaN for a step without a valid reward
    first_ratio: float | None  # PPO ratio of the first micro-batch of this call's first applied update (1: on-policy)
    faults: FaultCounters  # skipped-step counts of the whole run (they survive a resume)
    resumed_from_step: int | None  # the checkpoint step this call resumed from; None: it started fresh
    stopped: str | None = None  # why the run stopped before max_steps (a held-out alert); None: it did not


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
    sde: SdeSettings,
    step: int,
    seed: int,
    group_offset: int,
    accelerator: Accelerator,
    progress: RunProgress | None = None,
) -> Rollout:
    """Sample ``group_size`` videos for each local prompt, decode them and score them."""
    progress = progress or RunProgress.off()
    sigmas, timesteps = policy.schedule(policy_args.num_steps)
    stochastic = sde.stochastic_steps(policy_args.num_steps, seeded_generator(seed, step, "window"))
    group_ids = torch.arange(len(prompts)).repeat_interleave(grpo.group_size) + group_offset
    sample_ids = group_ids * grpo.group_size + torch.arange(grpo.group_size).repeat(len(prompts))
    sample_prompts = [prompts[i] for i in range(len(prompts)) for _ in range(grpo.group_size)]
    shape = policy.latent_shape(1, policy_args.shape)[1:]
    trajectories, frames, pending = [], [], []
    progress.start("sampling", total=math.ceil(len(sample_prompts) / grpo.rollout_batch_size))
    with scoring_executor(grpo.overlap_scoring) as scoring:
        for start in range(0, len(sample_prompts), grpo.rollout_batch_size):
            progress.label("sampling")
            ids = range(start, min(start + grpo.rollout_batch_size, len(sample_prompts)))
            noise_keys = [("noise", int(group_ids[i])) if grpo.shared_noise else ("noise", "sample", int(sample_ids[i]))
                          for i in ids]
            noise = torch.stack([torch.randn(shape, generator=seeded_generator(seed, step, *key)) for key in noise_keys])
            conditional, unconditional = policy.prompt_embeddings([sample_prompts[i] for i in ids])
            with accelerator.autocast():
                trajectory = sample_trajectory(
                    lambda latents, index: policy.velocity(
                        latents, timesteps[index], conditional, unconditional, policy_args.guidance_scale
                    ),
                    noise.to(policy.device),
                    sigmas,
                    settings=sde,
                    stochastic=stochastic,
                    generators=[seeded_generator(seed, step, "sde", int(sample_ids[i])) for i in ids],
                )
            progress.advance()
            progress.label("decoding")
            decoded = policy.decode(trajectory.final)
            pending.append(scoring.submit(rewards.score, policy.as_reward_inputs(decoded), [sample_prompts[i] for i in ids]))
            trajectories.append(trajectory)
            kept = grpo.group_size - sum(len(chunk) for chunk in frames)  # sample videos show the first group only
            frames.append(decoded[: max(kept, 0)].cpu())
        progress.label("scoring")
        scores = [future.result() for future in pending]
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
    valid_total: int  # valid advantages over every process: the samples the step's loss is averaged over


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
    return StepAdvantages(mine, advantages.zero_std_fraction, bool(per_process.any(dim=1).all()),
                          int(per_process.sum()))


def score_step(
    policy: WanPolicy,
    policy_args: PolicyConfig,
    state: torch.Tensor,
    next_state: torch.Tensor,
    step: int,
    *,
    sde: SdeSettings,
    conditional: torch.Tensor,
    unconditional: torch.Tensor,
) -> StepOutput:
    """Log-probability of a recorded transition under the current policy — the training-time twin of the
    sampling step (same guidance, same SDE), so a fresh policy reproduces the sampling log-prob exactly."""
    sigmas, timesteps = policy.schedule(policy_args.num_steps)
    velocity = policy.velocity(state, timesteps[step], conditional, unconditional, policy_args.guidance_scale)
    return sde_step(
        velocity, state, float(sigmas[step]), float(sigmas[step + 1]), kind=sde.kind, noise_level=sde.noise_level,
        sigma_max=float(sigmas[1]), sigma_min=float(sigmas[-1]), next_sample=next_state,
    )


def update(
    policy: WanPolicy,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    rollout: Rollout,
    advantages: StepAdvantages,
    *,
    policy_args: PolicyConfig,
    grpo: GrpoConfig,
    sde: SdeSettings,
    max_grad_norm: float,
    generator: torch.Generator,
    progress: RunProgress | None = None,
) -> tuple[dict[str, float], bool]:
    """One optimizer step of PPO-clip (+ KL) over every valid sample and trained step of the rollout; this
    process must hold at least one valid sample (``StepAdvantages.trainable``). The loss is the mean over every
    valid (sample, step) term of every process (``share_of_global_mean``), so a sample weighs the same whatever
    micro-batch it lands in and however many samples were masked. Returns the metrics and whether the update
    was applied (False: a loss or the gradient norm was not finite on some process)."""
    trajectory = rollout.trajectory
    valid = torch.isfinite(advantages.values).nonzero().flatten()
    order = valid[torch.randperm(len(valid), generator=generator)]
    batches = list(order.split(grpo.train_batch_size))
    count = max(1, round(len(trajectory.steps) * grpo.train_fraction))
    total_terms = advantages.valid_total * count  # each valid sample of every process trains `count` steps
    stats: dict[str, list[float]] = {key: [] for key in ("loss", "policy_loss", "kl", "ratio", "clipped")}
    parameters = policy.trainable_parameters()
    progress = progress or RunProgress.off()
    progress.start("update", total=len(batches) * count)
    for batch_index, indices in enumerate(batches):
        positions = torch.randperm(len(trajectory.steps), generator=generator)[:count].sort().values.tolist()
        conditional, unconditional = policy.prompt_embeddings([rollout.prompts[i] for i in indices.tolist()])
        for position_index, position in enumerate(positions):
            last = batch_index == len(batches) - 1 and position_index == len(positions) - 1
            with (contextlib.nullcontext() if last else accelerator.no_sync(model)), accelerator.autocast():
                losses, clipped, kl = step_loss(
                    policy, policy_args, grpo, trajectory, indices, position, advantages.values,
                    sde=sde, conditional=conditional, unconditional=unconditional,
                )
                accelerator.backward(share_of_global_mean(losses, total_terms=total_terms,
                                                          num_processes=accelerator.num_processes))
            progress.advance()
            stats["loss"] += losses.detach().cpu().tolist()
            stats["policy_loss"] += clipped.loss.detach().cpu().tolist()
            stats["kl"] += kl.detach().cpu().tolist()
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
    sde: SdeSettings,
    conditional: torch.Tensor,
    unconditional: torch.Tensor,
) -> tuple[torch.Tensor, PolicyLoss, torch.Tensor]:
    """Per-sample PPO-clip + β·KL (B,) of micro-batch ``indices`` on the ``position``-th stochastic step."""
    step = trajectory.steps[position]
    state = trajectory.states[indices, position]
    output = score_step(policy, policy_args, state, trajectory.next_states[indices, position], step,
                        sde=sde, conditional=conditional, unconditional=unconditional)
    device = output.log_prob.device
    clipped = ppo_clip_loss(output.log_prob, trajectory.log_probs[indices, position].to(device),
                            advantages[indices].to(device), clip_range=grpo.clip_range, adv_clip_max=grpo.adv_clip_max)
    kl = torch.zeros_like(clipped.loss)
    if grpo.beta > 0:
        sigmas, timesteps = policy.schedule(policy_args.num_steps)
        with torch.no_grad(), policy.reference():
            reference = policy.velocity(state, timesteps[step], conditional, unconditional, policy_args.guidance_scale)
        reference_mean, _ = step_mean_std(reference, state, float(sigmas[step]), float(sigmas[step + 1]), kind=sde.kind,
                                          noise_level=sde.noise_level, sigma_max=float(sigmas[1]),
                                          sigma_min=float(sigmas[-1]))
        kl = gaussian_kl(output.mean, reference_mean, output.std)
    return clipped.loss + grpo.beta * kl, clipped, kl


def run_grpo(
    policy_args: PolicyConfig, run_args: RunConfig, grpo: GrpoConfig, evaluation: EvalConfig | None = None
) -> GrpoResult:
    """Train (or resume) to ``max_steps``, with held-out evaluation if ``evaluation`` turns it on (its settings
    are then part of the run's record); see :class:`GrpoResult` for what comes back."""
    sde = grpo.sde_settings(policy_args.num_steps)  # checked before the run folder is claimed or a model loads
    evaluation = evaluation or EvalConfig()
    evaluation.check_training_terms(grpo.rewards)
    config = evaluation.with_groups({"policy": policy_args, "run": run_args, "grpo": grpo})
    with training_run(policy_args, run_args, grpo.rewards, job="tune-grpo", project="descore-grpo", config=config,
                      eval_prompts=evaluation.prompts()) as run:
        return _train_grpo(run, policy_args, run_args, grpo, sde, evaluation)


def _train_grpo(
    run: TrainingRun, policy_args: PolicyConfig, run_args: RunConfig, grpo: GrpoConfig, sde: SdeSettings,
    evaluation: EvalConfig,
) -> GrpoResult:
    accelerator, policy = run.accelerator, run.policy
    resumed_from_step = run.state.step or None
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
    held_out = HeldOutEvaluation(evaluation, run, policy_args=policy_args, run_args=run_args)
    for step in range(run.state.step, run_args.max_steps):
        if held_out.stops_run(step):
            break
        started, learning_rate = time.perf_counter(), run.learning_rate
        indices = permuted_slice(len(run.prompts), step, grpo.prompts_per_step, run_args.seed)
        mine = indices[accelerator.process_index * per_process : (accelerator.process_index + 1) * per_process]
        rollout = collect(
            policy, run.rewards, [run.prompts[i] for i in mine], policy_args=policy_args, grpo=grpo, sde=sde, step=step,
            seed=run_args.seed, group_offset=accelerator.process_index * per_process, accelerator=accelerator,
            progress=progress,
        )
        sampled = time.perf_counter()
        advantages = gathered_advantages(accelerator, rollout, grpo.std_mode)
        metrics, skip = {}, SkipReason.INVALID_REWARDS
        if advantages.trainable:
            metrics, applied = update(
                policy, run.model, run.optimizer, accelerator, rollout, advantages, policy_args=policy_args,
                grpo=grpo, sde=sde, max_grad_norm=run_args.max_grad_norm,
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
                    "train/learning_rate": learning_rate, "perf/recompiles": float(policy.recompiles)}
        history.append(metrics["reward/total/mean"])
        _record(accelerator, run.run_dir, step, rollout, advantages.values)
        if accelerator.is_main_process and step % run_args.logging_steps == 0:
            accelerator.log(metrics, step=step)
            log_rollout_table(accelerator, step, rollout, advantages.values)
        progress.step_done(reward=f"{metrics['reward/total/mean']:.4f}")
        run.state.faults.stop_if_stuck(grpo.max_consecutive_skipped_steps, step=step, reason=skip)
        if run_args.sample_steps and step % run_args.sample_steps == 0 and accelerator.is_main_process:
            write_samples(accelerator, run.run_dir / "samples", step, rollout.frames, rollout.prompts)
        if run.state.step % run_args.save_steps == 0 or run.state.step == run_args.max_steps:
            save_checkpoint(accelerator, run.run_dir, run.state.step, {"reward_mean": metrics["reward/total/mean"]},
                            save_total_limit=run_args.save_total_limit)
    progress.close()
    held_out.finish(run.state.step)
    final = finish_run(run, fused=run_args.save_fused)
    return GrpoResult(final=final, reward_history=history, first_ratio=first_ratio,
                      faults=replace(run.state.faults), resumed_from_step=resumed_from_step,
                      stopped=held_out.stop_reason)


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
            "reward": finite_or_none(rollout.rewards[i]),
            "terms": {label: finite_or_none(values[i]) for label, values in rollout.terms.items()},
            "advantage": finite_or_none(advantages[i]),
        }
        for i in range(len(rollout.prompts))
    ]
    records = gather_object(records)
    if accelerator.is_main_process:
        with (run_dir / "rollouts.jsonl").open("a", encoding="utf-8") as handle:
            for record in sorted(records, key=lambda r: r["sample"]):
                handle.write(json.dumps(record) + "\n")
