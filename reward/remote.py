"""``remote``: score on one or more reward servers (``descore reward serve``; docs/reward_server.md, "Client").

    name: remote
    urls: [http://10.0.0.5:8000, http://10.0.0.6:8000]
    token_env: DESCORE_REWARD_TOKEN      # the variable holding the server's bearer token (unset: no token)
    paths: shared                        # send file paths (a filesystem both sides see) instead of their bytes

A GRPO or Flow-DPO job then keeps its GPUs for the generator while the reward model runs on others. The
client speaks protocol v1: each request is a multipart POST /score of up to ``batch_size`` videos — files
uploaded (or named, with ``paths: shared``) and in-memory rollouts sent as raw uint8 frames in a ``.npy``
part, quantised exactly as :func:`reward.video.load_video` does, so the server scores the frames local
scoring would. Requests go round-robin over ``urls``, one in flight per server; a connection error, timeout,
5xx or 429 moves the request on to the next server, and after a round over all of them the client waits
``backoff_s · 2^round`` (at least a 429's Retry-After) and tries again, ``retries`` rounds at most. A 4xx
other than 429 means the request itself is wrong: it is never retried and raises a typed error naming the
server's field. When every try failed, ``on_error: raise`` raises :class:`RemoteRewardError`; ``on_error:
nan`` makes each video of the request a failed item (NaN reward, the error set), counted by
:attr:`reward.base.RewardOutput.failures` — never a made-up reward (flow_grpo issue #18 is a server that
returned a constant). A video the server cannot decode is a failed item in any case (the server scores
like a local reward with ``skip_invalid``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from .base import RewardOutput, ScoredItem, register_reward
from .calibration import Calibration, calibration_from_json
from .errors import ConfigError, DataError, RemoteRewardError, VideoDecodeError
from .video import VideoFrames, VideoSource, frames_as_uint8

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
PATH_MODES = ("upload", "shared")
ON_ERROR_MODES = ("raise", "nan")
DEFAULT_TOKEN_ENV = "DESCORE_REWARD_TOKEN"
_CONFIG_STATUSES = (401, 403)  # a wrong token or a path setting the server refuses: the user's configuration
_UNSET: Any = object()
Answer = TypeVar("Answer")


def check_url(url: Any) -> str:
    """``url`` as a base URL ``http(s)://host:port`` (a trailing slash dropped).

    Raises:
        ConfigError: not a string of that form (no path, query or fragment; the port is required).
    """
    parts = urlsplit(url.rstrip("/")) if isinstance(url, str) else None
    try:
        port = parts.port if parts is not None else None
    except ValueError:  # a port that is not a number
        port = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or port is None \
            or parts.path or parts.query or parts.fragment:
        raise ConfigError(f"remote reward: each of urls must be http(s)://host:port, e.g. http://127.0.0.1:8000, "
                          f"got {url!r}")
    return url.rstrip("/")


@dataclass(frozen=True)
class Attempt:
    """One try of a request: the server (index into ``urls``) and the wait before it (0 within a round)."""

    url_index: int
    backoff_s: float


def attempt_plan(start: int, *, url_count: int, retries: int, backoff_s: float) -> list[Attempt]:
    """``retries + 1`` rounds over every server, each beginning at server ``start``; before round r >= 1 the
    client waits ``backoff_s · 2^(r-1)`` (failing over within a round costs no wait: the next server may be up)."""
    plan = []
    for round_index in range(retries + 1):
        for offset in range(url_count):
            wait = backoff_s * 2 ** (round_index - 1) if round_index and offset == 0 else 0.0
            plan.append(Attempt((start + offset) % url_count, wait))
    return plan


@dataclass(frozen=True)
class ScoreRequest:
    """The multipart body of one POST /score: the ``request`` JSON field first, then one file part per uploaded
    video (httpx's ``files`` layout), and the name of each video for error messages."""

    parts: list[tuple[str, tuple[str | None, bytes | str, str | None]]]
    sources: list[str]


def frames_npy(video: VideoFrames) -> bytes:
    """The frames as a ``.npy`` of uint8 ``(T, H, W, 3)``, quantised as local scoring does (no pickle inside)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(frames_as_uint8(video)), allow_pickle=False)
    return buffer.getvalue()


def video_item(video: VideoSource, part: str, *, paths: str) -> tuple[dict[str, Any], tuple[str, bytes] | None]:
    """The protocol's ``video`` object for one source and, when it travels as a file part, (file name, bytes).

    Raises:
        VideoDecodeError: in-memory frames of the wrong shape, dtype or range; a file to upload that cannot
            be read.
    """
    if isinstance(video, VideoFrames):
        if not (video.fps > 0 and math.isfinite(video.fps)):
            raise VideoDecodeError(video.name, f"fps must be a positive number, got {video.fps}")
        return {"kind": "frames", "part": part, "fps": float(video.fps)}, (f"{part}.npy", frames_npy(video))
    path = Path(video)
    if paths == "shared":
        return {"kind": "path", "path": str(path.absolute())}, None
    try:
        return {"kind": "file", "part": part}, (path.name, path.read_bytes())
    except OSError as error:
        raise VideoDecodeError(str(video), f"cannot read the file to upload it ({error.strerror or error})") from error


def build_request(videos: Sequence[VideoSource], prompts: Sequence[str], *, paths: str) -> ScoreRequest:
    """One POST /score body for ``videos`` with their ``prompts`` (parts named ``video<i>`` by position)."""
    items, files = [], []
    for index, (video, prompt) in enumerate(zip(videos, prompts)):
        item, upload = video_item(video, f"video{index}", paths=paths)
        items.append({"prompt": prompt, "video": item})
        if upload is not None:
            files.append((item["part"], (upload[0], upload[1], "application/octet-stream")))
    sources = [video.name if isinstance(video, VideoFrames) else str(video) for video in videos]
    return ScoreRequest([("request", (None, json.dumps({"items": items}, allow_nan=False), None)), *files], sources)


def _optional(result: Mapping[str, Any], key: str, kinds: tuple[type, ...]) -> Any:
    value = result.get(key)
    if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(kind.__name__ for kind in kinds)
        raise RemoteRewardError(f"the server's result has {key}={value!r}, not {expected} or null")
    return value


def scored_item(result: Any) -> ScoredItem:
    """One RESULT of a 200 response as a :class:`ScoredItem`; a null reward is NaN (failed), never a number made
    up here. Raises :class:`RemoteRewardError` for a result outside the protocol."""
    if not isinstance(result, Mapping):
        raise RemoteRewardError(f"the server's result is not an object: {result!r}")
    reward = _optional(result, "reward", (int, float))
    error = _optional(result, "error", (str,))
    if reward is None and error is None:
        error = "the reward server returned no reward and no error"
    return ScoredItem(
        reward=math.nan if reward is None else float(reward),
        error=error,
        cot=_optional(result, "cot", (str,)),
        sub_scores=_optional(result, "sub_scores", (dict,)),
        overall_score=_optional(result, "overall_score", (int, float)),
        parse_ok=_optional(result, "parse_ok", (bool,)),
        parse_error=_optional(result, "parse_error", (str,)),
        truncated=_optional(result, "truncated", (bool,)),
    )


def scored_items(payload: Any, *, expected: int) -> list[ScoredItem]:
    """The items of a 200 /score response, checked to be one per video sent."""
    results = payload.get("items") if isinstance(payload, Mapping) else None
    if not isinstance(results, list) or len(results) != expected:
        found = len(results) if isinstance(results, list) else type(results).__name__
        raise RemoteRewardError(f"the server answered {found} result(s) for {expected} video(s)")
    return [scored_item(result) for result in results]


def describe_field(field: str, sources: Sequence[str]) -> str:
    """The server's error field, with the video an ``items[i]`` field points at (requests hold a slice of the
    videos of one ``score`` call, so the server's index alone would mislead)."""
    match = re.match(r"items\[(\d+)\]", field)
    if match and int(match.group(1)) < len(sources):
        return f"{field} (video {sources[int(match.group(1))]})"
    return field


def server_error(body: bytes) -> tuple[str, str]:
    """(field, message) of an error body ``{"error": {"field", "message"}}``; a body of another shape (a proxy's
    page) is quoted instead."""
    try:
        error = json.loads(body)["error"]
        return str(error["field"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return "<body>", body[:300].decode("utf-8", errors="replace")


def refusal(status: int, body: bytes, *, url: str, sources: Sequence[str]) -> ConfigError | DataError:
    """The typed error of a 4xx other than 429: ConfigError for 401/403 (token, roots), DataError otherwise."""
    field, message = server_error(body)
    kind = ConfigError if status in _CONFIG_STATUSES else DataError
    return kind(f"reward server {url} refused the request ({status}) at {describe_field(field, sources)}: {message}")


class _TryFailed(Exception):
    """A try that another server or a later round may get through (transport error, 5xx, 429, bad answer)."""

    def __init__(self, message: str, *, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def retry_after_seconds(value: str | None) -> float:
    """A Retry-After header given in seconds (the protocol's form); 0 when absent or not a number."""
    try:
        return max(float(value), 0.0) if value is not None else 0.0
    except ValueError:
        return 0.0


@register_reward("remote")
class RemoteReward:
    """A reward model served by ``descore reward serve``, called over HTTP (module docstring).

    Args:
        urls: base URLs of servers that serve the same reward entry, e.g. ``["http://127.0.0.1:8000"]``.
        token_env: name of the environment variable holding the bearer token, read when the reward is built
            (unset or empty: no token). The protocol keeps the token itself out of configs and run records.
        timeout_s: seconds one HTTP request may take (connect, send, wait for the scores), per try.
        retries: rounds over all servers after the first one failed.
        backoff_s: wait before the second round; it doubles each round.
        on_error: ``raise`` (:class:`RemoteRewardError`) or ``nan`` (failed items) when every try failed.
        batch_size: videos per request (at most the server's ``max_items``, read from ``/info``).
        paths: ``upload`` (send the bytes of video files) or ``shared`` (send their absolute paths; the
            server must see the same filesystem and list them under its ``--roots``).

    ``calibration`` is the served model's (from ``/info``, read once on first use) unless the entry sets one.
    """

    name = "remote"

    def __init__(self, urls: Sequence[str], *, token_env: str = DEFAULT_TOKEN_ENV, timeout_s: float = 120.0,
                 retries: int = 2, backoff_s: float = 0.5, on_error: str = "raise", batch_size: int = 8,
                 paths: str = "upload") -> None:
        self.check_options({"urls": urls, "token_env": token_env, "timeout_s": timeout_s, "retries": retries,
                            "backoff_s": backoff_s, "on_error": on_error, "batch_size": batch_size, "paths": paths})
        self.urls = [check_url(url) for url in urls]
        self.timeout_s, self.retries, self.backoff_s = float(timeout_s), retries, float(backoff_s)
        self.on_error, self.batch_size, self.paths = on_error, batch_size, paths
        self._token = os.environ.get(token_env) or None  # kept out of every message and record
        self._calibration: Calibration | None = _UNSET
        self._infos: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._next_url = 0
        self._client: Any = None

    @staticmethod
    def check_options(options: Mapping[str, Any]) -> None:
        """Check the entry's option values (:func:`reward.base.check_reward_entry` calls this before building).

        Raises:
            ConfigError: the first bad option, named with its value and what it accepts.
        """
        urls = options.get("urls")
        if not isinstance(urls, (list, tuple)) or not urls:
            raise ConfigError(f"remote reward needs urls: a non-empty list such as [http://127.0.0.1:8000], "
                              f"got {urls!r}")
        for url in urls:
            check_url(url)
        if len({check_url(url) for url in urls}) != len(urls):
            raise ConfigError(f"remote reward: urls repeat a server: {list(urls)}")
        choices = {"on_error": ON_ERROR_MODES, "paths": PATH_MODES}
        for key, allowed in choices.items():
            if key in options and options[key] not in allowed:
                raise ConfigError(f"remote reward: {key} must be one of {', '.join(allowed)}, got {options[key]!r}")
        for key, low in (("retries", 0), ("batch_size", 1)):
            value = options.get(key, low)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"remote reward: {key} must be an integer >= {low}, got {value!r}")
        for key, positive in (("timeout_s", True), ("backoff_s", False)):
            value = options.get(key, 1.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (positive and value == 0):
                raise ConfigError(f"remote reward: {key} must be a finite number {'>' if positive else '>='} 0, "
                                  f"got {value!r}")
        token_env = options.get("token_env", DEFAULT_TOKEN_ENV)
        if not isinstance(token_env, str) or not token_env:
            raise ConfigError(f"remote reward: token_env must name an environment variable, got {token_env!r}")

    @property
    def calibration(self) -> Calibration | None:
        if self._calibration is _UNSET:
            payload = self.server_info().get("calibration")
            where = f"calibration sent by reward server {self.urls}"
            self._calibration = None if payload is None else calibration_from_json(payload, where=where)
        return self._calibration

    @calibration.setter
    def calibration(self, value: Calibration | None) -> None:
        self._calibration = value

    def server_info(self) -> dict[str, Any]:
        """The ``/info`` read first, else that of the first server that answers (failing over like a request)."""
        with self._lock:
            known = next(iter(self._infos.values()), None)
        return known if known is not None else self._with_failover(0, self._info, what="GET /info")

    def score(self, videos: Sequence[VideoSource], prompts: Sequence[str]) -> RewardOutput:
        if len(videos) != len(prompts):
            raise ValueError(f"got {len(videos)} videos and {len(prompts)} prompts")
        if not videos:
            return RewardOutput([])
        try:
            size = min(self.batch_size, self.server_info()["limits"]["max_items"])
        except RemoteRewardError as error:
            return self._failed(len(videos), error)
        slices = [range(start, min(start + size, len(videos))) for start in range(0, len(videos), size)]
        with ThreadPoolExecutor(max_workers=len(self.urls)) as pool:  # a request's body is built by its thread
            futures = [pool.submit(self._score_slice, [videos[i] for i in part], [prompts[i] for i in part],
                                   self._take_start()) for part in slices]
            outputs = [self._result(future, len(part)) for future, part in zip(futures, slices)]
        return RewardOutput([item for output in outputs for item in output.items])

    def close(self) -> None:
        """Close the HTTP connections (a later call opens new ones)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _result(self, future: Any, count: int) -> RewardOutput:
        try:
            return RewardOutput(future.result())
        except RemoteRewardError as error:
            return self._failed(count, error)

    def _failed(self, count: int, error: RemoteRewardError) -> RewardOutput:
        if self.on_error == "raise":
            raise error
        logger.warning("remote reward: %d video(s) failed: %s", count, error)
        return RewardOutput([ScoredItem(reward=math.nan, error=str(error)) for _ in range(count)])

    def _take_start(self) -> int:
        with self._lock:
            start, self._next_url = self._next_url, (self._next_url + 1) % len(self.urls)
        return start

    def _score_slice(self, videos: Sequence[VideoSource], prompts: Sequence[str], start: int) -> list[ScoredItem]:
        request = build_request(videos, prompts, paths=self.paths)

        def post(url: str) -> list[ScoredItem]:
            self._info(url)
            response = self._http().post(f"{url}/score", files=request.parts, headers=self._headers())
            body = self._checked(response, url, request.sources)
            return scored_items(body, expected=len(request.sources))

        return self._with_failover(start, post, what=f"POST /score of {len(request.sources)} video(s)")

    def _with_failover(self, start: int, call: Callable[[str], Answer], *, what: str) -> Answer:
        """``call(url)`` over the attempt plan until one returns; typed 4xx errors propagate at once."""
        import httpx

        failures: list[str] = []
        retry_after_s = 0.0
        for attempt in attempt_plan(start, url_count=len(self.urls), retries=self.retries, backoff_s=self.backoff_s):
            if attempt.backoff_s:
                time.sleep(max(attempt.backoff_s, retry_after_s))
                retry_after_s = 0.0
            url = self.urls[attempt.url_index]
            try:
                return call(url)
            except httpx.TransportError as error:
                failures.append(f"{url}: {type(error).__name__}: {error}")
            except (_TryFailed, RemoteRewardError) as error:
                failures.append(f"{url}: {error}")
                retry_after_s = max(retry_after_s, getattr(error, "retry_after_s", 0.0))
            logger.warning("remote reward: %s failed (%s)", what, failures[-1])
        raise RemoteRewardError(f"{what} failed on every try ({len(failures)} over {self.urls}, {self.retries} "
                                f"retry round(s)); last error: {failures[-1]}")

    def _info(self, url: str) -> dict[str, Any]:
        """``url``'s /info, read once; checks it speaks protocol 1 and serves what the first server serves."""
        if url in self._infos:
            return self._infos[url]
        info = self._checked(self._http().get(f"{url}/info", headers=self._headers()), url, [])
        if not isinstance(info, dict) or info.get("protocol") != PROTOCOL_VERSION:
            found = info.get("protocol") if isinstance(info, dict) else info
            raise ConfigError(f"reward server {url} speaks protocol {found!r}; this client speaks {PROTOCOL_VERSION} "
                              "(install the same descore version on both sides)")
        if not isinstance(info.get("limits"), dict) or not isinstance(info["limits"].get("max_items"), int):
            raise RemoteRewardError(f"reward server {url}: /info has no integer limits.max_items")
        with self._lock:
            for other, known in self._infos.items():
                if known.get("entry") != info.get("entry"):
                    raise ConfigError(f"reward servers {other} and {url} serve different rewards: {known.get('entry')} "
                                      f"and {info.get('entry')}; list servers of one reward in urls")
            self._infos[url] = info
        return info

    def _checked(self, response: Any, url: str, sources: Sequence[str]) -> Any:
        """The JSON body of a 200; 429/5xx and a body that is not JSON fail the try; other 4xx raise typed."""
        status = response.status_code
        if status == 429 or status >= 500:
            field, message = server_error(response.content)
            raise _TryFailed(f"{status} at {field}: {message}",
                             retry_after_s=retry_after_seconds(response.headers.get("retry-after")))
        if status != 200:
            raise refusal(status, response.content, url=url, sources=sources)
        try:
            return response.json()
        except ValueError as error:
            raise _TryFailed(f"the answer is not JSON ({error})") from error

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _http(self) -> Any:
        if self._client is None:
            import httpx  # imported with the first request: `import reward` stays light

            with self._lock:
                if self._client is None:
                    self._client = httpx.Client(timeout=self.timeout_s)
        return self._client
