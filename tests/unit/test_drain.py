"""The drain endpoint (podgate.webhook.drain) on FakeKube and FakeProvider: a preStop hook is
answered once the load balancer has drained the pod, or when the pod's drain budget passes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from podgate.kube.api import PODS, SERVICES
from podgate.model import gates
from podgate.model.lb import PoolSpec, Target, pools_for
from podgate.providers.base import ProviderError, TargetState
from podgate.providers.fake import FakeProvider
from podgate.webhook.drain import MAX_BUDGET, ROUTE, DrainEndpoint
from tests.unit.world import NS, World, pod, service

TARGET = Target("10.0.0.1", 8080)


def draining_pod(name: str = "p1", ip: str = "10.0.0.1", token: str = "tok-p1", grace: int = 30) -> Any:
    p = pod(name, ip=ip, terminating=True)
    p["metadata"]["annotations"] = {gates.DRAIN_TOKEN_ANNOTATION: token}
    p["metadata"]["deletionGracePeriodSeconds"] = grace
    return p


class Clock:
    """The drain budget's time, advanced by the endpoint's own waits: a test of the budget
    neither waits for it nor depends on how busy the machine is."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def world_with(
    *pods: Any, provider: FakeProvider | None = None, clock: Clock | None = None, max_waiting: int = 100
) -> tuple[World, DrainEndpoint, list[str]]:
    """A Service whose pods are registered (and healthy), then the given pods as they are now."""
    world = World(provider)
    world.add(SERVICES, service())
    for p in pods:
        live = {**p, "metadata": {k: v for k, v in p["metadata"].items() if k != "deletionTimestamp"}}
        world.add(PODS, live)
    await world.reconcile()  # registers the targets
    for p in pods:
        world.kube.add(PODS, p)
    await world.sync()
    seen: list[str] = []
    endpoint = DrainEndpoint(
        world.kube,
        world.pods,
        world.services,
        world.resolutions,
        world.recorder,
        observe=lambda result, seconds: seen.append(result),
        poll=0.02,
        max_waiting=max_waiting,
        **({"clock": clock, "sleep": clock.sleep} if clock else {}),
    )
    return world, endpoint, seen


async def test_a_target_in_rotation_is_drained_by_the_call_and_answered_once_idle() -> None:
    world, endpoint, _ = await world_with(draining_pod())
    outcome = await endpoint.drain_token(NS, "tok-p1")
    assert outcome.result == "drained" and outcome.targets == [str(TARGET)]
    assert ("drain", f"{NS}/web", (str(TARGET),)) in world.provider.calls
    assert world.provider.pools[(f"{NS}/web", 80)][TARGET].admin == "drain"


async def test_the_answer_waits_for_connections_in_flight() -> None:
    world, endpoint, _ = await world_with(draining_pod())
    world.provider.sessions[TARGET] = 2

    async def finish() -> None:
        await asyncio.sleep(0.3)
        world.provider.sessions[TARGET] = 0

    started = time.monotonic()
    finishing = asyncio.create_task(finish())
    outcome = await endpoint.drain_token(NS, "tok-p1")
    await finishing
    assert outcome.result == "drained"
    assert 0.3 <= time.monotonic() - started < 1.0


async def test_a_provider_that_counts_no_connections_is_drained_when_the_target_has_left() -> None:
    """ELB drops a target when its draining ends; podgate removes Alibaba's weight-0 backends."""
    world, endpoint, _ = await world_with(draining_pod(), provider=FakeProvider(drained_when_removed=True))
    pool = pools_for(world.services.cache[f"{NS}/web"])[0]

    async def leave() -> None:
        await asyncio.sleep(0.3)
        await world.provider.deregister(pool, [TARGET])

    leaving = asyncio.create_task(leave())
    outcome = await endpoint.drain_token(NS, "tok-p1")
    await leaving
    assert outcome.result == "drained" and outcome.waited >= 0.3


async def test_the_budget_passing_answers_anyway_with_a_warning_event() -> None:
    clock = Clock()
    world, endpoint, _ = await world_with(draining_pod(grace=3), clock=clock)  # budget: 3 - 2 = 1 s
    world.provider.sessions[TARGET] = 1  # never finishes
    started = clock()
    outcome = await endpoint.drain_token(NS, "tok-p1")
    assert outcome.result == "timeout"
    assert clock() - started == pytest.approx(1.0) and outcome.waited == pytest.approx(1.0)
    assert "1 connection(s)" in outcome.message and "3s grace period" in outcome.message
    assert ("Pod", "p1", "DrainTimedOut", "Warning") in world.recorder.events


async def test_a_pod_with_no_targets_is_answered_at_once() -> None:
    lonely = draining_pod()
    lonely["metadata"]["labels"] = {"app": "batch"}
    _, endpoint, _ = await world_with(lonely)
    outcome = await endpoint.drain_token(NS, "tok-p1")
    assert outcome.result == "no_targets"


async def test_a_pod_the_cache_does_not_show_terminating_yet_is_read_from_the_api() -> None:
    """The kubelet saw the deletion before this replica's watch did."""
    p = draining_pod()
    world, endpoint, _ = await world_with(p)
    stale = {**p, "metadata": {k: v for k, v in p["metadata"].items() if k != "deletionTimestamp"}}
    world.pods.cache[f"{NS}/p1"] = stale
    assert (await endpoint.drain_token(NS, "tok-p1")).result == "drained"


async def test_a_container_restart_drains_nothing() -> None:
    """preStop also runs before a liveness restart: the pod stays, and so does its target."""
    p = draining_pod()
    del p["metadata"]["deletionTimestamp"]
    world, endpoint, _ = await world_with(p)
    outcome = await endpoint.drain_token(NS, "tok-p1")
    assert outcome.result == "not_terminating"
    assert not any(call[0] == "drain" for call in world.provider.calls)


async def test_load_balancer_errors_are_retried_until_the_budget() -> None:
    world, endpoint, _ = await world_with(draining_pod())
    world.provider.fail("targets", ProviderError("socket busy"), times=3)
    outcome = await endpoint.drain_token(NS, "tok-p1")
    assert outcome.result == "drained"


async def test_many_hooks_of_one_service_share_their_reads() -> None:
    pods = [draining_pod(f"p{i}", f"10.0.0.{i}", f"tok-p{i}") for i in range(1, 5)]
    world, endpoint, _ = await world_with(*pods)
    for i in range(1, 5):
        world.provider.sessions[Target(f"10.0.0.{i}", 8080)] = 1
    before = sum(1 for c in world.provider.calls if c[0] == "targets")

    async def finish() -> None:
        await asyncio.sleep(0.5)
        world.provider.sessions.clear()

    finishing = asyncio.create_task(finish())
    outcomes = await asyncio.gather(*(endpoint.drain_token(NS, f"tok-p{i}") for i in range(1, 5)))
    await finishing
    assert {o.result for o in outcomes} == {"drained"}
    reads = sum(1 for c in world.provider.calls if c[0] == "targets") - before
    # four hooks polling every 0.02 s for 0.5 s would make about 100 reads alone
    assert reads < 60, reads


async def test_the_route_answers_the_kubelets_double_slash_and_unknown_tokens() -> None:
    _, endpoint, seen = await world_with(draining_pod())
    app = web.Application()
    app.router.add_get(ROUTE, endpoint.handle)
    async with TestClient(TestServer(app)) as client:
        # what kubelets before 1.25 send: "http://HOST:PORT/" + path (no client library sends it)
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(f"GET //drain/{NS}/tok-p1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = (await reader.read()).decode()
        writer.close()
        assert answer.startswith("HTTP/1.1 200") and "drained: " in answer
        async with client.get(f"/drain/{NS}/nobody") as r:
            assert r.status == 404
    assert seen == ["drained", "unknown_pod"]


async def test_the_drain_port_takes_the_token_from_the_header_and_serves_nothing_else() -> None:
    """The drain listener (``--drain-port``): the hook with its token in a header, as kubelets
    1.25+ send it, and in the path; a call naming no token is a 404 that says so; no health,
    metrics or admission route is on it, and the health port no longer serves the hook."""
    from podgate.app.drain_server import DrainServer
    from podgate.app.health import HealthServer
    from podgate.controller.metrics import REGISTRY

    _, endpoint, seen = await world_with(draining_pod(), draining_pod("p2", ip="10.0.0.2", token="tok-p2"))
    server = DrainServer("127.0.0.1", 0, endpoint)
    async with TestClient(TestServer(server.app())) as client:
        async with client.get(f"/drain/{NS}", headers={gates.DRAIN_TOKEN_HEADER: "tok-p1"}) as r:
            assert (r.status, (await r.text()).split(":")[0]) == (200, "drained")
        async with client.get(f"/drain/{NS}/tok-p2") as r:
            assert r.status == 200
        async with client.get(f"/drain/{NS}") as r:
            assert r.status == 404 and "names no drain token" in await r.text()
        for path in ("/healthz", "/readyz", "/metrics", "/mutate-pods"):
            async with client.get(path) as r:
                assert r.status == 404, path
    assert seen == ["drained", "drained", "unknown_pod"]
    health = HealthServer("127.0.0.1", 0, list, REGISTRY)
    async with TestClient(TestServer(health.app())) as client, client.get(f"/drain/{NS}/tok-p1") as r:
        assert r.status == 404


async def test_podgate_down_means_the_hook_fails_and_the_pod_goes_on() -> None:
    """What the kubelet meets when no replica answers: a refused connection, no wait at all (it
    records FailedPreStopHook and sends SIGTERM).  Shown against a port nothing listens on."""
    import aiohttp

    with socket_nobody_listens_on() as port:
        started = time.monotonic()
        try:
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/drain/x/y"):
                raise AssertionError("something answered")
        except aiohttp.ClientConnectorError:
            pass
        assert time.monotonic() - started < 1.0


class socket_nobody_listens_on:
    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_the_budget_stays_below_the_grace_period() -> None:
    assert gates.drain_budget(30) == 25
    assert gates.drain_budget(10) == 7.5
    assert gates.drain_budget(4) == 2
    assert gates.drain_budget(1) == 0
    assert all(gates.drain_budget(g) <= g - 2 or gates.drain_budget(g) == 0 for g in range(0, 600))


def test_the_default_drain_url_is_the_webhook_services_drain_port_never_the_health_port() -> None:
    """deploy/'s Service: port 8081 named drain targets the drain listener (8082), so hooks
    injected before the drain had a port of its own (http://CLUSTER-IP:8081/drain/...) still
    reach it; metrics moved to port 8080.  A Service with no drain port gives no URL."""
    from podgate.app.webhook import derived_drain_url
    from podgate.controller.settings import ControllerSettings

    svc = {
        "metadata": {"name": "podgate", "namespace": "podgate-system"},
        "spec": {
            "clusterIP": "10.96.0.12",
            "ports": [
                {"name": "webhook", "port": 443, "targetPort": "webhook"},
                {"name": "metrics", "port": 8080, "targetPort": "health"},
                {"name": "drain", "port": 8081, "targetPort": "drain"},
            ],
        },
    }
    settings = ControllerSettings(webhook_service="podgate-system/podgate")
    assert derived_drain_url(settings, {"podgate-system/podgate": svc}) == "http://10.96.0.12:8081"  # type: ignore[dict-item]
    assert derived_drain_url(settings, {}) is None
    assert derived_drain_url(ControllerSettings(), {"podgate-system/podgate": svc}) is None  # type: ignore[dict-item]
    ports = [{"name": "metrics", "port": 8081, "targetPort": "health"}]
    health_only = {**svc, "spec": {**svc["spec"], "ports": ports}}  # type: ignore[dict-item]
    assert derived_drain_url(settings, {"podgate-system/podgate": health_only}) is None  # type: ignore[dict-item]


async def test_a_load_balancer_slower_than_the_budget_is_a_timeout_not_a_late_drained() -> None:
    """At 5,000 pods the load balancer's answers came late and hooks answered "drained" 6 s
    into a 3 s budget, after the kubelet would have stopped the container: the answers count
    against the budget, and a drain not seen within it is a timeout, with its Warning event."""
    world, endpoint, _ = await world_with(draining_pod(grace=3))  # budget: 1 s
    fast = world.provider.targets

    async def slow(pool: PoolSpec) -> dict[Target, TargetState]:
        await asyncio.sleep(2.0)
        return await fast(pool)

    world.provider.targets = slow  # type: ignore[method-assign]
    started = time.monotonic()
    outcome = await endpoint.drain_token(NS, "tok-p1")
    assert outcome.result == "timeout"
    assert 1.0 <= time.monotonic() - started < 1.5
    assert "did not answer within the budget" in outcome.message
    assert ("Pod", "p1", "DrainTimedOut", "Warning") in world.recorder.events


async def test_many_calls_for_one_pod_share_one_drain_and_a_flood_of_pods_is_told_busy() -> None:
    """Each container's hook, or a caller calling again, waits on the same drain; beyond
    ``max_waiting`` pods at once a call is answered 429 at once instead of held."""
    clock = Clock()
    world, endpoint, seen = await world_with(
        draining_pod(grace=10),
        draining_pod("p2", ip="10.0.0.2", token="tok-p2", grace=10),
        clock=clock,
        max_waiting=1,
    )
    world.provider.sessions[TARGET] = 1  # p1 drains slowly
    first = asyncio.create_task(endpoint.answer({"namespace": NS, "token": "tok-p1"}))
    second = asyncio.create_task(endpoint.answer({"namespace": NS, "token": "tok-p1"}))
    await asyncio.sleep(0)
    busy = await endpoint.answer({"namespace": NS, "token": "tok-p2"})
    assert busy.status == 429 and seen == ["busy"]
    world.provider.sessions[TARGET] = 0
    answers = await asyncio.gather(first, second)
    assert [a.status for a in answers] == [200, 200] and seen[1:] == ["drained", "drained"]
    assert sum(1 for call in world.provider.calls if call[0] == "drain" and "10.0.0.1:8080" in call[2]) == 1


async def test_a_long_grace_period_holds_the_hook_at_most_the_maximum_budget() -> None:
    clock = Clock()
    world, endpoint, _ = await world_with(draining_pod(grace=3600), clock=clock)
    world.provider.sessions[TARGET] = 1  # never finishes
    outcome = await endpoint.drain_token(NS, "tok-p1")
    assert outcome.result == "timeout" and outcome.waited == pytest.approx(MAX_BUDGET)
