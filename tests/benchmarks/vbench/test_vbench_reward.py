"""The ``vbench`` reward (benchmarks/vbench/reward.py) and the reward-plugin discovery it joins the registry by
(reward/base.py): random tiny weights in VBench's layout, real mp4s, the harness's own run as the reference."""

from __future__ import annotations

import math
import sys
import tomllib
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest
import torch

import reward.base as reward_base
from benchmarks.vbench.job import VBenchConfig, decode_video, run_vbench
from benchmarks.vbench.metrics import DIMENSIONS
from benchmarks.vbench.weights import write_random_weights
from generator_rl.evaluation import EvalConfig
from reward.base import PLUGIN_GROUP, build_reward, check_reward_entry, declare_reward_plugins, registered_rewards
from reward.errors import ConfigError, VideoDecodeError
from reward.video import VideoFrames

from .extractor_stubs import sliding_clip, static_clip, write_clip

PLUGIN = EntryPoint(name="vbench", value="benchmarks.vbench.reward", group=PLUGIN_GROUP)  # as pyproject.toml
PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


@pytest.fixture(autouse=True)
def declared(monkeypatch) -> None:
    """The plugin declared as an installed package declares it; the declarations are restored afterwards."""
    monkeypatch.setattr(reward_base, "_plugins", None)
    declare_reward_plugins([PLUGIN])


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> tuple[list[str], Path]:
    """Two clips at Wan's 16 fps (a still texture, the texture sliding 8 px a frame) and tiny random weights
    (RAFT needs frames of at least 128 px)."""
    folder = tmp_path_factory.mktemp("vbench-reward")
    videos = [write_clip(folder / "videos" / "still.mp4", static_clip(3, height=128, width=128), 16.0),
              write_clip(folder / "videos" / "slide.mp4", sliding_clip(3, step=8, height=128, width=128), 16.0)]
    return [str(video.resolve()) for video in videos], write_random_weights(folder / "weights", size="tiny")


# RAFT and MUSIQ on the CPU: about 35 s and 12 s for these clips (slow)
SLOW = ("imaging_quality", "dynamic_degree")


@pytest.mark.parametrize("dimension", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name
                                       for name in DIMENSIONS])
def test_a_file_scores_the_harness_number_and_its_frames_in_memory_the_same(dimension, harness, tmp_path):
    videos, weights = harness
    per_video = run_vbench(VBenchConfig(videos=str(Path(videos[0]).parent), weights=str(weights), device="cpu",
                                        dimensions=[dimension], output_dir=str(tmp_path / "out"))).per_video
    expected = [per_video[video][dimension] for video in videos]
    scorer = build_reward({"name": "vbench", "dimension": dimension, "weights": str(weights), "device": "cpu"})
    assert [item.reward for item in scorer.score(videos, ["a prompt"] * 2).items] == expected

    # The same frames handed over in memory: uint8 (T, H, W, 3), and float (T, 3, H, W) in [0, 1] as a rollout
    in_memory = []
    for video in videos:
        frames, fps = decode_video(video)
        in_memory += [VideoFrames(frames.permute(0, 2, 3, 1).contiguous(), fps, name=f"{video} uint8"),
                      VideoFrames(frames.float() / 255, fps, name=f"{video} float")]
    scored = [item.reward for item in scorer.score(in_memory, [""] * 4).items]
    assert scored == [expected[0], expected[0], expected[1], expected[1]]


def test_the_plugin_is_imported_at_its_first_lookup(harness, monkeypatch):
    monkeypatch.delitem(reward_base._REGISTRY, "vbench", raising=False)
    monkeypatch.delitem(sys.modules, "benchmarks.vbench.reward", raising=False)
    assert "vbench" in registered_rewards()  # declared, listed, not imported yet
    assert "vbench" not in reward_base._REGISTRY and "benchmarks.vbench.reward" not in sys.modules

    check_reward_entry({"name": "vbench", "dimension": "temporal_flickering"})
    assert "vbench" in reward_base._REGISTRY and "benchmarks.vbench.reward" in sys.modules
    still = harness[0][0]
    scorer = build_reward({"name": "vbench", "dimension": "temporal_flickering"})  # needs no weights
    assert scorer.score([still], [""]).rewards.tolist() == [1.0]  # identical frames do not flicker


@pytest.mark.parametrize(("plugins", "name", "message"), [
    ([EntryPoint("broken", "benchmarks.vbench.no_such_module", PLUGIN_GROUP)], "broken",
     r"reward plugin 'broken' \(descore.rewards entry point 'benchmarks.vbench.no_such_module'\) failed to import: "
     "ModuleNotFoundError"),
    ([EntryPoint("quiet", "reward.sanity", PLUGIN_GROUP)], "quiet", "importing 'reward.sanity' registered no reward"),
    ([PLUGIN], "vbnech", r"unknown reward model 'vbnech'; registered: \[.*'vbench'"),
])
def test_a_plugin_that_cannot_give_its_reward_is_a_config_error(plugins, name, message):
    declare_reward_plugins(plugins)
    for call in (check_reward_entry, build_reward):
        with pytest.raises(ConfigError, match=message):
            call({"name": name})


def test_one_name_declared_with_two_modules_is_refused():
    with pytest.raises(ConfigError, match=r"'vbench' is declared twice .*'benchmarks.vbench.reward' and 'elsewhere'"):
        declare_reward_plugins([PLUGIN, EntryPoint("vbench", "elsewhere", PLUGIN_GROUP)])


@pytest.mark.parametrize(("options", "message"), [
    ({"dimension": "motion_smoothness"}, "unknown VBench dimension.*motion_smoothness; known: subject_consistency"),
    ({}, "vbench reward needs a dimension, one of subject_consistency"),
    ({"dimension": "dynamic_degree"}, "dynamic_degree needs weights"),
    ({"dimension": "dynamic_degree", "weights": "/nonexistent"}, "raft_model/models/raft-things.pth"),
    ({"dimension": "temporal_flickering", "batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"dimension": "temporal_flickering", "device": "gpu"}, "device must be cpu, cuda or cuda:N, got 'gpu'"),
    ({"dimension": "temporal_flickering", "dtype": "int8"}, "floating-point torch dtype"),
    ({"dimension": "temporal_flickering", "decode_limits": {"max_frames": 4}}, "decode_limits takes max_duration_s"),
    ({"dimension": "temporal_flickering", "fps": 8}, r"does not take options \['fps'\]"),
])
def test_bad_options_are_refused_before_anything_loads(options, message):
    with pytest.raises(ConfigError, match=message):
        check_reward_entry({"name": "vbench", **options})


def test_unreadable_and_one_frame_videos(harness, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    one_frame = VideoFrames(torch.zeros(1, 3, 32, 32), 16.0, name="one frame")
    strict = build_reward({"name": "vbench", "dimension": "temporal_flickering"})
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        strict.score([str(broken)], [""])
    lenient = build_reward({"name": "vbench", "dimension": "temporal_flickering", "skip_invalid": True})
    output = lenient.score([str(broken), one_frame, harness[0][0]], [""] * 3)
    assert math.isnan(output.items[0].reward) and "broken.mp4" in output.items[0].error
    assert math.isnan(output.items[1].reward) and "1 frame(s); at least 2" in output.items[1].error
    assert output.items[2].reward == 1.0 and output.failures == 2


def test_held_out_evaluation_takes_vbench_guards(harness, tmp_path):
    prompts = tmp_path / "held_out.txt"
    prompts.write_text("a cat on a sofa\na car at night\n")
    weights = str(harness[1])
    guard = {"name": "vbench", "dimension": "dynamic_degree", "weights": weights}
    config = EvalConfig(eval_every=2, eval_prompts=str(prompts), guards=[guard, {**guard, "label": "subject",
                                                                                 "dimension": "subject_consistency"}])
    assert [term.label for term in config.guards] == ["vbench", "subject"]
    with pytest.raises(ConfigError, match="vbench reward \\(subject_consistency\\).*dino_vitbase16_pretrain.pth"):
        EvalConfig(eval_every=2, eval_prompts=str(prompts), guards=[{**guard, "dimension": "subject_consistency",
                                                                     "weights": str(tmp_path)}])


def test_pyproject_declares_the_plugin_these_tests_declare():
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"][PLUGIN_GROUP]
    assert declared == {PLUGIN.name: PLUGIN.value}


def test_the_installed_metadata_declares_it():
    if not any(entry_point.name == "vbench" for entry_point in entry_points(group=PLUGIN_GROUP)):
        pytest.skip("the installed metadata predates the entry point: reinstall the kit (pip install -e .)")
    assert declare_reward_plugins()["vbench"].value == PLUGIN.value
