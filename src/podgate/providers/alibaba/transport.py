"""Every Alibaba Cloud API call podgate makes, in one place: the official SDK's clients (CLB,
NLB, and the core client for ECS's one action), the region filled in, podgate's retry loop
(:mod:`podgate.providers.retry`: a token per attempt, throttling and "busy" answers backed off
with jitter, the server's ``x-acs-retry-after`` honoured), NLB's ``NextToken`` paging, and SDK
errors turned into ProviderErrors.

The SDK's synchronous client runs in a thread (its asyncio client builds a TLS context per
request on the event loop), with a deadline.  The Tea runtime's own retries are off
(``RetryOptions(retryable=False)``): they would sleep inside the thread, unseen by the token
bucket, and multiply podgate's attempts.  Credentials come from the SDK's default chain
(environment variables, RRSA's OIDC token, the CLI profile, the ECS RAM role).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from podgate.providers.alibaba.mapping import describe, retryable
from podgate.providers.base import ProviderError
from podgate.providers.retry import Retry

PAGE = 100  # MaxResults of NLB list calls (1 to 100)

#: SDK method of each action (the SDK's own snake_case names)
_METHODS = {
    "DescribeVServerGroupAttribute": "describe_vserver_group_attribute",
    "DescribeVServerGroups": "describe_vserver_groups",
    "AddVServerGroupBackendServers": "add_vserver_group_backend_servers",
    "RemoveVServerGroupBackendServers": "remove_vserver_group_backend_servers",
    "SetVServerGroupAttribute": "set_vserver_group_attribute",
    "DescribeHealthStatus": "describe_health_status",
    "ListServerGroups": "list_server_groups",
    "ListListeners": "list_listeners",
    "ListServerGroupServers": "list_server_group_servers",
    "AddServersToServerGroup": "add_servers_to_server_group",
    "RemoveServersFromServerGroup": "remove_servers_from_server_group",
    "UpdateServerGroupServersAttribute": "update_server_group_servers_attribute",
    "ListTagResources": "list_tag_resources",  # CLB's and NLB's alike
}
#: actions sent through the core client: ECS (no product SDK needed for one call), and NLB's
#: GetListenerHealthStatus, whose SDK request model (4.1.3) lacks the API's paging parameters
_GENERIC = {"DescribeNetworkInterfaces": "2014-05-26", "GetListenerHealthStatus": "2022-04-30"}

T = TypeVar("T")


def endpoint(url: str | None) -> tuple[str | None, str | None]:
    """``host[:port]`` or ``http(s)://host[:port]`` → (host:port, protocol) for the SDK's Config."""
    if not url:
        return None, None
    if "://" not in url:
        return url, None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL or host[:port]")
    return parts.netloc, parts.scheme


def batches(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    """The API's per-call limits: ``items`` in slices of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _sdk_error(e: Exception) -> bool:
    from alibabacloud_credentials.exceptions import CredentialException
    from Tea.exceptions import TeaException

    return isinstance(e, TeaException | CredentialException | OSError | TimeoutError)


def _code(e: Exception) -> str:
    return str(getattr(e, "code", "") or "")


def _retryable(e: Exception) -> bool:
    return _sdk_error(e) and retryable(_code(e))


def _retry_after(e: Exception) -> float | None:
    after = getattr(e, "retry_after", None)  # x-acs-retry-after, milliseconds
    return after / 1000 if isinstance(after, int | float) else None


class Transport:
    """One account and region's API calls (see the module's docstring)."""

    def __init__(
        self,
        region: str,
        endpoints: Mapping[str, str | None],
        retry: Retry,
        *,
        timeout: float,
        credential: Any = None,
    ) -> None:
        self.region, self.endpoints, self.retry, self.timeout = region, endpoints, retry, timeout
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()  # clients are made in the calls' threads
        self._credential: Any = credential

    def _client(self, product: str) -> Any:
        with self._lock:
            if product not in self._clients:
                self._clients[product] = self._make_client(product)
            return self._clients[product]

    def _make_client(self, product: str) -> Any:
        from alibabacloud_credentials.client import Client as CredentialClient
        from alibabacloud_tea_openapi import utils_models as openapi
        from darabonba.policy.retry import RetryOptions

        if self._credential is None:
            self._credential = CredentialClient()  # the default chain: env, RRSA, profile, RAM role
        host, protocol = endpoint(self.endpoints[product])
        config = openapi.Config(
            credential=self._credential,
            region_id=self.region,
            endpoint=host,
            protocol=protocol or "https",
            connect_timeout=int(self.timeout * 1000),
            read_timeout=int(self.timeout * 1000),
            retry_options=RetryOptions(retryable=False),  # podgate's loop retries, not the SDK's
        )
        if product == "clb":
            from alibabacloud_slb20140515.client import Client as Slb

            return Slb(config)
        if product == "nlb":
            from alibabacloud_nlb20220430.client import Client as Nlb

            return Nlb(config)
        from alibabacloud_tea_openapi.client import Client as OpenApi

        config.endpoint = host or f"ecs.{self.region}.aliyuncs.com"
        return OpenApi(config)

    def close(self) -> None:
        self._clients.clear()

    async def _send_within(self, product: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        async with asyncio.timeout(2 * self.timeout + 1):
            return await asyncio.to_thread(self._send, product, action, body)

    async def call(self, product: str, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """One API call with the region filled in, rate-limited, throttling and busy answers
        retried; the answer's body as the API spells it."""
        body = {"RegionId": self.region, **params}
        try:
            return await self.retry.call(
                lambda: self._send_within(product, action, body),
                _retryable,
                _retry_after,
            )
        except Exception as e:
            if not _sdk_error(e):
                raise
            code = _code(e)
            gone = "NotFound" in code or "NotExist" in code
            raise ProviderError(f"Alibaba Cloud {action}: {describe(e)}", permanent=gone) from None

    async def pages(
        self, product: str, action: str, params: Mapping[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Every page of a list call (``MaxResults`` :data:`PAGE`, ``NextToken`` followed)."""
        token: str | None = None
        while True:
            page = await self.call(
                product, action, {**params, "MaxResults": PAGE, **({"NextToken": token} if token else {})}
            )
            yield page
            token = page.get("NextToken")
            if not token:
                break

    def _send(self, product: str, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The SDK call itself (synchronous, in a worker thread)."""
        client = self._client(product)
        if action in _GENERIC:
            from alibabacloud_tea_openapi import utils_models
            from darabonba.runtime import RuntimeOptions

            api = utils_models.Params(
                action=action,
                version=_GENERIC[action],
                protocol="HTTPS",
                pathname="/",
                method="POST",
                auth_type="AK",
                style="RPC",
                req_body_type="formData",
                body_type="json",
            )
            request = utils_models.OpenApiRequest(query={k: str(v) for k, v in params.items()})
            answer = client.call_api(api, request, RuntimeOptions())
            return dict(answer.get("body") or {})
        if product == "clb":
            import alibabacloud_slb20140515.models as models
        else:
            import alibabacloud_nlb20220430.models as models
        request = getattr(models, f"{action}Request")().from_map(dict(params))
        dropped = set(params) - set(request.to_map())
        if dropped:  # from_map ignores names it does not know: say so rather than send less
            raise ProviderError(f"Alibaba Cloud {action}: the SDK's request has no {sorted(dropped)}")
        response = getattr(client, _METHODS[action])(request)
        return dict(response.body.to_map())
