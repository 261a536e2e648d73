"""DeScore stage-2 step time at Qwen3-VL-8B scale, with random-init weights (why random: see
``descore_stage1.py``; it also builds the backbone, processor and clips used here).

What is measured, with the stage-2 code itself (``reward/dual_rl_*.py``):
1. **Rollouts**: ``HfBackend.generate`` writing ``num_generations`` CoTs of exactly ``cot_tokens`` tokens for
   one video (end token masked until then) at temperature 1 → generated tokens/s.
2. **Old + reference log-probs** of one update's micro-batches (``fill_old_and_reference``).
3. **One optimizer update** (``train_update``): per micro-batch the policy forward (PPO-clip + k3 KL), the
   ``<Reward>`` forward (paired BT), backward; then the guarded, clipped AdamW step.
The synthetic rollouts are random token ids of ``cot_tokens`` tokens ending in the end token, so lengths are
fixed. From these, a full official step (128 pairs × 2 videos × 8 CoTs, 32 updates) is extrapolated on one GPU.

Adaptation: ``lora`` by default — full-LLM stage 2 holds float32 master weights and AdamW moments of 8.2 B
parameters plus the reference copy (~140 GB), more than one GPU; ``--adaptation full`` measures it where it fits.

Run::

    python -m benchmarks.gpu.descore_stage2 --json-out results/descore_stage2.json
    python -m benchmarks.gpu.descore_stage2 --tiny --device cpu      # CPU smoke test, a few seconds
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from transformers import HfArgumentParser

from reward.dual_rl_config import DualRlConfig
from reward.dual_rl_policy import load_policy, new_optimizer, pad_token_id, response_end_ids, suppressed_token_ids
from reward.dual_rl_rollout import PromptInputs, VideoRollouts
from reward.dual_rl_update import fill_old_and_reference, micro_batches, train_update
from reward.errors import ConfigError
from reward.generation import Generation, GenerationSettings, HfBackend
from reward.modeling import DeScoreModel, save_descore
from reward.prompts import judge_text
from reward.rollout_rewards import RolloutReward

from .descore_stage1 import FULL_SCALE, PROMPT, TINY_SCALE, save_random_backbone, synthetic_clip
from .harness import release_memory, timed

logger = logging.getLogger(__name__)


@dataclass
class Stage2BenchmarkConfig:
    device: str = field(default="cuda", metadata={"help": "Torch device to benchmark on."})
    tiny: bool = field(default=False, metadata={"help": "Tiny Qwen3-VL: a CPU smoke test of every path."})
    adaptation: str = field(default="lora", metadata={"help": "lora or full (full needs ~140 GB at 8B)."})
    num_generations: int = field(default=8, metadata={"help": "CoTs per video (official 8)."})
    cot_tokens: int | None = field(default=None, metadata={"help": "Tokens per CoT (default 1024; tiny 8)."})
    pairs_per_update: int = field(default=4, metadata={"help": "Pairs per optimizer update (official 4)."})
    micro_batch_pairs: int = field(default=1, metadata={"help": "Rollout pairs per forward (official 1)."})
    attn: str = field(default="sdpa", metadata={"help": "attn_implementation."})
    json_out: str | None = field(default=None, metadata={"help": "Also write the results to this JSON file."})
    scratch_dir: str | None = field(default=None, metadata={"help": "Folder for the random checkpoint (~18 GB)."})
    seed: int = field(default=0, metadata={"help": "Seed of weights, clips and token ids."})

    def __post_init__(self) -> None:
        self.cot_tokens = (8 if self.tiny else 1024) if self.cot_tokens is None else self.cot_tokens
        if self.adaptation not in ("lora", "full"):
            raise ConfigError(f"adaptation must be lora or full, got {self.adaptation!r}")
        if torch.device(self.device).type != "cuda" and not self.tiny:
            raise ConfigError("the 8B scale needs a GPU; on CPU pass --tiny")


def synthetic_rollouts(model: DeScoreModel, clips: list, *, generations: int, tokens: int,
                       rng: np.random.Generator) -> list[VideoRollouts]:
    """Rollouts of random ids (no special tokens) of ``tokens`` tokens, the last one an end token."""
    end = response_end_ids(model)[0]
    vocabulary = len(model.processor.tokenizer.get_vocab()) - 10
    rollouts = []
    for index, clip in enumerate(clips):
        prompt = PromptInputs.encode(model.processor, judge_text(PROMPT, template=model.judge_template), clip)
        rows = [(*rng.integers(10, vocabulary, size=tokens - 1).tolist(), end) for _ in range(generations)]
        rollouts.append(VideoRollouts(index, prompt, [Generation("", row, len(prompt.input_ids), False) for row in rows],
                                      [RolloutReward(float(i % 3), 0.0, 0.0, 0.0, False) for i in range(generations)]))
    return rollouts


def run(config: Stage2BenchmarkConfig) -> dict:
    device, scale = torch.device(config.device), TINY_SCALE if config.tiny else FULL_SCALE
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    results: dict = {"scale": scale.name, "adaptation": config.adaptation, "cot_tokens": config.cot_tokens}
    rng = np.random.default_rng(config.seed)
    with tempfile.TemporaryDirectory(prefix="descore-stage2-", dir=config.scratch_dir) as scratch:
        backbone = save_random_backbone(Path(scratch) / "backbone", scale, device=device, dtype=dtype)
        stage1 = DeScoreModel.from_base(str(backbone), video_spec=scale.video_spec, dtype=dtype)
        save_descore(stage1, Path(scratch) / "stage1")
        del stage1
        release_memory(device)
        dual = DualRlConfig(
            train_data="unused.csv", model_name_or_path=str(Path(scratch) / "stage1"), output_dir=scratch,
            torch_dtype="bfloat16" if dtype == torch.bfloat16 else "float32", bf16=device.type == "cuda",
            attn_implementation=config.attn, adaptation=config.adaptation, pairs_per_step=config.pairs_per_update,
            pairs_per_update=config.pairs_per_update, micro_batch_pairs=config.micro_batch_pairs,
            num_generations=config.num_generations, max_new_tokens=config.cot_tokens,
            video_min_pixels=scale.video_spec.min_pixels, video_max_pixels=scale.video_spec.max_pixels,
            video_min_frames=scale.video_spec.min_frames, video_max_frames=scale.video_spec.max_frames,
        )
        policy = load_policy(dual, device)
        model = policy.model
        accelerator = Accelerator(mixed_precision="bf16" if dual.bf16 else "no", cpu=device.type != "cuda")
        optimizer = new_optimizer(dual, policy)
        clips = [synthetic_clip(rng, scale, name=f"clip{i}") for i in range(2 * config.pairs_per_update)]
        # 1. rollouts of one video, forced to cot_tokens new tokens
        backend = HfBackend(model.backbone, model.processor, device=device, suppress_token_ids=suppressed_token_ids(model))
        model.backbone.generation_config.min_new_tokens = config.cot_tokens
        settings = GenerationSettings(max_new_tokens=config.cot_tokens, temperature=1.0, top_p=1.0,
                                      repetition_penalty=1.0)
        judge = judge_text(PROMPT, template=model.judge_template)
        model.eval()
        _, seconds = timed(lambda: backend.generate([judge], clips[:1], settings=settings,
                                                    num_generations=config.num_generations, seed=0), device)
        model.train()
        results["rollout_s_per_video"] = seconds
        results["rollout_tok_per_s"] = config.num_generations * config.cot_tokens / seconds
        # 2-3. one update on synthetic rollouts
        rollouts = synthetic_rollouts(model, clips, generations=config.num_generations, tokens=config.cot_tokens, rng=rng)
        advantages = torch.randn(len(rollouts) * config.num_generations)
        labels = [1 if pair % 2 == 0 else -1 for pair in range(len(rollouts) // 2)]
        (batches,) = micro_batches(dual, rollouts, advantages, labels,
                                   reward_token_id=model.reward_token_id, end_ids=response_end_ids(model),
                                   pad_token_id=pad_token_id(model))
        _, results["old_and_reference_s"] = timed(lambda: fill_old_and_reference(dual, policy, accelerator, [batches]),
                                                  device)
        (_, applied), results["update_s"] = timed(lambda: train_update(dual, policy, optimizer, accelerator, batches),
                                                  device)
        results["update_applied"] = applied
        if device.type == "cuda":
            results["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    updates, videos = 128 // config.pairs_per_update, 256
    results["official_step_estimate_s"] = (videos * results["rollout_s_per_video"]
                                           + updates * (results["old_and_reference_s"] + results["update_s"]))
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (config,) = HfArgumentParser(Stage2BenchmarkConfig).parse_args_into_dataclasses(args=argv)
    results = run(config)
    text = json.dumps({**results, "config": asdict(config)}, indent=2)
    if config.json_out:
        Path(config.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(config.json_out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
