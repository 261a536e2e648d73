"""Batching across requests: one queue of videos and one worker thread that owns the reward model.

Reward models are not thread-safe and a GPU serves one batch at a time, so a single thread calls
``model.score``. Requests put their videos in the queue (all or none: a request that would overfill it is
refused whole) and wait on one future per video. The worker takes up to ``max_batch_size`` videos, from any
requests, once that many wait or ``max_wait_s`` after the oldest of them arrived. A request whose client
went away withdraws its videos that still wait; results of videos already being scored are discarded.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Sequence

from .base import RewardModel, ScoredItem
from .errors import VideoDecodeError
from .server_metrics import ServerMetrics
from .video import VideoSource

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue cannot take a request's videos now; the client should retry later."""


class ServerClosing(Exception):
    """The server is shutting down: waiting videos are not scored."""


class ScoringFailed(Exception):
    """The model raised on a batch (not a per-item decoding failure); every video of the batch fails with it."""


@dataclass(eq=False)
class Job:
    """One video waiting for the model, and the future its request awaits."""

    video: VideoSource
    prompt: str
    future: Future = field(default_factory=Future)
    enqueued_at: float = 0.0


class BatchQueue:
    """Videos waiting for the model, in arrival order, shared by the event loop and the worker thread."""

    def __init__(self, *, max_batch_size: int, max_wait_s: float, max_queue: int) -> None:
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_s, max_queue
        self._pending: deque[Job] = deque()
        self._ready = threading.Condition()
        self._closed = False

    @property
    def depth(self) -> int:
        return len(self._pending)

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue all of ``jobs`` or none.

        Raises:
            QueueFull: they would take the queue past ``max_queue`` videos.
            ServerClosing: the queue is closed.
        """
        with self._ready:
            if self._closed:
                raise ServerClosing("the server is shutting down")
            if len(self._pending) + len(jobs) > self.max_queue:
                raise QueueFull(f"{len(self._pending)} videos wait and this request adds {len(jobs)}; the queue "
                                f"holds at most {self.max_queue}")
            now = time.monotonic()
            for job in jobs:
                job.enqueued_at = now
            self._pending.extend(jobs)
            self._ready.notify()

    def withdraw(self, jobs: Sequence[Job]) -> int:
        """Remove those of ``jobs`` still waiting (cancelling their futures); returns how many were removed."""
        with self._ready:
            waiting = [job for job in jobs if job in self._pending]
            for job in waiting:
                self._pending.remove(job)
                job.future.cancel()
            self._ready.notify()  # the oldest video may have changed, and with it the batch deadline
        return len(waiting)

    def take_batch(self) -> list[Job]:
        """Block until a batch is due; return it, or [] once the queue is closed."""
        with self._ready:
            while not self._closed:
                wait_s = None
                if self._pending:
                    wait_s = self._pending[0].enqueued_at + self.max_wait_s - time.monotonic()
                    if len(self._pending) >= self.max_batch_size or wait_s <= 0:
                        count = min(self.max_batch_size, len(self._pending))
                        return [self._pending.popleft() for _ in range(count)]
                self._ready.wait(wait_s)
            return []

    def close(self) -> None:
        """Refuse new videos and fail those still waiting with :class:`ServerClosing`."""
        with self._ready:
            self._closed = True
            while self._pending:
                job = self._pending.popleft()
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(ServerClosing("the server shut down before this video was scored"))
            self._ready.notify_all()


def score_batch(model: RewardModel, videos: Sequence[VideoSource], prompts: Sequence[str]) -> list[ScoredItem]:
    """``model.score`` on a batch, where a video that cannot be decoded fails alone (reward NaN, its error), as
    a local score with ``skip_invalid`` would record it, whatever the model's own ``skip_invalid`` option.

    A model that raises :class:`VideoDecodeError` on a batch is asked again one video at a time; the registry's
    batch-equals-singles contract makes those rewards the batch's.
    """
    try:
        items = model.score(videos, prompts).items
    except VideoDecodeError as error:
        if len(videos) == 1:
            return [ScoredItem(reward=math.nan, error=str(error))]
        return [score_batch(model, [video], [prompt])[0] for video, prompt in zip(videos, prompts)]
    if len(items) != len(videos):
        raise ScoringFailed(f"{model.name} returned {len(items)} results for {len(videos)} videos")
    return items


class ScoringWorker:
    """The thread that owns the model: takes batches from the queue, scores them, fulfils the futures."""

    def __init__(self, model: RewardModel, queue: BatchQueue, *, metrics: ServerMetrics) -> None:
        self.model, self.queue, self.metrics = model, queue, metrics
        self._thread = threading.Thread(target=self._run, name="reward-scoring", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Close the queue (waiting videos fail with ServerClosing), let the batch in progress finish, join."""
        self.queue.close()
        self._thread.join()

    def _run(self) -> None:
        while batch := self.queue.take_batch():
            # A future cancelled since it was queued (its client left) is skipped; the rest are marked running.
            running = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if running:
                self._score(running)

    def _score(self, jobs: list[Job]) -> None:
        try:
            items = score_batch(self.model, [job.video for job in jobs], [job.prompt for job in jobs])
        except Exception as error:  # noqa: BLE001 -- reported to every waiting client as a 503, the server lives on
            logger.exception("%s raised on a batch of %d videos", self.model.name, len(jobs))
            failure = ScoringFailed(f"{self.model.name} raised {type(error).__name__}: {error}")
            for job in jobs:
                job.future.set_exception(failure)
            return
        self.metrics.batch_size.observe(len(jobs))
        self.metrics.videos_scored.inc(len(jobs))
        for job, item in zip(jobs, items):
            job.future.set_result(item)
