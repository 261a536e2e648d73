"""Flow-DPO for Wan-2.1 (VideoAlign, arXiv 2501.13918; reference code flow_grpo ``scripts/train_sd3_dpo.py``;
formulas and defaults in docs/generator_rl.md).

1. **Pairs.** For every prompt the reference policy samples ``samples_per_prompt`` videos (deterministic ODE
   sampling with CFG, seeded per prompt), any reward model ranks them, and the best and the worst (or every
   pair whose reward gap exceeds ``pair_margin``) are stored on disk as clean latents + prompt embedding +
   rewards (``PairStore``: resumable, reusable by later runs).
2. **Loss.** Winner and loser share the noise ε and the timestep σ (logit-normal or uniform, optionally bent by
   the checkpoint scheduler's shift: ``flow_matching.py``); with x_t = (1 − σ)·x0 + σ·ε and v = ε − x0,
   loss = −log σ(−β/2 · [(‖v_w − v_θ(x_t^w)‖² − ‖v_w − v_ref(x_t^w)‖²) − (same for the loser)]) with a constant
   β (VideoAlign found the timestep-dependent β over-optimises), averaged over every pair of the optimizer step.
   The reference is the base model (adapters disabled).
3. **Online.** With ``online_every = K``, every K steps the reference is refreshed from the current policy and
   a new round of pairs is sampled from it.
4. **Offline, on given pairs.** With ``pairs`` (a pair file), step 1 is replaced: the file's videos are encoded
   into the store once (``pair_import.py``; docs/flow_dpo_pairs.md) and no reward model is needed.

A step whose loss or gradient norm is not finite is skipped and counted; ``max_consecutive_skipped_steps`` of
them in a row stop the run (``reward/faults.py``). A reused pair store must have been made with this run's settings
(``pair_settings``; ``pair_store.py``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from accelerate import Accelerator

from reward.errors import ConfigError
from reward.faults import FaultCounters, SkipReason, check_skip_limit, guarded_optimizer_step
from reward.seeds import permuted_slice, seeded_generator

from .checkpoint import save_checkpoint
from .config import PolicyConfig, RunConfig
from .evaluation import EvalConfig, HeldOutEvaluation
from .flow_matching import TimestepDensity, noised_latents, sample_sigmas, scheduler_shift, velocity_target
from .losses import flow_dpo_loss, share_of_global_mean
from .pair_import import (
    IMPORT_ROUND, PairImport, check_pair_options, check_prompts_are_pairs, import_pairs, import_settings,
    prompts_by_line, read_pair_file,
)
from .pair_store import TRAINING, PairRecord, PairStore
from .policy import WanPolicy
from .progress import RunProgress
from .rewards import RewardMix, RewardTerm
from .rollout import ode_sample
from .run import TrainingRun, finish_run, training_run

logger = logging.getLogger(__name__)


@dataclass
class FlowDpoConfig:
    rewards: list[RewardTerm] | None = field(
        default=None, metadata={"help": "Reward terms that rank the samples (not needed with pairs)."}
    )
    pairs: str | None = field(
        default=None,
        metadata={"help": "Offline Flow-DPO: a pair file (prompt,video_a,video_b,label or VideoGen-RewardBench's "
                          "path_A,path_B,prompt,Overall) whose videos are encoded and trained on instead of sampled "
                          "pairs; prompts must then name the same file (docs/flow_dpo_pairs.md)."},
    )
    samples_per_prompt: int = field(default=4, metadata={"help": "Videos sampled per prompt to build pairs (N)."})
    pair_mode: Literal["best_worst", "all_above_margin"] = field(
        default="best_worst", metadata={"help": "best vs worst sample, or every pair whose reward gap exceeds the margin."}
    )
    pair_margin: float = field(default=0.0, metadata={"help": "Minimum reward gap of a pair."})
    pair_dir: str | None = field(default=None, metadata={"help": "Pair store (default output_dir/pairs); reusable."})
    beta: float = field(default=100.0, metadata={"help": "Constant DPO beta (flow_grpo's Flow-DPO: 100)."})
    train_batch_size: int = field(default=2, metadata={"help": "Pairs per micro-batch on a process."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    timestep_sampling: TimestepDensity = field(
        default=TimestepDensity.LOGIT_NORMAL,
        metadata={"help": "Density of the training timestep u in (0, 1): logit_normal (flow_grpo's Flow-DPO) or uniform."},
    )
    logit_mean: float = field(default=0.0, metadata={"help": "Logit-normal timestep sampling: mean."})
    logit_std: float = field(default=1.0, metadata={"help": "Logit-normal timestep sampling: std."})
    shift_timesteps: bool = field(
        default=False,
        metadata={"help": "Bend u with the checkpoint scheduler's shift s (flow_shift of Wan's UniPC scheduler): "
                          "sigma = s*u / (1 + (s - 1)*u), as flow_grpo's Flow-DPO does by indexing the scheduler's "
                          "shifted training timesteps. false: sigma = u."},
    )
    online_every: int | None = field(
        default=None, metadata={"help": "Online Flow-DPO: refresh the reference and re-sample pairs every K steps; "
                                        "unset or 0: offline (one round of pairs, or the --pairs file)."}
    )
    max_consecutive_skipped_steps: int = field(
        default=5, metadata={"help": "Stop the run after this many steps in a row were skipped (non-finite loss or "
                                     "gradient norm)."}
    )

    def __post_init__(self) -> None:
        if self.online_every == 0:  # the flag's spelling of "unset", e.g. to run an online recipe on --pairs
            self.online_every = None
        if self.pairs is not None:
            check_pair_options(self.pairs, online_every=self.online_every)
        elif not self.rewards:
            raise ConfigError("rewards is required, e.g. --rewards name=descore_no_cot,path=runs/descore/final")
        self.rewards = [term if isinstance(term, RewardTerm) else RewardTerm(term) for term in self.rewards or []]
        if self.samples_per_prompt < 2:
            raise ConfigError(f"samples_per_prompt must be >= 2 to form pairs, got {self.samples_per_prompt}")
        if self.online_every is not None and self.online_every < 1:
            raise ConfigError(f"online_every must be >= 1 (0 or unset: offline), got {self.online_every}")
        for name in ("train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.beta < math.inf:
            raise ConfigError(f"beta must be > 0 (the DPO temperature; flow_grpo's Flow-DPO: 100), got {self.beta}")
        if not 0 <= self.pair_margin < math.inf:
            raise ConfigError(f"pair_margin must be >= 0, got {self.pair_margin}")
        if not (math.isfinite(self.logit_mean) and 0 < self.logit_std < math.inf):
            raise ConfigError(f"logit_std must be > 0 and logit_mean finite, got {self.logit_std} and {self.logit_mean}")
        if self.pair_mode not in PAIR_SELECTORS:
            raise ConfigError(f"pair_mode must be one of {list(PAIR_SELECTORS)}, got {self.pair_mode!r}")
        try:
            self.timestep_sampling = TimestepDensity(self.timestep_sampling)
        except ValueError:
            raise ConfigError(f"timestep_sampling must be one of {[d.value for d in TimestepDensity]}, "
                              f"got {self.timestep_sampling!r}") from None
        check_skip_limit(self.max_consecutive_skipped_steps)


@dataclass(frozen=True)
class FlowDpoResult:
    """What one ``run_flow_dpo`` call did (a resumed call reports the steps it trained itself)."""

    final: Path  # the LoRA folder (diffusers format): output_dir/final
    history: list[dict[str, float]]  # the logged metrics of each step this call ran (train/loss, faults/..., ...)
    faults: FaultCounters  # skipped-step counts of the whole run (they survive a resume)
    resumed_from_step: int | None  # the checkpoint step this call resumed from; None: it started fresh
    stopped: str | None = None  # why the run stopped before max_steps (a held-out alert); None: it did not
    imported: PairImport | None = None  # with ``pairs``: what encoding the pair file did (counts, skipped rows)


def build_pairs(
    policy: WanPolicy,
    rewards: RewardMix,
    prompts: list[str],
    store: PairStore,
    *,
    round_: int,
    policy_args: PolicyConfig,
    dpo: FlowDpoConfig,
    seed: int,
    accelerator: Accelerator,
    progress: RunProgress | None = None,
) -> None:
    """Sample, score and store the pairs of one round; prompts already in the store are skipped."""
    progress = progress or RunProgress.off()
    sigmas, timesteps = policy.schedule(policy_args.num_steps)
    shape = policy.latent_shape(dpo.samples_per_prompt, policy_args.shape)
    done = store.done_prompts(round_)
    mine = [i for i in range(len(prompts)) if i % accelerator.num_processes == accelerator.process_index and i not in done]
    progress.start(f"pairs (round {round_}): sampling", total=len(mine))
    for prompt_index in mine:
        progress.label(f"pairs (round {round_}): sampling")
        prompt = prompts[prompt_index]
        noise = torch.stack([
            torch.randn(shape[1:], generator=seeded_generator(seed, round_, "pair-noise", prompt_index, n))
            for n in range(dpo.samples_per_prompt)
        ]).to(policy.device)
        conditional, unconditional = policy.prompt_embeddings([prompt] * dpo.samples_per_prompt)
        with policy.reference(), accelerator.autocast():
            final = ode_sample(
                lambda latents, index: policy.velocity(latents, timesteps[index], conditional, unconditional, policy_args.guidance_scale),
                noise, sigmas,
            )
        progress.advance()
        progress.label(f"pairs (round {round_}): scoring")
        frames = policy.decode(final)
        scores = rewards.score(policy.as_reward_inputs(frames), [prompt] * dpo.samples_per_prompt).total
        pairs = select_pairs(scores, mode=dpo.pair_mode, margin=dpo.pair_margin)
        base = dict(round=round_, prompt_index=prompt_index, prompt=prompt, model=policy_args.model, latent_shape=list(shape[1:]))
        if not pairs:
            store.mark_without_pair(accelerator.process_index, PairRecord(**base, file="", winner_reward=math.nan, loser_reward=math.nan))
        for k, (winner, loser) in enumerate(pairs):
            record = PairRecord(
                **base, file=f"pairs/{round_}_{prompt_index}_{k}.safetensors",
                winner_reward=float(scores[winner]), loser_reward=float(scores[loser]),
            )
            store.add(
                accelerator.process_index, record, winner=final[winner], loser=final[loser],
                prompt_embeds=conditional[0],
            )
    accelerator.wait_for_everyone()


def pair_settings(
    policy_args: PolicyConfig, run_args: RunConfig, dpo: FlowDpoConfig, *, processes: int
) -> dict[str, dict[str, Any]]:
    """What the pairs of a store depend on, recorded in the store and checked when it is reused: the model and
    how it samples (sizes, steps, guidance, dtypes, seed), how samples are paired, and the reward terms. With
    ``online_every``, rounds after the first are sampled by the policy being trained, so the settings that
    shape its training (LoRA, optimizer, DPO loss, batch and the number of processes) are recorded too, in
    the group the store compares only once it holds such rounds."""
    path = Path(policy_args.model)
    model = str(path.resolve()) if path.exists() else policy_args.model
    if dpo.pairs is not None:
        return import_settings(dpo.pairs, model=model, policy_fields={name: getattr(policy_args, name) for name in (
            "transformer_dtype", "text_encoder_dtype", "height", "width", "num_frames", "max_sequence_length")})
    settings = {
        "sampling": {
            "model": model,
            **{name: getattr(policy_args, name) for name in (
                "transformer_dtype", "text_encoder_dtype", "height", "width", "num_frames", "num_steps",
                "guidance_scale", "negative_prompt", "max_sequence_length")},
            "mixed_precision": run_args.mixed_precision,
            "seed": run_args.seed,
        },
        "pairs": {name: getattr(dpo, name) for name in ("samples_per_prompt", "pair_mode", "pair_margin")},
        "rewards": {"terms": [term.to_dict() for term in dpo.rewards]},
    }
    if dpo.online_every is not None:
        settings[TRAINING] = {
            "online_every": dpo.online_every,
            **{name: getattr(policy_args, name) for name in ("lora_rank", "lora_alpha", "lora_target_modules")},
            **{name: getattr(run_args, name) for name in (
                "learning_rate", "weight_decay", "max_grad_norm", "lr_scheduler_type", "warmup_steps")},
            **{name: getattr(dpo, name) for name in (
                "beta", "train_batch_size", "gradient_accumulation_steps", "timestep_sampling", "logit_mean",
                "logit_std", "shift_timesteps")},
            "processes": processes,
        }
    return settings


def _best_and_worst(scores: torch.Tensor, finite: list[int], margin: float) -> list[tuple[int, int]]:
    best = max(finite, key=lambda i: float(scores[i]))
    worst = min(finite, key=lambda i: float(scores[i]))
    return [(best, worst)] if float(scores[best] - scores[worst]) > margin else []


def _all_above_margin(scores: torch.Tensor, finite: list[int], margin: float) -> list[tuple[int, int]]:
    return [(i, j) for i in finite for j in finite if float(scores[i] - scores[j]) > margin]


PairSelector = Callable[[torch.Tensor, list[int], float], list[tuple[int, int]]]
PAIR_SELECTORS: dict[str, PairSelector] = {"best_worst": _best_and_worst, "all_above_margin": _all_above_margin}


def select_pairs(scores: torch.Tensor, *, mode: str, margin: float) -> list[tuple[int, int]]:
    """(winner, loser) indices: the best vs the worst sample (``best_worst``) or every pair (``all_above_margin``),
    in both cases only when the reward gap exceeds ``margin``. NaN scores never take part."""
    selector = PAIR_SELECTORS.get(mode)
    if selector is None:
        raise ConfigError(f"unknown pair_mode {mode!r}; use one of {list(PAIR_SELECTORS)}")
    finite = [i for i in range(len(scores)) if math.isfinite(float(scores[i]))]
    return selector(scores, finite, margin) if len(finite) >= 2 else []


def dpo_micro_step(
    policy: WanPolicy, batch: dict[str, torch.Tensor], *, dpo: FlowDpoConfig, shift: float, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-pair losses (P,) of a micro-batch of pairs (winner and loser share noise and timestep); ``shift`` is the
    timestep shift (1: none)."""
    winner, loser, embeds = batch["winner"], batch["loser"], batch["prompt_embeds"]
    pairs = winner.shape[0]
    sigma = sample_sigmas(pairs, density=dpo.timestep_sampling, shift=shift, logit_mean=dpo.logit_mean,
                          logit_std=dpo.logit_std, generator=generator)
    noise = torch.randn(winner.shape, generator=generator).to(winner.device)
    clean, shared_noise = torch.cat([winner, loser]), torch.cat([noise, noise])
    noised = noised_latents(clean, shared_noise, sigmas=sigma.repeat(2))
    target = velocity_target(clean, shared_noise)
    text = torch.cat([embeds, embeds])
    timesteps = (sigma.repeat(2) * 1000).to(clean.device)
    model_error = _errors(policy.velocity(noised, timesteps, text, text, 1.0), target)
    with torch.no_grad(), policy.reference():
        reference_error = _errors(policy.velocity(noised, timesteps, text, text, 1.0), target)
    result = flow_dpo_loss(
        model_error[:pairs], model_error[pairs:], reference_error[:pairs], reference_error[pairs:], beta=dpo.beta
    )
    model_error = model_error.detach()
    stats = {
        "implicit_accuracy": float((result.margin > 0).float().mean()),
        "model_winner_error": float(model_error[:pairs].mean()),
        "model_loser_error": float(model_error[pairs:].mean()),
        "reference_winner_error": float(reference_error[:pairs].mean()),
        "reference_loser_error": float(reference_error[pairs:].mean()),
    }
    return result.loss, stats


def _errors(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((prediction.float() - target.float()) ** 2).flatten(1).mean(dim=1)


def run_flow_dpo(
    policy_args: PolicyConfig, run_args: RunConfig, dpo: FlowDpoConfig, evaluation: EvalConfig | None = None
) -> FlowDpoResult:
    """Train (or resume) to ``max_steps``, with held-out evaluation if ``evaluation`` turns it on (its settings
    are then part of the run's record); see :class:`FlowDpoResult` for what comes back."""
    if dpo.pairs is not None:
        check_prompts_are_pairs(run_args.prompts, dpo.pairs)
    evaluation = evaluation or EvalConfig()
    if evaluation.enabled and not dpo.rewards:
        raise ConfigError("held-out evaluation (eval_every > 0) scores the training reward, and this run has none: "
                          "with --pairs, give --rewards too (they then score the evaluation only)")
    evaluation.check_training_terms(dpo.rewards or [])
    config = evaluation.with_groups({"policy": policy_args, "run": run_args, "dpo": dpo})
    with training_run(policy_args, run_args, dpo.rewards, job="tune-flow-dpo", project="descore-flow-dpo",
                      config=config, eval_prompts=evaluation.prompts()) as run:
        return _train_flow_dpo(run, policy_args, run_args, dpo, evaluation)


def _train_flow_dpo(run: TrainingRun, policy_args: PolicyConfig, run_args: RunConfig, dpo: FlowDpoConfig,
                    evaluation: EvalConfig) -> FlowDpoResult:
    accelerator, policy = run.accelerator, run.policy
    resumed_from_step = run.state.step or None
    shift = scheduler_shift(policy.pipeline.scheduler.config) if dpo.shift_timesteps else 1.0
    given = read_pair_file(dpo.pairs) if dpo.pairs is not None else None
    store = PairStore.for_run(dpo.pair_dir or run.run_dir / "pairs",
                              prompts=run.prompts if given is None else prompts_by_line(given),
                              settings=pair_settings(policy_args, run_args, dpo, processes=accelerator.num_processes))
    history: list[dict[str, float]] = []
    progress = RunProgress.for_run(desc="Flow-DPO", total=run_args.max_steps, initial=run.state.step,
                                   is_main_process=accelerator.is_main_process, disable_tqdm=run_args.disable_tqdm)
    round_, imported = None, None
    if given is not None:  # offline: the given pairs are round 0, and no round is ever sampled
        imported = import_pairs(policy, given, store, shape=policy_args.shape, model=policy_args.model,
                                accelerator=accelerator, progress=progress)
        round_, records = IMPORT_ROUND, store.pairs(IMPORT_ROUND)
    held_out = HeldOutEvaluation(evaluation, run, policy_args=policy_args, run_args=run_args)
    for step in range(run.state.step, run_args.max_steps):
        if held_out.stops_run(step):
            break
        current = step // dpo.online_every if dpo.online_every else 0
        if dpo.online_every and step > 0 and step % dpo.online_every == 0:
            policy.refresh_reference()  # at a round boundary only: mid-round, the checkpoint restored it
        if current != round_:
            round_ = current
            build_pairs(policy, run.rewards, run.prompts, store, round_=round_, policy_args=policy_args, dpo=dpo,
                        seed=run_args.seed, accelerator=accelerator, progress=progress)
            records = store.pairs(round_)
            if not records:
                raise ConfigError(f"round {round_} produced no pairs: all samples of every prompt tied within the margin")
        learning_rate = run.learning_rate
        metrics, applied = _optimizer_step(policy, run.model, run.optimizer, accelerator, store, records, step=step,
                                           dpo=dpo, shift=shift, run_args=run_args, progress=progress)
        skip = None if applied else SkipReason.NONFINITE
        if applied:
            run.after_optimizer_step(step)
        else:
            run.after_skipped_step(step)
            logger.warning("step %d skipped: non-finite loss or gradient norm", step)
        run.state.faults.record(skip)
        metrics |= run.state.faults.metrics() | {"train/learning_rate": learning_rate}
        if imported is not None and not history:
            metrics |= imported.metrics()
        history.append(metrics)
        if accelerator.is_main_process and step % run_args.logging_steps == 0:
            accelerator.log(metrics, step=step)
        progress.step_done(loss=f"{metrics['train/loss']:.4f}", acc=f"{metrics['train/implicit_accuracy']:.2f}")
        run.state.faults.stop_if_stuck(dpo.max_consecutive_skipped_steps, step=step, reason=skip)
        if run.state.step % run_args.save_steps == 0 or run.state.step == run_args.max_steps:
            save_checkpoint(accelerator, run.run_dir, run.state.step, {"loss": metrics["train/loss"]},
                            save_total_limit=run_args.save_total_limit)
    progress.close()
    held_out.finish(run.state.step)
    final = finish_run(run, fused=run_args.save_fused)
    return FlowDpoResult(final=final, history=history, faults=replace(run.state.faults),
                         resumed_from_step=resumed_from_step, stopped=held_out.stop_reason, imported=imported)


def _optimizer_step(
    policy: WanPolicy,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    store: PairStore,
    records: list[PairRecord],
    *,
    step: int,
    dpo: FlowDpoConfig,
    shift: float,
    run_args: RunConfig,
    progress: RunProgress | None = None,
) -> tuple[dict[str, float], bool]:
    """One optimizer step over ``gradient_accumulation_steps`` micro-batches of pairs (seeded order), the loss
    averaged over every pair of the step on every process; returns the metrics and whether the update was
    applied (False: a loss or the gradient norm was not finite)."""
    per_step = dpo.train_batch_size * dpo.gradient_accumulation_steps * accelerator.num_processes
    chosen = permuted_slice(len(records), step, per_step, run_args.seed)
    mine = chosen[accelerator.process_index :: accelerator.num_processes]
    collected: dict[str, list[float]] = {}
    progress = progress or RunProgress.off()
    progress.start("update", total=dpo.gradient_accumulation_steps)
    for micro in range(dpo.gradient_accumulation_steps):
        picks = mine[micro * dpo.train_batch_size : (micro + 1) * dpo.train_batch_size]
        loaded = [store.load(records[i]) for i in picks]
        batch = {key: torch.stack([item[key] for item in loaded]).to(accelerator.device) for key in loaded[0]}
        last = micro == dpo.gradient_accumulation_steps - 1
        generator = seeded_generator(run_args.seed, step, "dpo-noise", accelerator.process_index, micro)
        with (contextlib.nullcontext() if last else accelerator.no_sync(model)), accelerator.autocast():
            losses, stats = dpo_micro_step(policy, batch, dpo=dpo, shift=shift, generator=generator)
            accelerator.backward(share_of_global_mean(losses, total_terms=per_step, num_processes=accelerator.num_processes))
        progress.advance()
        for key, value in {"loss": float(losses.detach().mean()), **stats}.items():
            collected.setdefault(key, []).append(value)
    grad_norm, applied = guarded_optimizer_step(accelerator, optimizer, policy.trainable_parameters(),
                                                max_grad_norm=run_args.max_grad_norm, losses=collected["loss"])
    metrics = {f"train/{key}": float(np.mean(values)) for key, values in collected.items()}
    return metrics | {"train/grad_norm": grad_norm, "train/pairs": float(len(records))}, applied
