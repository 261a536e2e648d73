"""`reward score` on a video index (`tune sample`'s index.csv: prompt, seed, file relative to its folder) with
any registry reward (`--reward R.yaml`): the numbers are the reward's own, the settings record names the
entry, a finished output is not scored again and another reward is refused; bad entries, options that only
DeScore reads and bad index rows are refused before anything is scored."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from descore.cli import main
from reward import build_reward
from reward.errors import ConfigError, DataError
from reward.jobs import ScoreConfig, run_score
from reward.run_record import RunMismatchError
from reward.sanity import FrameStatisticReward
from reward.score_output import settings_path
from reward.score_report import PromptMean, RewardStats, prompt_table, reward_table

from .helpers import small_clip, truncated_clip
from .test_jobs import Calls

PROMPTS = ["a red square", "a red square", "a cat"]


def write_index(folder: Path, files: list[str], prompts: list[str] = PROMPTS) -> Path:
    """An index.csv as `tune sample` writes it (extra columns included)."""
    with (folder / "index.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "seed", "file", "sampler"])
        writer.writerows([prompt, 1000 * i, file, "pipeline"] for i, (prompt, file) in enumerate(zip(prompts, files)))
    return folder / "index.csv"


@pytest.fixture
def sampled(tmp_path) -> Path:
    """A sampler output folder: three clips under videos/ and the index beside them."""
    folder = tmp_path / "samples"
    files = [f"videos/{i}.mp4" for i in range(len(PROMPTS))]
    for i, file in enumerate(files):
        small_clip(folder / file, seed=i)
    return write_index(folder, files)


def reward_file(folder: Path, text: str, name: str = "reward.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_an_index_is_scored_with_a_registry_reward(sampled, tmp_path, monkeypatch):
    entry = reward_file(tmp_path, "name: temporal_smoothness\nlabel: smoothness\n")
    output = tmp_path / "scores.jsonl"
    summary = run_score(ScoreConfig(reward=str(entry), data=str(sampled), output=str(output)))
    videos = [str(sampled.parent / "videos" / f"{i}.mp4") for i in range(3)]
    expected = [item.reward for item in build_reward({"name": "temporal_smoothness"}).score(videos, PROMPTS).items]
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["video"], r["prompt"], r["reward"]) for r in records] == list(zip(videos, PROMPTS, expected))
    assert json.loads(settings_path(output).read_text())["config"] == {
        "reward": {"entry": {"name": "temporal_smoothness"}, "path": None, "fingerprint": None}}
    assert (summary.scored, summary.failed, summary.skipped_rows) == (3, 0, 0)
    assert summary.rewards == (RewardStats.of("smoothness", expected),)
    assert summary.prompt_means == (PromptMean("a red square", 2, (expected[0] + expected[1]) / 2), PromptMean("a cat", 1, expected[2]))

    scored = Calls(monkeypatch, FrameStatisticReward, "score")
    again = run_score(ScoreConfig(reward=str(entry), data=str(sampled), output=str(output)))
    assert scored.count == 0 and again.resumed == 3 and again.rewards == summary.rewards
    other = reward_file(tmp_path, "name: brightness\n", "other.yaml")
    with pytest.raises(RunMismatchError, match=r"reward\.entry: .*temporal_smoothness.* -> .*brightness"):
        run_score(ScoreConfig(reward=str(other), data=str(sampled), output=str(output)))
    assert scored.count == 0


def test_unreadable_index_rows_are_listed_or_skipped(tmp_path):
    folder = tmp_path / "samples"
    small_clip(folder / "good.mp4")
    truncated_clip(folder / "cut.mp4")
    index = write_index(folder, ["good.mp4", "missing.mp4", "cut.mp4"])
    entry = reward_file(tmp_path, "name: temporal_smoothness\n")
    with pytest.raises(DataError, match=rf"{index}: 1 invalid row\(s\).*\n  line 3: video file {folder / 'missing.mp4'} does not exist"):
        run_score(ScoreConfig(reward=str(entry), data=str(index), output=str(tmp_path / "a.jsonl")))
    write_index(folder, ["good.mp4", "cut.mp4"], PROMPTS[:2])
    with pytest.raises(DataError, match=rf"1 video file\(s\) listed in {index} cannot be read:\n  {folder / 'cut.mp4'}: "):
        run_score(ScoreConfig(reward=str(entry), data=str(index), output=str(tmp_path / "b.jsonl")))
    write_index(folder, ["good.mp4", "missing.mp4", "cut.mp4"])
    summary = run_score(ScoreConfig(reward=str(entry), data=str(index), output=str(tmp_path / "c.jsonl"), skip_invalid=True))
    assert (summary.scored, summary.failed, summary.skipped_rows) == (1, 1, 1)
    failed = json.loads((tmp_path / "c.jsonl").read_text().splitlines()[1])
    assert failed["video"] == str(folder / "cut.mp4") and failed["reward"] is None and failed["error"]
    assert summary.rewards[0].failures == 1 and math.isfinite(summary.rewards[0].mean)


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("name: temporal_smoothness\n", {"model": "some/checkpoint"}, "give exactly one of --model"),
        ("name: temporal_smoothness\nweight: 1.0\n", {}, "'weight' only applies to a training reward mix"),
        ("- {name: temporal_smoothness}\n", {}, "must hold one mapping with a name"),
        ("path: x\n", {}, "must hold one mapping with a name"),
        ("name: [unclosed\n", {}, "is not readable YAML"),
        ("name: no_such_reward\n", {}, r"unknown reward model 'no_such_reward'; registered: \[.*'temporal_smoothness'"),
        ("name: temporal_smoothness\nstride: 2\n", {}, r"reward model 'temporal_smoothness' does not take options \['stride'\]"),
        ("name: temporal_smoothness\n", {"dtype": "bfloat16", "cot": False},
         r"--cot, --dtype only apply to --model \(a DeScore checkpoint\); with --reward, set the reward's options in"),
        ("name: temporal_smoothness\n", {"cot_source": "data"}, "--cot_source only apply to --model"),
    ],
)
def test_bad_reward_entries_and_descore_options_are_refused(sampled, tmp_path, text, overrides, message):
    entry = reward_file(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        ScoreConfig(**{"reward": str(entry), "data": str(sampled), "output": str(tmp_path / "s.jsonl")} | overrides)
    with pytest.raises(ConfigError, match=f"--reward {tmp_path / 'nope.yaml'} is not a file"):
        ScoreConfig(reward=str(tmp_path / "nope.yaml"), data=str(sampled), output=str(tmp_path / "s.jsonl"))


def test_the_command_line_prints_the_table(sampled, tmp_path, capsys):
    entry = reward_file(tmp_path, "{name: brightness}\n")
    output = tmp_path / "scores.jsonl"
    assert main(["reward", "score", "--data", str(sampled), "--reward", str(entry), "--output", str(output)]) == 0
    printed = capsys.readouterr().out.splitlines()
    rewards = [json.loads(line)["reward"] for line in output.read_text().splitlines()]
    assert printed[0] == "scored 3 video(s), 0 failed, 0 data row(s) skipped"
    assert printed[2:4] == reward_table([RewardStats.of("brightness", rewards)])
    assert printed[5:] == prompt_table([PromptMean("a red square", 2, (rewards[0] + rewards[1]) / 2),
                                        PromptMean("a cat", 1, rewards[2])])
