"""``descore demo`` — the embedded default job: everything on tiny models, on CPU, in a few minutes.

1. build a tiny random-weight Qwen3-VL (real architecture, locally trained tokenizer) with ``save_pretrained``;
2. write a synthetic preference set with a known answer (real mp4 files) for training and for evaluation;
3. train DeScore stage 1 with ``configs/reward/tiny_cold_start.yaml`` — the same code as the 8B recipe;
4. score the held-out pairs with the trained checkpoint, with the CoT and without, and report accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reward.cold_start import ColdStartConfig, run
from reward.errors import ConfigError
from reward.jobs import ScoreConfig, run_score
from reward.tiny_models import save_tiny_vlm

from .synthetic import make_preference_set

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "reward" / "tiny_cold_start.yaml"


@dataclass
class DemoConfig:
    output_dir: str = field(default="runs/demo", metadata={"help": "Where models, data and runs are written."})
    train_pairs: int = field(default=64, metadata={"help": "Synthetic training pairs."})
    eval_pairs: int = field(default=32, metadata={"help": "Synthetic held-out pairs."})
    recipe: str = field(default=str(RECIPE), metadata={"help": "Stage-1 recipe YAML used for training."})
    report_to: str = field(default="wandb", metadata={"help": "Tracker for the training run (wandb runs offline)."})


def run_demo(config: DemoConfig) -> str:
    from trl import TrlParser

    recipe = Path(config.recipe)
    if not recipe.is_file():
        raise ConfigError(f"recipe {recipe} not found; run from a source checkout or pass --recipe PATH")
    root = Path(config.output_dir)
    model_dir = save_tiny_vlm(root / "tiny-qwen3-vl", "qwen3_vl")
    train = make_preference_set(root / "data", pairs=config.train_pairs, seed=0, file_name="train.csv")
    held_out = make_preference_set(root / "data", pairs=config.eval_pairs, seed=1, file_name="eval.csv")
    run_dir = root / "cold_start"
    (training,) = TrlParser([ColdStartConfig]).parse_args_and_config([
        "--config", str(recipe),
        "--model_name_or_path", str(model_dir),
        "--train_data", str(train),
        "--eval_data", str(held_out),
        "--output_dir", str(run_dir),
        "--report_to", config.report_to,
    ])
    run(training)
    lines = [f"trained DeScore stage 1 on {config.train_pairs} synthetic pairs: {run_dir / 'final'}", "held-out pairwise accuracy:"]
    for label, flags in (("with CoT (pre-collected)", {"cot_source": "data"}), ("without CoT (fast mode)", {"cot": False})):
        summary = run_score(ScoreConfig(
            model=str(run_dir / "final"),
            data=str(held_out),
            output=str(root / f"scores_{'cot' if flags.get('cot', True) else 'no_cot'}.jsonl"),
            device="cpu",
            **flags,
        ))
        lines.append(f"  {label:<26} {summary.accuracy:.3f} over {summary.decided_pairs} pairs")
    return "\n".join(lines)
