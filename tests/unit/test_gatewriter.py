"""GateWriter on FakeKube: the one writer of gate conditions and its rules."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from podgate.controller import gatewriter
from podgate.kube.api import PODS, Conflict, Invalid, KubeError, NotFound, PatchType
from podgate.kube.fake import Write
from podgate.kube.leader import Fenced
from podgate.model.types import Condition, PodView
from tests.unit.world import NS, World, pod

GATE = "service.readiness.podgate.dev/web"


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = (f"2026-01-01T00:00:{s:02d}Z" for s in itertools.count())
    monkeypatch.setattr(gatewriter, "now_rfc3339", lambda: next(ticks))


def cond(status: str, reason: str, message: str = "m") -> Condition:
    return {"type": GATE, "status": status, "reason": reason, "message": message}


async def writer() -> tuple[World, PodView]:
    world = World()
    world.add(PODS, pod("p1"))
    await world.sync()
    return world, world.pods.cache[f"{NS}/p1"]


async def write(world: World, desired: Condition, sticky: bool = True) -> bool:
    current = world.pods.cache[f"{NS}/p1"]  # the answer of the last write is cached at once
    return await world.gates.write(current, desired, sticky=sticky)


async def test_the_patch_holds_only_our_condition_and_the_uid_precondition() -> None:
    world, p = await writer()
    assert await world.gates.write(p, cond("False", "InitialHealthChecking"), sticky=True)
    assert world.kube.writes == [
        Write(
            "patch",
            "pods/status",
            NS,
            "p1",
            {
                "metadata": {"uid": "uid-p1"},
                "status": {
                    "conditions": [
                        {
                            "type": GATE,
                            "status": "False",
                            "reason": "InitialHealthChecking",
                            "message": "m",
                            "lastTransitionTime": "2026-01-01T00:00:00Z",
                        }
                    ]
                },
            },
            PatchType.STRATEGIC,
        )
    ]
    stored = world.kube.object(PODS, "p1", NS)
    assert stored is not None
    assert [c["type"] for c in stored["status"]["conditions"]] == ["ContainersReady", "Ready", GATE]


async def test_writes_only_on_change_and_moves_the_transition_time_only_with_the_status() -> None:
    world, _ = await writer()
    steps: list[tuple[Condition, bool]] = [
        (cond("False", "RegistrationInProgress"), True),
        (cond("False", "RegistrationInProgress"), False),  # the same: no write
        (cond("False", "RegistrationInProgress", "other words"), False),  # only the words: no write
        (cond("False", "InitialHealthChecking"), True),  # reason changed, status did not
        (cond("True", "TargetHealthy"), True),
        (cond("False", "HealthCheckFailing"), False),  # sticky: True stays True
    ]
    for desired, wrote in steps:
        assert await write(world, desired) is wrote, desired
    times = [w.body["status"]["conditions"][0]["lastTransitionTime"] for w in world.kube.writes]
    assert times[0] == times[1] != times[2]
    assert await write(world, cond("False", "HealthCheckFailing"), sticky=False)  # continuous mode


@pytest.mark.parametrize(
    "error", [NotFound("gone"), Conflict("uid precondition"), Invalid("immutable")], ids=["404", "409", "422"]
)
async def test_a_pod_gone_or_replaced_is_no_error(error: KubeError) -> None:
    world, p = await writer()
    world.kube.fail("patch", PODS, "p1", error)
    assert await world.gates.write(p, cond("False", "X"), sticky=True) is False
    assert world.recorder.events == []


async def test_other_api_errors_are_raised_for_a_retry() -> None:
    world, p = await writer()
    world.kube.fail("patch", PODS, "p1", KubeError("etcd timeout", 500))
    with pytest.raises(KubeError):
        await world.gates.write(p, cond("False", "X"), sticky=True)


async def test_a_replaced_pod_is_never_written_through_its_predecessors_uid() -> None:
    world, p = await writer()
    stale: Any = {**p, "metadata": {**p["metadata"], "uid": "uid-old"}}
    assert await world.gates.write(stale, cond("False", "X"), sticky=True) is False
    assert world.condition("p1") is None


async def test_an_event_per_transition() -> None:
    world, _ = await writer()
    await write(world, cond("False", "InitialHealthChecking"))
    await write(world, cond("False", "InitialHealthChecking", "other words"))  # no new Event
    await write(world, cond("False", "ProviderError"))
    await write(world, cond("True", "TargetHealthy"))
    assert world.recorder.events == [
        ("Pod", "p1", "InitialHealthChecking", "Normal"),
        ("Pod", "p1", "ProviderError", "Warning"),
        ("Pod", "p1", "ReadinessGateTrue", "Normal"),
    ]


# -- the write queue (submit / run / flush) ---------------------------------------------------


def patched_reasons(world: World) -> list[tuple[str, str, str]]:
    """(pod, status, reason) of every pods/status PATCH, in the order sent."""
    out = []
    for w in world.kube.writes:
        if w.resource == "pods/status":
            c = w.body["status"]["conditions"][0]
            out.append((w.name, c["status"], c["reason"]))
    return out


async def test_only_the_latest_wish_for_a_gate_is_sent() -> None:
    """Under a backlog, "registering" and "health checking" are overtaken by "healthy" and never
    sent: writes per pod fall when the API server is slowest."""
    world, p = await writer()
    world.gates.submit(p, cond("False", "RegistrationInProgress"), sticky=True)
    world.gates.submit(p, cond("False", "InitialHealthChecking"), sticky=True)
    world.gates.submit(p, cond("True", "LoadBalancerHealthy"), sticky=True)
    await world.gates.flush()
    assert patched_reasons(world) == [("p1", "True", "LoadBalancerHealthy")]


async def test_a_wish_the_pod_already_has_is_dropped_with_any_older_one() -> None:
    world, p = await writer()
    assert await write(world, cond("False", "InitialHealthChecking"))
    world.kube.writes.clear()
    world.gates.submit(p, cond("False", "RegistrationInProgress"), sticky=True)
    world.gates.submit(world.pods.cache[f"{NS}/p1"], cond("False", "InitialHealthChecking"), sticky=True)
    await world.gates.flush()
    assert patched_reasons(world) == []


async def test_gates_changing_status_are_sent_before_progress() -> None:
    world = World()
    for i in range(5):
        world.add(PODS, pod(f"p{i}"))
    await world.sync()
    for i in range(5):  # every gate False already: a new reason is progress
        assert await world.gates.write(world.pods.cache[f"{NS}/p{i}"], cond("False", "A"), sticky=True)
    world.kube.writes.clear()
    for i in range(4):
        world.gates.submit(world.pods.cache[f"{NS}/p{i}"], cond("False", "B"), sticky=True)
    world.gates.submit(world.pods.cache[f"{NS}/p4"], cond("True", "LoadBalancerHealthy"), sticky=True)
    await world.gates.flush()
    assert patched_reasons(world) == [
        ("p4", "True", "LoadBalancerHealthy"),
        *((f"p{i}", "False", "B") for i in range(4)),
    ]


async def test_one_write_per_gate_in_flight_and_the_newer_wish_follows_it() -> None:
    world, p = await writer()
    started, release = asyncio.Event(), asyncio.Event()
    real_patch = world.kube.patch
    in_flight, peak = 0, 0

    async def held_patch(*args: Any, **kw: Any) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        started.set()
        await release.wait()
        in_flight -= 1
        return await real_patch(*args, **kw)

    world.kube.patch = held_patch  # type: ignore[method-assign]
    writers = asyncio.create_task(world.gates.run(concurrency=4))
    world.gates.submit(p, cond("False", "InitialHealthChecking"), sticky=True)
    await started.wait()
    world.gates.submit(p, cond("True", "LoadBalancerHealthy"), sticky=True)
    for _ in range(20):
        await asyncio.sleep(0)
    assert peak == 1  # the True waits for the write in flight, on another writer or not
    release.set()
    await world.gates.idle()
    writers.cancel()
    assert patched_reasons(world) == [
        ("p1", "False", "InitialHealthChecking"),
        ("p1", "True", "LoadBalancerHealthy"),
    ]
    assert world.pods.cache[f"{NS}/p1"]["status"]["conditions"][-1]["status"] == "True"


async def test_a_gate_opening_never_waits_for_progress_writes_in_flight() -> None:
    """An API server slow to answer progress writes (a new reason on a gate that stays False)
    holds at most the writers that may send progress: the others are left for gates opening or
    closing, which are sent while every progress writer waits."""
    world = World()
    for i in range(11):
        world.add(PODS, pod(f"p{i}"))
    await world.sync()
    release, opened = asyncio.Event(), asyncio.Event()
    real_patch = world.kube.patch
    progress_in_flight = 0

    async def slow_progress(*args: Any, **kw: Any) -> Any:
        nonlocal progress_in_flight
        (status,) = {c["status"] for c in args[2]["status"]["conditions"]}
        if status == "False":
            progress_in_flight += 1
            await release.wait()
        answer = await real_patch(*args, **kw)
        if status == "True":
            opened.set()
        return answer

    world.kube.patch = slow_progress  # type: ignore[method-assign]
    writers = asyncio.create_task(world.gates.run(concurrency=4, progress=2))
    checking = cond("False", "InitialHealthChecking")
    for i in range(10):
        world.gates.submit(world.pods.cache[f"{NS}/p{i}"], checking, sticky=True)
    for _ in range(20):
        await asyncio.sleep(0)
    assert progress_in_flight == 2  # the progress writers, and no other
    world.gates.submit(world.pods.cache[f"{NS}/p10"], cond("True", "LoadBalancerHealthy"), sticky=True)
    async with asyncio.timeout(2):
        await opened.wait()
    assert ("p10", "True", "LoadBalancerHealthy") in patched_reasons(world)
    assert progress_in_flight == 2
    release.set()
    await world.gates.idle()
    writers.cancel()
    await asyncio.gather(writers, return_exceptions=True)
    assert len(patched_reasons(world)) == 11


async def test_a_wish_for_a_pod_that_is_gone_is_not_sent() -> None:
    world, p = await writer()
    world.gates.submit(p, cond("False", "InitialHealthChecking"), sticky=True)
    world.pods.cache.pop(f"{NS}/p1")
    await world.gates.flush()
    assert patched_reasons(world) == []


async def test_a_wish_is_not_written_to_a_pod_made_again_under_the_same_name() -> None:
    """A StatefulSet's pod deleted and made again while the queue is backed up: the old pod's
    "healthy" must not open the new one's gate (a sticky gate would then never be checked)."""
    world, p = await writer()
    world.gates.submit(p, cond("True", "LoadBalancerHealthy"), sticky=True)
    world.pods.cache[f"{NS}/p1"] = {**p, "metadata": {**p["metadata"], "uid": "uid-p1-again"}}
    await world.gates.flush()
    assert patched_reasons(world) == []


async def test_a_wish_made_while_a_write_is_in_flight_is_kept_even_if_the_cache_has_it() -> None:
    """The cache does not show the write in flight yet: a wish equal to the cache (the gate
    going back) must still follow that write, or the gate ends as the older wish left it."""
    world, _ = await writer()
    assert await write(world, cond("True", "LoadBalancerHealthy"), sticky=False)
    world.kube.writes.clear()
    started, release = asyncio.Event(), asyncio.Event()
    real_patch = world.kube.patch

    async def held_patch(*args: Any, **kw: Any) -> Any:
        started.set()
        await release.wait()
        return await real_patch(*args, **kw)

    world.kube.patch = held_patch  # type: ignore[method-assign]
    writers = asyncio.create_task(world.gates.run(concurrency=2))
    current = world.pods.cache[f"{NS}/p1"]
    world.gates.submit(current, cond("False", "HealthCheckFailing"), sticky=False)
    await started.wait()
    world.gates.submit(current, cond("True", "LoadBalancerHealthy"), sticky=False)  # as cached
    release.set()
    await world.gates.idle()
    writers.cancel()
    assert [r[1:] for r in patched_reasons(world)] == [
        ("False", "HealthCheckFailing"),
        ("True", "LoadBalancerHealthy"),
    ]


async def test_the_condition_reports_the_pods_generation_when_the_pod_has_one() -> None:
    """Kubernetes 1.34+ (KEP-5067): ``observedGeneration`` = the pod's ``metadata.generation`` as
    podgate last saw it; a new generation alone is no write, the next change carries it."""
    world = World()
    world.add(PODS, {**pod("p1"), "metadata": {**pod("p1")["metadata"], "generation": 1}})
    await world.sync()
    assert await write(world, cond("False", "InitialHealthChecking"))
    assert world.kube.writes[-1].body["status"]["conditions"][0]["observedGeneration"] == 1
    cached = world.pods.cache[f"{NS}/p1"]
    bumped: Any = {**cached, "metadata": {**cached["metadata"], "generation": 2}}  # a spec update
    assert not await world.gates.write(bumped, cond("False", "InitialHealthChecking"), sticky=True)
    assert await world.gates.write(bumped, cond("True", "TargetHealthy"), sticky=True)
    assert world.kube.writes[-1].body["status"]["conditions"][0]["observedGeneration"] == 2
    assert len(world.kube.writes) == 2


async def test_no_observed_generation_for_a_pod_without_a_generation() -> None:
    """Before 1.33 a pod has no ``metadata.generation``: the condition names none (an older API
    server would only drop the field)."""
    world, p = await writer()
    assert "generation" not in p["metadata"]
    assert await world.gates.write(p, cond("False", "InitialHealthChecking"), sticky=True)
    assert "observedGeneration" not in world.kube.writes[-1].body["status"]["conditions"][0]


async def test_a_write_not_answered_within_the_leases_budget_is_given_up() -> None:
    """The fence says how long the lease still covers a write: a write the API server has not
    answered by then is abandoned (a Fenced error, its Service queued again), so no write of
    this replica's is still waiting for an answer once another replica could lead."""
    world = World(fence=lambda: 0.05)
    world.add(PODS, pod("p1"))
    await world.sync()
    p = world.pods.cache[f"{NS}/p1"]
    answered = []

    async def hung_patch(*args: Any, **kw: Any) -> Any:
        await asyncio.sleep(5)
        answered.append(args)

    world.kube.patch = hung_patch  # type: ignore[method-assign]
    failed: list[BaseException] = []
    world.gates.submit(p, cond("True", "LoadBalancerHealthy"), sticky=True, on_error=failed.append)
    async with asyncio.timeout(2):
        await world.gates.flush()
    assert answered == []
    assert [type(e) for e in failed] == [Fenced]
    assert "given up" in str(failed[0])


async def test_a_write_the_fence_refuses_is_not_sent() -> None:
    def fence() -> float:
        raise Fenced("the leader lease is not fresh")

    world = World(fence=fence)
    world.add(PODS, pod("p1"))
    await world.sync()
    failed: list[BaseException] = []
    world.gates.submit(
        world.pods.cache[f"{NS}/p1"], cond("True", "LoadBalancerHealthy"), sticky=True, on_error=failed.append
    )
    await world.gates.flush()
    assert world.kube.writes == []
    assert [type(e) for e in failed] == [Fenced]


async def test_a_request_timing_out_on_its_own_is_no_lease_matter() -> None:
    """The request's own timeout (the client's) is an ordinary failure, not the lease's."""
    world = World(fence=lambda: 60.0)
    world.add(PODS, pod("p1"))
    await world.sync()

    async def timed_out(*args: Any, **kw: Any) -> Any:
        raise TimeoutError

    world.kube.patch = timed_out  # type: ignore[method-assign]
    with pytest.raises(TimeoutError) as caught:
        await world.gates.write(
            world.pods.cache[f"{NS}/p1"], cond("True", "LoadBalancerHealthy"), sticky=True
        )
    assert not isinstance(caught.value, Fenced)
