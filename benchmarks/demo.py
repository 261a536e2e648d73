"""``descore demo`` — the embedded default job: everything on tiny models, on CPU, in a few minutes.

It runs the shipped tiny recipes (``descore.recipes``), whose models are ``tiny:`` sources: tiny random-weight
models of the real architectures, built once into the cache (``reward/model_source.py``) and loaded by the same
``from_pretrained`` code as real weights.

Reward side:
1. write a synthetic preference set with a known answer (real mp4 files) for training and for evaluation;
2. train DeScore stage 1 with the ``tiny_cold_start`` recipe (``tiny:qwen3-vl``) — the same code as the 8B recipe;
3. score the held-out pairs with the trained checkpoint, with the CoT and without, and report accuracy.

Generator side:
4. GRPO with the ``tiny_grpo`` recipe (``tiny:wan``, ``tiny:prompts``; temporal-smoothness sanity reward + the
   tiny DeScore of step 2 in its no-CoT mode, plugged in from the registry unchanged);
5. Flow-DPO with the ``tiny_flow_dpo`` recipe;
6. print the reward curves as sparklines and save them as ``curves.png``.

Measuring the gain (``descore bench``):
7. ``bench compare`` (the ``tiny_compare`` recipe): base, GRPO and Flow-DPO sampled with the same seeds, measured
   with sanity rewards and five VBench dimensions through the harness, with random-weight extractors written in
   VBench's own file layout (dynamic degree is left out: torchvision's RAFT needs frames of 128 px, the tiny Wan
   writes 32); paired deltas with bootstrap intervals, report.md / report.html / report.json and plots;
8. ``bench ablate`` (the ``tiny_ablate`` recipe): GRPO and Flow-DPO trained on two sanity rewards, compared, with
   the cross-evaluation matrix and the reward-hacking flags.
Both reports say on their first line that they are a smoke run: tiny random-weight models measure nothing.

Every run resumes, so the demo run again in the same folder finishes at once and prints the same report: the
curves are read back from what the runs wrote (GRPO's ``rollouts.jsonl``, the demo's ``flow_dpo_metrics.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from descore.recipes import resolve_recipe
from generator_rl.config import PolicyConfig, RunConfig, read_prompts
from generator_rl.flow_dpo import FlowDpoConfig, run_flow_dpo
from generator_rl.grpo import GrpoConfig, run_grpo
from reward.checkpoint import atomic_file
from reward.cold_start import ColdStartConfig, run
from reward.jobs import ScoreConfig, run_score

from .ablate import AblateConfig, run_ablate
from .compare import CompareConfig, run_compare
from .curves import Curve, curve_line, grpo_reward_curve, plot_curves
from .report import summary_table
from .synthetic import make_preference_set

FLOW_DPO_METRICS = "flow_dpo_metrics.json"
CURVES_PNG = "curves.png"
SMOKE_NOTE = ("Smoke run: tiny random-weight models and random-weight VBench extractors (descore demo). It shows "
              "that every step runs; the numbers say nothing about video quality.")
DEMO_VBENCH = ["subject_consistency", "background_consistency", "aesthetic_quality", "imaging_quality",
               "temporal_flickering"]


@dataclass
class DemoConfig:
    output_dir: str = field(default="runs/demo", metadata={"help": "Where data, runs, samples and curves are written."})
    train_pairs: int = field(default=64, metadata={"help": "Synthetic training pairs."})
    eval_pairs: int = field(default=32, metadata={"help": "Synthetic held-out pairs."})
    report_to: str = field(default="wandb", metadata={"help": "Tracker of the training runs (wandb runs offline)."})


def _parse(types: list, recipe: str, overrides: dict[str, object]) -> tuple:
    """A shipped recipe through the CLI's parser (YAML defaults, ``overrides`` as flags)."""
    from trl import TrlParser

    argv = ["--config", str(resolve_recipe(recipe))]
    for key, value in overrides.items():
        argv += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return TrlParser(types).parse_args_and_config(argv)


def run_demo(config: DemoConfig) -> str:
    root = Path(config.output_dir)
    lines = _reward_part(root, config)
    generator_lines, policy, loras = _generator_part(root, config)
    lines += generator_lines
    lines += _bench_part(root, policy, loras)
    return "\n".join(lines)


def _reward_part(root: Path, config: DemoConfig) -> list[str]:
    train = make_preference_set(root / "data", pairs=config.train_pairs, seed=0, file_name="train.csv")
    held_out = make_preference_set(root / "data", pairs=config.eval_pairs, seed=1, file_name="eval.csv")
    run_dir = root / "cold_start"
    (training,) = _parse([ColdStartConfig], "tiny_cold_start", {
        "train_data": train, "eval_data": held_out, "output_dir": run_dir, "report_to": config.report_to,
    })
    run(training)
    lines = [f"[reward] trained DeScore stage 1 on {config.train_pairs} synthetic pairs: {run_dir / 'final'}",
             "[reward] held-out pairwise accuracy:"]
    for label, flags in (("with CoT (pre-collected)", {"cot_source": "data"}), ("without CoT (fast mode)", {"cot": False})):
        summary = run_score(ScoreConfig(
            model=str(run_dir / "final"), data=str(held_out),
            output=str(root / f"scores_{'cot' if flags.get('cot', True) else 'no_cot'}.jsonl"), device="cpu", **flags,
        ))
        lines.append(f"           {label:<26} {summary.accuracy:.3f} over {summary.decided_pairs} pairs")
    return lines


def _generator_part(root: Path, config: DemoConfig) -> tuple[list[str], PolicyConfig, dict[str, str]]:
    descore = f"name=descore_no_cot,path={root / 'cold_start' / 'final'},weight=0.01,device=cpu"
    policy, grpo_run, grpo = _parse([PolicyConfig, RunConfig, GrpoConfig], "tiny_grpo",
                                    {"output_dir": root / "grpo", "report_to": config.report_to})
    grpo.rewards.append(type(grpo.rewards[0])(descore))
    grpo_final = _final_lora(run_grpo(policy, grpo_run, grpo))
    _, dpo_run, dpo = _parse([PolicyConfig, RunConfig, FlowDpoConfig], "tiny_flow_dpo",
                             {"output_dir": root / "flow_dpo", "report_to": config.report_to})
    dpo_result = run_flow_dpo(policy, dpo_run, dpo)
    dpo_final, dpo_history = _final_lora(dpo_result), _step_metrics(dpo_result)
    curves = {"GRPO mean reward": grpo_reward_curve(root / "grpo" / "rollouts.jsonl")}
    curves |= _flow_dpo_curves(root / FLOW_DPO_METRICS, dpo_history, max_steps=dpo_run.max_steps)
    plot_curves(root / CURVES_PNG, curves)
    width = max(len(label) for label in curves)
    lines = [
        "[generator] reward curves (smoothness + 0.01 x tiny DeScore for GRPO):",
        *(f"            {curve_line(label.ljust(width), curve)}" for label, curve in curves.items()),
        f"            plotted in {root / CURVES_PNG}",
    ]
    return lines, policy, {"grpo": grpo_final, "flow_dpo": dpo_final}


def _bench_part(root: Path, policy: PolicyConfig, loras: dict[str, str]) -> list[str]:
    """Base vs the two tuned LoRAs (sampled with the training recipe's policy settings), then the ablation."""
    from reward.model_source import build_once

    from .vbench.weights import write_random_weights

    weights = build_once((root / "vbench_weights").absolute(), lambda folder: write_random_weights(folder, size="tiny"))
    _, compare = _parse([PolicyConfig, CompareConfig], "tiny_compare", {
        "loras": list(loras.values()), "labels": list(loras), "output_dir": root / "compare",
        "vbench_dimensions": DEMO_VBENCH, "vbench_weights": weights, "note": SMOKE_NOTE})
    comparison = run_compare(policy, compare)
    ablate, ablate_compare = _parse([AblateConfig, CompareConfig], "tiny_ablate",
                                    {"output_dir": root / "ablate", "note": SMOKE_NOTE})
    ablation = run_ablate(ablate, ablate_compare)
    flagged = sorted(model for model, fell in ablation.comparison.hacking.items() if fell)
    return [
        f"[bench] base vs tuned ({len(read_prompts(compare.prompts))} prompts x {compare.videos_per_prompt} seeds; smoke "
        "run: random-weight models and VBench extractors), delta [95% CI]:",
        *(f"        {line}" for line in summary_table(comparison.comparison).splitlines()),
        f"        report: {comparison.files.html}",
        f"[bench] reward ablation ({len(ablation.comparison.models) - 1} runs): reward hacking flagged for "
        f"{', '.join(flagged) if flagged else 'no run'}; report: {ablation.files.html}",
    ]


# The two readers of the jobs' results (run_grpo / run_flow_dpo), kept together.
def _final_lora(result: Any) -> str:
    """The final LoRA folder of a GRPO or Flow-DPO run."""
    return str(result.final)


def _step_metrics(flow_dpo_result: Any) -> list[dict[str, float]]:
    """Flow-DPO's metrics of each step trained in this call (none when a finished run is resumed)."""
    return flow_dpo_result.history


def _flow_dpo_curves(path: Path, history: list[dict[str, float]], *, max_steps: int) -> dict[str, Curve]:
    """Flow-DPO loss and implicit accuracy per step: the steps trained now (the last ``len(history)`` of
    ``max_steps``: a run that returns has trained to the end) over those an earlier demo run in this folder
    recorded in ``path``, which is rewritten. A resumed, finished run trains nothing and reads them all back."""
    recorded = {int(step): values for step, values in json.loads(path.read_text()).items()} if path.is_file() else {}
    first = max_steps - len(history)
    for offset, metrics in enumerate(history):
        recorded[first + offset] = {
            "loss": metrics["train/loss"], "implicit_accuracy": metrics["train/implicit_accuracy"],
        }
    with atomic_file(path) as handle:
        json.dump({str(step): recorded[step] for step in sorted(recorded)}, handle, indent=1)
    steps = sorted(recorded)
    return {
        "Flow-DPO loss": [(step, float(recorded[step]["loss"])) for step in steps],
        "Flow-DPO implicit accuracy": [(step, float(recorded[step]["implicit_accuracy"])) for step in steps],
    }
