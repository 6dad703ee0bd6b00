"""Admission answered by a process of the controller's own (``--admission process``; the
default is a thread of the controller, :mod:`podgate.webhook.isolated`).

Why a process: on a thread a review waits for the interpreter lock and for every garbage
collection of a controller whose loop is busiest exactly when pods are created in bulk.  The
child needs only what an admission reads: Services, ReadinessChecks and the group grants, from
watches of its own (a few objects each: the pods, the bulk of the controller's memory, stay in
the controller), and the controller-wide inputs of a resolution and the injection policy,
computed by the controller and handed over at start.  Measured at 5,000 pods on 2 cores
(bench/results/scale-process.md beside scale.md): the webhook's own latency a quarter lower
(p99 48 / 46 ms against 67 / 56), the API server's admission time unchanged (its own share
dominates there), the child 147 MiB and 12-19 CPU-seconds a pass: an option, not the default.

What stays with the controller: the certificate (kept and registered by every replica as
before; the child serves the files the controller writes and loads a new one within a check
period), the eviction guard (it needs the pod cache and the load balancers: the child hands each
eviction review over a socket pair to the controller's loop and answers with what comes back),
and the metrics (the child sends its observations every half second).

The listening socket is the controller's: bound once and handed to every child, so while a child
is replaced the API server's connections wait in its backlog instead of being refused (with
failurePolicy Ignore a refused admission is a pod started ungated).  A child answers once its
three caches are synced (a review arriving before waits up to 3 s for them, as on the thread).

The wire between them is a socket pair: frames of a 4-byte length and a JSON object.  When the
controller goes, the child reads the end of its socket and stops; when the child goes, the
controller's readiness says so and a new child starts (after 0.5 s, doubling to 30 s while they
keep failing within a minute).  A stop is graceful both ways: the controller asks the child to
stop (SIGTERM) and keeps answering its eviction reviews until it has; the child stops its server
(requests in flight get the webhook's timeout) before it lets go of the controller.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from podgate.controller import gctune
from podgate.controller.checks import checks_informer, parsed_checks
from podgate.kube.api import SERVICES, Kube
from podgate.kube.informer import Informer
from podgate.model.projection import slim_service
from podgate.model.resolution import Settings
from podgate.model.types import Service
from podgate.resolutions import ServiceResolutions, grants_informer
from podgate.webhook import eviction
from podgate.webhook import server as webhook
from podgate.webhook.admission import InjectionPolicy
from podgate.webhook.isolated import Answer, read_at_most

log = logging.getLogger(__name__)

#: the largest frame either side accepts (an eviction review is at most 64 KiB, base64'd)
MAX_FRAME = 1024 * 1024
#: seconds between the child's batches of observations
FLUSH_PERIOD = 0.5
#: seconds between restarts of a child that keeps failing: first, and at most
RESTART_FIRST, RESTART_MAX = 0.5, 30.0
#: most reviews observed in one frame (a burst of reviews, or of garbage, is several frames)
MAX_OBSERVED = 5000


def no_setup() -> None:
    """The child's logging left as Python's default (warnings to stderr)."""


@dataclass(frozen=True)
class ChildConfig:
    """What the admission process is started with: plain values, pickled to its stdin."""

    kubeconfig: str | None
    user_agent: str
    bind: str
    port: int
    cert_file: Path
    key_file: Path
    cert_check_period: float
    resolution: Settings
    policy: InjectionPolicy
    shutdown_timeout: float = float(webhook.TIMEOUT_SECONDS)
    #: sets up the child's logging as the controller's (a module-level function, or a partial
    #: of one: pickled by name)
    setup: Callable[[], None] = no_setup
    #: the child's end of the socket pair, and the listening socket the controller bound (set by
    #: the controller as it starts the child: the descriptors' numbers in the child)
    channel_fd: int = -1
    listen_fd: int = -1


# -- the wire ------------------------------------------------------------------------------------


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message; None when the other side has gone."""
    try:
        (size,) = struct.unpack(">I", await reader.readexactly(4))
        if size > MAX_FRAME:
            raise ValueError(f"a frame of {size} bytes")
        message = json.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    if not isinstance(message, dict):
        raise ValueError("a frame that is not a JSON object")
    return message


def frame(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return struct.pack(">I", len(data)) + data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- the controller's side -----------------------------------------------------------------------


@dataclass
class AdmissionProcess:
    """Runs the admission process for as long as it is itself run: started, watched, started
    again when it exits, and stopped (SIGTERM, then SIGKILL after the shutdown timeout) when
    cancelled.  ``up`` is set while a child serves."""

    config: ChildConfig
    #: answers an eviction review (the guard's, on the controller's loop)
    answer_eviction: Callable[[bytes, str | None], Awaitable[Answer]]
    observe: Callable[[str, float], None]
    on_tls_failure: Callable[[str], None]
    up: asyncio.Event = field(default_factory=asyncio.Event)
    #: the running child's pid (None between children): what a test or an operator kills
    pid: int | None = None
    #: how many children were started
    starts: int = 0

    async def run(self) -> None:
        listener = _listen(self.config.bind, self.config.port)
        delay: float | None = None
        try:
            while True:
                started = time.monotonic()
                code = await self._child(listener)
                ran_long = time.monotonic() - started > 60
                delay = RESTART_FIRST if delay is None or ran_long else min(delay * 2, RESTART_MAX)
                log.error("the admission process exited (%s); another starts in %gs", code, delay)
                await asyncio.sleep(delay)
        finally:
            listener.close()

    async def _child(self, listener: socket.socket) -> int | str | None:
        """One child from start to exit: its exit code, or why it could not start."""
        ours, theirs = socket.socketpair()
        payload = pickle.dumps(replace(self.config, channel_fd=theirs.fileno(), listen_fd=listener.fileno()))
        try:
            with theirs:  # the child's end: kept at its number in the child, closed here
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-P",  # not the working directory on the child's path
                    "-m",
                    "podgate.app.admission",
                    stdin=asyncio.subprocess.PIPE,
                    pass_fds=(theirs.fileno(), listener.fileno()),
                )
        except OSError as e:  # no process to be had (memory, descriptors): tried again later
            ours.close()
            return f"not started: {e}"
        self.pid, self.starts = proc.pid, self.starts + 1
        serving: asyncio.Task[None] | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            assert proc.stdin is not None
            proc.stdin.write(payload)  # a child gone already: seen below
            proc.stdin.close()
            reader, writer = await asyncio.open_unix_connection(sock=ours, limit=MAX_FRAME + 4)
            serving = asyncio.create_task(self.channel(reader, writer), name="admission channel")
            exited = asyncio.create_task(proc.wait(), name="admission process")
            try:
                await asyncio.wait({serving, exited}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                exited.cancel()
            if serving.done() and not serving.cancelled() and (error := serving.exception()) is not None:
                log.error("admission process: %s", error)
        finally:
            self.up.clear()
            # Asked to stop while its eviction reviews are still answered (the channel is closed
            # only once it has exited), and stopped even if this is cancelled again meanwhile.
            await asyncio.shield(asyncio.ensure_future(self._stopped(proc)))
            self.pid = None
            if serving is not None:
                serving.cancel()
            if writer is not None:
                writer.close()
            else:
                ours.close()
        return proc.returncode

    async def _stopped(self, proc: asyncio.subprocess.Process) -> int | None:
        """The child's exit code, once it has exited: asked to (SIGTERM) if it has not, killed
        after the shutdown timeout."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                async with asyncio.timeout(self.config.shutdown_timeout + 5.0):
                    return await proc.wait()
            except TimeoutError:
                log.error("the admission process did not stop in time: killed")
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        return await proc.wait()

    async def channel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The child's messages until it goes: up, observations, eviction reviews."""
        pending: set[asyncio.Task[None]] = set()
        try:
            while (message := await read_frame(reader)) is not None:
                kind = message.get("kind")
                if kind == "up":
                    self.up.set()
                elif kind == "observed":
                    for result, seconds in message.get("reviews", ()):
                        self.observe(str(result), float(seconds))
                    for reason, count in (message.get("tls_failures") or {}).items():
                        for _ in range(min(int(count), 1000)):
                            self.on_tls_failure(str(reason))
                elif kind == "eviction" and isinstance(message.get("id"), int):
                    task = asyncio.create_task(self._evict(message, writer))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
        finally:
            for task in pending:
                task.cancel()

    async def _evict(self, message: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        try:
            raw = base64.b64decode(str(message.get("body", "")))
            answer = await self.answer_eviction(raw, message.get("remote"))
        except Exception as e:  # the guard answers every input; this is podgate's own fault
            log.exception("eviction review failed")
            answer = Answer(500, f"eviction review failed: {type(e).__name__}\n".encode(), "text/plain")
        reply = {
            "kind": "answer",
            "id": message["id"],
            "status": answer.status,
            "body": _b64(answer.body),
            "type": answer.content_type,
        }
        writer.write(frame(reply))


# -- the child's side ----------------------------------------------------------------------------


class Parent:
    """The child's end of the wire: eviction reviews asked and answered, observations batched."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Answer]] = {}
        self._reviews: list[tuple[str, float]] = []
        self._tls_failures: Counter[str] = Counter()

    def observe(self, result: str, seconds: float) -> None:
        self._reviews.append((result, seconds))

    def tls_failure(self, reason: str) -> None:
        self._tls_failures[reason] += 1

    def serving(self) -> None:
        self.writer.write(frame({"kind": "up"}))

    async def ask(self, raw: bytes, remote: str | None) -> Answer:
        """An eviction review answered by the controller."""
        key = next(self._ids)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        try:
            self.writer.write(frame({"kind": "eviction", "id": key, "body": _b64(raw), "remote": remote}))
            async with asyncio.timeout(webhook.TIMEOUT_SECONDS):  # the API server waits no longer
                return await future
        except TimeoutError:
            return Answer(500, b"the controller did not answer the eviction review in time\n", "text/plain")
        finally:
            self._waiting.pop(key, None)

    async def handle_eviction(self, request: web.Request) -> web.Response:
        raw = await read_at_most(request, eviction.MAX_REVIEW_BYTES)
        if raw is None:
            return web.Response(status=413, text=f"request body over {eviction.MAX_REVIEW_BYTES} bytes\n")
        answer = await self.ask(raw, request.remote)
        return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type)

    async def run(self) -> None:
        """Answers in, observations out, until the controller goes (then this returns)."""
        flusher = asyncio.create_task(self._flush())
        try:
            while (message := await read_frame(self.reader)) is not None:
                future = self._waiting.get(message.get("id", -1)) if message.get("kind") == "answer" else None
                if future is not None and not future.done():  # not given up on meanwhile
                    body = base64.b64decode(str(message.get("body", "")))
                    future.set_result(Answer(int(message.get("status", 500)), body, str(message.get("type"))))
        finally:
            flusher.cancel()
            gone = Answer(500, b"the controller went before it answered the eviction review\n", "text/plain")
            for future in self._waiting.values():
                if not future.done():
                    future.set_result(gone)

    async def _flush(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_PERIOD)
            reviews, failures = self._reviews, self._tls_failures
            self._reviews, self._tls_failures = [], Counter()
            for i in range(0, len(reviews) or bool(failures), MAX_OBSERVED):
                batch = {"reviews": reviews[i : i + MAX_OBSERVED], "tls_failures": failures if i == 0 else {}}
                self.writer.write(frame({"kind": "observed", **batch}))


async def serve(config: ChildConfig, kube: Kube, parent: Parent) -> None:
    """The admission webhook until the controller goes or this is cancelled: its own caches
    synced, the controller's certificate loaded, then served, reloaded every check period."""
    services: Informer[Service] = Informer(kube, SERVICES, project=slim_service, snapshots=True)
    checks, grants = checks_informer(kube), grants_informer(kube)
    resolutions = ServiceResolutions(services, {}, grants=grants, settings=config.resolution)
    informers = (services, checks, grants)
    app = webhook.make_app(
        services,
        lambda service: resolutions.of(service).handled,
        config.policy,
        parent.observe,
        lambda: parsed_checks(checks),
        synced=lambda: all(i.synced.is_set() for i in informers),
    )
    app.router.add_post(eviction.PATH, parent.handle_eviction)
    tls = webhook.ServingTLS(config.cert_file.parent, parent.tls_failure)
    server = asyncio.create_task(_serving(config, app, tls, informers, parent), name="server")
    others = [asyncio.create_task(i.run(), name=f"informer {i.name}") for i in informers]
    others.append(asyncio.create_task(parent.run(), name="controller"))
    try:
        done, _ = await asyncio.wait([server, *others], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # a failure is the process's: raised
    finally:
        # the server first (its requests in flight may wait for the controller's answers)
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


async def _serving(
    config: ChildConfig,
    app: web.Application,
    tls: webhook.ServingTLS,
    synced: tuple[Informer[Any], ...],
    parent: Parent,
) -> None:
    while not await _load(tls, config):  # noqa: ASYNC110 (files, nothing to wait on)
        await asyncio.sleep(config.cert_check_period)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.shutdown_timeout)
    await runner.setup()
    try:
        # served at once (a review waits for the caches a moment), ready once they are synced
        await web.SockSite(runner, socket.socket(fileno=config.listen_fd), ssl_context=tls.context).start()
        await asyncio.gather(*(i.synced.wait() for i in synced))
        log.info("admission process %s serving on %s:%d", os.getpid(), config.bind, config.port)
        parent.serving()
        while True:
            await asyncio.sleep(config.cert_check_period)
            await _load(tls, config)
    finally:
        await runner.cleanup()


def _listen(host: str, port: int) -> socket.socket:
    """The webhook's listening socket, bound once by the controller for every child."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    return socket.create_server((host, port), family=family, backlog=1024)


async def _load(tls: webhook.ServingTLS, config: ChildConfig) -> bool:
    """The controller's certificate files into the server's context (as mounted files are
    served: ``webhook.FileSource``); False while there are none (or a certificate and key
    caught mid-rotation do not match: the one served stays)."""
    try:
        await webhook.FileSource(config.cert_file, config.key_file).refresh(tls)
        return True
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
        log.warning("admission process: certificate not loaded (%s); trying again", e)
        return False


async def _child_main(config: ChildConfig) -> None:
    from podgate.kube.client import ApiKube, api_client

    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    reader, writer = await asyncio.open_unix_connection(
        sock=socket.socket(fileno=config.channel_fd), limit=MAX_FRAME + 4
    )
    try:
        api = await api_client(config.kubeconfig)
        try:
            api.user_agent = config.user_agent
            await serve(config, ApiKube(api), Parent(reader, writer))
        finally:
            await api.close()
    except asyncio.CancelledError:
        log.info("admission process stopped")
    finally:
        writer.close()


def main() -> None:
    """The admission process (``python -m podgate.app.admission``, started by the controller):
    its configuration pickled on stdin."""
    config: ChildConfig = pickle.load(sys.stdin.buffer)
    config.setup()
    # the controller stops it (SIGTERM); a terminal's Ctrl-C reaches the controller too
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gctune.tune()
    try:
        asyncio.run(_child_main(config))
    except Exception as e:  # said in one line; the controller starts another
        log.error("admission process failed: %s: %s", type(e).__name__, e)
        sys.exit(1)


if __name__ == "__main__":
    main()
