"""``descore bench reward-acc``: several reward models' preference accuracy on one benchmark, side by side.

Each distinct (video, prompt) of the benchmark is scored once per reward model by ``descore reward score``'s
own job (:func:`reward.jobs.run_score` on a video index the bench writes), so every score is cached on disk
as it is produced (``scores/<label>.jsonl``), a killed run resumes without rescoring, a video that cannot be
read is recorded as failed, and a reward's settings are checked against the scores it left. Margins are
float32 differences s(A) − s(B) (``docs/preference_accuracy.md``); a pair with a failed side is left out and
counted. Writes ``results.json`` (every number with its protocol), ``results.md`` (the table) and
``results.png`` (a bar chart) into ``output_dir``, which also holds ``run_config.json``: the benchmark the
folder measures. Another benchmark, dimension or video root in the same folder is refused; rewards may be
added or dropped between runs.

A judge that only compares two videos (``vlm_judge`` with ``mode: pairwise``) is asked once per distinct pair
instead; its verdicts are cached the same way in ``scores/<label>.pairs.jsonl`` (``video`` is video A). Its
margin is log P(A better) − log P(B better), and its row adds the direct three-way accuracy of its A / B / tie
answers — the protocol to quote for a judge whose margins are not scores.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from reward import score_output
from reward.base import build_reward
from reward.checkpoint import atomic_file
from reward.entry_file import RewardEntry, read_reward_entry
from reward.errors import ConfigError
from reward.jobs import ScoreConfig, run_score
from reward.json_values import finite_or_none
from reward.run_record import check_output_directory, check_same_run, file_sha256, write_run_config

from .preference_accuracy import Accuracy, accuracy_with_ties, accuracy_without_ties, three_way_accuracy
from .preference_data import VIDEOGEN_DIMENSIONS, Benchmark, BenchmarkFormat, read_benchmark

logger = logging.getLogger(__name__)

JOB = "bench reward-acc"
RUN_RECORD = "run_config.json"


@dataclass
class RewardAccuracyConfig:
    """Which reward models, on which benchmark, written where."""

    reward: list[str] | None = field(
        default=None, metadata={"help": "YAML files, one reward-registry entry each (optional `label`): "
                                        "--reward a.yaml b.yaml. Labels must differ."})
    data: str | None = field(default=None, metadata={"help": "Benchmark file: VideoGen-RewardBench CSV, GenAI-Bench "
                                                             "CSV/JSONL, our pair format or the DeScore stage-1 CSV."})
    video_root: str | None = field(default=None, metadata={"help": "Folder the benchmark's video paths are relative "
                                                                   "to (default: the data file's folder)."})
    dimension: str | None = field(default=None, metadata={"help": f"VideoGen-RewardBench label column: "
                                                                  f"{', '.join(VIDEOGEN_DIMENSIONS)} (default Overall)."})
    benchmark_format: str | None = field(default=None, metadata={"help": "Force the layout: "
                                                                         f"{', '.join(BenchmarkFormat)} (default: from the columns)."})
    output_dir: str | None = field(default=None, metadata={"help": "Results and the score caches."})
    batch_size: int = field(default=4, metadata={"help": "Videos per scoring call."})

    def __post_init__(self) -> None:
        if not self.reward or self.data is None or self.output_dir is None:
            raise ConfigError("--reward (one or more YAML files), --data and --output_dir are required")
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.benchmark_format is not None and self.benchmark_format not in tuple(BenchmarkFormat):
            raise ConfigError(f"--benchmark_format must be one of {', '.join(BenchmarkFormat)}, got {self.benchmark_format!r}")
        labels = [read_reward_entry(path).label for path in self.reward]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ConfigError(f"--reward files share the label(s) {', '.join(repeated)}; give each a distinct `label`")


@dataclass(frozen=True)
class RewardRow:
    """One reward model's line of the table; accuracies are None where undefined (no scored pair)."""

    label: str
    with_ties_exact: Accuracy | None
    with_ties_videoalign: Accuracy | None
    without_ties: Accuracy | None
    three_way: Accuracy | None
    pairs_scored: int
    pairs_failed: int
    parse_failure_rate: float | None
    seconds_per_video: float | None


@dataclass(frozen=True)
class RewardAccuracyReport:
    benchmark: dict[str, Any]
    rows: list[RewardRow]
    table: str
    output_dir: Path


def run_reward_accuracy(config: RewardAccuracyConfig) -> RewardAccuracyReport:
    bench = read_benchmark(config.data, video_root=config.video_root, dimension=config.dimension,
                           benchmark_format=config.benchmark_format)
    if not bench.pairs:
        raise ConfigError(f"{config.data}: no pair left to score ({len(bench.skipped)} skipped; see the log)")
    output = _claim(config, bench)
    index = _write_index(output / "videos.csv", bench)
    rows = [_measure(config, path, index, bench) for path in config.reward]
    info = _benchmark_info(bench)
    table = markdown_table(info, rows)
    with atomic_file(output / "results.json") as handle:
        json.dump({"benchmark": info, "rewards": [asdict(row) for row in rows]}, handle, indent=2)
    with atomic_file(output / "results.md") as handle:
        handle.write(table + "\n")
    plot_accuracies(output / "results.png", rows, title=f"{bench.source.name} ({bench.dimension or bench.format.value})")
    return RewardAccuracyReport(info, rows, table, output)


def _claim(config: RewardAccuracyConfig, bench: Benchmark) -> Path:
    """The output folder, refused when it holds another command's files or another benchmark's results."""
    output = check_output_directory(config.output_dir, marker=RUN_RECORD, overwrite=False)
    record = {"benchmark": {"data": str(bench.source.resolve()), "data_sha256": file_sha256(bench.source),
                            "format": bench.format.value, "dimension": bench.dimension,
                            "video_root": str(Path(config.video_root).resolve()) if config.video_root else None}}
    check_same_run(output, JOB, record, allowed=(),
                   remedy="A folder measures one benchmark: give this one another --output_dir.")
    output.mkdir(parents=True, exist_ok=True)
    write_run_config(output, JOB, record)
    return output


def _write_index(path: Path, bench: Benchmark) -> Path:
    """Every distinct (video, prompt) once, in first-seen order: what each reward model scores."""
    items = dict.fromkeys((video, pair.prompt) for pair in bench.pairs for video in (pair.video_a, pair.video_b))
    with atomic_file(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "file"])
        writer.writerows([prompt, video] for video, prompt in items)
    return path


def _measure(config: RewardAccuracyConfig, reward_file: str, index: Path, bench: Benchmark) -> RewardRow:
    entry = read_reward_entry(reward_file)
    if entry.entry.get("mode") == "pairwise":
        return _judge_pairs(config, entry, index.parent / "scores" / f"{entry.label}.pairs.jsonl", bench)
    label = entry.label
    scores = index.parent / "scores" / f"{label}.jsonl"
    scores.parent.mkdir(exist_ok=True)
    started = time.perf_counter()
    summary = run_score(ScoreConfig(data=str(index), reward=reward_file, output=str(scores), skip_invalid=True,
                                    batch_size=config.batch_size))
    seconds_per_video = _timing(scores, time.perf_counter() - started, summary.scored + summary.failed - summary.resumed)
    records = {(record["video"], record["prompt"]): record
               for record in map(json.loads, scores.read_text(encoding="utf-8").splitlines())}
    return score_row(label, bench, records, seconds_per_video)


def score_row(label: str, bench: Benchmark, records: dict[tuple[str, str], dict[str, Any]],
              seconds_per_video: float | None) -> RewardRow:
    """The accuracies of one reward from its per-video records (``reward`` None where scoring failed)."""
    labels, margins = [], []
    for pair in bench.pairs:
        a, b = records[pair.video_a, pair.prompt]["reward"], records[pair.video_b, pair.prompt]["reward"]
        if a is not None and b is not None:
            labels.append(pair.label)
            margins.append(np.float32(a) - np.float32(b))
    parsed = [record["parse_ok"] for record in records.values() if record.get("parse_ok") is not None]
    return _row(label, bench, labels, margins, None, parse_failure_rate=1 - sum(parsed) / len(parsed) if parsed else None,
                seconds_per_video=seconds_per_video)


def _row(label: str, bench: Benchmark, labels: list[int], margins: list[np.float32], decisions: list[int] | None, *,
         parse_failure_rate: float | None, seconds_per_video: float | None) -> RewardRow:
    scored = len(labels)
    return RewardRow(
        label=label,
        with_ties_exact=accuracy_with_ties(labels, margins, "exact") if scored else None,
        with_ties_videoalign=accuracy_with_ties(labels, margins, "videoalign") if scored else None,
        without_ties=accuracy_without_ties(labels, margins) if any(labels) else None,
        three_way=three_way_accuracy(labels, decisions) if decisions and scored else None,
        pairs_scored=scored,
        pairs_failed=len(bench.pairs) - scored,
        parse_failure_rate=parse_failure_rate,
        seconds_per_video=seconds_per_video,
    )


def _pair_key(video_a: str, video_b: str, prompt: str) -> tuple[str, str, str]:
    return video_a, video_b, prompt


def _judge_pairs(config: RewardAccuracyConfig, entry: RewardEntry, cache: Path, bench: Benchmark) -> RewardRow:
    """A pairwise judge's row: each distinct (A, B, prompt) judged once, verdicts appended to ``cache`` as they
    come (the score file format of ``descore reward score``, so a killed run resumes and other settings are
    refused); unreadable videos are failed pairs."""
    cache.parent.mkdir(exist_ok=True)
    settings = {"reward": entry.settings()}
    earlier = {_pair_key(r["video"], r["video_b"], r["prompt"]): r
               for r in score_output.earlier_records(cache, settings, overwrite=False)}
    wanted = list(dict.fromkeys(_pair_key(p.video_a, p.video_b, p.prompt) for p in bench.pairs))
    records = {key: earlier[key] for key in wanted if key in earlier and "error" not in earlier[key]}
    pending = [key for key in wanted if key not in records]
    score_output.start(cache, settings, overwrite=False)
    started = time.perf_counter()
    if pending:
        judge = build_reward({"skip_invalid": True} | entry.entry)
        with score_output.appending(cache) as handle:
            for start in tqdm(range(0, len(pending), config.batch_size), desc=f"judging ({entry.label})"):
                batch = pending[start : start + config.batch_size]
                verdicts = judge.compare(*(list(column) for column in zip(*batch)))
                lines = [_verdict_record(key, verdict) for key, verdict in zip(batch, verdicts)]
                score_output.append_records(handle, lines)
                records |= dict(zip(batch, lines))
    seconds = _timing(cache, time.perf_counter() - started, 2 * len(pending))
    score_output.finish(cache, [records[key] for key in wanted])
    judged = [(pair, records[_pair_key(pair.video_a, pair.video_b, pair.prompt)]) for pair in bench.pairs]
    judged = [(pair, record) for pair, record in judged if record["margin"] is not None]
    failed_to_parse = sum(record.get("parse_error") is not None for record in records.values())
    return _row(entry.label, bench, [pair.label for pair, _ in judged], [np.float32(r["margin"]) for _, r in judged],
                [r["decision"] for _, r in judged], parse_failure_rate=failed_to_parse / len(records),
                seconds_per_video=seconds)


def _verdict_record(key: tuple[str, str, str], verdict: Any) -> dict[str, Any]:
    """One cached verdict (a :class:`reward.judge_rating.PairJudgement`); failed ones keep their reason."""
    video_a, video_b, prompt = key
    record = {"video": video_a, "video_b": video_b, "prompt": prompt, "prob_a": finite_or_none(verdict.prob_a),
              "prob_b": finite_or_none(verdict.prob_b), "prob_tie": verdict.prob_tie,
              "margin": finite_or_none(verdict.margin), "decision": verdict.decision}
    if verdict.parse_error is not None:
        record["parse_error"] = verdict.parse_error
    if verdict.error is not None:
        record["error"] = verdict.error
    return record



def _timing(scores: Path, seconds: float, videos: int) -> float | None:
    """Seconds per video over every run that scored into ``scores`` (kept beside it, so a resumed run still
    reports the time the videos took)."""
    path = scores.with_suffix(".timing.json")
    total = json.loads(path.read_text()) if path.is_file() else {"seconds": 0.0, "videos": 0}
    if videos:
        total = {"seconds": total["seconds"] + seconds, "videos": total["videos"] + videos}
        with atomic_file(path) as handle:
            json.dump(total, handle)
    return total["seconds"] / total["videos"] if total["videos"] else None


def _benchmark_info(bench: Benchmark) -> dict[str, Any]:
    ties = sum(pair.label == 0 for pair in bench.pairs)
    return {"data": str(bench.source), "format": bench.format.value, "dimension": bench.dimension,
            "pairs": len(bench.pairs), "human_tie_rate": ties / len(bench.pairs), "skipped_rows": len(bench.skipped),
            "skipped": [{"line": line, "reason": reason} for line, reason in bench.skipped]}


def _percent(accuracy: Accuracy | None) -> str:
    return "-" if accuracy is None else f"{100 * accuracy.value:.2f}"


def markdown_table(info: dict[str, Any], rows: list[RewardRow]) -> str:
    """The side-by-side table; accuracies in percent, protocols named in the header."""
    header = ("| reward | with ties (exact) | with ties (VideoAlign) | without ties | three-way (direct) | pairs "
              "| failed pairs | parse failures | s / video |\n|---|---|---|---|---|---|---|---|---|")
    lines = [
        f"| {row.label} | {_percent(row.with_ties_exact)} | {_percent(row.with_ties_videoalign)} "
        f"| {_percent(row.without_ties)} | {_percent(row.three_way)} | {row.pairs_scored} | {row.pairs_failed} "
        f"| {'-' if row.parse_failure_rate is None else f'{100 * row.parse_failure_rate:.1f} %'} "
        f"| {'-' if row.seconds_per_video is None else f'{row.seconds_per_video:.3g}'} |"
        for row in rows
    ]
    title = (f"{info['data']} ({info['format']}{', ' + info['dimension'] if info['dimension'] else ''}): "
             f"{info['pairs']} pairs, human tie rate {100 * info['human_tie_rate']:.1f} %, "
             f"{info['skipped_rows']} row(s) skipped")
    return "\n".join([title, "", header, *lines])


def plot_accuracies(path: Path, rows: list[RewardRow], *, title: str) -> Path:
    """Grouped bars: the three accuracies of each reward (matplotlib's Agg canvas, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    protocols = (("with ties (exact)", "with_ties_exact"), ("with ties (VideoAlign)", "with_ties_videoalign"),
                 ("without ties", "without_ties"))
    if any(row.three_way for row in rows):
        protocols += (("three-way (direct)", "three_way"),)
    figure = Figure(figsize=(1.8 + 1.6 * len(rows), 3.4), dpi=110)
    axes = figure.add_subplot()
    width = 0.8 / len(protocols)
    for offset, (name, attribute) in enumerate(protocols):
        values = [getattr(row, attribute).value * 100 if getattr(row, attribute) else math.nan for row in rows]
        axes.bar(np.arange(len(rows)) + (offset - (len(protocols) - 1) / 2) * width, values, width, label=name)
    axes.set_xticks(np.arange(len(rows)), [row.label for row in rows])
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    with atomic_file(path, "wb") as handle:
        FigureCanvasAgg(figure).print_png(handle)
    return path
