"""The webhook's HTTPS server on a thread and an event loop of its own.

Admission must be answered within the API server's patience whatever the controller is doing,
and a rollout is exactly when it is busiest: 1,000 pods created at once are 1,000 admission
reviews *and* thousands of pod events and reconciles.  On the controller's loop a review waited
behind all of those callbacks; on its own loop it waits only for the interpreter lock, which the
controller's thread hands over every switch interval.

The mutating webhook reads only immutable snapshots the informers publish after each change
(``Informer(snapshots=True)``), never a cache the other thread is changing.  The eviction guard
reads the pod cache and asks the load balancers, whose clients belong to the controller's loop,
so its reviews are handed to that loop (:func:`on_loop`): they are rare, and not on a rollout's
path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

log = logging.getLogger(__name__)


class Runner(Protocol):
    """What the controller stops at the end (an ``aiohttp.web.AppRunner`` is one)."""

    async def cleanup(self) -> None: ...


@dataclass(frozen=True)
class Answer:
    """An HTTP answer computed on another loop: plain data, no aiohttp object crosses threads."""

    status: int
    body: bytes
    content_type: str = "application/json"


#: computes an answer from a request's body and its peer's address
Answering = Callable[[bytes, str | None], Awaitable[Answer]]


def on_loop(
    loop: asyncio.AbstractEventLoop, answering: Answering, max_bytes: int | None = None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler for the server's thread that reads the request there and has ``answering`` run
    on ``loop`` (the controller's), where the caches and the load-balancer clients live.  A
    body over ``max_bytes`` is answered 413 without being read."""

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read() if max_bytes is None else await read_at_most(request, max_bytes)
        if raw is None:
            return web.Response(status=413, text=f"request body over {max_bytes} bytes\n")
        future = asyncio.run_coroutine_threadsafe(_call(answering, raw, request.remote), loop)
        answer = await asyncio.wrap_future(future)
        return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type)

    return handle


async def read_at_most(request: web.Request, max_bytes: int) -> bytes | None:
    """The request's body, or None as soon as it is known to be over ``max_bytes`` (declared or
    sent): nothing beyond is read."""
    if (request.content_length or 0) > max_bytes:
        return None
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _call(answering: Answering, raw: bytes, remote: str | None) -> Answer:
    return await answering(raw, remote)


class ServerThread:
    """An aiohttp application served on ``host:port`` by a thread running its own event loop.

    :meth:`start` returns once the socket listens (or raises why it could not); :meth:`cleanup`
    stops the server (requests in flight get ``shutdown_timeout``), then the loop and the thread.
    """

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        *,
        shutdown_timeout: float = 5.0,
        name: str = "webhook",
    ) -> None:
        self.app, self.host, self.port, self.ssl_context = app, host, port, ssl_context
        self.shutdown_timeout = shutdown_timeout
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(started,), name=self.name, daemon=True)
        self._thread.start()
        await asyncio.wrap_future(started)

    def _main(self, started: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=self.shutdown_timeout)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context)
            loop.run_until_complete(site.start())
        except BaseException as e:  # the starter raises it (a port taken, say)
            started.set_exception(e)
            loop.close()
            return
        self._loop, self._runner = loop, runner
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def cleanup(self) -> None:
        loop, runner, thread = self._loop, self._runner, self._thread
        if loop is None or runner is None or thread is None or loop.is_closed():
            return
        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(runner.cleanup(), loop))
        finally:
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join, self.shutdown_timeout + 5.0)
            if thread.is_alive():
                log.error("webhook thread %s did not stop", self.name)
