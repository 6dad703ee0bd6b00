"""Alibaba Cloud provider: a Service port bound to an existing CLB vServer group or NLB server
group, through the official SDK packages (``alibabacloud_slb20140515``,
``alibabacloud_nlb20220430``, and their core client ``alibabacloud_tea_openapi``).

- NLB server groups of type ``Ip`` take pod IPs as they are (``ServerType: Ip``).  Health is the
  listeners': ``GetListenerHealthStatus`` lists only the servers that are *not* normal
  (``Initial``, ``Unhealthy`` with a ``ReasonCode``, ``Unavailable``), paged.  So a server is
  healthy only when it is ``Available`` in its group, every listener forwarding to the group
  answered *for that group* (all pages read) without listing it, and it has been ``Available``
  for at least the group's health-check interval × healthy threshold (the soonest a new server
  can pass: absence from the list must not be mistaken for a verdict before the first checks).
- CLB vServer groups take pods as ``eni`` backends (``ServerId`` the ENI holding the pod IP,
  ``ServerIp`` the pod IP), which is how ENI-mode (Terway) pods are load-balanced; podgate finds
  each pod IP's ENI with ECS ``DescribeNetworkInterfaces``.  Health is ``DescribeHealthStatus``
  of the group's load balancer, counted only for the listeners that forward to this group:
  ``normal`` on every one of them, or not healthy.

The cloud's own words are the gate's reason: NLB's ``ReasonCode`` or status, CLB's
``ServerHealthStatus``.  Draining is weight 0 (no new connections, existing ones run on) until
the pool's drain delay has passed; then the backend is removed.  Like the AWS provider's target
groups, the group belongs to the Service that names it: every pod-type backend in it (NLB
``Ip`` servers, CLB ``eni`` backends) is podgate's to add and remove, while ECS instances in the
same group are left alone; two Services naming one group is refused.

Every call takes a token from a bucket per provider and region and runs the SDK's synchronous
client in a thread (its asyncio client builds a TLS context per request on the event loop),
with a deadline.  Throttling and "busy" answers (an earlier asynchronous job on the group still
running) back off exponentially with jitter; any other error is a ProviderError, which never
opens a gate.  Credentials come from the SDK's default chain (environment variables, RRSA's OIDC
token, the CLI profile, the ECS RAM role).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from podgate.model.lb import Health, PoolSpec, ServerGroup, Target, TargetHealth
from podgate.model.ratelimit import TokenBucket
from podgate.providers.base import ProviderError, TargetState

#: error codes that mean "try again shortly" rather than "this request is wrong": the API is
#: busy, or an earlier asynchronous job on the same group has not finished
RETRYABLE = frozenset(
    {
        "Rejected.Throttling",
        "ServiceUnavailable",
        "SystemBusy",
        "OperationBusy",
        "Conflict.Lock",
        "IncorrectStatus.serverGroup",
        "OperationFailed.ResourceIsConfiguring",
        "ServiceIsConfiguring",
        "BackendServer.configuring",
        "VServerGroupProcessing",
    }
)
CLB_BATCH = 20  # backend servers per CLB call: the API's limit
NLB_BATCH = 200  # servers per NLB call: the API's limit
NLB_LB_IDS = 20  # load balancer ids per ListListeners call: the API's limit
ENI_BATCH = 100  # private IPs per DescribeNetworkInterfaces call
PAGE = 100  # MaxResults of NLB list calls (1 to 100)
DISCOVERY_TTL = 30.0  # seconds a group's load balancer / listeners are trusted before a re-read
WEIGHT = 100
MAX_RETRY_AFTER = 30.0

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
}
#: actions sent through the core client: ECS (no product SDK needed for one call), and NLB's
#: GetListenerHealthStatus, whose SDK request model (4.1.3) lacks the API's paging parameters
_GENERIC = {"DescribeNetworkInterfaces": "2014-05-26", "GetListenerHealthStatus": "2022-04-30"}


# -- the cloud's answers → podgate's view (pure) ----------------------------------------------
def _draining(where: str) -> TargetState:
    return TargetState("drain", TargetHealth(Health.DRAINING, "weight 0: no new connections", where))


def clb_target(
    backend: Mapping[str, Any],
    checks: Sequence[Mapping[str, Any]],
    listener_ports: Sequence[int],
    where: str,
) -> TargetState:
    """A CLB vServer group backend, the ports of the listeners forwarding to its group, and the
    ``DescribeHealthStatus`` entries for it → admin state and health.

    Healthy only when every one of those listeners reports it ``normal``; the first listener
    that does not (or reports nothing yet) gives the reason.
    """
    if int(backend.get("Weight") or 0) == 0:
        return _draining(where)
    if not listener_ports:
        return TargetState(
            "ready",
            TargetHealth(
                Health.UNKNOWN,
                "no listener forwards to this vServer group, so nothing checks it",
                where,
                "NoListener",
            ),
        )
    by_port = {int(c["ListenerPort"]): c for c in checks if c.get("ListenerPort") is not None}
    for port in listener_ports:
        check = by_port.get(port)
        if check is None:
            return TargetState(
                "ready",
                TargetHealth(
                    Health.INITIAL,
                    f"listener {port} reports no health for this backend yet",
                    where,
                    "NoHealthStatus",
                ),
            )
        status = str(check.get("ServerHealthStatus") or "unavailable")
        if status != "normal":
            health = Health.UNHEALTHY if status == "abnormal" else Health.UNKNOWN
            return TargetState(
                "ready",
                TargetHealth(health, f"ServerHealthStatus {status} on listener {port}", where, status),
            )
    ports = ", ".join(map(str, listener_ports))
    return TargetState(
        "ready", TargetHealth(Health.HEALTHY, f"ServerHealthStatus normal on listener {ports}", where)
    )


@dataclass(frozen=True)
class ListenerReport:
    """What the listeners forwarding to one NLB server group said in one round of reads."""

    listeners: tuple[str, ...] = ()  # forwarding to the group
    silent: tuple[str, ...] = ()  # answered, but not for this group (re-pointed, stopped)
    non_normal: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # "ip:port" → entry
    floor: float = 0.0  # health-check interval × healthy threshold: the soonest a server can pass


def nlb_target(
    server: Mapping[str, Any], report: ListenerReport, available_for: float, where: str
) -> TargetState:
    """An NLB server group server, what the group's listeners report, and how long the server has
    been ``Available`` (as podgate saw it) → admin state and health."""
    status = str(server.get("Status") or "")
    if int(server.get("Weight") or 0) == 0:
        return _draining(where)
    if status in ("Adding", "Configuring"):
        return TargetState(
            "ready", TargetHealth(Health.INITIAL, f"server is {status} (the NLB job runs)", where, status)
        )
    if not report.listeners:
        return TargetState(
            "ready",
            TargetHealth(
                Health.UNKNOWN,
                "no listener forwards to this server group, so nothing checks it",
                where,
                "NoListener",
            ),
        )
    if report.silent:
        return TargetState(
            "ready",
            TargetHealth(
                Health.UNKNOWN,
                f"listener {', '.join(report.silent)} reports nothing for this server group",
                where,
                "NoHealthStatus",
            ),
        )
    bad = report.non_normal.get(f"{server.get('ServerIp') or server.get('ServerId')}:{server.get('Port')}")
    if bad is not None:
        state = str(bad.get("Status") or "Unavailable")
        code = (bad.get("Reason") or {}).get("ReasonCode")
        health = {"Initial": Health.INITIAL, "Unhealthy": Health.UNHEALTHY}.get(state, Health.UNKNOWN)
        words = f"{state}: {code}" if code else state
        return TargetState(
            "ready", TargetHealth(health, f"{words} on listener {bad.get('_listener')}", where, code or state)
        )
    if available_for < report.floor:
        return TargetState(
            "ready",
            TargetHealth(
                Health.INITIAL,
                # no elapsed time in the words: a message that changes at every read would
                # rewrite the gate condition at every read
                f"added; the first checks take {report.floor:g}s (interval × healthy threshold)",
                where,
                "Initial",
            ),
        )
    return TargetState(
        "ready", TargetHealth(Health.HEALTHY, f"healthy on listener {', '.join(report.listeners)}", where)
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


def retryable(code: str) -> bool:
    """Whether an error code means "the same request may succeed shortly" (back off, retry)."""
    return code.startswith("Throttling") or code in RETRYABLE


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass
class _Discovered:
    """What a server group is attached to, read once per :data:`DISCOVERY_TTL`."""

    at: float
    load_balancer: str | None = None  # CLB: the vServer group's load balancer
    listener_ports: tuple[int, ...] = ()  # CLB: ports of the listeners forwarding to the group
    listeners: tuple[str, ...] = ()  # NLB: listeners forwarding to the server group
    floor: float = 0.0  # NLB: health-check interval × healthy threshold


class AlibabaProvider:
    """One Alibaba Cloud account and region: CLB and NLB groups named by Services (see the
    module's docstring).  All it keeps is derived from the cloud's answers and the Services, so
    a restart loses nothing the next reads do not rebuild (a new server's first-check floor
    only starts again, which errs on the closed side)."""

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
        poll_interval: float = 1.0,
        credential: Any = None,
    ) -> None:
        """``credential``: an ``alibabacloud_credentials`` client; None is the SDK's default
        chain (which reads its environment variables once, when first imported)."""
        self.name, self.region = name, region
        self.endpoints = {"clb": clb_endpoint, "nlb": nlb_endpoint, "ecs": ecs_endpoint}
        self.bucket = TokenBucket(rate, burst)
        self.max_retries, self.base_delay, self.timeout = max_retries, base_delay, timeout
        #: cloud health checks run every few seconds: reading them faster only spends API quota
        self.poll_interval = poll_interval
        self.binds_user_groups = True
        self.throttled = 0
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()  # clients are made in the calls' threads
        self._credential: Any = credential
        self._discovered: dict[str, _Discovered] = {}
        self._owners: dict[str, tuple[str, ServerGroup]] = {}  # group id → (Service key, group)
        #: the group's pod backends as last read: register/drain/remove need their ServerId
        #: (CLB: the ENI) and whether they are already there (at weight 0) or absent
        self._seen: dict[str, dict[Target, dict[str, Any]]] = {}
        self._removing: dict[str, set[Target]] = {}  # NLB servers whose removal job runs
        self._available_since: dict[tuple[str, Target], float] = {}
        self._enis: dict[str, str] = {}  # pod IP → ENI id (CLB); dropped when the backend goes

    # -- SDK plumbing ---------------------------------------------------------------------------
    def _client(self, product: str) -> Any:
        with self._lock:
            if product not in self._clients:
                self._clients[product] = self._make_client(product)
            return self._clients[product]

    def _make_client(self, product: str) -> Any:
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

            return Slb(config)
        if product == "nlb":
            from alibabacloud_nlb20220430.client import Client as Nlb

            return Nlb(config)
        from alibabacloud_tea_openapi.client import Client as OpenApi

        config.endpoint = host or f"ecs.{self.region}.aliyuncs.com"
        return OpenApi(config)

    async def close(self) -> None:
        self._clients.clear()

    async def _call(self, product: str, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """One API call with the region filled in, rate-limited, throttling and busy answers
        retried; the answer's body as the API spells it."""
        from alibabacloud_credentials.exceptions import CredentialException
        from Tea.exceptions import TeaException

        for attempt in range(self.max_retries + 1):
            wait = self.bucket.reserve()
            if wait:
                await asyncio.sleep(wait)
            try:
                return await asyncio.wait_for(
                    asyncio.to_thread(self._send, product, action, {"RegionId": self.region, **params}),
                    2 * self.timeout + 1,
                )
            except (TeaException, CredentialException, OSError, TimeoutError) as e:
                code = str(getattr(e, "code", "") or "")
                if retryable(code) and attempt < self.max_retries:
                    self.throttled += 1
                    delay = self.base_delay * 2**attempt
                    delay = delay / 2 + random.random() * delay / 2
                    after = getattr(e, "retry_after", None)  # x-acs-retry-after, milliseconds
                    if isinstance(after, int | float) and after > 0:
                        delay = max(delay, min(after / 1000, MAX_RETRY_AFTER))
                    await asyncio.sleep(delay)
                    continue
                gone = "NotFound" in code or "NotExist" in code
                raise ProviderError(f"Alibaba Cloud {action}: {_describe(e)}", permanent=gone) from None
        raise ProviderError(f"Alibaba Cloud {action}: still throttled after {self.max_retries} retries")

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

    # -- the Provider seam ----------------------------------------------------------------------
    @staticmethod
    def _group(pool: PoolSpec) -> ServerGroup:
        if pool.server_group is None:
            raise ProviderError(
                f"Service {pool.service_key} port {pool.port} needs the annotation "
                "podgate.dev/alibaba-nlb-server-group-id or podgate.dev/alibaba-clb-vserver-group-id",
                permanent=True,
            )
        return pool.server_group

    async def provision(self, service_key: str, pools: Sequence[PoolSpec], address: str | None) -> str | None:
        """Check each group exists, suits podgate, and is named by this Service only; find what
        it is attached to.  Nothing is created: the groups and load balancers are the user's."""
        for pool in pools:
            group = self._group(pool)
            owner, _ = self._owners.setdefault(group.group_id, (service_key, group))
            if owner != service_key:
                raise ProviderError(
                    f"server group {group.group_id} is already bound to Service {owner}; "
                    "each group belongs to one Service port",
                    permanent=True,
                )
            await self._discover(group)
        return None

    async def _discover(self, group: ServerGroup) -> _Discovered:
        known = self._discovered.get(group.group_id)
        if known is not None and time.monotonic() - known.at < DISCOVERY_TTL:
            return known
        found = await (self._discover_clb(group) if group.product == "clb" else self._discover_nlb(group))
        self._discovered[group.group_id] = found
        return found

    async def _discover_clb(self, group: ServerGroup) -> _Discovered:
        attr = await self._call("clb", "DescribeVServerGroupAttribute", {"VServerGroupId": group.group_id})
        lb_id = attr.get("LoadBalancerId")
        ports: list[int] = []
        if lb_id:
            answer = await self._call(
                "clb", "DescribeVServerGroups", {"LoadBalancerId": lb_id, "IncludeListener": True}
            )
            for g in (answer.get("VServerGroups") or {}).get("VServerGroup") or ():
                if g.get("VServerGroupId") == group.group_id:
                    listeners = ((g.get("AssociatedObjects") or {}).get("Listeners") or {}).get(
                        "Listener"
                    ) or ()
                    ports = [int(li["Port"]) for li in listeners if li.get("Port") is not None]
        return _Discovered(time.monotonic(), load_balancer=lb_id, listener_ports=tuple(sorted(set(ports))))

    async def _discover_nlb(self, group: ServerGroup) -> _Discovered:
        answer = await self._call("nlb", "ListServerGroups", {"ServerGroupIds": [group.group_id]})
        matches = [g for g in answer.get("ServerGroups") or () if g.get("ServerGroupId") == group.group_id]
        if not matches:
            raise ProviderError(
                f"NLB server group {group.group_id} does not exist in {self.region}", permanent=True
            )
        info = matches[0]
        if info.get("ServerGroupType") != "Ip":
            raise ProviderError(
                f"NLB server group {group.group_id} has ServerGroupType {info.get('ServerGroupType')!r}; "
                "podgate adds pod IPs and needs an 'Ip' server group",
                permanent=True,
            )
        if info.get("AnyPortEnabled"):
            raise ProviderError(
                f"NLB server group {group.group_id} forwards all ports (AnyPortEnabled); podgate adds "
                "pod IP and port pairs and needs a group with ports",
                permanent=True,
            )
        check = info.get("HealthCheck") or {}
        floor = float(check.get("HealthCheckInterval") or 0) * float(check.get("HealthyThreshold") or 0)
        balancers = list(info.get("RelatedLoadBalancerIds") or ())
        listeners: list[str] = []
        for chunk in _batches(balancers, NLB_LB_IDS):
            token: str | None = None
            while True:
                page = await self._call(
                    "nlb",
                    "ListListeners",
                    {
                        "LoadBalancerIds": list(chunk),
                        "MaxResults": PAGE,
                        **({"NextToken": token} if token else {}),
                    },
                )
                listeners += [
                    str(li["ListenerId"])
                    for li in page.get("Listeners") or ()
                    if li.get("ServerGroupId") == group.group_id
                ]
                token = page.get("NextToken")
                if not token:
                    break
        return _Discovered(time.monotonic(), listeners=tuple(sorted(set(listeners))), floor=floor)

    async def release(self, service_key: str) -> None:
        """The Service is gone or no longer podgate's: its pods leave its groups (the groups
        themselves are the user's and stay), and podgate's claim on them ends."""
        for gid, (owner, group) in list(self._owners.items()):
            if owner != service_key:
                continue
            present = await self.targets_of(group)
            await self._remove(group, list(present))
            del self._owners[gid]
            self._discovered.pop(gid, None)

    async def provisioned(self) -> set[str]:
        return set()

    async def targets(self, pool: PoolSpec) -> dict[Target, TargetState]:
        return await self.targets_of(self._group(pool))

    async def targets_of(self, group: ServerGroup) -> dict[Target, TargetState]:
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
        found = await self._discover(group)
        where = f"CLB {found.load_balancer} vServer group {group.group_id}"
        checks: dict[Target, list[dict[str, Any]]] = {}
        if backends and found.load_balancer and found.listener_ports:
            health = await self._call("clb", "DescribeHealthStatus", {"LoadBalancerId": found.load_balancer})
            for entry in (health.get("BackendServers") or {}).get("BackendServer") or ():
                if entry.get("ServerIp") and entry.get("Port") is not None:
                    target = Target(str(entry["ServerIp"]), int(entry["Port"]))
                    mine = backends.get(target)
                    # another group's backend on the same IP and port is not this one
                    if mine is not None and entry.get("ServerId") in (None, mine.get("ServerId")):
                        checks.setdefault(target, []).append(entry)
        return {t: clb_target(b, checks.get(t, []), found.listener_ports, where) for t, b in backends.items()}

    async def _nlb_targets(self, group: ServerGroup) -> dict[Target, TargetState]:
        gid = group.group_id
        servers: dict[Target, dict[str, Any]] = {}
        removing: set[Target] = set()
        token: str | None = None
        while True:
            page = await self._call(
                "nlb",
                "ListServerGroupServers",
                {"ServerGroupId": gid, "MaxResults": PAGE, **({"NextToken": token} if token else {})},
            )
            for s in page.get("Servers") or ():
                if s.get("ServerType") != "Ip" or not s.get("ServerIp"):
                    continue
                target = Target(str(s["ServerIp"]), int(s.get("Port") or 0))
                if s.get("Status") == "Removing":
                    removing.add(target)  # on its way out: neither a target nor to remove again
                else:
                    servers[target] = s
            token = page.get("NextToken")
            if not token:
                break
        self._seen[gid], self._removing[gid] = servers, removing
        now = time.monotonic()
        for target, s in servers.items():
            if s.get("Status") == "Available":
                self._available_since.setdefault((gid, target), now)
            else:
                self._available_since.pop((gid, target), None)
        for key in [k for k in self._available_since if k[0] == gid and k[1] not in servers]:
            del self._available_since[key]
        found = await self._discover(group)
        report = await self._listener_report(gid, found) if servers else ListenerReport()
        where = f"NLB server group {gid}"
        return {
            t: nlb_target(s, report, now - self._available_since.get((gid, t), now), where)
            for t, s in servers.items()
        }

    async def _listener_report(self, gid: str, found: _Discovered) -> ListenerReport:
        """Every page of every forwarding listener's health, for this group only."""
        non_normal: dict[str, dict[str, Any]] = {}
        reported: set[str] = set()
        for listener in found.listeners:
            token: str | None = None
            while True:
                answer = await self._call(
                    "nlb",
                    "GetListenerHealthStatus",
                    {"ListenerId": listener, "MaxResults": PAGE, **({"NextToken": token} if token else {})},
                )
                for status in answer.get("ListenerHealthStatus") or ():
                    for info in status.get("ServerGroupInfos") or ():
                        if info.get("ServerGroupId") != gid:
                            continue
                        reported.add(listener)
                        for bad in info.get("NonNormalServers") or ():
                            key = f"{bad.get('ServerIp') or bad.get('ServerId')}:{bad.get('Port')}"
                            non_normal.setdefault(key, {**bad, "_listener": listener})
                token = answer.get("NextToken")
                if not token:
                    break
        silent = tuple(li for li in found.listeners if li not in reported)
        if silent:
            self._discovered.pop(gid, None)  # re-read what the group is attached to next time
        return ListenerReport(found.listeners, silent, non_normal, found.floor)

    async def register(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        """Absent targets are added at full weight; draining ones (weight 0) get it back.  An NLB
        server still being removed is left until its removal job ends, then added."""
        group = self._group(pool)
        seen = self._seen.get(group.group_id, {})
        removing = self._removing.get(group.group_id, set())
        back = [t for t in targets if t in seen]
        new = [t for t in targets if t not in seen and t not in removing]
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
        for chunk in _batches([t for t in new if t.ip in enis], CLB_BATCH):
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
            try:
                await self._call(
                    "clb",
                    "AddVServerGroupBackendServers",
                    {"VServerGroupId": group.group_id, "BackendServers": json.dumps(servers)},
                )
            except ProviderError:
                for t in chunk:  # the IP may have moved to another ENI: look it up again next time
                    self._enis.pop(t.ip, None)
                raise
        missing = sorted({t.ip for t in new} - set(enis))
        if missing:
            raise ProviderError(
                f"no ENI in {self.region} holds pod IP(s) {', '.join(missing)}: a CLB vServer group "
                "takes pods as ENI backends, which needs ENI-mode (Terway) pod networking"
            )

    async def _enis_of(self, ips: set[str]) -> dict[str, str]:
        """Pod IP → the ENI holding it: secondary IPs in batches, then primary IPs one by one
        (exclusive-ENI pods), each answer kept until the backend is removed."""
        todo = sorted(ips - set(self._enis))
        for chunk in _batches(todo, ENI_BATCH):
            params = {f"PrivateIpAddress.{i}": ip for i, ip in enumerate(chunk, 1)}
            self._learn_enis(
                await self._call("ecs", "DescribeNetworkInterfaces", {**params, "MaxResults": 500}), chunk
            )
        for ip in sorted(ips - set(self._enis)):
            self._learn_enis(
                await self._call("ecs", "DescribeNetworkInterfaces", {"PrimaryIpAddress": ip}), [ip]
            )
        return {ip: self._enis[ip] for ip in ips if ip in self._enis}

    def _learn_enis(self, answer: Mapping[str, Any], wanted: Sequence[str]) -> None:
        for eni in (answer.get("NetworkInterfaceSets") or {}).get("NetworkInterfaceSet") or ():
            owned = [
                p.get("PrivateIpAddress") for p in (eni.get("PrivateIpSets") or {}).get("PrivateIpSet") or ()
            ]
            for ip in [eni.get("PrivateIpAddress"), *owned]:
                if ip in wanted:
                    self._enis[str(ip)] = str(eni["NetworkInterfaceId"])

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
        await self._remove(self._group(pool), targets)

    async def _remove(self, group: ServerGroup, targets: Sequence[Target]) -> None:
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
            for t in chunk:  # the pod is gone; its IP may come back on another ENI
                self._enis.pop(t.ip, None)

    async def generation(self) -> str:
        return self.name  # nothing of podgate's state is lost on the cloud's side


def _describe(e: BaseException) -> str:
    """The SDK's exception in one line: the cloud's code and message, or why it was not reached."""
    code = getattr(e, "code", None)
    if code:
        return f"{code}: {getattr(e, 'message', None) or e}"
    if isinstance(e, TimeoutError):
        return "no answer within the deadline"
    inner = getattr(e, "inner_exception", None) or e.__cause__ or e
    text = getattr(inner, "message", None) or str(inner) or type(inner).__name__
    return f"cannot reach the API: {text}"
