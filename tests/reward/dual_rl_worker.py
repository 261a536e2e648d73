"""Tiny stage-2 inputs for the tests, and the subprocess they launch.

``write_rl_pairs`` writes preference pairs with per-video ground-truth sub-scores; ``save_tiny_stage1`` a merged
tiny DeScore checkpoint with a short judge template and an end token made likely enough that rollout lengths
vary within a group (so a length reward has something to teach).

Usage (by test_dual_rl_runs.py, alone or under torchrun):
    dual_rl_worker.py train CONFIG_JSON          run stage 2 with DualRlConfig(**CONFIG_JSON)
    dual_rl_worker.py advantages CONFIG_JSON OUT one step's rollouts and advantages -> OUT/rank<r>.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.synthetic import make_preference_set  # noqa: E402
from reward.modeling import DeScoreModel, LoraSettings, multimodal_core, save_descore  # noqa: E402
from reward.video import VideoSpec  # noqa: E402

SHORT_TEMPLATE = "Judge <video> for: {prompt}"
TINY = {
    "torch_dtype": "float32", "bf16": False, "activation_checkpointing": False, "report_to": "none",
    "video_min_frames": 4, "video_max_frames": 8, "video_min_pixels": 1024, "video_max_pixels": 4096,
    "length_form": "paper_tokens", "length_min": 0, "length_max": 8, "max_new_tokens": 8,
}


def write_rl_pairs(directory: Path, *, pairs: int, seed: int, name: str) -> Path:
    """Synthetic visual pairs (clean vs noisy square) with scores_a / scores_b: the clean video's truth is 2/2."""
    return make_preference_set(directory, pairs=pairs, task="visual", seed=seed, file_name=f"{name}.csv",
                               frames=4, size=(32, 32), fps=2.0)


def save_tiny_stage1(backbone_dir: Path, output: Path, *, end_boost: float = 10.0) -> Path:
    """A merged tiny DeScore checkpoint: random stage-1 LoRA merged in, short judge template, and the end
    token's LM-head row moved towards the mean prompt hidden state so that p(end) is a few percent per token."""
    torch.manual_seed(0)
    spec = VideoSpec(fps=2.0, min_frames=4, max_frames=8, min_pixels=1024, max_pixels=4096, pixel_factor=32)
    model = DeScoreModel.from_base(str(backbone_dir), video_spec=spec, lora=LoraSettings(r=4, alpha=8),
                                   judge_template=SHORT_TEMPLATE).merge_lora_()
    end = model.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    text = model.processor.tokenizer(SHORT_TEMPLATE.replace("<video>", "").format(prompt="a red square"),
                                     return_tensors="pt")
    with torch.no_grad():
        hidden = multimodal_core(model.backbone)(**text).last_hidden_state[0].mean(dim=0)
        model.backbone.get_output_embeddings().weight[end] += end_boost * hidden / hidden.norm() ** 2
    return save_descore(model, output)


def _advantages(config, output: Path) -> None:
    from accelerate import Accelerator

    from reward.dual_rl import collect_rollouts, load_pairs, step_pairs
    from reward.dual_rl_policy import load_policy, suppressed_token_ids
    from reward.dual_rl_update import gathered_advantages
    from reward.generation import build_backend

    accelerator = Accelerator(cpu=True)
    pairs = load_pairs(config.train_data, config, need_truth=True).pairs
    policy = load_policy(config, accelerator.device)
    backend = build_backend(config.rollout_settings(), model=policy.model, device=accelerator.device,
                            suppress_token_ids=suppressed_token_ids(policy.model))
    mine = step_pairs(config, pairs, step=0, rank=accelerator.process_index, processes=accelerator.num_processes)
    policy.model.eval()
    rollouts = collect_rollouts(config, policy, backend, mine, step=0)
    advantages = gathered_advantages(accelerator, rollouts).tolist()
    rows = [{"video": video.video_id, "rollout": index, "tokens": list(g.token_ids), "reward": r.total}
            for video in rollouts for index, (g, r) in enumerate(zip(video.generations, video.rewards))]
    for row, advantage in zip(rows, advantages):
        row["advantage"] = advantage
    (output / f"rank{accelerator.process_index}.json").write_text(json.dumps(rows))


if __name__ == "__main__":
    from reward.dual_rl import run
    from reward.dual_rl_config import DualRlConfig

    mode, values = sys.argv[1], json.loads(sys.argv[2])
    config = DualRlConfig(**values)
    if mode == "train":
        result = run(config)
        print(json.dumps({"history": result.reward_history, "resumed_from_step": result.resumed_from_step}))
    else:
        _advantages(config, Path(sys.argv[3]))


def fit_head(checkpoint: Path, pairs_csv: Path, output: Path) -> Path:
    """``checkpoint`` with its head set to the difference of the mean no-CoT ``<Reward>`` states of the
    preferred and the rejected videos of ``pairs_csv``: a stage-1-like head that separates clean from noisy."""
    from reward.data import read_preferences
    from reward.inputs import encode, scoring_text
    from reward.prompts import judge_text
    from reward.video import load_video

    model = DeScoreModel.from_pretrained(checkpoint, dtype="float32")
    states = {1: [], -1: []}
    core = multimodal_core(model.backbone)
    for pair in read_preferences(pairs_csv).pairs:
        judge = judge_text(pair.prompt, template=model.judge_template)
        text = scoring_text(model.processor, judge, None, placement=model.cot_placement, reward_token=model.reward_token)
        for sign, path in ((pair.label, pair.video_a), (-pair.label, pair.video_b)):
            batch = encode(model.processor, [text], [load_video(path, model.video_spec)])
            with torch.no_grad():
                hidden = core(**batch).last_hidden_state[0]
            states[sign].append(hidden[batch["input_ids"][0] == model.reward_token_id][0])
    direction = torch.stack(states[1]).mean(0) - torch.stack(states[-1]).mean(0)
    with torch.no_grad():
        model.head.weight.copy_((direction / direction.norm() ** 2 * 4.0)[None])
    return save_descore(model, output)
