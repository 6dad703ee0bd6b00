"""One retry loop for every provider's calls: the clouds' APIs and HAProxy's runtime CLI.

A rollout of many pods must be a bounded trickle of calls, not a storm: every attempt takes a
token from the bucket of its cloud account and region (shared by every provider and Service
on them: :class:`~podgate.model.ratelimit.BucketRegistry`), and an answer the predicate calls
retryable (throttled, or busy with an earlier job) is tried again after an exponential back-off with
equal jitter, or after the server's own retry-after when that is longer (capped).  The number
of attempts and a deadline bound each call, so a gate waits for a verdict and never for ever;
after them the last error goes to the caller, which turns it into a ProviderError (never a
reason to open a gate).  Every retried answer is counted (``throttled``) for the
``podgate_provider_throttled_total`` metric.

This loop is the only one: the SDKs' own retries are switched off where their clients are made
(botocore's ``total_max_attempts=1``, the Tea runtime's ``RetryOptions(retryable=False)``), so
attempts never multiply.  The sleep, the clock and the jitter are injectable for tests.

HAProxy's CLI goes through the same loop with its own settings (no bucket, no back-off, one
retry, no deadline, and only for reads: see ``haproxy_runtime.Runtime.command``): a local socket
is not metered, and a change is never repeated because it may have been made.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from podgate.model.ratelimit import TokenBucket

T = TypeVar("T")


class Retry:
    def __init__(
        self,
        bucket: TokenBucket | None,
        *,
        max_retries: int = 6,
        base_delay: float = 0.2,
        max_retry_after: float = 30.0,
        max_delay: float = math.inf,
        deadline: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        """``bucket``: the account's rate every attempt draws on (None: not metered).
        ``deadline``: seconds one call may take with its back-offs; a back-off that would end
        after it is not slept, the last error is raised instead.  ``max_delay``: the longest
        back-off of our own (a provider gives its poll interval: a call that was throttled for
        minutes is tried again within that interval of the API answering again; the bucket, not
        the back-off, keeps the account's rate)."""
        self.bucket = bucket
        self.max_delay = max_delay
        self.max_retries, self.base_delay = max_retries, base_delay
        self.max_retry_after, self.deadline = max_retry_after, deadline
        self._sleep, self._clock, self._jitter = sleep, clock, jitter
        #: answers that were retried after a back-off (throttled or busy), since start
        self.throttled = 0

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``attempt``-th failed try (0-based): half the exponential
        delay (at most ``max_delay``) plus up to the other half at random, or the server's
        retry-after if longer."""
        delay = min(self.base_delay * 2.0**attempt, self.max_delay)
        delay = delay / 2 + self._jitter() * delay / 2
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay

    async def call(
        self,
        attempt: Callable[[], Awaitable[T]],
        retryable: Callable[[Exception], bool],
        retry_after: Callable[[Exception], float | None] = lambda e: None,
    ) -> T:
        """``attempt()`` until it answers, a non-retryable error, the last retry or the deadline;
        then that error propagates.  ``retry_after``: the server's own wait in seconds, if any."""
        end = self._clock() + self.deadline
        n = 0
        while True:
            wait = self.bucket.reserve() if self.bucket is not None else 0.0
            if wait:
                await self._sleep(wait)
            try:
                return await attempt()
            except Exception as e:
                if n >= self.max_retries or not retryable(e):
                    raise
                delay = self.backoff(n, retry_after(e))
                if self._clock() + delay > end:
                    raise
                self.throttled += 1
                if delay > 0:
                    await self._sleep(delay)
                n += 1
