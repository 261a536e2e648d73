"""GPU check of DeScore stage 1 end to end: the tiny recipe trained in bf16 on CUDA, then scored on CUDA.

Not a speed benchmark (``descore_stage1.py`` is): it proves the GPU code path — bf16 weights under the
Trainer's autocast, the float32 head, device placement of batches, HF ``generate`` for CoTs — trains and
scores as on CPU. The recipe is ``configs/reward/tiny_cold_start.yaml`` with only the device and dtype changed.

    python -m benchmarks.gpu.stage1_cuda_check --json-out results/stage1_cuda_check.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from benchmarks.synthetic import make_preference_set
from reward.cold_start import ColdStartConfig, run
from reward.data import read_preferences
from reward.generation import GenerationSettings
from reward.scoring import DeScoreReward
from reward.tiny_models import save_tiny_vlm

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "reward" / "tiny_cold_start.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("this check needs a CUDA device")
    root = Path(tempfile.mkdtemp(prefix="stage1-cuda-"))
    model_dir = save_tiny_vlm(root / "tiny-qwen3-vl", "qwen3_vl")
    train = make_preference_set(root / "data", pairs=64, seed=0, file_name="train.csv")
    held_out = make_preference_set(root / "data", pairs=32, seed=1, file_name="eval.csv")
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe |= {
        "model_name_or_path": str(model_dir),
        "train_data": str(train),
        "eval_data": str(held_out),
        "output_dir": str(root / "run"),
        "torch_dtype": "bfloat16",
        "bf16": True,
        "use_cpu": False,
        "report_to": "none",
        "disable_tqdm": True,
    }
    metrics = run(ColdStartConfig(**recipe))
    pairs = read_preferences(held_out).pairs
    videos = [path for pair in pairs for path in (pair.video_a, pair.video_b)]
    prompts = [pair.prompt for pair in pairs for _ in range(2)]
    fast = DeScoreReward(root / "run" / "final", use_cot=False, device="cuda", batch_size=16)
    rewards = fast.score(videos, prompts).rewards.view(-1, 2)
    labels = torch.tensor([pair.label for pair in pairs])
    no_cot_accuracy = ((rewards[:, 0] - rewards[:, 1]) * labels > 0).float().mean().item()
    thinker = DeScoreReward(
        root / "run" / "final", use_cot=True, device="cuda", batch_size=8, generation=GenerationSettings(max_new_tokens=16)
    )
    thought = thinker.score(videos[:8], prompts[:8])
    result = {
        "machine": torch.cuda.get_device_name(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__},
        "trainer_metrics": metrics,
        "scorer_no_cot_accuracy": no_cot_accuracy,
        "scorer_dtype": str(next(fast.model.backbone.parameters()).dtype),
        "cot_mode_rewards_finite": bool(torch.isfinite(thought.rewards).all()),
        "cot_lengths_chars": [len(item.cot) for item in thought.items],
    }
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
