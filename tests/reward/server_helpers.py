"""What the reward-server tests and the remote-reward tests share: a reward the test holds at a gate, the
server's metrics, and ordering waits."""

from __future__ import annotations

import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from reward import build_reward


class GatedReward:
    """brightness, except that each batch announces itself and then waits until the test opens the gate."""

    name = "gated_brightness"

    def __init__(self) -> None:
        self.inner = build_reward({"name": "brightness"})
        self.spec, self.calibration = self.inner.spec, None
        self.gate, self.entered = threading.Event(), threading.Semaphore(0)

    def score(self, videos, prompts):
        self.entered.release()
        if not self.gate.wait(timeout=60):
            raise RuntimeError("the test never opened the gate")
        if "explode" in prompts:
            raise RuntimeError("boom")
        return self.inner.score(videos, prompts)


def metric_samples(url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", headers=headers or {}, timeout=10).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def wait_for(condition, what: str) -> None:
    """Poll until ``condition()`` holds (an ordering wait, not a timing assertion)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
