"""``descore reward serve``: any registry reward model behind HTTP, for RL jobs whose reward runs elsewhere.

Protocol v1 (routes, request and answer formats, statuses) and the security model are in
docs/reward_server.md. The app is FastAPI on uvicorn; requests are checked by :mod:`reward.server_requests`
before anything is queued, and videos from concurrent requests are batched for the model by
:mod:`reward.server_batching`.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import logging
import math
import os
import socket
import tempfile
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from .base import RewardModel, ScoredItem, build_reward, check_reward_entry
from .entry_file import RewardEntry, read_reward_entry
from .errors import ConfigError
from .json_values import json_safe
from .server_batching import BatchQueue, Job, QueueFull, ScoringFailed, ScoringWorker, ServerClosing
from .server_metrics import ServerMetrics
from .server_requests import QueuedItem, RequestLimits, RequestRejected, queued_items, read_form

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
TOKEN_ENV = "DESCORE_REWARD_TOKEN"
RETRY_AFTER_S = 1  # what a 429 asks the client to wait: about one batch on a busy server
DISCONNECT_POLL_S = 0.05  # how often a waiting request checks whether its client is still there


@dataclass
class ServeConfig:
    """Serve one reward model over HTTP (protocol v1: docs/reward_server.md)."""

    reward: str | None = field(
        default=None,
        metadata={"help": "YAML file holding one reward-registry entry, e.g. `name: temporal_smoothness` or `{name: "
                          "descore_no_cot, path: runs/descore/final, device: cuda:1}` (optional `label`)."},
    )
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Address to bind. Anything but a loopback address (e.g. 0.0.0.0 for other nodes) "
                          "requires a token."},
    )
    port: int = field(default=8000, metadata={"help": "TCP port to listen on."})
    token: str | None = field(
        default=None,
        repr=False,
        metadata={"help": f"Bearer token every route but /health requires. Prefer the environment variable "
                          f"{TOKEN_ENV} (read when this is unset): a flag shows in process lists."},
    )
    roots: list[str] | None = field(
        default=None,
        metadata={"help": "Folders whose files path requests may read (after resolving symlinks). Default: none, "
                          "path requests are refused and videos must be uploaded."},
    )
    max_batch_size: int = field(default=8, metadata={"help": "Most videos per model call, across requests."})
    max_wait_ms: float = field(
        default=20.0, metadata={"help": "Longest a video waits for its batch to fill before the batch runs anyway."}
    )
    max_queue: int = field(
        default=64, metadata={"help": "Most videos waiting; a request that would exceed it gets 429 (retry later)."}
    )
    max_items: int = field(default=32, metadata={"help": "Most items (videos) in one request."})
    max_video_bytes: int = field(default=256 * 2**20, metadata={"help": "Largest uploaded part, in bytes."})
    max_frames: int = field(default=1024, metadata={"help": "Most frames in one raw-frames item."})
    max_pixels: int = field(default=1920 * 1080, metadata={"help": "Largest raw frame, in pixels (H x W)."})
    max_prompt_chars: int = field(default=4096, metadata={"help": "Longest prompt, in characters."})

    def __post_init__(self) -> None:
        if self.reward is None:
            raise ConfigError("--reward is required: a YAML file holding one reward entry, e.g. `name: brightness`")
        check_reward_entry(self.reward_entry.entry)
        for name in ("max_batch_size", "max_queue", "max_items", "max_video_bytes", "max_frames", "max_pixels",
                     "max_prompt_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0):
            raise ConfigError(f"--max_wait_ms must be a finite number >= 0, got {self.max_wait_ms}")
        if self.max_queue < self.max_items:
            raise ConfigError(f"--max_queue {self.max_queue} is below --max_items {self.max_items}: a full request "
                              "could never be queued")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in 0..65535 (0: any free port), got {self.port}")
        if self.token is None:
            self.token = os.environ.get(TOKEN_ENV)
        if self.token is not None and not self.token.strip():
            raise ConfigError(f"the token (--token or {TOKEN_ENV}) is empty; set a secret or unset it")
        if self.token is None and not _is_loopback(self.host):
            raise ConfigError(f"--host {self.host} accepts connections from other machines; set a token "
                              f"({TOKEN_ENV}=...) so that only your jobs can use the server")
        for root in self.roots or []:
            if not Path(root).is_dir():
                raise ConfigError(f"--roots {root} is not a folder")

    @functools.cached_property
    def reward_entry(self) -> RewardEntry:
        return read_reward_entry(self.reward)

    def limits(self) -> RequestLimits:
        return RequestLimits(self.max_items, self.max_video_bytes, self.max_frames, self.max_pixels,
                             self.max_prompt_chars)

    def resolved_roots(self) -> tuple[Path, ...]:
        return tuple(Path(root).resolve() for root in self.roots or [])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def run_serve(config: ServeConfig) -> None:
    """Build the reward (its errors stop the command before the port is bound), then serve until SIGINT or
    SIGTERM; on either, uvicorn stops accepting and answers the requests in flight before it exits."""
    import uvicorn

    model = build_reward(config.reward_entry.entry)
    app = create_app(model, config)
    logger.info("serving %s (%s) on http://%s:%d, %s", config.reward_entry.label, model.name, config.host,
                config.port, "token required" if config.token else "no token")
    try:
        uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, lifespan="on")).run()
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled once its graceful shutdown is done
        logger.info("stopped")


@contextmanager
def running_server(model: RewardModel, config: ServeConfig) -> Iterator[str]:
    """The server in a background thread of this process, for tests, benchmarks and notebooks: binds
    ``config.host`` and ``config.port`` (0: a free port), yields its base URL once it accepts connections, and
    shuts it down gracefully on exit."""
    import uvicorn

    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    listener = socket.create_server((config.host, config.port), family=family)
    server = uvicorn.Server(uvicorn.Config(create_app(model, config), lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="reward-server", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the reward server on {config.host}:{config.port} stopped while starting")
            time.sleep(0.01)
        host, port = listener.getsockname()[:2]
        yield f"http://[{host}]:{port}" if family == socket.AF_INET6 else f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join()
        listener.close()


@dataclass
class _Server:
    """What the routes share: the queue, the metrics and the folder for uploads (set while the app runs)."""

    limits: RequestLimits
    roots: tuple[Path, ...]
    queue: BatchQueue
    metrics: ServerMetrics
    upload_dir: Path | None = None


def create_app(model: RewardModel, config: ServeConfig) -> FastAPI:
    """The FastAPI app serving ``model``; its lifespan starts the scoring thread and stops it on shutdown."""
    queue = BatchQueue(max_batch_size=config.max_batch_size, max_wait_s=config.max_wait_ms / 1000,
                       max_queue=config.max_queue)
    server = _Server(config.limits(), config.resolved_roots(), queue, ServerMetrics.create(lambda: queue.depth))
    info = _info(model, config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker = ScoringWorker(model, queue, metrics=server.metrics)
        worker.start()
        with tempfile.TemporaryDirectory(prefix="descore-serve-") as folder:
            server.upload_dir = Path(folder)
            try:
                yield
            finally:
                await run_in_threadpool(worker.stop)

    app = FastAPI(title="DeScore reward server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    authorized = [Depends(functools.partial(_authorize, token=config.token))]

    @app.exception_handler(RequestRejected)
    async def rejected(_: Request, error: RequestRejected) -> JSONResponse:
        server.metrics.errors.labels(str(error.status)).inc()
        return JSONResponse({"error": {"field": error.field, "message": error.message}}, status_code=error.status,
                            headers=error.headers)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info", dependencies=authorized)
    async def describe() -> dict[str, Any]:
        return info

    @app.get("/metrics", dependencies=authorized)
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/score", dependencies=authorized)
    async def score(request: Request) -> Response:
        started = time.monotonic()
        try:
            return await _score(request, server, started)
        finally:
            server.metrics.request_seconds.observe(time.monotonic() - started)

    return app


async def _authorize(request: Request, *, token: str | None) -> None:
    """Constant-time check of the bearer token (nothing to check on a server without one)."""
    if token is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise RequestRejected(401, "Authorization", "missing or wrong; send the header `Authorization: Bearer <token>`",
                              headers={"WWW-Authenticate": "Bearer"})


def _info(model: RewardModel, config: ServeConfig) -> dict[str, Any]:
    """What GET /info answers: the model, how it samples videos, its calibration, the server's limits."""
    spec = getattr(model, "spec", None) or getattr(getattr(model, "model", None), "video_spec", None)
    calibration = getattr(model, "calibration", None)
    return {
        "protocol": PROTOCOL_VERSION,
        "reward": config.reward_entry.entry["name"],
        "label": config.reward_entry.label,
        "entry": config.reward_entry.entry,
        "video_spec": spec.to_dict() if spec is not None else None,
        "calibration": calibration.to_json() if calibration is not None else None,
        "limits": vars(config.limits()),
        "batching": {"max_batch_size": config.max_batch_size, "max_wait_ms": config.max_wait_ms,
                     "max_queue": config.max_queue},
    }


async def _score(request: Request, server: _Server, started: float) -> Response:
    """POST /score: read and check the request, queue its videos, await them (or the client leaving), answer."""
    uploads: list[Path] = []
    try:
        form = await read_form(request, server.limits)
        try:
            items = await queued_items(form, server.limits, roots=server.roots, upload_dir=server.upload_dir,
                                       uploads=uploads)
        finally:
            await form.close()
        jobs = [Job(item.video, item.prompt) for item in items]
        try:
            server.queue.submit(jobs)
        except QueueFull as error:
            raise RequestRejected(429, "items", f"{error}; retry in about {RETRY_AFTER_S} s",
                                  headers={"Retry-After": str(RETRY_AFTER_S)}) from error
        except ServerClosing as error:
            raise RequestRejected(503, "server", str(error)) from error
        try:
            results = await _results_unless_disconnected(request, jobs)
        except (ScoringFailed, ServerClosing) as error:
            raise RequestRejected(503, "model" if isinstance(error, ScoringFailed) else "server", str(error)) from error
        finally:
            dropped = server.queue.withdraw(jobs)
        if results is None:
            server.metrics.dropped_videos.inc(dropped)
            return Response(status_code=499)  # nobody reads it: the client has gone
        answers = [_result(item, scored) for item, scored in zip(items, results)]
        return JSONResponse({"items": answers, "seconds": time.monotonic() - started})
    finally:
        for path in uploads:
            path.unlink(missing_ok=True)


async def _results_unless_disconnected(request: Request, jobs: list[Job]) -> list[ScoredItem] | None:
    """The jobs' results in order, or None if the client disconnects first (the caller withdraws its videos)."""
    waiting = asyncio.gather(*(asyncio.wrap_future(job.future) for job in jobs))
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
        if done:
            return waiting.result()
        if await request.is_disconnected():
            waiting.cancel()
            return None


def _result(item: QueuedItem, scored: ScoredItem) -> dict[str, Any]:
    """One RESULT of the answer: the ScoredItem's fields, NaN as null, an upload named by its item."""
    error = scored.error
    if error is not None and item.upload is not None:
        error = error.replace(str(item.upload), f"{item.field} (uploaded file)")
    return json_safe({
        "reward": scored.reward if scored.ok else None,
        "error": error,
        "cot": scored.cot,
        "sub_scores": scored.sub_scores,
        "overall_score": scored.overall_score,
        "parse_ok": scored.parse_ok,
        "parse_error": scored.parse_error,
        "truncated": scored.truncated,
    })
