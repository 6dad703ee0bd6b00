"""The sandbox's container stand-in: a small HTTP app served from inside the node agent.

Every container, whatever its image, becomes this app listening on the pod's IP at each declared
containerPort, so manifests written for nginx work unchanged.  One aiohttp low-level server per
container keeps a pod at a few kilobytes (2,000 pods in one process), and lets a container shut
down its own connections without touching its neighbours'.

Behaviour is tuned with container env vars (documented in the README):

=============================  ====================================================  =======
``PODGATE_APP_STARTUP_DELAY``  seconds after start before the app listens             0
``PODGATE_APP_SHUTDOWN_DELAY`` seconds it keeps serving after SIGTERM                 0
``PODGATE_APP_ON_SIGTERM``     ``graceful``: in-flight requests get a second to       graceful
                               finish; ``abort``: they are dropped and every
                               connection closed at once (no graceful shutdown)
``PODGATE_APP_RESPONSE_DELAY`` seconds added to every response but ``/healthz`` and   0
                               ``/control/*``; ``A-B``: uniformly random between
                               A and B, per request
``PODGATE_APP_EXIT_AFTER``     exit this many seconds after listening (crash test)   never
``PODGATE_APP_EXIT_CODE``      exit code used by ``PODGATE_APP_EXIT_AFTER``           1
``PODGATE_APP_MESSAGE``        text included in every ``/`` response                 empty
=============================  ====================================================  =======

Endpoints: ``/healthz`` (200, or the code set with ``POST /control/health?status=N``),
``/control/stats`` (requests counted by path, as JSON), and any other path answers 200 with the
pod's name, namespace, IP and port.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web


class AppConfigError(ValueError):
    pass


@dataclass(frozen=True)
class AppSettings:
    startup_delay: float = 0.0
    shutdown_delay: float = 0.0
    response_delay: float = 0.0
    #: with ``response_delay``: each response waits uniformly between the two
    response_delay_max: float | None = None
    exit_after: float | None = None
    exit_code: int = 1
    message: str = ""
    #: "graceful" (in-flight requests finish, a second at most) or "abort" (dropped at once)
    on_sigterm: str = "graceful"

    def response_wait(self) -> float:
        if self.response_delay_max is None:
            return self.response_delay
        return random.uniform(self.response_delay, self.response_delay_max)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AppSettings:
        def num(name: str, default: float | None) -> float | None:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = float(raw)
            except ValueError:
                raise AppConfigError(f"{name}={raw!r} is not a number of seconds") from None
            if value < 0:
                raise AppConfigError(f"{name}={raw!r} must not be negative")
            return value

        code = env.get("PODGATE_APP_EXIT_CODE", "1")
        if not code.lstrip("-").isdigit():
            raise AppConfigError(f"PODGATE_APP_EXIT_CODE={code!r} is not an integer")
        on_sigterm = env.get("PODGATE_APP_ON_SIGTERM") or "graceful"
        if on_sigterm not in ("graceful", "abort"):
            raise AppConfigError(f"PODGATE_APP_ON_SIGTERM={on_sigterm!r} is not graceful or abort")
        delay, delay_max = env.get("PODGATE_APP_RESPONSE_DELAY", ""), None
        low, dash, high = delay.partition("-")
        if dash and low:  # "A-B"
            lo = _seconds("PODGATE_APP_RESPONSE_DELAY", low)
            delay_max = _seconds("PODGATE_APP_RESPONSE_DELAY", high)
            if delay_max < lo:
                raise AppConfigError(f"PODGATE_APP_RESPONSE_DELAY={delay!r}: the range is backwards")
            response_delay = lo
        else:
            response_delay = num("PODGATE_APP_RESPONSE_DELAY", 0.0) or 0.0
        return cls(
            startup_delay=num("PODGATE_APP_STARTUP_DELAY", 0.0) or 0.0,
            shutdown_delay=num("PODGATE_APP_SHUTDOWN_DELAY", 0.0) or 0.0,
            response_delay=response_delay,
            response_delay_max=delay_max,
            exit_after=num("PODGATE_APP_EXIT_AFTER", None),
            exit_code=int(code),
            message=env.get("PODGATE_APP_MESSAGE", ""),
            on_sigterm=on_sigterm,
        )


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise AppConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if not value >= 0:
        raise AppConfigError(f"{name}={raw!r} must not be negative")
    return value


class ContainerApp:
    """One container's app: listens on (ip, port) pairs, serves, and shuts down like a process."""

    def __init__(
        self, pod: str, namespace: str, container: str, ip: str, ports: list[int], settings: AppSettings
    ) -> None:
        self.pod, self.namespace, self.container = pod, namespace, container
        self.ip, self.ports, self.settings = ip, ports, settings
        self.health_status = 200
        self.requests: dict[str, int] = {}
        self._server = web.Server(self._handle, access_log=None)
        self._listeners: list[asyncio.Server] = []
        self.listening = asyncio.Event()
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(
            self._lifecycle(), name=f"app {self.namespace}/{self.pod}/{self.container}"
        )

    async def _lifecycle(self) -> None:
        try:
            await asyncio.sleep(self.settings.startup_delay)
            loop = asyncio.get_running_loop()
            for port in self.ports:
                server = await loop.create_server(
                    self._server, self.ip, port, reuse_address=True, backlog=512
                )
                self._listeners.append(server)
            self.listening.set()
            if self.settings.exit_after is not None:
                await asyncio.sleep(self.settings.exit_after)
                await self._close()
                self._exit(self.settings.exit_code)
        except OSError as e:
            await self._close()
            if not self.exited.done():
                self.exited.set_exception(e)

    def _exit(self, code: int) -> None:
        if not self.exited.done():
            self.exited.set_result(code)

    async def terminate(self, grace: float) -> int:
        """SIGTERM: keep serving for the shutdown delay (bounded by the grace period), then stop."""
        if self.exited.done():
            return self.exited.result() if self.exited.exception() is None else 1
        killed = self.settings.shutdown_delay > grace
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(min(self.settings.shutdown_delay, max(grace, 0.0)))
        if self._task is not None:
            self._task.cancel()
        await self._close()
        self._exit(137 if killed else 0)
        return 137 if killed else 0

    def kill(self) -> None:
        """SIGKILL: listeners and connections close at once (used at agent shutdown)."""
        if self._task is not None:
            self._task.cancel()
        for server in self._listeners:
            server.close()
        self._listeners.clear()
        self._exit(137)

    async def _close(self) -> None:
        for server in self._listeners:
            server.close()
        self._listeners.clear()
        if self.settings.on_sigterm == "abort":
            # as a process without graceful shutdown exits: every connection closes now, the
            # requests in flight on them get no answer
            for handler in list(self._server.connections):
                if handler.transport is not None:
                    handler.transport.close()
            return
        # Idle keep-alive connections close now; in-flight requests get a second to finish.
        with contextlib.suppress(Exception):
            await self._server.shutdown(timeout=1.0)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests[request.path] = self.requests.get(request.path, 0) + 1
        slowed = request.path != "/healthz" and not request.path.startswith("/control/")
        if slowed and (self.settings.response_delay or self.settings.response_delay_max):
            await asyncio.sleep(self.settings.response_wait())
        if request.path == "/healthz":
            return web.Response(
                status=self.health_status, text="ok\n" if self.health_status < 400 else "unhealthy\n"
            )
        if request.path == "/control/stats":
            return web.json_response({"requests": self.requests, "health_status": self.health_status})
        if request.path == "/control/health" and request.method == "POST":
            try:
                self.health_status = int(request.query.get("status", "200"))
            except ValueError:
                return web.Response(status=400, text="status must be an integer HTTP code\n")
            return web.Response(text=f"health status now {self.health_status}\n")
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        port = sock[1] if sock else "?"
        body = f"pod {self.namespace}/{self.pod} container {self.container} at {self.ip}:{port}\n"
        if self.settings.message:
            body += self.settings.message + "\n"
        return web.Response(text=body, headers={"X-Pod-Name": self.pod})
