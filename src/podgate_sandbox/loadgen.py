"""A steady HTTP load for rollouts: a fixed request rate, bounded in count and time, loopback only.

By default each request is a GET on a new connection (what a client behind a load balancer
usually sees during a rollout); ``keepalive`` reuses a pool of connections instead, and
``method="POST"`` sends non-idempotent requests, which a load balancer never replays on another
target (HAProxy's ``retry-on`` does not for POST).  Every outcome is kept with its time so
failures can be told apart and plotted: ``ok`` (2xx/3xx), ``http_5xx`` (e.g. HAProxy's 503 when
no server is up; ``http_502`` … with ``status_kinds``), ``http_4xx``, ``refused`` / ``reset`` /
``timeout`` / ``error`` for transport failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp


@dataclass
class LoadResult:
    started: float  # monotonic
    outcomes: list[tuple[float, str, float]] = field(default_factory=list)  # (t, kind, latency)

    @property
    def total(self) -> int:
        return len(self.outcomes)

    def by_kind(self) -> Counter[str]:
        return Counter(kind for _, kind, _ in self.outcomes)

    @property
    def failed(self) -> int:
        return sum(n for kind, n in self.by_kind().items() if kind != "ok")

    def between(self, start: float, end: float) -> LoadResult:
        return LoadResult(self.started, [o for o in self.outcomes if start <= o[0] <= end])


def _loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"load generator targets loopback addresses only, not {host}")


class LoadGenerator:
    """``rate`` requests per second to ``url`` until stopped, at most ``max_seconds``."""

    def __init__(
        self,
        url: str,
        rate: float = 250.0,
        timeout: float = 2.0,
        max_seconds: float = 600.0,
        concurrency: int = 64,
        *,
        method: str = "GET",
        keepalive: bool = False,
        status_kinds: bool = False,
    ) -> None:
        _loopback(url)
        if method not in ("GET", "POST"):
            raise ValueError(f"method {method!r}: GET or POST")
        self.url, self.rate, self.timeout, self.max_seconds = url, rate, timeout, max_seconds
        self.method, self.keepalive, self.status_kinds = method, keepalive, status_kinds
        self.concurrency = concurrency
        self._sem = asyncio.Semaphore(concurrency)
        self._stop = asyncio.Event()
        self.result = LoadResult(time.monotonic())

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> LoadResult:
        connector = (
            aiohttp.TCPConnector(limit=self.concurrency)
            if self.keepalive
            else aiohttp.TCPConnector(force_close=True, limit=0)
        )
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        self.result = LoadResult(time.monotonic())
        pending: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            interval = 1.0 / self.rate
            next_at = time.monotonic()
            deadline = next_at + self.max_seconds
            while not self._stop.is_set() and time.monotonic() < deadline:
                task = asyncio.create_task(self._one(session))
                pending.add(task)
                task.add_done_callback(pending.discard)
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._stop.wait()
            if pending:
                await asyncio.wait(pending)
        return self.result

    async def _one(self, session: aiohttp.ClientSession) -> None:
        async with self._sem:
            t0 = time.monotonic()
            try:
                body = b'{"order": 1}' if self.method == "POST" else None
                async with session.request(self.method, self.url, data=body) as resp:
                    await resp.read()
                    if resp.status < 400:
                        kind = "ok"
                    elif self.status_kinds:
                        kind = f"http_{resp.status}"
                    else:
                        kind = "http_5xx" if resp.status >= 500 else "http_4xx"
            except TimeoutError:
                kind = "timeout"
            except aiohttp.ClientConnectorError as e:
                kind = "refused" if isinstance(e.os_error, ConnectionRefusedError) else "error"
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionResetError):
                kind = "reset"
            except aiohttp.ClientError:
                kind = "error"
            self.result.outcomes.append((t0, kind, time.monotonic() - t0))
