"""``ServiceReconciler.reconcile`` on FakeKube and FakeProvider: what it writes to the pods,
the Service and the load balancer, pass by pass."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from podgate.controller.reconciler import HEARD_POLL
from podgate.kube.api import PODS, SERVICES, PatchType
from podgate.kube.fake import Write
from podgate.kube.leader import Fenced
from podgate.model import gates, lb, policy
from podgate.model.lb import Health, Target
from podgate.providers.base import ProviderError, TargetState
from podgate.providers.fake import FakeProvider
from tests.unit.world import NS, World, pod, service

KEY = f"{NS}/web"
GATE = gates.service_gate("web")


def status_writes(world: World) -> list[Write]:
    return [w for w in world.kube.writes if w.resource == "pods/status"]


def gate(world: World, name: str) -> tuple[str, str] | None:
    c = world.condition(name)
    return (c["status"], c["reason"]) if c else None


@pytest.mark.parametrize(
    ("the_pod", "registered", "want"),
    [
        (pod("p1"), ["10.0.0.1:8080"], ("False", "InitialHealthChecking")),
        (pod("p1", ip=None), [], ("False", "RegistrationInProgress")),
        (pod("p1", ready=False), [], ("False", "RegistrationInProgress")),
        (pod("p1", app="other"), [], ("False", "RegistrationInProgress")),
    ],
    ids=["registered", "no-ip", "containers-not-ready", "selector-does-not-match"],
)
async def test_a_new_pod(the_pod: Any, registered: list[str], want: tuple[str, str]) -> None:
    world = World()
    world.add(SERVICES, service())
    world.add(PODS, the_pod)
    await world.reconcile()
    added = [t for call, _, targets in world.provider.calls if call == "register" for t in targets]
    assert added == registered
    assert gate(world, "p1") == want
    [write] = status_writes(world)
    assert write.patch_type is PatchType.STRATEGIC
    assert write.body["metadata"] == {"uid": "uid-p1"}  # a precondition: never another pod's
    assert [c["type"] for c in write.body["status"]["conditions"]] == [GATE]


async def test_a_healthy_target_opens_the_gate_with_one_write_and_then_writes_nothing() -> None:
    world = World()
    world.add(SERVICES, service())
    world.add(PODS, pod("p1"))
    await world.reconcile()
    world.provider.set_health(Target("10.0.0.1", 8080), Health.HEALTHY, "UP")
    await world.reconcile()
    assert gate(world, "p1") == ("True", lb.HEALTHY_REASON)
    assert len(status_writes(world)) == 1 and len(world.kube.writes) == 1
    assert ("Pod", "p1", "ReadinessGateTrue", "Normal") in world.recorder.events
    await world.reconcile()
    assert world.kube.writes == []  # level-triggered: nothing changed, nothing written


async def test_a_pod_from_creation_to_ready_costs_three_status_writes() -> None:
    """One write per change of status or reason; health-check progress is not written."""
    world = World()
    world.add(SERVICES, service())
    life: list[tuple[str, Any, str | None]] = [
        ("created", pod("p1", ip=None, ready=False), None),
        ("has an IP", pod("p1", ready=False), None),
        ("ContainersReady", pod("p1"), "DOWN 0/3"),
        ("one check passed", None, "DOWN 1/3"),
        ("two checks passed", None, "DOWN 2/3"),
        ("UP", None, "UP 3/3"),
    ]
    seen: list[tuple[str, str] | None] = []
    writes = 0
    for step, body, health in life:
        if body is not None:  # the node agent moves it on; the gate condition stays
            written = world.condition("p1") if world.kube.object(PODS, "p1", NS) else None
            body["status"]["conditions"] += [written] if written else []
            world.kube.add(PODS, body)
        if health is not None:
            h = Health.HEALTHY if health.startswith("UP") else Health.INITIAL
            world.provider.set_health(Target("10.0.0.1", 8080), h, health)
        await world.reconcile()
        writes += len(status_writes(world))
        seen.append(gate(world, "p1"))
        await world.reconcile()  # a re-read that learns nothing writes nothing
        assert status_writes(world) == [], step
    assert seen == [
        ("False", "RegistrationInProgress"),
        ("False", "RegistrationInProgress"),
        ("False", "InitialHealthChecking"),
        ("False", "InitialHealthChecking"),
        ("False", "InitialHealthChecking"),
        ("True", lb.HEALTHY_REASON),
    ]
    assert writes == 3


async def test_a_pass_does_not_wait_for_its_writes_and_the_writers_send_them_side_by_side() -> None:
    """A pass that waited for its 100 pods' PATCHes held its worker 1.3 s on a busy API server,
    and 50 Services queued behind each other (bench/scale.py): the pass submits, and the
    writer tasks send the writes, a bounded number at a time."""
    world = World()
    world.add(SERVICES, service())
    for i in range(40):
        world.add(PODS, pod(f"p{i}", ip=f"10.0.1.{i}"))
    in_flight, peak = 0, 0
    release, eight = asyncio.Event(), asyncio.Event()
    real_patch = world.kube.patch

    async def slow_patch(*args: Any, **kw: Any) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if peak == 8:
            eight.set()
        await release.wait()
        in_flight -= 1
        return await real_patch(*args, **kw)

    world.kube.patch = slow_patch  # type: ignore[method-assign]
    await world.sync()
    async with asyncio.timeout(1):
        await world.reconciler.reconcile(KEY)  # returns with every PATCH still to come
    assert world.gates.pending() == 40 and status_writes(world) == []
    writers = asyncio.create_task(world.gates.run(concurrency=8))
    await eight.wait()
    await asyncio.sleep(0.01)
    assert peak == 8  # no more than the writers at once
    release.set()
    await world.gates.idle()
    writers.cancel()
    assert len(status_writes(world)) == 40
    assert world.gates.pending() == 0
    assert {gate(world, f"p{i}") for i in range(40)} == {("False", "InitialHealthChecking")}


async def test_a_failing_health_check_never_opens_the_gate() -> None:
    world = World()
    world.add(SERVICES, service())
    world.add(PODS, pod("p1"))
    world.provider.set_health(Target("10.0.0.1", 8080), Health.UNHEALTHY, "connection refused")
    for _ in range(3):
        await world.reconcile()
        assert gate(world, "p1") == ("False", "HealthCheckFailing")
    written = [c["status"] for w in world.kube.writes for c in w.body["status"]["conditions"]]
    assert "True" not in written


async def test_a_failed_registration_still_lets_leaving_pods_go_then_reports() -> None:
    """p1 is new and its registration fails; p2 is terminating (drain it) and p3 is gone after
    its drain (remove it): the failure must not hold up the leaving pods."""
    provider = FakeProvider()
    world = World(provider)
    world.add(SERVICES, service(annotations={lb.DRAIN_DELAY: "0"}))
    world.add(PODS, pod("p1"), pod("p2", ip="10.0.0.2", terminating=True))
    provider.pools[(KEY, 80)] = {
        Target("10.0.0.2", 8080): TargetState("ready", lb.TargetHealth(Health.HEALTHY, "UP")),
        Target("10.0.0.3", 8080): TargetState("drain", lb.TargetHealth(Health.DRAINING, "DRAIN")),
    }
    provider.fail("register", ProviderError("quota exceeded"))
    with pytest.raises(ProviderError, match="quota exceeded"):
        await world.reconcile()
    calls = [(call, targets) for call, _, targets in provider.calls if call not in ("provision", "targets")]
    assert calls == [
        ("register", ("10.0.0.1:8080",)),
        ("drain", ("10.0.0.2:8080",)),
        ("deregister", ("10.0.0.3:8080",)),
    ]
    assert gate(world, "p1") == ("False", lb.PROVIDER_ERROR)
    assert gate(world, "p2") is None  # a terminating pod's gate is left alone
    assert ("Service", "web", "LoadBalancerError", "Warning") in world.recorder.events


async def test_a_target_an_old_worker_still_routes_to_stays_in_the_pool_until_it_lets_go() -> None:
    """HAProxy after a reload: p2 is terminating, drained and idle in the new worker, but the
    old worker still has it in rotation (``held``).  The reconciler keeps it in the pool: removed,
    the pod's drain hook would read it gone, take it for drained and let the pod stop under that
    worker's last requests (a 503 each).  Once the old worker lets go it is removed."""
    provider = FakeProvider()
    world = World(provider)
    world.add(SERVICES, service(annotations={lb.DRAIN_DELAY: "0"}))
    world.add(PODS, pod("p2", ip="10.0.0.2", terminating=True))
    leaving = Target("10.0.0.2", 8080)
    provider.pools[(KEY, 80)] = {leaving: TargetState("drain", lb.TargetHealth(Health.DRAINING, "DRAIN"))}
    provider.holds[leaving] = "in rotation in HAProxy worker 42, which a reload left serving"
    for _ in range(2):
        await world.reconcile()
    assert leaving in provider.pools[(KEY, 80)]
    assert [call for call, _, _ in provider.calls if call == "deregister"] == []
    del provider.holds[leaving]
    await world.reconcile()
    assert leaving not in provider.pools[(KEY, 80)]


async def test_a_reconcile_plans_from_its_services_pods_and_those_behind_its_targets() -> None:
    """Read through the indexes, not a scan: p1 is selected; p2 left the selector (relabelled)
    but its target is present, so it drains; p3's target has no pod, so it goes at once; pods
    of other Services and namespaces are not part of the plan."""
    provider = FakeProvider()
    world = World(provider)
    world.add(SERVICES, service(), service("api"))
    other_ns = {**pod("p9", ip="10.0.0.2"), "metadata": {"name": "p9", "namespace": "elsewhere"}}
    world.add(PODS, pod("p1"), pod("p2", ip="10.0.0.2", app="api"), pod("p4", ip="10.0.0.4", app="api"))
    world.add(PODS, other_ns)
    provider.pools[(KEY, 80)] = {
        Target("10.0.0.2", 8080): TargetState("ready", lb.TargetHealth(Health.HEALTHY, "UP")),
        Target("10.0.0.3", 8080): TargetState("ready", lb.TargetHealth(Health.HEALTHY, "UP")),
    }
    await world.reconcile()
    calls = [
        (call, targets)
        for call, key, targets in provider.calls
        if call in ("register", "drain", "deregister")
    ]
    assert calls == [
        ("register", ("10.0.0.1:8080",)),
        ("drain", ("10.0.0.2:8080",)),
        ("deregister", ("10.0.0.3:8080",)),
    ]
    assert [p["metadata"]["name"] for p in world.reconciler.selected(NS, {"app": "api"})] == ["p2", "p4"]
    assert world.reconciler.selected(NS, {}) == []  # an empty selector selects nothing


async def test_a_deleted_service_closes_its_gates_and_releases_the_load_balancer() -> None:
    world = World()
    world.add(PODS, pod("p1"))
    await world.reconcile()
    assert gate(world, "p1") == ("False", lb.SERVICE_NOT_FOUND)
    assert ("release", KEY, ()) in world.provider.calls
    assert ("Pod", "p1", lb.SERVICE_NOT_FOUND, "Warning") in world.recorder.events


async def test_a_service_that_is_not_load_balanced_says_so() -> None:
    world = World()
    svc = service()
    svc["spec"]["type"] = "ClusterIP"
    world.add(SERVICES, svc)
    world.add(PODS, pod("p1"))
    await world.reconcile()
    assert gate(world, "p1") == ("False", lb.NOT_LOAD_BALANCED)
    assert not [c for c in world.provider.calls if c[0] == "register"]


# -- the finalizer of providers that bind the user's groups ------------------------------------
def finalizer_writes(world: World) -> list[Any]:
    return [w.body for w in world.kube.writes if w.resource == "services"]


def finalizers(world: World) -> list[str] | None:
    svc = world.kube.object(SERVICES, "web", NS)
    return None if svc is None else svc["metadata"].get("finalizers", [])


async def test_the_finalizer_is_added_once_the_group_is_bound() -> None:
    world = World(FakeProvider(binds_user_groups=True))
    world.add(SERVICES, service(finalizers=["someone.else/keep"]))
    world.add(PODS, pod("p1"))
    world.provider.fail("bind", ProviderError("throttled"))
    with pytest.raises(ProviderError):
        await world.reconcile()
    assert finalizer_writes(world) == []  # not bound: nothing to hold the Service for
    await world.reconcile()
    assert finalizer_writes(world) == [{"metadata": {"finalizers": [lb.TARGETS_FINALIZER]}}]
    assert finalizers(world) == ["someone.else/keep", lb.TARGETS_FINALIZER]
    await world.reconcile()
    assert finalizer_writes(world) == []  # once


def deleting(world: World) -> None:
    svc = service(finalizers=[lb.TARGETS_FINALIZER], deletionTimestamp="2026-01-01T00:00:00Z")
    world.add(SERVICES, svc)
    world.add(PODS, pod("p1"))
    world.provider.pools[(KEY, 80)] = {
        Target("10.0.0.1", 8080): TargetState("ready", lb.TargetHealth(Health.HEALTHY, "UP"))
    }


async def test_a_deleting_service_lets_its_pods_go_then_drops_the_finalizer() -> None:
    world = World(FakeProvider(binds_user_groups=True))
    deleting(world)
    await world.reconcile()
    assert ("unbind", KEY, ()) in world.provider.calls and world.provider.pools == {}
    assert finalizer_writes(world) == [
        {"metadata": {"$deleteFromPrimitiveList/finalizers": [lb.TARGETS_FINALIZER]}}
    ]
    assert finalizers(world) is None  # the last finalizer gone: the Service is deleted
    assert gate(world, "p1") == ("False", lb.SERVICE_NOT_FOUND)


async def test_a_transient_cleanup_error_keeps_the_finalizer() -> None:
    world = World(FakeProvider(binds_user_groups=True))
    deleting(world)
    world.provider.fail("unbind", ProviderError("throttled"))
    with pytest.raises(ProviderError):
        await world.reconcile()
    assert finalizer_writes(world) == [] and finalizers(world) == [lb.TARGETS_FINALIZER]
    assert ("Service", "web", "CleanupFailed", "Warning") in world.recorder.events


async def test_a_permanent_cleanup_error_lets_go() -> None:
    world = World(FakeProvider(binds_user_groups=True))
    deleting(world)
    world.provider.fail("unbind", ProviderError("the group is gone", permanent=True))
    await world.reconcile()
    assert finalizers(world) is None
    assert ("Service", "web", "CleanupSkipped", "Warning") in world.recorder.events


# -- per-Service policies (podgate.model.policy) ------------------------------------------------
def long_ready(name: str = "p1") -> Any:
    """A pod whose containers have been ready since 2020: any readiness timeout has passed."""
    p = pod(name)
    p["status"]["conditions"][0]["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    return p


@pytest.mark.parametrize(
    ("on_timeout", "want", "event_reason"),
    [
        ("open", ("True", policy.TIMED_OUT), policy.TIMED_OUT),
        ("closed", ("False", policy.TIMED_OUT), policy.TIMED_OUT),
    ],
)
async def test_a_timed_out_gate_follows_the_services_choice(
    on_timeout: str, want: tuple[str, str], event_reason: str
) -> None:
    world = World()
    world.add(SERVICES, service(annotations={policy.READINESS_TIMEOUT: "90s", policy.ON_TIMEOUT: on_timeout}))
    world.add(PODS, long_ready())
    world.provider.set_health(Target("10.0.0.1", 8080), Health.UNHEALTHY, "L7STS/503")
    await world.reconcile()
    assert gate(world, "p1") == want
    assert ("Pod", "p1", event_reason, "Warning") in world.recorder.events
    assert set(world.provider.pools[(KEY, 80)]) == {Target("10.0.0.1", 8080)}  # still registered
    await world.reconcile()
    assert world.kube.writes == []  # decided once: a re-read writes nothing


async def test_a_gate_opened_by_the_timeout_takes_the_load_balancers_word_once_healthy() -> None:
    world = World()
    world.add(SERVICES, service(annotations={policy.READINESS_TIMEOUT: "90s", policy.ON_TIMEOUT: "open"}))
    world.add(PODS, long_ready())
    world.provider.set_health(Target("10.0.0.1", 8080), Health.UNHEALTHY, "L7STS/503")
    await world.reconcile()
    assert gate(world, "p1") == ("True", policy.TIMED_OUT)
    world.provider.set_health(Target("10.0.0.1", 8080), Health.HEALTHY, "UP")
    await world.reconcile()
    assert gate(world, "p1") == ("True", lb.HEALTHY_REASON)


async def test_a_true_gate_in_sticky_mode_is_neither_read_again_nor_polled_for() -> None:
    world = World()
    world.add(SERVICES, service())
    world.add(PODS, pod("p1"))
    world.provider.set_health(Target("10.0.0.1", 8080), Health.HEALTHY, "UP")
    await world.reconcile()
    assert gate(world, "p1") == ("True", lb.HEALTHY_REASON)
    world.provider.set_health(Target("10.0.0.1", 8080), Health.UNHEALTHY, "DOWN")
    await world.sync()
    outcome = await world.reconciler.reconcile(KEY)
    assert not outcome.poll and gate(world, "p1") == ("True", lb.HEALTHY_REASON)


async def test_without_a_timeout_a_gate_waits_for_ever() -> None:
    world = World()
    world.add(SERVICES, service())
    world.add(PODS, long_ready())
    world.provider.set_health(Target("10.0.0.1", 8080), Health.UNHEALTHY, "L7STS/503")
    await world.reconcile()
    assert gate(world, "p1") == ("False", "HealthCheckFailing")


async def test_the_global_timeout_applies_when_the_service_is_gone() -> None:
    world = World(policy=policy.GatePolicy(timeout=60, fail_open=True))
    world.add(PODS, long_ready())
    await world.reconcile()
    assert gate(world, "p1") == ("True", policy.TIMED_OUT)


async def test_a_bad_policy_annotation_closes_the_gates_and_says_which() -> None:
    world = World()
    world.add(SERVICES, service(annotations={policy.ON_TIMEOUT: "maybe"}))
    world.add(PODS, pod("p1"))
    await world.reconcile()
    assert gate(world, "p1") == ("False", lb.SERVICE_CONFIG_ERROR)
    assert ("Service", "web", "InvalidConfiguration", "Warning") in world.recorder.events
    assert policy.ON_TIMEOUT in world.condition("p1")["message"]  # type: ignore[index]


@pytest.mark.parametrize(("mode", "follows"), [("continuous", True), ("startup", False)])
async def test_gate_mode_per_service(mode: str, follows: bool) -> None:
    world = World()  # the controller's default is startup (sticky)
    world.add(SERVICES, service(annotations={policy.GATE_MODE: mode, lb.HC_INTERVAL: "1"}))
    world.add(PODS, pod("p1"))
    target = Target("10.0.0.1", 8080)
    world.provider.set_health(target, Health.HEALTHY, "UP")
    await world.reconcile()
    assert gate(world, "p1") == ("True", lb.HEALTHY_REASON)
    outcome = await world.reconciler.reconcile(KEY)
    # continuous: all True, yet re-read every half check interval to notice a fall
    assert (outcome.poll, outcome.interval) == ((True, 0.5) if follows else (False, 0.0))
    world.provider.set_health(target, Health.UNHEALTHY, "DOWN")
    await world.reconcile()
    assert gate(world, "p1") == (("False", "HealthCheckFailing") if follows else ("True", lb.HEALTHY_REASON))
    world.provider.set_health(target, Health.HEALTHY, "UP")
    await world.reconcile()
    assert gate(world, "p1") == ("True", lb.HEALTHY_REASON)


async def test_a_service_deleted_mid_rollout_times_out_by_its_own_policy() -> None:
    world = World()
    svc = service(annotations={policy.READINESS_TIMEOUT: "10m", policy.ON_TIMEOUT: "open"})
    svc["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    svc["metadata"]["finalizers"] = ["example.com/hold"]
    world.add(SERVICES, svc)
    world.add(PODS, long_ready())
    await world.reconcile()
    assert gate(world, "p1") == ("True", policy.TIMED_OUT)


async def test_failed_gate_writes_queue_the_service_again_once_a_pass() -> None:
    """A write that fails queues its Service again; 100 failing together are one retry, not 100
    (each would take a token of the queue's shared bucket)."""
    world = World()
    world.add(SERVICES, service())
    for i in range(5):
        world.add(PODS, pod(f"p{i}", ip=f"10.0.1.{i}"))
    requeued = world.requeued

    async def failing_patch(*args: Any, **kw: Any) -> Any:
        raise OSError("connection reset by peer")

    world.kube.patch = failing_patch  # type: ignore[method-assign]
    await world.reconcile()
    assert requeued == [KEY]
    assert all(gate(world, f"p{i}") is None for i in range(5))  # nothing written, nothing claimed
    await world.reconcile()  # the retry's own failures queue it once more
    assert requeued == [KEY, KEY]


@pytest.mark.parametrize("continuous", [True, False], ids=["continuous", "startup"])
async def test_a_load_balancer_that_cannot_be_read_closes_no_open_gate(continuous: bool) -> None:
    """Unknown is not unhealthy: a throttled or failed read keeps open gates open (in continuous
    mode too) and closed ones closed, saying since when; the Service gets a Warning; once the
    load balancer answers again its own verdict decides."""
    world = World(sticky=not continuous)
    world.add(SERVICES, service())
    world.add(PODS, pod("p1"), pod("p2", ip="10.0.0.2"))
    world.provider.set_health(Target("10.0.0.1", 8080), Health.HEALTHY, "UP")
    await world.reconcile()
    assert gate(world, "p1") == ("True", lb.HEALTHY_REASON)
    assert gate(world, "p2") == ("False", "InitialHealthChecking")
    world.provider.fail("targets", ProviderError("Throttling: Rate exceeded"), times=3)
    for _ in range(3):
        with pytest.raises(ProviderError):
            await world.reconcile()
        assert gate(world, "p1") == ("True", lb.HEALTHY_REASON)
        assert ("Service", "web", "LoadBalancerError", "Warning") in world.recorder.events
    assert gate(world, "p2") == ("False", lb.PROVIDER_ERROR)
    message = (world.condition("p2") or {})["message"]
    assert "cannot read the load balancer since 20" in message and "Throttling" in message
    assert f"{NS}/web" in world.reconciler.unreadable_since
    await world.reconcile()  # it answers again: its own word
    assert gate(world, "p2") == ("False", "InitialHealthChecking")
    assert world.reconciler.unreadable_since == {}
    if continuous:  # and only the load balancer's own verdict closes an open gate
        world.provider.set_health(Target("10.0.0.1", 8080), Health.UNHEALTHY, "connection refused")
        await world.reconcile()
        assert gate(world, "p1") == ("False", "HealthCheckFailing")


async def test_a_replica_whose_lease_is_not_fresh_writes_nothing() -> None:
    """Fencing: a leader whose renewals stopped (a hung API server, a cut network) neither
    changes the load balancer nor writes a gate, even with work queued before it noticed."""
    fenced = [False]

    def fence() -> None:
        if fenced[0]:
            raise Fenced("the leader lease is not fresh")

    world = World(fence=fence)
    world.add(SERVICES, service())
    world.add(PODS, pod("p1"))
    await world.reconcile()
    assert gate(world, "p1") == ("False", "InitialHealthChecking")
    world.add(PODS, pod("p2", ip="10.0.0.2"))
    world.provider.set_health(Target("10.0.0.1", 8080), Health.HEALTHY, "UP")
    calls = len(world.provider.calls)
    fenced[0] = True
    with pytest.raises(Fenced):
        await world.reconcile()
    assert world.kube.writes == [] and len(world.provider.calls) == calls
    world.reconciler.set_gate(
        world.pods.get(f"{NS}/p1"), lb.gate_condition(GATE, [lb.TargetHealth(Health.HEALTHY, "UP")])
    )  # type: ignore[arg-type]
    await world.gates.flush()  # a write submitted before the lease went stale is not sent either
    assert world.kube.writes == [] and gate(world, "p1") == ("False", "InitialHealthChecking")


class _Told:
    """A load balancer that tells its health changes (``Provider.changes``), listening or not."""

    def __init__(self, live: bool) -> None:
        self.live = live

    async def watch(self, changed: Any) -> None:
        await asyncio.Event().wait()


class _TellingProvider(FakeProvider):
    told: _Told | None = None

    def provider(self) -> Any:
        return dataclasses.replace(super().provider(), changes=self.told)


@pytest.mark.parametrize(
    ("live", "draining", "interval"),
    [(True, False, HEARD_POLL), (False, False, 0.0), (True, True, 0.0)],
)
async def test_pending_gates_are_polled_rarely_only_while_the_lb_tells_its_changes(
    live: bool, draining: bool, interval: float
) -> None:
    """Health changes heard as they happen wake the Service: its pending gates need only the
    safety poll.  Not listening, or with targets draining (connections ending are not told),
    the provider's own interval, as before."""
    provider = _TellingProvider()
    provider.told = _Told(live)
    world = World(provider)
    world.add(SERVICES, service())
    world.add(PODS, pod("p1"))
    if draining:  # p2 registered, then leaving with a connection open
        world.add(PODS, pod("p2", "10.0.0.2"))
        await world.reconcile()
        world.kube.add(PODS, pod("p2", "10.0.0.2", terminating=True))
        provider.sessions[Target("10.0.0.2", 8080)] = 1
        await world.reconcile()
    await world.sync()
    outcome = await world.reconciler.reconcile(KEY)
    await world.gates.flush()
    assert gate(world, "p1")[0] == "False"
    assert (outcome.poll, outcome.interval) == (True, interval)
