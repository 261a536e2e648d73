"""`descore bench compare` on the tiny Wan: a comparison SIGKILLed mid-sampling (a real subprocess) resumes
without sampling any finished video again and writes the report of an uninterrupted run; the report's numbers
are the per-prompt means of the cached scores; the suite is built from VBench's own prompt file; bad settings
are refused before anything loads, and the shipped recipes load."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from trl import TrlParser

import generator_rl.sample as sample_module
from benchmarks.compare import CompareConfig, PromptSuite, vbench_suite, vbench_values
from descore.cli import main, run_cli
from generator_rl.checkpoint import save_lora
from generator_rl.config import PolicyConfig
from reward.errors import ConfigError
from reward.run_record import RunMismatchError

from ..conftest import REPO_ROOT

PROMPTS = ["a red square moving left", "a blue ball bouncing", "waves in slow motion"]
RECIPES = REPO_ROOT / "configs" / "bench"


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory) -> Path:
    """A LoRA of the tiny Wan with random (non-zero) weights, saved in the diffusers format as training saves it."""
    (policy_args,) = TrlParser([PolicyConfig]).parse_args_and_config(
        ["--config", str(RECIPES / "tiny_compare.yaml"), "--lora_rank", "4", "--gradient_checkpointing", "false"],
        return_remaining_strings=True)[:1]
    policy = policy_args.load_policy(torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in policy.trainable_parameters():
            parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))
    return save_lora(policy, tmp_path_factory.mktemp("lora") / "tuned" / "final")


def _videos(folder: Path) -> dict[str, tuple[int, int]]:
    """Finished mp4s (not the sampler's hidden temporary files) by name: inode and modification time."""
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in folder.glob("[!.]*.mp4")}


def _report(output: Path) -> tuple[dict, str, str]:
    """report.json without the output folder's own path, and report.md / report.html with it replaced."""
    data = json.loads((output / "report.json").read_text())
    assert data["config"]["compare"].pop("output_dir") == str(output)
    return data, *((output / name).read_text().replace(str(output), "OUT") for name in ("report.md", "report.html"))


def test_killed_comparison_resumes_to_the_uninterrupted_report(tiny_lora, tmp_path, monkeypatch, one_thread):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")

    def argv(output: Path) -> list[str]:
        return ["bench", "compare", "--config", "tiny_compare", "--prompts", str(prompts), "--loras", str(tiny_lora),
                "--output_dir", str(output)]

    killed = tmp_path / "killed"
    base_videos = killed / "samples" / "base" / "videos"
    process = subprocess.Popen([sys.executable, "-m", "descore", *argv(killed)], cwd=REPO_ROOT,
                               env=os.environ | {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(_videos(base_videos)) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    stderr = process.communicate()[1].decode()
    assert process.returncode == -signal.SIGKILL, stderr
    finished = _videos(base_videos)
    assert 2 <= len(finished) < 6 and not (killed / "report.json").exists()  # killed while sampling the base model

    sampled = []
    encode = sample_module.write_video_atomically
    monkeypatch.setattr(sample_module, "write_video_atomically",
                        lambda path, *args, **kwargs: sampled.append(path) or encode(path, *args, **kwargs))
    assert main(argv(killed)) == 0
    assert {name: _videos(base_videos)[name] for name in finished} == finished  # not written again
    assert not {path.name for path in sampled if path.parent == base_videos} & set(finished)
    assert len(sampled) == 2 * len(PROMPTS) * 2 - len(finished)  # everything else, once

    uninterrupted = tmp_path / "uninterrupted"
    assert main(argv(uninterrupted)) == 0
    resumed_report, straight_report = _report(killed), _report(uninterrupted)
    assert resumed_report == straight_report
    _check_report(uninterrupted, resumed_report[0])

    with pytest.raises(RunMismatchError, match=r"compare.seed: 0 -> 1"):  # before any model loads
        run_cli([*argv(uninterrupted), "--seed", "1"])


def _check_report(output: Path, report: dict) -> None:
    """The report's numbers against the score files, the seeds against the sampler's index, the HTML self-contained."""
    assert report["models"] == {"base": {"lora": None}, "tuned": {"lora": report["models"]["tuned"]["lora"]}}
    index_seeds = [int(line.split(",")[1]) for line in (output / "samples" / "base" / "index.csv").read_text().splitlines()[1:]]
    assert [video["seed"] for video in report["seeds"]["videos"]] == index_seeds == [0, 1, 1000, 1001, 2000, 2001]
    for model in ("base", "tuned"):
        records = [json.loads(line) for line in (output / "scores" / model / "brightness.jsonl").read_text().splitlines()]
        by_prompt = {prompt: np.mean([r["reward"] for r in records if r["prompt"] == prompt]) for prompt in PROMPTS}
        assert report["per_prompt"][model]["brightness"] == pytest.approx([by_prompt[p] for p in PROMPTS], abs=1e-12)
    base, tuned = (np.array(report["per_prompt"][model]["temporal_smoothness"]) for model in ("base", "tuned"))
    delta = report["deltas"]["tuned"]["temporal_smoothness"]
    assert delta["mean"] == pytest.approx(np.mean(tuned - base), abs=1e-12) and delta["prompts"] == 3
    assert delta["low"] <= delta["mean"] <= delta["high"]
    assert delta["win_rate"] == np.mean((tuned > base) + 0.5 * (tuned == base))
    assert report["versions"]["torch"] == torch.__version__.split("+")[0] and "commit" in report
    page = (output / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2 and "http" not in page.replace("http-equiv", "")
    markdown = (output / "report.md").read_text()
    assert "| temporal_smoothness |" in markdown and "an exact tie counts one half" in markdown


# ----- the prompt suite -----------------------------------------------------------------------------------------


def _full_info(path: Path) -> Path:
    """A file in VBench_full_info.json's layout (made-up prompts): a prompt listed for two dimensions, a prompt
    listed twice, and dimensions the comparison does not ask for."""
    entries = [
        {"prompt_en": "a cat sleeping", "dimension": ["subject_consistency", "dynamic_degree"]},
        {"prompt_en": "a quiet street", "dimension": ["background_consistency"]},
        {"prompt_en": "two dogs", "dimension": ["multiple_objects"], "auxiliary_info": {"multiple_objects": {"object": "dog"}}},
        {"prompt_en": "a painting of a lake", "dimension": ["aesthetic_quality", "imaging_quality"]},
        {"prompt_en": "a cat sleeping", "dimension": ["motion_smoothness"]},
        {"prompt_en": "a quiet street", "dimension": ["imaging_quality"]},
    ]
    path.write_text(json.dumps(entries))
    return path


def test_the_suite_is_built_from_vbench_full_info(tmp_path):
    full_info = _full_info(tmp_path / "VBench_full_info.json")
    suite = vbench_suite(full_info, ["subject_consistency", "background_consistency", "imaging_quality"])
    assert suite == {"a cat sleeping": ("subject_consistency",), "a quiet street": ("background_consistency", "imaging_quality"),
                     "a painting of a lake": ("imaging_quality",)}
    with pytest.raises(ConfigError, match=r"lists no prompt for \['temporal_flickering'\]"):
        vbench_suite(full_info, ["temporal_flickering"])
    (tmp_path / "bad.json").write_text(json.dumps([{"prompt": "x"}]))
    with pytest.raises(Exception, match="entry 0 lacks a 'prompt_en' string"):
        vbench_suite(tmp_path / "bad.json", ["subject_consistency"])


def test_a_vbench_dimension_is_measured_on_its_own_prompts(tmp_path):
    """VBench scores each dimension on the prompts it lists for it; the other prompts' values are left out.
    imaging_quality is shown on its aggregate's scale (per-video MOS / 100)."""
    videos = [[tmp_path / f"{i}-{k}.mp4" for k in range(2)] for i in range(3)]
    per_video = {str(path): {"subject_consistency": 0.9, "imaging_quality": 60.0} for seeds in videos for path in seeds}
    suite = PromptSuite(["a", "b", "c"], tmp_path / "p.txt",
                        [("subject_consistency",), ("imaging_quality",), ("subject_consistency", "imaging_quality")])
    subject = vbench_values(per_video, videos, dimension="subject_consistency", suite=suite)
    np.testing.assert_array_equal(subject, [[0.9, 0.9], [np.nan, np.nan], [0.9, 0.9]])
    np.testing.assert_allclose(vbench_values(per_video, videos, dimension="imaging_quality", suite=suite), [[np.nan] * 2, [0.6] * 2, [0.6] * 2])
    user_file = PromptSuite(["a", "b", "c"], tmp_path / "p.txt", None)
    assert np.isfinite(vbench_values(per_video, videos, dimension="subject_consistency", suite=user_file)).all()


# ----- settings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    ({"output_dir": None}, "--output_dir is required"),
    ({"prompts": None}, "give exactly one of --prompts"),
    ({"vbench_prompts": "no/such.json", "prompts": None}, "--vbench_prompts no/such.json is not a file"),
    ({"loras": ["no/such/lora"]}, "--loras no/such/lora is not a folder"),
    ({"labels": ["a", "b"]}, "--labels gives 2 name(s) for 0 --loras folder(s)"),
    ({"rewards": [{"name": "brightness", "weight": 2.0}]}, "weight only applies to a training mix"),
    ({"rewards": [{"name": "brightnes"}]}, "unknown reward model 'brightnes'"),
    ({"rewards": [{"name": "brightness"}, {"name": "brightness"}]}, "metric label(s) brightness given twice"),
    ({"rewards": [], "vbench_dimensions": []}, "nothing to measure"),
    ({"vbench_dimensions": ["motion"]}, "--vbench_dimensions ['motion'] unknown"),
    ({"vbench_dimensions": ["subject_consistency"]}, "--vbench_weights None is not a folder"),
    ({"vbench_backend": "pyiqa"}, "--vbench_backend must be one of kit, official"),
    ({"videos_per_prompt": 0}, "--videos_per_prompt must be >= 1"),
])
def test_bad_settings_are_refused(tmp_path, overrides, message):
    settings = {"prompts": "tiny:prompts", "output_dir": str(tmp_path), "rewards": [{"name": "brightness"}],
                "vbench_dimensions": []} | overrides
    with pytest.raises(ConfigError) as raised:
        CompareConfig(**settings)
    assert message in str(raised.value)


def test_labels_must_name_folders(tmp_path, tiny_lora):
    with pytest.raises(ConfigError, match=r"model label\(s\) base given twice"):
        CompareConfig(prompts="tiny:prompts", output_dir=str(tmp_path), rewards=[{"name": "brightness"}],
                      vbench_dimensions=[], loras=[str(tiny_lora)], labels=["base"])
    config = CompareConfig(prompts="tiny:prompts", output_dir=str(tmp_path), rewards=[{"name": "brightness"}],
                           vbench_dimensions=[], loras=[str(tiny_lora)])
    assert config.model_labels() == ["tuned"]  # .../tuned/final


def test_the_shipped_recipes_load(tmp_path, tiny_lora):
    """Every bench recipe through the CLI's parser; the real-scale one with the files it leaves to the user."""
    weights = tmp_path / "weights"
    weights.mkdir()
    full_info = _full_info(tmp_path / "VBench_full_info.json")
    policy, compare = TrlParser([PolicyConfig, CompareConfig]).parse_args_and_config([
        "--config", str(RECIPES / "compare_wan1.3b.yaml"), "--vbench_prompts", str(full_info), "--vbench_weights",
        str(weights), "--rewards", "name=brightness", "--loras", str(tiny_lora), "--output_dir", str(tmp_path / "out")])
    values = yaml.safe_load((RECIPES / "compare_wan1.3b.yaml").read_text())
    assert (policy.num_frames, policy.height, policy.width, policy.num_steps) == (81, 480, 832, 50)
    assert compare.vbench_dimensions == values["vbench_dimensions"] and compare.videos_per_prompt == 5
    policy, compare = TrlParser([PolicyConfig, CompareConfig]).parse_args_and_config(
        ["--config", str(RECIPES / "tiny_compare.yaml"), "--output_dir", str(tmp_path / "tiny")])
    assert compare.lossless and [term.label for term in compare.rewards] == ["temporal_smoothness", "brightness"]


def test_vbench_dimensions_join_the_report(tiny_lora, tmp_path, one_thread):
    """The VBench harness measures every sampled video with random weights in VBench's layout; the report's
    per-prompt numbers are the means of the harness's per-video values (dynamic degree is left out: torchvision's
    RAFT needs frames of 128 px, the tiny Wan writes 32)."""
    from benchmarks.vbench.weights import write_random_weights

    weights = write_random_weights(tmp_path / "weights", size="tiny")
    dimensions = ["subject_consistency", "aesthetic_quality", "temporal_flickering"]
    output = tmp_path / "compare"
    assert main(["bench", "compare", "--config", "tiny_compare", "--loras", str(tiny_lora), "--output_dir", str(output),
                 "--vbench_dimensions", *dimensions, "--vbench_weights", str(weights), "--rewards", "name=brightness"]) == 0
    report = json.loads((output / "report.json").read_text())
    with (output / "samples" / "base" / "index.csv").open() as handle:
        prompts = list(dict.fromkeys(row["prompt"] for row in csv.DictReader(handle)))  # the suite's order
    for model in ("base", "tuned"):
        layout = json.loads((output / "vbench" / model / f"{model}_eval_results.json").read_text())
        assert list(layout) == dimensions
        for dimension in dimensions:
            per_video = {Path(r["video_path"]).name: r["video_results"] for r in layout[dimension][1]}
            expected = [np.mean([per_video[f"{prompt}-{k}.mp4"] for k in range(2)]) for prompt in prompts]
            np.testing.assert_allclose(report["per_prompt"][model][dimension], expected, rtol=1e-12)
    assert all(dimension in (output / "report.md").read_text() for dimension in dimensions)
