"""`descore bench reward-acc` with several kinds of reward model on clips of a real photograph: a run killed
mid-way (SIGKILL, in a real subprocess) resumes without rescoring any cached item, and its results equal those
of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

import reward.jobs as jobs
from benchmarks.synthetic import make_photo_benchmark
from descore.cli import main
from reward.score_output import partial_path

from ..conftest import REPO_ROOT


def _entries(folder: Path, descore: Path, zoo: dict) -> list[Path]:
    """The reward YAMLs: DeScore writing a CoT first (the slow one, so the kill lands inside it), DeScore's
    one-forward mode, a sanity reward and a zoo model (a tiny HPSv2 in its upstream layout)."""
    entries = {
        "descore_cot.yaml": f"name: descore\npath: {descore}\nbatch_size: 1\ngeneration: {{max_new_tokens: 24}}\n",
        "descore_fast.yaml": f"name: descore_no_cot\npath: {descore}\nlabel: descore-fast\n",
        "smooth.yaml": "name: temporal_smoothness\n",
        "hpsv2.yaml": yaml.safe_dump(zoo["hpsv2"]),
    }
    for name, text in entries.items():
        (folder / name).write_text(text)
    return [folder / name for name in entries]


def _cached(scores: Path) -> set[tuple[str, str]]:
    """The (video, prompt) items a score file holds."""
    if not scores.is_file():
        return set()
    return {(record["video"], record["prompt"]) for record in map(json.loads, filter(None, scores.read_text().splitlines()))}


def _results(output: Path) -> dict:
    """results.json without what differs between any two runs: wall-clock timing."""
    results = json.loads((output / "results.json").read_text())
    for row in results["rewards"]:
        row.pop("seconds_per_video")
    return results


def test_killed_run_resumes_to_the_uninterrupted_table(tiny_descore_dir, tiny_zoo, tmp_path, monkeypatch):
    data = make_photo_benchmark(tmp_path / "bench", pairs=6, ties=2, frames=8)
    rewards = [str(path) for path in _entries(tmp_path, tiny_descore_dir, tiny_zoo)]

    def argv(output: Path) -> list[str]:
        return ["bench", "reward-acc", "--reward", *rewards, "--data", str(data), "--output_dir", str(output),
                "--batch_size", "1"]

    killed = tmp_path / "killed"
    first = killed / "scores" / "descore.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "descore", *argv(killed)], cwd=REPO_ROOT,
                               env=os.environ | {"PYTHONPATH": str(REPO_ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(_cached(partial_path(first))) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    stderr = process.communicate()[1].decode()
    assert process.returncode == -signal.SIGKILL, stderr
    assert not (killed / "results.json").exists()  # killed before the end
    assert not first.exists()  # killed while scoring the first model: only its partial file is there
    cached = _cached(partial_path(first))
    assert len(cached) >= 3

    scored = []
    pending = jobs._score_pending
    monkeypatch.setattr(jobs, "_score_pending", lambda config, items, *rest: scored.extend(
        (item.video, item.prompt) for item in items if Path(config.output) == first) or pending(config, items, *rest))
    assert main(argv(killed)) == 0
    assert scored and not cached & set(scored)  # the rest of the first model, and nothing it had cached
    assert len(cached | set(scored)) == 16  # 8 pairs of distinct clips

    uninterrupted = tmp_path / "uninterrupted"
    assert main(argv(uninterrupted)) == 0
    assert _results(killed) == _results(uninterrupted)
    assert (killed / "results.md").read_text().count("\n| ") == 5  # the header and four rewards
