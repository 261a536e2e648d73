"""``descore demo`` — the embedded default job: everything on tiny models, on CPU, in a few minutes.

Reward side:
1. build a tiny random-weight Qwen3-VL (real architecture, locally trained tokenizer) with ``save_pretrained``;
2. write a synthetic preference set with a known answer (real mp4 files) for training and for evaluation;
3. train DeScore stage 1 with ``configs/reward/tiny_cold_start.yaml`` — the same code as the 8B recipe;
4. score the held-out pairs with the trained checkpoint, with the CoT and without, and report accuracy.

Generator side:
5. build a tiny random-weight Wan-2.1 pipeline and a prompt file;
6. GRPO with ``configs/generator/tiny_grpo.yaml`` (temporal-smoothness sanity reward + the tiny DeScore of
   step 3 in its no-CoT mode, plugged in from the registry unchanged);
7. Flow-DPO with ``configs/generator/tiny_flow_dpo.yaml``;
8. sample base and tuned videos with the same seeds and report the sanity reward of each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from generator_rl.config import PolicyConfig, RunConfig
from generator_rl.flow_dpo import FlowDpoConfig, run_flow_dpo
from generator_rl.grpo import GrpoConfig, run_grpo
from generator_rl.sample import SampleConfig, run_sample
from generator_rl.tiny_wan import save_tiny_wan
from reward import build_reward
from reward.cold_start import ColdStartConfig, run
from reward.errors import ConfigError
from reward.jobs import ScoreConfig, run_score
from reward.tiny_models import save_tiny_vlm

from .synthetic import make_preference_set

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PROMPTS = (
    "a red square moving left", "a blue ball bouncing", "a dog running on the beach", "a cat on a sofa",
    "a car driving fast at night", "waves in slow motion", "a bird flying over water", "the sky at sunset",
)


@dataclass
class DemoConfig:
    output_dir: str = field(default="runs/demo", metadata={"help": "Where models, data and runs are written."})
    train_pairs: int = field(default=64, metadata={"help": "Synthetic training pairs."})
    eval_pairs: int = field(default=32, metadata={"help": "Synthetic held-out pairs."})
    configs: str = field(default=str(CONFIGS), metadata={"help": "Folder of the recipes (a source checkout's configs/)."})
    report_to: str = field(default="wandb", metadata={"help": "Tracker of the training runs (wandb runs offline)."})


def _parse(types: list, recipe: Path, overrides: dict[str, object]) -> tuple:
    from trl import TrlParser

    if not recipe.is_file():
        raise ConfigError(f"recipe {recipe} not found; run from a source checkout or pass --configs PATH")
    argv = ["--config", str(recipe)]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    return TrlParser(types).parse_args_and_config(argv)


def run_demo(config: DemoConfig) -> str:
    root, configs = Path(config.output_dir), Path(config.configs)
    lines = _reward_part(root, configs, config)
    lines += _generator_part(root, configs, config)
    return "\n".join(lines)


def _reward_part(root: Path, configs: Path, config: DemoConfig) -> list[str]:
    model_dir = save_tiny_vlm(root / "tiny-qwen3-vl", "qwen3_vl")
    train = make_preference_set(root / "data", pairs=config.train_pairs, seed=0, file_name="train.csv")
    held_out = make_preference_set(root / "data", pairs=config.eval_pairs, seed=1, file_name="eval.csv")
    run_dir = root / "cold_start"
    (training,) = _parse([ColdStartConfig], configs / "reward" / "tiny_cold_start.yaml", {
        "model_name_or_path": model_dir, "train_data": train, "eval_data": held_out, "output_dir": run_dir,
        "report_to": config.report_to,
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


def _generator_part(root: Path, configs: Path, config: DemoConfig) -> list[str]:
    wan = save_tiny_wan(root / "tiny-wan")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    descore = f"name=descore_no_cot,path={root / 'cold_start' / 'final'},weight=0.01,device=cpu"
    common = {"model": wan, "prompts": prompts, "report_to": config.report_to}
    policy, run_args, grpo = _parse([PolicyConfig, RunConfig, GrpoConfig], configs / "generator" / "tiny_grpo.yaml",
                                    common | {"output_dir": root / "grpo"})
    grpo.rewards.append(type(grpo.rewards[0])(descore))
    grpo_result = run_grpo(policy, run_args, grpo)
    _, dpo_run, dpo = _parse([PolicyConfig, RunConfig, FlowDpoConfig], configs / "generator" / "tiny_flow_dpo.yaml",
                             common | {"output_dir": root / "flow_dpo"})
    dpo_result = run_flow_dpo(policy, dpo_run, dpo)
    smoothness = build_reward({"name": "temporal_smoothness"})
    scores = {}
    for name, lora in (("base", None), ("grpo", str(grpo_result.final)), ("flow_dpo", str(dpo_result.final))):
        videos = run_sample(policy, SampleConfig(prompts=str(prompts), output_dir=str(root / "samples" / name), lora=lora,
                                                    seed=10_000, videos_per_prompt=2, device="cpu"))
        scores[name] = float(smoothness.score(videos, [""] * len(videos)).rewards.mean())
    history, dpo_history = grpo_result.reward_history, dpo_result.history
    finished = "{} already holds this finished run (resumed: nothing left to train)"
    return [
        f"[generator] GRPO mean reward (smoothness + 0.01 x tiny DeScore): step 1 {history[0]:.4f} -> step {len(history)} {history[-1]:.4f}"
        if history else "[generator] GRPO: " + finished.format(root / "grpo"),
        f"[generator] Flow-DPO final implicit accuracy {dpo_history[-1]['train/implicit_accuracy']:.2f}"
        if dpo_history else "[generator] Flow-DPO: " + finished.format(root / "flow_dpo"),
        f"[generator] temporal smoothness of new samples ({len(PROMPTS)} prompts x 2, same seeds): "
        + ", ".join(f"{name} {value:.4f}" for name, value in scores.items()),
    ]
