"""The demo's curves (sparklines, PNG, read back from what runs wrote), the tiny recipes run from an empty folder,
and the whole demo run twice in one folder (slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from descore.cli import main
from benchmarks.curves import curve_line, grpo_reward_curve, plot_curves, sparkline
from benchmarks.demo import CURVES_PNG, DEMO_VBENCH, SMOKE_NOTE, _flow_dpo_curves
from reward.errors import DataError

from .conftest import REPO_ROOT

TINY_GRPO = REPO_ROOT / "configs" / "generator" / "tiny_grpo.yaml"


@pytest.mark.parametrize(("values", "width", "expected"), [
    ([0, 1, 2, 3, 4, 5, 6, 7], 60, "▁▂▃▄▅▆▇█"),              # (v - 0) x 7/7: one level per value
    ([0.5, 0.5, 0.5], 60, "▁▁▁"),                          # flat: no range to scale
    ([1.0, math.nan, 3.0, 1.5], 60, "▁ █▃"),               # 1.5 -> 0.5 x 7/2 = 1.75 -> level 2; NaN a space
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 4, "▁▄▆█"),           # buckets of 3: means 1 4 7 9 -> 0 2.625 5.25 7
    ([math.nan, math.nan], 60, "  "),
])
def test_sparkline(values, width, expected):
    assert sparkline(values, width=width) == expected


def test_curve_line():
    curve = [(0, 0.1), (1, 0.3), (2, 0.2)]
    assert curve_line("GRPO mean reward", curve) == (
        "GRPO mean reward  ▁█▅  step 0 0.1000 -> step 2 0.2000 (min 0.1000, max 0.3000)")
    assert curve_line("Flow-DPO implicit accuracy", [(5, 0.5), (6, 1.0)], digits=2) == (
        "Flow-DPO implicit accuracy  ▁█  step 5 0.50 -> step 6 1.00 (min 0.50, max 1.00)")
    assert curve_line("empty", []) == "empty  no steps recorded"


def test_grpo_curve_is_the_mean_of_each_steps_valid_rewards(tmp_path):
    rollouts = tmp_path / "rollouts.jsonl"
    rows = [(0, 1.0), (0, 2.0), (0, None), (1, None), (2, 0.25), (2, 0.75)]
    rollouts.write_text("".join(json.dumps({"step": step, "sample": i, "reward": reward}) + "\n"
                                for i, (step, reward) in enumerate(rows)))
    curve = grpo_reward_curve(rollouts)
    assert [step for step, _ in curve] == [0, 1, 2] and curve[0][1] == 1.5 and math.isnan(curve[1][1]) and curve[2][1] == 0.5
    rollouts.write_text('{"step": 0, "reward": 1.0}\n{"reward": 2.0}\n')
    with pytest.raises(DataError, match=r"rollouts.jsonl:2: not a rollout record"):
        grpo_reward_curve(rollouts)


def test_flow_dpo_curves_are_read_back_by_a_resumed_run(tmp_path):
    path = tmp_path / "flow_dpo_metrics.json"
    history = [{"train/loss": 0.7, "train/implicit_accuracy": 0.5, "train/other": 1.0},
               {"train/loss": 0.4, "train/implicit_accuracy": 1.0}]
    first = _flow_dpo_curves(path, history, max_steps=2)
    assert first == {"Flow-DPO loss": [(0, 0.7), (1, 0.4)], "Flow-DPO implicit accuracy": [(0, 0.5), (1, 1.0)]}
    assert _flow_dpo_curves(path, [], max_steps=2) == first  # finished run resumed: nothing trained, all read back
    longer = _flow_dpo_curves(path, [{"train/loss": 0.1, "train/implicit_accuracy": 1.0}], max_steps=3)
    assert longer["Flow-DPO loss"] == [(0, 0.7), (1, 0.4), (2, 0.1)]


def test_curves_png_has_one_panel_per_curve(tmp_path):
    curves = {"a": [(0, 1.0), (1, 2.0)], "b": [(0, math.nan), (1, 0.5)], "c": [(3, 0.0)]}
    path = plot_curves(tmp_path / "curves.png", curves)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1386, 352)  # (4.2 x 3 panels, 3.2) inches at 110 dpi


def test_tiny_grpo_recipe_runs_from_an_empty_folder(tmp_path, monkeypatch, tiny_source_cache):
    """No demo first: tiny:wan and tiny:prompts are built into the cache; the record names the built folder."""
    monkeypatch.chdir(tmp_path)
    argv = ["tune", "grpo", "--config", str(TINY_GRPO), "--output_dir", "run", "--max_steps", "2", "--sample_steps", "0",
            "--report_to", "none"]
    assert main(argv) == 0
    record = json.loads(Path("run/run_config.json").read_text())["config"]
    model, prompts = Path(record["policy"]["model"]), Path(record["run"]["prompts"])
    assert model.parent == tiny_source_cache / "tiny" and model.name.startswith("wan-")
    assert prompts.name == "prompts.txt" and len(prompts.read_text().splitlines()) == 8
    assert sorted({row["step"] for row in map(json.loads, Path("run/rollouts.jsonl").read_text().splitlines())}) == [0, 1]
    assert (Path("run/final") / "pytorch_lora_weights.safetensors").is_file()
    assert main(argv) == 0  # the same command again resumes the finished run


@pytest.mark.slow
def test_demo_runs_twice_in_one_folder(tmp_path, monkeypatch, capsys):
    """The second run resumes every job and prints the same report, curves read back from the first run's logs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["demo", "--output_dir", "demo", "--report_to", "none"]) == 0
    first = capsys.readouterr().out
    png = (tmp_path / "demo" / CURVES_PNG).read_bytes()
    assert main(["demo", "--output_dir", "demo", "--report_to", "none"]) == 0
    second = capsys.readouterr().out
    report, again = ([line for line in out.splitlines() if line.startswith(("[reward]", "[generator]", "[bench]", "   "))]
                     for out in (first, second))
    assert "GRPO mean reward" in first and "Flow-DPO implicit accuracy" in first
    assert again == report  # accuracies, curves, and the comparison and ablation read back from their caches
    table = [line.strip() for line in report if line.strip().startswith("| ")]
    assert table[0].split(" | ")[1:] == ["temporal_smoothness", "brightness", *DEMO_VBENCH[:-1], DEMO_VBENCH[-1] + " |"]
    assert [row.split(" | ")[0] for row in table[1:]] == ["| grpo", "| flow_dpo"]  # (the |---| row is not "| ")
    for name in ("compare", "ablate"):
        assert SMOKE_NOTE in (tmp_path / "demo" / name / "report.md").read_text()
        assert f"report: {Path('demo') / name / 'report.html'}" in first
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "demo" / CURVES_PNG).read_bytes() == png
