"""The command table of ``descore``: every job is one row (help, config dataclasses, run function, report).

Config classes and run functions are named as ``"module:attribute"`` strings and imported only when the
command runs, so listing the commands (``descore --help``, ``descore tune --help``) imports neither torch nor
the kit's packages. The report functions below take the run function's result and need no imports either.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Variants:
    """Jobs one command runs, by the value of ``key``: ``default`` names the command's own row."""

    key: str
    default: str
    others: dict[str, Command]
    # A recipe without ``key`` that holds one of these keys picks that job (a Flow-DPO recipe has pair_mode).
    recognised_by: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """A CLI job: its help line, the dataclasses its flags fill, the function that runs it and its report."""

    help: str
    configs: tuple[str, ...]
    run: str
    report: Callable[[Any], str] | None = None
    # Dataclasses whose keys a --config recipe may also hold and this command ignores (e.g. `tune sample`
    # reading a training recipe for its model and sampling settings).
    ignores: tuple[str, ...] = ()
    # Keys taken from the command line only: a recipe's value is dropped (a training recipe's output_dir is
    # where that training writes, never where `tune sample` should put its videos).
    flag_only: tuple[str, ...] = ()
    # Other jobs run by the same command, picked by the value of one key (from --key or the recipe).
    variants: Variants | None = None

    def selected(self, value: Any) -> Command:
        """The job for ``value`` of the :attr:`variants` key: this row without a value or for its own name."""
        if self.variants is None or value is None or value == self.variants.default:
            return self
        if value not in self.variants.others:
            from reward.errors import ConfigError

            known = [self.variants.default, *self.variants.others]
            raise ConfigError(f"{self.variants.key} must be one of {known}, got {value!r}")
        return self.variants.others[value]

    def config_classes(self) -> tuple[type, ...]:
        return tuple(load(reference) for reference in self.configs)

    def ignored_keys(self) -> set[str]:
        return {name for reference in self.ignores for name in load(reference).__dataclass_fields__}

    def run_function(self) -> Callable[..., Any]:
        return load(self.run)


def load(reference: str) -> Any:
    """The object a ``"module:attribute"`` reference names: the one place a table string becomes code."""
    module, attribute = reference.split(":")
    return getattr(importlib.import_module(module), attribute)


def _report_score(summary: Any) -> str:
    from reward.score_report import format_score_report  # imported with the job it reports on

    return format_score_report(summary)


def _report_collect(summary: Any) -> str:
    from reward.collect_cot import format_collect_report

    return format_collect_report(summary)


def _report_calibration(summary: Any) -> str:
    from reward.calibrate_job import format_calibration_report

    return format_calibration_report(summary)


def _report_train(metrics: dict[str, float]) -> str:
    return "\n".join(f"{key}: {value:.4f}" for key, value in sorted(metrics.items()) if key.endswith("accuracy"))


def _report_dual_rl(result: Any) -> str:
    """A DualRlResult in a few lines: resume point, reward trend, held-out accuracy, skipped steps, the model."""
    lines = [f"resumed from step {result.resumed_from_step}"] if result.resumed_from_step else []
    if result.reward_history:
        lines.append(f"mean rollout reward: first step {result.reward_history[0]:.4f}, "
                     f"last step {result.reward_history[-1]:.4f}")
    lines += [f"{key}: {value:.4f}" for key, value in sorted(result.eval_metrics.items()) if "accuracy" in key]
    if result.faults.skipped_steps:
        lines.append(f"skipped steps: {result.faults.skipped_steps} (every update non-finite)")
    return "\n".join([*lines, f"DeScore checkpoint: {result.final}"])


def _report_vbench(result: Any) -> str:
    from benchmarks.vbench.job import format_report

    return format_report(result)


def _report_tuning(result: Any) -> str:
    """A GrpoResult or FlowDpoResult in a few lines: resume point, reward trend, skipped steps, the LoRA."""
    lines = [f"resumed from step {result.resumed_from_step}"] if result.resumed_from_step else []
    imported = getattr(result, "imported", None)
    if imported is not None:
        lines.append(f"pairs from {imported.source}: {imported.pairs} usable ({imported.stored} encoded now), "
                     f"{imported.ties} tie(s) and {len(imported.skipped)} bad row(s) skipped")
    history = getattr(result, "reward_history", None)
    if history:
        lines.append(f"mean reward: first step {history[0]:.5f}, last step {history[-1]:.5f}")
    faults = result.faults
    if faults.skipped_steps:
        lines.append(f"skipped steps: {faults.skipped_steps} ({faults.invalid_reward_steps} with no valid reward, "
                     f"{faults.nonfinite_grad} with a non-finite loss or gradient)")
    if result.stopped:
        lines.append(f"stopped early: {result.stopped}")
    return "\n".join([*lines, f"LoRA: {result.final}"])


def _report_plan(plan: Any) -> str:
    from generator_rl.plan_job import format_plan

    return format_plan(plan)


def _report_reward_plan(plan: Any) -> str:
    from reward.planner import format_reward_plan

    return format_reward_plan(plan)


def _report_sample(paths: list[Any]) -> str:
    """Videos written; a test-time search leaves out videos whose every candidate failed (candidates.csv)."""
    failed = sum(not path.is_file() for path in paths)
    return f"wrote {len(paths) - failed} video(s)" + (f"; {failed} failed (no candidate scored, see candidates.csv)" if failed else "")


def _report_comparison(report: Any) -> str:
    """The deltas of ``bench compare`` / ``bench ablate`` and where the full report is."""
    from benchmarks.report import summary_table

    files = report.files
    return f"{summary_table(report.comparison)}\n\nwrote {files.markdown}, {files.html.name}, {files.json.name}"


_POLICY, _RUN = "generator_rl.config:PolicyConfig", "generator_rl.config:RunConfig"
_GRPO, _FLOW_DPO = "generator_rl.grpo:GrpoConfig", "generator_rl.flow_dpo:FlowDpoConfig"
_EVAL = "generator_rl.evaluation:EvalConfig"
_PLAN = "generator_rl.plan_job:PlanConfig"

GROUPS: dict[str, str] = {
    "reward": "Train, score and export DeScore reward models",
    "tune": "Post-train Wan-2.1 with reward models: GRPO, Flow-DPO, sampling, doctor",
    "bench": "Measure reward models and tuned generators: preference accuracy, VBench, base vs tuned, reward ablations",
}

# (group, command) -> job; a one-word key is a command without a group
COMMANDS: dict[tuple[str, ...], Command] = {
    ("reward", "train"): Command(
        "DeScore training: stage 1 (cold start, BT on the <Reward> head) or, with stage: dual_rl, stage 2 (GRPO on "
        "the CoTs + BT on the head)",
        ("reward.cold_start:ColdStartConfig",), "reward.cold_start:run", _report_train,
        variants=Variants("stage", "cold_start", {"dual_rl": Command(
            "DeScore stage 2 (dual-objective RL): GRPO on the CoTs + BT on the <Reward> head",
            ("reward.dual_rl_config:DualRlConfig",), "reward.dual_rl:run", _report_dual_rl)})),
    ("reward", "score"): Command(
        "Score videos with a DeScore checkpoint (CoT or --no-cot) or any registry reward (--reward)",
        ("reward.jobs:ScoreConfig",), "reward.jobs:run_score", _report_score),
    ("reward", "export"): Command(
        "Export a merged checkpoint: HF/vLLM backbone + DeScore head and manifest",
        ("reward.jobs:ExportConfig",), "reward.jobs:run_export", lambda path: f"wrote {path}"),
    ("reward", "calibrate"): Command(
        "Score a reference set with one reward and write its calibration stats (mean, std, quantiles)",
        ("reward.calibrate_job:CalibrateConfig",), "reward.calibrate_job:run_calibrate", _report_calibration),
    ("reward", "collect-cot"): Command(
        "Write a CoT per video of a preference file (stage-1 input) with an instruct model or a checkpoint, HF or vLLM",
        ("reward.collect_cot:CollectCotConfig",), "reward.collect_cot:run_collect_cot", _report_collect),
    ("reward", "import-official"): Command(
        "Import an official DeScore checkpoint (stage 1 LoRA or stage 2 weights) as a merged DeScore checkpoint",
        ("reward.official_import:ImportOfficialConfig",), "reward.official_import:run_import_official",
        lambda path: f"wrote {path}"),
    ("reward", "serve"): Command(
        "Serve a reward model over HTTP for RL jobs on other GPUs or nodes: batching, limits, token, /metrics",
        ("reward.server:ServeConfig",), "reward.server:run_serve"),
    ("reward", "plan"): Command(
        "Estimate peak memory and step times of DeScore stage-1 training and no-CoT scoring on a GPU class",
        ("reward.planner:RewardPlanConfig",), "reward.planner:run_reward_plan", _report_reward_plan,
        ignores=("reward.cold_start:ColdStartConfig",)),
    ("tune", "grpo"): Command(
        "GRPO on flow matching (Flow-GRPO / DanceGRPO / LongCat variants) with any reward model",
        (_POLICY, _RUN, _GRPO, _EVAL), "generator_rl.grpo:run_grpo", _report_tuning),
    ("tune", "flow-dpo"): Command(
        "Flow-DPO on reward-ranked pairs (offline or online) or on given pairs (--pairs)",
        (_POLICY, _RUN, _FLOW_DPO, _EVAL), "generator_rl.flow_dpo:run_flow_dpo", _report_tuning),
    ("tune", "sample"): Command(
        "Sample videos from the base model or a LoRA with fixed per-prompt seeds",
        (_POLICY, "generator_rl.sample:SampleConfig"), "generator_rl.sample:run_sample",
        _report_sample, ignores=(_RUN, _GRPO, _FLOW_DPO, _EVAL), flag_only=("output_dir",)),
    ("tune", "doctor"): Command(
        "A few tiny GRPO steps: log-prob parity, ratio == 1, reward rises",
        (_POLICY, _RUN, _GRPO, "generator_rl.doctor:DoctorConfig"), "generator_rl.doctor:run_doctor", str,
        ignores=(_EVAL,)),
    ("tune", "plan"): Command(
        "Estimate peak memory per GPU and step times of a recipe on a GPU class; rank the settings that fit",
        (_POLICY, _GRPO, _PLAN), "generator_rl.plan_job:run_plan", _report_plan, ignores=(_RUN, _EVAL),
        variants=Variants("algorithm", "grpo", {"flow-dpo": Command(
            "Plan a Flow-DPO recipe", (_POLICY, _FLOW_DPO, _PLAN), "generator_rl.plan_job:run_plan", _report_plan,
            ignores=(_RUN, _EVAL))}, recognised_by={"flow-dpo": ("samples_per_prompt", "pair_mode")})),
    ("bench", "reward-acc"): Command(
        "Preference accuracy of several reward models on one benchmark (with / without ties), cached and resumable",
        ("benchmarks.reward_accuracy:RewardAccuracyConfig",), "benchmarks.reward_accuracy:run_reward_accuracy",
        lambda report: f"{report.table}\n\nwrote {report.output_dir / 'results.json'}, results.md, results.png"),
    ("bench", "vbench"): Command(
        "VBench's quality dimensions of a folder of videos (our implementation or the official package), resumable",
        ("benchmarks.vbench.job:VBenchConfig",), "benchmarks.vbench.job:run_vbench", _report_vbench),
    ("bench", "compare"): Command(
        "Base vs tuned LoRAs on a prompt suite: rewards and VBench, paired deltas with bootstrap CIs, report",
        (_POLICY, "benchmarks.compare:CompareConfig"), "benchmarks.compare:run_compare", _report_comparison),
    ("bench", "ablate"): Command(
        "Train one LoRA per reward (GRPO / Flow-DPO, same recipe), compare them all, flag reward hacking",
        ("benchmarks.ablate:AblateConfig", "benchmarks.compare:CompareConfig"), "benchmarks.ablate:run_ablate",
        _report_comparison),
    ("demo",): Command(
        "Tiny end-to-end run on CPU (tiny models, synthetic data, training, scoring)",
        ("benchmarks.demo:DemoConfig",), "benchmarks.demo:run_demo", str),
}
