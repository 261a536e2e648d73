"""The reward server on 127.0.0.1, driven by real HTTP clients: concurrent requests scored exactly as locally,
batching across requests, every kind of bad request refused with its status and field, a client that hangs up
frees its slot, a burst past the queue gets 429 while every accepted request is answered."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest

from benchmarks.synthetic import square_clip
from reward.base import build_reward
from reward.errors import CheckpointError, ConfigError
from reward.server import ServeConfig, run_serve, running_server
from reward.video import VideoFrames

from .helpers import REPO_ROOT, small_clip
from .server_helpers import GatedReward, metric_samples, wait_for

TOKEN = "test-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FPS = 4.0


# ----- fixtures: clips, two servers (brightness; brightness behind a gate the test opens) ---------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Clips under a root, one outside it, and a symlink in the root that points out."""
    base = tmp_path_factory.mktemp("serve")
    root, outside = base / "root", base / "outside"
    clips = {f"clip{i}": small_clip(root / f"clip{i}.mp4", seed=i) for i in range(3)}
    secret = small_clip(outside / "secret.mp4", seed=9)
    (root / "link.mp4").symlink_to(secret)
    (base / "brightness.yaml").write_text("name: brightness\nlabel: bright\n")
    return clips | {"root": root, "secret": secret, "link": root / "link.mp4", "yaml": base / "brightness.yaml"}


def raw_frames(seed: int, frames: int = 6) -> np.ndarray:
    return square_clip(np.random.default_rng(seed), colour="blue", direction="right", noise=8.0, frames=frames)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(files) -> Iterator[str]:
    config = ServeConfig(reward=str(files["yaml"]), port=0, token=TOKEN, roots=[str(files["root"])], max_batch_size=4,
                         max_wait_ms=50, max_items=4, max_queue=16, max_video_bytes=2**20, max_frames=16,
                         max_pixels=64 * 64, max_prompt_chars=40)
    with running_server(build_reward({"name": "brightness"}), config) as url:
        yield url


@pytest.fixture(scope="module")
def gated(files) -> Iterator[tuple[str, GatedReward]]:
    model = GatedReward()
    config = ServeConfig(reward=str(files["yaml"]), port=0, max_batch_size=2, max_wait_ms=10, max_queue=4, max_items=2)
    with running_server(model, config) as url:
        try:
            yield url, model
        finally:
            model.gate.set()


@pytest.fixture
def closed_gate(gated) -> Iterator[tuple[str, GatedReward]]:
    url, model = gated
    model.gate.clear()
    while model.entered.acquire(blocking=False):
        pass
    try:
        yield url, model
    finally:
        model.gate.set()


# ----- helpers: requests, local scores, metrics ----------------------------------------------------------------

def score_request(items: list[tuple[str, dict[str, Any], bytes | None]]) -> dict[str, Any]:
    """httpx arguments for POST /score: ``items`` are (prompt, video, part bytes or None)."""
    files = [(video["part"], (f"{video['part']}.bin", data)) for _, video, data in items if data is not None]
    payload = {"items": [{"prompt": prompt, "video": video} for prompt, video, _ in items]}
    return {"data": {"request": json.dumps(payload)}, "files": files or None}


def path_item(prompt: str, path: Path) -> tuple:
    return prompt, {"kind": "path", "path": str(path)}, None


def file_item(prompt: str, path: Path, part: str) -> tuple:
    return prompt, {"kind": "file", "part": part}, path.read_bytes()


def frames_item(prompt: str, frames: np.ndarray, part: str, fps: float = FPS) -> tuple:
    return prompt, {"kind": "frames", "part": part, "fps": fps}, npy(frames)


def local_rewards(sources: list) -> list[float]:
    """The same videos scored in this process by the registry model the server serves."""
    return build_reward({"name": "brightness"}).score(sources, ["p"] * len(sources)).rewards.double().tolist()


def post(url: str, request: dict[str, Any], *, headers: dict[str, str] = AUTH) -> httpx.Response:
    return httpx.post(f"{url}/score", headers=headers, timeout=60, **request)


# ----- scoring ---------------------------------------------------------------------------------------------------

def test_concurrent_clients_get_the_local_rewards(server, files):
    """Eight requests from four threads mix paths, uploads and raw frames; every reward equals a local score of
    the same video (JSON floats round-trip exactly)."""

    def request(index: int) -> tuple[dict, list]:
        clip = files[f"clip{index % 3}"]
        frames = raw_frames(index)
        items = [path_item("a path", clip), file_item("an upload", files[f"clip{(index + 1) % 3}"], "up"),
                 frames_item("raw frames", frames, "raw")]
        return score_request(items), [str(clip), str(files[f"clip{(index + 1) % 3}"]), VideoFrames(frames, FPS)]

    requests = [request(index) for index in range(8)]
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda pair: post(server, pair[0]), requests))
    for response, (_, sources) in zip(responses, requests):
        assert response.status_code == 200, response.text
        answer = response.json()
        assert [item["reward"] for item in answer["items"]] == local_rewards(sources)
        assert all(item["error"] is None and item["cot"] is None for item in answer["items"])
        assert answer["seconds"] > 0


def test_an_unreadable_upload_fails_alone(server, files):
    """A video that cannot be decoded is a failed item of a 200 answer, named by its item, not a number."""
    request = score_request([file_item("good", files["clip0"], "good"), ("bad", {"kind": "file", "part": "bad"}, b"junk")])
    response = post(server, request)
    assert response.status_code == 200, response.text
    good, bad = response.json()["items"]
    assert good["reward"] == local_rewards([str(files["clip0"])])[0] and good["error"] is None
    assert bad["reward"] is None and bad["error"].startswith("cannot read video items[1] (uploaded file)")


def test_health_is_open_and_everything_else_needs_the_token(server):
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for route in ("info", "metrics"):
            response = httpx.get(f"{server}/{route}", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["field"] == "Authorization"
        assert post(server, score_request([path_item("p", Path("/x.mp4"))]), headers=headers).status_code == 401
    info = httpx.get(f"{server}/info", headers=AUTH).json()
    assert info == {
        "protocol": 1, "reward": "brightness", "label": "bright", "entry": {"name": "brightness"},
        "video_spec": build_reward({"name": "brightness"}).spec.to_dict(), "calibration": None,
        "limits": {"max_items": 4, "max_video_bytes": 2**20, "max_frames": 16, "max_pixels": 64 * 64,
                   "max_prompt_chars": 40},
        "batching": {"max_batch_size": 4, "max_wait_ms": 50.0, "max_queue": 16},
    }


def _rejections(files: dict[str, Path]) -> list[tuple[dict[str, Any], int, str]]:
    """(httpx arguments, expected status, expected field) for each kind of bad request."""
    clip, frames = files["clip0"], raw_frames(0)
    item = path_item("p", clip)
    return [
        ({"json": {"items": []}}, 400, "content-type"),
        ({"data": {"other": "x"}, "files": [("p", ("p.bin", b"x"))]}, 400, "request"),
        ({"data": {"request": "{not json"}}, 400, "request"),
        ({"data": {"request": json.dumps({"items": [], "extra": 1})}}, 400, "request"),
        (score_request([("p", {"kind": "url", "path": "x"}, None)]), 400, "items[0].video.kind"),
        (score_request([("", {"kind": "path", "path": str(clip)}, None)]), 400, "items[0].prompt"),
        (score_request([item, ("p", {"kind": "path"}, None)]), 400, "items[1].video.path"),
        (score_request([frames_item("p", frames, "a")]) | {"files": []}, 400, "items[0].video.part"),
        (score_request([item]) | {"files": [("extra", ("e.bin", b"x"))]}, 400, "parts.extra"),
        (score_request([frames_item("p", frames, "a"), ("p", {"kind": "file", "part": "a"}, None)]), 400,
         "items[1].video.part"),
        (score_request([frames_item("p", frames, "a", fps="fast")]), 400, "items[0].video.fps"),
        (score_request([path_item("p", Path("relative.mp4"))]), 400, "items[0].video.path"),
        (score_request([item] * 5), 413, "items"),
        (score_request([path_item("p" * 41, clip)]), 413, "items[0].prompt"),
        (score_request([("p", {"kind": "file", "part": "big"}, b"x" * (2**20 + 1))]), 413, "items[0].video.part"),
        (score_request([("p", {"kind": "file", "part": "huge"}, b"x" * 6 * 2**20)]), 413, "body"),
        (score_request([frames_item("p", raw_frames(0, frames=17), "a")]), 413, "items[0].video.part"),
        (score_request([frames_item("p", np.zeros((4, 65, 64, 3), np.uint8), "a")]), 413, "items[0].video.part"),
        (score_request([frames_item("p", frames.astype(np.float32), "a")]), 422, "items[0].video.part"),
        (score_request([frames_item("p", frames[..., :2], "a")]), 422, "items[0].video.part"),
        (score_request([frames_item("p", frames, "a", fps=0)]), 422, "items[0].video.fps"),
        (score_request([path_item("p", files["root"] / ".." / "outside" / "secret.mp4")]), 403, "items[0].video.path"),
        (score_request([path_item("p", files["link"])]), 403, "items[0].video.path"),
        (score_request([path_item("p", files["root"] / "missing.mp4")]), 404, "items[0].video.path"),
    ]


def test_bad_requests_are_refused_with_status_and_field(server, files):
    before = metric_samples(server, AUTH)
    expected_counts: dict[str, int] = {}
    for request, status, field in _rejections(files):
        response = post(server, request)
        assert (response.status_code, response.json()["error"]["field"]) == (status, field), response.text
        assert response.json()["error"]["message"]
        expected_counts[str(status)] = expected_counts.get(str(status), 0) + 1
    after = metric_samples(server, AUTH)
    for status, count in expected_counts.items():
        key = ("descore_reward_errors_total", (("status", status),))
        assert after[key] - before.get(key, 0) == count


def test_a_server_without_roots_refuses_paths(files):
    config = ServeConfig(reward=str(files["yaml"]), port=0)
    with running_server(build_reward({"name": "brightness"}), config) as url:
        response = post(url, score_request([path_item("p", files["clip0"])]), headers={})
    assert response.status_code == 403 and response.json()["error"]["field"] == "items[0].video.path"


# ----- batching, disconnects, bursts (the gated server: the test decides when the model runs) --------------------

def test_a_client_that_hangs_up_frees_its_slot(closed_gate, files):
    """While the model is busy, a raw client sends a whole request and closes its socket: its queued video is
    dropped (counted), the queue empties, and the requests around it are answered correctly."""
    url, model = closed_gate
    frames = raw_frames(1)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, url, score_request([frames_item("busy", frames, "a")]), headers={})
        assert model.entered.acquire(timeout=30)  # the worker now holds that batch until the gate opens
        request = httpx.Client().build_request("POST", f"{url}/score", **score_request([frames_item("gone", frames, "a")]))
        body = request.read()
        head = "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
        with socket.create_connection(("127.0.0.1", request.url.port)) as raw:
            raw.sendall(f"POST /score HTTP/1.1\r\n{head}\r\n".encode() + body)
            wait_for(lambda: metric_samples(url)[("descore_reward_queue_depth", ())] == 1, "the raw request to queue")
        wait_for(lambda: metric_samples(url)[("descore_reward_queue_depth", ())] == 0, "the dropped video to leave")
        assert metric_samples(url)[("descore_reward_dropped_videos_total", ())] == 1
        model.gate.set()
        assert first.result(timeout=30).json()["items"][0]["reward"] == local_rewards([VideoFrames(frames, FPS)])[0]
    later = post(url, score_request([frames_item("later", raw_frames(2), "a")]), headers={})
    assert later.json()["items"][0]["reward"] == local_rewards([VideoFrames(raw_frames(2), FPS)])[0]


def test_a_burst_past_the_queue_gets_429_and_loses_nothing(closed_gate):
    """The worker holds a batch of 2; six one-video requests arrive; the queue (4) takes four, two get 429 with
    Retry-After. Opened, the gate lets the model score the queue in full batches of 2 across requests, and every
    accepted request gets its own rewards."""
    url, model = closed_gate
    before = metric_samples(url)
    clips = [raw_frames(seed) for seed in range(8)]
    with ThreadPoolExecutor(8) as pool:
        held = pool.submit(post, url, score_request([frames_item("p", clips[0], "a"), frames_item("p", clips[1], "b")]),
                           headers={})
        assert model.entered.acquire(timeout=30)
        burst = [pool.submit(post, url, score_request([frames_item("p", clip, "a")]), headers={}) for clip in clips[2:]]
        wait_for(lambda: sum(future.done() for future in burst) == 2, "two requests to be refused")
        assert metric_samples(url)[("descore_reward_queue_depth", ())] == 4
        model.gate.set()
        answers = [held.result(timeout=30)] + [future.result(timeout=30) for future in burst]
    refused = [response for response in answers if response.status_code == 429]
    assert len(refused) == 2 and all(response.headers["Retry-After"] == "1" for response in refused)
    assert all(response.json()["error"]["field"] == "items" for response in refused)
    accepted = [(response, sources) for response, sources in zip(answers, [clips[:2]] + [[clip] for clip in clips[2:]])
                if response.status_code != 429]
    assert len(accepted) == 5 and all(response.status_code == 200 for response, _ in accepted)
    for response, sources in accepted:
        expected = local_rewards([VideoFrames(clip, FPS) for clip in sources])
        assert [item["reward"] for item in response.json()["items"]] == expected
    after = metric_samples(url)
    batches = after[("descore_reward_batch_size_count", ())] - before.get(("descore_reward_batch_size_count", ()), 0)
    videos = after[("descore_reward_batch_size_sum", ())] - before.get(("descore_reward_batch_size_sum", ()), 0)
    assert (batches, videos) == (3, 6)  # three batches of two: the queued videos were batched across requests
    assert after[("descore_reward_errors_total", (("status", "429"),))] \
        - before.get(("descore_reward_errors_total", (("status", "429"),)), 0) == 2


def test_a_model_error_is_a_503_and_the_server_lives_on(closed_gate):
    url, model = closed_gate
    model.gate.set()
    failed = post(url, score_request([frames_item("explode", raw_frames(0), "a")]), headers={})
    assert failed.status_code == 503 and failed.json()["error"] == {
        "field": "model", "message": "gated_brightness raised RuntimeError: boom"}
    served = post(url, score_request([frames_item("fine", raw_frames(0), "a")]), headers={})
    assert served.json()["items"][0]["reward"] == local_rewards([VideoFrames(raw_frames(0), FPS)])[0]


# ----- configuration and the command -----------------------------------------------------------------------------

def test_config_refuses_what_cannot_work(files, tmp_path, monkeypatch):
    monkeypatch.delenv("DESCORE_REWARD_TOKEN", raising=False)
    (tmp_path / "nope.yaml").write_text("name: no_such_reward\n")
    cases = [
        ({}, "--reward is required"),
        ({"reward": str(tmp_path / "nope.yaml")}, "unknown reward model 'no_such_reward'"),
        ({"reward": str(files["yaml"]), "host": "0.0.0.0"}, "--host 0.0.0.0 accepts connections from other machines"),
        ({"reward": str(files["yaml"]), "max_queue": 8, "max_items": 16}, "--max_queue 8 is below --max_items 16"),
        ({"reward": str(files["yaml"]), "roots": [str(tmp_path / "absent")]}, "is not a folder"),
        ({"reward": str(files["yaml"]), "token": " "}, "is empty"),
    ]
    for values, message in cases:
        with pytest.raises(ConfigError, match=message):
            ServeConfig(**values)
    monkeypatch.setenv("DESCORE_REWARD_TOKEN", TOKEN)
    config = ServeConfig(reward=str(files["yaml"]), host="0.0.0.0")
    assert config.token == TOKEN and TOKEN not in repr(config)


def test_a_reward_that_cannot_load_stops_the_command_before_serving(tmp_path):
    """The model is built before the port is bound: here the port is taken, so reaching uvicorn would fail
    otherwise (SystemExit), and the checkpoint error comes first."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "r.yaml").write_text(f"name: descore_no_cot\npath: {tmp_path / 'empty'}\n")
    with socket.create_server(("127.0.0.1", 0)) as taken, pytest.raises(CheckpointError, match="not a DeScore checkpoint"):
        run_serve(ServeConfig(reward=str(tmp_path / "r.yaml"), port=taken.getsockname()[1]))


@pytest.mark.slow  # a fresh interpreter importing the kit: ~30 s on 2 shared cores
def test_descore_reward_serve_runs_and_stops_on_sigint(files):
    """The command itself, in a subprocess: the token from the environment, /info behind it, a clean exit."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {"DESCORE_REWARD_TOKEN": TOKEN, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "descore", "reward", "serve", "--reward", str(files["yaml"]),
                                "--port", str(port)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        def healthy() -> bool:
            assert process.poll() is None, process.communicate()[1]
            with contextlib.suppress(httpx.TransportError):
                return httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
            return False

        wait_for(healthy, "the command to serve")
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/info").status_code == 401
        assert httpx.get(f"{url}/info", headers=AUTH).json()["label"] == "bright"
        response = post(url, score_request([frames_item("p", raw_frames(3), "a")]))
        assert response.json()["items"][0]["reward"] == local_rewards([VideoFrames(raw_frames(3), FPS)])[0]
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert TOKEN not in stderr


def test_a_tiny_descore_model_serves_its_local_rewards(tiny_descore_dir, tmp_path):
    """DeScore without CoT behind the server: the same rewards as the same entry scored locally."""
    entry = {"name": "descore_no_cot", "path": str(tiny_descore_dir), "device": "cpu"}
    (tmp_path / "descore.yaml").write_text(json.dumps(entry))
    model = build_reward(entry)
    clips = [raw_frames(seed) for seed in range(2)]
    expected = model.score([VideoFrames(clip, FPS) for clip in clips], ["a blue square", "a cat"]).rewards.double().tolist()
    with running_server(model, ServeConfig(reward=str(tmp_path / "descore.yaml"), port=0)) as url:
        info = httpx.get(f"{url}/info").json()
        response = post(url, score_request([frames_item("a blue square", clips[0], "a"),
                                            frames_item("a cat", clips[1], "b")]), headers={})
    assert info["reward"] == "descore_no_cot" and info["video_spec"] == model.model.video_spec.to_dict()
    assert [item["reward"] for item in response.json()["items"]] == expected
