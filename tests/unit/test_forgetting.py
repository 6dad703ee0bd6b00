"""Nothing the controller keeps per pod, per target or per Service outlives it (issue 21): pods
deleted while their gates are pending, while their targets drain, a Service deleted, and every
map of the gate writer, the reconciler, the pool reads, the drain endpoint, the eviction guard,
the check runner, the event recorder and the per-Service metric is empty afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from podgate.controller import metrics
from podgate.controller.checks import READINESS_CHECKS, CheckRunner, checks_informer
from podgate.kube import events
from podgate.kube.api import NAMESPACES, PODS, SERVICES
from podgate.kube.events import EventRecorder
from podgate.model import checks as chk
from podgate.model import gates, lb, policy
from podgate.model.lb import PoolSpec, Target
from podgate.providers.base import TargetState
from podgate.providers.fake import FakeProvider
from podgate.webhook.drain import DrainEndpoint
from podgate.webhook.eviction import EvictionGuard
from tests.unit.test_eviction import evict
from tests.unit.world import NS, World, pod, service

KEY = f"{NS}/web"


def empty(tracked: dict[str, int]) -> dict[str, int]:
    return dict.fromkeys(tracked, 0)


async def gone(world: World, *names: str) -> None:
    """The pods are deleted (the kubelet done with them) and the informers have seen it."""
    for name in names:
        await world.kube.delete(PODS, name, NS, grace_period_seconds=0)
    await world.sync()


async def test_pods_deleted_while_their_gates_are_pending_leave_nothing_in_the_gate_writer() -> None:
    world = World()
    world.add(SERVICES, service())
    world.add(PODS, *(pod(f"p{i}", ip=f"10.0.0.{i}") for i in range(1, 4)), pod("p4", ip=None))
    await world.sync()
    await world.reconciler.reconcile(KEY)  # registered, health checking: pending, writes queued
    assert world.gates.tracked() == {
        "pending_since": 4,
        "registered_at": 3,
        "wanted": 4,
        "queued": 4,
        "writing": 0,
    }
    await gone(world, "p1", "p2", "p3", "p4")
    await world.gates.flush()  # the writers find the pods gone: nothing is written
    assert world.gates.tracked() == empty(world.gates.tracked())
    assert [w for w in world.kube.writes if w.resource == "pods/status"] == []


async def test_a_pod_deleted_while_its_pass_awaits_the_load_balancer_is_not_noted_after() -> None:
    """The pass read the pod before its deletion was seen; the marks it would set come after
    the gate writer forgot the pod, and must not be set at all."""
    world = World()

    class Slow(FakeProvider):
        async def targets(self, pool: PoolSpec) -> dict[Target, TargetState]:
            if "p1" in {k.split("/")[1] for k in world.pods.cache}:
                await gone(world, "p1")  # seen while this read is in flight
            return await super().targets(pool)

    world = World(Slow())
    world.add(SERVICES, service())
    world.add(PODS, pod("p1"))
    await world.reconcile()
    assert world.gates.tracked() == empty(world.gates.tracked())


async def test_a_pod_made_again_under_its_name_while_the_watch_was_away_loses_its_predecessors_marks() -> (
    None
):
    world = World()
    world.add(SERVICES, service())
    world.add(PODS, pod("p1"))
    await world.reconcile()
    assert world.gates.tracked()["pending_since"] == 1
    await world.kube.delete(PODS, "p1", NS, grace_period_seconds=0)
    again = pod("p1")
    again["metadata"]["uid"] = "uid-p1-again"
    world.add(PODS, again)
    await world.sync()  # one relist: the informer sees p1 MODIFIED, with another uid
    assert world.gates.tracked() == empty(world.gates.tracked())


async def test_pods_deleted_mid_drain_leave_nothing_in_the_reconciler_or_the_drain_endpoint() -> None:
    world = World()
    world.add(SERVICES, service(annotations={lb.DRAIN_DELAY: "30"}))
    leaving = [pod(f"p{i}", ip=f"10.0.0.{i}") for i in range(1, 4)]
    world.add(PODS, *leaving, pod("p4", ip="10.0.0.4"))
    await world.reconcile()
    for p in leaving:  # scaled down: terminating, each with a connection in flight and a hook
        p["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        p["metadata"]["annotations"] = {gates.DRAIN_TOKEN_ANNOTATION: f"tok-{p['metadata']['name']}"}
        world.add(PODS, p)
        world.provider.sessions[Target(p["status"]["podIP"], 8080)] = 1
    await world.reconcile()  # drains them
    await world.reconcile()  # sees them draining: the drain delay runs
    assert world.reconciler.tracked()["draining_since"] == 3
    endpoint = DrainEndpoint(
        world.kube,
        world.pods,
        world.services,
        world.resolutions,
        world.recorder,
        poll=0.02,
        reads=world.reconciler.reads,  # shared, as in the controller
    )
    hooks = [asyncio.create_task(endpoint.drain_token(NS, f"tok-p{i}")) for i in range(1, 4)]
    await asyncio.sleep(0.1)
    assert not any(h.done() for h in hooks)  # waiting for the connections
    await gone(world, "p1", "p2", "p3")
    await world.reconcile()  # their pods gone: the targets are removed at once
    assert world.provider.pools[(KEY, 80)].keys() == {Target("10.0.0.4", 8080)}
    assert [(await h).result for h in hooks] == ["drained"] * 3
    assert world.reconciler.tracked() == empty(world.reconciler.tracked())
    assert (world.gates.tracked()["pending_since"], world.gates.tracked()["registered_at"]) == (1, 1)  # p4's
    await gone(world, "p4")
    assert world.gates.tracked() == empty(world.gates.tracked())
    # the drain endpoint keeps no per-pod map (a hook's progress lives in its call); what it
    # shares, the pool reads, goes with the Service (next test)


async def test_a_target_that_leaves_by_another_hand_is_forgotten_at_the_next_pass() -> None:
    world = World()
    world.add(SERVICES, service(annotations={lb.DRAIN_DELAY: "30"}))
    p1 = pod("p1")
    world.add(PODS, p1)
    await world.reconcile()
    p1["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    world.add(PODS, p1)
    world.provider.sessions[Target("10.0.0.1", 8080)] = 1
    await world.reconcile()
    await world.reconcile()
    assert world.reconciler.tracked()["draining_since"] == 1
    world.provider.pools[(KEY, 80)].clear()  # someone else took it out (the pod stays, terminating)
    await world.reconcile()
    assert world.reconciler.tracked()["draining_since"] == 0


async def test_a_deleted_service_leaves_nothing_behind() -> None:
    world = World(lb_cidr="127.240.0.0/24")
    world.kube.add(NAMESPACES, {"metadata": {"name": NS, "labels": {gates.INJECT_LABEL: "enabled"}}})
    # a floor of 3 over the 3 pods it selects: reported (once), and forgotten with the Service
    world.add(SERVICES, service(annotations={lb.DRAIN_DELAY: "30", policy.MIN_HEALTHY_TARGETS: "3"}))
    draining = pod("p1")
    world.add(PODS, draining, pod("p2", ip="10.0.0.2"), pod("p3", ip="10.0.0.3", gate_for=None))
    await world.reconcile()
    draining["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    world.add(PODS, draining)
    world.provider.sessions[Target("10.0.0.1", 8080)] = 1
    await world.reconcile()
    await world.reconcile()
    metrics.observe_reconcile(KEY, "success", 0.0, 0.0)  # as the service controller counts each pass
    assert world.reconciler.tracked() == {
        "draining_since": 1,
        "missing_gate_counts": 1,  # p3, created before the Service
        "floor_reported": 1,
        "addresses": 1,
        "requeued": 0,
    }
    assert len(world.reconciler.reads) == 1
    await world.kube.delete(SERVICES, "web", NS)
    await world.reconcile()  # the Service gone: its load balancer released
    metrics.forget_service(KEY)  # what the service controller does after the pass that finds it gone
    assert world.reconciler.tracked() == empty(world.reconciler.tracked())
    assert len(world.reconciler.reads) == 0
    series = {"namespace": NS, "service": "web"}
    assert metrics.REGISTRY.get_sample_value("podgate_service_reconciles_total", series) is None
    await gone(world, "p1", "p2", "p3")
    assert world.gates.tracked() == empty(world.gates.tracked())


async def test_an_evicted_pod_is_forgotten_by_the_guard_when_it_goes() -> None:
    world = World()
    world.add(SERVICES, service(annotations={policy.MIN_HEALTHY_TARGETS: "1"}))
    for i in range(1, 4):
        world.add(PODS, pod(f"p{i}", ip=f"10.0.0.{i}"))
        world.provider.set_health(Target(f"10.0.0.{i}", 8080), lb.Health.HEALTHY, "UP")
    guard = EvictionGuard(world.pods, world.services, world.resolutions, settle=60.0)
    assert (await evict(world, guard, "p1"))["allowed"]
    assert guard.tracked() == {"unsettled": 1, "refused": 0}
    await gone(world, "p1")
    assert guard.tracked() == {"unsettled": 0, "refused": 0}


async def test_a_refused_pod_is_forgotten_by_the_guard_when_it_goes() -> None:
    """When a pod's eviction was first refused (for --max-eviction-refusal) goes with the pod."""
    world = World()
    world.add(SERVICES, service(annotations={policy.MIN_HEALTHY_TARGETS: "3"}))
    for i in range(1, 4):
        world.add(PODS, pod(f"p{i}", ip=f"10.0.0.{i}"))
        world.provider.set_health(Target(f"10.0.0.{i}", 8080), lb.Health.HEALTHY, "UP")
    guard = EvictionGuard(world.pods, world.services, world.resolutions, settle=60.0)
    assert not (await evict(world, guard, "p1"))["allowed"]
    assert guard.tracked() == {"unsettled": 0, "refused": 1}
    await gone(world, "p1")
    assert guard.tracked() == {"unsettled": 0, "refused": 0}


async def test_check_tasks_and_statuses_go_with_their_pods_and_checks() -> None:
    world = World()
    checks = checks_informer(world.kube)
    world.kube.add(
        READINESS_CHECKS,
        {
            "apiVersion": f"{chk.GROUP}/{chk.VERSION}",
            "kind": chk.KIND,
            "metadata": {"name": "db", "namespace": NS, "generation": 1},
            # loopback, a port nothing listens on: every run fails at once, without leaving the host
            "spec": {"tcpSocket": {"port": 1}, "periodSeconds": 0.05, "timeoutSeconds": 0.05},
        },
    )
    for i in range(1, 4):
        p = pod(f"p{i}", ip=f"127.0.0.{i + 1}", gate_for=None)
        p["spec"]["readinessGates"] = [{"conditionType": chk.check_gate("db")}]
        world.add(PODS, p)
    await world.sync()
    await checks.relist()
    runner = CheckRunner(world.kube, world.pods, checks, world.gates, world.recorder)
    running = asyncio.create_task(runner.run())
    try:
        await until(lambda: runner.tracked()["status_written"] == 1 and runner.tracked()["ready"] == 3)
        assert runner.tracked()["tasks"] == 3
        for i in range(1, 4):
            await world.kube.delete(PODS, f"p{i}", NS, grace_period_seconds=0)
        await world.sync()
        await until(lambda: runner.tracked()["tasks"] == 0)
        await world.kube.delete(READINESS_CHECKS, "db", NS)
        await checks.relist()
        assert runner.tracked() == empty(runner.tracked())
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert world.gates.tracked() == empty(world.gates.tracked())


async def test_the_event_recorder_forgets_an_object_that_goes_and_events_it_can_no_longer_fold() -> None:
    world = World()
    recorder = EventRecorder(world.kube, "podgate")
    world.pods.add_handler(recorder.forget_deleted)  # as the controller wires it
    world.add(PODS, pod("p1"), pod("p2", ip="10.0.0.2"), pod("p3", ip="10.0.0.3"))
    await world.sync()
    for name in ("p1", "p2"):
        await recorder.emit(world.pods.cache[f"{NS}/{name}"], "Pod", "ReadinessGateTrue", "web is True")
        await recorder.emit(world.pods.cache[f"{NS}/{name}"], "Pod", "ReadinessGateTrue", "web is True")
    assert recorder.tracked() == {"objects": 2, "events": 2, "outstanding": 0, "gone": 0}
    await gone(world, "p1")
    assert recorder.tracked() == {"objects": 1, "events": 1, "outstanding": 0, "gone": 0}
    recorder.sweep(time.monotonic() + events.FOLD_FOR)  # p2 stays, its Event too old to fold into
    assert recorder.tracked() == {"objects": 0, "events": 0, "outstanding": 0, "gone": 0}
    # an Event queued for a pod that goes before it is sent: remembered after the pod went, then
    # forgotten once sent
    recorder.emit_later(world.pods.cache[f"{NS}/p3"], "Pod", "ReadinessGateTrue", "web is True")
    await gone(world, "p3")
    assert recorder.tracked() == {"objects": 0, "events": 0, "outstanding": 1, "gone": 1}
    sending = asyncio.create_task(recorder.run(senders=1))
    try:
        await until(lambda: recorder.tracked()["outstanding"] == 0)
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
    assert [w.verb for w in world.kube.writes if w.resource == "events"][-1] == "create"  # it was sent
    assert recorder.tracked() == {"objects": 0, "events": 0, "outstanding": 0, "gone": 0}


async def until(condition: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
