"""Health reads of a pool, coalesced: every caller that wants a pool's targets within one poll
shares one provider call and its answer.

A cloud API is metered, and the controller has several readers of one group: the reconcile of
its Service (re-run by every event of every one of its pods, not only by the poll), the drain
hooks of its leaving pods, the eviction guard.  Read one by one, a rollout of 100 pods made a
read per pod event; shared, a group costs one read per poll interval however many pods and
readers wait on it, plus one after each change podgate makes to it.

A caller says how old an answer it can use (``max_age``; the provider's poll interval): a read
in flight is always joined, a finished one is reused while younger than that.  A change to the
pool (register, drain, deregister) must be followed by :meth:`PoolReads.forget`, so the next
read starts after it; a read that was in flight when the change was made is never handed to a
later caller.  Failures are not kept: the next caller reads again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from podgate.model.lb import PoolSpec, Target
from podgate.providers.base import Provider, TargetState

T = TypeVar("T")
Targets = dict[Target, TargetState]
#: finished reads older than this are dropped (pools of Services long gone)
KEEP = 300.0


class SharedReads(Generic[T]):
    """Reads by key, each shared while in flight and reused while young enough: the mechanism
    behind :class:`PoolReads`, and behind a provider's reads that serve several groups at once
    (CLB's health of a whole load balancer)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._reads: dict[Hashable, tuple[float, asyncio.Task[T]]] = {}
        #: calls made (reads shared or reused are not counted): for tests
        self.calls = 0

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[T]], max_age: float) -> T:
        """The read in flight for ``key``, a finished one younger than ``max_age`` seconds, or
        a new one by ``fetch()``."""
        now = self._clock()
        held = self._reads.get(key)
        if (
            held is not None
            and held[1].done()
            and (held[1].cancelled() or held[1].exception() or now - held[0] >= max_age)
        ):
            held = None
        if held is None:
            self._prune(now)
            task = asyncio.ensure_future(fetch())
            # a failure is the caller's to see, never the event loop's "never retrieved"
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            held = (now, task)
            self._reads[key] = held
            self.calls += 1
        # one caller cancelled (a drain hook's client gone) must not cancel the others' read
        return await asyncio.shield(held[1])

    def _prune(self, now: float) -> None:
        for key, (at, task) in list(self._reads.items()):
            if task.done() and now - at >= KEEP:
                del self._reads[key]

    def __len__(self) -> int:
        """Reads held (in flight or finished): one per pool read in the last ``KEEP`` seconds
        at most, and none of a Service forgotten (leak tests, the churn benchmark)."""
        return len(self._reads)

    def drop(self, key: Hashable) -> None:
        """What ``key`` reads was just changed: the next read starts after the change.  A read
        in flight goes on for those already waiting on it."""
        self._reads.pop(key, None)


def pool_key(provider: Provider, pool: PoolSpec) -> Hashable:
    """What one read answers for: the provider, and the pool's group (a user's group belongs to
    one Service port, so the Service and port say the same) or its Service port."""
    return (provider.name, pool.service_key, pool.port, pool.group)


class PoolReads(SharedReads[Targets]):
    """One shared read per pool and poll: see the module's docstring."""

    async def read(self, provider: Provider, pool: PoolSpec, max_age: float) -> Targets:
        """The pool's targets: the read in flight, a finished one younger than ``max_age``
        seconds, or a new one."""
        return await self.get(pool_key(provider, pool), lambda: provider.pool.targets(pool), max_age)

    def forget(self, provider: Provider, pool: PoolSpec) -> None:
        """The pool was just changed: the next read starts after the change."""
        self.drop(pool_key(provider, pool))

    def forget_service(self, service_key: str) -> None:
        """Every pool of the Service was released or unbound (its targets taken out): a Service
        of that name made again must not start from a read of before."""
        for key in [k for k in self._reads if isinstance(k, tuple) and k[1] == service_key]:
            self.drop(key)
