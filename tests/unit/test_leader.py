"""LeaderElector on FakeKube: the Lease's life as client-go's leaderelection lives it."""

from __future__ import annotations

import asyncio
from typing import Any

from podgate.kube.api import LEASES, Conflict
from podgate.kube.fake import FakeKube
from podgate.kube.leader import LeaderElector

NS, NAME = "podgate-system", "podgate"


def elector(kube: FakeKube, identity: str = "me", **kw: Any) -> LeaderElector:
    return LeaderElector(kube, NS, NAME, identity, **kw)


def lease(kube: FakeKube) -> dict[str, Any]:
    obj = kube.object(LEASES, NAME, NS)
    assert obj is not None
    spec: dict[str, Any] = obj["spec"]
    return spec


async def test_acquire_then_renew() -> None:
    kube = FakeKube()
    me = elector(kube)
    assert await me.try_acquire_or_renew()
    first = lease(kube)
    assert (first["holderIdentity"], first["leaseTransitions"], first["leaseDurationSeconds"]) == (
        "me",
        0,
        15,
    )
    assert await me.try_acquire_or_renew()
    renewed = lease(kube)
    assert renewed["acquireTime"] == first["acquireTime"] and renewed["leaseTransitions"] == 0
    assert [w.verb for w in kube.writes] == ["create", "replace"]
    # the renewal carried the version it read: a stale one would have been a Conflict
    assert kube.writes[1].body["metadata"]["resourceVersion"] == "1"


async def test_a_live_lease_of_another_is_left_alone_an_expired_one_taken_over() -> None:
    kube = FakeKube()
    assert await elector(kube, "other").try_acquire_or_renew()
    kube.writes.clear()
    assert not await elector(kube).try_acquire_or_renew()
    assert kube.writes == []
    obj = kube.object(LEASES, NAME, NS)
    assert obj is not None
    obj["spec"]["renewTime"] = "2020-01-01T00:00:00.000000Z"
    await kube.replace(LEASES, NAME, obj, NS)
    assert await elector(kube).try_acquire_or_renew()
    assert (lease(kube)["holderIdentity"], lease(kube)["leaseTransitions"]) == ("me", 1)


async def test_losing_the_race_is_a_lost_round() -> None:
    kube = FakeKube()
    me = elector(kube)
    assert await me.try_acquire_or_renew()
    kube.fail("replace", LEASES, NAME, Conflict("the object has been modified"))
    assert not await me.try_acquire_or_renew()


async def test_a_leader_that_cannot_renew_steps_down() -> None:
    kube = FakeKube()
    me = elector(kube, lease_duration=0.3, renew_deadline=0.05, retry_period=0.01)
    events: list[str] = []
    started, stopped = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        me.run(
            lambda: (events.append("started"), started.set()),
            lambda: (events.append("stopped"), stopped.set()),
        )
    )
    async with asyncio.timeout(2):
        await started.wait()
    assert me.is_leader
    kube.fail("replace", LEASES, NAME, Conflict("taken"), times=10_000)
    async with asyncio.timeout(2):
        await stopped.wait()
    task.cancel()
    assert events == ["started", "stopped"] and not me.is_leader


async def test_release_hands_the_lease_back() -> None:
    kube = FakeKube()
    me = elector(kube)
    assert await me.try_acquire_or_renew()
    await me.release()  # not leader yet as far as run() knows: nothing to give up
    assert lease(kube)["holderIdentity"] == "me"
    me.is_leader = True
    await me.release()
    released = lease(kube)
    assert (released["holderIdentity"], released["leaseDurationSeconds"]) == ("", 1)
    assert await elector(kube, "next").try_acquire_or_renew()  # a successor need not wait
