"""The composition root: every component of the controller process built once, with its
dependencies given at construction, and the runnables the supervisor starts.

Nothing here decides anything; it only says who gets what.  A unit test calls :func:`build`
with :class:`~podgate.kube.fake.FakeKube` and a fake provider and gets the same process the
command runs, minus the sockets it has not started yet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from podgate.app.admission import no_setup
from podgate.app.drain_server import DrainServer
from podgate.app.health import HealthServer
from podgate.app.supervisor import Runnable, Supervisor
from podgate.app.webhook import WebhookServer
from podgate.controller import gctune, metrics
from podgate.controller.checks import CheckRunner, checks_informer
from podgate.controller.gatewriter import GateWriter
from podgate.controller.pending import PendingGates
from podgate.controller.reconciler import ServiceReconciler
from podgate.controller.service_controller import ServiceController
from podgate.controller.settings import ControllerSettings, SettingsError
from podgate.kube.api import NAMESPACES, PODS, SERVICES, Kube, Obj
from podgate.kube.events import EventRecorder
from podgate.kube.informer import EventType, Informer, key_of
from podgate.kube.leader import LeaderElector
from podgate.kube.queue import WorkQueue
from podgate.kube.records import ConfigMapRecords
from podgate.model.policy import OPEN, GatePolicy
from podgate.model.projection import slim_namespace, slim_pod, slim_service
from podgate.model.ratelimit import BucketRegistry, RateConflict
from podgate.model.types import Namespace, PodView, Service
from podgate.providers.alibaba import AlibabaProvider
from podgate.providers.aws_elbv2 import AwsElbv2Provider
from podgate.providers.base import Provider
from podgate.providers.haproxy import HAProxyProvider
from podgate.providers.reads import PoolReads
from podgate.resolutions import ServiceResolutions, grants_informer
from podgate.webhook import drain, eviction


@dataclass
class App:
    """The controller process: its components, and the supervisor that runs them."""

    settings: ControllerSettings
    kube: Kube
    providers: Mapping[str, Provider]
    pods: Informer[PodView]
    services: Informer[Service]
    namespaces: Informer[Namespace]
    checks: Informer[Obj]
    #: the administrator's LoadBalancerGroupGrants (model.grants)
    grants: Informer[Obj]
    recorder: EventRecorder
    resolutions: ServiceResolutions
    reads: PoolReads
    gates: GateWriter
    queue: WorkQueue
    reconciler: ServiceReconciler
    controller: ServiceController
    check_runner: CheckRunner
    drain: drain.DrainEndpoint
    guard: eviction.EvictionGuard
    pending: PendingGates
    webhook: WebhookServer
    health: HealthServer
    drain_server: DrainServer
    elector: LeaderElector | None
    #: whether this replica holds the lease (always, without leader election)
    leading: bool = False
    runnables: list[Runnable] = field(default_factory=list)
    supervisor: Supervisor | None = None

    def informers(
        self,
    ) -> tuple[Informer[PodView], Informer[Service], Informer[Namespace], Informer[Obj]]:
        """The informers readiness waits for.  The grants do: before they are listed every
        Service naming a group would be refused.  ReadinessChecks do not: without that CRD
        installed its informer retries in the background and check gates have no checks."""
        return (self.pods, self.services, self.namespaces, self.grants)

    async def synced(self) -> None:
        await asyncio.gather(*(i.synced.wait() for i in self.informers()))

    def problems(self) -> list[str]:
        """Why this replica is not ready (/readyz); empty when it is."""
        out = [f"informer {i.name} not synced" for i in self.informers() if not i.synced.is_set()]
        out += [f"load balancer {n} unreachable" for n, ok in self.controller.provider_ok.items() if not ok]
        if not out and not self.webhook.up.is_set():
            out.append(
                "webhook not serving yet (no certificate, its CA bundle not registered, or the admission "
                "process not up)"
            )
        return out

    def wedged(self) -> list[str]:
        """Why this replica should be restarted (/healthz): an informer that has made no
        progress for two watch timeouts keeps a stale cache for ever."""
        return [
            f"informer {i.name} has made no progress since its watch stopped"
            for i in (*self.informers(), self.checks)
            if i.synced.is_set() and i.stalled()
        ]

    def tracked(self) -> dict[str, int]:
        """How many entries every per-pod, per-target and per-Service map of this replica holds
        (``podgate_tracked_entries``; the churn benchmark reads it): each is forgotten when its
        pod, target or Service goes."""
        parts: dict[str, Mapping[str, int]] = {
            "gatewriter": self.gates.tracked(),
            "reconciler": {**self.reconciler.tracked(), "unreadable": len(self.reconciler.unreadable_since)},
            "checks": self.check_runner.tracked(),
            "events": self.recorder.tracked(),
            "eviction": self.guard.tracked(),
            "reads": {"pools": len(self.reads)},
            "resolutions": {"services": len(self.resolutions)},
            "controller": {"polling": len(self.controller.polling)},
            "pending": {"pods": len(self.pending)},
        }
        return {f"{owner}.{name}": n for owner, sizes in parts.items() for name, n in sizes.items()}

    def _forget_service(self, kind: EventType, svc: Service, old: Service | None) -> None:
        """A Service gone takes with it what this replica kept about it: its Events' folding
        and its pools' reads (on every replica; on the leader the pass that finds it gone
        releases its load balancer and forgets the rest)."""
        if kind == "DELETED":
            self.recorder.forget_deleted(kind, svc, old)
            self.reads.forget_service(key_of(svc))

    def _set_leading(self, leading: bool) -> None:
        self.leading = leading

    async def close(self) -> None:
        """Close the providers' connections (after the supervisor has stopped everything)."""
        for provider in self.providers.values():
            with contextlib.suppress(Exception):
                await provider.pool.close()


def build_providers(
    settings: ControllerSettings, buckets: BucketRegistry | None = None, *, kube: Kube
) -> dict[str, Provider]:
    """Each configured load balancer's record: its target seam and the capabilities it has.

    The cloud providers draw their API calls from ``buckets`` (a new registry: the controller
    builds its providers once), one token bucket per cloud account and region, so every Service
    and every provider on one account and region share the configured rate.  Two providers on
    one account and region with different rates: :class:`SettingsError`.  ``kube`` keeps the
    AWS provider's records of the targets it registered (ConfigMaps in ``settings.namespace``)."""
    buckets = buckets if buckets is not None else BucketRegistry()
    records = ConfigMapRecords(kube, settings.namespace)
    providers: dict[str, Provider] = {}
    try:
        for h in settings.haproxy:
            providers[h.name] = HAProxyProvider(
                list(h.runtime_sockets),
                name=h.name,
                master_address=h.master_socket,
                config_path=h.config_path,
                base_config=h.base_config_path.read_text() if h.base_config_path else "",
                require_all=h.ha_policy == "all",
            ).provider()
        for a in settings.aws:
            providers[a.name] = AwsElbv2Provider(
                a.name,
                a.region,
                records=records,
                rate=a.rate,
                poll_interval=a.poll_period,
                buckets=buckets,
                cluster=settings.cluster_name,
            ).provider()
        for ali in settings.alibaba:
            providers[ali.name] = AlibabaProvider(
                ali.name,
                ali.region or "",
                clb_endpoint=ali.clb_endpoint,
                nlb_endpoint=ali.nlb_endpoint,
                ecs_endpoint=ali.ecs_endpoint,
                rate=ali.rate,
                poll_interval=ali.poll_period,
                buckets=buckets,
                cluster=settings.cluster_name,
            ).provider()
    except RateConflict as e:
        raise SettingsError(str(e)) from None
    return providers


def build(
    settings: ControllerSettings,
    kube: Kube,
    providers: Mapping[str, Provider],
    *,
    child_setup: Callable[[], None] = no_setup,
) -> App:
    """Every component once, each given what it needs; then the runnables, in start order.
    ``child_setup``: what the admission process calls first (the command's logging setup)."""
    pods: Informer[PodView] = Informer(kube, PODS, project=slim_pod)
    # snapshots: the webhook reads Services from its own thread (webhook.isolated)
    services: Informer[Service] = Informer(kube, SERVICES, project=slim_service, snapshots=True)
    namespaces: Informer[Namespace] = Informer(kube, NAMESPACES, project=slim_namespace)
    checks = checks_informer(kube)
    grants = grants_informer(kube)
    recorder = EventRecorder(kube, "podgate")
    instrumented = {name: metrics.instrumented(p) for name, p in providers.items()}
    policy = GatePolicy(
        timeout=settings.readiness_timeout,
        fail_open=settings.on_timeout == OPEN,
        continuous=settings.continuous,
    )
    resolutions = ServiceResolutions(
        services,
        instrumented,
        default_provider=settings.default_provider,
        classes=settings.classes(),
        policy=policy,
        grants=grants,
    )
    #: one read of a pool per poll, shared by the reconciler, the drain hooks and the guard
    reads = PoolReads()
    elector = _elector(settings, kube)
    gate_writer, queue, reconciler, controller = _reconciling(
        settings, kube, pods, services, namespaces, resolutions, recorder, reads, elector
    )
    metrics.drain_results(drain.RESULTS)
    drain_endpoint = drain.DrainEndpoint(
        kube,
        pods,
        services,
        resolutions,
        recorder,
        observe=metrics.observe_drain,
        poll=settings.poll_period,
        reads=reads,
    )
    guard = eviction.EvictionGuard(
        pods,
        services,
        resolutions,
        lambda result: metrics.EVICTION_REVIEWS.labels(result).inc(),
        reads=reads,
        recorder=recorder,
        max_refusal=settings.max_eviction_refusal,
        on_forced=metrics.EVICTIONS_FORCED.inc,
    )
    app = App(
        settings=settings,
        kube=kube,
        providers=instrumented,
        pods=pods,
        services=services,
        namespaces=namespaces,
        checks=checks,
        grants=grants,
        recorder=recorder,
        resolutions=resolutions,
        reads=reads,
        gates=gate_writer,
        queue=queue,
        reconciler=reconciler,
        controller=controller,
        check_runner=CheckRunner(
            kube, pods, checks, gate_writer, recorder, prometheus_allow=settings.prometheus_allow
        ),
        drain=drain_endpoint,
        guard=guard,
        pending=PendingGates(pods),
        webhook=_webhook(settings, kube, services, checks, resolutions, guard, child_setup),
        health=HealthServer(
            settings.health_bind,
            settings.health_port,
            lambda: app.problems(),
            metrics.REGISTRY,
            lambda: app.wedged(),
        ),
        drain_server=DrainServer(settings.drain_bind, settings.drain_port, drain_endpoint),
        elector=elector,
    )
    # what the process keeps about a pod or Service goes with it (the gate writer, check runner,
    # eviction guard and pending tally forget in handlers of their own)
    pods.add_handler(recorder.forget_deleted)
    services.add_handler(app._forget_service)
    app.runnables = _runnables(app)
    app.supervisor = Supervisor(app.runnables, app.synced, app.elector, on_leading=app._set_leading)
    return app


def _reconciling(
    settings: ControllerSettings,
    kube: Kube,
    pods: Informer[PodView],
    services: Informer[Service],
    namespaces: Informer[Namespace],
    resolutions: ServiceResolutions,
    recorder: EventRecorder,
    reads: PoolReads,
    elector: LeaderElector | None,
) -> tuple[GateWriter, WorkQueue, ServiceReconciler, ServiceController]:
    """The leader's side: the gate writer, the work queue, the reconciler and its loop, each
    write fenced by the lease (with leader election)."""
    fence = elector.fence if elector is not None else _unfenced
    gate_writer = GateWriter(kube, pods, recorder, fence)
    queue = WorkQueue(name="services", metrics=metrics.QueueCounters())
    reconciler = ServiceReconciler(
        kube,
        pods,
        services,
        namespaces,
        resolutions,
        recorder,
        gate_writer,
        migration_labels=settings.migration_labels,
        lb_cidr=settings.lb_cidr,
        adopted_prefixes=settings.adopt_gate_prefixes,
        reads=reads,
        on_write_failed=queue.add_rate_limited,
        fence=fence,
    )
    controller = ServiceController(
        pods,
        services,
        namespaces,
        resolutions,
        reconciler,
        queue,
        workers=settings.workers,
        poll_period=settings.poll_period,
        resync_period=settings.resync_period,
        adopted_prefixes=settings.adopt_gate_prefixes,
        on_reconciled=metrics.observe_reconcile,
        on_forgotten=metrics.forget_service,
    )
    return gate_writer, queue, reconciler, controller


def _unfenced() -> float | None:
    """The only replica (no leader election) always writes, bounded only by the request's own
    timeout."""
    return None


def _webhook(
    settings: ControllerSettings,
    kube: Kube,
    services: Informer[Service],
    checks: Informer[Obj],
    resolutions: ServiceResolutions,
    guard: eviction.EvictionGuard,
    child_setup: Callable[[], None],
) -> WebhookServer:
    return WebhookServer(
        settings,
        kube,
        services,
        checks,
        resolutions,
        guard,
        observe=metrics.observe_webhook,
        on_tls_failure=_count_tls_failure,
        child_setup=child_setup,
    )


def _count_tls_failure(reason: str) -> None:
    metrics.WEBHOOK_TLS_FAILURES.labels(reason).inc()


def _elector(settings: ControllerSettings, kube: Kube) -> LeaderElector | None:
    """client-go's proportions: renew within two thirds of the lease, retry every 2 s of 15."""
    if not settings.leader_elect:
        return None
    return LeaderElector(
        kube,
        settings.leader_election_namespace,
        settings.leader_election_name,
        settings.identity,
        lease_duration=settings.lease_duration,
        renew_deadline=settings.lease_duration * 2 / 3,
        retry_period=settings.lease_duration / 7.5,
    )


def _runnables(app: App) -> list[Runnable]:
    """In start order.  Every replica: the health listener (first, so probes answer while the
    caches fill), the drain listener (a hook arriving before the caches fill waits for them a
    few seconds), the informers and the event sender; once synced, the webhook and a collection
    that freezes the first-synced caches.  The leader only: the reconcile loop, the gate writers
    that send what its passes submit, and the check gates."""
    every = [Runnable("health server", app.health.run), Runnable("drain server", app.drain_server.run)]
    every += [Runnable(f"informer {i.name}", i.run) for i in (*app.informers(), app.checks)]
    every.append(Runnable("events", app.recorder.run))
    after_sync = [
        Runnable("webhook server", app.webhook.run, after_sync=True),
        Runnable("gc freeze", _freeze, after_sync=True),
    ]
    leader = [
        Runnable("gate writers", app.gates.run, leader_only=True),
        Runnable("service controller", app.controller.run, leader_only=True),
        Runnable("check gates", app.check_runner.run, leader_only=True),
    ]
    return every + after_sync + leader


async def _freeze() -> None:
    """The caches as first listed are never scanned by the garbage collector again."""
    gctune.freeze()


def state_readings(app: App) -> metrics.StateReadings:
    """The scrape-time gauges, each read from the component that owns the state."""
    return metrics.StateReadings(
        queue_depth=lambda: {app.queue.name: len(app.queue)},
        gate_writes_pending=app.gates.pending,
        pending_by_reason=app.pending.by_reason,
        pending_by_age=app.pending.by_age,
        throttled=lambda: {
            name: p.throttling.throttled for name, p in app.providers.items() if p.throttling is not None
        },
        leading=lambda: app.leading,
        unreadable=lambda: len(app.reconciler.unreadable_since),
        tracked=app.tracked,
    )
