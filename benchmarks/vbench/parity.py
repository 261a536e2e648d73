"""Parity of the kit's VBench dimensions with VBench's own code: both backends, same videos, same weights.

    python -m benchmarks.vbench.parity --videos DIR --weights DIR --output_dir OUT [--official_python PY]

runs ``descore bench vbench`` twice (``--backend kit`` into OUT/kit, ``--backend official`` into OUT/official),
then compares the per-video values: a table of both numbers and |Δ| per (video, dimension), and per dimension the
largest |Δ| against its tolerance. Writes OUT/parity.md and OUT/parity.json; exits 1 when a dimension is over its
tolerance. docs/vbench/official.md explains the tolerances and the one deviation on the official side (DINO).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reward.errors import CheckpointError, ConfigError, DataError, VideoDecodeError

PerVideo = Mapping[str, Mapping[str, float]]  # video path -> dimension -> value

# Largest |kit - official| accepted per video. Consistency, aesthetic and flickering values are in 0..1; imaging is
# MUSIQ's MOS (0..100) per video, so 1e-2 there is 1e-4 on VBench's aggregate (MOS / 100); dynamic degree is a
# per-video decision (0 or 1) and must agree exactly.
TOLERANCES: dict[str, float] = {
    "subject_consistency": 1e-4,
    "background_consistency": 1e-4,
    "aesthetic_quality": 1e-4,
    "imaging_quality": 1e-2,
    "dynamic_degree": 0.0,
    "temporal_flickering": 1e-4,
}


@dataclass(frozen=True)
class Row:
    video: str
    dimension: str
    kit: float
    official: float

    @property
    def difference(self) -> float:
        return abs(self.kit - self.official)


@dataclass(frozen=True)
class DimensionParity:
    dimension: str
    max_difference: float  # NaN when either backend gave NaN for some video
    tolerance: float
    worst_video: str

    @property
    def passed(self) -> bool:
        return self.max_difference <= self.tolerance  # False for NaN


@dataclass(frozen=True)
class ParityReport:
    rows: list[Row]
    dimensions: list[DimensionParity]

    @property
    def passed(self) -> bool:
        return all(dimension.passed for dimension in self.dimensions)


def compare_backends(kit: PerVideo, official: PerVideo, dimensions: Sequence[str],
                     tolerances: Mapping[str, float]) -> ParityReport:
    """Pair up both backends' values; a video or dimension one of them lacks is a DataError naming it."""
    if set(kit) != set(official):
        raise DataError(f"the backends scored different videos: only kit {sorted(set(kit) - set(official))}, "
                        f"only official {sorted(set(official) - set(kit))}")
    rows, summary = [], []
    for dimension in dimensions:
        missing = [video for video in sorted(kit) if dimension not in kit[video] or dimension not in official[video]]
        if missing:
            raise DataError(f"{dimension}: no value from one backend for {missing}")
        paired = [Row(video, dimension, kit[video][dimension], official[video][dimension]) for video in sorted(kit)]
        rows += paired
        worst = max(paired, key=lambda row: math.inf if math.isnan(row.difference) else row.difference)
        summary.append(DimensionParity(dimension, worst.difference, tolerances[dimension], worst.video))
    return ParityReport(rows, summary)


def format_report(report: ParityReport) -> str:
    """Markdown: the per-video table, then max |Δ| and tolerance per dimension."""
    lines = ["| video | dimension | kit | official | abs diff |", "|---|---|---|---|---|"]
    lines += [f"| {Path(row.video).name} | {row.dimension} | {row.kit:.6f} | {row.official:.6f} | "
              f"{row.difference:.2e} |" for row in report.rows]
    lines += ["", "| dimension | max abs diff | tolerance | worst video | parity |", "|---|---|---|---|---|"]
    lines += [f"| {item.dimension} | {item.max_difference:.2e} | {item.tolerance:.0e} | {Path(item.worst_video).name} "
              f"| {'ok' if item.passed else 'FAIL'} |" for item in report.dimensions]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ParityConfig:
    videos: str = field(metadata={"help": "Folder of mp4s, or a CSV/JSONL index with a `file` column."})
    weights: str = field(metadata={"help": "Weights folder in VBench's cache layout, used by both backends."})
    output_dir: str = field(metadata={"help": "Gets kit/, official/, parity.md and parity.json."})
    dimensions: tuple[str, ...] = field(default=tuple(TOLERANCES), metadata={"help": "Dimensions to compare."})
    official_python: str | None = field(default=None, metadata={
        "help": "Interpreter with vbench installed (default: $DESCORE_VBENCH_PYTHON)."})
    device: str | None = field(default=None, metadata={"help": "Device of the kit backend (default: cuda if any)."})
    tolerances: Mapping[str, float] = field(default_factory=lambda: dict(TOLERANCES), metadata={
        "help": "Largest accepted |kit - official| per dimension."})

    def __post_init__(self) -> None:
        unknown = sorted((set(self.dimensions) | set(self.tolerances)) - set(TOLERANCES))
        if unknown:
            raise ConfigError(f"unknown dimension(s) {unknown}; known: {sorted(TOLERANCES)}")
        missing = sorted(set(self.dimensions) - set(self.tolerances))
        if missing:
            raise ConfigError(f"no tolerance for {missing}")


def run_parity(config: ParityConfig) -> ParityReport:
    """Both backends through ``run_vbench`` (so the comparison covers the job's dispatch too), then compare."""
    from benchmarks.vbench.job import VBenchConfig, run_vbench

    output = Path(config.output_dir)
    per_video = {}
    for backend in ("kit", "official"):
        result = run_vbench(VBenchConfig(
            videos=config.videos, weights=config.weights, dimensions=list(config.dimensions),
            output_dir=str(output / backend), backend=backend, device=config.device if backend == "kit" else None,
            official_python=config.official_python if backend == "official" else None,
        ))
        per_video[backend] = result.per_video
    report = compare_backends(per_video["kit"], per_video["official"], config.dimensions, config.tolerances)
    (output / "parity.md").write_text(format_report(report))
    (output / "parity.json").write_text(json.dumps({
        "passed": report.passed,
        "dimensions": [{**asdict(item), "passed": item.passed} for item in report.dimensions],
        "rows": [{**asdict(row), "difference": row.difference} for row in report.rows],
    }, indent=1))
    return report


def parse_tolerance(text: str) -> tuple[str, float]:
    dimension, separator, value = text.partition("=")
    if not separator:
        raise argparse.ArgumentTypeError(f"--tolerance takes DIMENSION=VALUE, got {text!r}")
    return dimension, float(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vbench.parity", description=__doc__.split("\n")[0])
    for name in ("videos", "weights", "output_dir"):
        parser.add_argument(f"--{name}", required=True, help=ParityConfig.__dataclass_fields__[name].metadata["help"])
    parser.add_argument("--dimensions", nargs="+", default=list(TOLERANCES))
    parser.add_argument("--official_python")
    parser.add_argument("--device")
    parser.add_argument("--tolerance", type=parse_tolerance, action="append", default=[],
                        help="DIMENSION=VALUE, overrides one default tolerance (repeatable)")
    args = parser.parse_args(argv)
    try:
        report = run_parity(ParityConfig(
            videos=args.videos, weights=args.weights, output_dir=args.output_dir, dimensions=tuple(args.dimensions),
            official_python=args.official_python, device=args.device,
            tolerances={**TOLERANCES, **dict(args.tolerance)},
        ))
    except (ConfigError, DataError, CheckpointError, VideoDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_report(report), end="")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
