"""Binds unscheduled pods to the real node: the sandbox runs no kube-scheduler.

One node, so scheduling is binding every pod without a ``nodeName`` whose ``nodeSelector`` the
node's labels satisfy (the rest get the scheduler's Unschedulable condition, as with the node
agent).  It waits for the kubelet to register the Node, so nothing is bound to a node that does
not exist yet.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from aiohttp import web
from kubernetes_asyncio import client

from podgate.kube.api import PODS, Obj
from podgate.kube.client import ApiException, ApiKube, api_client, call
from podgate.kube.informer import EventType, Informer, key_of
from podgate_sandbox import processes, scheduling

log = logging.getLogger("podgate.binder")


class Binder:
    def __init__(self, api: client.ApiClient, node_name: str) -> None:
        self.core = client.CoreV1Api(api)
        self.node_name = node_name
        self.labels: dict[str, str] = {}
        self.informer: Informer[Obj] = Informer(
            ApiKube(api), PODS, name="unbound-pods", field_selector="spec.nodeName="
        )
        self.informer.add_handler(self._on_pod)
        self.node_ready = asyncio.Event()
        self._binding: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def _on_pod(self, kind: EventType, pod: Obj, old: Obj | None) -> None:
        key = key_of(pod)
        if kind == "DELETED" or key in self._binding or pod["metadata"].get("deletionTimestamp"):
            return
        self._binding.add(key)
        task = asyncio.create_task(self._bind(pod))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _bind(self, pod: Obj) -> None:
        key = key_of(pod)
        try:
            await self.node_ready.wait()
            if not await scheduling.bind_or_refuse(self.core, pod, self.node_name, self.labels):
                return
            log.info("bound %s to %s", key, self.node_name)
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("binding %s failed: %s %s", key, e.status, e.reason)
        finally:
            self._binding.discard(key)

    async def wait_for_node(self) -> None:
        while True:
            try:
                node = await call(self.core.read_node, self.node_name)
                self.labels = dict(node["metadata"].get("labels") or {})
                self.node_ready.set()
                log.info("node %s registered; binding pods to it", self.node_name)
                return
            except (ApiException, OSError) as e:
                log.debug("node %s not there yet: %s", self.node_name, e)
                await asyncio.sleep(0.5)

    async def run(self) -> None:
        await asyncio.gather(self.wait_for_node(), self.informer.run())


async def amain(args: argparse.Namespace) -> None:
    api = await api_client(args.kubeconfig)
    binder = Binder(api, args.node_name)

    async def healthz(_: web.Request) -> web.Response:
        ok = binder.node_ready.is_set() and binder.informer.synced.is_set()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "waiting for the node\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    try:
        await processes.serve_until_signalled(
            binder.run(), app, "127.0.0.1", args.healthz_port, "binder stopping"
        )
    finally:
        await api.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="podgate-binder", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--healthz-port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
