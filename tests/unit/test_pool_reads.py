"""Coalesced health reads (podgate.providers.reads): one provider call per pool and poll, shared
by every caller; a change to the pool makes the next read fresh; failures are not kept."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from podgate.kube.api import PODS, SERVICES
from podgate.model import gates
from podgate.model.lb import Health, PoolSpec, Target, TargetHealth, pools_for
from podgate.providers.base import Provider, ProviderError, TargetState
from podgate.providers.fake import FAKE_GROUP, FakeProvider
from podgate.providers.reads import PoolReads
from podgate.resolutions import GRANTS
from podgate.webhook.drain import DrainEndpoint
from tests.unit.world import NS, World, grant, pod, service

HEALTHY = TargetState("ready", TargetHealth(Health.HEALTHY, "ok", "slow"))


class SlowPool:
    """A pool whose reads wait until the test lets them answer (or fail)."""

    name = "slow"
    poll_interval = 1.0

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.error: ProviderError | None = None

    async def targets(self, pool: PoolSpec) -> dict[Target, TargetState]:
        self.calls += 1
        n = self.calls
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return {Target(f"10.0.0.{n}", 80): HEALTHY}

    async def register(self, pool: PoolSpec, targets: Sequence[Target]) -> None: ...

    async def drain(self, pool: PoolSpec, targets: Sequence[Target]) -> None: ...

    async def deregister(self, pool: PoolSpec, targets: Sequence[Target]) -> None: ...

    async def close(self) -> None: ...


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def a_pool(name: str = "web") -> PoolSpec:
    return pools_for(service(name))[0]


@pytest.fixture
def slow() -> tuple[SlowPool, Provider]:
    pool = SlowPool()
    return pool, Provider(pool)


async def test_callers_within_one_poll_share_one_call(slow: tuple[SlowPool, Provider]) -> None:
    pool, provider = slow
    reads = PoolReads()
    waiting = [asyncio.ensure_future(reads.read(provider, a_pool(), 1.0)) for _ in range(10)]
    await asyncio.sleep(0)
    pool.release.set()
    answers = await asyncio.gather(*waiting)
    assert pool.calls == 1 and reads.calls == 1
    assert all(a == answers[0] for a in answers)


async def test_an_answer_is_reused_while_younger_than_max_age(slow: tuple[SlowPool, Provider]) -> None:
    pool, provider = slow
    pool.release.set()
    clock = Clock()
    reads = PoolReads(clock)
    first = await reads.read(provider, a_pool(), 1.0)
    clock.now += 0.9
    assert await reads.read(provider, a_pool(), 1.0) == first
    assert pool.calls == 1
    clock.now += 0.1
    assert await reads.read(provider, a_pool(), 1.0) != first
    assert pool.calls == 2
    # another pool, or a caller that takes nothing old, reads on its own
    await reads.read(provider, a_pool("api"), 1.0)
    await reads.read(provider, a_pool(), 0.0)
    assert pool.calls == 4


async def test_a_change_makes_the_next_read_fresh(slow: tuple[SlowPool, Provider]) -> None:
    pool, provider = slow
    reads = PoolReads()
    before = asyncio.ensure_future(reads.read(provider, a_pool(), 10.0))
    await asyncio.sleep(0)
    reads.forget(provider, a_pool())  # e.g. a register while that read was in flight
    after = asyncio.ensure_future(reads.read(provider, a_pool(), 10.0))
    await asyncio.sleep(0)
    pool.release.set()
    assert (await before) != (await after)
    assert pool.calls == 2


async def test_a_failure_reaches_every_waiter_and_is_not_kept(slow: tuple[SlowPool, Provider]) -> None:
    pool, provider = slow
    pool.error = ProviderError("Throttling")
    reads = PoolReads()
    waiting = [asyncio.ensure_future(reads.read(provider, a_pool(), 10.0)) for _ in range(3)]
    await asyncio.sleep(0)
    pool.release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, ProviderError) for r in results) and pool.calls == 1
    pool.error = None
    assert await reads.read(provider, a_pool(), 10.0)
    assert pool.calls == 2


async def test_a_cancelled_caller_does_not_cancel_the_others(slow: tuple[SlowPool, Provider]) -> None:
    pool, provider = slow
    reads = PoolReads()
    gone = asyncio.ensure_future(reads.read(provider, a_pool(), 1.0))
    staying = asyncio.ensure_future(reads.read(provider, a_pool(), 1.0))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    pool.release.set()
    assert await staying
    assert pool.calls == 1


async def test_pod_events_within_a_poll_cost_no_extra_read_of_the_group() -> None:
    """A cloud group (poll interval 5 s): the first reconcile reads, registers, reads again;
    reconciles run by further pod events within the interval read nothing; a new pod is a change
    (register), after which the group is read afresh once."""
    provider = FakeProvider(poll_interval=5.0, binds_user_groups=True)
    world = World(provider)
    world.add(GRANTS, grant("shop-grp", "fake", [NS], ["grp-1"]))
    world.add(SERVICES, service(annotations={FAKE_GROUP: "grp-1"}))
    world.add(PODS, *(pod(f"p{i}", f"10.0.0.{i}") for i in range(1, 4)))
    await world.reconcile()

    def reads() -> int:
        return sum(1 for c in provider.calls if c[0] == "targets")

    assert reads() == 2
    for _ in range(5):
        await world.reconcile()
    assert reads() == 2
    world.add(PODS, pod("p4", "10.0.0.4"))
    await world.reconcile()
    await world.reconcile()
    assert reads() == 3
    assert [c for c in provider.calls if c[0] == "register"][-1][2] == ("10.0.0.4:8080",)


async def test_a_drain_hook_reuses_the_reconcilers_read_of_the_pool() -> None:
    """One PoolReads for the controller: the leader's reconcile drained the leaving pod and read
    the group; the pod's preStop hook landing within the poll interval answers from that read."""
    provider = FakeProvider(poll_interval=5.0, binds_user_groups=True)
    world = World(provider)
    world.add(GRANTS, grant("shop-grp", "fake", [NS], ["grp-1"]))
    world.add(SERVICES, service(annotations={FAKE_GROUP: "grp-1"}))
    leaving = pod("p1", "10.0.0.1")
    world.add(PODS, leaving)
    await world.reconcile()
    leaving["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    leaving["metadata"]["annotations"] = {gates.DRAIN_TOKEN_ANNOTATION: "tok-p1"}
    world.kube.add(PODS, leaving)
    await world.reconcile()
    assert provider.calls[-1][0] == "targets"  # the read after the drain
    reads = sum(1 for c in provider.calls if c[0] == "targets")
    endpoint = DrainEndpoint(
        world.kube,
        world.pods,
        world.services,
        world.resolutions,
        world.recorder,
        reads=world.reconciler.reads,
    )
    outcome = await endpoint.drain_token(NS, "tok-p1")
    assert outcome.result == "drained"
    assert sum(1 for c in provider.calls if c[0] == "targets") == reads


async def test_a_released_service_is_read_afresh_when_made_again() -> None:
    provider = FakeProvider(poll_interval=5.0, binds_user_groups=True)
    world = World(provider)
    world.add(GRANTS, grant("shop-grp", "fake", [NS], ["grp-1"]))
    world.add(SERVICES, service(annotations={FAKE_GROUP: "grp-1"}))
    world.add(PODS, pod("p1", "10.0.0.1"))
    await world.reconcile()
    await world.kube.delete(SERVICES, "web", NS)
    await world.reconcile()  # gone: its pods leave the group (unbind)
    assert provider.pools.get((f"{NS}/web", 80), {}) == {}
    world.add(GRANTS, grant("shop-grp", "fake", [NS], ["grp-1"]))
    world.add(SERVICES, service(annotations={FAKE_GROUP: "grp-1"}))
    await world.reconcile()
    assert Target("10.0.0.1", 8080) in provider.pools[(f"{NS}/web", 80)]
