"""ECS: which ENI holds a pod IP.  A CLB vServer group takes pods as ``eni`` backends
(``ServerId`` the ENI, ``ServerIp`` the pod IP), which is how ENI-mode (Terway) pods are
load-balanced; podgate asks ECS once per pod IP and keeps the answer for the pod's life."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from podgate.providers.alibaba.transport import Transport, batches

ENI_BATCH = 100  # private IPs per DescribeNetworkInterfaces call


class Enis:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._enis: dict[str, str] = {}  # pod IP → ENI id; dropped when the backend goes

    async def of(self, ips: set[str]) -> dict[str, str]:
        """Pod IP → the ENI holding it: secondary IPs in batches, then primary IPs one by one
        (exclusive-ENI pods), each answer kept until :meth:`forget`."""
        todo = sorted(ips - set(self._enis))
        for chunk in batches(todo, ENI_BATCH):
            params = {f"PrivateIpAddress.{i}": ip for i, ip in enumerate(chunk, 1)}
            self._learn(
                await self.transport.call("ecs", "DescribeNetworkInterfaces", {**params, "MaxResults": 500}),
                chunk,
            )
        for ip in sorted(ips - set(self._enis)):
            self._learn(
                await self.transport.call("ecs", "DescribeNetworkInterfaces", {"PrimaryIpAddress": ip}), [ip]
            )
        return {ip: self._enis[ip] for ip in ips if ip in self._enis}

    def forget(self, ip: str) -> None:
        """The backend is gone or could not be added: its IP may come back on another ENI."""
        self._enis.pop(ip, None)

    def _learn(self, answer: Mapping[str, Any], wanted: Sequence[str]) -> None:
        for eni in (answer.get("NetworkInterfaceSets") or {}).get("NetworkInterfaceSet") or ():
            owned = [
                p.get("PrivateIpAddress") for p in (eni.get("PrivateIpSets") or {}).get("PrivateIpSet") or ()
            ]
            for ip in [eni.get("PrivateIpAddress"), *owned]:
                if ip in wanted:
                    self._enis[str(ip)] = str(eni["NetworkInterfaceId"])
