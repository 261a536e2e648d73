"""A reward for the fault tests, registered on import (by the tests and by the torchrun worker): the
temporal-smoothness sanity reward, except that chosen calls fail on every item."""

from __future__ import annotations

import math
import os

from reward import RewardOutput, ScoredItem, build_reward, register_reward, registered_rewards

NAN_REWARD = "nan_on_calls_test_reward"


def _numbers(value: int | str) -> set[int]:
    return {int(part) for part in str(value).split(":") if part}


if NAN_REWARD not in registered_rewards():

    @register_reward(NAN_REWARD)
    class NanOnCalls:
        """Every item NaN on calls ``nan_calls`` (1-based, ``:``-separated) of the processes ``ranks``
        (``:``-separated; default all); temporal smoothness otherwise. One call per GRPO step in the tiny recipe."""

        name = NAN_REWARD

        def __init__(self, nan_calls: int | str, ranks: int | str = "") -> None:
            self.inner, self.calls = build_reward({"name": "temporal_smoothness"}), 0
            self.nan_calls = _numbers(nan_calls)
            ranks = _numbers(ranks)
            self.active = not ranks or int(os.environ.get("RANK", "0")) in ranks

        def score(self, videos, prompts) -> RewardOutput:
            self.calls += 1
            if self.active and self.calls in self.nan_calls:
                return RewardOutput([ScoredItem(reward=math.nan, error="simulated failure")] * len(videos))
            return self.inner.score(videos, prompts)
