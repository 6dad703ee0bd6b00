"""The real :class:`~podgate.kube.api.Kube`: kubernetes_asyncio's ApiClient, raw JSON.

Bodies are handled as plain dicts (``_preload_content=False`` + ``json``): the generated model
classes cost a lot of CPU at thousands of pods and drop fields they do not know.  That flag
also skips the client's status check, so every answer's status is checked here.  The client's
generated methods are not used: one ``call_api`` per verb, on a path built from the
:class:`~podgate.kube.api.Resource`, keeps auth, TLS and kubeconfig handling from the library.

``call`` is a helper over a generated method, kept for the sandbox (node agent, binder, labs);
the product itself goes through :class:`ApiKube` only.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import yarl
from aiohttp.helpers import get_env_proxy_for_url
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from podgate import __version__
from podgate.kube.api import (
    REQUEST_TIMEOUT,
    WATCH_GRACE,
    ListPage,
    Obj,
    PatchBody,
    PatchType,
    Resource,
    WatchEvent,
    error_for,
)

__all__ = [
    "ApiException",
    "ApiKube",
    "api_client",
    "audit_id",
    "audit_id_time",
    "call",
    "keepalive_socket",
    "proxy_resolved_once",
    "status_of",
    "with_keepalive",
]

STRATEGIC_MERGE = PatchType.STRATEGIC.value
MERGE_PATCH = PatchType.MERGE.value


#: TCP keepalive on every API connection, as client-go's dialer keeps one (30 s): a connection
#: whose peer vanished without a FIN or RST (a dead node, a NAT that forgot it) is found dead by
#: the kernel after 30 s idle + 3 unanswered probes 10 s apart, instead of never.  Requests are
#: bounded by their timeouts anyway; this also clears idle pooled connections and a watch whose
#: server went silent before its read timeout.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 30, 10, 3


def keepalive_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """A TCP socket for ``addr_info`` (``getaddrinfo``'s tuple) with keepalive on."""
    family, type_, proto = addr_info[0], addr_info[1], addr_info[2]
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        if hasattr(socket, option):  # Linux has all three
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    return sock


def with_keepalive(
    api: client.ApiClient, factory: Callable[[tuple[Any, ...]], socket.socket] = keepalive_socket
) -> client.ApiClient:
    """``api`` whose connections are opened by ``factory``.  kubernetes_asyncio builds its
    aiohttp connector itself and offers no hook, so its socket factory (aiohttp 3.12+) is set on
    the connector before any connection is made; a contract test sees the option on a real
    connection, so a library change that drops the attribute fails there, not silently."""
    connector = api.rest_client.pool_manager.connector
    if connector is None or not hasattr(connector, "_socket_factory"):
        raise RuntimeError("aiohttp's TCPConnector has no socket factory: TCP keepalive cannot be set")
    connector._socket_factory = factory  # no public setter
    return api


def proxy_resolved_once(api: client.ApiClient) -> client.ApiClient:
    """``api`` with the environment's proxy for its API server (``HTTPS_PROXY``, ``NO_PROXY``
    …) looked up once, here, instead of on every request.

    kubernetes_asyncio opens its aiohttp session with ``trust_env=True``, and aiohttp then
    looks the proxy up, and reads ``~/.netrc``, on a thread-pool thread for *every* request:
    two thread hops per gate PATCH, each waiting for the interpreter lock the controller's
    loop holds (py-spy, 1,000 pods created at once: 3 % of the controller's samples, and two
    hand-overs of the lock per write).  The proxy is the same for every request to one server,
    so it is resolved once with aiohttp's own function (same variables, same bypass rules) and
    given to the client as its configured proxy; the session's env lookups are then off.  A
    netrc entry is not read, as client-go reads none: the kubeconfig's credentials are the
    API server's.  A proxy set in the kubeconfig (``proxy-url``) is kept as it is."""
    rest = api.rest_client
    if not rest.proxy:
        try:
            proxy, auth = get_env_proxy_for_url(yarl.URL(api.configuration.host or ""))
        except LookupError:  # none set, or the host is in NO_PROXY
            pass
        else:
            rest.proxy = str(proxy)
            if auth is not None:
                rest.proxy_headers = {**(rest.proxy_headers or {}), "Proxy-Authorization": auth.encode()}
    rest.pool_manager._trust_env = False  # no public setter; a unit test checks it took
    return api


def audit_id(at: float | None = None) -> str:
    """A UUIDv7 (RFC 9562) for the ``Audit-ID`` header of one request, its first 48 bits the
    Unix time in milliseconds when podgate sent it (``at``, default now).

    The API server records a client's ``Audit-ID`` as the audit event's ``auditID`` unchanged
    (and makes a random UUID of its own for a request without one), so its audit log says when
    podgate *sent* each request beside when the server *received* it.  The two differ when the
    server stalled with the request in its socket: a write podgate sent while its leader lease
    was fresh is told from a stale leader's write by this time, not by the receipt's.  An
    operator can also find podgate's request in the audit log by the ID."""
    ms = int((time.time() if at is None else at) * 1000) & (1 << 48) - 1
    rand = int.from_bytes(os.urandom(10), "big")
    value = ms << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 | rand & (1 << 62) - 1
    return str(uuid.UUID(int=value))


def audit_id_time(value: str) -> float | None:
    """When a request with this ``Audit-ID`` was sent (Unix seconds, to the millisecond), or
    None when it is not a UUIDv7 (the API server's own IDs are random UUIDs, version 4)."""
    try:
        u = uuid.UUID(value)
    except ValueError:
        return None
    return (u.int >> 80) / 1000 if u.version == 7 else None


def user_agent(identity: str) -> str:
    """The User-Agent of podgate's API requests: ``podgate/VERSION (IDENTITY)``."""
    return f"podgate/{__version__} ({identity})"


async def api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An ApiClient from a kubeconfig file, or the in-cluster service account when none is given,
    with TCP keepalive on its connections."""
    if kubeconfig is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return proxy_resolved_once(with_keepalive(client.ApiClient()))
        except config.ConfigException:
            pass
    cfg = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    return proxy_resolved_once(with_keepalive(client.ApiClient(configuration=cfg)))


class ApiKube:
    """:class:`~podgate.kube.api.Kube` over an ApiClient (which the caller owns and closes)."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        watch_grace: float = WATCH_GRACE,
        retries: int = 5,
        max_retry_after: float = 10.0,
    ) -> None:
        """``request_timeout``: seconds any request (and a watch's connection) may take;
        ``watch_grace``: seconds a watch may outlive its ``timeoutSeconds``; ``retries``: how
        often an answer 429 (or 5xx) that carries Retry-After is asked again after waiting as
        it says (at most ``max_retry_after`` seconds), as client-go does."""
        self.api = api
        self.request_timeout, self.watch_grace = request_timeout, watch_grace
        self.retries, self.max_retry_after = retries, max_retry_after

    async def _open(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any],
        body: Any = None,
        content_type: str = "application/json",
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> Any:
        """The raw aiohttp response, its status not checked yet (the caller releases it).  Each
        request (each retry too) carries a fresh :func:`audit_id` stamped now."""
        return await self.api.call_api(
            path,
            method,
            query_params=[(k, v) for k, v in query.items() if v is not None],
            header_params={
                "Accept": "application/json",
                "Content-Type": content_type,
                "Audit-ID": audit_id(),
            },
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout or aiohttp.ClientTimeout(total=self.request_timeout),
        )

    async def _request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """The answer's JSON body, or the typed error of a non-2xx answer.  An answer that asks
        to be retried later (Retry-After on a 429 or 5xx) is, up to ``retries`` times."""
        for attempt in range(self.retries + 1):
            resp = await self._open(method, path, query or {}, body, content_type)
            try:
                data = await resp.read()
            finally:
                resp.release()
            if 200 <= resp.status <= 299:
                return json.loads(data) if data else None
            wait = retry_after(resp.status, resp.headers.get("Retry-After"), self.max_retry_after)
            if wait is None or attempt == self.retries:
                raise error_for(resp.status, resp.reason or "", data)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def version(self) -> Obj:
        obj: Obj = await self._request("GET", "/version")
        return obj

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> Obj:
        obj: Obj = await self._request("GET", resource.path(namespace, name))
        return obj

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_: str | None = None,
    ) -> ListPage:
        body = await self._request(
            "GET",
            resource.path(namespace),
            {
                "labelSelector": label_selector,
                "fieldSelector": field_selector,
                "limit": limit,
                "continue": continue_,
            },
        )
        meta = body.get("metadata") or {}
        return {
            "items": body.get("items") or [],
            "resourceVersion": meta.get("resourceVersion") or "",
            "continue_": meta.get("continue") or "",
        }

    async def watch(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        resource_version: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[WatchEvent]:
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
            "labelSelector": label_selector,
            "fieldSelector": field_selector,
        }
        # the server ends the watch at timeoutSeconds; past that and a grace, the connection is dead
        timeout = aiohttp.ClientTimeout(
            total=timeout_seconds + self.watch_grace, sock_connect=self.request_timeout
        )
        resp = await self._open("GET", resource.path(namespace), query, timeout=timeout)
        try:
            if resp.status != 200:
                raise error_for(resp.status, resp.reason or "", await resp.read())
            while line := await resp.content.readline():
                event = json.loads(line)
                if event["type"] == "ERROR":  # a Status object: 410 when the version is too old
                    raise error_for(int(event["object"].get("code") or 500), "", event["object"])
                yield event
        finally:
            resp.release()

    async def create(self, resource: Resource, body: Mapping[str, Any], namespace: str | None = None) -> Obj:
        obj: Obj = await self._request("POST", resource.path(namespace), body=body)
        return obj

    async def replace(
        self, resource: Resource, name: str, body: Mapping[str, Any], namespace: str | None = None
    ) -> Obj:
        obj: Obj = await self._request("PUT", resource.path(namespace, name), body=body)
        return obj

    async def patch(
        self,
        resource: Resource,
        name: str,
        body: PatchBody,
        namespace: str | None = None,
        *,
        patch_type: PatchType,
        subresource: str | None = None,
    ) -> Obj:
        obj: Obj = await self._request(
            "PATCH", resource.path(namespace, name, subresource), body=body, content_type=patch_type.value
        )
        return obj

    async def delete(
        self,
        resource: Resource,
        name: str,
        namespace: str | None = None,
        *,
        uid: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> None:
        options: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        await self._request("DELETE", resource.path(namespace, name), body=options)


# -- helpers over generated methods, for the sandbox --------------------------------------
async def call(fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """Call a generated API method for its raw JSON body, parsed into dicts.

    ``_preload_content=False`` skips the model classes but also the status check, so this
    raises :class:`ApiException` (with the server's body) for any non-2xx answer itself.
    """
    resp = await fn(*args, _preload_content=False, **kwargs)
    try:
        data = await resp.read()
    finally:
        resp.release()
    if not 200 <= resp.status <= 299:
        exc = ApiException(status=resp.status, reason=resp.reason)
        exc.body = data
        raise exc
    return json.loads(data) if data else None


def retry_after(status: int, header: str | None, limit: float) -> float | None:
    """Seconds to wait before asking again, when the answer asks for it: a 429 or 5xx with a
    Retry-After in seconds (clamped to ``limit``); None: do not ask again."""
    if header is None or not (status == 429 or 500 <= status <= 599):
        return None
    try:
        seconds = float(header)
    except ValueError:
        return None  # an HTTP date: the API server sends seconds
    return min(max(seconds, 0.0), limit)


def status_of(exc: BaseException) -> int | None:
    """HTTP status of an API error, or None for anything that is not one."""
    return exc.status if isinstance(exc, ApiException) else None
