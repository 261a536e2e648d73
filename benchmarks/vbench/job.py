"""``descore bench vbench``: VBench's quality dimensions of a set of videos, cached per video and resumable.

Steps: list the videos (a folder of ``.mp4`` files, or a CSV/JSONL index with a ``file`` column) and read each
header (a bad file fails the run before anything is computed); claim the output folder; load the extractors
from ``--weights`` (VBench's own cache layout, docs/vbench/harness.md); then, video by video, decode every
frame at native resolution with the container's fps (decord, or PyAV where decord fails:
:mod:`reward.decoding`), score each requested dimension (:mod:`benchmarks.vbench.metrics`) and append the
numbers to the per-video cache (:mod:`benchmarks.vbench.cache`), so a killed run resumes where it stopped.
Last, the aggregates, normalised scores and the partial quality score (:mod:`benchmarks.vbench.results`) go
to ``{name}_eval_results.json`` (VBench's layout) and ``results.json`` (with the weight files' sha256, the
settings and the library versions).

``--backend official`` runs the ``vbench`` package itself, in its own interpreter, on the same videos and
weights (:mod:`benchmarks.vbench.official`); its per-video numbers go through the same aggregates.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from reward.checkpoint import atomic_file
from reward.decoding import open_reader
from reward.errors import ConfigError, DataError, VideoDecodeError
from reward.records import read_records
from reward.run_record import (
    check_output_directory,
    check_same_run,
    code_commit,
    library_versions,
    write_run_config,
)
from reward.video import DecodeLimitConfig, DecodeLimits, probe_video

from . import cache
from .metrics import DIMENSIONS, Extractors, VideoScore, check_dimensions, score_video
from .results import CONSISTENCY, aggregate, eval_results, normalized, partial_quality, partial_quality_label

logger = logging.getLogger(__name__)

JOB = cache.JOB
RUN_RECORD = "run_config.json"
EXTRA_LIBRARIES = ("torchvision", "timm", "open_clip_torch", "decord", "av")


@dataclass
class VBenchConfig(DecodeLimitConfig):
    """Which videos, which dimensions, measured with which weights, written where."""

    videos: str | None = field(default=None, metadata={"help": "A folder of .mp4 files, or a CSV/JSONL index "
                                                               "with a `file` column (relative to its folder), "
                                                               "e.g. `tune sample`'s index.csv."})
    weights: str | None = field(default=None, metadata={"help": "Folder of VBench's weight files in its own cache "
                                                                "layout (docs/vbench/harness.md); nothing downloads."})
    dimensions: list[str] = field(default_factory=lambda: list(DIMENSIONS),
                                  metadata={"help": f"Which of {', '.join(DIMENSIONS)}."})
    output_dir: str | None = field(default=None, metadata={"help": "Results and the per-video cache; a re-run "
                                                                   "into it measures only what is missing."})
    backend: Literal["kit", "official"] = field(default="kit", metadata={
        "help": "kit: our implementation; official: the vbench package in its own interpreter (parity)."})
    batch_size: int = field(default=32, metadata={"help": "Frames per encoder call (DINO, CLIP)."})
    device: str | None = field(default=None, metadata={"help": "cuda, cuda:1, cpu; default: cuda if available."})
    official_python: str | None = field(default=None, metadata={
        "help": "Python interpreter that has vbench installed (backend official; default: $DESCORE_VBENCH_PYTHON)."})
    name: str | None = field(default=None, metadata={"help": "Results file prefix, {name}_eval_results.json "
                                                             "(default: the output folder's name)."})

    def __post_init__(self) -> None:
        if self.videos is None or self.weights is None or self.output_dir is None:
            raise ConfigError("--videos, --weights and --output_dir are required")
        if not self.dimensions:
            raise ConfigError(f"--dimensions needs one or more of {', '.join(DIMENSIONS)}")
        try:
            check_dimensions(self.dimensions)
        except ValueError as error:
            raise ConfigError(f"--dimensions: {error}") from error
        if len(set(self.dimensions)) != len(self.dimensions):
            raise ConfigError(f"--dimensions names a dimension twice: {' '.join(self.dimensions)}")
        if self.backend not in ("kit", "official"):
            raise ConfigError(f"--backend must be kit or official, got {self.backend!r}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1, got {self.batch_size}")
        self.decode_limits()  # raises on a bad limit
        if self.backend == "kit" and self.official_python is not None:
            raise ConfigError("--official_python applies to --backend official only")
        if self.backend == "official":
            from .official import official_python

            self.official_python = official_python(self.official_python)
        if self.name is None:
            self.name = Path(self.output_dir).resolve().name


@dataclass(frozen=True)
class VBenchResult:
    """Aggregates (VBench's raw numbers), per-video values (absolute path -> dimension -> VBench's per-video
    number; dynamic degree 0.0/1.0, imaging quality the raw MOS), normalised aggregates and the partial
    quality score (never VBench's Quality: :func:`benchmarks.vbench.results.partial_quality`)."""

    aggregate: dict[str, float]
    per_video: dict[str, dict[str, float]]
    normalized: dict[str, float]
    partial_quality: float | None
    output_dir: Path


def run_vbench(config: VBenchConfig, *, extractors: Extractors | None = None) -> VBenchResult:
    """Measure ``config.videos``; ``extractors`` replaces loading them from ``config.weights`` (tests)."""
    videos = probe_all(list_videos(Path(config.videos)), limits=config.decode_limits())
    output = claim_output(config)
    if config.backend == "official":
        digests = weight_digests(Path(config.weights), config.dimensions)
        scores = official_scores(config, videos, output=output)
        return write_results(config, videos, scores=scores, digests=digests, output=output, device=None)
    device = torch.device(config.device) if config.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if extractors is None:
        extractors = load_weights(config, device)
    missing = extractors.missing(config.dimensions)
    if missing:
        raise ConfigError(f"no extractor for {', '.join(missing)}, which --dimensions {' '.join(config.dimensions)} need")
    digests = weight_digests(Path(config.weights), config.dimensions)
    scores = measure(config, videos, output=output, extractors=extractors, digests=digests, device=device)
    return write_results(config, videos, scores=scores, digests=digests, output=output, device=device)


def list_videos(source: Path) -> list[str]:
    """Absolute paths, each once: a folder's ``.mp4`` files by name, or the ``file`` column of an index.

    Raises:
        ConfigError: ``source`` does not exist. DataError: no video, or index rows naming missing files.
    """
    if source.is_dir():
        videos = sorted(str(path.resolve()) for path in source.iterdir() if path.suffix.lower() == ".mp4" and path.is_file())
        if not videos:
            raise DataError(f"--videos {source} holds no .mp4 file")
        return videos
    if not source.is_file():
        raise ConfigError(f"--videos {source} does not exist (a folder of .mp4 files or a CSV/JSONL index)")
    records = read_records(source)
    if "file" not in records.columns:
        raise DataError(f"{source}: no `file` column (columns: {records.columns})")
    problems, videos = list(records.problems), []
    for line, row in records.rows:
        name = str(row.get("file") or "").strip()
        path = (source.parent / name).resolve()  # an absolute name stays itself
        if not name:
            problems.append((line, "column 'file' is empty"))
        elif not path.is_file():
            problems.append((line, f"video file {path} does not exist"))
        else:
            videos.append(str(path))
    if problems:
        raise DataError(f"{source}: " + "; ".join(f"line {line}: {reason}" for line, reason in sorted(problems)))
    return list(dict.fromkeys(videos))


def probe_all(videos: list[str], *, limits: DecodeLimits) -> list[str]:
    """Read every header before any work: a bad file fails now, not hours in."""
    for video in tqdm(videos, desc="checking videos", disable=len(videos) < 100):
        check_video(video, limits=limits)
    return videos


def check_video(video: str, *, limits: DecodeLimits) -> None:
    """Read the header of ``video`` and check it against ``limits``. All frames are decoded, so their bytes are
    held to ``limits.max_decoded_bytes`` (VBench reads every frame for every dimension).

    Raises:
        VideoDecodeError: the file is unreadable or over a limit.
    """
    info = probe_video(video, limits=limits)
    decoded = info.total_frames * info.width * info.height * 3
    if decoded > limits.max_decoded_bytes:
        raise VideoDecodeError(video, f"its {info.total_frames} frames decode to {decoded:,} bytes, above "
                                      f"--max_video_decoded_bytes {limits.max_decoded_bytes:,}")


def decode_video(video: str) -> tuple[torch.Tensor, float]:
    """What every dimension reads: all frames of the file, uint8 ``(T, 3, H, W)`` at native resolution, and
    the container's fps."""
    reader = open_reader(video)
    return reader.frames(list(range(reader.total_frames))), reader.fps


def claim_output(config: VBenchConfig) -> Path:
    """The output folder: new, empty, or an earlier run of this job with the same backend."""
    output = check_output_directory(config.output_dir, marker=RUN_RECORD, overwrite=False)
    record = {"harness": {"backend": config.backend}}
    check_same_run(output, JOB, record, allowed=(),
                   remedy="A folder holds one backend's measurements: give this one another --output_dir.")
    output.mkdir(parents=True, exist_ok=True)
    write_run_config(output, JOB, record)
    return output


def load_weights(config: VBenchConfig, device: torch.device) -> Extractors:
    from .weights import load_extractors  # the backbones are heavy: imported only to load them

    return load_extractors(Path(config.weights), config.dimensions, device=device)


def weight_digests(weights: Path, dimensions: list[str]) -> dict[str, dict[str, Any]]:
    """Every weight file the dimensions read (relative path -> its sha256 and whether it is the published file);
    a missing file fails here, naming where to get it (:mod:`benchmarks.vbench.weights`)."""
    from .weights import check_weights, required_fields

    return {str(Path(record.path).relative_to(weights)): {"sha256": record.sha256, "published": record.published}
            for record in check_weights(weights, required_fields(dimensions))}


def dimension_settings(dimension: str, *, backend: str, digests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What decides a dimension's numbers (recorded beside its cache; a re-run must match). Batch size and
    device are left out: they change nothing beyond float rounding."""
    from .weights import WEIGHT_FILES

    files = {WEIGHT_FILES[extractor].relative_path for extractor in Extractors.required(dimension)}
    return {"measure": {"dimension": dimension, "backend": backend,
                        "weights": {path: file["sha256"] for path, file in sorted(digests.items()) if path in files}}}


def measure(config: VBenchConfig, videos: list[str], *, output: Path, extractors: Extractors,
            digests: dict[str, dict[str, Any]], device: torch.device) -> dict[str, dict[str, VideoScore]]:
    """Every (video, dimension) score, from the cache or measured now and appended to it."""
    caches = {dimension: cache.cache_path(output, dimension) for dimension in config.dimensions}
    scores = {dimension: cache.open_cache(path, dimension_settings(dimension, backend="kit", digests=digests))
              for dimension, path in caches.items()}
    pending = [video for video in videos if any(video not in scores[dimension] for dimension in caches)]
    if len(pending) < len(videos):
        logger.info("resuming: %d of %d videos already measured", len(videos) - len(pending), len(videos))
    with cache.appending(caches) as handles, torch.inference_mode():
        for video in tqdm(pending, desc="VBench"):
            frames, fps = decode_video(video)
            frames = frames.to(device)
            for dimension in config.dimensions:
                if video not in scores[dimension]:
                    score = score_video(dimension, frames, fps=fps, extractors=extractors, batch_size=config.batch_size)
                    cache.append_score(handles[dimension], video, score)
                    scores[dimension][video] = score
    return {dimension: {video: scores[dimension][video] for video in videos} for dimension in config.dimensions}


def official_scores(config: VBenchConfig, videos: list[str], *, output: Path) -> dict[str, dict[str, VideoScore]]:
    """The ``vbench`` package's per-video numbers; the consistency aggregates weigh each video by its frame
    count minus one, read from the file as our own decoder counts it."""
    from .official import run_official  # runs vbench in a subprocess; imported only for this backend

    values = run_official([Path(video) for video in videos], Path(config.weights), config.dimensions,
                          output / "official", python=config.official_python)
    scores: dict[str, dict[str, VideoScore]] = {}
    for dimension in config.dimensions:
        scores[dimension] = {}
        for video in videos:
            value = values[video][dimension]
            if dimension in CONSISTENCY:
                pairs = open_reader(video).total_frames - 1
                scores[dimension][video] = VideoScore(value, pairs=pairs, similarity_sum=value * pairs)
            else:
                scores[dimension][video] = VideoScore(value)
    return scores


def write_results(config: VBenchConfig, videos: list[str], *, scores: dict[str, dict[str, VideoScore]],
                  digests: dict[str, dict[str, Any]], output: Path, device: torch.device | None) -> VBenchResult:
    """Aggregate, normalise, and write ``{name}_eval_results.json`` and ``results.json``."""
    aggregates = {dimension: aggregate(dimension, list(per_video.values())) for dimension, per_video in scores.items()}
    normalised = {dimension: normalized(dimension, value) for dimension, value in aggregates.items()}
    partial = partial_quality(normalised)
    with atomic_file(output / f"{config.name}_eval_results.json") as handle:
        handle.write(json.dumps(eval_results(aggregates, scores), indent=2, ensure_ascii=False) + "\n")
    summary = {
        "videos": {"source": str(Path(config.videos).resolve()), "count": len(videos)},
        "backend": config.backend,
        "aggregate": aggregates,
        "normalized": normalised,
        "partial_quality": {"value": partial, "label": partial_quality_label(config.dimensions),
                            "dimensions": config.dimensions},
        "weights": {"folder": str(Path(config.weights).resolve()), "files": digests},
        "settings": {"imaging_preprocessing": "longer", "frames": "all, native resolution, container fps",
                     "batch_size": config.batch_size, "device": None if device is None else str(device)},
        "versions": library_versions() | _extra_versions(),
        "commit": code_commit(),
    }
    with atomic_file(output / "results.json") as handle:
        handle.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    per_video = {video: {dimension: scores[dimension][video].value for dimension in scores} for video in videos}
    return VBenchResult(aggregates, per_video, normalised, partial, output)


def _extra_versions() -> dict[str, str]:
    versions = {}
    for name in EXTRA_LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def format_report(result: VBenchResult) -> str:
    """The aggregates as a small table (raw and normalised, ×100 as VBench's leaderboard shows them)."""
    lines = [f"{'dimension':<24} {'score':>8} {'normalised':>11}"]
    lines += [f"{dimension:<24} {100 * value:>8.2f} {100 * result.normalized[dimension]:>11.2f}"
              for dimension, value in result.aggregate.items()]
    if result.partial_quality is not None:
        lines.append(f"{partial_quality_label(list(result.aggregate))}: {100 * result.partial_quality:.2f}")
    lines.append(f"{len(result.per_video)} video(s); wrote {result.output_dir / 'results.json'}")
    return "\n".join(lines)
