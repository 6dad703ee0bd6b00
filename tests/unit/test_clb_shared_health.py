"""CLB: the vServer groups of one load balancer share its DescribeHealthStatus answer (it
covers them all), for the configured age, and read it afresh after a change to any of them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

from podgate.model.lb import Health, Target
from podgate.providers.alibaba.clb import Clb
from podgate.providers.alibaba.ecs import Enis
from podgate.providers.alibaba.transport import Transport

GROUPS = {"rsp-a": ("10.0.0.1", 80), "rsp-b": ("10.0.0.2", 81)}  # group → its one backend, listener


class FakeTransport:
    """The CLB answers of one load balancer, ``lb-1``, with two groups behind two listeners."""

    region = "cn-hangzhou"

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def call(self, product: str, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(action)
        await asyncio.sleep(0)
        if action == "DescribeVServerGroupAttribute":
            ip, _ = GROUPS[params["VServerGroupId"]]
            backend = {
                "ServerId": f"eni-{ip}",
                "Type": "eni",
                "ServerIp": ip,
                "Port": 8080,
                "Weight": 100,
                "Description": OWNER,
            }
            return {"LoadBalancerId": "lb-1", "BackendServers": {"BackendServer": [backend]}}
        if action == "DescribeVServerGroups":
            groups = [
                {"VServerGroupId": g, "AssociatedObjects": {"Listeners": {"Listener": [{"Port": port}]}}}
                for g, (_, port) in GROUPS.items()
            ]
            return {"VServerGroups": {"VServerGroup": groups}}
        if action == "DescribeHealthStatus":
            entries = [
                {
                    "ServerId": f"eni-{ip}",
                    "ServerIp": ip,
                    "Port": 8080,
                    "ListenerPort": port,
                    "ServerHealthStatus": "normal",
                }
                for ip, port in GROUPS.values()
            ]
            return {"BackendServers": {"BackendServer": entries}}
        if action == "SetVServerGroupAttribute":
            return {}
        raise AssertionError(action)


OWNER = "podgate/shop/web"


def clb(age: float) -> tuple[Clb, FakeTransport]:
    fake = FakeTransport()
    transport = cast(Transport, fake)
    return Clb(transport, Enis(transport), health_age=age), fake


async def test_groups_of_one_load_balancer_share_its_health_read() -> None:
    c, fake = clb(10.0)
    a, b = await asyncio.gather(c.targets("rsp-a", OWNER), c.targets("rsp-b", OWNER))
    assert a[Target("10.0.0.1", 8080)].health.health is Health.HEALTHY
    assert b[Target("10.0.0.2", 8080)].health.health is Health.HEALTHY
    await c.targets("rsp-a", OWNER)
    assert fake.calls.count("DescribeHealthStatus") == 1
    assert fake.calls.count("DescribeVServerGroupAttribute") >= 3  # each group's backends: its own


async def test_a_change_to_one_group_makes_the_next_health_read_fresh() -> None:
    c, fake = clb(10.0)
    await c.targets("rsp-a", OWNER)
    await c.set_weight("rsp-a", [Target("10.0.0.1", 8080)], 0)
    await c.targets("rsp-b", OWNER)
    assert fake.calls.count("DescribeHealthStatus") == 2


async def test_age_zero_shares_only_a_read_in_flight() -> None:
    c, fake = clb(0.0)
    await c.targets("rsp-a", OWNER)
    await c.targets("rsp-b", OWNER)
    assert fake.calls.count("DescribeHealthStatus") == 2
