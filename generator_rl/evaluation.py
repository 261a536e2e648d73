"""Held-out evaluation during GRPO and Flow-DPO: fixed prompts and seeds sampled with the ODE, scored by the
training reward, by guard rewards and by cheap frame statistics, compared with the frozen reference
(docs/guards.md).

Every ``eval_every`` optimizer steps (before the step's rollout: the weights after ``step`` updates), at step 0
and at the end, each held-out (prompt, seed k) is denoised from the same noise — ``seeded_generator(seed, 0,
"eval", prompt_index, k)`` — along the deterministic Euler ODE path of the rollouts (``rollout.ode_sample``).
The step-0 evaluation is the **baseline**: sampled with the adapters off (the reference; the LoRA starts at
zero, so it is also the policy at step 0), written to ``eval/baseline.json`` and reused by a resumed run.
Each evaluation appends a ``{"step": N, ...}`` line to ``eval.jsonl``, writes its videos to
``eval/videos/step_<N>/``, logs ``eval/<label>/mean``, ``eval/win_rate/<guard>`` and ``eval/alert`` and, with
wandb, a table of the videos. Labels: ``reward/<term>`` and ``reward/total`` (the training mix),
``guard/<label>`` (guard rewards), ``stat/<name>`` (``guards.STATISTICS``).

Alert (``guards.alerting_guards``): ``reward/total`` rose beyond its noise band while a guard moved beyond its
band in its worse direction. ``stop_on_alert`` then stops the run after a checkpoint; ``keep_best_by`` copies
the LoRA of the best evaluation so far to ``output_dir/best/``.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object

from reward.base import check_reward_entry
from reward.checkpoint import atomic_directory, atomic_file
from reward.errors import ConfigError, DataError
from reward.json_values import finite_or_none, json_safe
from reward.run_record import RunMismatchError
from reward.seeds import seeded_generator

from .checkpoint import CHECKPOINTS, lora_state_dict, save_checkpoint, save_lora
from .config import PolicyConfig, RunConfig, read_prompts
from .guards import STATISTICS, Direction, alerting_guards, frame_statistics, noise_band, reference_win_rate
from .rewards import RewardMix, RewardTerm
from .rollout import ode_sample
from .run import TrainingRun, write_mp4
from .tables import log_evaluation_table
from .tiny_wan import resolve_prompt_file

logger = logging.getLogger(__name__)

EVAL_DIR, EVAL_LOG, BEST = "eval", "eval.jsonl", "best"
BASELINE = "baseline.json"  # in EVAL_DIR
BEST_RECORD = "best.json"  # in BEST
TRAINING_TOTAL = "reward/total"


@dataclass
class EvalConfig:
    """Held-out evaluation and reward-hacking guards (off unless ``eval_every`` > 0)."""

    eval_every: int = field(
        default=0, metadata={"help": "Evaluate the held-out prompts every N optimizer steps, at step 0 (the "
                                     "reference) and at the end; 0: off."})
    eval_prompts: str | None = field(
        default=None, metadata={"help": "Held-out prompt file (.txt or .csv with a 'prompt' column); required when "
                                        "eval_every > 0. Keep it apart from the training prompts."})
    eval_seeds: int = field(default=2, metadata={"help": "Held-out videos per prompt (seeds 0..N-1, fixed)."})
    guards: list[RewardTerm] = field(
        default_factory=list,
        metadata={"help": "Guard rewards (registry entries like `rewards`, scored as they are, no weight), e.g. "
                          "name=aesthetic,path=... ; a composite weights several."})
    statistics: list[str] = field(
        default_factory=lambda: list(STATISTICS),
        metadata={"help": f"Frame statistics to guard: any of {', '.join(STATISTICS)} (default all)."})
    alert_sigma: float = field(
        default=2.0, metadata={"help": "Noise band half-width in standard errors of the baseline mean."})
    stop_on_alert: bool = field(
        default=False, metadata={"help": "Stop the run (after a checkpoint and final/) when an alert fires."})
    keep_best_by: str | None = field(
        default=None, metadata={"help": "Copy the LoRA to output_dir/best/ when this held-out mean is the best so far "
                                        "(higher is better): reward/total, reward/<term> or guard/<label>."})

    def __post_init__(self) -> None:
        """Every value is checked here, before any model loads; the message names the option and the fix."""
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0 (0 turns held-out evaluation off), got {self.eval_every}")
        self.guards = [term if isinstance(term, RewardTerm) else RewardTerm(term) for term in self.guards]
        if not self.enabled:
            asked = [name for name in ("eval_prompts", "guards", "keep_best_by", "stop_on_alert") if getattr(self, name)]
            if asked:
                raise ConfigError(f"{', '.join(asked)} need held-out evaluation: set eval_every > 0")
            return
        if self.eval_prompts is None:
            raise ConfigError("eval_prompts is required when eval_every > 0 (a held-out prompt file)")
        self.eval_prompts = resolve_prompt_file(self.eval_prompts)
        if self.eval_seeds < 1:
            raise ConfigError(f"eval_seeds must be >= 1, got {self.eval_seeds}")
        if len(self.prompts()) * self.eval_seeds < 2:
            raise ConfigError(f"{self.eval_prompts}: one prompt x eval_seeds {self.eval_seeds} is a single held-out "
                              "video; the noise band needs at least two (add prompts or seeds)")
        self._check_guards()
        unknown = [name for name in self.statistics if name not in STATISTICS]
        if unknown or len(set(self.statistics)) != len(self.statistics):
            raise ConfigError(f"statistics must be distinct names among {list(STATISTICS)}, got {self.statistics}")
        if not 0 < self.alert_sigma < math.inf:
            raise ConfigError(f"alert_sigma must be > 0 (standard errors; default 2), got {self.alert_sigma}")
        if self.keep_best_by is not None and not self.keep_best_by.startswith(("reward/", "guard/")):
            raise ConfigError(f"keep_best_by must be reward/total, reward/<term> or guard/<label>, got "
                              f"{self.keep_best_by!r} (statistics have no better direction to keep)")
        guard_labels = [f"guard/{term.label}" for term in self.guards]
        if self.keep_best_by is not None and self.keep_best_by.startswith("guard/") and self.keep_best_by not in guard_labels:
            raise ConfigError(f"keep_best_by {self.keep_best_by!r} is not a guard; guards: {guard_labels}")

    def _check_guards(self) -> None:
        labels = [term.label for term in self.guards]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"guard labels must be unique, got {labels}; set `label` on repeated guards")
        for term in self.guards:
            if term.weight != 1.0:
                raise ConfigError(f"guard {term.label!r} has weight {term.weight}: a guard is scored as it is; to "
                                  "weight or negate rewards, use a composite guard")
            check_reward_entry(term.entry)

    @property
    def enabled(self) -> bool:
        return self.eval_every > 0

    def prompts(self) -> list[str]:
        """The held-out prompts (none when evaluation is off)."""
        return read_prompts(self.eval_prompts) if self.enabled else []

    def with_groups(self, groups: Mapping[str, Any]) -> dict[str, Any]:
        """A job's config groups plus ``eval`` when evaluation is on: a run without it records what runs
        recorded before held-out evaluation existed, so they still resume (and ``bench ablate`` still matches)."""
        return {**groups, "eval": self} if self.enabled else dict(groups)

    def check_training_terms(self, terms: Sequence[RewardTerm]) -> None:
        """``keep_best_by`` naming a training term must name one of ``terms`` (the job's ``rewards``)."""
        known = [TRAINING_TOTAL, *(f"reward/{term.label}" for term in terms)]
        if self.keep_best_by is not None and self.keep_best_by.startswith("reward/") and self.keep_best_by not in known:
            raise ConfigError(f"keep_best_by {self.keep_best_by!r} is not a training reward; choose one of {known}")


@dataclass(frozen=True)
class HeldOutVideo:
    index: int  # position among every held-out video: prompt_index * eval_seeds + seed
    prompt_index: int
    prompt: str
    seed: int  # k, which of the prompt's eval_seeds


def held_out_videos(prompts: Sequence[str], seeds: int) -> list[HeldOutVideo]:
    return [HeldOutVideo(i * seeds + k, i, prompt, k) for i, prompt in enumerate(prompts) for k in range(seeds)]


def metric_directions(training: Sequence[str], guards: Sequence[str], statistics: Sequence[str]) -> dict[str, Direction]:
    """Every held-out label with the direction in which it gets worse."""
    rewards = [TRAINING_TOTAL, *(f"reward/{label}" for label in training), *(f"guard/{label}" for label in guards)]
    return {label: Direction.HIGHER_IS_BETTER for label in rewards} | {
        f"stat/{name}": STATISTICS[name][1] for name in statistics
    }


@dataclass(frozen=True)
class EvaluationSummary:
    means: dict[str, float]  # label -> mean over the finite per-video values (NaN if none)
    failures: dict[str, int]  # label -> videos without a finite value
    win_rates: dict[str, float]  # guard label -> the reference's win rate against the policy
    bands: dict[str, tuple[float, float]]  # label -> the baseline's noise band (low, high)
    alerts: list[str]  # guard/stat labels that moved the wrong way while the training reward rose

    def metrics(self) -> dict[str, float]:
        """The tracker keys of this evaluation."""
        return {
            **{f"eval/{label}/mean": mean for label, mean in self.means.items()},
            **{f"eval/{label}/failures": float(count) for label, count in self.failures.items()},
            **{f"eval/win_rate/{label.removeprefix('guard/')}": rate for label, rate in self.win_rates.items()},
            "eval/alert": float(bool(self.alerts)),
        }


def summarize(
    baseline: Mapping[str, Sequence[float]], current: Mapping[str, Sequence[float]], *,
    directions: Mapping[str, Direction], sigma: float,
) -> EvaluationSummary:
    """Means, failures, noise bands, reference win rates (``guard/*``) and the alert of one evaluation, from
    per-video values (label -> (V,), NaN where scoring failed) of the baseline and of the current policy."""
    means, failures, bands, movements = {}, {}, {}, {}
    for label in directions:
        values = np.asarray(current[label], dtype=np.float64)
        finite = values[np.isfinite(values)]
        means[label] = float(finite.mean()) if len(finite) else math.nan
        failures[label] = int(len(values) - len(finite))
        band = noise_band(baseline[label], sigma=sigma)
        bands[label] = (band.low, band.high)
        movements[label] = band.movement(means[label])
    win_rates = {label: reference_win_rate(np.asarray(baseline[label]), np.asarray(current[label]))
                 for label in directions if label.startswith("guard/")}
    guarded = {label: (movements[label], directions[label]) for label in directions
               if label.startswith(("guard/", "stat/"))}
    return EvaluationSummary(means, failures, win_rates, bands, alerting_guards(movements[TRAINING_TOTAL], guarded))


class HeldOutEvaluation:
    """The held-out evaluation of one training run: one call per step (``stops_run``) and one at the end
    (``finish``). With ``eval_every`` 0 both do nothing."""

    def __init__(self, config: EvalConfig, run: TrainingRun, *, policy_args: PolicyConfig, run_args: RunConfig) -> None:
        self.config, self.run, self.policy_args, self.run_args = config, run, policy_args, run_args
        self.stop_reason: str | None = None
        self.last_step: int | None = None
        if not config.enabled:
            return
        self.folder = run.run_dir / EVAL_DIR
        self.videos = held_out_videos(config.prompts(), config.eval_seeds)
        self.guards = RewardMix(config.guards) if config.guards else None
        self.directions = metric_directions([term.label for term in run.rewards.terms],
                                            [term.label for term in config.guards], config.statistics)
        self.baseline = self._read_baseline()
        self.best = read_best(run.run_dir / BEST)

    def stops_run(self, step: int) -> bool:
        """Evaluate the weights after ``step`` updates when that step is due; True when an alert stops the run
        (after its checkpoint is saved: the loop should break)."""
        if not self.config.enabled or step % self.config.eval_every:
            return False
        self._evaluate(step)
        return self.stop_reason is not None

    def finish(self, step: int) -> None:
        """The end-of-run evaluation, unless ``step`` was just evaluated (a stopped run)."""
        if self.config.enabled and self.last_step != step:
            self._evaluate(step)

    # ----- one evaluation ------------------------------------------------------------------------------

    def _evaluate(self, step: int) -> None:
        accelerator = self.run.accelerator
        if self.baseline is None:
            self.baseline = self._sample_and_score(step, reference=True)
            if accelerator.is_main_process:
                with atomic_file(self.folder / BASELINE) as handle:
                    json.dump({"prompts": [video.prompt for video in self.videos[:: self.config.eval_seeds]],
                               "eval_seeds": self.config.eval_seeds, "videos": self.baseline}, handle)
        rows = self.baseline if step == 0 else self._sample_and_score(step, reference=False)
        summary = summarize(_columns(self.baseline, self.directions), _columns(rows, self.directions),
                            directions=self.directions, sigma=self.config.alert_sigma)
        self.last_step = step
        if accelerator.is_main_process:
            self._record(step, rows, summary)
        if summary.alerts:
            self._alert(step, summary)
        if self.config.keep_best_by is not None:
            self._keep_if_best(step, summary.means[self.config.keep_best_by])
        accelerator.wait_for_everyone()

    def _sample_and_score(self, step: int, *, reference: bool) -> list[dict[str, Any]]:
        """Rows (index, prompt, seed, file, values) of every held-out video, on every process; each process
        samples, scores and writes the videos with ``index % processes == its rank``."""
        accelerator, policy, policy_args = self.run.accelerator, self.run.policy, self.policy_args
        mine = self.videos[accelerator.process_index :: accelerator.num_processes]
        sigmas, timesteps = policy.schedule(policy_args.num_steps)
        shape = policy.latent_shape(1, policy_args.shape)[1:]
        folder = self.folder / "videos" / f"step_{step:06d}"
        rows = []
        for start in range(0, len(mine), self.config.eval_seeds):
            batch = mine[start : start + self.config.eval_seeds]
            noise = torch.stack([torch.randn(shape, generator=seeded_generator(self.run_args.seed, 0, "eval",
                                                                               video.prompt_index, video.seed))
                                 for video in batch]).to(policy.device)
            prompts = [video.prompt for video in batch]
            conditional, unconditional = policy.prompt_embeddings(prompts)
            with (policy.reference() if reference else nullcontext()), accelerator.autocast():
                latents = ode_sample(lambda x, i: policy.velocity(x, timesteps[i], conditional, unconditional,
                                                                   policy_args.guidance_scale), noise, sigmas)
            frames = policy.decode(latents).cpu()
            values = self._score(frames, prompts)
            for row, video in enumerate(batch):
                path = write_mp4(folder / f"{video.prompt_index}_{video.seed}.mp4", frames[row])
                rows.append({"index": video.index, "prompt": video.prompt, "seed": video.seed,
                             "file": str(path.relative_to(self.run.run_dir)),
                             "values": {label: finite_or_none(column[row]) for label, column in values.items()}})
        return sorted(gather_object(rows), key=lambda row: row["index"])

    def _score(self, frames: torch.Tensor, prompts: list[str]) -> dict[str, list[float]]:
        """label -> per-video values of the training mix, the guards and the statistics."""
        inputs = self.run.policy.as_reward_inputs(frames)
        mixed = self.run.rewards.score(inputs, prompts)
        values = {TRAINING_TOTAL: mixed.total.tolist(), **{f"reward/{k}": v.tolist() for k, v in mixed.terms.items()}}
        if self.guards is not None:
            values |= {f"guard/{k}": v.tolist() for k, v in self.guards.score(inputs, prompts).terms.items()}
        statistics = [frame_statistics(video, self.config.statistics) for video in frames]
        return values | {f"stat/{name}": [stats[name] for stats in statistics] for name in self.config.statistics}

    def _record(self, step: int, rows: list[dict[str, Any]], summary: EvaluationSummary) -> None:
        """eval.jsonl line, tracker metrics and (wandb) the table of this evaluation; main process only."""
        record = {"step": step, "reference": step == 0, "means": summary.means, "failures": summary.failures,
                  "win_rates": summary.win_rates, "bands": summary.bands, "alerts": summary.alerts,
                  "videos": rows}
        with (self.run.run_dir / EVAL_LOG).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(json_safe(record)) + "\n")
        self.run.accelerator.log(summary.metrics(), step=step)
        log_evaluation_table(self.run.accelerator, step, self.run.run_dir, rows, list(self.directions))

    def _alert(self, step: int, summary: EvaluationSummary) -> None:
        low, high = summary.bands[TRAINING_TOTAL]
        moved = "; ".join(f"{label} {summary.means[label]:.5g} (band {summary.bands[label][0]:.5g} .. "
                          f"{summary.bands[label][1]:.5g})" for label in summary.alerts)
        message = (f"held-out evaluation at step {step}: the training reward rose to "
                   f"{summary.means[TRAINING_TOTAL]:.5g} (band {low:.5g} .. {high:.5g}) while {moved} moved the "
                   "wrong way beyond its noise band: possible reward hacking")
        if self.run.accelerator.is_main_process:
            logger.warning(message)
        if self.config.stop_on_alert:
            self.stop_reason = message
            if not (self.run.run_dir / CHECKPOINTS / f"step_{step}").is_dir():
                save_checkpoint(self.run.accelerator, self.run.run_dir, step, {"stopped": message},
                                save_total_limit=self.run_args.save_total_limit)

    def _keep_if_best(self, step: int, value: float) -> None:
        """Copy the LoRA to ``best/`` (with ``best.json``) when ``value`` beats the best so far."""
        if not math.isfinite(value) or (self.best is not None and value <= self.best["value"]):
            return
        self.best = {"step": step, "metric": self.config.keep_best_by, "value": value}
        lora = lora_state_dict(self.run.policy)  # on every rank: a gather under FSDP2
        if self.run.accelerator.is_main_process:
            with atomic_directory(self.run.run_dir / BEST) as staging:
                save_lora(self.run.policy, staging, lora)
                (staging / BEST_RECORD).write_text(json.dumps(self.best, indent=2) + "\n")

    def _read_baseline(self) -> list[dict[str, Any]] | None:
        """The saved baseline rows, checked against this run's held-out prompts and seeds; None if not saved."""
        path = self.folder / BASELINE
        if not path.is_file():
            return None
        saved = json.loads(path.read_text(encoding="utf-8"))
        prompts = [video.prompt for video in self.videos[:: self.config.eval_seeds]]
        if saved.get("prompts") != prompts or saved.get("eval_seeds") != self.config.eval_seeds:
            raise DataError(f"{path} was sampled for other held-out prompts or eval_seeds than {self.config.eval_prompts} "
                            f"x {self.config.eval_seeds}; restart with --overwrite_output_dir true")
        missing = set(self.directions) - set(saved["videos"][0]["values"])
        if missing:
            raise DataError(f"{path} has no values for {sorted(missing)}; restart with --overwrite_output_dir true")
        return saved["videos"]


def read_best(folder: Path) -> dict[str, Any] | None:
    """``best/best.json`` of an earlier evaluation of this run; a ``best/`` without it is not the run's and is
    never replaced."""
    if not folder.exists():
        return None
    record = folder / BEST_RECORD
    if not record.is_file():
        raise RunMismatchError(f"{folder} exists but holds no {BEST_RECORD}: this run did not write it and will not "
                               "replace it; move it away or choose another output_dir")
    return json.loads(record.read_text(encoding="utf-8"))


def _columns(rows: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> dict[str, list[float]]:
    return {label: [math.nan if row["values"][label] is None else row["values"][label] for row in rows]
            for label in labels}

