"""Stage 2 on a tiny stage-1 checkpoint: one step end to end, the first ratio, "it learns", BT against head
drift, kill + resume bit for bit, two processes drawing the advantages one process draws."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import safetensors.torch
import torch

from reward.dual_rl import run
from reward.dual_rl_config import DualRlConfig
from reward.errors import ConfigError
from reward.modeling import DeScoreModel

from .dual_rl_worker import TINY, save_tiny_stage1, write_rl_pairs
from .helpers import REPO_ROOT

WORKER = Path(__file__).with_name("dual_rl_worker.py")


@pytest.fixture(scope="module")
def stage1(tiny_qwen3_vl_dir, tmp_path_factory) -> Path:
    return save_tiny_stage1(tiny_qwen3_vl_dir, tmp_path_factory.mktemp("stage1") / "ckpt")


@pytest.fixture(scope="module")
def rl_pairs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rl-pairs")
    return write_rl_pairs(root, pairs=8, seed=0, name="train"), write_rl_pairs(root, pairs=8, seed=1, name="eval")


def tiny_config(stage1: Path, train: Path, output_dir: Path, **overrides) -> DualRlConfig:
    values = {**TINY, "model_name_or_path": str(stage1), "train_data": str(train), "output_dir": str(output_dir),
              "pairs_per_step": 2, "pairs_per_update": 1, "micro_batch_pairs": 4, "num_generations": 4,
              "learning_rate": 1e-3, "weight_decay": 0.0, "max_steps": 1, "seed": 0, **overrides}
    return DualRlConfig(**values)


def test_one_step_trains_on_policy_and_exports_a_loadable_checkpoint(stage1, rl_pairs, tmp_path):
    train, _ = rl_pairs
    config = tiny_config(stage1, train, tmp_path / "run", num_generations=2, max_new_tokens=4)
    result = run(config)
    assert result.first_ratio == 1.0  # old log-probs come from the same forward as the first update's
    assert len(result.reward_history) == 1 and result.resumed_from_step is None
    assert (tmp_path / "run" / "checkpoints" / "step_1" / "trainable.safetensors").is_file()
    model = DeScoreModel.from_pretrained(result.final)
    assert model.training_info["stage"] == "dual_rl" and model.cot_placement == "assistant"
    assert model.video_spec.max_pixels == 4096
    before = DeScoreModel.from_pretrained(stage1)
    assert not torch.equal(model.head.weight, before.head.weight)  # BT reached the head
    changed = [name for (name, new), (_, old) in zip(model.backbone.named_parameters(), before.backbone.named_parameters())
               if not torch.equal(new, old)]
    assert changed and not any(".visual." in f".{name}" for name in changed)  # the LLM trains, the ViT is frozen
    # the same command again: everything is done, nothing retrains
    again = run(config)
    assert again.resumed_from_step == 1 and again.reward_history == []
    # another setting into the same folder is refused before any model loads
    with pytest.raises(ConfigError, match="learning_rate"):
        run(tiny_config(stage1, train, tmp_path / "run", num_generations=2, max_new_tokens=4, learning_rate=1e-2))


def test_lora_adaptation_uses_the_adapters_off_as_reference_and_exports_merged(stage1, rl_pairs, tmp_path):
    train, _ = rl_pairs
    result = run(tiny_config(stage1, train, tmp_path / "run", adaptation="lora", lora_rank=4, lora_alpha=8,
                             lora_dropout=0.0, num_generations=2, max_new_tokens=4, kl_coef=0.1))
    assert result.first_ratio == 1.0
    stored = safetensors.torch.load_file(tmp_path / "run" / "checkpoints" / "step_1" / "trainable.safetensors")
    assert "head.weight" in stored and all("lora_" in key or "trainable_tokens" in key
                                           for key in stored if key != "head.weight")
    model = DeScoreModel.from_pretrained(result.final)
    assert model.backbone_format == "merged" and model.training_info["adaptation"] == "lora"


def test_training_pairs_need_ground_truth(stage1, rl_pairs, tmp_path):
    train, _ = rl_pairs
    rows = list(csv.DictReader(train.open()))
    plain = tmp_path / "plain.csv"  # prompt, videos, label, CoTs: no scores_a / scores_b
    with plain.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[key for key in rows[0] if not key.startswith("scores_")],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**row, "video_a": str(train.parent / row["video_a"]),
                          "video_b": str(train.parent / row["video_b"])} for row in rows)
    with pytest.raises(ConfigError, match=r"no ground-truth sub-scores \(scores_a / scores_b\)"):
        run(tiny_config(stage1, plain, tmp_path / "run"))


@pytest.mark.slow
def test_mean_rollout_reward_rises(stage1, rl_pairs, tmp_path):
    """Length reward over 0-8 tokens (quality and format stay 0 for a random model): the tiny policy starts
    ending early in about half of its rollouts (mean reward 0.2 * 4.25 / 8 ~ 0.11) and learns not to."""
    train, _ = rl_pairs
    history = run(tiny_config(stage1, train, tmp_path / "run", max_steps=12, save_steps=12,
                              learning_rate=5e-5)).reward_history
    print("mean rollout reward per step:", [round(value, 4) for value in history])
    assert history[0] < 0.15 and sum(history[-4:]) / 4 > 0.19


@pytest.mark.slow
def test_bt_keeps_held_out_head_accuracy_that_grpo_alone_loses(stage1, rl_pairs, tmp_path):
    """A stage-1-like head (fitted to separate clean from noisy clips) under GRPO at a large learning rate with
    a 0-32 token length reward: without BT the LLM moves away under the fixed head and held-out accuracy falls;
    with BT the head and the LLM are pulled back to the preferences."""
    from accelerate import Accelerator

    from reward.dual_rl import evaluate, load_pairs
    from reward.dual_rl_policy import load_policy, suppressed_token_ids
    from reward.generation import build_backend

    from .dual_rl_worker import fit_head

    train, held_out = rl_pairs
    start = fit_head(stage1, train, tmp_path / "head")

    def config(bt_weight: float) -> DualRlConfig:
        return tiny_config(start, train, tmp_path / f"bt{bt_weight}", eval_data=str(held_out), bt_weight=bt_weight,
                           learning_rate=1e-2, max_steps=8, eval_steps=8, save_steps=8, length_max=32,
                           max_new_tokens=32)

    policy = load_policy(config(0.0), torch.device("cpu"))
    backend = build_backend(config(0.0).rollout_settings(), model=policy.model,
                            suppress_token_ids=suppressed_token_ids(policy.model))
    before = evaluate(config(0.0), policy, backend, Accelerator(cpu=True), load_pairs(str(held_out), config(0.0),
                                                                                      need_truth=False).pairs)
    grpo_only, with_bt = run(config(0.0)).eval_metrics, run(config(1.0)).eval_metrics
    print("held-out head accuracy (CoT / no CoT): start", before, "GRPO only", grpo_only, "GRPO + BT", with_bt)
    for key in ("eval/head_accuracy_cot", "eval/head_accuracy_no_cot"):
        assert grpo_only[key] <= before[key] - 0.25
        assert with_bt[key] >= before[key]


def _worker(mode: str, config: DualRlConfig, *extra: str, processes: int = 1, port: int = 29531
            ) -> subprocess.Popen:
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(port)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen([*launcher, str(WORKER), mode, json.dumps(asdict(config)), *extra], cwd=REPO_ROOT,
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-4000:]
    return out


def _final_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors |= {f"{file.name}:{key}": value for key, value in safetensors.torch.load_file(file).items()}
    return tensors


@pytest.mark.slow
def test_killed_and_resumed_run_ends_bit_identical(stage1, rl_pairs, tmp_path):
    train, _ = rl_pairs
    straight = tiny_config(stage1, train, tmp_path / "straight", max_steps=3)
    interrupted = tiny_config(stage1, train, tmp_path / "interrupted", max_steps=3)
    first = _worker("train", interrupted)
    checkpoint = tmp_path / "interrupted" / "checkpoints" / "step_1"
    while not checkpoint.is_dir():
        assert first.poll() is None, first.communicate()[1][-4000:]
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (tmp_path / "interrupted" / "final").exists()  # killed mid-run, after a checkpoint
    resumed = _worker("train", interrupted)
    _finished(_worker("train", straight))
    report = json.loads(_finished(resumed).strip().splitlines()[-1])
    assert report["resumed_from_step"] >= 1 and len(report["history"]) == 3 - report["resumed_from_step"]
    left, right = _final_tensors(tmp_path / "straight" / "final"), _final_tensors(tmp_path / "interrupted" / "final")
    assert left.keys() == right.keys() and all(torch.equal(left[key], right[key]) for key in left)


@pytest.mark.slow
def test_two_processes_draw_the_advantages_of_one(stage1, rl_pairs, tmp_path):
    train, _ = rl_pairs
    config = tiny_config(stage1, train, tmp_path / "unused", pairs_per_step=4, pairs_per_update=2)
    for processes, folder in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        folder.mkdir()
        _finished(_worker("advantages", config, str(folder), processes=processes))
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    two = [row for rank in (0, 1) for row in json.loads((tmp_path / "two" / f"rank{rank}.json").read_text())]
    assert {row["video"] for row in json.loads((tmp_path / "two" / "rank0.json").read_text())}.isdisjoint(
        row["video"] for row in json.loads((tmp_path / "two" / "rank1.json").read_text()))
    key = lambda row: (row["video"], row["rollout"])  # noqa: E731
    assert sorted(one, key=key) == sorted(two, key=key)
    assert len(one) == 4 * 2 * 4 and any(row["advantage"] != 0 for row in one)


@pytest.mark.slow
def test_two_processes_train_the_weights_one_process_trains(stage1, rl_pairs, tmp_path):
    """Gradients are summed over processes, each term divided by its global count: the same step on 2 processes
    gives the 1-process weights up to float summation order."""
    train, _ = rl_pairs
    for processes in (1, 2):
        config = tiny_config(stage1, train, tmp_path / f"p{processes}", pairs_per_step=4, pairs_per_update=2)
        _finished(_worker("train", config, processes=processes, port=29533))
    one, two = _final_tensors(tmp_path / "p1" / "final"), _final_tensors(tmp_path / "p2" / "final")
    start = _final_tensors(stage1)
    assert one.keys() == two.keys()
    assert any(not torch.equal(one[key], start[key]) for key in one if key in start)
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-5)
