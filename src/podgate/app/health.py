"""The plain-HTTP listener every replica serves: ``/healthz``, ``/readyz`` and ``/metrics`` (the
kubelet's probes and the monitoring namespace's scrapes; the drain hook has a port of its own,
:mod:`podgate.app.drain_server`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HealthServer:
    def __init__(
        self,
        bind: str,
        port: int,
        problems: Callable[[], list[str]],
        registry: CollectorRegistry,
        wedged: Callable[[], list[str]] = list,
    ) -> None:
        """``problems()``: why this replica is not ready (empty: ready), each a line of /readyz;
        ``wedged()``: why it is stuck for good (empty: alive), each a line of /healthz."""
        self.bind, self.port = bind, port
        self.problems = problems
        self.wedged = wedged
        self.registry = registry
        self.serving = asyncio.Event()

    def app(self) -> web.Application:
        async def healthz(_: web.Request) -> web.Response:
            wedged = self.wedged()
            if wedged:
                return web.Response(status=503, text="\n".join(wedged) + "\n")
            return web.Response(text="ok\n")

        async def readyz(_: web.Request) -> web.Response:
            problems = self.problems()
            if problems:
                return web.Response(status=503, text="\n".join(problems) + "\n")
            return web.Response(text="ready\n")

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)
        return app

    async def run(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.bind, self.port).start()
            self.serving.set()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
