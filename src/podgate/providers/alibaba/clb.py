"""CLB vServer groups: pods are ``eni`` backends (``ServerId`` the ENI holding the pod IP,
``ServerIp`` the pod IP).  Health is ``DescribeHealthStatus`` of the group's load balancer,
counted only for the listeners that forward to this group: ``normal`` on every one of them, or
not healthy.  Draining is weight 0; ECS instances in the same group are left alone.

That health answer covers every vServer group of the load balancer, so the groups of one CLB
(several Services behind one instance, a listener each) share it: one ``DescribeHealthStatus``
per load balancer and half a poll interval, however many of its groups are polled, and a fresh
one after any change podgate makes to one of them."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from podgate.model.lb import Target
from podgate.providers.alibaba.ecs import Enis
from podgate.providers.alibaba.mapping import DISCOVERY_TTL, WEIGHT, clb_target
from podgate.providers.alibaba.transport import Transport, batches
from podgate.providers.base import ProviderError, TargetState
from podgate.providers.reads import SharedReads

CLB_BATCH = 20  # backend servers per CLB call: the API's limit


@dataclass(frozen=True)
class _Discovered:
    """What a vServer group is attached to, read once per :data:`DISCOVERY_TTL`."""

    at: float
    load_balancer: str | None = None
    listener_ports: tuple[int, ...] = ()  # of the listeners forwarding to the group


class Clb:
    def __init__(self, transport: Transport, enis: Enis, *, health_age: float = 0.0) -> None:
        """``health_age``: seconds a load balancer's health answer serves its other groups
        (0: only a read in flight is shared)."""
        self.transport, self.enis = transport, enis
        self.health_age = health_age
        self._health: SharedReads[dict[str, Any]] = SharedReads()
        self._discovered: dict[str, _Discovered] = {}
        #: the group's ENI backends as last read: register/drain/remove need their ServerId
        #: (the ENI) and whether they are already there (at weight 0) or absent
        self._seen: dict[str, dict[Target, dict[str, Any]]] = {}

    async def discover(self, gid: str) -> _Discovered:
        known = self._discovered.get(gid)
        if known is not None and time.monotonic() - known.at < DISCOVERY_TTL:
            return known
        attr = await self.transport.call("clb", "DescribeVServerGroupAttribute", {"VServerGroupId": gid})
        lb_id = attr.get("LoadBalancerId")
        ports: list[int] = []
        if lb_id:
            answer = await self.transport.call(
                "clb", "DescribeVServerGroups", {"LoadBalancerId": lb_id, "IncludeListener": True}
            )
            for g in (answer.get("VServerGroups") or {}).get("VServerGroup") or ():
                if g.get("VServerGroupId") == gid:
                    listeners = ((g.get("AssociatedObjects") or {}).get("Listeners") or {}).get(
                        "Listener"
                    ) or ()
                    ports = [int(li["Port"]) for li in listeners if li.get("Port") is not None]
        found = _Discovered(time.monotonic(), load_balancer=lb_id, listener_ports=tuple(sorted(set(ports))))
        self._discovered[gid] = found
        return found

    def forget(self, gid: str) -> None:
        self._discovered.pop(gid, None)

    async def targets(self, gid: str, owner: str) -> dict[Target, TargetState]:
        """The group's ``eni`` backends whose description is ``owner`` (podgate's for the
        Service): another's backend is neither listed nor ever changed."""
        attr = await self.transport.call("clb", "DescribeVServerGroupAttribute", {"VServerGroupId": gid})
        backends = {
            Target(str(b["ServerIp"]), int(b["Port"])): b
            for b in (attr.get("BackendServers") or {}).get("BackendServer") or ()
            if b.get("Type") == "eni" and b.get("ServerIp") and b.get("Description") == owner
        }
        self._seen[gid] = backends
        found = await self.discover(gid)
        where = f"CLB {found.load_balancer} vServer group {gid}"
        checks: dict[Target, list[dict[str, Any]]] = {}
        if backends and found.load_balancer and found.listener_ports:
            lb_id = found.load_balancer
            health = await self._health.get(
                lb_id,
                lambda: self.transport.call("clb", "DescribeHealthStatus", {"LoadBalancerId": lb_id}),
                self.health_age,
            )
            for entry in (health.get("BackendServers") or {}).get("BackendServer") or ():
                if entry.get("ServerIp") and entry.get("Port") is not None:
                    target = Target(str(entry["ServerIp"]), int(entry["Port"]))
                    mine = backends.get(target)
                    # another group's backend on the same IP and port is not this one
                    if mine is not None and entry.get("ServerId") in (None, mine.get("ServerId")):
                        checks.setdefault(target, []).append(entry)
        return {t: clb_target(b, checks.get(t, []), found.listener_ports, where) for t, b in backends.items()}

    def _changed(self, gid: str) -> None:
        """A group changed: its load balancer's health is read afresh next time."""
        found = self._discovered.get(gid)
        if found is not None and found.load_balancer:
            self._health.drop(found.load_balancer)

    async def register(self, gid: str, targets: Sequence[Target], description: str) -> None:
        """Absent targets are added at full weight (on the ENI holding their IP); draining ones
        (weight 0) get it back."""
        try:
            await self._register(gid, targets, description)
        finally:
            self._changed(gid)

    async def _register(self, gid: str, targets: Sequence[Target], description: str) -> None:
        seen = self._seen.get(gid, {})
        back = [t for t in targets if t in seen]
        new = [t for t in targets if t not in seen]
        if back:
            await self.set_weight(gid, back, WEIGHT)
        if not new:
            return
        enis = await self.enis.of({t.ip for t in new})
        for chunk in batches([t for t in new if t.ip in enis], CLB_BATCH):
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
                await self.transport.call(
                    "clb",
                    "AddVServerGroupBackendServers",
                    {"VServerGroupId": gid, "BackendServers": json.dumps(servers)},
                )
            except ProviderError:
                for t in chunk:  # the IP may have moved to another ENI: look it up again next time
                    self.enis.forget(t.ip)
                raise
        missing = sorted({t.ip for t in new} - set(enis))
        if missing:
            raise ProviderError(
                f"no ENI in {self.transport.region} holds pod IP(s) {', '.join(missing)}: a CLB "
                "vServer group takes pods as ENI backends, which needs ENI-mode (Terway) pod networking"
            )

    async def set_weight(self, gid: str, targets: Sequence[Target], weight: int) -> None:
        try:
            await self._set_weight(gid, targets, weight)
        finally:
            self._changed(gid)

    async def _set_weight(self, gid: str, targets: Sequence[Target], weight: int) -> None:
        seen = self._seen.get(gid, {})
        for chunk in batches([t for t in targets if t in seen], CLB_BATCH):
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
            await self.transport.call(
                "clb",
                "SetVServerGroupAttribute",
                {"VServerGroupId": gid, "BackendServers": json.dumps(servers)},
            )

    async def remove(self, gid: str, targets: Sequence[Target]) -> None:
        try:
            await self._remove(gid, targets)
        finally:
            self._changed(gid)

    async def _remove(self, gid: str, targets: Sequence[Target]) -> None:
        seen = self._seen.get(gid, {})
        for chunk in batches([t for t in targets if t in seen], CLB_BATCH):
            servers = [
                {"ServerId": seen[t]["ServerId"], "Type": "eni", "ServerIp": t.ip, "Port": t.port}
                for t in chunk
            ]
            await self.transport.call(
                "clb",
                "RemoveVServerGroupBackendServers",
                {"VServerGroupId": gid, "BackendServers": json.dumps(servers)},
            )
            for t in chunk:  # the pod is gone; its IP may come back on another ENI
                self.enis.forget(t.ip)
