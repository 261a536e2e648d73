"""The ``remote`` reward (reward/remote.py): request building, answers and refusals, the retry plan, and — against
the real server on 127.0.0.1 — the same rewards as local scoring, failover, NaN on failure, 4xx and 429."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from benchmarks.synthetic import square_clip
from generator_rl.grpo import GrpoConfig, run_grpo
from generator_rl.tiny_wan import save_tiny_wan
from reward import RewardOutput, VideoFrames, build_reward
from reward.base import check_reward_entry
from reward.calibration import Calibration, DimensionStats, reward_identity, write_calibration
from reward.errors import ConfigError, DataError, RemoteRewardError, VideoDecodeError
from reward.remote import (Attempt, RemoteReward, attempt_plan, build_request, describe_field, refusal, scored_item,
                           scored_items)
from reward.server import ServeConfig, running_server

from ..generator_rl.helpers import same_lora, tiny_arguments
from .helpers import small_clip
from .server_helpers import GatedReward, metric_samples, wait_for

URL = "http://127.0.0.1:8000"


def _request_json(request) -> dict:
    name, (filename, text, content_type) = request.parts[0]
    assert (name, filename, content_type) == ("request", None, None)
    return json.loads(text)


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def test_request_carries_frames_files_and_paths(tmp_path):
    """Float frames are quantised as round(255 x) in float32 (worked out here with numpy), uint8 frames go as they are, a
    file is uploaded byte for byte or, shared, named by its absolute path; parts are named by position."""
    rng = np.random.default_rng(0)
    floats = rng.random((3, 3, 4, 5)).astype(np.float32)  # (T, 3, H, W) in [0, 1]
    uint8 = rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)  # (T, H, W, 3)
    clip = small_clip(tmp_path / "clip.mp4")
    videos = [VideoFrames(torch.from_numpy(floats), fps=8.0, name="rollout"), VideoFrames(uint8, fps=16.0), clip]
    request = build_request(videos, ["a", "b", "c"], paths="upload")
    assert _request_json(request) == {"items": [
        {"prompt": "a", "video": {"kind": "frames", "part": "video0", "fps": 8.0}},
        {"prompt": "b", "video": {"kind": "frames", "part": "video1", "fps": 16.0}},
        {"prompt": "c", "video": {"kind": "file", "part": "video2"}},
    ]}
    parts = dict(request.parts[1:])
    assert [name for name, _ in request.parts[1:]] == ["video0", "video1", "video2"]
    expected = np.round(floats * np.float32(255)).astype(np.uint8).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(_npy(parts["video0"][1]), expected)
    assert _npy(parts["video1"][1]).dtype == np.uint8
    np.testing.assert_array_equal(_npy(parts["video1"][1]), uint8)
    assert parts["video2"][:2] == ("clip.mp4", clip.read_bytes())
    assert request.sources == ["rollout", "<in-memory video>", str(clip)]

    shared = build_request([clip], ["c"], paths="shared")
    assert _request_json(shared)["items"][0]["video"] == {"kind": "path", "path": str(clip)}
    assert len(shared.parts) == 1


def test_bad_inputs_fail_before_sending(tmp_path):
    with pytest.raises(VideoDecodeError, match="cannot read the file to upload it"):
        build_request([tmp_path / "missing.mp4"], ["a"], paths="upload")
    with pytest.raises(VideoDecodeError, match="float frames must lie in"):
        build_request([VideoFrames(torch.full((2, 3, 4, 4), 1.5), fps=8.0)], ["a"], paths="upload")
    with pytest.raises(VideoDecodeError, match="fps must be a positive number"):
        build_request([VideoFrames(np.zeros((2, 4, 4, 3), np.uint8), fps=math.nan)], ["a"], paths="upload")


def test_results_become_scored_items():
    """All RESULT fields map onto ScoredItem; null reward is NaN (a failure, never a number made up)."""
    full = {"reward": 0.25, "error": None, "cot": "ok", "sub_scores": {"motion": 3}, "overall_score": 3.5,
            "parse_ok": True, "parse_error": None, "truncated": False}
    item = scored_item(full)
    assert (item.reward, item.cot, item.sub_scores, item.overall_score, item.parse_ok, item.truncated, item.ok) == \
        (0.25, "ok", {"motion": 3}, 3.5, True, False, True)
    failed = scored_item({"reward": None, "error": "cannot read video x.mp4: no moov atom"})
    assert math.isnan(failed.reward) and failed.error == "cannot read video x.mp4: no moov atom" and not failed.ok
    silent = scored_item({"reward": None})
    assert math.isnan(silent.reward) and silent.error == "the reward server returned no reward and no error"
    with pytest.raises(RemoteRewardError, match=r"reward=True, not int or float or null"):
        scored_item({"reward": True})
    with pytest.raises(RemoteRewardError, match=r"reward='0.5'"):
        scored_item({"reward": "0.5"})
    with pytest.raises(RemoteRewardError, match="answered 1 result\\(s\\) for 2 video\\(s\\)"):
        scored_items({"items": [full]}, expected=2)


def test_refusals_name_the_server_field_and_the_video():
    body = json.dumps({"error": {"field": "items[1].video.fps", "message": "must be a finite number > 0"}}).encode()
    error = refusal(422, body, url=URL, sources=["a.mp4", "rollout-7"])
    assert isinstance(error, DataError)
    assert str(error) == (f"reward server {URL} refused the request (422) at items[1].video.fps (video rollout-7): "
                          "must be a finite number > 0")
    auth = refusal(401, json.dumps({"error": {"field": "Authorization", "message": "wrong token"}}).encode(),
                   url=URL, sources=[])
    assert isinstance(auth, ConfigError) and "at Authorization: wrong token" in str(auth)
    assert "at <body>: <html>bad gateway" in str(refusal(404, b"<html>bad gateway", url=URL, sources=[]))
    assert describe_field("items[9].prompt", ["a"]) == "items[9].prompt"


def test_attempt_plan_is_rounds_over_the_servers_with_doubling_backoff():
    assert attempt_plan(1, url_count=3, retries=2, backoff_s=0.5) == [
        Attempt(1, 0.0), Attempt(2, 0.0), Attempt(0, 0.0),
        Attempt(1, 0.5), Attempt(2, 0.0), Attempt(0, 0.0),
        Attempt(1, 1.0), Attempt(2, 0.0), Attempt(0, 0.0),
    ]
    assert attempt_plan(0, url_count=1, retries=3, backoff_s=0.25) == [
        Attempt(0, 0.0), Attempt(0, 0.25), Attempt(0, 0.5), Attempt(0, 1.0)]
    assert attempt_plan(0, url_count=2, retries=0, backoff_s=1.0) == [Attempt(0, 0.0), Attempt(1, 0.0)]


@pytest.mark.parametrize("options, message", [
    ({}, "remote reward needs urls"),
    ({"urls": "http://127.0.0.1:8000"}, "remote reward needs urls"),
    ({"urls": ["127.0.0.1:8000"]}, "each of urls must be http\\(s\\)://host:port"),
    ({"urls": ["http://127.0.0.1"]}, "each of urls must be http\\(s\\)://host:port"),
    ({"urls": ["http://127.0.0.1:8000/score"]}, "each of urls must be"),
    ({"urls": [URL, URL + "/"]}, "urls repeat a server"),
    ({"urls": [URL], "on_error": "zero"}, "on_error must be one of raise, nan, got 'zero'"),
    ({"urls": [URL], "paths": "copy"}, "paths must be one of upload, shared"),
    ({"urls": [URL], "retries": -1}, "retries must be an integer >= 0"),
    ({"urls": [URL], "batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"urls": [URL], "timeout_s": 0}, "timeout_s must be a finite number > 0"),
    ({"urls": [URL], "backoff_s": math.inf}, "backoff_s must be a finite number >= 0"),
    ({"urls": [URL], "token_env": ""}, "token_env must name an environment variable"),
    ({"urls": [URL], "token": "secret"}, "does not take options \\['token'\\]"),
])
def test_entry_options_are_checked(options, message):
    with pytest.raises(ConfigError, match=message):
        check_reward_entry({"name": "remote", **options})


def test_a_valid_entry_builds_without_a_server():
    check_reward_entry({"name": "remote", "urls": [URL, "https://reward-2.internal:443"], "on_error": "nan",
                        "paths": "shared", "retries": 0, "backoff_s": 0, "timeout_s": 5, "batch_size": 2})


# ----- against the real server on 127.0.0.1 ------------------------------------------------------------------------

TOKEN_ENV = "DESCORE_TEST_REWARD_TOKEN"
TOKEN = "remote-test-secret"


def _frames(seed: int) -> np.ndarray:
    return square_clip(np.random.default_rng(seed), colour="green", direction="up", noise=6.0, frames=6)


def _local(videos: list, entry: dict | None = None) -> RewardOutput:
    return build_reward(entry or {"name": "brightness"}).score(videos, ["p"] * len(videos))


def _remote(url_list: list[str], **options) -> RemoteReward:
    return RemoteReward(url_list, token_env=TOKEN_ENV, **options)


def _dead_url() -> str:
    """A port of 127.0.0.1 nothing listens on (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def _serve_config(folder: Path, entry: dict, **settings) -> ServeConfig:
    path = folder / f"reward-{len(list(folder.glob('reward-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(entry))
    return ServeConfig(reward=str(path), port=0, **settings)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("remote")
    return {"root": root, "files": [small_clip(root / f"clip{seed}.mp4", seed=seed) for seed in range(2)]}


@pytest.fixture(scope="module")
def server(clips) -> Iterator[str]:
    """brightness behind a token, with the clips' folder as a root and a short prompt limit."""
    config = _serve_config(clips["root"], {"name": "brightness"}, token=TOKEN, roots=[str(clips["root"])],
                           max_items=4, max_queue=8, max_prompt_chars=40)
    with running_server(build_reward({"name": "brightness"}), config) as url:
        yield url


@pytest.fixture
def token(monkeypatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


def _videos(clips: dict) -> list:
    """Two mp4 files, float (T, 3, H, W) frames in [0, 1] and uint8 (T, H, W, 3) frames."""
    floats = torch.from_numpy(_frames(1)).permute(0, 3, 1, 2).float() / 255 * 0.9 + 0.05
    return [*clips["files"], VideoFrames(floats, fps=4.0, name="float"), VideoFrames(_frames(2), fps=4.0, name="uint8")]


@pytest.mark.parametrize("paths", ["upload", "shared"])
def test_remote_gives_the_local_rewards(server, clips, token, paths):
    """Files (uploaded or named), float and uint8 frames, over two requests of two videos: the rewards equal the
    local brightness exactly (JSON floats round-trip), in input order."""
    videos = _videos(clips)
    remote = build_reward({"name": "remote", "urls": [server], "token_env": TOKEN_ENV, "paths": paths, "batch_size": 2})
    assert remote.calibration is None and remote.server_info()["reward"] == "brightness"
    scored = remote.score(videos, ["p"] * 4)
    assert scored.rewards.tolist() == _local(videos).rewards.tolist() and scored.failures == 0
    assert len(set(scored.rewards.tolist())) == 4


def test_the_served_calibration_comes_with_the_model(clips, tmp_path):
    """A calibration the server's model carries reaches the client through /info, stats unchanged."""
    stats = Calibration(dimensions={"reward": DimensionStats.of([0.1, 0.2, 0.4])},
                        reward={"label": "brightness", "identity": reward_identity({"name": "brightness"})},
                        source={"data": "reference.csv"})
    entry = {"name": "brightness", "calibration": str(write_calibration(tmp_path / "calibration.json", stats))}
    with running_server(build_reward(entry), _serve_config(tmp_path, entry)) as url:
        served = build_reward({"name": "remote", "urls": [url]}).calibration
    assert served.same_stats(stats) and served.stats().mean == pytest.approx(0.7 / 3)


def test_a_dead_server_is_skipped_and_requests_take_turns(server, clips, token, caplog):
    """First URL a closed port: the four requests begin at URLs 0, 1, 0, 1 in turn; the two that begin at the dead
    one (and /info, read from the first server that answers) fail over to the live server at once."""
    videos, dead = _videos(clips), _dead_url()
    remote = _remote([dead, server], batch_size=1, retries=0)
    with caplog.at_level("WARNING", logger="reward.remote"):
        assert remote.score(videos, ["p"] * 4).rewards.tolist() == _local(videos).rewards.tolist()
    failed = [record.getMessage() for record in caplog.records if record.name == "reward.remote"]
    assert len(failed) == 3 and all(f"{dead}: ConnectError" in message for message in failed)
    assert sum("POST /score of 1 video(s) failed" in message for message in failed) == 2


def test_servers_of_different_rewards_are_refused(server, clips, token, tmp_path):
    entry = {"name": "temporal_smoothness"}
    with running_server(build_reward(entry), _serve_config(tmp_path, entry)) as other:
        remote = _remote([server, other], batch_size=1)
        with pytest.raises(ConfigError, match=f"reward servers {server} and {other} serve different rewards: "
                                              r"\{'name': 'brightness'\} and \{'name': 'temporal_smoothness'\}"):
            remote.score(_videos(clips)[2:], ["p", "p"])


def test_every_server_dead_raises_or_fails_each_video(clips, caplog):
    dead = [_dead_url(), _dead_url()]
    videos = _videos(clips)[2:]
    with pytest.raises(RemoteRewardError, match=r"GET /info failed on every try \(4 over .*ConnectError"):
        build_reward({"name": "remote", "urls": dead, "retries": 1, "backoff_s": 0.01})
    with pytest.raises(RemoteRewardError, match=re.escape(f"over {dead}, 1 retry round(s)); last error: {dead[1]}")):
        _remote(dead, retries=1, backoff_s=0.01).score(videos, ["p", "p"])
    scored = _remote(dead, retries=0, on_error="nan").score(videos, ["p", "p"])
    assert scored.failures == 2 and all(math.isnan(value) for value in scored.rewards.tolist())
    assert all(item.error.startswith("GET /info failed on every try (2 over") for item in scored.items)


def test_refusals_are_raised_at_once_with_the_server_field(server, clips, token):
    """A 4xx is the request's fault: raised on the first try (the server counts one 413), typed, naming the field
    and the video; a 401 names the header."""
    before = metric_samples(server, {"Authorization": f"Bearer {TOKEN}"})
    remote = _remote([server], retries=3)
    with pytest.raises(DataError, match=r"\(413\) at items\[0\]\.prompt \(video float\): has 41 characters"):
        remote.score(_videos(clips)[2:], ["x" * 41, "p"])
    after = metric_samples(server, {"Authorization": f"Bearer {TOKEN}"})
    key = ("descore_reward_errors_total", (("status", "413"),))
    assert after[key] - before.get(key, 0) == 1
    with pytest.raises(ConfigError, match=r"\(401\) at Authorization: missing or wrong"):
        RemoteReward([server], token_env="DESCORE_TEST_NO_SUCH_VARIABLE").server_info()


def test_a_server_without_roots_refuses_shared_paths(clips, tmp_path):
    with running_server(build_reward({"name": "brightness"}), _serve_config(tmp_path, {"name": "brightness"})) as url:
        with pytest.raises(ConfigError, match=r"\(403\) at items\[0\]\.video\.path \(video .*clip0\.mp4\)"):
            RemoteReward([url], paths="shared").score(clips["files"][:1], ["p"])


def test_a_full_queue_is_retried_after_its_retry_after(tmp_path):
    """The model holds video A, video B waits (queue of one): C gets 429, waits the Retry-After and gets in."""
    model = GatedReward()
    config = _serve_config(tmp_path, {"name": "brightness"}, max_batch_size=1, max_items=1, max_queue=1)
    with running_server(model, config) as url:
        remote = RemoteReward([url], retries=3, backoff_s=0.05)
        remote.server_info()
        frames = [VideoFrames(_frames(seed), fps=4.0) for seed in range(3)]
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(remote.score, frames[:1], ["a"])
            assert model.entered.acquire(timeout=30)
            second = pool.submit(remote.score, frames[1:2], ["b"])
            wait_for(lambda: metric_samples(url)[("descore_reward_queue_depth", ())] == 1, "B to wait")
            third = pool.submit(remote.score, frames[2:], ["c"])
            wait_for(lambda: metric_samples(url).get(("descore_reward_errors_total", (("status", "429"),))), "C's 429")
            model.gate.set()
            scored = [future.result(timeout=60).rewards.tolist()[0] for future in (first, second, third)]
    assert scored == _local(frames).rewards.tolist()


def test_a_tiny_descore_scores_remotely_as_locally(tiny_descore_dir, clips, tmp_path):
    entry = {"name": "descore_no_cot", "path": str(tiny_descore_dir), "device": "cpu", "batch_size": 4}
    videos = _videos(clips)
    with running_server(build_reward(entry), _serve_config(tmp_path, entry, max_batch_size=4)) as url:
        remote = build_reward({"name": "remote", "urls": [url], "batch_size": 4}).score(videos, ["a red square"] * 4)
    local = build_reward(entry).score(videos, ["a red square"] * 4)
    assert remote.failures == 0 and len(set(local.rewards.tolist())) == 4
    torch.testing.assert_close(remote.rewards, local.rewards, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_grpo_trains_with_the_remote_reward_as_with_the_local_one(tmp_path):
    """Two tiny GRPO steps with brightness scored by a server give the reward history and the LoRA of the same
    run scored locally (same seeds): the rollouts' float frames reach the server as the very uint8 frames local
    scoring quantises them to."""
    wan, prompts = save_tiny_wan(tmp_path / "wan"), tmp_path / "prompts.txt"
    prompts.write_text("a red square moving left\na blue ball bouncing\n")
    settings = {"max_steps": 2, "save_steps": 2, "rewards": ["name=brightness"]}
    local = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, wan, prompts, tmp_path / "local", **settings))
    policy, run, grpo = tiny_arguments("tiny_grpo", GrpoConfig, wan, prompts, tmp_path / "remote", **settings)
    config = _serve_config(tmp_path, {"name": "brightness"})
    with running_server(build_reward({"name": "brightness"}), config) as url:
        term = {"name": "remote", "urls": [url], "label": "brightness", "weight": 1.0}
        remote = run_grpo(policy, run, dataclasses.replace(grpo, rewards=[term]))
    assert len(local.reward_history) == 2 and remote.reward_history == local.reward_history
    assert same_lora(tmp_path / "local", tmp_path / "remote")
