"""A token bucket: the global rate limit of the work queue and of the cloud API calls of each
account and region (:class:`BucketRegistry`: shared by every provider and Service on them).

Pure apart from the clock, which is injectable (tests pass a fake one).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = float(burst)
        self._last = clock()

    def reserve(self) -> float:
        """Take a token; return how long to wait until it is really available."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class RateConflict(ValueError):
    """Two providers on one account and region asked for different rates."""


class BucketRegistry:
    """One token bucket per cloud, account and region, for every provider of the process.

    The cloud's quota is per account and region, not per podgate provider or Service: every
    Service already shares its provider's bucket, and providers on one account and region (two
    names, e.g. for two load-balancer classes) must share one too, or together they would call
    at a multiple of the configured rate.  Two of them configured with different rates is a
    configuration error (which rate would the account get?), said in one line."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str, str], tuple[TokenBucket, str]] = {}

    def bucket(
        self, cloud: str, account: str, region: str, rate: float, burst: int, owner: str
    ) -> TokenBucket:
        """The bucket of ``(cloud, account, region)``, made at ``rate``/``burst`` by its first
        ``owner`` (a provider name, for the error)."""
        key = (cloud, account, region)
        held = self._buckets.get(key)
        if held is None:
            self._buckets[key] = (TokenBucket(rate, burst, self._clock), owner)
            return self._buckets[key][0]
        bucket, first = held
        if (bucket.rate, bucket.burst) != (rate, burst):
            raise RateConflict(
                f"providers {first} and {owner} use one {cloud} account ({account}) in region "
                f"{region} but set different API rates ({bucket.rate:g}/s burst {bucket.burst}, "
                f"{rate:g}/s burst {burst}): they share one bucket, give them the same rate"
            )
        return bucket
