"""HF vs vLLM on the same clips: identical prompt token counts, greedy CoT agreement, head rewards
(docs/descore_generation.md).

On the random-weight Qwen3-VL-8B-sized DeScore checkpoint of ``cot_throughput.py`` (or ``--tiny``), every clip
gets a greedy CoT from each backend. Reported: whether every prompt token count matched (the vLLM backend
raises otherwise, naming the video), the share of clips whose two CoTs are token-identical, the position of the
first differing token elsewhere, and the largest head-reward difference between scoring with the HF CoT and
with the vLLM CoT (zero wherever the CoTs agree: the head always runs in HF). bf16 kernels differ between the
engines, so greedy paths can part after many tokens; agreement is measured, not asserted.

Run::

    python -m benchmarks.gpu.cot_parity --json_out results/cot_parity.json
    python -m benchmarks.gpu.cot_parity --tiny --device cpu --backends hf     # CPU check: HF against itself
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import HfArgumentParser

from reward.generation import prompt_token_counts
from reward.prompts import judge_text
from reward.scoring import DeScoreReward

from .cot_throughput import CotBenchConfig, backend_for, build_checkpoint
from .descore_stage1 import PROMPT, synthetic_clip

logger = logging.getLogger(__name__)


def first_difference(a: tuple[int, ...], b: tuple[int, ...]) -> int | None:
    """Index of the first differing token (the shorter length if one is a prefix), None if equal."""
    if a == b:
        return None
    return next((index for index, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def run(config: CotBenchConfig) -> dict:
    device = torch.device(config.device)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    reference, other = config.backends[0], config.backends[-1]
    with tempfile.TemporaryDirectory(prefix="descore-parity-", dir=config.scratch_dir) as scratch:
        folder = build_checkpoint(Path(scratch), config)
        reward = DeScoreReward(folder, use_cot=True, device=device, dtype=config.dtype)
        clips = [synthetic_clip(rng, config.scale, name=f"random-clip-{i}") for i in range(config.batch_size)]
        judges = [judge_text(PROMPT, template=reward.model.judge_template)] * len(clips)
        written = {}
        for name in dict.fromkeys((reference, other)):
            backend, settings = backend_for(name, reward, folder, config)
            written[name] = [samples[0] for samples in backend.generate(judges, clips, settings=settings)]
        hf_counts = prompt_token_counts(reward.model.processor, judges, clips)
        a, b = written[reference], written[other]
        rewards_a = reward.head_rewards(judges, clips, [g.text for g in a])
        rewards_b = reward.head_rewards(judges, clips, [g.text for g in b])
    result = {
        "backends": [reference, other],
        "prompt_tokens_match": all(g.prompt_tokens == n for n, g in zip(hf_counts, a))
        and all(g.prompt_tokens == n for n, g in zip(hf_counts, b)),
        "cot_agreement": sum(x.token_ids == y.token_ids for x, y in zip(a, b)) / len(a),
        "first_difference": [first_difference(x.token_ids, y.token_ids) for x, y in zip(a, b)],
        "max_abs_reward_difference": float((rewards_a - rewards_b).abs().max()),
    }
    if config.json_out:
        Path(config.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(config.json_out).write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (config,) = HfArgumentParser(CotBenchConfig).parse_args_into_dataclasses(args=argv)
    result = run(config)
    print(json.dumps(result, indent=2))
    return 0 if result["prompt_tokens_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
