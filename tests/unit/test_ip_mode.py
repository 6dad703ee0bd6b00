"""``status.loadBalancer.ingress[].ipMode: Proxy`` on the addresses podgate provisions: the load
balancer (HAProxy) terminates connections, so kube-proxy must not send in-cluster clients'
traffic for the address straight to the pods (KEP-1860)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from podgate.kube.api import PODS, SERVICES
from podgate.model import lb
from tests.unit.world import NS, World, pod, service

CIDR = "127.240.0.0/24"


def with_ingress(*items: dict[str, Any]) -> Any:
    s = service()
    s["status"] = {"loadBalancer": {"ingress": list(items)}}
    return s


PROXY = {"status": {"loadBalancer": {"ingress": [{"ip": "127.240.0.1", "ipMode": "Proxy"}]}}}


@pytest.mark.parametrize(
    ("current", "kept", "want"),
    [
        (service(), True, PROXY),
        (with_ingress({"ip": "127.240.0.1", "ipMode": "Proxy"}), True, None),
        # written by an earlier podgate (or another writer) without the field: added
        (with_ingress({"ip": "127.240.0.1"}), True, PROXY),
        (with_ingress({"ip": "127.240.0.1", "ipMode": "VIP"}), True, PROXY),
        (with_ingress({"ip": "127.240.0.2", "ipMode": "Proxy"}), True, PROXY),
        # an API server that drops the field: the address alone decides
        (with_ingress({"ip": "127.240.0.1"}), False, None),
        (with_ingress({"ip": "127.240.0.2"}), False, PROXY),
    ],
)
def test_ingress_patch(current: Any, kept: bool, want: Any) -> None:
    assert lb.ingress_patch(current, "127.240.0.1", ip_mode_kept=kept) == want


def status_writes(world: World) -> list[Any]:
    return [w.body for w in world.kube.writes if w.resource == "services/status"]


async def test_the_provisioned_address_is_published_with_ip_mode_proxy_once() -> None:
    world = World(lb_cidr=CIDR)
    world.add(SERVICES, service())
    world.add(PODS, pod("p1"))
    await world.reconcile()
    published = (world.kube.object(SERVICES, "web", NS) or {})["status"]["loadBalancer"]["ingress"]
    assert len(published) == 1 and published[0]["ipMode"] == "Proxy"
    assert published[0]["ip"].startswith("127.240.0.")
    assert ("Service", "web", "EnsuredLoadBalancer", "Normal") in world.recorder.events
    await world.reconcile()
    assert status_writes(world) == [] and world.recorder.events == []


async def test_an_address_published_without_ip_mode_gets_it_without_a_new_event() -> None:
    """A Service an earlier podgate gave its EXTERNAL-IP keeps the address and gains ipMode."""
    world = World(lb_cidr=CIDR)
    world.add(SERVICES, with_ingress({"ip": "127.240.0.7"}))
    world.add(PODS, pod("p1"))
    await world.reconcile()
    assert status_writes(world) == [
        {"status": {"loadBalancer": {"ingress": [{"ip": "127.240.0.7", "ipMode": "Proxy"}]}}}
    ]
    assert [e for e in world.recorder.events if e[2] == "EnsuredLoadBalancer"] == []


async def test_an_api_server_that_drops_ip_mode_is_written_once_and_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before 1.30 (or with LoadBalancerIPMode off) the API server drops the field: harmless to
    the address, but podgate must not write the status again on every pass."""
    world = World(lb_cidr=CIDR)
    patch = world.kube.patch

    async def dropping(*args: Any, **kwargs: Any) -> Any:
        body = args[2]
        for item in ((body.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ():
            item.pop("ipMode", None)
        return await patch(*args, **kwargs)

    world.kube.patch = dropping  # type: ignore[method-assign]
    world.add(SERVICES, service())
    world.add(PODS, pod("p1"))
    with caplog.at_level(logging.WARNING, logger="podgate.controller.reconciler"):
        await world.reconcile()
        assert len(status_writes(world)) == 1
        await world.reconcile()
        assert status_writes(world) == []
    assert [r.message for r in caplog.records].count(
        "the API server dropped status.loadBalancer.ingress[].ipMode (Kubernetes before 1.30, "
        "or LoadBalancerIPMode off): kube-proxy may send in-cluster clients' traffic for "
        "load-balancer addresses straight to the pods"
    ) == 1
    ingress = (world.kube.object(SERVICES, "web", NS) or {})["status"]["loadBalancer"]["ingress"]
    assert ingress[0]["ip"].startswith("127.240.0.") and "ipMode" not in ingress[0]
