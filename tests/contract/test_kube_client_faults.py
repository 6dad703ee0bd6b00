"""The Kubernetes client under network faults, against a loopback server that misbehaves on
purpose (a real API server cannot be made to hang half-way or to answer 429 on demand): every
request is bounded, a watch outlives its timeoutSeconds only by a grace, and Retry-After is
honoured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from podgate.kube.api import PODS, KubeError
from podgate.kube.client import (
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    ApiKube,
    audit_id_time,
    keepalive_socket,
    proxy_resolved_once,
    retry_after,
    with_keepalive,
)

pytestmark = pytest.mark.contract

POD = {
    "kind": "Pod",
    "apiVersion": "v1",
    "metadata": {"name": "p", "namespace": "ns", "resourceVersion": "7"},
}


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, shutdown_timeout=0.2)  # the hanging handlers are cut
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # no public getter
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def kube_at(host: str, **kw: float) -> tuple[ApiKube, client.ApiClient]:
    cfg = client.Configuration(host=host)
    api = client.ApiClient(configuration=cfg)
    return ApiKube(api, **kw), api  # type: ignore[arg-type]


async def test_a_request_the_server_never_answers_fails_after_the_request_timeout() -> None:
    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(60)
        return web.Response()

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/pods/p", hang)
    async with serve(app) as host:
        kube, api = await kube_at(host, request_timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await kube.get(PODS, "p", "ns")
        assert time.monotonic() - t0 < 3.0
        await api.close()


async def test_retry_after_is_honoured_then_the_answer_is_returned() -> None:
    calls: list[float] = []

    ids: list[str] = []

    async def busy_then_ok(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        ids.append(request.headers.get("Audit-ID", ""))
        if len(calls) == 1:
            status = {"kind": "Status", "code": 429, "reason": "TooManyRequests", "message": "slow down"}
            return web.json_response(status, status=429, headers={"Retry-After": "1"})
        return web.json_response(POD)

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/pods/p", busy_then_ok)
    async with serve(app) as host:
        kube, api = await kube_at(host)
        assert (await kube.get(PODS, "p", "ns"))["metadata"]["name"] == "p"
        assert len(calls) == 2 and calls[1] - calls[0] >= 0.95
        await api.close()
    # each send carries its own Audit-ID, stamped when it was sent (the retry a second later)
    sent = [audit_id_time(i) for i in ids]
    assert None not in sent and ids[0] != ids[1], ids
    assert 0.9 <= sent[1] - sent[0] <= 2.0, sent  # type: ignore[operator]
    assert abs(sent[1] - time.time()) < 5.0  # type: ignore[operator]


async def test_a_429_without_retry_after_is_the_callers_error_at_once() -> None:
    async def busy(_: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "code": 429, "message": "slow down"}, status=429)

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/pods/p", busy)
    async with serve(app) as host:
        kube, api = await kube_at(host)
        with pytest.raises(KubeError) as e:
            await kube.get(PODS, "p", "ns")
        assert e.value.status == 429
        await api.close()


async def test_a_watch_that_goes_silent_ends_after_its_timeout_and_the_grace() -> None:
    async def silent_watch(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(json.dumps({"type": "ADDED", "object": POD}).encode() + b"\n")
        await asyncio.sleep(60)  # a half-open connection: nothing more, ever
        return resp

    app = web.Application()
    app.router.add_get("/api/v1/pods", silent_watch)
    async with serve(app) as host:
        kube, api = await kube_at(host, watch_grace=0.5)
        seen: list[str] = []
        t0 = time.monotonic()

        async def watch() -> None:
            async for event in kube.watch(PODS, resource_version="1", timeout_seconds=1):
                seen.append(event["type"])

        with pytest.raises(TimeoutError):
            await watch()
        assert seen == ["ADDED"] and 1.0 <= time.monotonic() - t0 < 4.0
        await api.close()


@pytest.mark.parametrize(
    ("status", "header", "want"),
    [
        (429, "2", 2.0),
        (503, "1", 1.0),
        (429, None, None),
        (404, "2", None),
        (429, "99", 10.0),
        (429, "x", None),
    ],
)
def test_retry_after_rules(status: int, header: str | None, want: float | None) -> None:
    assert retry_after(status, header, 10.0) == want


async def test_api_connections_are_opened_with_tcp_keepalive() -> None:
    """A half-open connection (the peer gone without a FIN) is found by the kernel's keepalive
    probes, as client-go's dialer arranges: every socket the client opens has it on."""
    opened: list[socket.socket] = []

    def recording(addr_info: tuple[Any, ...]) -> socket.socket:
        sock = keepalive_socket(addr_info)
        opened.append(sock)
        return sock

    async def pod(_: web.Request) -> web.Response:
        return web.json_response(POD)

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/pods/p", pod)
    async with serve(app) as host:
        api = with_keepalive(client.ApiClient(configuration=client.Configuration(host=host)), recording)
        try:
            assert (await ApiKube(api).get(PODS, "p", "ns"))["metadata"]["name"] == "p"  # type: ignore[arg-type]
            # the connection is pooled, its socket still open: read its options
            assert opened, "the client opened its connection without the keepalive factory"
            sock = opened[0]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == KEEPALIVE_INTERVAL
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE_COUNT
        finally:
            await api.close()


@contextlib.asynccontextmanager
async def http_proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback HTTP proxy that answers every request itself with :data:`POD`, and the request
    lines it got (a proxied request names its absolute URL: ``GET http://host/path HTTP/1.1``)."""
    lines: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            lines.append(line.decode().strip())
            while (await reader.readline()).strip():
                pass  # the headers; these requests have no body
            body = json.dumps(POD).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", lines
    finally:
        server.close()
        await server.wait_closed()


async def test_the_environments_proxy_is_resolved_once_and_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """``HTTP(S)_PROXY`` is honoured as client-go honours it, but looked up when the client is
    made, not on a thread for every request: the session no longer reads the environment (or
    ~/.netrc) per request, and a request still goes through the proxy."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    async with http_proxy() as (proxy, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        api = proxy_resolved_once(
            client.ApiClient(configuration=client.Configuration(host="http://127.0.0.9:1"))
        )
        monkeypatch.delenv("HTTP_PROXY")  # resolved already: what the environment says later is not read
        try:
            assert api.rest_client.pool_manager.trust_env is False
            assert (await ApiKube(api).get(PODS, "p", "ns"))["metadata"]["name"] == "p"  # type: ignore[arg-type]
            assert seen == ["GET http://127.0.0.9:1/api/v1/namespaces/ns/pods/p HTTP/1.1"]
        finally:
            await api.close()


async def test_no_proxy_for_the_api_server_sends_it_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """``NO_PROXY`` naming the API server's host keeps its requests off the proxy."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)

    async def pod(_: web.Request) -> web.Response:
        return web.json_response(POD)

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/pods/p", pod)
    async with http_proxy() as (proxy, seen), serve(app) as host:
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        api = proxy_resolved_once(client.ApiClient(configuration=client.Configuration(host=host)))
        try:
            assert api.rest_client.proxy is None
            assert (await ApiKube(api).get(PODS, "p", "ns"))["metadata"]["name"] == "p"  # type: ignore[arg-type]
            assert seen == []
        finally:
            await api.close()
