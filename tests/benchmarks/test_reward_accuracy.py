"""`descore bench reward-acc` end to end on real mp4s with two registry rewards whose accuracies are known
by hand; resume without rescoring; a folder holding another benchmark's results is refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import reward.jobs as jobs
from benchmarks.preference_accuracy import accuracy_without_ties
from benchmarks.reward_accuracy import RewardAccuracyConfig
from descore.cli import main, run_cli
from reward.errors import ConfigError
from reward.run_record import RunMismatchError
from reward.video import write_video

LEVELS = {"dark": 40, "mid": 90, "light": 140, "bright": 200, "grey1": 120, "grey2": 120}


@pytest.fixture
def benchmark(tmp_path: Path) -> Path:
    """Constant-grey clips; people prefer the brighter video, and call two equal greys a tie. Pairs: bright >
    dark (A), mid < light (B), grey1 = grey2 (tie), and one pair whose video B is missing."""
    folder = tmp_path / "bench"
    folder.mkdir()
    for name, level in LEVELS.items():
        write_video(folder / f"{name}.mp4", np.full((8, 32, 32, 3), level, dtype=np.uint8), 4.0)
    rows = [("p1", "bright.mp4", "dark.mp4", "A"), ("p2", "mid.mp4", "light.mp4", "B"),
            ("p3", "grey1.mp4", "grey2.mp4", "tie"), ("p4", "dark.mp4", "gone.mp4", "A")]
    with (folder / "pairs.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("prompt", "video_a", "video_b", "label"), *rows])
    (folder / "brightness.yaml").write_text("name: brightness\n")
    (folder / "smooth.yaml").write_text("name: temporal_smoothness\nlabel: smooth\n")
    return folder


def test_two_rewards_side_by_side_then_resumed(benchmark, tmp_path, monkeypatch, capsys):
    """brightness ranks both decided pairs right and gives the equal greys margin 0: 100 % everywhere. Temporal
    smoothness is the same for every constant clip, so every margin is 0: without ties 0/2 (m = 0 is wrong);
    with ties the best is ε = 0, where the model ties all three and only the human tie is right: 1/3."""
    argv = ["bench", "reward-acc", "--reward", str(benchmark / "brightness.yaml"), str(benchmark / "smooth.yaml"),
            "--data", str(benchmark / "pairs.csv"), "--output_dir", str(tmp_path / "out")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| brightness | 100.00 | 100.00 | 100.00 | - | 3 | 0 | - |" in printed
    assert "| smooth | 33.33 | 33.33 | 0.00 | - | 3 | 0 | - |" in printed
    assert "3 pairs, human tie rate 33.3 %, 1 row(s) skipped" in printed
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    smooth = results["rewards"][1]
    assert smooth["with_ties_exact"] == {"value": pytest.approx(1 / 3), "pairs": 3, "threshold": 0.0,
                                         "protocol": "with ties, threshold calibrated on the evaluated pairs (exact)"}
    assert smooth["without_ties"]["value"] == 0.0 and smooth["without_ties"]["protocol"] == "without ties"
    assert results["benchmark"]["skipped"] == [{"line": 5, "reason": f"video file {benchmark / 'gone.mp4'} does not exist"}]
    assert (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "out" / "scores" / "brightness.jsonl").read_text().splitlines()) == 6  # 6 distinct videos

    loads = []
    scorer = jobs._batch_scorer
    monkeypatch.setattr(jobs, "_batch_scorer", lambda config: loads.append(config) or scorer(config))
    assert main(argv) == 0  # everything is cached: no model is built, the same table comes back
    assert loads == [] and capsys.readouterr().out.split("\n\nwrote")[0] == printed.split("\n\nwrote")[0]


def test_another_benchmark_in_the_same_folder_is_refused(benchmark, tmp_path):
    argv = ["bench", "reward-acc", "--reward", str(benchmark / "brightness.yaml"), "--data", str(benchmark / "pairs.csv"),
            "--output_dir", str(tmp_path / "out")]
    assert main(argv) == 0
    rows = (benchmark / "pairs.csv").read_text().splitlines()
    (benchmark / "pairs.csv").write_text("\n".join(rows[:3]) + "\n")
    with pytest.raises(RunMismatchError, match="benchmark.data_sha256(.|\n)*give this one another --output_dir"):
        run_cli(argv)


def test_labels_must_differ(benchmark):
    (benchmark / "again.yaml").write_text("name: temporal_smoothness\nlabel: brightness\n")
    with pytest.raises(ConfigError, match="share the label"):
        RewardAccuracyConfig(reward=[str(benchmark / "brightness.yaml"), str(benchmark / "again.yaml")],
                             data=str(benchmark / "pairs.csv"), output_dir="out")


def test_a_pairwise_judge_is_asked_once_per_pair_and_reports_three_way_accuracy(tiny_zoo, tmp_path, monkeypatch):
    """A tiny pairwise vlm_judge on the photo benchmark: its row equals the metrics computed here from its own
    compare() verdicts, and a second run reads every verdict from the cache instead of building the judge."""
    import benchmarks.reward_accuracy as reward_accuracy
    from benchmarks.preference_accuracy import three_way_accuracy
    from benchmarks.preference_data import read_benchmark
    from benchmarks.synthetic import make_photo_benchmark
    from reward import build_reward

    data = make_photo_benchmark(tmp_path / "bench", pairs=3, ties=1, frames=8)
    entry = tiny_zoo["vlm_judge"] | {"mode": "pairwise", "tie_label": "0"}
    (tmp_path / "judge.yaml").write_text(yaml.safe_dump(entry | {"label": "judge"}))
    argv = ["bench", "reward-acc", "--reward", str(tmp_path / "judge.yaml"), "--data", str(data),
            "--output_dir", str(tmp_path / "out")]
    assert main(argv) == 0

    pairs = read_benchmark(data).pairs
    verdicts = build_reward(entry).compare([p.video_a for p in pairs], [p.video_b for p in pairs], [p.prompt for p in pairs])
    labels = [p.label for p in pairs]
    (row,) = json.loads((tmp_path / "out" / "results.json").read_text())["rewards"]
    assert row["three_way"]["value"] == three_way_accuracy(labels, [v.decision for v in verdicts]).value
    assert row["three_way"]["protocol"] == "three-way (direct A / B / tie answers)"
    margins = [np.float32(v.margin) for v in verdicts]
    assert row["without_ties"]["value"] == accuracy_without_ties(labels, margins).value
    cached = [json.loads(line) for line in (tmp_path / "out" / "scores" / "judge.pairs.jsonl").read_text().splitlines()]
    assert [r["prob_a"] for r in cached] == pytest.approx([v.prob_a for v in verdicts], abs=1e-6)

    monkeypatch.setattr(reward_accuracy, "build_reward", lambda entry: pytest.fail("the judge was built again"))
    assert main(argv) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rewards"][0]["three_way"] == row["three_way"]
