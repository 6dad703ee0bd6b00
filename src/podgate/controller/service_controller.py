"""The leader's reconcile loop: pod, Service and namespace events become Service keys in the work
queue; workers run :class:`~podgate.controller.reconciler.ServiceReconciler` on them.

The order at start matters: the whole load-balancer structure is set in one step (a restarted
controller must not drop the Services it has not reconciled yet), then every Service is queued,
and only then do the workers run.  The event handlers queue keys on every replica (a queue
deduplicates, so a follower's holds at most one key per Service); only the leader's workers
take them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from podgate.controller.reconciler import Outcome, ServiceReconciler, services_for_event
from podgate.kube.api import Obj
from podgate.kube.informer import EventType, Informer, key_of
from podgate.kube.leader import Fenced
from podgate.kube.queue import WorkQueue
from podgate.model import conditions as cond
from podgate.model import gates
from podgate.model.types import Namespace, PodView, Service, meta_of, pod_conditions, pod_ip, pod_spec
from podgate.providers.base import Provider, ProviderError, Provisioning, ServiceLB
from podgate.resolutions import ServiceResolutions

log = logging.getLogger(__name__)
#: pending Services read every ``poll_period``; more stretch the period (see ``poll_period_now``)
POLLS_PER_PERIOD = 10
#: what one pass ended with, for the metrics: requeue_after (polling), success, error
RESULTS = ("requeue_after", "success", "error")


def _nothing(key: str, result: str, seconds: float, waited: float) -> None:
    pass


class ServiceController:
    def __init__(
        self,
        pods: Informer[PodView],
        services: Informer[Service],
        namespaces: Informer[Namespace],
        resolutions: ServiceResolutions,
        reconciler: ServiceReconciler,
        queue: WorkQueue,
        *,
        workers: int = 4,
        poll_period: float = 0.1,
        resync_period: float = 300.0,
        adopted_prefixes: tuple[str, ...] = (),
        on_reconciled: Callable[[str, str, float, float], None] = _nothing,
        on_forgotten: Callable[[str], None] = lambda key: None,
    ) -> None:
        """``on_reconciled(key, result, seconds, waited)`` hears of every pass: its result (one of
        ``RESULTS``), how long it took and how long its key waited in the queue;
        ``on_forgotten(key)`` of every pass that found its Service gone (after the release of its
        load balancer: its per-Service series go then)."""
        self.pods, self.services, self.namespaces = pods, services, namespaces
        self.resolutions = resolutions
        self.providers: Mapping[str, Provider] = resolutions.providers
        self.reconciler = reconciler
        self.queue = queue
        self.workers = workers
        self.poll_period = poll_period
        self.resync_period = resync_period
        self.adopted_prefixes = adopted_prefixes
        self.on_reconciled = on_reconciled
        self.on_forgotten = on_forgotten
        #: whether each provisioning provider answered its last generation check (for /readyz)
        self.provider_ok: dict[str, bool] = {}
        #: Services whose last pass left gates pending (re-read every ``poll_period_now()``)
        self.polling: set[str] = set()
        #: when each Service's last pass started (monotonic): :meth:`heard` spaces passes by it
        self.started: dict[str, float] = {}
        pods.add_handler(self.on_pod)
        services.add_handler(self.on_service)
        namespaces.add_handler(self.on_namespace)
        if resolutions.grant_informer is not None:
            resolutions.grant_informer.add_handler(self.on_grant)

    # -- event handlers: enqueue keys, nothing else --------------------------------------------
    def on_pod(self, kind: EventType, pod: PodView, old: PodView | None) -> None:
        echo = self.reconciler.gates.echo
        if old is not None and kind == "MODIFIED" and not pod_change_matters(pod, old, echo):
            return
        namespace = meta_of(pod).get("namespace") or ""
        for key in services_for_event(pod, old, self.services.in_namespace(namespace), self.adopted_prefixes):
            self.queue.add(key)

    def on_service(self, kind: EventType, svc: Service, old: Service | None) -> None:
        if kind == "MODIFIED" and old is not None and not service_change_matters(svc, old):
            return  # a status-only change (ours): nothing to do
        key = key_of(svc)
        if kind == "DELETED":
            self.polling.discard(key)
        self.queue.add(key)

    def on_namespace(self, kind: EventType, ns: Namespace, old: Namespace | None) -> None:
        for svc in self.services.in_namespace(ns["metadata"]["name"]):
            self.queue.add(key_of(svc))

    def on_grant(self, kind: EventType, grant: Obj, old: Obj | None) -> None:
        """A grant given, changed or taken back: every Service that names a group may be bound
        or refused now (the resolutions have read the grants again: their handler runs first)."""
        for key, svc in self.services.cache.items():
            if any(p.group is not None for p in self.resolutions.of(svc).pools):
                self.queue.add(key)

    # -- run (the leader's) ---------------------------------------------------------------------
    async def run(self) -> None:
        """Set the load balancers' structure, queue every Service, then work the queue, watch the
        providers' generations and resync, until cancelled."""
        await self.sync_structure()
        self.enqueue_all()
        work = [asyncio.create_task(self.work(), name=f"worker {i}") for i in range(self.workers)]
        work += [
            asyncio.create_task(self.watch_generation(name, p.provisioning), name=f"generation {name}")
            for name, p in self.providers.items()
            if p.provisioning is not None
        ]
        work += [
            asyncio.create_task(p.changes.watch(self.heard), name=f"state changes {name}")
            for name, p in self.providers.items()
            if p.changes is not None
        ]
        work.append(asyncio.create_task(self.resync(), name="resync"))
        try:
            await asyncio.gather(*work)
        finally:
            for t in work:
                t.cancel()
            await asyncio.gather(*work, return_exceptions=True)

    def enqueue_all(self) -> None:
        for key in self.services.cache:
            self.queue.add(key)
        for pod in self.pods.cache.values():
            for g in cond.readiness_gates(pod_spec(pod)):
                svc = gates.service_of_gate(g, self.adopted_prefixes)
                if svc:
                    self.queue.add(f"{meta_of(pod).get('namespace')}/{svc}")

    async def sync_structure(self) -> None:
        """Render every provisioned load balancer at once (one reload at most) before the workers
        run, and drop those whose Service is gone: the controller converges from the cluster."""
        for name, provider in self.providers.items():
            if provider.provisioning is None:
                continue
            wanted: dict[str, ServiceLB] = {}
            for key, svc in self.services.cache.items():
                resolution = self.resolutions.of(svc)
                if resolution.provider != name or not resolution.served:
                    continue
                pools = list(resolution.pools)
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

    async def work(self) -> None:
        """One worker: take a key, reconcile it, and queue it again as its outcome says."""
        while True:
            key, waited = await self.queue.get()
            t0 = self.started[key] = time.monotonic()
            result = "error"
            try:
                result = self.settle(key, await self.reconciler.reconcile(key))
            except Exception as e:
                expected = isinstance(e, ProviderError | Fenced)
                level = logging.WARNING if expected else logging.ERROR
                log.log(level, "reconcile %s failed: %s", key, e, exc_info=not expected)
                self.queue.add_rate_limited(key, self.retry_cap(key, e))
            finally:
                self.on_reconciled(key, result, time.monotonic() - t0, waited)
                if self.services.get(key) is None:
                    self.started.pop(key, None)
                    self.on_forgotten(key)  # the pass that found it gone: its series go
                self.queue.done(key)

    def settle(self, key: str, outcome: Outcome) -> str:
        """Queue the key again as a pass's outcome asks; the pass's result (see ``RESULTS``)."""
        self.queue.forget(key)
        if outcome.poll:
            self.polling.add(key)
            self.queue.add_after(key, max(self.poll_period_now(), outcome.interval))
            return "requeue_after"
        self.polling.discard(key)
        return "success"

    def retry_cap(self, key: str, error: Exception) -> float | None:
        """The longest a failed pass waits to be retried, below the queue's own cap: a load
        balancer that could not be read (not a permanent refusal) is read again as often as a
        pending Service's pool is (its provider's poll interval, at least ``poll_period_now``),
        so the Service recovers within that interval of the load balancer answering again
        however long the outage was.  Attempts stay bounded by the provider's own rate limit
        (every call takes a token of its account's bucket)."""
        if not isinstance(error, ProviderError) or error.permanent:
            return None
        svc = self.services.get(key)
        name = self.resolutions.of(svc).provider if svc is not None else None
        provider = self.providers.get(name) if name is not None else None
        interval = provider.pool.poll_interval if provider is not None else 0.0
        return max(self.poll_period_now(), interval)

    def poll_period_now(self) -> float:
        """How soon a Service with pending gates is read again: ``poll_period`` while at most
        ``POLLS_PER_PERIOD`` Services are pending, stretched in proportion beyond (50 pending
        Services: 0.5 s each), so reading pending pools costs about the same CPU at any scale
        instead of taking the core the API server and the nodes need during a large rollout."""
        return self.poll_period * max(1.0, len(self.polling) / POLLS_PER_PERIOD)

    def heard(self, key: str | None) -> None:
        """The load balancer told that a target of the Service turned healthy or unhealthy: its
        pass now, not at its next poll (None: changes may have been missed, so every Service
        with pending gates).

        A Service's pass starts at most once per ``poll_period_now()``: at once when its last
        pass started longer ago, else when that much time has passed.  A hundred targets
        turning UP one after another then cost a pass or two per period, not a pass each, and
        no more passes than polling would make; the first change after a quiet spell is acted
        on at once, where a poll would have waited half a period on average."""
        if key is None:
            for pending in list(self.polling):
                self.queue.add(pending)
        elif self.services.get(key) is not None:
            last = self.started.get(key)
            wait = 0.0 if last is None else last + self.poll_period_now() - time.monotonic()
            self.queue.add_after(key, wait)

    async def watch_generation(self, name: str, provider: Provisioning, period: float = 0.5) -> None:
        """A reload or restart empties the load balancer's dynamic state: re-sync every Service.
        Every ``period`` seconds, so a reload is re-synced within a second of it."""
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
            await asyncio.sleep(period)

    async def resync(self) -> None:
        while True:
            await asyncio.sleep(self.resync_period)
            self.enqueue_all()


def pod_change_matters(pod: PodView, old: PodView, echo: tuple[str, str, str] | None = None) -> bool:
    """Pod updates that can change targets or gates.  Ready counts only where it changes whether
    the pod may be a target (ContainersReady or Ready, :func:`podgate.model.lb.membership`): the
    node's Ready after a gate opened changes nothing.  A gate's status counts (someone else may
    close what podgate opened, or open what it holds), except ``echo``, the gate status podgate
    is writing itself (:attr:`GateWriter.echo`): its pass decided it already, and a pass for
    each of them made a rollout's Services pass again for nothing."""

    def gate_statuses(p: PodView) -> dict[str, str | None]:
        return {
            c["type"]: c.get("status")
            for c in pod_conditions(p)
            if c["type"].startswith(gates.SERVICE_GATE_PREFIX)
        }

    def view(p: PodView) -> tuple[Any, ...]:
        return (
            meta_of(p).get("labels"),
            meta_of(p).get("deletionTimestamp"),
            pod_ip(p),
            any(
                c["type"] in (cond.CONTAINERS_READY, cond.READY) and c.get("status") == cond.TRUE
                for c in pod_conditions(p)
            ),
            pod_spec(p).get("readinessGates"),
        )

    if view(pod) != view(old):
        return True
    now, before = gate_statuses(pod), gate_statuses(old)
    changed = {t for t in now.keys() | before.keys() if now.get(t) != before.get(t)}
    if not changed:
        return False
    if echo is not None:
        pod_key, gate_type, status = echo
        mine = pod_key == f"{meta_of(pod).get('namespace')}/{meta_of(pod).get('name')}"
        if mine and changed == {gate_type} and now.get(gate_type) == status:
            return False
    return True


def service_change_matters(svc: Service, old: Service) -> bool:
    """Service updates that can change what podgate does: not a status-only one (podgate's own
    address write) or a bare resourceVersion bump."""
    return (
        old.get("spec") != svc.get("spec")
        or meta_of(old).get("annotations") != meta_of(svc).get("annotations")
        or meta_of(old).get("deletionTimestamp") != meta_of(svc).get("deletionTimestamp")
    )
