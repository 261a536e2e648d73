"""The ``remote`` reward (reward/remote.py): request building, answers and refusals, the retry plan, and — against
the real server on 127.0.0.1 — the same rewards as local scoring, failover, NaN on failure, 4xx and 429."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from reward import VideoFrames
from reward.base import check_reward_entry
from reward.errors import ConfigError, DataError, RemoteRewardError, VideoDecodeError
from reward.remote import Attempt, attempt_plan, build_request, describe_field, refusal, scored_item, scored_items

from .helpers import small_clip

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
