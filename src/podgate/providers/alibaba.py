"""Alibaba Cloud provider: a Service port bound to an existing CLB vServer group or NLB server
group, through the official SDK packages (``alibabacloud_slb20140515``,
``alibabacloud_nlb20220430``, ``alibabacloud_tea_openapi``).

- NLB server groups of type ``Ip`` take pod IPs as they are (``ServerType: Ip``).  Health is the
  listener's: ``GetListenerHealthStatus`` lists only the servers that are *not* normal
  (``Initial``, ``Unhealthy`` with a ``ReasonCode``, ``Unavailable``), so a server that is
  ``Available`` in its group, checked by at least one listener and absent from that list is
  healthy.  Adding a server is an asynchronous job: the server is ``Adding`` until it is done.
- CLB vServer groups take pods as ``eni`` backends (``ServerId`` the ENI that holds the pod IP,
  ``ServerIp`` the pod IP), which is how ENI-mode (Terway) pods are load-balanced; podgate finds
  each pod IP's ENI with ECS ``DescribeNetworkInterfaces``.  Health is
  ``DescribeHealthStatus`` of the group's load balancer: ``normal``, ``abnormal`` or
  ``unavailable`` per listener.

The cloud's own words are the gate's reason: NLB's ``ReasonCode`` or status, CLB's
``ServerHealthStatus``.  Draining is weight 0 (no new connections, existing ones run on) until
the pool's drain delay has passed; then the backend is removed.  podgate manages only the pod
backends of a group (NLB ``Ip`` servers, CLB ``eni`` backends); ECS instances someone added by
hand are left alone.  Credentials come from the SDK's default chain (environment variables,
RRSA's OIDC token, the CLI profile, the ECS RAM role).  Every call takes a token from a bucket
per provider and region; throttling answers back off exponentially with jitter; any other
error is a ProviderError, which never opens a gate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from podgate.model.lb import Health, PoolSpec, ServerGroup, Target, TargetHealth
from podgate.model.ratelimit import TokenBucket
from podgate.providers.base import ProviderError, TargetState

log = logging.getLogger(__name__)

#: error codes that mean "slow down and try again" rather than "this request is wrong"
RETRYABLE = frozenset({"ServiceUnavailable", "SystemBusy", "Conflict.Lock"})
CLB_BATCH = 20  # backend servers per CLB call: the API's limit
NLB_BATCH = 200  # servers per NLB call: the API's limit
ENI_BATCH = 100  # private IPs per DescribeNetworkInterfaces call
DISCOVERY_TTL = 30.0  # seconds a group's load balancer / listeners are trusted before a re-read
WEIGHT = 100
ECS_VERSION = "2014-05-26"

#: SDK method of each action (the SDK's own snake_case names)
_METHODS = {
    "DescribeVServerGroupAttribute": "describe_vserver_group_attribute",
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
    "GetListenerHealthStatus": "get_listener_health_status",
}


# -- the cloud's answers → podgate's view (pure) ----------------------------------------------
def clb_target(backend: Mapping[str, Any], checks: Sequence[Mapping[str, Any]], where: str) -> TargetState:
    """A CLB vServer group backend and the ``DescribeHealthStatus`` entries for it (one per
    listener that forwards to the group) → admin state and health.

    Healthy only when every listener says ``normal``; the first other status is the reason.
    """
    if int(backend.get("Weight") or 0) == 0:
        return TargetState("drain", TargetHealth(Health.DRAINING, "weight 0: no new connections", where))
    statuses = [str(c.get("ServerHealthStatus") or "unavailable") for c in checks]
    if not statuses:
        return TargetState(
            "ready",
            TargetHealth(
                Health.INITIAL,
                "no listener reports this backend's health yet "
                "(is a listener forwarding to the vServer group?)",
                where,
                "NoHealthStatus",
            ),
        )
    for check, status in zip(checks, statuses, strict=True):
        if status == "normal":
            continue
        health = Health.UNHEALTHY if status == "abnormal" else Health.UNKNOWN
        listener = check.get("ListenerPort")
        return TargetState(
            "ready",
            TargetHealth(health, f"ServerHealthStatus {status} on listener {listener}", where, status),
        )
    listeners = ", ".join(str(c.get("ListenerPort")) for c in checks)
    return TargetState(
        "ready", TargetHealth(Health.HEALTHY, f"ServerHealthStatus normal on listener {listeners}", where)
    )


def nlb_target(
    server: Mapping[str, Any],
    listeners: Sequence[str],
    non_normal: Mapping[str, Mapping[str, Any]],
    where: str,
) -> TargetState:
    """An NLB server group server, the listeners forwarding to its group, and the servers those
    listeners report as not normal (keyed ``ip:port``) → admin state and health."""
    status = str(server.get("Status") or "")
    if int(server.get("Weight") or 0) == 0:
        return TargetState("drain", TargetHealth(Health.DRAINING, "weight 0: no new connections", where))
    if status in ("Adding", "Configuring"):
        return TargetState(
            "ready", TargetHealth(Health.INITIAL, f"server is {status} (the NLB job runs)", where, status)
        )
    if not listeners:
        return TargetState(
            "ready",
            TargetHealth(
                Health.UNKNOWN,
                "no listener forwards to this server group, so nothing checks it",
                where,
                "NoListener",
            ),
        )
    bad = non_normal.get(f"{server.get('ServerIp')}:{server.get('Port')}")
    if bad is None:
        return TargetState(
            "ready",
            TargetHealth(Health.HEALTHY, f"healthy on listener {', '.join(listeners)}", where),
        )
    state = str(bad.get("Status") or "Unavailable")
    code = (bad.get("Reason") or {}).get("ReasonCode")
    health = {"Initial": Health.INITIAL, "Unhealthy": Health.UNHEALTHY}.get(state, Health.UNKNOWN)
    words = f"{state}: {code}" if code else state
    return TargetState(
        "ready", TargetHealth(health, f"{words} on listener {bad['_listener']}", where, code or state)
    )


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


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass
class _Discovered:
    """What a server group is attached to, read once per :data:`DISCOVERY_TTL`."""

    at: float
    load_balancer: str | None = None  # CLB: the vServer group's load balancer
    listeners: tuple[str, ...] = ()  # NLB: listeners forwarding to the server group


class AlibabaProvider:
    def __init__(
        self,
        name: str = "alibaba",
        region: str = "cn-hangzhou",
        *,
        clb_endpoint: str | None = None,
        nlb_endpoint: str | None = None,
        ecs_endpoint: str | None = None,
        rate: float = 10.0,
        burst: int = 20,
        max_retries: int = 6,
        base_delay: float = 0.2,
        timeout: float = 10.0,
        credential: Any = None,
    ) -> None:
        """``credential``: an ``alibabacloud_credentials`` client; None is the SDK's default
        chain (which reads its environment variables once, when first imported)."""
        self.name, self.region = name, region
        self.endpoints = {"clb": clb_endpoint, "nlb": nlb_endpoint, "ecs": ecs_endpoint}
        self.bucket = TokenBucket(rate, burst)
        self.max_retries, self.base_delay, self.timeout = max_retries, base_delay, timeout
        self.throttled = 0
        self._clients: dict[str, Any] = {}
        self._credential: Any = credential
        self._discovered: dict[str, _Discovered] = {}
        #: the group's pod backends as last read: {target: backend as the API gave it}
        self._seen: dict[str, dict[Target, dict[str, Any]]] = {}
        self._enis: dict[str, str] = {}  # pod IP → ENI id (CLB); an IP keeps its ENI for the pod's life

    # -- SDK plumbing ---------------------------------------------------------------------------
    def _client(self, product: str) -> Any:
        if product not in self._clients:
            from alibabacloud_credentials.client import Client as CredentialClient
            from alibabacloud_tea_openapi import utils_models as openapi

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
            )
            if product == "clb":
                from alibabacloud_slb20140515.client import Client as Slb

                self._clients[product] = Slb(config)
            elif product == "nlb":
                from alibabacloud_nlb20220430.client import Client as Nlb

                self._clients[product] = Nlb(config)
            else:
                from alibabacloud_tea_openapi.client import Client as OpenApi

                config.endpoint = host or f"ecs.{self.region}.aliyuncs.com"
                self._clients[product] = OpenApi(config)
        return self._clients[product]

    async def close(self) -> None:
        self._clients.clear()

    async def _call(self, product: str, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """One API call with the region filled in, rate-limited, throttling retried; the
        answer's body as the API spells it."""
        for attempt in range(self.max_retries + 1):
            wait = self.bucket.reserve()
            if wait:
                await asyncio.sleep(wait)
            try:
                return await self._send(product, action, {"RegionId": self.region, **params})
            except Exception as e:  # the SDK raises many kinds; each becomes a ProviderError
                code = str(getattr(e, "code", "") or "")
                retry = code.startswith("Throttling") or code in RETRYABLE
                if retry and attempt < self.max_retries:
                    self.throttled += 1
                    delay = self.base_delay * 2**attempt
                    await asyncio.sleep(delay / 2 + random.random() * delay / 2)
                    continue
                raise ProviderError(f"Alibaba Cloud {action}: {_describe(e)}") from None
        raise ProviderError(f"Alibaba Cloud {action}: still throttled after {self.max_retries} retries")

    async def _send(self, product: str, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        client = self._client(product)
        if product == "ecs":
            from alibabacloud_tea_openapi import utils_models
            from darabonba.runtime import RuntimeOptions

            api = utils_models.Params(
                action=action,
                version=ECS_VERSION,
                protocol="HTTPS",
                pathname="/",
                method="POST",
                auth_type="AK",
                style="RPC",
                req_body_type="formData",
                body_type="json",
            )
            request = utils_models.OpenApiRequest(query={k: str(v) for k, v in params.items()})
            answer = await client.call_api_async(api, request, RuntimeOptions())
            return dict(answer.get("body") or {})
        if product == "clb":
            import alibabacloud_slb20140515.models as models
        else:
            import alibabacloud_nlb20220430.models as models
        request = getattr(models, f"{action}Request")().from_map(dict(params))
        response = await getattr(client, f"{_METHODS[action]}_async")(request)
        return dict(response.body.to_map())

    # -- the Provider seam ----------------------------------------------------------------------
    @staticmethod
    def _group(pool: PoolSpec) -> ServerGroup:
        if pool.server_group is None:
            raise ProviderError(
                f"Service {pool.service_key} port {pool.port} needs the annotation "
                "podgate.dev/alibaba-nlb-server-group-id or podgate.dev/alibaba-clb-vserver-group-id"
            )
        return pool.server_group

    async def provision(self, service_key: str, pools: Sequence[PoolSpec], address: str | None) -> str | None:
        """Check each group exists (and is an ``Ip`` group, for NLB) and find what it is attached
        to; nothing is created: the groups and load balancers are the user's."""
        for pool in pools:
            await self._discover(self._group(pool))
        return None

    async def _discover(self, group: ServerGroup, refresh: bool = False) -> _Discovered:
        known = self._discovered.get(group.group_id)
        if known is not None and not refresh and time.monotonic() - known.at < DISCOVERY_TTL:
            return known
        if group.product == "clb":
            attr = await self._call(
                "clb", "DescribeVServerGroupAttribute", {"VServerGroupId": group.group_id}
            )
            found = _Discovered(time.monotonic(), load_balancer=attr.get("LoadBalancerId"))
        else:
            answer = await self._call("nlb", "ListServerGroups", {"ServerGroupIds": [group.group_id]})
            matches = [
                g for g in answer.get("ServerGroups") or () if g.get("ServerGroupId") == group.group_id
            ]
            if not matches:
                raise ProviderError(f"NLB server group {group.group_id} does not exist in {self.region}")
            kind = matches[0].get("ServerGroupType")
            if kind != "Ip":
                raise ProviderError(
                    f"NLB server group {group.group_id} has ServerGroupType {kind!r}; "
                    "podgate adds pod IPs and needs an 'Ip' server group"
                )
            balancers = list(matches[0].get("RelatedLoadBalancerIds") or ())
            listeners: list[str] = []
            if balancers:
                answer = await self._call(
                    "nlb", "ListListeners", {"LoadBalancerIds": balancers, "MaxResults": 100}
                )
                listeners = [
                    str(li["ListenerId"])
                    for li in answer.get("Listeners") or ()
                    if li.get("ServerGroupId") == group.group_id
                ]
            found = _Discovered(time.monotonic(), listeners=tuple(sorted(listeners)))
        self._discovered[group.group_id] = found
        return found

    async def release(self, service_key: str) -> None:
        """The groups are the user's: nothing of podgate's to remove."""

    async def provisioned(self) -> set[str]:
        return set()

    async def targets(self, pool: PoolSpec) -> dict[Target, TargetState]:
        group = self._group(pool)
        if group.product == "clb":
            return await self._clb_targets(group)
        return await self._nlb_targets(group)

    async def _clb_targets(self, group: ServerGroup) -> dict[Target, TargetState]:
        attr = await self._call("clb", "DescribeVServerGroupAttribute", {"VServerGroupId": group.group_id})
        backends = {
            Target(str(b["ServerIp"]), int(b["Port"])): b
            for b in (attr.get("BackendServers") or {}).get("BackendServer") or ()
            if b.get("Type") == "eni" and b.get("ServerIp")
        }
        self._seen[group.group_id] = backends
        lb_id = attr.get("LoadBalancerId")
        where = f"CLB {lb_id} vServer group {group.group_id}"
        checks: dict[Target, list[dict[str, Any]]] = {}
        if backends and lb_id:
            health = await self._call("clb", "DescribeHealthStatus", {"LoadBalancerId": lb_id})
            for entry in (health.get("BackendServers") or {}).get("BackendServer") or ():
                if entry.get("ServerIp") and entry.get("Port") is not None:
                    checks.setdefault(Target(str(entry["ServerIp"]), int(entry["Port"])), []).append(entry)
        return {t: clb_target(b, checks.get(t, []), where) for t, b in backends.items()}

    async def _nlb_targets(self, group: ServerGroup) -> dict[Target, TargetState]:
        servers: dict[Target, dict[str, Any]] = {}
        token: str | None = None
        while True:
            page = await self._call(
                "nlb",
                "ListServerGroupServers",
                {
                    "ServerGroupId": group.group_id,
                    "MaxResults": 100,
                    **({"NextToken": token} if token else {}),
                },
            )
            for s in page.get("Servers") or ():
                # a server being removed is on its way out: neither a target nor to remove again
                if s.get("ServerType") == "Ip" and s.get("Status") != "Removing" and s.get("ServerIp"):
                    servers[Target(str(s["ServerIp"]), int(s.get("Port") or 0))] = s
            token = page.get("NextToken")
            if not token:
                break
        self._seen[group.group_id] = servers
        found = await self._discover(group)
        non_normal: dict[str, dict[str, Any]] = {}
        if servers:
            for listener in found.listeners:
                answer = await self._call("nlb", "GetListenerHealthStatus", {"ListenerId": listener})
                for status in answer.get("ListenerHealthStatus") or ():
                    for info in status.get("ServerGroupInfos") or ():
                        if info.get("ServerGroupId") != group.group_id:
                            continue
                        for bad in info.get("NonNormalServers") or ():
                            key = f"{bad.get('ServerIp')}:{bad.get('Port')}"
                            non_normal.setdefault(key, {**bad, "_listener": listener})
        where = f"NLB server group {group.group_id}"
        return {t: nlb_target(s, found.listeners, non_normal, where) for t, s in servers.items()}

    async def register(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        group = self._group(pool)
        seen = self._seen.get(group.group_id, {})
        back = [t for t in targets if t in seen]  # draining ones: weight back up
        new = [t for t in targets if t not in seen]
        if back:
            await self._set_weight(pool, back, WEIGHT)
        if not new:
            return
        description = f"podgate/{pool.namespace}/{pool.service}"[:80]
        if group.product == "nlb":
            for chunk in _batches(new, NLB_BATCH):
                servers = [
                    {
                        "ServerId": t.ip,
                        "ServerType": "Ip",
                        "ServerIp": t.ip,
                        "Port": t.port,
                        "Weight": WEIGHT,
                        "Description": description,
                    }
                    for t in chunk
                ]
                await self._call(
                    "nlb", "AddServersToServerGroup", {"ServerGroupId": group.group_id, "Servers": servers}
                )
            return
        enis = await self._enis_of({t.ip for t in new})
        ready = [t for t in new if t.ip in enis]
        for chunk in _batches(ready, CLB_BATCH):
            servers = [
                {
                    "ServerId": enis[t.ip],
                    "Type": "eni",
                    "ServerIp": t.ip,
                    "Port": t.port,
                    "Weight": WEIGHT,
                    "Description": description,
                }
                for t in chunk
            ]
            await self._call(
                "clb",
                "AddVServerGroupBackendServers",
                {"VServerGroupId": group.group_id, "BackendServers": json.dumps(servers)},
            )
        missing = sorted({t.ip for t in new} - set(enis))
        if missing:
            raise ProviderError(
                f"no ENI in {self.region} holds pod IP(s) {', '.join(missing)}: a CLB vServer group "
                "takes pods as ENI backends, which needs ENI-mode (Terway) pod networking"
            )

    async def _enis_of(self, ips: set[str]) -> dict[str, str]:
        todo = sorted(ips - set(self._enis))
        for chunk in _batches(todo, ENI_BATCH):
            params = {f"PrivateIpAddress.{i}": ip for i, ip in enumerate(chunk, 1)}
            answer = await self._call("ecs", "DescribeNetworkInterfaces", {**params, "MaxResults": 500})
            for eni in (answer.get("NetworkInterfaceSets") or {}).get("NetworkInterfaceSet") or ():
                owned = [
                    p.get("PrivateIpAddress")
                    for p in (eni.get("PrivateIpSets") or {}).get("PrivateIpSet") or ()
                ]
                for ip in [eni.get("PrivateIpAddress"), *owned]:
                    if ip in chunk:
                        self._enis[str(ip)] = str(eni["NetworkInterfaceId"])
        if len(self._enis) > 50_000:  # pod IPs are reused; bound the cache, keep what is asked now
            self._enis = {ip: self._enis[ip] for ip in ips if ip in self._enis}
        return {ip: self._enis[ip] for ip in ips if ip in self._enis}

    async def _set_weight(self, pool: PoolSpec, targets: Sequence[Target], weight: int) -> None:
        group = self._group(pool)
        seen = self._seen.get(group.group_id, {})
        known = [t for t in targets if t in seen]
        if group.product == "nlb":
            for chunk in _batches(known, NLB_BATCH):
                servers = [
                    {"ServerId": t.ip, "ServerType": "Ip", "ServerIp": t.ip, "Port": t.port, "Weight": weight}
                    for t in chunk
                ]
                await self._call(
                    "nlb",
                    "UpdateServerGroupServersAttribute",
                    {"ServerGroupId": group.group_id, "Servers": servers},
                )
            return
        for chunk in _batches(known, CLB_BATCH):
            servers = [
                {
                    "ServerId": seen[t]["ServerId"],
                    "Type": "eni",
                    "ServerIp": t.ip,
                    "Port": t.port,
                    "Weight": weight,
                }
                for t in chunk
            ]
            await self._call(
                "clb",
                "SetVServerGroupAttribute",
                {"VServerGroupId": group.group_id, "BackendServers": json.dumps(servers)},
            )

    async def drain(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        await self._set_weight(pool, targets, 0)

    async def deregister(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        group = self._group(pool)
        seen = self._seen.get(group.group_id, {})
        known = [t for t in targets if t in seen]
        if group.product == "nlb":
            for chunk in _batches(known, NLB_BATCH):
                servers = [
                    {"ServerId": t.ip, "ServerType": "Ip", "ServerIp": t.ip, "Port": t.port} for t in chunk
                ]
                await self._call(
                    "nlb",
                    "RemoveServersFromServerGroup",
                    {"ServerGroupId": group.group_id, "Servers": servers},
                )
            return
        for chunk in _batches(known, CLB_BATCH):
            servers = [
                {"ServerId": seen[t]["ServerId"], "Type": "eni", "ServerIp": t.ip, "Port": t.port}
                for t in chunk
            ]
            await self._call(
                "clb",
                "RemoveVServerGroupBackendServers",
                {"VServerGroupId": group.group_id, "BackendServers": json.dumps(servers)},
            )

    async def generation(self) -> str:
        return self.name  # nothing of podgate's state is lost on the cloud's side


def _describe(e: BaseException) -> str:
    """The SDK's exception in one line: the cloud's code and message, or why it was not reached."""
    code = getattr(e, "code", None)
    if code:
        return f"{code}: {getattr(e, 'message', None) or e}"
    inner = getattr(e, "inner_exception", None) or e.__cause__ or e
    text = getattr(inner, "message", None) or str(inner) or type(inner).__name__
    return f"cannot reach the API: {text}"
