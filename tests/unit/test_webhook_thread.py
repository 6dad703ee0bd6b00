"""The webhook on its own thread and loop (podgate.webhook.isolated): admission answered while
the controller's loop is busy, from the informers' immutable snapshots; eviction reviews handed
back to the controller's loop."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from typing import Any

import pytest
from aiohttp import web

from podgate.kube.api import SERVICES
from podgate.kube.fake import FakeKube
from podgate.kube.informer import Informer
from podgate.model.types import Service
from podgate.webhook.admission import InjectionPolicy
from podgate.webhook.isolated import Answer, ServerThread, on_loop
from podgate.webhook.server import MAX_REVIEW_BYTES, PATH, make_app
from tests.unit.test_admission_fuzz import REVIEW


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def services() -> Informer[Service]:
    informer: Informer[Service] = Informer(FakeKube(), SERVICES, snapshots=True)
    informer.apply(
        {
            "type": "ADDED",
            "object": {
                "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "1"},
                "spec": {"type": "LoadBalancer", "selector": {"app": "web"}},
            },
        }
    )
    informer.synced.set()
    return informer


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))


def post(port: int, path: str, body: dict[str, Any], out: dict[str, Any]) -> None:
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    out.update(status=resp.status, body=json.loads(resp.read()), took=time.monotonic() - t0)
    conn.close()


async def test_admission_is_answered_while_the_controllers_loop_is_busy() -> None:
    app = make_app(services(), lambda s: True, InjectionPolicy())
    port = free_port()
    server = ServerThread(app, "127.0.0.1", port)
    await server.start()
    try:
        out: dict[str, Any] = {}
        client = threading.Thread(target=post, args=(port, PATH, REVIEW, out))
        client.start()
        busy(1.0)  # a reconcile burst: this loop computes for a second, holding the GIL
        client.join()
    finally:
        await server.cleanup()
    assert out["status"] == 200 and out["body"]["response"]["patchType"] == "JSONPatch"
    assert out["took"] < 0.5, f"admission waited {out['took']:.2f}s for the controller's loop"


async def test_reviews_handed_to_the_controllers_loop_are_answered_there() -> None:
    loop = asyncio.get_running_loop()
    seen: list[tuple[bytes, bool]] = []

    async def answering(raw: bytes, remote: str | None) -> Answer:
        seen.append((raw, asyncio.get_running_loop() is loop))
        return Answer(200, b'{"ok": true}')

    app = web.Application()
    app.router.add_post("/validate-eviction", on_loop(loop, answering))
    port = free_port()
    server = ServerThread(app, "127.0.0.1", port)
    await server.start()
    out: dict[str, Any] = {}
    try:
        await asyncio.to_thread(post, port, "/validate-eviction", {"x": 1}, out)
    finally:
        await server.cleanup()
    assert out["status"] == 200 and out["body"] == {"ok": True}
    assert seen == [(b'{"x": 1}', True)]


def test_a_snapshot_never_changes_under_its_reader() -> None:
    informer = services()
    before = informer.snapshot()
    informer.apply({"type": "DELETED", "object": {"metadata": {"name": "web", "namespace": "shop"}}})
    assert set(before) == {"shop/web"} and set(informer.snapshot()) == set()
    with pytest.raises(TypeError):
        before["shop/x"] = {}  # type: ignore[index]


def post_raw(port: int, path: str, body: bytes, out: dict[str, Any], chunked: bool = False) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    if chunked:  # no Content-Length: the size shows only as it is read
        conn.request(
            "POST",
            path,
            iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
            {},
            encode_chunked=True,
        )
    else:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    out.update(status=resp.status)
    conn.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
async def test_an_oversized_review_is_413_and_never_reaches_the_controllers_loop(chunked: bool) -> None:
    loop = asyncio.get_running_loop()
    seen: list[bytes] = []

    async def answering(raw: bytes, remote: str | None) -> Answer:
        seen.append(raw)
        return Answer(200, b"{}")

    app = make_app(services(), lambda s: True, InjectionPolicy())
    app.router.add_post("/validate-eviction", on_loop(loop, answering, 64 * 1024))
    port = free_port()
    server = ServerThread(app, "127.0.0.1", port)
    await server.start()
    eviction: dict[str, Any] = {}
    admission: dict[str, Any] = {}
    try:
        await asyncio.to_thread(post_raw, port, "/validate-eviction", b"x" * (65 * 1024), eviction, chunked)
        await asyncio.to_thread(post_raw, port, PATH, b"x" * (MAX_REVIEW_BYTES + 1), admission)
    finally:
        await server.cleanup()
    assert eviction["status"] == 413 and seen == []
    assert admission["status"] == 413
