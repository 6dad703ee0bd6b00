"""NLB server groups of type ``Ip``: pods go in as they are (``ServerType: Ip``).

Health is the listeners': ``GetListenerHealthStatus`` lists only the servers that are *not*
normal (``Initial``, ``Unhealthy`` with a ``ReasonCode``, ``Unavailable``), paged.  So a server
is healthy only when it is ``Available`` in its group, every listener forwarding to the group
answered *for that group* (all pages read) without listing it, and it has been ``Available`` for
at least the group's health-check interval × healthy threshold (the soonest a new server can
pass: absence from the list must not be mistaken for a verdict before the first checks).
Draining is weight 0.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from podgate.model.lb import Target
from podgate.providers.alibaba.mapping import DISCOVERY_TTL, WEIGHT, ListenerReport, nlb_target
from podgate.providers.alibaba.transport import Transport, batches
from podgate.providers.base import ProviderError, TargetState

NLB_BATCH = 200  # servers per NLB call: the API's limit
NLB_LB_IDS = 20  # load balancer ids per ListListeners call: the API's limit


@dataclass(frozen=True)
class _Discovered:
    """What a server group is attached to, read once per :data:`DISCOVERY_TTL`."""

    at: float
    listeners: tuple[str, ...] = ()  # forwarding to the server group
    floor: float = 0.0  # health-check interval × healthy threshold


class Nlb:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._discovered: dict[str, _Discovered] = {}
        #: the group's Ip servers as last read: whether they are already there (at weight 0)
        self._seen: dict[str, dict[Target, dict[str, Any]]] = {}
        self._removing: dict[str, set[Target]] = {}  # servers whose removal job runs
        self._available_since: dict[tuple[str, Target], float] = {}

    async def discover(self, gid: str) -> _Discovered:
        """Check the group suits podgate; find the listeners forwarding to it."""
        known = self._discovered.get(gid)
        if known is not None and time.monotonic() - known.at < DISCOVERY_TTL:
            return known
        answer = await self.transport.call("nlb", "ListServerGroups", {"ServerGroupIds": [gid]})
        matches = [g for g in answer.get("ServerGroups") or () if g.get("ServerGroupId") == gid]
        if not matches:
            raise ProviderError(
                f"NLB server group {gid} does not exist in {self.transport.region}", permanent=True
            )
        info = matches[0]
        if info.get("ServerGroupType") != "Ip":
            raise ProviderError(
                f"NLB server group {gid} has ServerGroupType {info.get('ServerGroupType')!r}; "
                "podgate adds pod IPs and needs an 'Ip' server group",
                permanent=True,
            )
        if info.get("AnyPortEnabled"):
            raise ProviderError(
                f"NLB server group {gid} forwards all ports (AnyPortEnabled); podgate adds "
                "pod IP and port pairs and needs a group with ports",
                permanent=True,
            )
        check = info.get("HealthCheck") or {}
        floor = float(check.get("HealthCheckInterval") or 0) * float(check.get("HealthyThreshold") or 0)
        balancers = list(info.get("RelatedLoadBalancerIds") or ())
        listeners: list[str] = []
        for chunk in batches(balancers, NLB_LB_IDS):
            async for page in self.transport.pages("nlb", "ListListeners", {"LoadBalancerIds": list(chunk)}):
                listeners += [
                    str(li["ListenerId"])
                    for li in page.get("Listeners") or ()
                    if li.get("ServerGroupId") == gid
                ]
        found = _Discovered(time.monotonic(), listeners=tuple(sorted(set(listeners))), floor=floor)
        self._discovered[gid] = found
        return found

    def forget(self, gid: str) -> None:
        self._discovered.pop(gid, None)

    async def targets(self, gid: str, owner: str) -> dict[Target, TargetState]:
        """The group's ``Ip`` servers whose description is ``owner`` (podgate's for the Service):
        another's server is neither listed nor ever changed."""
        servers: dict[Target, dict[str, Any]] = {}
        removing: set[Target] = set()
        async for page in self.transport.pages("nlb", "ListServerGroupServers", {"ServerGroupId": gid}):
            for s in page.get("Servers") or ():
                if s.get("ServerType") != "Ip" or not s.get("ServerIp") or s.get("Description") != owner:
                    continue
                target = Target(str(s["ServerIp"]), int(s.get("Port") or 0))
                if s.get("Status") == "Removing":
                    removing.add(target)  # on its way out: neither a target nor to remove again
                else:
                    servers[target] = s
        self._seen[gid], self._removing[gid] = servers, removing
        now = time.monotonic()
        for target, s in servers.items():
            if s.get("Status") == "Available":
                self._available_since.setdefault((gid, target), now)
            else:
                self._available_since.pop((gid, target), None)
        for key in [k for k in self._available_since if k[0] == gid and k[1] not in servers]:
            del self._available_since[key]
        found = await self.discover(gid)
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
            async for answer in self.transport.pages(
                "nlb", "GetListenerHealthStatus", {"ListenerId": listener}
            ):
                for status in answer.get("ListenerHealthStatus") or ():
                    for info in status.get("ServerGroupInfos") or ():
                        if info.get("ServerGroupId") != gid:
                            continue
                        reported.add(listener)
                        for bad in info.get("NonNormalServers") or ():
                            key = f"{bad.get('ServerIp') or bad.get('ServerId')}:{bad.get('Port')}"
                            non_normal.setdefault(key, {**bad, "_listener": listener})
        silent = tuple(li for li in found.listeners if li not in reported)
        if silent:
            self.forget(gid)  # re-read what the group is attached to next time
        return ListenerReport(found.listeners, silent, non_normal, found.floor)

    async def register(self, gid: str, targets: Sequence[Target], description: str) -> None:
        """Absent targets are added at full weight; draining ones (weight 0) get it back.  A
        server still being removed is left until its removal job ends, then added."""
        seen, removing = self._seen.get(gid, {}), self._removing.get(gid, set())
        back = [t for t in targets if t in seen]
        new = [t for t in targets if t not in seen and t not in removing]
        if back:
            await self.set_weight(gid, back, WEIGHT)
        for chunk in batches(new, NLB_BATCH):
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
            await self.transport.call(
                "nlb", "AddServersToServerGroup", {"ServerGroupId": gid, "Servers": servers}
            )

    async def set_weight(self, gid: str, targets: Sequence[Target], weight: int) -> None:
        seen = self._seen.get(gid, {})
        for chunk in batches([t for t in targets if t in seen], NLB_BATCH):
            servers = [
                {"ServerId": t.ip, "ServerType": "Ip", "ServerIp": t.ip, "Port": t.port, "Weight": weight}
                for t in chunk
            ]
            await self.transport.call(
                "nlb", "UpdateServerGroupServersAttribute", {"ServerGroupId": gid, "Servers": servers}
            )

    async def remove(self, gid: str, targets: Sequence[Target]) -> None:
        seen = self._seen.get(gid, {})
        for chunk in batches([t for t in targets if t in seen], NLB_BATCH):
            servers = [
                {"ServerId": t.ip, "ServerType": "Ip", "ServerIp": t.ip, "Port": t.port} for t in chunk
            ]
            await self.transport.call(
                "nlb", "RemoveServersFromServerGroup", {"ServerGroupId": gid, "Servers": servers}
            )
