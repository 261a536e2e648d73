"""Offline Flow-DPO on given pairs: real mp4 clips framed at Wan's 16 fps, encoded once into the pair store
(resumable, pinned to the pair file), bad rows listed and skipped, and training that moves the tiny Wan's
samples toward the preferred clips."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from trl import TrlParser

from descore.cli import main
from generator_rl.config import PolicyConfig, RunConfig, read_prompts
from generator_rl.flow_dpo import FlowDpoConfig, run_flow_dpo
from generator_rl.pair_import import cover_and_crop, read_pair_file, training_frames, wan_frame_indices
from generator_rl.pair_store import PairStore
from generator_rl.policy import VideoShape, WanPolicy
from generator_rl.sample import load_sampling_pipeline, ode_latents
from reward.errors import ConfigError, VideoDecodeError
from reward.run_record import RunMismatchError, file_sha256
from reward.video import write_video

from .helpers import RECIPES, Preempted, dies_on_call

PROMPTS = ("a sunny beach", "a city street", "a forest path")


def _clip(path: Path, *, bright: bool, seed: int, frames: int = 14, fps: float = 24.0) -> Path:
    """A real 40x56 mp4: a bright warm scene with a light blob moving across it, or a dim, still, cold one."""
    rng = np.random.default_rng(seed)
    height, width = 40, 56
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        if bright:
            base = np.array([225, 175, 95]) + rng.integers(-15, 15, 3)
            image = np.broadcast_to(base, (height, width, 3)).astype(np.int64)
            left = (4 * t + seed) % (width - 12)
            image[10:26, left : left + 12] = 250
        else:
            base = np.array([30, 32, 45]) + rng.integers(-5, 5, 3)
            image = np.broadcast_to(base, (height, width, 3)).astype(np.int64)
        video[t] = np.clip(image + rng.integers(-6, 6, (height, width, 3)), 0, 255)
    return write_video(path, video, fps, lossless=True)


def _write_pairs(folder: Path, rows: list[dict[str, str]], name: str = "pairs.csv") -> Path:
    path = folder / name
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _bright_vs_dark(folder: Path) -> Path:
    """Six pairs of our layout (relative paths) over three bright and three dark clips, each clip in two rows:
    prompt p compares its bright clip with its dark one (label a) and with the next prompt's dark one (label b)."""
    bright = [_clip(folder / "clips" / f"bright_{p}.mp4", bright=True, seed=p).relative_to(folder) for p in range(3)]
    dark = [_clip(folder / "clips" / f"dark_{p}.mp4", bright=False, seed=p).relative_to(folder) for p in range(3)]
    rows = []
    for p, prompt in enumerate(PROMPTS):
        rows.append({"prompt": prompt, "video_a": str(bright[p]), "video_b": str(dark[p]), "label": "a"})
        rows.append({"prompt": prompt, "video_a": str(dark[(p + 1) % 3]), "video_b": str(bright[p]), "label": "b"})
    return _write_pairs(folder, rows)


def _offline_recipe(path: Path, model: Path, **overrides) -> Path:
    """The shipped tiny Flow-DPO recipe made offline: no rewards, no online rounds."""
    recipe = yaml.safe_load((RECIPES / "tiny_flow_dpo.yaml").read_text())
    for key in ("rewards", "online_every"):
        recipe.pop(key)
    path.write_text(yaml.safe_dump(recipe | {"model": str(model), "report_to": "none", **overrides}))
    return path


def _arguments(model: Path, pairs: Path, output_dir: Path, **overrides) -> tuple:
    """(PolicyConfig, RunConfig, FlowDpoConfig) of the offline tiny recipe on ``pairs``."""
    recipe = _offline_recipe(output_dir.parent / f"{output_dir.name}.yaml", model, pairs=str(pairs), prompts=str(pairs),
                             output_dir=str(output_dir), **overrides)
    return TrlParser([PolicyConfig, RunConfig, FlowDpoConfig]).parse_args_and_config(["--config", str(recipe)])


def test_frames_are_the_16_fps_timeline_from_the_start():
    """24 fps source: frame k of the 16 fps clip is the one on screen at k/16 s, floor(k * 1.5)."""
    assert wan_frame_indices("c", total_frames=13, fps=24.0, num_frames=9) == [0, 1, 3, 4, 6, 7, 9, 10, 12]
    assert wan_frame_indices("c", total_frames=5, fps=8.0, num_frames=5) == [0, 0, 1, 1, 2]
    with pytest.raises(VideoDecodeError, match=r"too short: num_frames = 9 at 16 fps needs the frame on screen at "
                                                r"0\.500 s \(source frame 12\), but its 12 frames at 24 fps end with "
                                                r"one at 0\.458 s"):
        wan_frame_indices("c", total_frames=12, fps=24.0, num_frames=9)


def test_cover_and_crop_keeps_the_aspect_and_cuts_the_longer_side():
    """A 4x8 frame whose left and right quarters are black, into 4x4: scale 1 covers it, the centre is kept."""
    frame = torch.full((1, 3, 4, 8), 200, dtype=torch.uint8)
    frame[..., :2] = 0
    frame[..., 6:] = 0
    assert torch.equal(cover_and_crop(frame, height=4, width=4), torch.full((1, 3, 4, 4), 200, dtype=torch.uint8))
    assert cover_and_crop(frame, height=16, width=16).shape == (1, 3, 16, 16)  # upscaled by 4 to 16x32, cropped


def test_encode_is_deterministic_and_inverts_decode_in_shape(tiny_wan_dir, tmp_path):
    policy = WanPolicy.from_pretrained(tiny_wan_dir)
    shape = VideoShape(height=32, width=32, num_frames=9)
    frames = training_frames(_clip(tmp_path / "c.mp4", bright=True, seed=0), shape)
    assert frames.shape == (9, 3, 32, 32) and 0 <= float(frames.min()) and float(frames.max()) <= 1
    latents = policy.encode(frames[None])
    assert latents.shape == policy.latent_shape(1, shape) and latents.dtype == torch.float32
    assert torch.equal(latents, policy.encode(frames[None]))
    assert policy.decode(latents).shape == (1, 9, 3, 32, 32)


def _projection(latents: torch.Tensor, direction: torch.Tensor) -> float:
    return float((latents.flatten() * direction.flatten()).sum())


def _sample_projections(policy_args: PolicyConfig, lora: Path | None, direction: torch.Tensor) -> list[float]:
    """Projections on ``direction`` of deterministic ODE samples, 2 seeds per prompt (the same seeds always)."""
    policy = WanPolicy(load_sampling_pipeline(policy_args, str(lora) if lora else None, torch.device("cpu")),
                       torch.device("cpu"), policy_args.max_sequence_length)
    return [_projection(ode_latents(policy, policy_args, prompt, seed), direction)
            for prompt in PROMPTS for seed in (501, 502)]


def test_offline_flow_dpo_moves_samples_toward_the_chosen_clips(tiny_wan_dir, tmp_path):
    """Bright, warm, moving clips preferred over dark ones (3 prompts, 6 pairs over 6 clips, each clip decoded
    and encoded once though two rows use it; the chosen clip is A or B in turn). The tiny VAE has
    random weights, so it decodes every latent to about the same brightness: the statistic is taken where the
    preference lives, in latent space — the projection of fixed-seed ODE samples on the direction from the mean
    latent of the dark clips to that of the bright ones (encoded here, apart from the run). After training it rises by more than 5x the spread of the base
    model's samples over seeds and prompts (measured: about 18x), and every tuned sample lies above every
    base sample."""
    pairs = _bright_vs_dark(tmp_path)
    policy_args, run_args, dpo = _arguments(tiny_wan_dir, pairs, tmp_path / "run", max_steps=12, learning_rate=0.02)
    result = run_flow_dpo(policy_args, run_args, dpo)
    assert (result.imported.stored, result.imported.ties, result.imported.encoded_videos) == (6, 0, 6)
    assert result.history[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert result.history[0]["pairs/usable"] == 6
    policy = WanPolicy.from_pretrained(tiny_wan_dir)
    mean_latents = {
        kind: torch.cat([policy.encode(training_frames(clip, policy_args.shape)[None])
                         for clip in sorted((tmp_path / "clips").glob(f"{kind}_*.mp4"))]).mean(0)
        for kind in ("bright", "dark")
    }
    direction = mean_latents["bright"] - mean_latents["dark"]
    direction = direction / direction.norm()
    base = _sample_projections(policy_args, None, direction)
    tuned = _sample_projections(policy_args, result.final, direction)
    shift = np.mean(tuned) - np.mean(base)
    assert min(tuned) > max(base) and shift > 5 * np.std(base), (base, tuned)


def _counting_encodes(monkeypatch) -> list[int]:
    """Count the videos WanPolicy.encode is given."""
    calls, original = [], WanPolicy.encode

    def counted(self, frames):
        calls.append(len(frames))
        return original(self, frames)

    monkeypatch.setattr(WanPolicy, "encode", counted)
    return calls


def test_bad_rows_are_listed_and_skipped_and_an_import_resumes(tiny_wan_dir, tmp_path, monkeypatch, caplog):
    """Rows: two good pairs, a tie, a corrupt mp4, a clip too short for 9 frames at 16 fps, a missing file. The
    bad ones are listed with line, video and error; the good ones are stored exactly as ``policy.encode`` of
    their frames. An import killed at its second pair resumes with only that pair's videos encoded again."""
    good = [_clip(tmp_path / f"{name}.mp4", bright=name.startswith("b"), seed=i)
            for i, name in enumerate(["b0", "d0", "b1", "d1"])]
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    short = _clip(tmp_path / "short.mp4", bright=True, seed=9, frames=12)  # 0.5 s at 24 fps: frame 12 is needed
    rows = [("a sunny beach", good[0], good[1], "a"), ("a city street", good[3], good[2], "b"),
            ("a forest path", good[0], good[3], "tie"), ("a sunny beach", corrupt, good[1], "a"),
            ("a city street", good[2], short, "a"), ("a forest path", tmp_path / "gone.mp4", good[1], "b")]
    pairs = _write_pairs(tmp_path, [{"prompt": prompt, "video_a": a.name, "video_b": b.name, "label": label}
                                    for prompt, a, b, label in rows])
    encodes = _counting_encodes(monkeypatch)
    original_add = PairStore.add
    monkeypatch.setattr(PairStore, "add", dies_on_call(original_add, 2))
    with pytest.raises(Preempted):
        run_flow_dpo(*_arguments(tiny_wan_dir, pairs, tmp_path / "run", max_steps=1))
    assert len(encodes) == 4  # both pairs' videos; the second pair died while being stored
    monkeypatch.setattr(PairStore, "add", original_add)
    encodes.clear()
    caplog.set_level("WARNING")
    policy_args, run_args, dpo = _arguments(tiny_wan_dir, pairs, tmp_path / "run", max_steps=1)
    imported = run_flow_dpo(policy_args, run_args, dpo).imported
    # The unstored pair's two videos: good[1] is not encoded for the corrupt row, good[2] is reused by line 6.
    assert len(encodes) == 2
    assert (imported.stored, imported.already_stored, imported.ties, len(imported.skipped)) == (1, 1, 1, 3)
    assert [(row.line, row.video) for row in imported.skipped] == [
        (5, str(corrupt)), (6, str(short)), (7, None)]
    assert "unreadable container" in imported.skipped[0].error or "decoding failed" in imported.skipped[0].error
    assert "too short: num_frames = 9 at 16 fps" in imported.skipped[1].error
    assert f"video file {tmp_path / 'gone.mp4'} does not exist" in imported.skipped[2].error
    assert f"{pairs} line 5 skipped: video {corrupt}:" in caplog.text
    assert f"{pairs} line 6 skipped: video {short}:" in caplog.text
    store = PairStore(tmp_path / "run" / "pairs")
    records = store.pairs(0)
    assert [(r.prompt_index, r.prompt) for r in records] == [(2, "a sunny beach"), (3, "a city street")]
    assert all(math.isnan(r.winner_reward) and math.isnan(r.loser_reward) for r in records)
    policy = WanPolicy.from_pretrained(tiny_wan_dir, max_sequence_length=policy_args.max_sequence_length)
    stored = store.load(records[1])  # label b: video_b (good[2], bright) is the winner
    for key, video in (("winner", good[2]), ("loser", good[3])):
        assert torch.equal(stored[key], policy.encode(training_frames(video, policy_args.shape)[None])[0])
    assert torch.equal(stored["prompt_embeds"], policy.prompt_embeddings(["a city street"])[0][0])


def test_another_pair_file_is_refused_by_the_store(tiny_wan_dir, tmp_path):
    """Reusing a store (pair_dir) with another pair file, or a prompt file other than the pair file, fails."""
    _clip(tmp_path / "b.mp4", bright=True, seed=0), _clip(tmp_path / "d.mp4", bright=False, seed=0)
    pairs = _write_pairs(tmp_path, [{"prompt": "a sunny beach", "video_a": "b.mp4", "video_b": "d.mp4", "label": "a"}])
    run_flow_dpo(*_arguments(tiny_wan_dir, pairs, tmp_path / "a", max_steps=1, pair_dir=str(tmp_path / "pairs")))
    other = _write_pairs(tmp_path, [{"prompt": "a sunny beach", "video_a": "b.mp4", "video_b": "d.mp4", "label": "b"}],
                         name="other.csv")
    with pytest.raises(RunMismatchError, match=r"made with other settings(.|\n)*import\.pairs_sha256"):
        run_flow_dpo(*_arguments(tiny_wan_dir, other, tmp_path / "b", max_steps=1, pair_dir=str(tmp_path / "pairs")))
    policy_args, run_args, dpo = _arguments(tiny_wan_dir, pairs, tmp_path / "c", max_steps=1)
    run_args.prompts = str(other)
    with pytest.raises(ConfigError, match=f"with pairs = {pairs}, prompts must name the same file"):
        run_flow_dpo(policy_args, run_args, dpo)


def test_videogen_rewardbench_rows_and_their_ties_from_the_command_line(tiny_wan_dir, tmp_path, capsys):
    """``descore tune flow-dpo --pairs`` on VideoGen-RewardBench columns: the Overall label decides, ``same``
    rows are skipped and counted; the run record holds the pair file's sha256; a file of ties only has no
    usable pair (one line, exit 2). Prompts are stripped, as the run's prompt list strips them."""
    clips = [_clip(tmp_path / "videos" / f"{k}.mp4", bright=k % 2 == 0, seed=k).relative_to(tmp_path) for k in range(4)]
    base = {"VQ": "A", "MQ": "same", "TA": "B", "fps_A": "24", "fps_B": "24"}
    rows = [{"path_A": str(clips[1]), "path_B": str(clips[0]), "prompt": " a sunny beach ", "Overall": "B", **base},
            {"path_A": str(clips[2]), "path_B": str(clips[3]), "prompt": "a city street", "Overall": "same", **base}]
    pairs = _write_pairs(tmp_path, rows, name="videogen.csv")
    assert [(pair.line, pair.prompt, Path(pair.video_b).name, pair.label) for pair in read_pair_file(pairs).pairs] == [
        (2, "a sunny beach", "0.mp4", -1), (3, "a city street", "3.mp4", 0)]
    recipe = _offline_recipe(tmp_path / "offline.yaml", tiny_wan_dir, max_steps=1)
    command = ["tune", "flow-dpo", "--config", str(recipe), "--output_dir", str(tmp_path / "run")]
    assert main([*command, "--pairs", str(pairs), "--prompts", str(pairs)]) == 0
    assert f"pairs from {pairs}: 1 usable (1 encoded now), 1 tie(s) and 0 bad row(s) skipped" in capsys.readouterr().out
    (record,) = PairStore(tmp_path / "run" / "pairs").pairs(0)
    assert (record.prompt_index, record.prompt) == (2, "a sunny beach")
    run_config = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert run_config["config"]["run"]["prompts_sha256"] == file_sha256(pairs)
    assert run_config["config"]["dpo"]["pairs"] == str(pairs)
    ties = _write_pairs(tmp_path, rows[1:], name="ties.csv")
    assert main([*command[:-1], str(tmp_path / "ties"), "--pairs", str(ties), "--prompts", str(ties)]) == 2
    assert "ties.csv: no usable pair: 1 tie(s), 0 row(s) skipped" in capsys.readouterr().err


def test_offline_options_are_checked(tmp_path):
    pairs = tmp_path / "p.csv"
    pairs.write_text("prompt,video_a,video_b,label\n")
    with pytest.raises(ConfigError, match="online_every = 10 samples new pairs from the policy, but pairs"):
        FlowDpoConfig(pairs=str(pairs), online_every=10)
    with pytest.raises(ConfigError, match="pairs: nowhere.csv is not a file"):
        FlowDpoConfig(pairs="nowhere.csv")
    with pytest.raises(ConfigError, match="rewards is required"):
        FlowDpoConfig()
    assert FlowDpoConfig(pairs=str(pairs)).rewards == []
    assert FlowDpoConfig(pairs=str(pairs), online_every=0).online_every is None  # runs an online recipe on pairs


def test_a_jsonl_pair_file_gives_its_prompts(tmp_path):
    """A JSONL pair file can be the run's prompt file too (``--prompts pairs.jsonl``)."""
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "a dog", "video_a": "a.mp4", "video_b": "b.mp4", "label": "A"}\n\n'
                    '{"prompt": " a cat ", "video_a": "a.mp4", "video_b": "c.mp4", "label": "tie"}\n')
    assert read_prompts(path) == ["a dog", "a cat"]
