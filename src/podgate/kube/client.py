"""One place that turns a kubeconfig into an API client, and raw-JSON helpers.

Bodies are handled as plain dicts (``_preload_content=False`` + ``json``): the generated model
classes cost a lot of CPU at thousands of pods and drop fields they do not know.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

__all__ = ["ApiException", "api_client", "call", "check", "status_of"]

STRATEGIC_MERGE = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"


async def api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An ApiClient from a kubeconfig file, or the in-cluster service account when none is given."""
    if kubeconfig is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return client.ApiClient()
        except config.ConfigException:
            pass
    cfg = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    return client.ApiClient(configuration=cfg)


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
    check(resp, data)
    return json.loads(data) if data else None


def check(resp: Any, data: bytes = b"") -> None:
    if not 200 <= resp.status <= 299:
        exc = ApiException(status=resp.status, reason=resp.reason)
        exc.body = data
        raise exc


def status_of(exc: BaseException) -> int | None:
    """HTTP status of an API error, or None for anything that is not one."""
    return exc.status if isinstance(exc, ApiException) else None
