"""``descore bench ablate``: one LoRA per reward model, trained with the same recipe, budget and seeds, then
compared all together, with the cross-evaluation matrix and the reward-hacking flags (``docs/vbench/compare.md``).

Steps:

1. **Runs.** For each trainer of ``trainers`` (``grpo``, ``flow-dpo``) and each reward of ``train_rewards``,
   the trainer's recipe (a YAML file or a shipped recipe name) is read with ``train_overrides`` applied, and its
   ``rewards`` replaced by that one reward (a mix is one ``composite`` entry). Everything else — model, sizes,
   steps, learning rate, seeds, prompts — is the recipe's, so the runs differ only by their reward. Each run
   has its own folder, ``<output_dir>/runs/<trainer>-<reward label>``.
2. **Training.** A finished run (its ``final/`` LoRA exported for this configuration and this ``max_steps``) is
   skipped; any other run is trained, or resumed from its newest checkpoint, by ``run_grpo`` / ``run_flow_dpo``.
   A run folder holding another configuration is refused (the trainers' own check, before any model loads).
3. **Comparison.** ``descore bench compare`` on the base model and every final LoRA, with the sampling settings of
   the recipe (all recipes must agree on them), scoring every video with the comparison's ``rewards`` plus every
   training reward. The report adds the cross-evaluation matrix — rows: the reward a model was trained on;
   columns: every metric — and flags reward hacking (:func:`benchmarks.paired_stats.hacked_metrics`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from descore.recipes import resolve_recipe
from generator_rl.checkpoint import FINAL, LORA_WEIGHTS
from generator_rl.config import PolicyConfig, RunConfig
from generator_rl.flow_dpo import FlowDpoConfig, run_flow_dpo
from generator_rl.grpo import GrpoConfig, run_grpo
from generator_rl.rewards import RewardTerm
from generator_rl.run import resumable_changes, run_record
from reward.base import check_reward_entry
from reward.errors import ConfigError
from reward.run_record import check_same_run, read_run_config, resolved_config

from .compare import EVALUATION_FIELDS, CompareConfig, CompareReport, check_labels, claim_output, compare_models

logger = logging.getLogger(__name__)

JOB = "bench ablate"
RUNS = "runs"
# trainer -> (its algorithm config, its run function, the job name and config group its runs record)
TRAINERS: dict[str, tuple[type, Any, str, str]] = {
    "grpo": (GrpoConfig, run_grpo, "tune-grpo", "grpo"),
    "flow-dpo": (FlowDpoConfig, run_flow_dpo, "tune-flow-dpo", "dpo"),
}
# PolicyConfig fields that decide how a video is sampled: every trainer's recipe must agree on them.
SAMPLING_FIELDS = ("model", "transformer_dtype", "text_encoder_dtype", "height", "width", "num_frames", "num_steps",
                   "guidance_scale", "negative_prompt", "max_sequence_length")


@dataclass
class AblateConfig:
    """What to train (the comparison's settings are ``CompareConfig``'s; its ``output_dir`` holds the runs too)."""

    train_rewards: list[RewardTerm] | None = field(
        default=None, metadata={"help": "The rewards to ablate, one training run each (registry entries with a label; "
                                        "a mix is one `composite` entry), e.g. name=brightness name=temporal_smoothness."})
    trainers: list[str] = field(default_factory=lambda: ["grpo"],
                                metadata={"help": f"Trainers, each run with every reward: {', '.join(TRAINERS)}."})
    grpo_recipe: str | None = field(default=None, metadata={"help": "GRPO recipe (YAML file or shipped name, e.g. "
                                                                    "grpo_wan1.3b); its rewards are replaced."})
    flow_dpo_recipe: str | None = field(default=None, metadata={"help": "Flow-DPO recipe (YAML file or shipped name)."})
    train_overrides: list[str] | None = field(
        default=None, metadata={"help": "key=value settings applied to every training recipe, e.g. max_steps=200 "
                                        "prompts=train_prompts.txt (the budget and data every run shares)."})

    def __post_init__(self) -> None:
        if not self.train_rewards:
            raise ConfigError("--train_rewards is required: the reward entries to ablate, one training run each")
        self.train_rewards = [term if isinstance(term, RewardTerm) else RewardTerm(term) for term in self.train_rewards]
        for term in self.train_rewards:
            if term.weight != 1.0:
                raise ConfigError(f"train reward {term.label}: each run trains on one reward; put a weighted mix in "
                                  "a `composite` entry instead of a weight")
            check_reward_entry(term.entry)
        check_labels([term.label for term in self.train_rewards], what="train reward")
        unknown = sorted(set(self.trainers) - set(TRAINERS))
        if not self.trainers or unknown:
            raise ConfigError(f"--trainers must name one or more of {', '.join(TRAINERS)}, got {self.trainers}")
        for trainer in self.trainers:
            if self.recipe(trainer) is None:
                raise ConfigError(f"trainer {trainer} needs --{trainer.replace('-', '_')}_recipe")
            resolve_recipe(self.recipe(trainer))  # FileNotFoundError naming the recipe
        for override in self.train_overrides or []:
            key, sep, _ = override.partition("=")
            if not sep or not key:
                raise ConfigError(f"--train_overrides {override!r}: expected key=value, e.g. max_steps=200")
            if key in ("output_dir", "rewards"):
                raise ConfigError(f"--train_overrides cannot set {key}: the ablation sets it for each run")

    def recipe(self, trainer: str) -> str | None:
        return self.grpo_recipe if trainer == "grpo" else self.flow_dpo_recipe


@dataclass(frozen=True)
class TrainingPlan:
    """One run of the ablation: its name, the reward it trains on, and its parsed configs."""

    name: str
    trainer: str
    reward: RewardTerm
    policy: PolicyConfig
    run: RunConfig
    algorithm: Any

    @property
    def final(self) -> Path:
        return Path(self.run.output_dir) / FINAL


def run_ablate(ablate: AblateConfig, compare: CompareConfig) -> CompareReport:
    """Steps 1-3 of the module docstring."""
    if compare.loras or compare.labels:
        raise ConfigError("--loras / --labels are set by the ablation (one LoRA per training run); remove them")
    output = Path(compare.output_dir)
    plans = training_plans(ablate, output / RUNS)
    policy = sampling_policy(plans)
    output = claim_output(compare.output_dir, JOB, resolved_config({"ablate": ablate, "policy": policy, "compare": compare}),
                          allowed=EVALUATION_FIELDS + tuple(f"ablate.{name}" for name in AblateConfig.__dataclass_fields__))
    for plan in plans:
        train(plan)
    tuned = dataclasses.replace(compare, loras=[str(plan.final) for plan in plans], labels=[plan.name for plan in plans])
    terms = {plan.reward.label: plan.reward for plan in plans}
    return compare_models(policy, tuned, output, job=JOB, trained_on={plan.name: plan.reward.label for plan in plans},
                          extra_rewards=list(terms.values()))


def parse_recipe(recipe: str, types: list[type], *, overrides: list[str]) -> tuple:
    """A recipe through the CLI's rules (YAML defaults, ``--key value`` overrides, unknown keys fail)."""
    from trl import TrlParser

    class Parser(TrlParser):
        def error(self, message: str):  # a bad value raises instead of exiting
            raise ConfigError(f"{recipe} with --train_overrides: {message}")

    argv = ["--config", str(resolve_recipe(recipe))]
    for override in overrides:
        key, _, value = override.partition("=")
        argv += [f"--{key}", value]
    *configs, remaining = Parser(types).parse_args_and_config(argv, return_remaining_strings=True)
    if remaining:
        raise ConfigError(f"--train_overrides: {' '.join(remaining)} is not a setting of the {recipe} recipe")
    return tuple(configs)


def training_plans(ablate: AblateConfig, runs: Path) -> list[TrainingPlan]:
    """Every (trainer, reward) run, parsed and checked before anything loads."""
    plans = []
    for trainer in ablate.trainers:
        algorithm_type = TRAINERS[trainer][0]
        overrides = [*(ablate.train_overrides or []), f"output_dir={runs / trainer}"]
        policy, run, algorithm = parse_recipe(ablate.recipe(trainer), [PolicyConfig, RunConfig, algorithm_type],
                                              overrides=overrides)
        for term in ablate.train_rewards:
            name = f"{trainer}-{term.label}"
            plans.append(TrainingPlan(name, trainer, term, policy, dataclasses.replace(run, output_dir=str(runs / name)),
                                      dataclasses.replace(algorithm, rewards=[term])))
    return plans


def sampling_policy(plans: list[TrainingPlan]) -> PolicyConfig:
    """The policy settings the comparison samples with: the recipes' own, which must agree."""
    first = plans[0].policy
    for plan in plans[1:]:
        differences = [f"{name}: {getattr(first, name)!r} ({plans[0].trainer}) vs {getattr(plan.policy, name)!r} "
                       f"({plan.trainer})" for name in SAMPLING_FIELDS if getattr(first, name) != getattr(plan.policy, name)]
        if differences:
            raise ConfigError("the training recipes sample differently, so their LoRAs cannot be compared on one "
                              "sampling: " + "; ".join(differences))
    return first


def is_finished(plan: TrainingPlan) -> bool:
    """Whether the run's ``final/`` LoRA is the export of this configuration at this ``max_steps``. A run folder
    recording another configuration raises :class:`~reward.run_record.RunMismatchError` (as the trainer would)."""
    _, _, job, group = TRAINERS[plan.trainer]
    record = run_record({"policy": plan.policy, "run": plan.run, group: plan.algorithm}, prompts=plan.run.prompts)
    if not check_same_run(plan.run.output_dir, job, record, allowed=resumable_changes(plan.run.lr_scheduler_type)):
        return False
    exported = read_run_config(plan.final)
    return (plan.final / LORA_WEIGHTS).is_file() and exported is not None and \
        exported["config"]["run"]["max_steps"] == plan.run.max_steps


def train(plan: TrainingPlan) -> Path:
    """Train (or resume) the run unless it is finished; return its final LoRA folder."""
    if is_finished(plan):
        logger.info("%s: finished (%s); not trained again", plan.name, plan.final)
        return plan.final
    logger.info("%s: training on %s with %s", plan.name, plan.reward.label, plan.trainer)
    return TRAINERS[plan.trainer][1](plan.policy, plan.run, plan.algorithm).final
