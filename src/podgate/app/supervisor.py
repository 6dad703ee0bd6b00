"""The process as a set of runnables, started in order and stopped in the reverse order.

controller-runtime's Manager in miniature: each part of the controller process is a
:class:`Runnable` that says whether it runs on every replica or only on the leader, and whether
it needs the informers' caches synced first.  The :class:`Supervisor` starts every-replica
runnables at once (informers, events, the health server), the after-sync ones once the caches
have synced (the webhook must not answer from an empty cache), and the leader's runnables while
this replica holds the lease.  Losing the lease stops the leader's runnables only: the replica
keeps serving admission, evictions and drain hooks, and campaigns again (its writes are fenced
by the lease meanwhile, see :meth:`podgate.kube.leader.LeaderElector.fence`).  A runnable that
raises stops the process (its replacement starts clean); one that returns has simply finished.
Stopping cancels the leader's runnables first, then the rest in the reverse order of their
start, so the health endpoint answers until the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runnable:
    """One long-running part of the process."""

    name: str
    #: runs until cancelled (or until its work is done)
    run: Callable[[], Coroutine[Any, Any, None]]
    #: only the holder of the leader lease runs it (everything that writes)
    leader_only: bool = False
    #: starts once the informers' caches have synced
    after_sync: bool = False


class Elector(Protocol):
    """What the supervisor needs of leader election (:class:`podgate.kube.leader.LeaderElector`)."""

    async def run(self, on_started: Callable[[], None], on_stopped: Callable[[], None]) -> None: ...

    async def release(self) -> None: ...


class Supervisor:
    def __init__(
        self,
        runnables: Sequence[Runnable],
        synced: Callable[[], Awaitable[None]],
        elector: Elector | None = None,
        *,
        on_leading: Callable[[bool], None] = lambda leading: None,
        patience: float = 10.0,
    ) -> None:
        """``synced()`` returns once the caches the after-sync runnables read are synced;
        ``on_leading(leading)`` hears every change of leadership; ``patience`` is how long a
        stop waits for each runnable (a stopping controller must stop within its grace period)."""
        self.runnables = list(runnables)
        self.synced = synced
        self.elector = elector
        self.on_leading = on_leading
        self.patience = patience
        #: names of the runnables started, in order (what a test of start-up order reads)
        self.started: list[str] = []
        #: names of the runnables stopped, in order
        self.stopped: list[str] = []
        self._tasks: list[tuple[Runnable, asyncio.Task[None]]] = []
        #: the leader's runnables now running (empty while following)
        self._leading: list[tuple[Runnable, asyncio.Task[None]]] = []
        #: the latest change of leadership being carried out (they run one after another)
        self._transition: asyncio.Task[None] | None = None
        self._failed: asyncio.Future[None] | None = None

    async def run(self) -> None:
        """Run every runnable until one fails or this is cancelled; then stop them all."""
        self._failed = asyncio.get_running_loop().create_future()
        try:
            self._start(r for r in self.runnables if not r.after_sync and not r.leader_only)
            await self._until_failed(self.synced())
            self._start(r for r in self.runnables if r.after_sync and not r.leader_only)
            if self.elector is None:
                self._won()
            else:
                self.on_leading(False)
                self._start([Runnable("leader election", self._elect)])
            await self._failed
        finally:
            if self._transition is not None:
                self._transition.cancel()
            await self._stop(self._leading)
            self._leading = []
            await self._stop(list(reversed(self._tasks)))
            if self.elector is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(3.0):
                        await self.elector.release()

    async def _elect(self) -> None:
        assert self.elector is not None
        await self.elector.run(self._won, self._lost)

    def _won(self) -> None:
        self.on_leading(True)
        self._then(self._lead)

    def _lost(self) -> None:
        log.warning("lost the leader lease: the leader's work stops, this replica keeps serving")
        self.on_leading(False)
        self._then(self._follow)

    def _then(self, change: Callable[[], Awaitable[None]]) -> None:
        """Carry out a change of leadership after the one before it has finished."""
        before = self._transition

        async def after() -> None:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            await change()

        self._transition = asyncio.create_task(after(), name="leadership change")

    async def _lead(self) -> None:
        self._leading = self._start(r for r in self.runnables if r.leader_only)

    async def _follow(self) -> None:
        leading, self._leading = self._leading, []
        await self._stop(leading)

    def _start(self, runnables: Iterable[Runnable]) -> list[tuple[Runnable, asyncio.Task[None]]]:
        started = []
        for r in runnables:
            task: asyncio.Task[None] = asyncio.create_task(r.run(), name=r.name)
            task.add_done_callback(functools.partial(self._ended, r))
            started.append((r, task))
            self.started.append(r.name)
            log.debug("started %s", r.name)
        if not any(r.leader_only for r, _ in started):
            self._tasks += started
        return started

    def _ended(self, runnable: Runnable, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("%s failed: %r", runnable.name, error, exc_info=error)
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        if self._failed is not None and not self._failed.done():
            self._failed.set_exception(error)

    async def _until_failed(self, step: Awaitable[None]) -> None:
        """``step``, unless a runnable already started fails first."""
        assert self._failed is not None
        waiting = asyncio.ensure_future(step)
        try:
            await asyncio.wait([waiting, self._failed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiting.done():
                waiting.cancel()
        if self._failed.done():
            self._failed.result()

    async def _stop(self, tasks: Sequence[tuple[Runnable, asyncio.Task[None]]]) -> None:
        """Cancel each runnable and wait for it, in the order given; one that outlives its
        cancellation by ``patience`` seconds is named in the log (a task that ignores
        cancellation is a bug) and left behind."""
        for r, task in tasks:
            if task.done():
                continue
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=self.patience)
            if not done:
                log.error("%s did not stop within %gs of its cancellation", r.name, self.patience)
            self.stopped.append(r.name)
