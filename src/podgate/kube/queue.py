"""A work queue with client-go's semantics, for asyncio.

- dedup: a key waiting in the queue is there once, however often it is added;
- a key being processed is never handed to a second worker; if it is added meanwhile it is
  processed once more after ``done``;
- ``add_rate_limited``: per-key exponential back-off with a cap (failures), combined with a
  global token bucket (so a burst of failing keys cannot hammer the API or a load balancer); a
  caller may cap one retry lower (:func:`retry_delay`);
- ``add_after``: delayed adds (periodic re-checks) that bypass the rate limiter; a key waits
  for one delayed add at a time, the earliest asked for (client-go's ``AddAfter``), so every
  pass of a polled key asking for the next poll does not start a poll of its own.

Adds and retries are reported to a metrics provider, as client-go's queue reports to the one
controller-runtime installs: ``podgate.controller.metrics`` installs Prometheus counters on
import; without it they go nowhere (the sandbox's node agent, unit tests).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import deque
from typing import Protocol

from podgate.model.ratelimit import TokenBucket


class QueueMetrics(Protocol):
    """What a work queue reports, by queue name (client-go's ``MetricsProvider``, trimmed)."""

    def created(self, name: str) -> None:
        """A queue exists: its counters show 0 before its first add or retry, so a dashboard
        sees the queue and ``rate()`` has a starting point."""

    def added(self, name: str) -> None:
        """A key entered the queue (a duplicate of a waiting key does not count)."""

    def retried(self, name: str) -> None:
        """A key was re-added after a failure (``add_rate_limited``)."""


class _NoMetrics:
    def created(self, name: str) -> None:
        pass

    def added(self, name: str) -> None:
        pass

    def retried(self, name: str) -> None:
        pass


NO_METRICS: QueueMetrics = _NoMetrics()


def retry_delay(failures: int, base: float, most: float, cap: float | None = None) -> float:
    """The back-off before retrying a key that failed ``failures`` times before: ``base`` doubled
    per earlier failure, at most ``most``, and at most ``cap`` when the caller gives one (a key
    whose failure is a load balancer that cannot be read is asked again at its poll interval:
    an outage of minutes must not leave it waiting half a minute after the load balancer
    answers again)."""
    delay = min(base * 2.0 ** min(failures, 64), most)
    return delay if cap is None else min(delay, cap)


class WorkQueue:
    def __init__(
        self,
        base_delay: float = 0.05,
        max_delay: float = 30.0,
        rate: float = 50.0,
        burst: int = 200,
        name: str = "queue",
        metrics: QueueMetrics = NO_METRICS,
    ) -> None:
        """``metrics``: where the queue reports its adds and retries (the composition root gives
        the Prometheus counters; a test, nothing or its own)."""
        self.name = name
        self._metrics = metrics
        self._base, self._max = base_delay, max_delay
        self._bucket = TokenBucket(rate, burst)
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._delayed: list[tuple[float, int, str]] = []
        #: when each key's delayed add is due (the heap may hold later ones, superseded)
        self._due: dict[str, float] = {}
        self._seq = itertools.count()
        self._added_at: dict[str, float] = {}
        self._nonempty = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._metrics.created(name)

    def __len__(self) -> int:
        return len(self._queue)

    def delays(self) -> list[float]:
        """When each key waiting to be added again is due (monotonic seconds), earliest first."""
        return sorted(self._due.values())

    def add(self, key: str) -> None:
        """Queue ``key`` unless it already waits.  Counted as an add only when it changes
        something (client-go's rule): a key already waiting, or already due again after the
        worker that has it is done, is not counted twice."""
        if key in self._processing:
            if key not in self._dirty:
                self._dirty.add(key)
                self._metrics.added(self.name)
            return
        if key in self._queued:
            return
        self._metrics.added(self.name)
        self._enqueue(key)

    def _enqueue(self, key: str) -> None:
        self._queued.add(key)
        self._added_at.setdefault(key, time.monotonic())
        self._queue.append(key)
        self._notify()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        due = time.monotonic() + delay
        if self._due.get(key, math.inf) <= due:
            return  # an earlier one is waiting: the key is looked at then, and decides again
        self._due[key] = due
        heapq.heappush(self._delayed, (due, next(self._seq), key))
        self._arm()

    def add_rate_limited(self, key: str, cap: float | None = None) -> None:
        """Re-add after a failure: per-key exponential back-off (:func:`retry_delay`, at most
        ``cap`` if given), and the global rate limit."""
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        self._metrics.retried(self.name)
        delay = max(retry_delay(n, self._base, self._max, cap), self._bucket.reserve())
        self.add_after(key, delay)

    def forget(self, key: str) -> None:
        """The key succeeded: its back-off starts over."""
        self._failures.pop(key, None)

    def processing(self, key: str) -> bool:
        return key in self._processing

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> tuple[str, float]:
        """Next key and how long it waited in the queue."""
        while not self._queue:
            self._nonempty.clear()
            await self._nonempty.wait()
        key = self._queue.popleft()
        self._queued.discard(key)
        self._processing.add(key)
        return key, time.monotonic() - self._added_at.pop(key, time.monotonic())

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self._enqueue(key)  # counted when it was added during processing

    def _notify(self) -> None:
        self._nonempty.set()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self._delayed:
            self._timer = None
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + max(self._delayed[0][0] - time.monotonic(), 0.0), self._fire)

    def _fire(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            due, _, key = heapq.heappop(self._delayed)
            if self._due.get(key) == due:  # else superseded by an earlier one, which was added
                del self._due[key]
                self.add(key)
        self._timer = None
        self._arm()
