"""The drain endpoint's own listener, every replica's: plain HTTP on ``--drain-port`` (8082),
nothing else on it.

Why a port of its own: the kubelet calls the hook from the node, so this port must be open to
the nodes, and only to them (deploy/overlays/network-policy); the webhook port is the control
plane's and the health port (metrics) the monitoring namespace's.  Plain HTTP because kubelets
before 1.25 ignore the hook's ``scheme``.  It serves on the controller's loop, where the caches
and the load balancers are; a call waits there for the load balancer, not on a thread.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from podgate.webhook import drain


class DrainServer:
    def __init__(self, bind: str, port: int, endpoint: drain.DrainEndpoint) -> None:
        self.bind, self.port = bind, port
        self.endpoint = endpoint
        self.serving = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=drain.MAX_REQUEST_BYTES)
        app.router.add_get(drain.ROUTE, self.endpoint.handle)
        app.router.add_get(drain.HEADER_ROUTE, self.endpoint.handle)
        return app

    async def run(self) -> None:
        # a stopping replica cuts its waiting hooks after a second: the kubelet then sends
        # SIGTERM, as it does when podgate cannot be reached at all
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.bind, self.port).start()
            self.serving.set()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
