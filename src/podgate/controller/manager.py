"""Wiring: informers, the work queue, reconcile workers, load-balancer watchers, the webhook.

The order at start matters: caches sync first, then the whole load-balancer structure is set in
one step (a restarted controller must not drop the Services it has not reconciled yet), then
every Service is queued, and only then do the workers run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kubernetes_asyncio import client

from podgate.controller import metrics
from podgate.controller.checks import CheckRunner, checks_informer, parsed_checks
from podgate.controller.reconciler import ServiceReconciler, services_for_event
from podgate.controller.settings import ControllerSettings, SettingsError
from podgate.kube.api import NAMESPACES, PODS, SERVICES
from podgate.kube.client import ApiKube
from podgate.kube.events import EventRecorder
from podgate.kube.informer import EventType, Informer, key_of
from podgate.kube.leader import LeaderElector
from podgate.kube.queue import WorkQueue
from podgate.kube.webhookcerts import CertificateSecret
from podgate.model import conditions as cond
from podgate.model import gates, lb
from podgate.model.certs import RotationPolicy
from podgate.model.policy import OPEN, GatePolicy
from podgate.model.projection import slim_namespace, slim_pod, slim_service
from podgate.model.ratelimit import BucketRegistry, RateConflict
from podgate.model.types import Namespace, Pod, Service, meta_of, pod_conditions, pod_ip, pod_spec
from podgate.providers.alibaba import AlibabaProvider
from podgate.providers.aws_elbv2 import AwsElbv2Provider
from podgate.providers.base import Provider, ProviderError, Provisioning, ServiceLB
from podgate.providers.haproxy import HAProxyProvider
from podgate.providers.reads import PoolReads
from podgate.webhook import drain, eviction, isolated
from podgate.webhook import server as webhook
from podgate.webhook.admission import InjectionPolicy

log = logging.getLogger(__name__)
#: pending Services read every ``--poll-period``; more stretch the period (see ``_poll_period``)
POLLS_PER_PERIOD = 10


def build_providers(
    settings: ControllerSettings, buckets: BucketRegistry | None = None
) -> dict[str, Provider]:
    """Each configured load balancer's record: its target seam and the capabilities it has.

    The cloud providers draw their API calls from ``buckets`` (a new registry: the controller
    builds its providers once), one token bucket per cloud account and region, so every Service
    and every provider on one account and region share the configured rate.  Two providers on
    one account and region with different rates: :class:`SettingsError`."""
    buckets = buckets if buckets is not None else BucketRegistry()
    try:
        return _build_providers(settings, buckets)
    except RateConflict as e:
        raise SettingsError(str(e)) from None


def _build_providers(settings: ControllerSettings, buckets: BucketRegistry) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for h in settings.haproxy:
        base = h.base_config_path.read_text() if h.base_config_path else ""
        providers[h.name] = HAProxyProvider(
            list(h.runtime_sockets),
            name=h.name,
            master_address=h.master_socket,
            config_path=h.config_path,
            base_config=base,
            require_all=h.ha_policy == "all",
        ).provider()
    for a in settings.aws:
        providers[a.name] = AwsElbv2Provider(
            a.name, a.region, rate=a.rate, poll_interval=a.poll_period, buckets=buckets
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
        ).provider()
    return providers


class Controller:
    def __init__(
        self,
        settings: ControllerSettings,
        api: client.ApiClient,
        providers: Mapping[str, Provider] | None = None,
    ) -> None:
        self.settings = settings
        self.kube = ApiKube(api)
        # slim projections (model.projection): the raw objects are not kept
        self.pods: Informer[Pod] = Informer(self.kube, PODS, project=slim_pod)
        # snapshots: the webhook reads Services from its own thread (webhook.isolated)
        self.services: Informer[Service] = Informer(self.kube, SERVICES, project=slim_service, snapshots=True)
        self.namespaces: Informer[Namespace] = Informer(self.kube, NAMESPACES, project=slim_namespace)
        self.checks = checks_informer(self.kube)
        self.providers = dict(providers) if providers is not None else build_providers(settings)
        self.recorder = EventRecorder(self.kube, "podgate")
        instrumented = {n: metrics.instrumented(p) for n, p in self.providers.items()}
        #: one read of a pool per poll, shared by the reconciler, the drain hooks and the guard
        self.reads = PoolReads()
        self.reconciler = ServiceReconciler(
            self.kube,
            self.pods,
            self.services,
            self.namespaces,
            instrumented,
            settings.default_provider,
            self.recorder,
            classes=settings.classes(),
            migration_labels=settings.migration_labels,
            lb_cidr=settings.lb_cidr,
            policy=GatePolicy(
                timeout=settings.readiness_timeout,
                fail_open=settings.on_timeout == OPEN,
                continuous=settings.continuous,
            ),
            adopted_prefixes=settings.adopt_gate_prefixes,
            reads=self.reads,
        )
        self.check_runner = CheckRunner(
            self.kube, self.pods, self.checks, self.reconciler.gates, self.recorder
        )
        self.queue = WorkQueue(name="services")
        self.reconciler.on_write_failed = self.queue.add_rate_limited
        #: the preStop drain hook's endpoint: every replica serves it (webhook and health ports)
        self.drain = drain.DrainEndpoint(
            self.kube,
            self.pods,
            self.services,
            self.reconciler.providers,
            settings.default_provider,
            self.recorder,
            classes=self.reconciler.classes,
            observe=metrics.observe_drain,
            poll=settings.poll_period,
            reads=self.reads,
        )
        self.elector = (
            LeaderElector(
                self.kube,
                settings.leader_election_namespace,
                settings.leader_election_name,
                settings.identity,
                lease_duration=settings.lease_duration,
                renew_deadline=settings.lease_duration * 2 / 3,
                retry_period=settings.lease_duration / 7.5,
            )
            if settings.leader_elect
            else None
        )
        self.pods.add_handler(self._on_pod)
        self.services.add_handler(self._on_service)
        self.namespaces.add_handler(self._on_namespace)
        # what the process keeps about a pod or Service goes with it (their Events' folding here;
        # the gate writer, check runner and eviction guard forget in handlers of their own)
        self.pods.add_handler(self.recorder.forget_deleted)
        self.services.add_handler(self._forget_service)
        self.ready = asyncio.Event()
        #: leader election sets this; without it, this replica is the only one and reconciles
        self.is_leader = True
        #: whether each provider answered its last generation check (for /readyz)
        self.provider_ok: dict[str, bool] = {}
        #: Services whose last pass left gates pending (re-read every ``_poll_period()``)
        self._polling: set[str] = set()

    # -- event handlers: enqueue keys, nothing else --------------------------------------------
    def _on_pod(self, kind: EventType, pod: Pod, old: Pod | None) -> None:
        if old is not None and kind == "MODIFIED" and not _pod_change_matters(pod, old):
            return
        namespace = meta_of(pod).get("namespace") or ""
        for key in services_for_event(
            pod, old, self.services.in_namespace(namespace), self.settings.adopt_gate_prefixes
        ):
            self.queue.add(key)

    def _on_service(self, kind: EventType, svc: Service, old: Service | None) -> None:
        if (
            old is not None
            and kind == "MODIFIED"
            and old.get("spec") == svc.get("spec")
            and meta_of(old).get("annotations") == meta_of(svc).get("annotations")
            and meta_of(old).get("deletionTimestamp") == meta_of(svc).get("deletionTimestamp")
        ):
            return  # a status-only change (ours): nothing to do
        self.queue.add(key_of(svc))

    def _on_namespace(self, kind: EventType, ns: Namespace, old: Namespace | None) -> None:
        for svc in self.services.in_namespace(ns["metadata"]["name"]):
            self.queue.add(key_of(svc))

    def _forget_service(self, kind: EventType, svc: Service, old: Service | None) -> None:
        """A Service gone takes with it what this replica kept about it: its Events' folding
        and its pools' reads (on every replica; on the leader the reconcile of the gone Service
        releases its load balancer and forgets the rest)."""
        if kind == "DELETED":
            self.recorder.forget_deleted(kind, svc, old)
            self.reads.forget_service(key_of(svc))

    def tracked(self) -> dict[str, int]:
        """How many entries every per-pod, per-target and per-Service map of this replica holds
        (``podgate_tracked_entries``: the churn benchmark reads it)."""
        parts: dict[str, Mapping[str, int]] = {
            "gatewriter": self.reconciler.gates.tracked(),
            "reconciler": self.reconciler.tracked(),
            "checks": self.check_runner.tracked(),
            "events": self.recorder.tracked(),
            "reads": {"pools": len(self.reads)},
            "controller": {"polling": len(self._polling)},
        }
        return {f"{owner}.{name}": n for owner, sizes in parts.items() for name, n in sizes.items()}

    # -- run ----------------------------------------------------------------------------------
    async def run(self) -> None:
        # The ReadinessCheck informer does not hold up readiness: without the CRD installed it
        # retries in the background and check gates simply have no checks.
        tasks = [
            asyncio.create_task(i.run(), name=f"informer {i.name}")
            for i in (self.pods, self.services, self.namespaces, self.checks)
        ]
        tasks.append(asyncio.create_task(self.recorder.run(), name="events"))
        try:
            await asyncio.gather(*(i.synced.wait() for i in (self.pods, self.services, self.namespaces)))
            log.info(
                "caches synced: %d pods, %d services, %d namespaces",
                len(self.pods.cache),
                len(self.services.cache),
                len(self.namespaces.cache),
            )
            # Every replica serves the webhook from warm caches; only the leader reconciles.
            self.ready.set()
            if self.elector is None:
                tasks.append(asyncio.create_task(self._lead(), name="lead"))
            else:
                self.is_leader = False
                lost = asyncio.Event()

                def started() -> None:
                    self.is_leader = True
                    tasks.append(asyncio.create_task(self._lead(), name="lead"))

                def stopped() -> None:
                    self.is_leader = False
                    lost.set()

                tasks.append(asyncio.create_task(self.elector.run(started, stopped), name="election"))
                tasks.append(asyncio.create_task(_raise_when(lost), name="stepped down"))
            await asyncio.gather(*tasks)
        finally:
            await _cancel_all(tasks)  # let them close their sessions
            if self.elector is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(3.0):
                        await self.elector.release()
            for provider in self.providers.values():
                with contextlib.suppress(Exception):
                    await provider.pool.close()

    async def _lead(self) -> None:
        await self._sync_structure()
        self.enqueue_all()
        work = [asyncio.create_task(self._worker(), name=f"worker {i}") for i in range(self.settings.workers)]
        work += [
            asyncio.create_task(self._watch_generation(name, p.provisioning), name=f"generation {name}")
            for name, p in self.providers.items()
            if p.provisioning is not None
        ]
        work.append(asyncio.create_task(self._resync(), name="resync"))
        # the reconcile passes submit gate writes; these tasks send them (see controller.gatewriter)
        work.append(asyncio.create_task(self.reconciler.gates.run(), name="gate writers"))
        work.append(asyncio.create_task(self.check_runner.run(), name="check gates"))
        try:
            await asyncio.gather(*work)
        finally:
            await _cancel_all(work)

    def enqueue_all(self) -> None:
        for key in self.services.cache:
            self.queue.add(key)
        for pod in self.pods.cache.values():
            for g in cond.readiness_gates(pod_spec(pod)):
                svc = gates.service_of_gate(g, self.settings.adopt_gate_prefixes)
                if svc:
                    self.queue.add(f"{pod['metadata']['namespace']}/{svc}")

    async def _sync_structure(self) -> None:
        """Render every provisioned load balancer at once (one reload at most) before the workers
        run, and drop those whose Service is gone: the controller converges from the cluster."""
        for name, provider in self.providers.items():
            if provider.provisioning is None:
                continue
            wanted: dict[str, ServiceLB] = {}
            for key, svc in self.services.cache.items():
                try:
                    if self.reconciler.provider_of(svc) != name:
                        continue
                    pools = lb.pools_for(svc, provider.group_annotations)
                except lb.ServiceConfigError:
                    continue
                if pools and not any(p.group for p in pools):
                    address = self.reconciler.address_for(key, svc)
                    if address is not None:  # None: no address range, nothing provisioned
                        wanted[key] = ServiceLB(address, pools)
            while True:
                try:
                    await provider.provisioning.sync_all(wanted)
                    break
                except ProviderError as e:
                    log.warning("provider %s not ready at start: %s; retrying", name, e)
                    await asyncio.sleep(1.0)

    async def _worker(self) -> None:
        while True:
            key, waited = await self.queue.get()
            metrics.QUEUE_DURATION.labels(self.queue.name).observe(waited)
            t0 = time.monotonic()
            try:
                outcome = await self.reconciler.reconcile(key)
                self.queue.forget(key)
                if outcome.poll:
                    self._polling.add(key)
                    self.queue.add_after(key, max(self._poll_period(), outcome.interval))
                    metrics.RECONCILE_TOTAL.labels("service", "requeue_after").inc()
                else:
                    self._polling.discard(key)
                    metrics.RECONCILE_TOTAL.labels("service", "success").inc()
            except Exception as e:
                metrics.RECONCILE_TOTAL.labels("service", "error").inc()
                metrics.RECONCILE_ERRORS.labels("service").inc()
                level = logging.WARNING if isinstance(e, ProviderError) else logging.ERROR
                log.log(level, "reconcile %s failed: %s", key, e, exc_info=not isinstance(e, ProviderError))
                self.queue.add_rate_limited(key)
            finally:
                took = time.monotonic() - t0
                metrics.RECONCILE_TIME.labels("service").observe(took)
                metrics.WORK_DURATION.labels(self.queue.name).observe(took)
                metrics.service_reconciled(key, gone=self.services.get(key) is None)
                self.queue.done(key)

    def _poll_period(self) -> float:
        """How soon a Service with pending gates is read again: ``--poll-period`` while at most
        ``POLLS_PER_PERIOD`` Services are pending, stretched in proportion beyond (50 pending
        Services: 0.5 s each), so reading pending pools costs about the same CPU at any scale
        instead of taking the core the API server and the nodes need during a large rollout."""
        return self.settings.poll_period * max(1.0, len(self._polling) / POLLS_PER_PERIOD)

    async def _watch_generation(self, name: str, provider: Provisioning) -> None:
        """A reload or restart empties the load balancer's dynamic state: re-sync every Service."""
        last: str | None = None
        while True:
            try:
                gen = await provider.generation()
                self.provider_ok[name] = True
            except ProviderError as e:
                if self.provider_ok.get(name, True):
                    log.warning("load balancer %s unreachable: %s", name, e)
                self.provider_ok[name] = False
                gen = "unreachable"
            if last is not None and gen != last and gen != "unreachable":
                log.info("load balancer %s changed generation (%s → %s): re-syncing", name, last, gen)
                self.enqueue_all()
            last = gen
            # half a second: a reload or restart is re-synced within a second of it
            await asyncio.sleep(0.5)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_period)
            self.enqueue_all()


class SteppedDown(RuntimeError):
    """Leadership lost: the process stops (and is restarted) rather than risk a second writer."""


async def _raise_when(event: asyncio.Event) -> None:
    await event.wait()
    raise SteppedDown("lost the leader lease; stopping so no two replicas ever reconcile at once")


def _pod_change_matters(pod: Pod, old: Pod) -> bool:
    """Pod updates that can change targets or gates.  A gate status podgate wrote itself counts
    too (its answer is emitted by the informer): one more pass, which writes nothing new."""

    def view(p: Pod) -> tuple[Any, ...]:
        conds = {
            c["type"]: c.get("status")
            for c in pod_conditions(p)
            if c["type"] in (cond.CONTAINERS_READY, cond.READY)
            or c["type"].startswith(gates.SERVICE_GATE_PREFIX)
        }
        return (
            meta_of(p).get("labels"),
            meta_of(p).get("deletionTimestamp"),
            pod_ip(p),
            sorted(conds.items()),
            pod_spec(p).get("readinessGates"),
        )

    return view(pod) != view(old)


async def _cancel_all(tasks: list[asyncio.Task[Any]], patience: float = 10.0) -> None:
    """Cancel ``tasks`` and wait for them, at most ``patience`` seconds: a stopping controller
    must stop within the pod's grace period.  One still running then is named in the log (a
    task that ignores cancellation is a bug) and cancelled once more."""
    for t in tasks:
        t.cancel()
    _, pending = await asyncio.wait(tasks, timeout=patience) if tasks else (set(), set())
    for t in pending:
        log.error(
            "task %r did not stop within %gs of its cancellation; cancelling it again", t.get_name(), patience
        )
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def derived_drain_url(settings: ControllerSettings, services: Mapping[str, Service]) -> str | None:
    """Where the kubelet reaches the drain endpoint when no --drain-url is given: the ClusterIP of
    the --webhook-service, at its port for the plain health listener (the kubelet's httpGet hook
    is plain HTTP before Kubernetes 1.25).  None: not known."""
    if not settings.webhook_service:
        return None
    svc = services.get(settings.webhook_service)
    spec = (svc or {}).get("spec") or {}
    ip = spec.get("clusterIP")
    if not ip or ip == "None":
        return None
    for port in spec.get("ports") or ():
        if port.get("targetPort") in ("health", settings.health_port) or port.get("name") == "drain":
            return f"http://{ip}:{port['port']}"
    return None


async def server_version(kube: Any) -> Mapping[str, Any] | None:
    """The API server's ``/version`` (for the lifecycle ``sleep`` action, 1.30+); None when it
    cannot be read, which means ``exec sleep``."""
    api = getattr(kube, "api", None)
    if api is None:
        return None
    try:
        async with asyncio.timeout(5.0):
            info = await client.VersionApi(api).get_code()
    except Exception as e:
        log.warning("cannot read the API server's version (%s): sleep hooks are exec sleep", e)
        return None
    return {"major": info.major, "minor": info.minor, "gitVersion": info.git_version}


async def serve(settings: ControllerSettings, controller: Controller) -> list[isolated.Runner]:
    """The webhook's HTTPS server, once it has a certificate, and the task that keeps that
    certificate current and the webhook configuration registered (or, with ``--no-inject``,
    removed); the task ends with the server.  The server runs on a thread and loop of its own
    (``webhook.isolated``), so admission never waits for reconciles; the eviction guard's
    reviews are handed back to this loop."""
    drain_url = settings.drain_url or derived_drain_url(settings, controller.services.cache)
    if settings.prestop_default().mode == "drain" and not drain_url:
        log.warning(
            "the drain hook is the default preStop but podgate does not know where the kubelet can "
            "reach it: give --drain-url (or --webhook-service); pods get no preStop hook meanwhile"
        )
    policy = InjectionPolicy(
        settings.inject,
        settings.remove_gate_prefixes,
        settings.skip_label_value,
        settings.prestop_default(),
        drain_url,
        gates.native_sleep_supported(await server_version(controller.kube)),
    )

    def observe(result: str, seconds: float) -> None:
        metrics.WEBHOOK_REQUESTS.labels(result).inc()
        metrics.WEBHOOK_LATENCY.observe(seconds)

    app = webhook.make_app(
        controller.services,
        controller.reconciler.handled,
        policy,
        observe,
        lambda: parsed_checks(controller.checks),
    )
    guard = eviction.EvictionGuard(
        controller.pods,
        controller.services,
        controller.reconciler.providers,
        settings.default_provider,
        controller.reconciler.policy,
        lambda result: metrics.EVICTION_REVIEWS.labels(result).inc(),
        classes=controller.reconciler.classes,
        reads=controller.reads,
    )
    loop = asyncio.get_running_loop()
    app.router.add_post(eviction.PATH, isolated.on_loop(loop, guard.answer))
    app.router.add_get(drain.ROUTE, isolated.route_on_loop(loop, controller.drain.answer))
    tls = webhook.ServingTLS(
        settings.webhook_cert_dir, lambda reason: metrics.WEBHOOK_TLS_FAILURES.labels(reason).inc()
    )
    source: webhook.CertificateSource
    if settings.webhook_cert_file and settings.webhook_key_file:
        source = webhook.FileSource(settings.webhook_cert_file, settings.webhook_key_file)
    else:
        dns, ips = webhook.certificate_names(
            settings.webhook_url, settings.webhook_service, settings.webhook_bind
        )
        rotation = RotationPolicy(
            validity=settings.webhook_cert_validity,
            ca_validity=settings.webhook_ca_validity,
            renew_at=settings.webhook_cert_renew_at,
            settle=6 * settings.webhook_cert_check_period,
        )
        source = webhook.SharedSecretSource(
            CertificateSecret(
                controller.kube,
                settings.namespace,
                settings.webhook_cert_secret,
                settings.identity,
                dns,
                ips,
                rotation,
            )
        )
    service_ref = None
    if settings.webhook_service:
        ns, name = settings.webhook_service.split("/", 1)
        service_ref = (ns, name, 443)
    registering = bool(settings.webhook_url or service_ref)
    if registering and not settings.inject:
        await webhook.unregister(controller.kube, settings.webhook_config_name)

    async def registration(bundle: bytes) -> None:
        body = webhook.webhook_configuration(
            settings.webhook_config_name,
            bundle,
            url=settings.webhook_url,
            service=service_ref,
            skip_label_value=settings.skip_label_value,
            migration_labels=settings.migration_labels,
        )
        if settings.inject:
            await webhook.register(controller.kube, body)
        # the eviction guard is no injection: it is registered with --no-inject too
        await eviction.register(
            controller.kube,
            eviction.webhook_configuration(
                settings.webhook_config_name,
                bundle,
                url=urlunsplit(urlsplit(settings.webhook_url)._replace(path=eviction.PATH))
                if settings.webhook_url
                else None,
                service=service_ref,
            ),
        )

    first = asyncio.Event()
    keeper = asyncio.create_task(
        webhook.keep_serving(
            tls,
            source,
            registration if registering else None,
            settings.webhook_cert_check_period,
            first,
        ),
        name="webhook certificates",
    )

    async def stop_keeper() -> None:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)

    # An admission call the API server has given up on (after its timeoutSeconds) need not hold
    # up a stop: aiohttp would otherwise wait 60 s for in-flight requests.
    server = isolated.ServerThread(
        app,
        settings.webhook_bind,
        settings.webhook_port,
        tls.context,
        shutdown_timeout=webhook.TIMEOUT_SECONDS,
    )
    try:
        await first.wait()
        await server.start()
    except BaseException:  # stopped before the first certificate, or the port is taken
        await stop_keeper()
        raise
    return [_Stopping(server, stop_keeper)]


class _Stopping:
    """The webhook's server thread, then its certificate keeper: stopped in that order."""

    def __init__(self, server: isolated.ServerThread, stop_keeper: Callable[[], Awaitable[None]]) -> None:
        self.server, self.stop_keeper = server, stop_keeper

    async def cleanup(self) -> None:
        try:
            await self.server.cleanup()
        finally:
            await self.stop_keeper()
