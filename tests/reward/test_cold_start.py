"""Stage 1 on the tiny Qwen3-VL: it learns, it reads the CoT, it resumes exactly, it survives bad data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from benchmarks.synthetic import make_preference_set
from reward.video import write_video
from reward.cold_start import run
from reward.errors import DataError
from reward.jobs import ScoreConfig, run_score
from reward.modeling import MANIFEST_NAME

from .helpers import tiny_config, truncated_clip


@pytest.fixture(scope="module")
def trained(tiny_qwen3_vl_dir, visual_pairs, tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """Stage 1 with the shipped tiny recipe on the visual task, logged to a real offline wandb run."""
    train, held_out = visual_pairs
    output_dir = tmp_path_factory.mktemp("stage1")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_DIR", str(output_dir))
        patch.setenv("WANDB_SILENT", "true")
        config = tiny_config(tiny_qwen3_vl_dir, train, output_dir, held_out, report_to="wandb")
        metrics = run(config)
    return output_dir, metrics


def test_stage1_learns_the_visual_task_with_and_without_cot(trained):
    """Known answer: the preferred clip is clean, the rejected one noisy. Held-out accuracy >= 0.9 both ways."""
    output_dir, metrics = trained
    assert metrics["eval_cot_accuracy"] >= 0.9
    assert metrics["eval_no_cot_accuracy"] >= 0.9
    assert metrics["eval_cot_decided_pairs"] == 32
    assert list((output_dir / "wandb").glob("offline-run-*/run-*.wandb")), "no offline wandb run was written"


def test_final_checkpoint_scores_held_out_pairs(trained, visual_pairs, tmp_path):
    """`descore reward score --model D/final --data E.csv`: same accuracy as the trainer's own evaluation."""
    output_dir, metrics = trained
    _, held_out = visual_pairs
    manifest = json.loads((output_dir / "final" / MANIFEST_NAME).read_text())
    assert manifest["backbone_format"] == "merged" and manifest["training"]["train_pairs"] == 64
    assert manifest["training"]["duplicate_pairs"] == manifest["training"]["contradictory_pairs"] == 0
    for flags, key in (({"cot_source": "data"}, "eval_cot_accuracy"), ({"cot": False}, "eval_no_cot_accuracy")):
        output = tmp_path / f"{key}.jsonl"
        summary = run_score(ScoreConfig(model=str(output_dir / "final"), data=str(held_out), output=str(output), device="cpu", **flags))
        assert summary.accuracy == pytest.approx(metrics[key])
        lines = [json.loads(line) for line in output.read_text().splitlines()]
        assert len(lines) == 64 and summary.scored == 64 and summary.failed == 0
        assert set(lines[0]) >= {"video", "prompt", "reward", "cot", "sub_scores", "parse_ok"}
        if flags.get("cot", True):
            assert all(line["parse_ok"] for line in lines) and lines[0]["sub_scores"]["camera"] == "N/A"
        else:
            assert all(line["cot"] is None and line["parse_ok"] is None for line in lines)


@pytest.mark.slow  # trains stage 1 twice: about 30 s on 2 cores
def test_head_reads_the_cot_when_only_the_cot_carries_the_answer(tiny_qwen3_vl_dir, tmp_path):
    """Both clips come from one distribution; only the CoTs say which is better. With the CoT the head is
    right; without it, it cannot be (chance is 0.5)."""
    train = make_preference_set(tmp_path / "data", pairs=48, task="cot_only", seed=3, file_name="train.csv")
    held_out = make_preference_set(tmp_path / "data", pairs=32, task="cot_only", seed=4, file_name="eval.csv")
    metrics = run(tiny_config(tiny_qwen3_vl_dir, train, tmp_path / "run", held_out))
    assert metrics["eval_cot_accuracy"] >= 0.9
    assert metrics["eval_no_cot_accuracy"] <= 0.7


class _StopAt(TrainerCallback):
    """Ends training right after ``step`` — as if the job had been killed once its checkpoint was written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def test_resumed_run_ends_with_the_same_weights(tiny_qwen3_vl_dir, visual_pairs, tmp_path):
    train, _ = visual_pairs
    settings = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "eval_strategy": "no", "merge_final": "false"}
    run(tiny_config(tiny_qwen3_vl_dir, train, tmp_path / "straight", **settings))
    interrupted = tiny_config(tiny_qwen3_vl_dir, train, tmp_path / "resumed", **settings)
    run(interrupted, callbacks=[_StopAt(2)])
    assert not (tmp_path / "resumed" / "checkpoint-4").exists()
    run(tiny_config(tiny_qwen3_vl_dir, train, tmp_path / "resumed", **settings))
    for name in ("adapter_model.safetensors", "reward_head.safetensors"):
        straight = load_file(tmp_path / "straight" / "final" / name)
        resumed = load_file(tmp_path / "resumed" / "final" / name)
        assert straight.keys() == resumed.keys()
        for key in straight:
            assert torch.equal(straight[key], resumed[key]), key
    state = json.loads((tmp_path / "resumed" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_corrupt_video_fails_loudly_or_is_skipped_and_counted(tiny_qwen3_vl_dir, visual_pairs, tmp_path):
    train, _ = visual_pairs
    rows = train.read_text().splitlines(keepends=True)
    broken = truncated_clip(tmp_path / "broken.mp4")
    data = tmp_path / "train.csv"
    # Point the first row's video_a at the truncated file; other rows keep their (absolute) videos.
    text = "".join(rows).replace("videos/0_0_a.mp4", str(broken), 1).replace("videos/", f"{train.parent}/videos/")
    data.write_text(text)
    with pytest.raises(DataError, match=r"line 2: video .*broken\.mp4"):
        run(tiny_config(tiny_qwen3_vl_dir, data, tmp_path / "strict", max_steps=1))
    run(tiny_config(tiny_qwen3_vl_dir, data, tmp_path / "lenient", max_steps=1, skip_invalid="true"))
    manifest = json.loads((tmp_path / "lenient" / "final" / MANIFEST_NAME).read_text())
    assert manifest["training"]["train_pairs"] == 63 and manifest["training"]["skipped_rows"] == 1


def test_score_skips_unreadable_videos_when_asked(trained, visual_pairs, tmp_path):
    output_dir, _ = trained
    train, _ = visual_pairs
    good = sorted((train.parent / "videos").glob("*.mp4"))[:2]
    broken = truncated_clip(tmp_path / "broken.mp4")
    videos = [str(good[0]), str(broken), str(tmp_path / "missing.mp4"), str(good[1])]
    config = ScoreConfig(model=str(output_dir / "final"), video=videos, prompt=["a red square moving left"],
                         output=str(tmp_path / "s.jsonl"), cot=False, device="cpu")
    with pytest.raises(ValueError, match="broken.mp4"):
        run_score(config)
    config.skip_invalid = True
    summary = run_score(config)
    lines = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert (summary.scored, summary.failed) == (2, 2)
    assert [line["reward"] is None for line in lines] == [False, True, True, False]
    assert "no such file" in lines[2]["error"] and "broken.mp4" in lines[1]["error"]


def test_train_and_score_on_real_world_videos_of_mixed_kinds(tiny_qwen3_vl_dir, tmp_path):
    """One CSV mixing codecs, containers' audio tracks, sizes, frame rates and durations the synthetic set
    never has: every pair is decoded, batched together, trained on and scored."""
    rng = np.random.default_rng(7)
    kinds = [  # (codec, frames, height, width, fps, audio)
        ("libx264", 30, 144, 176, 25.0, True),
        ("hevc", 24, 240, 320, 29.97, False),
        ("mpeg4", 90, 90, 160, 30.0, False),
        ("libsvtav1", 16, 64, 64, 8.0, False),
        ("libx264", 300, 72, 128, 60.0, True),
        ("libx264", 12, 360, 640, 12.0, False),
    ]
    names = []
    for index, (codec, frames, height, width, fps, audio) in enumerate(kinds):
        clip = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
        names.append(write_video(tmp_path / "videos" / f"{index}.mp4", clip, fps, codec=codec, audio=audio).name)
    rows = ["prompt,video_a,video_b,label"] + [
        f"clip {i},videos/{names[i]},videos/{names[(i + 1) % len(names)]},{'AB'[i % 2]}" for i in range(len(names))
    ]
    (tmp_path / "mixed.csv").write_text("\n".join(rows) + "\n")
    run(tiny_config(tiny_qwen3_vl_dir, tmp_path / "mixed.csv", tmp_path / "run", max_steps=2, eval_strategy="no",
                    per_device_train_batch_size=2, effective_batch_size=2, video_max_pixels=16384))
    summary = run_score(ScoreConfig(model=str(tmp_path / "run" / "final"), data=str(tmp_path / "mixed.csv"),
                                    output=str(tmp_path / "s.jsonl"), cot=False, device="cpu"))
    # each video appears in two pairs with different prompts: 12 distinct (video, prompt) items
    assert (summary.scored, summary.failed, summary.decided_pairs) == (12, 0, 6)
