"""LeaderElector on FakeKube: the Lease's life as client-go's leaderelection lives it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from podgate.kube.api import LEASES, Conflict
from podgate.kube.fake import FakeKube
from podgate.kube.leader import Fenced, LeaderElector

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


class Clock:
    """Our own monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_lease_of_another_is_taken_over_once_seen_unchanged_for_its_duration() -> None:
    """The observed-time rule: the holder's renewTime (its wall clock, maybe far off ours) is
    never compared with our clock; what counts is how long we have seen the record unchanged."""
    kube, clock = FakeKube(), Clock()
    assert await elector(kube, "other").try_acquire_or_renew()
    obj = kube.object(LEASES, NAME, NS)
    assert obj is not None
    obj["spec"]["renewTime"] = "2020-01-01T00:00:00.000000Z"  # a holder whose clock is years behind
    await kube.replace(LEASES, NAME, obj, NS)
    me = elector(kube, clock=clock)
    kube.writes.clear()
    assert not await me.try_acquire_or_renew()  # first seen now: live for a lease duration
    clock.now += 14.0
    assert not await me.try_acquire_or_renew()
    assert kube.writes == []
    clock.now += 1.5
    assert await me.try_acquire_or_renew()
    assert (lease(kube)["holderIdentity"], lease(kube)["leaseTransitions"]) == ("me", 1)


async def test_a_lease_renewed_meanwhile_is_live_again_whatever_its_timestamps_say() -> None:
    kube, clock = FakeKube(), Clock()
    other = elector(kube, "other")
    assert await other.try_acquire_or_renew()
    me = elector(kube, clock=clock)
    assert not await me.try_acquire_or_renew()
    clock.now += 10.0
    assert await other.try_acquire_or_renew()  # renewed: a new record
    clock.now += 10.0  # 20 s since first seen, 10 s since the renewal
    assert not await me.try_acquire_or_renew()


async def test_writes_are_fenced_once_the_last_renewal_is_older_than_the_renew_deadline() -> None:
    """A write is sent only while the last renewal is younger than the renew deadline, and may
    take until that renewal is renew deadline + retry period old (when the leader steps down),
    which is still less than the lease duration: it ends before anyone else can lead."""
    kube, clock = FakeKube(), Clock()
    me = elector(kube, clock=clock, lease_duration=15.0, renew_deadline=10.0, retry_period=2.0)
    assert await me.try_acquire_or_renew()
    me.is_leader = True  # as run() sets it on winning
    assert me.fence() == pytest.approx(12.0)  # fresh: the whole budget
    clock.now += 9.9
    assert me.fresh()
    assert me.fence() == pytest.approx(2.1)  # the last moment to send: still a retry period to answer
    assert 9.9 + me.fence() < 15.0
    clock.now += 0.2
    assert not me.fresh()
    with pytest.raises(Fenced):
        me.fence()
    assert await me.try_acquire_or_renew()
    assert me.fence() == pytest.approx(12.0)


async def test_a_follower_is_fenced_whatever_its_last_renewal() -> None:
    kube, clock = FakeKube(), Clock()
    me = elector(kube, clock=clock)
    assert await me.try_acquire_or_renew()  # renewed, but run() has not made it leader (or it stepped down)
    with pytest.raises(Fenced):
        me.fence()


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
