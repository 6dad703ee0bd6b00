"""The controller process as the command builds it, on FakeKube and a fake provider: its
start-up order, the leader's work starting and stopping with the lease, the reconcile loop's
handling of each outcome, its event filters, and the order it stops in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from podgate.app.build import build
from podgate.app.supervisor import Runnable, Supervisor
from podgate.controller.reconciler import Outcome
from podgate.controller.service_controller import (
    POLLS_PER_PERIOD,
    ServiceController,
    pod_change_matters,
    service_change_matters,
)
from podgate.controller.settings import ControllerSettings
from podgate.kube.api import NAMESPACES, PODS, SERVICES
from podgate.kube.fake import FakeKube
from podgate.model import gates
from podgate.model.lb import Health, Target
from podgate.providers.base import ProviderError
from podgate.providers.fake import FakeProvider

from .world import NS, World, pod, service


# -- the supervisor ----------------------------------------------------------------------------
class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def runnable(self, name: str, fail: BaseException | None = None, **kw: Any) -> Runnable:
        async def run() -> None:
            self.lines.append(f"start {name}")
            try:
                if fail is not None:
                    raise fail
                await asyncio.Event().wait()
            finally:
                self.lines.append(f"stop {name}")

        return Runnable(name, run, **kw)


class Elector:
    """Leader election as a test drives it: ``win()`` and ``lose()``."""

    def __init__(self) -> None:
        self.started: Callable[[], None] = lambda: None
        self.stopped: Callable[[], None] = lambda: None
        self.released = False
        self.running = asyncio.Event()

    async def run(self, on_started: Callable[[], None], on_stopped: Callable[[], None]) -> None:
        self.started, self.stopped = on_started, on_stopped
        self.running.set()
        await asyncio.Event().wait()

    async def release(self) -> None:
        self.released = True


async def synced_at_once() -> None:
    pass


async def until(done: Callable[[], object], seconds: float = 10.0) -> None:
    """Poll the in-memory world until ``done()``: its changes come from tasks, not events."""
    async with asyncio.timeout(seconds):
        while not done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_runnables_start_in_order_and_stop_in_reverse_leader_work_first() -> None:
    log, synced = Log(), asyncio.Event()
    sup = Supervisor(
        [
            log.runnable("health"),
            log.runnable("informers"),
            log.runnable("webhook", after_sync=True),
            log.runnable("reconcile", leader_only=True),
        ],
        synced.wait,
    )
    task = asyncio.create_task(sup.run())
    await settle()
    assert log.lines == ["start health", "start informers"]  # nothing reads an empty cache
    synced.set()
    await settle()
    assert log.lines[2:] == ["start webhook", "start reconcile"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log.lines[4:] == ["stop reconcile", "stop webhook", "stop informers", "stop health"]


async def test_the_leaders_work_runs_only_while_the_lease_is_held_and_serving_goes_on() -> None:
    log, elector, leading = Log(), Elector(), []
    sup = Supervisor(
        [log.runnable("webhook", after_sync=True), log.runnable("reconcile", leader_only=True)],
        synced_at_once,
        elector,
        on_leading=leading.append,
    )
    task = asyncio.create_task(sup.run())
    async with asyncio.timeout(5):
        await elector.running.wait()
    await settle()
    assert log.lines == ["start webhook"] and leading == [False]  # a follower serves, reconciles not
    elector.started()
    await settle()
    assert log.lines == ["start webhook", "start reconcile"] and leading == [False, True]
    elector.stopped()  # lost: the leader's work stops, the webhook keeps serving
    await settle()
    assert log.lines[2:] == ["stop reconcile"] and leading[-1] is False and not task.done()
    elector.started()  # won again: the leader's work starts afresh
    await settle()
    assert log.lines[3:] == ["start reconcile"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log.lines[4:] == ["stop reconcile", "stop webhook"]
    assert elector.released


async def test_a_quick_loss_and_win_are_carried_out_in_order() -> None:
    log, elector = Log(), Elector()
    sup = Supervisor([log.runnable("reconcile", leader_only=True)], synced_at_once, elector)
    task = asyncio.create_task(sup.run())
    async with asyncio.timeout(5):
        await elector.running.wait()
    elector.started()
    elector.stopped()
    elector.started()  # all before any of them ran
    await settle()
    assert log.lines == ["start reconcile", "stop reconcile", "start reconcile"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_failing_runnable_stops_every_other_and_its_error_ends_the_run() -> None:
    log, synced = Log(), asyncio.Event()
    sup = Supervisor(
        [log.runnable("health"), log.runnable("informers", fail=RuntimeError("watch broke"))], synced.wait
    )
    with pytest.raises(RuntimeError, match="watch broke"):
        await sup.run()  # before the caches ever synced
    assert "stop health" in log.lines and sup.stopped == ["health"]  # the failed one had ended


# -- the reconcile loop ------------------------------------------------------------------------
def controller(world: World, **kw: Any) -> tuple[ServiceController, list[tuple[str, str]]]:
    from podgate.kube.queue import WorkQueue

    seen: list[tuple[str, str]] = []
    ctl = ServiceController(
        world.pods,
        world.services,
        world.namespaces,
        world.resolutions,
        world.reconciler,
        WorkQueue(base_delay=0.01, name="unit"),
        on_reconciled=lambda key, result, took, waited: seen.append((key, result)),
        **kw,
    )
    return ctl, seen


@pytest.mark.parametrize(("pending", "period"), [(0, 0.1), (1, 0.1), (POLLS_PER_PERIOD, 0.1), (50, 0.5)])
def test_pending_services_are_read_every_poll_period_stretched_beyond_ten(
    pending: int, period: float
) -> None:
    ctl, _ = controller(World(), poll_period=0.1)
    ctl.polling.update(f"ns/s{i}" for i in range(pending))
    assert ctl.poll_period_now() == pytest.approx(period)


async def test_each_outcome_queues_the_service_as_it_asks() -> None:
    ctl, _ = controller(World(), poll_period=0.05)
    assert ctl.settle(f"{NS}/web", Outcome(poll=True, interval=0.2)) == "requeue_after"
    assert ctl.polling == {f"{NS}/web"}
    assert len(ctl.queue) == 0  # not at once: after the provider's interval
    key, waited = await ctl.queue.get()
    assert key == f"{NS}/web" and waited >= 0
    ctl.queue.done(key)
    assert ctl.settle(f"{NS}/web", Outcome()) == "success"
    assert ctl.polling == set()


async def test_a_failed_pass_is_retried_with_back_off_and_counted_as_an_error() -> None:
    world = World()
    world.add(SERVICES, service())
    world.add(PODS, pod("p1"))
    await world.sync()
    world.provider.fail("targets", ProviderError("throttled"), times=1)
    ctl, seen = controller(world)
    ctl.queue.add(f"{NS}/web")
    worker = asyncio.create_task(ctl.work())
    try:
        await until(lambda: len(seen) >= 2)
    finally:
        worker.cancel()
    assert seen[:2] == [(f"{NS}/web", "error"), (f"{NS}/web", "requeue_after")]


def with_conditions(p: Any, **statuses: str) -> Any:
    """``p`` with its conditions' statuses set (a condition not there yet is added)."""
    conds = {c["type"]: dict(c) for c in p["status"]["conditions"]}
    for ctype, status in statuses.items():
        conds.setdefault(ctype, {"type": ctype})["status"] = status
    return {**p, "status": {**p["status"], "conditions": list(conds.values())}}


def test_ready_and_podgates_own_gate_writes_start_no_pass_but_anothers_do() -> None:
    gate = gates.service_gate("web")
    p = with_conditions(pod("p1"), **{gate: "False"})
    ready = with_conditions(p, Ready="True")
    # the node's Ready after the gate opened: the pod was a target already (ContainersReady)
    assert not pod_change_matters(ready, p)
    # Ready where ContainersReady is not True makes the pod a target: that matters
    unready = with_conditions(p, ContainersReady="False")
    assert pod_change_matters(with_conditions(unready, Ready="True"), unready)
    assert pod_change_matters(with_conditions(p, ContainersReady="False"), p)
    opened = with_conditions(p, **{gate: "True"})
    # podgate's own write, as the cache takes its answer: its pass decided it already
    assert not pod_change_matters(opened, p, (f"{NS}/p1", gate, "True"))
    # anyone else's (or a write podgate did not make: another pod, gate or status) does
    assert pod_change_matters(opened, p)
    assert pod_change_matters(opened, p, (f"{NS}/p2", gate, "True"))
    assert pod_change_matters(opened, p, (f"{NS}/p1", gates.service_gate("api"), "True"))
    assert pod_change_matters(opened, p, (f"{NS}/p1", gate, "False"))
    # the answer to podgate's write carried someone else's change too: that one counts
    both = with_conditions(opened, **{gates.service_gate("api"): "False"})
    assert pod_change_matters(both, p, (f"{NS}/p1", gate, "True"))


async def test_events_that_cannot_change_targets_or_gates_queue_nothing() -> None:
    world = World()
    world.add(SERVICES, service())
    await world.sync()
    ctl, _ = controller(world)
    p = pod("p1")
    touched = {**p, "metadata": {**p["metadata"], "annotations": {"note": "x"}}}
    assert not pod_change_matters(touched, p)  # type: ignore[arg-type]
    ctl.on_pod("MODIFIED", touched, p)  # type: ignore[arg-type]
    assert len(ctl.queue) == 0
    relabelled = {**p, "metadata": {**p["metadata"], "labels": {"app": "other"}}}
    ctl.on_pod("MODIFIED", relabelled, p)  # type: ignore[arg-type]
    assert len(ctl.queue) == 1  # it left the Service's selector: drained

    svc = service()
    with_status = {**svc, "status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.9"}]}}}
    assert not service_change_matters(with_status, svc)  # type: ignore[arg-type]
    ctl.on_service("MODIFIED", with_status, svc)  # type: ignore[arg-type]
    assert len(ctl.queue) == 1  # podgate's own address write: nothing to do
    ctl.on_service("DELETED", svc, None)
    assert len(ctl.queue) == 1  # queued: its pass releases the load balancer, then forgets it


# -- the process as built ----------------------------------------------------------------------
def settings(tmp: Path, **kw: Any) -> ControllerSettings:
    return ControllerSettings(
        default_provider="fake",
        health_bind="127.0.0.1",
        health_port=0,
        drain_bind="127.0.0.1",
        drain_port=0,
        webhook_bind="127.0.0.1",
        webhook_port=0,
        webhook_cert_dir=tmp,
        poll_period=0.02,
        **kw,
    )


async def test_the_built_process_gates_a_pod_on_the_fake_load_balancers_word(tmp_path: Path) -> None:
    kube, provider = FakeKube(), FakeProvider()
    kube.add(NAMESPACES, {"metadata": {"name": NS}})
    kube.add(SERVICES, service())
    kube.add(PODS, pod("p1", "10.0.0.1"))
    app = build(settings(tmp_path), kube, {"fake": provider.provider()})
    assert app.supervisor is not None
    run = asyncio.create_task(app.supervisor.run())
    gate = gates.service_gate("web")

    def condition() -> dict[str, Any] | None:
        obj = kube.object(PODS, "p1", NS) or {}
        return next((c for c in obj["status"].get("conditions", ()) if c["type"] == gate), None)

    try:
        await until(lambda: app.webhook.up.is_set() and condition())
        assert app.leading and app.problems() == []
        assert condition()["status"] == "False"  # type: ignore[index]  # registered, not healthy yet
        provider.set_health(Target("10.0.0.1", 8080), Health.HEALTHY, "UP")
        await until(lambda: condition()["status"] == "True")  # type: ignore[index]
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await app.close()
    started = app.supervisor.started
    # the hook's own listener on every replica, with the health one, before the caches fill
    assert started[:2] == ["health server", "drain server"]
    assert started.index("health server") < started.index("webhook server")
    assert started.index("webhook server") < started.index("service controller")
    stopped = app.supervisor.stopped
    assert stopped[:3] == ["gate writers", "service controller", "check gates"]
    assert stopped[-1] == "health server"


def test_building_twice_shares_nothing(tmp_path: Path) -> None:
    """No component is a module global: two processes in one interpreter (tests) stay apart."""
    one = build(settings(tmp_path), FakeKube(), {"fake": FakeProvider().provider()})
    two = build(settings(tmp_path), FakeKube(), {"fake": FakeProvider().provider()})
    assert one.queue is not two.queue and one.resolutions is not two.resolutions
    assert [r.name for r in one.runnables] == [r.name for r in two.runnables]
    leader = {r.name for r in one.runnables if r.leader_only}
    assert leader == {"gate writers", "service controller", "check gates"}


async def test_a_replica_whose_watch_stopped_making_progress_fails_liveness(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    kube = FakeKube()
    kube.add(NAMESPACES, {"metadata": {"name": NS}})
    app = build(settings(tmp_path), kube, {"fake": FakeProvider().provider()})
    for informer in app.informers():
        await informer.relist()
    async with TestClient(TestServer(app.health.app())) as http:
        assert (await http.get("/healthz")).status == 200
        app.pods.progressed_at -= 3600  # an hour without an event, a bookmark or a new watch
        answer = await http.get("/healthz")
        assert answer.status == 503 and "informer pods has made no progress" in await answer.text()


async def test_the_pass_that_finds_a_service_gone_forgets_it() -> None:
    world = World()
    world.add(SERVICES, service())
    await world.sync()
    forgotten: list[str] = []
    ctl, seen = controller(world, on_forgotten=forgotten.append)
    worker = asyncio.create_task(ctl.work())
    try:
        ctl.queue.add(f"{NS}/web")
        await until(lambda: len(seen) == 1)
        assert forgotten == []
        await world.kube.delete(SERVICES, "web", NS)
        await world.sync()
        ctl.queue.add(f"{NS}/web")
        await until(lambda: len(seen) == 2)
    finally:
        worker.cancel()
    assert forgotten == [f"{NS}/web"]


async def test_with_cert_manager_files_podgate_registers_nothing_and_still_injects_the_drain_hook(
    tmp_path: Path,
) -> None:
    """The cert-manager overlay: a leaf from cert-manager's CA in files, ``--webhook-service`` for
    the drain URL.  podgate writes no webhook configuration and no Secret (cert-manager's CA
    injector owns the caBundle; a leaf written there would swap the trust anchor at every
    renewal), and pods still get the drain hook at the Service's ClusterIP."""
    import datetime as dt

    from podgate.kube.pki import new_ca, new_serving_cert

    ca = new_ca("podgate-webhook-ca", dt.timedelta(days=3650))
    crt, key = new_serving_cert("podgate", ["podgate.podgate-system.svc"], [], ca, dt.timedelta(days=90))
    (tmp_path / "tls.crt").write_bytes(crt)
    (tmp_path / "tls.key").write_bytes(key)
    kube = FakeKube()
    kube.add(NAMESPACES, {"metadata": {"name": NS}})
    kube.add(
        SERVICES,
        {
            "metadata": {"name": "podgate", "namespace": "podgate-system"},
            "spec": {
                "clusterIP": "10.96.0.12",
                "ports": [
                    {"name": "webhook", "port": 443, "targetPort": "webhook"},
                    {"name": "metrics", "port": 8080, "targetPort": "health"},
                    {"name": "drain", "port": 8081, "targetPort": "drain"},  # deploy/base's
                ],
            },
        },
    )
    app = build(
        settings(
            tmp_path,
            webhook_service="podgate-system/podgate",
            webhook_cert_file=tmp_path / "tls.crt",
            webhook_key_file=tmp_path / "tls.key",
        ),
        kube,
        {"fake": FakeProvider().provider()},
    )
    assert app.supervisor is not None
    run = asyncio.create_task(app.supervisor.run())
    try:
        await until(lambda: app.webhook.up.is_set())
        policy = await app.webhook.injection_policy()
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await app.close()
    assert policy.drain_url == "http://10.96.0.12:8081"
    written = {w.resource for w in kube.writes}
    assert not written & {"mutatingwebhookconfigurations", "validatingwebhookconfigurations", "secrets"}


async def test_a_load_balancer_that_cannot_be_read_is_retried_within_its_poll_interval() -> None:
    """After minutes of throttling the Service is not left waiting on the queue's half-minute
    back-off: a retry of an unreadable load balancer waits at most the provider's poll interval
    (at least the controller's poll period); other failures, and a permanent refusal, back off
    as far as the queue's cap."""
    world = World()
    world.add(SERVICES, service())
    await world.sync()
    ctl, _ = controller(world, poll_period=0.05)
    key = f"{NS}/web"
    world.provider.poll_interval = 0.5
    assert ctl.retry_cap(key, ProviderError("Throttling: Rate exceeded")) == 0.5
    world.provider.poll_interval = 0.0
    assert ctl.retry_cap(key, ProviderError("Throttling: Rate exceeded")) == 0.05  # the poll period
    assert ctl.retry_cap(key, ProviderError("no such target group", permanent=True)) is None
    assert ctl.retry_cap(key, RuntimeError("a bug")) is None
    assert ctl.retry_cap(f"{NS}/gone", ProviderError("throttled")) == 0.05

    for _ in range(20):  # an outage's worth of failures
        ctl.queue.add_rate_limited(key, ctl.retry_cap(key, ProviderError("throttled")))
    assert max(ctl.queue.delays()) - time.monotonic() <= 0.05 + 0.01


async def test_a_heard_change_queues_its_service_at_once_and_a_gap_every_pending_one() -> None:
    world = World()
    world.add(SERVICES, service(), service("api"))
    await world.sync()
    ctl, _ = controller(world)
    ctl.heard(f"{NS}/web")
    ctl.heard(f"{NS}/gone")  # a backend whose Service is no more: nothing to do
    assert len(ctl.queue) == 1 and (await ctl.queue.get())[0] == f"{NS}/web"
    ctl.queue.done(f"{NS}/web")
    ctl.polling.update({f"{NS}/api", f"{NS}/web"})
    ctl.heard(None)  # listening (again): what changed meanwhile was heard by no one
    assert {(await ctl.queue.get())[0] for _ in range(2)} == {f"{NS}/api", f"{NS}/web"}


async def test_heard_changes_start_a_services_pass_at_most_once_a_poll_period() -> None:
    """A burst of changes (a hundred targets turning UP one after another) costs a pass per
    poll period, not a pass each: the first change after a quiet spell at once, the next ones
    when a period has passed since the last pass started."""
    world = World()
    world.add(SERVICES, service())
    await world.sync()
    ctl, _ = controller(world, poll_period=0.2)
    key = f"{NS}/web"
    ctl.heard(key)  # no pass yet: at once
    assert len(ctl.queue) == 1 and ctl.queue.delays() == []
    now = time.monotonic()
    ctl.started[key] = now  # as a worker marks the pass it starts
    await ctl.queue.get()
    ctl.queue.done(key)
    for _ in range(50):
        ctl.heard(key)
    assert len(ctl.queue) == 0
    (due,) = ctl.queue.delays()  # one delayed add for all fifty, a period after the pass began
    assert now + 0.2 - 0.01 <= due <= now + 0.2 + 0.01
    ctl.started[key] = now - 1.0  # the last pass long ago: the next change at once
    ctl.heard(key)
    assert len(ctl.queue) == 1
