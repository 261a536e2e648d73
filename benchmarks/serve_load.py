"""Load benchmark of the reward server (``descore reward serve``): latency and throughput over a grid of client
concurrency × batch size.

For each batch size B the script starts a real server process on 127.0.0.1 (``--max_batch_size B``), then
for each concurrency C runs C client threads at once, each sending ``requests`` POST /score requests of B
in-memory clips one after another (uint8 frames in a ``.npy`` part, as a GRPO rollout sends them through the
``remote`` reward). Per cell it reports the latency of a request (send to answer, ms) at p50 and p95 over the
answered requests (linear-interpolated quantiles, as :func:`reward.calibration.quantile`), the videos scored
per second of wall time, the count of 429 answers (queue full: the client would back off and retry) and of
errors (any other failed request or video). One untimed request warms each server up. Requests are not
retried here: a 429 is counted, not hidden.

The reward: ``--reward R.yaml`` (one registry entry, as ``descore reward serve --reward`` reads it), else a
tiny random-weight DeScore in no-CoT mode over the tiny Qwen3-VL (:mod:`reward.tiny_models`, built in a
temporary folder), or with ``--tiny`` the brightness sanity reward (a smoke test of the harness itself)::

    python -m benchmarks.serve_load --json_out results/serve_load.json
    python -m benchmarks.serve_load --tiny --concurrency 1 2 --batch_sizes 1 2 --requests 2
    python -m benchmarks.serve_load --reward descore.yaml --clip_frames 81 --clip_height 480 --clip_width 832
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from transformers import HfArgumentParser

from reward import VideoFrames
from reward.calibration import quantile
from reward.entry_file import read_reward_entry
from reward.errors import ConfigError
from reward.remote import ScoreRequest, build_request

logger = logging.getLogger(__name__)

PROMPT = "a red square moving left across a grey background"
TINY_SPEC = {"fps": 2.0, "min_frames": 4, "max_frames": 8, "min_pixels": 1024, "max_pixels": 4096, "pixel_factor": 32}


@dataclass
class ServeLoadConfig:
    reward: str | None = field(default=None, metadata={
        "help": "YAML file holding one reward entry to serve; default: a tiny DeScore (no CoT), or with --tiny "
                "the brightness reward."})
    tiny: bool = field(default=False, metadata={"help": "Serve the brightness sanity reward (a harness smoke test)."})
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4],
                                   metadata={"help": "Client threads sending at once (one grid axis)."})
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4], metadata={
        "help": "Videos per request, and the server's --max_batch_size (the other grid axis)."})
    requests: int = field(default=8, metadata={"help": "Requests each client sends per grid cell."})
    max_wait_ms: float = field(default=10.0, metadata={"help": "The server's --max_wait_ms."})
    max_queue: int = field(default=256, metadata={"help": "The server's --max_queue (videos waiting)."})
    clip_frames: int = field(default=16, metadata={"help": "Frames per clip (random uint8 pixels)."})
    clip_height: int = field(default=48, metadata={"help": "Clip height in pixels."})
    clip_width: int = field(default=80, metadata={"help": "Clip width in pixels."})
    clip_fps: float = field(default=16.0, metadata={"help": "Clip frame rate."})
    timeout_s: float = field(default=300.0, metadata={"help": "Longest wait for one answer."})
    startup_timeout_s: float = field(default=180.0, metadata={"help": "Longest wait for a server to become healthy."})
    json_out: str | None = field(default=None, metadata={"help": "Also write the report to this JSON file."})
    seed: int = field(default=0, metadata={"help": "Seed of the random clips."})

    def __post_init__(self) -> None:
        if self.reward is not None and self.tiny:
            raise ConfigError("pass either --reward or --tiny, not both")
        if self.reward is not None:
            read_reward_entry(self.reward)  # a missing file or a malformed entry fails before any server starts
        counts = {"concurrency": self.concurrency, "batch_sizes": self.batch_sizes}
        for name, values in counts.items():
            if not values or min(values) < 1:
                raise ConfigError(f"--{name} must list integers >= 1, got {values}")
        for name in ("requests", "max_queue", "clip_frames", "clip_height", "clip_width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < max(self.batch_sizes):
            raise ConfigError(f"--max_queue {self.max_queue} is below the largest batch size {max(self.batch_sizes)}: "
                              "no request of that size could ever be queued")
        if min(self.max_wait_ms, self.clip_fps, self.timeout_s, self.startup_timeout_s) <= 0:
            raise ConfigError("--max_wait_ms, --clip_fps, --timeout_s and --startup_timeout_s must be > 0")


@dataclass
class LoadCell:
    """One grid cell: ``requests`` = requests sent in all; latencies over the answered (200) ones."""

    concurrency: int
    batch_size: int
    requests: int
    answered: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    videos_per_s: float
    wall_s: float
    status_429: int
    errors: int
    error_samples: list[str] = field(default_factory=list)


def tiny_descore_entry(folder: Path, *, batch_size: int) -> dict[str, Any]:
    """A random-weight DeScore over the tiny Qwen3-VL, saved in ``folder``, as a no-CoT reward entry on CPU that
    scores ``batch_size`` videos per forward (the largest server batch: one forward per batch)."""
    from reward.modeling import DeScoreModel, save_descore
    from reward.tiny_models import save_tiny_vlm
    from reward.video import VideoSpec

    backbone = save_tiny_vlm(folder / "backbone", "qwen3_vl")
    model = DeScoreModel.from_base(str(backbone), video_spec=VideoSpec(**TINY_SPEC), dtype="float32")
    return {"name": "descore_no_cot", "path": str(save_descore(model, folder / "descore")), "device": "cpu",
            "batch_size": batch_size}


def reward_file(config: ServeLoadConfig, scratch: Path) -> Path:
    """The --reward file to serve: the user's, or one written in ``scratch`` for the tiny DeScore / brightness."""
    if config.reward is not None:
        return Path(config.reward)
    entry = {"name": "brightness"} if config.tiny else tiny_descore_entry(scratch, batch_size=max(config.batch_sizes))
    path = scratch / "reward.yaml"
    path.write_text(yaml.safe_dump(entry))
    return path


def free_port() -> int:
    """A port nothing listens on now (the OS picks it; the server binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(reward: Path, scratch: Path, *, max_batch_size: int, config: ServeLoadConfig) -> Iterator[str]:
    """A ``descore reward serve --reward reward`` process (its own Python, as deployed); yields its base URL once
    /health answers, and stops it (SIGTERM, then kill) on exit. The server's log is quoted if it fails to start."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "descore", "reward", "serve", "--reward", str(reward), "--host",
               "127.0.0.1", "--port", str(port), "--max_batch_size", str(max_batch_size), "--max_items",
               str(max_batch_size), "--max_wait_ms", str(config.max_wait_ms), "--max_queue", str(config.max_queue)]
    log = scratch / f"server-{max_batch_size}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + config.startup_timeout_s
        while not _healthy(httpx, url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the reward server did not come up ({' '.join(command)}); its log:\n{tail}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _healthy(httpx: Any, url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False


def random_clips(count: int, config: ServeLoadConfig) -> list[VideoFrames]:
    rng = np.random.default_rng(config.seed)
    shape = (config.clip_frames, config.clip_height, config.clip_width, 3)
    return [VideoFrames(rng.integers(0, 256, size=shape, dtype=np.uint8), fps=config.clip_fps, name=f"clip-{index}")
            for index in range(count)]


@dataclass
class _Outcome:
    latency_s: float | None = None  # set when answered 200
    scored: int = 0
    status_429: bool = False
    errors: list[str] = field(default_factory=list)


def send(client: Any, url: str, request: ScoreRequest) -> _Outcome:
    """One timed POST /score; a 200's failed videos count as errors."""
    import httpx

    start = time.perf_counter()
    try:
        response = client.post(f"{url}/score", files=request.parts)
    except httpx.TransportError as error:
        return _Outcome(errors=[f"{type(error).__name__}: {error}"])
    latency = time.perf_counter() - start
    if response.status_code == 429:
        return _Outcome(status_429=True)
    if response.status_code != 200:
        return _Outcome(errors=[f"{response.status_code}: {response.text[:200]}"])
    items = response.json()["items"]
    failed = [item["error"] or "no reward" for item in items if item["reward"] is None]
    return _Outcome(latency_s=latency, scored=len(items) - len(failed), errors=failed)


def run_cell(url: str, request: ScoreRequest, *, concurrency: int, batch_size: int,
             config: ServeLoadConfig) -> LoadCell:
    """``concurrency`` threads released together, each sending ``config.requests`` requests in turn."""
    import httpx

    outcomes: list[_Outcome] = []
    lock, start = threading.Lock(), threading.Barrier(concurrency + 1)

    def client_loop() -> None:
        with httpx.Client(timeout=config.timeout_s) as client:
            start.wait()
            for _ in range(config.requests):
                outcome = send(client, url, request)
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    latencies = sorted(outcome.latency_s * 1000 for outcome in outcomes if outcome.latency_s is not None)
    errors = [error for outcome in outcomes for error in outcome.errors]
    return LoadCell(
        concurrency=concurrency, batch_size=batch_size, requests=len(outcomes), answered=len(latencies),
        latency_p50_ms=quantile(latencies, 0.5) if latencies else None,
        latency_p95_ms=quantile(latencies, 0.95) if latencies else None,
        videos_per_s=sum(outcome.scored for outcome in outcomes) / wall, wall_s=wall,
        status_429=sum(outcome.status_429 for outcome in outcomes), errors=len(errors),
        error_samples=sorted(set(errors))[:5],
    )


def run(config: ServeLoadConfig) -> dict[str, Any]:
    """Every cell of the grid, one server per batch size; the report (also written to ``json_out``)."""
    import httpx

    clips = random_clips(max(config.batch_sizes), config)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} CPU(s)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "clip": f"{config.clip_frames} frames {config.clip_height}x{config.clip_width} at {config.clip_fps:g} fps, "
                "random uint8 pixels sent as .npy",
        "server": {"max_wait_ms": config.max_wait_ms, "max_queue": config.max_queue},
        "requests_per_client": config.requests, "cells": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        reward = reward_file(config, scratch)
        report["reward"] = read_reward_entry(str(reward)).entry
        for batch_size in config.batch_sizes:
            request = build_request(clips[:batch_size], [PROMPT] * batch_size, paths="upload")
            with serving(reward, scratch, max_batch_size=batch_size, config=config) as url:
                with httpx.Client(timeout=config.timeout_s) as client:
                    warm = send(client, url, request)
                if warm.latency_s is None:
                    raise RuntimeError(f"the warm-up request to {url} failed: {warm.errors or '429'}")
                for concurrency in config.concurrency:
                    cell = run_cell(url, request, concurrency=concurrency, batch_size=batch_size, config=config)
                    logger.info("%s", cell)
                    report["cells"].append(asdict(cell))
    if config.json_out:
        Path(config.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(config.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def markdown(report: dict[str, Any]) -> str:
    def number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [f"{report['machine']}, {report['date']}; reward: {report['reward']['name']}; clips: {report['clip']}", "",
             "| concurrency | batch | requests | p50 ms | p95 ms | videos/s | 429 | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for cell in report["cells"]:
        lines.append(f"| {cell['concurrency']} | {cell['batch_size']} | {cell['requests']} | "
                     f"{number(cell['latency_p50_ms'], 1)} | {number(cell['latency_p95_ms'], 1)} | "
                     f"{cell['videos_per_s']:.2f} | {cell['status_429']} | {cell['errors']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the grid and print the table; exit code 1 when any request or video failed (a 429 is no failure)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the results
    (config,) = HfArgumentParser(ServeLoadConfig).parse_args_into_dataclasses(args=argv)
    report = run(config)
    print(markdown(report))
    return 1 if any(cell["errors"] for cell in report["cells"]) else 0


if __name__ == "__main__":
    sys.exit(main())
