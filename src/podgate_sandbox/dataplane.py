"""The sandbox's cloud-like data plane: a runtime-API proxy between podgate and the sandbox's
HAProxy that makes a Service's load balancer behave like a cloud one where it matters for
termination and registration.

A cloud load balancer applies a deregistration seconds (sometimes minutes) after the API call
that asked for it: until then its data plane keeps opening new connections to the target (the
AWS Load Balancer Controller's #2366, #3270), and its API says so (the target is not
``draining`` yet).  HAProxy applies a runtime command at once.  This proxy, which the sandbox's
controllers use as their ``--haproxy-runtime-socket``, holds the commands that take a server out
of rotation (``set server … state drain|maint``, ``disable server``, ``shutdown sessions
server``, ``del server``) for the Service's propagation delay, answers them as HAProxy would, and
applies them late, in order.  Everything else passes through unchanged, reads included: podgate
sees HAProxy's real state (the target still UP meanwhile), as it would read a cloud API's.

A Service asks for it with annotations the sandbox reads (podgate never does):

- ``sandbox.podgate.dev/propagation-delay: 5s`` — between a deregistration and its effect;
- ``sandbox.podgate.dev/registration-delay: 2-10`` — a new target's health checks start
  uniformly between 2 and 10 s after podgate registered it (cloud load balancers' registration
  delay).

Together with ``podgate.dev/load-balancer-retries: "false"`` (no retry or redispatch, which
podgate renders), a Service's HAProxy then fails requests the way a cloud load balancer does.
podgate's own code is never slowed: the delay lives here, on the load balancer's side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from podgate.kube.api import SERVICES
from podgate.kube.client import ApiKube, api_client
from podgate.kube.informer import Informer
from podgate.model.types import Service, meta_of
from podgate.providers.haproxy_runtime import send

log = logging.getLogger("podgate.sandbox.dataplane")

PROPAGATION = "sandbox.podgate.dev/propagation-delay"
REGISTRATION = "sandbox.podgate.dev/registration-delay"

_SERVER_COMMAND = re.compile(
    r"^(?:set server|del server|add server|enable server|disable server|enable health|"
    r"disable health|shutdown sessions server)\s+([^\s/]+)/(\S+)"
)
_OUT_OF_ROTATION = re.compile(
    r"^(?:set server \S+ state (?:drain|maint)|disable server \S+|shutdown sessions server \S+"
    r"|del server \S+)\s*$"
)


@dataclass(frozen=True)
class Delays:
    propagation: float = 0.0
    #: (low, high): a new server's checks start after a uniform wait in that range
    registration: tuple[float, float] | None = None


def parse_delays(annotations: dict[str, str] | None) -> Delays:
    """The Service's delays; a value the sandbox cannot read counts as none (logged)."""
    a = annotations or {}
    propagation, registration = 0.0, None
    with contextlib.suppress(ValueError):
        propagation = max(0.0, float(a.get(PROPAGATION, "0").strip().removesuffix("s")))
    raw = a.get(REGISTRATION, "").strip().removesuffix("s")
    if raw:
        low, _, high = raw.partition("-")
        with contextlib.suppress(ValueError):
            lo = float(low)
            hi = float(high.removesuffix("s")) if high else lo
            if 0 <= lo <= hi:
                registration = (lo, hi)
    return Delays(propagation, registration)


def backend_service(backend: str) -> str | None:
    """``namespace/name`` of a backend podgate provisioned (``podgate.NS.NAME.PORT``)."""
    parts = backend.split(".")
    if len(parts) == 4 and parts[0] == "podgate" and parts[3].isdigit():
        return f"{parts[1]}/{parts[2]}"
    return None


def answer_for(line: str) -> str:
    """What HAProxy answers a command that succeeded (what podgate's runtime client expects)."""
    if line.startswith("del server "):
        return "Server deleted.\n"
    if line.startswith("add server "):
        return "New server registered.\n"
    return "\n"


@dataclass
class Held:
    due: float  # monotonic
    line: str


class DataPlane:
    """Holds and replays a Service's server commands; ``delays(backend)`` says how long."""

    def __init__(self, haproxy: str, delays: Callable[[str], Delays]) -> None:
        self.haproxy = haproxy
        self.delays = delays
        self._queues: dict[str, list[Held]] = {}  # "backend/server" → commands not applied yet
        self._workers: dict[str, asyncio.Task[None]] = {}
        #: (monotonic time applied, command) for the latest commands held, for logs and tests
        self.applied: list[tuple[float, str]] = []

    async def command(self, line: str) -> str:
        if ";" in line:
            # podgate batches changes (``a; b; c``): each is held or passed on by itself, in
            # order, and the answers end with an empty line each, as HAProxy's do
            answers = [await self.command(part.strip()) for part in line.split(";") if part.strip()]
            return "".join(a.rstrip("\n") + "\n\n" if a.strip() else "\n" for a in answers)
        m = _SERVER_COMMAND.match(line)
        if m is None:
            return await send(self.haproxy, line)
        backend, server = m.groups()
        ref = f"{backend}/{server}"
        delays = self.delays(backend)
        hold = 0.0
        if delays.propagation > 0 and _OUT_OF_ROTATION.match(line):
            hold = delays.propagation
        elif delays.registration is not None and line.startswith("enable health "):
            hold = random.uniform(*delays.registration)
        queue = self._queues.get(ref)
        if hold == 0.0 and not queue:
            return await send(self.haproxy, line)
        if queue and any(h.line == line for h in queue):
            return answer_for(line)  # asked again while held (podgate re-reads, re-asks): once
        self._queues.setdefault(ref, []).append(Held(time.monotonic() + hold, line))
        if ref not in self._workers or self._workers[ref].done():
            self._workers[ref] = asyncio.create_task(self._apply(ref), name=f"held {ref}")
        log.info("holding %r for %.1fs", line, hold)
        return answer_for(line)

    async def _apply(self, ref: str) -> None:
        queue = self._queues[ref]
        while queue:
            held = queue[0]
            await asyncio.sleep(max(0.0, held.due - time.monotonic()))
            try:
                await self._send_until_done(held.line)
            except Exception as e:  # the load balancer's own problem: logged, the next goes on
                log.warning("held %r failed: %s", held.line, e)
            self.applied = [*self.applied[-999:], (time.monotonic(), held.line)]
            queue.pop(0)
        del self._queues[ref]

    async def _send_until_done(self, line: str) -> None:
        answer = await send(self.haproxy, line)
        if not line.startswith("del server ") or "Server deleted" in answer:
            return
        # connections still open: HAProxy refuses the delete; wait for them (at most 30 s, as a
        # cloud's deregistration delay would), then cut them
        ref = line.split()[2]
        for _ in range(120):
            await asyncio.sleep(0.25)
            if "Server deleted" in await send(self.haproxy, line):
                return
        await send(self.haproxy, f"shutdown sessions server {ref}")
        await send(self.haproxy, line)

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: a command, its answer, closed (HAProxy's non-interactive mode)."""
        try:
            raw = await reader.readline()
            line = raw.decode(errors="replace").strip()
            if line == "prompt" or not line or line.startswith("show events"):
                # interactive use, or a ring followed (an answer that does not end): HAProxy's
                # own, passed through as it comes; a cloud's API says when health changes too
                await self._pipe(raw, reader, writer)
                return
            try:
                answer = await self.command(line)
            except Exception as e:
                log.warning("%r: %s", line, e)
                return  # closed without an answer: the caller sees HAProxy unreachable
            writer.write(answer.encode())
            await writer.drain()
        finally:
            writer.close()

    async def _pipe(self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Interactive use (``prompt``): a plain pipe to HAProxy, nothing held."""
        up_reader, up_writer = await asyncio.open_unix_connection(self.haproxy)
        up_writer.write(first)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.write_eof()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        up_writer.close()


async def amain(args: argparse.Namespace) -> None:
    api = await api_client(args.kubeconfig)
    services: Informer[Service] = Informer(ApiKube(api), SERVICES)

    def delays(backend: str) -> Delays:
        key = backend_service(backend)
        svc = services.get(key) if key else None
        return parse_delays(meta_of(svc).get("annotations")) if svc else Delays()

    plane = DataPlane(args.haproxy, delays)
    server = await asyncio.start_unix_server(plane.client, str(args.listen))
    os.chmod(args.listen, 0o600)
    informing = asyncio.create_task(services.run(), name="services")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("data plane on %s for HAProxy at %s", args.listen, args.haproxy)
    try:
        await stop.wait()
    finally:
        server.close()
        informing.cancel()
        await asyncio.gather(informing, return_exceptions=True)
        await api.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="podgate-sandbox-data-plane", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--listen", required=True, help="the runtime-API socket podgate is given")
    parser.add_argument("--haproxy", required=True, help="HAProxy's own runtime-API socket")
    args = parser.parse_args(argv)
    Path(args.listen).unlink(missing_ok=True)  # a stale socket from a crash
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
