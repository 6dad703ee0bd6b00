"""HAProxy's own word that a server turned UP or DOWN, as it happens: the
:class:`~podgate.providers.base.StateChanges` capability of a provisioned HAProxy.

Every backend podgate renders logs its servers' state changes to a ring
(``haproxy_config.EVENTS_RING``), and one CLI connection per HAProxy follows it (``show events
RING -w -n``: new lines only, as HAProxy writes them).  A line saying a server is UP or DOWN
after its checks wakes its Service at once, instead of every pending Service being read every
poll period: at 1,000 pending pods that polling took most of a core and still opened gates half
a second after HAProxy's UP (bench/results/scale-1000.md).  Lines of podgate's own commands
(``enable server``, ``health down``, drains) wake nothing: the pass that made them reads the pool
after them anyway.

A connection following a ring keeps an old worker alive after a reload, with the connection
(verified on 2.6: the master lists it under "old workers" for as long), and the old worker's
ring hears nothing of the new one's servers.  So the reader lets go at the first sign of a
reload, the old worker's "Proxy … stopped" lines or a new worker identity (looked at every
second), and follows the new worker's ring.  It is only ever a wake-up: while it is not
listening (:attr:`HAProxyStateChanges.live` False), pending gates are polled as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Sequence

from podgate.providers import haproxy_config as cfg
from podgate.providers.base import ProviderError
from podgate.providers.haproxy_runtime import Runtime, following, send

log = logging.getLogger(__name__)

#: a server's health changed by its checks (HAProxy 2.6's words: "Server BE/SRV is UP, reason:
#: Layer4 check passed, …"; podgate's own ``enable server`` and ``health down`` say "is
#: UP/READY (leaving forced maintenance)" and "is DOWN, changed from CLI")
_CHANGED = re.compile(r"\bServer (?P<backend>[^/\s]+)/\S+ is (?:UP|DOWN), reason: ")
#: what a worker that is stopping (a reload) writes for each of its proxies
_STOPPED = re.compile(r"\bProxy \S+ stopped\b")


def changed_service(line: str) -> str | None:
    """The Service (``namespace/name``) whose server a ring line says turned UP or DOWN by its
    checks; None for any other line, and for a backend podgate did not provision."""
    m = _CHANGED.search(line)
    return cfg.service_of_backend(m["backend"]) if m else None


def stopping(line: str) -> bool:
    """Whether a ring line says its worker is stopping (a reload: the ring is the old one's)."""
    return _STOPPED.search(line) is not None


class HAProxyStateChanges:
    """:class:`~podgate.providers.base.StateChanges` of the provisioned HAProxy (each of a pair).
    ``retry``: seconds between attempts while a HAProxy cannot be followed; ``identity_period``:
    how often the worker's identity is looked at (a reload that wrote no "stopped" line)."""

    def __init__(
        self,
        runtimes: Sequence[Runtime],
        ring: str = cfg.EVENTS_RING,
        *,
        retry: float = 2.0,
        identity_period: float = 1.0,
    ) -> None:
        self.runtimes = list(runtimes)
        self.ring = ring
        self.retry, self.identity_period = retry, identity_period
        self._live: set[str] = set()

    @property
    def live(self) -> bool:
        return bool(self.runtimes) and len(self._live) == len(self.runtimes)

    async def watch(self, changed: Callable[[str | None], None]) -> None:
        await asyncio.gather(*(self._keep_following(rt, changed) for rt in self.runtimes))

    async def _keep_following(self, rt: Runtime, changed: Callable[[str | None], None]) -> None:
        failing = False
        while True:
            try:
                await self._follow(rt, changed)
                failing = False
                await asyncio.sleep(0.05)  # a reload: the new worker's ring, at once
            except ProviderError as e:
                if not failing:
                    log.warning(
                        "not following HAProxy's state changes at %s (%s): pending gates are polled",
                        rt.address,
                        e,
                    )
                failing = True
                await asyncio.sleep(self.retry)
            finally:
                self._live.discard(rt.address)

    async def _follow(self, rt: Runtime, changed: Callable[[str | None], None]) -> None:
        """One worker's ring, until it stops (a reload) or the connection ends."""
        answer = await send(rt.address, f"show events {self.ring} -n")
        if answer.strip():  # "No such event sink": an HAProxy not rendered by this podgate
            raise ProviderError(f"HAProxy has no ring {self.ring!r}: {answer.strip()[:100]}")
        identity = await rt.identity()
        async with following(rt.address, f"show events {self.ring} -w -n") as lines:

            async def read() -> None:
                async for line in lines:
                    if stopping(line):
                        return
                    if (key := changed_service(line)) is not None:
                        changed(key)

            async def reloaded() -> None:
                while await rt.identity() == identity:  # noqa: ASYNC110 (another process's state)
                    await asyncio.sleep(self.identity_period)

            self._live.add(rt.address)
            changed(None)  # what changed before this connection was heard by no one
            tasks = [asyncio.create_task(read()), asyncio.create_task(reloaded())]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for t in done:
                with contextlib.suppress(asyncio.CancelledError):
                    t.result()  # an error reading or asking the identity: the caller's to report
