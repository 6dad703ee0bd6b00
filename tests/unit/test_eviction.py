"""The eviction guard (podgate.webhook.eviction) on FakeKube and FakeProvider: the AdmissionReview
answers ``kubectl drain`` would get."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import make_mocked_request

from podgate.kube.api import PODS, SERVICES
from podgate.model import policy
from podgate.model.lb import Health, Target
from podgate.providers.base import ProviderError
from podgate.webhook.eviction import EvictionGuard, webhook_configuration
from tests.unit.world import NS, World, pod, service


def guarded_world(minimum: str = "2", healthy: int = 2, **guard_args: Any) -> tuple[World, EvictionGuard]:
    world = World()
    world.add(SERVICES, service(annotations={policy.MIN_HEALTHY_TARGETS: minimum}))
    for i in range(1, 4):
        world.add(PODS, pod(f"p{i}", ip=f"10.0.0.{i}"))
    for i in range(1, 4):
        health = Health.HEALTHY if i <= healthy else Health.INITIAL
        world.provider.set_health(
            Target(f"10.0.0.{i}", 8080), health, "UP" if health is Health.HEALTHY else "DOWN"
        )
    seen: list[str] = []
    guard = EvictionGuard(
        world.pods, world.services, world.resolutions, seen.append, settle=0.5, **guard_args
    )
    return world, guard


async def evict(world: World, guard: EvictionGuard, name: str, **extra: Any) -> dict[str, Any]:
    await world.sync()
    await world.reconciler.reconcile(f"{NS}/web")  # registers the targets
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u1",
            "kind": {"group": "policy", "version": "v1beta1", "kind": "Eviction"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": "eviction",
            "name": name,
            "namespace": NS,
            "operation": "CREATE",
            "object": {"apiVersion": "policy/v1beta1", "kind": "Eviction", "metadata": {"name": name}},
            **extra,
        },
    }
    request = make_mocked_request("POST", "/validate-eviction", payload=None)
    # aiohttp's test request has no body setter: its cached body is the only way in
    request._read_bytes = json.dumps(review).encode()  # what the API server posts
    answer = await guard.handle(request)
    body: dict[str, Any] = json.loads(answer.body)  # type: ignore[arg-type]
    return body["response"]


async def test_an_eviction_that_would_go_below_the_minimum_is_429_naming_the_service() -> None:
    world, guard = guarded_world(healthy=2)
    response = await evict(world, guard, "p1")
    assert response["allowed"] is False
    assert response["status"]["code"] == 429
    assert f"{NS}/web" in response["status"]["message"]
    assert "(2 healthy now)" in response["status"]["message"]


async def test_a_pod_the_load_balancer_does_not_call_healthy_may_go() -> None:
    world, guard = guarded_world(healthy=2)
    assert (await evict(world, guard, "p3"))["allowed"] is True


async def test_one_spare_allows_one_eviction_and_then_refuses_the_next() -> None:
    """The second drain comes before the pod cache shows the first pod terminating: it waits
    for the cache to show it, then counts it as gone."""
    world, guard = guarded_world(healthy=3)
    assert (await evict(world, guard, "p1"))["allowed"] is True
    second = asyncio.create_task(evict(world, guard, "p2"))
    await asyncio.sleep(0.1)
    assert not second.done()  # waiting for the first eviction to show
    leaving = pod("p1", ip="10.0.0.1", terminating=True)
    world.kube.add(PODS, leaving)  # the API server deletes the evicted pod
    await world.pods.relist()
    answer = await second
    assert answer["allowed"] is False and "(2 healthy now)" in answer["status"]["message"]


async def test_a_review_that_never_became_an_eviction_changes_nothing() -> None:
    """A forged review (or one a later webhook refused): its pod is not counted as gone; the
    next review waits at most the settle time, then judges from the cache alone."""
    world, guard = guarded_world(healthy=3)
    assert (await evict(world, guard, "p1"))["allowed"] is True  # and p1 is never deleted
    started = asyncio.get_running_loop().time()
    assert (await evict(world, guard, "p2"))["allowed"] is True
    assert asyncio.get_running_loop().time() - started >= 0.5


async def test_a_dry_run_counts_nothing() -> None:
    world, guard = guarded_world(healthy=3)
    assert (await evict(world, guard, "p1", dryRun=True))["allowed"] is True
    assert (await evict(world, guard, "p2"))["allowed"] is True


async def test_no_minimum_no_guard_and_a_bad_one_warns_but_never_blocks() -> None:
    world, guard = guarded_world(minimum="0", healthy=1)
    assert (await evict(world, guard, "p1"))["allowed"] is True
    world, guard = guarded_world(minimum="many", healthy=1)
    response = await evict(world, guard, "p1")
    assert response["allowed"] is True
    assert policy.MIN_HEALTHY_TARGETS in response["warnings"][0]


async def test_an_unreadable_load_balancer_lets_the_drain_go_with_a_warning() -> None:
    world, guard = guarded_world(healthy=2)
    await world.sync()
    await world.reconciler.reconcile(f"{NS}/web")
    world.provider.fail("targets", ProviderError("socket gone"))
    why, warnings = await guard.refusal(f"{NS}/p1")
    assert why is None and "socket gone" in warnings[0]


def test_the_webhook_never_blocks_a_drain_when_podgate_is_down() -> None:
    body = webhook_configuration(
        "podgate", b"CA", url="https://127.0.0.1:9443/validate-eviction", service=None
    )
    [hook] = body["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["rules"][0]["resources"] == ["pods/eviction"]
    assert hook["rules"][0]["operations"] == ["CREATE"]


async def test_a_floor_at_or_above_the_selected_pods_is_reported_as_unreachable() -> None:
    """min-healthy-targets=3 over 3 pods: even all healthy leave none to spare, so no eviction
    of its pods can pass (a PDB allowing no disruption); the refusal says so and the Service
    gets a MinHealthyTargetsUnreachable Warning.  A floor below the pods says nothing of it."""
    world, guard = guarded_world(minimum="3", healthy=3)
    guard.recorder = world.recorder
    response = await evict(world, guard, "p1")
    assert response["allowed"] is False
    assert "is at or above the 3 pod(s) Service" in response["status"]["message"]
    assert ("Service", "web", policy.FLOOR_UNREACHABLE, "Warning") in world.recorder.events
    world, guard = guarded_world(minimum="2", healthy=2)
    guard.recorder = world.recorder
    response = await evict(world, guard, "p1")
    assert response["allowed"] is False and "at or above" not in response["status"]["message"]
    assert not [e for e in world.recorder.events if e[2] == policy.FLOOR_UNREACHABLE]


async def test_the_leader_reports_an_unreachable_floor_once_per_change_before_any_drain() -> None:
    """The reconciler says it before anyone tries a drain: one Warning while it lasts, none once
    a fourth pod makes room, one again when it is back to three."""
    world = World()
    world.add(SERVICES, service(annotations={policy.MIN_HEALTHY_TARGETS: "3"}))
    world.add(PODS, *(pod(f"p{i}", ip=f"10.0.0.{i}") for i in range(1, 4)))

    async def reported() -> int:
        """FLOOR_UNREACHABLE Warnings of one pass (the world clears its Events per pass)."""
        await world.reconcile()
        return len(
            [e for e in world.recorder.events if e == ("Service", "web", policy.FLOOR_UNREACHABLE, "Warning")]
        )

    assert [await reported(), await reported()] == [1, 0]
    world.add(PODS, pod("p4", ip="10.0.0.4"))
    assert await reported() == 0
    await world.kube.delete(PODS, "p4", NS, grace_period_seconds=0)  # gone (terminating still counts)
    assert await reported() == 1


def test_the_floor_rule() -> None:
    assert policy.floor_unreachable("ns/web", 3, 3) and policy.floor_unreachable("ns/web", 4, 3)
    assert policy.floor_unreachable("ns/web", 2, 3) is None
    assert policy.floor_unreachable("ns/web", 0, 3) is None
    assert policy.floor_unreachable("ns/web", 1, 0) is None  # no pod: nothing to evict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_an_eviction_refused_for_the_maximum_goes_through_with_a_warning() -> None:
    """The floor is any Service editor's to set: no pod's eviction is refused longer than
    --max-eviction-refusal, counted from this replica's first refusal of it.  Then it goes,
    with a warning kubectl prints, an EvictionForced Event on the pod and the metric."""
    clock, forced = Clock(), []
    world, guard = guarded_world(
        minimum="3", healthy=3, max_refusal=600.0, clock=clock, on_forced=lambda: forced.append(1)
    )
    guard.recorder = world.recorder
    assert (await evict(world, guard, "p1"))["allowed"] is False
    clock.now += 300
    assert (await evict(world, guard, "p1", dryRun=True))["allowed"] is False
    clock.now += 299
    refused = await evict(world, guard, "p1")
    assert refused["allowed"] is False  # 599 s
    clock.now += 1
    response = await evict(world, guard, "p1")
    assert response["allowed"] is True
    assert "after refusing it for 10m (--max-eviction-refusal=10m)" in response["warnings"][0]
    assert ("Pod", "p1", policy.EVICTION_FORCED, "Warning") in world.recorder.events
    assert forced == [1] and guard.tracked()["refused"] == 0


async def test_the_refusal_count_starts_afresh_after_a_long_pause_and_per_pod() -> None:
    """A drain given up and tried again long after is a new drain: it is refused again, not let
    through at once; and one pod's count is not another's."""
    clock = Clock()
    world, guard = guarded_world(minimum="3", healthy=3, max_refusal=600.0, clock=clock)
    assert (await evict(world, guard, "p1"))["allowed"] is False
    clock.now += 601  # no retry in between
    assert (await evict(world, guard, "p1"))["allowed"] is False
    clock.now += 300
    assert (await evict(world, guard, "p2"))["allowed"] is False
    clock.now += 300
    assert (await evict(world, guard, "p1"))["allowed"] is True  # 600 s of continued refusal
    assert (await evict(world, guard, "p2"))["allowed"] is False  # 300 s


async def test_a_dry_run_starts_no_count() -> None:
    clock = Clock()
    world, guard = guarded_world(minimum="3", healthy=3, max_refusal=600.0, clock=clock)
    assert (await evict(world, guard, "p1", dryRun=True))["allowed"] is False
    clock.now += 700
    assert (await evict(world, guard, "p1"))["allowed"] is False
