"""GateWriter on FakeKube: the one writer of gate conditions and its rules."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from podgate.controller import gatewriter
from podgate.kube.api import PODS, Conflict, Invalid, KubeError, NotFound, PatchType
from podgate.kube.fake import Write
from podgate.model.types import Condition, Pod
from tests.unit.world import NS, World, pod

GATE = "service.readiness.podgate.dev/web"


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = (f"2026-01-01T00:00:{s:02d}Z" for s in itertools.count())
    monkeypatch.setattr(gatewriter, "now_rfc3339", lambda: next(ticks))


def cond(status: str, reason: str, message: str = "m") -> Condition:
    return {"type": GATE, "status": status, "reason": reason, "message": message}


async def writer() -> tuple[World, Pod]:
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
