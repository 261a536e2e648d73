"""The reward server's Prometheus instruments, in a registry of its own (two servers in one process, as in
the tests, keep separate counts). Videos per second is ``rate(descore_reward_videos_scored_total[1m])``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Batch sizes are small integers: one bucket per power of two up to the largest batch anyone configures.
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class ServerMetrics:
    registry: CollectorRegistry
    queue_depth: Gauge
    request_seconds: Histogram
    videos_scored: Counter
    errors: Counter
    batch_size: Histogram
    dropped_videos: Counter

    @classmethod
    def create(cls, queue_depth: Callable[[], float]) -> ServerMetrics:
        """Fresh instruments; ``queue_depth`` is read at each scrape (videos waiting, not those being scored)."""
        registry = CollectorRegistry()
        depth = Gauge("descore_reward_queue_depth", "Videos waiting for the model.", registry=registry)
        depth.set_function(queue_depth)
        return cls(
            registry=registry,
            queue_depth=depth,
            request_seconds=Histogram("descore_reward_request_seconds",
                                      "Time from receiving a /score request to its answer.", registry=registry),
            videos_scored=Counter("descore_reward_videos_scored", "Videos the model scored (failed items included).",
                                  registry=registry),
            errors=Counter("descore_reward_errors", "Requests answered with an error, by HTTP status.", ["status"],
                           registry=registry),
            batch_size=Histogram("descore_reward_batch_size", "Videos per model call.", buckets=_BATCH_BUCKETS,
                                 registry=registry),
            dropped_videos=Counter("descore_reward_dropped_videos",
                                   "Queued videos dropped because their client disconnected.", registry=registry),
        )
