"""The official backend of ``descore bench vbench``: VBench's own code (PyPI ``vbench`` 0.1.5) on the same videos.

For parity checks (docs/vbench/official.md): it answers the question "does the kit's implementation give VBench's
numbers?" by running VBench's ``VBench.evaluate`` (``vbench/__init__.py``, github.com/Vchitect/VBench) in
``custom_input`` + local mode with the weights of the kit's ``--weights`` folder. VBench pins ``numpy<2`` and
``transformers==4.33.2`` and its imaging dimension needs ``pyiqa`` (non-commercial licence), so it never enters the
kit's environment: it runs in its own interpreter (config ``official_python`` or env ``DESCORE_VBENCH_PYTHON``) on
``official_driver.py``, which talks to this module through one request JSON and one results JSON.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmarks.vbench.official_driver import DINO_REPO, DINO_WEIGHTS, IMPORT_FAILED
from reward.errors import ConfigError, VideoDecodeError

logger = logging.getLogger(__name__)

PYTHON_VARIABLE = "DESCORE_VBENCH_PYTHON"
DRIVER = Path(__file__).with_name("official_driver.py")
VIDEO_SUFFIXES = (".mp4", ".gif")  # what VBench's custom_input mode picks up from a folder
LOG_TAIL_LINES = 25
RESULTS_FILE = "driver_results.json"  # not results.json: the job writes that name into its own output folder


def dimension_files(dimension: str) -> tuple[str, ...]:
    """The --weights files (VBench's cache layout, :data:`benchmarks.vbench.weights.WEIGHT_FILES`) a dimension reads."""
    from .metrics import Extractors
    from .weights import WEIGHT_FILES

    return tuple(WEIGHT_FILES[field].relative_path for field in Extractors.required(dimension))


DINO_FILE = "dino_model/dino_vitbase16_pretrain.pth"
SETUP_HINT = "set up VBench's own venv as docs/vbench/official.md shows"


def official_python(configured: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The official interpreter: the config's ``official_python``, else ``$DESCORE_VBENCH_PYTHON``; must exist."""
    python = configured or environ.get(PYTHON_VARIABLE)
    if not python:
        raise ConfigError(f"backend 'official' needs VBench's interpreter: set official_python or "
                          f"{PYTHON_VARIABLE} to its python ({SETUP_HINT})")
    check_python(python)
    return python


def check_python(python: str) -> None:
    if Path(python).is_dir() or not os.access(python, os.X_OK):
        raise ConfigError(f"official_python {python!r} is not an executable file ({SETUP_HINT})")


def check_videos(videos: Sequence[Path]) -> list[str]:
    """Absolute paths of the videos; each must exist and be a kind VBench's custom_input mode reads."""
    if not videos:
        raise ConfigError("the official backend got no videos")
    checked = []
    for video in videos:
        if not Path(video).is_file():
            raise VideoDecodeError(str(video), "no such file")
        if Path(video).suffix.lower() not in VIDEO_SUFFIXES:
            raise ConfigError(f"the official backend reads only {'/'.join(VIDEO_SUFFIXES)} files (VBench's "
                              f"custom_input mode skips others), got {video}")
        checked.append(os.path.abspath(video))
    return checked


def weight_links(weights_dir: Path, dimensions: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Symlinks to lay out: (under $VBENCH_CACHE_DIR, under $TORCH_HOME), relative path -> file in ``weights_dir``.

    The --weights layout is VBench's cache layout, so cache links keep their relative paths; DINO's file also goes
    where DINO's hubconf reads it. A missing file is a ConfigError naming it.
    """
    from .metrics import DIMENSIONS

    unknown = sorted(set(dimensions) - set(DIMENSIONS))
    if unknown:
        raise ConfigError(f"the official backend has no dimension {unknown}; known: {sorted(DIMENSIONS)}")
    cache = {}
    for relative in sorted({name for dimension in dimensions for name in dimension_files(dimension)}):
        source = weights_dir / relative
        if not source.is_file():
            raise ConfigError(f"weights file {source} is missing (needed by {sorted(dimensions)}); the --weights "
                              f"folder uses VBench's cache layout (docs/vbench/official.md)")
        cache[relative] = str(source.resolve())
    if DINO_FILE in cache and (weights_dir / DINO_REPO / "hubconf.py").is_file():
        cache[DINO_REPO] = str((weights_dir / DINO_REPO).resolve())
    torch_home = {DINO_WEIGHTS: cache[DINO_FILE]} if DINO_FILE in cache else {}
    return cache, torch_home


def log_tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])


def run_driver(python: str, request: Path, log: Path) -> None:
    """Run ``official_driver.py`` isolated (``-I``: no PYTHONPATH, so the kit is invisible to it); errors carry
    the log's last lines."""
    with log.open("w") as handle:
        status = subprocess.run([python, "-I", str(DRIVER), str(request)], stdout=handle, stderr=subprocess.STDOUT,
                                check=False).returncode
    if status == IMPORT_FAILED:
        raise ConfigError(f"official_python {python} cannot import vbench ({SETUP_HINT}):\n{log_tail(log)}")
    if status != 0:
        raise RuntimeError(f"official VBench failed (exit {status}); full log {log}:\n{log_tail(log)}")


def check_complete(per_video: Mapping[str, Mapping[str, float]], videos: Sequence[str],
                   dimensions: Sequence[str], results: Path) -> None:
    """VBench drops a video it cannot read from some dimensions (temporal_flickering) instead of failing."""
    missing = [f"{video}: {dimension}" for video in videos for dimension in dimensions
               if dimension not in per_video.get(video, {})]
    if missing:
        raise RuntimeError(f"official VBench returned no value for {len(missing)} (video, dimension) pairs "
                           f"(see {results}): " + "; ".join(missing[:10]))


def run_official(videos: Sequence[Path], weights_dir: Path, dimensions: Sequence[str], output_dir: Path, *,
                 python: str, device: str | None = None) -> dict[str, dict[str, float]]:
    """Per-video values of VBench's own code: absolute video path -> dimension -> value (dynamic_degree 0.0/1.0,
    imaging_quality as MUSIQ's MOS, like the kit backend).

    ``device`` None lets VBench's interpreter take CUDA when it has it. Writes into ``output_dir``:
    ``request.json``, ``driver.log``, VBench's ``official_full_info.json`` / ``official_eval_results.json`` and
    ``driver_results.json`` (per-video values, aggregates, library versions, which DINO ran). Nothing is cached: a rerun
    evaluates again.
    """
    check_python(python)
    paths = check_videos(videos)
    cache_links, torch_links = weight_links(Path(weights_dir), dimensions)
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    results = folder / RESULTS_FILE
    results.unlink(missing_ok=True)
    request = folder / "request.json"
    request.write_text(json.dumps({
        "videos": paths, "dimensions": list(dimensions), "device": device, "output_dir": str(folder.resolve()),
        "results": str(results.resolve()), "cache_links": cache_links, "torch_links": torch_links,
    }, indent=1))
    run_driver(python, request, folder / "driver.log")
    document = json.loads(results.read_text())
    logger.info("official VBench %s on %s (DINO: %s)", document["versions"]["vbench"], document["device"],
                document["dino"])
    check_complete(document["per_video"], paths, dimensions, results)
    return {video: {dimension: document["per_video"][video][dimension] for dimension in dimensions}
            for video in paths}
