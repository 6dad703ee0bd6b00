"""The eviction guard: a validating webhook on ``pods/eviction`` (what ``kubectl drain`` and the
cluster autoscaler call) that refuses, with 429 as a PodDisruptionBudget does, an eviction that
would leave a Service with fewer targets its load balancer calls healthy than its
``podgate.dev/min-healthy-targets``.

A PodDisruptionBudget counts Ready pods; the load balancer may not have a Ready pod's target yet
(or any more), so the guard asks the load balancer itself.  Registered with failurePolicy Ignore:
podgate being down never blocks a drain; for the same reason a load balancer that cannot be read
lets the eviction through, with a warning kubectl prints.

Bounds, since any Service editor sets the floor: a floor at or above the pods the Service
selects refuses every eviction, which a refusal says and a ``MinHealthyTargetsUnreachable``
Warning on the Service reports; and no pod's eviction is refused longer than
``--max-eviction-refusal`` (10 minutes): after that it goes through, with an ``EvictionForced``
Warning on the pod and ``podgate_evictions_forced_total``.  When a pod was first refused is
kept in each replica's memory (by pod uid), not in the cluster: with two replicas a pod's
eviction goes through at most that long after the replica answering its retry first refused it
(a retry landing on the other replica, which refused it earlier or never, goes through sooner
or counts from its own first refusal), and a replica that restarts counts again from its next
refusal.  A refusal more than the maximum after the last one starts the count afresh, so a
drain given up and tried again hours later is not let through at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from podgate.kube.events import EventRecorder
from podgate.kube.informer import EventType, Informer, key_of
from podgate.model import gates, lb
from podgate.model.policy import (
    EVICTION_FORCED,
    FLOOR_UNREACHABLE,
    eviction_refusal,
    floor_unreachable,
    forced_eviction,
)
from podgate.model.types import PodView, Service, is_terminating, labels, meta_of, selector_of
from podgate.providers.base import Provider, ProviderError
from podgate.providers.reads import PoolReads
from podgate.resolutions import ServiceResolutions
from podgate.webhook import server
from podgate.webhook.admission import BadReview, parse_review
from podgate.webhook.isolated import Answer

log = logging.getLogger(__name__)
PATH = "/validate-eviction"
#: how long a review waits for an eviction allowed just before it (in the same namespace) to
#: show in the pod cache as a deletion: two drains racing must not both take the last spare
#: target, and a review that never became an eviction (refused further on, or forged) must not
#: make a pod count as gone: it only delays the next review by this much
SETTLE = 2.0
#: the largest eviction review read: an Eviction is a few hundred bytes
MAX_REVIEW_BYTES = 64 * 1024
#: evictions allowed and not yet seen in the cache, at most (a flood of reviews cannot grow it)
UNSETTLED_MAX = 1000
#: the longest one pod's eviction is refused (``--max-eviction-refusal``), seconds
MAX_REFUSAL = 600.0
#: pods whose first refusal one replica remembers, at most (pods being drained at once)
REFUSED_MAX = 20_000


class EvictionGuard:
    """Answers eviction reviews from the controller's caches and the load balancers' health."""

    def __init__(
        self,
        pods: Informer[PodView],
        services: Informer[Service],
        resolutions: ServiceResolutions,
        observe: Callable[[str], None] = lambda result: None,
        reads: PoolReads | None = None,
        settle: float = SETTLE,
        *,
        recorder: EventRecorder | None = None,
        max_refusal: float = MAX_REFUSAL,
        on_forced: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``reads``: the controller's shared pool reads: an eviction within a poll interval of
        the pool's last read uses that answer (a ``kubectl drain`` of a node asks once a pod).
        ``settle``: see :data:`SETTLE`.  ``max_refusal``: the longest one pod's eviction is
        refused (seconds, counted by ``clock``); ``on_forced`` is told each eviction let through
        because of it; ``recorder`` sends the guard's Warning Events."""
        self.pods, self.services = pods, services
        self.reads = reads if reads is not None else PoolReads()
        self.resolutions = resolutions
        self.observe = observe
        #: pods (namespace/name) whose eviction this replica allowed and whose deletion the
        #: pod cache does not show yet, with when: later reviews in the namespace wait for them
        self._unsettled: dict[str, float] = {}
        self.settle = settle
        self._settled = asyncio.Event()
        self.recorder = recorder
        self.max_refusal = max_refusal
        self.on_forced = on_forced
        self.clock = clock
        #: pod uid → (first, last) refusal of its eviction by this replica, by ``clock``
        self._refused: dict[str, tuple[float, float]] = {}
        pods.add_handler(self._on_pod)

    def _on_pod(self, kind: EventType, pod: PodView, old: PodView | None) -> None:
        key = key_of(pod)
        if key in self._unsettled and (kind == "DELETED" or is_terminating(pod)):
            del self._unsettled[key]
            self._settled.set()
        if kind == "DELETED":
            self._refused.pop(str(meta_of(pod).get("uid") or key), None)

    async def _settle(self, namespace: str) -> None:
        """Wait (at most ``settle`` seconds each) until the evictions this replica allowed in the
        namespace show in the pod cache; then the cache alone says which pods are going."""
        prefix = f"{namespace}/"
        while True:
            now = time.monotonic()
            for key, at in list(self._unsettled.items()):
                if now - at >= self.settle:
                    del self._unsettled[key]  # never became a deletion: counts for nothing
            waiting = [at for key, at in self._unsettled.items() if key.startswith(prefix)]
            if not waiting:
                return
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settle - (now - min(waiting))):
                    await self._settled.wait()

    def tracked(self) -> dict[str, int]:
        """How many entries the guard's per-pod map holds (leak tests)."""
        return {"unsettled": len(self._unsettled), "refused": len(self._refused)}

    async def handle(self, request: web.Request) -> web.Response:
        answer = await self.answer(await request.read(), request.remote)
        return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type)

    async def answer(self, raw: bytes, remote: str | None = None) -> Answer:
        """The answer to one review (the body the API server posted), as plain data: the
        webhook's server thread hands reviews to the controller's loop, where this runs."""
        try:
            review = parse_review(raw)
        except BadReview as e:
            log.warning("eviction webhook: bad AdmissionReview from %s: %s", remote, e)
            self.observe("bad_request")
            return Answer(400, f"bad AdmissionReview: {e}\n".encode(), "text/plain")
        req = review["request"]
        response: dict[str, Any] = {"uid": req["uid"], "allowed": True}
        pod_key = f"{req.get('namespace')}/{req.get('name')}"
        refusal, warnings = await self.refusal(pod_key)
        forced: str | None = None
        if refusal:
            forced = self._refused_too_long(pod_key, refusal, bool(req.get("dryRun")))
            if forced:
                warnings.append(forced)
                refusal = None
        if refusal:
            response["allowed"] = False
            response["status"] = {"code": 429, "reason": "TooManyRequests", "message": refusal}
            log.info("eviction of %s refused: %s", pod_key, refusal)
        elif (
            not req.get("dryRun")
            and len(self._unsettled) < UNSETTLED_MAX
            and self.pods.get(pod_key) is not None
        ):
            # (a pod gone meanwhile, or never cached, is nothing to wait for)
            self._unsettled[pod_key] = time.monotonic()
        if warnings:
            response["warnings"] = warnings
        self.observe("refused" if refusal else "forced" if forced else "allowed")
        body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        return Answer(200, json.dumps(body).encode())

    def _refused_too_long(self, pod_key: str, refusal: str, dry_run: bool) -> str | None:
        """The warning of an eviction let through because this replica has refused it for
        ``max_refusal`` already (then an ``EvictionForced`` Event and ``on_forced``), else None
        with the refusal counted (a dry run counts nothing)."""
        pod = self.pods.get(pod_key)
        if pod is None:
            return None
        uid = str(meta_of(pod).get("uid") or pod_key)
        now = self.clock()
        first, last = self._refused.get(uid, (now, now))
        if now - last > self.max_refusal:
            first = now  # given up and tried again long after: a new drain, counted afresh
        if now - first >= self.max_refusal:
            message = forced_eviction(refusal, now - first, self.max_refusal)
            if not dry_run:
                self._refused.pop(uid, None)
                log.warning("eviction of %s forced: %s", pod_key, message)
                if self.recorder is not None:
                    self.recorder.emit_later(pod, "Pod", EVICTION_FORCED, message, "Warning")
                self.on_forced()
            return message
        if not dry_run and (uid in self._refused or len(self._refused) < REFUSED_MAX):
            self._refused[uid] = (first, now)
        return None

    async def refusal(self, pod_key: str) -> tuple[str | None, list[str]]:
        """Why the eviction must wait (None: it may go), and warnings for the user."""
        pod = self.pods.get(pod_key)
        if pod is None or is_terminating(pod):
            return None, []
        namespace = meta_of(pod).get("namespace") or ""
        await self._settle(namespace)
        warnings = []
        for service in self.services.in_namespace(namespace):
            meta = meta_of(service)
            if not gates.selector_matches(selector_of(service), labels(pod)):
                continue
            resolution = self.resolutions.of(service)
            service_key = f"{namespace}/{meta.get('name')}"
            if resolution.error is not None:
                warnings.append(f"podgate could not check Service {service_key}: {resolution.error}")
                continue
            minimum = resolution.policy.min_healthy_targets
            provider = self.resolutions.provider(resolution)
            if minimum <= 0 or provider is None:
                continue
            try:
                healthy = await self._healthy(provider, resolution.pools, selector_of(service), namespace)
            except ProviderError as e:
                warnings.append(f"podgate could not check Service {service_key}: {e}")
                continue
            why = eviction_refusal(service_key, pod_key, healthy, minimum)
            if why:
                # terminating pods counted too: one just evicted, before its replacement shows,
                # must not make a floor below the replicas read as one above them
                selected = [
                    p
                    for p in self.pods.in_namespace(namespace)
                    if gates.selector_matches(selector_of(service), labels(p))
                ]
                floor = floor_unreachable(service_key, minimum, len(selected))
                if floor:
                    why = f"{why}. {floor}"
                    if self.recorder is not None:
                        self.recorder.emit_later(service, "Service", FLOOR_UNREACHABLE, floor, "Warning")
                return why, warnings
        return None, warnings

    async def _healthy(
        self,
        provider: Provider,
        pools: Sequence[lb.PoolSpec],
        selector: Mapping[str, str] | None,
        namespace: str,
    ) -> set[str]:
        """Pods whose targets are healthy in every pool, as the load balancer reads them now;
        terminating pods left out."""
        pods = self.pods.in_namespace(namespace)
        healthy: set[str] | None = None
        for pool in pools:
            plan = lb.plan_targets(pool, selector, pods)
            present = await self.reads.read(provider, pool, provider.pool.poll_interval)
            here = {
                key
                for target, key in plan.active.items()
                if (st := present.get(target)) is not None
                and st.admin == "ready"
                and st.health.health is lb.Health.HEALTHY
            }
            healthy = here if healthy is None else healthy & here
        return healthy or set()


def webhook_configuration(
    name: str,
    ca_bundle: bytes,
    *,
    url: str | None,
    service: tuple[str, str, int] | None,
    timeout_seconds: int = 5,
    migration_labels: bool = False,
) -> dict[str, Any]:
    """ValidatingWebhookConfiguration for evictions of pods in opted-in namespaces (pure), one
    webhook per opt-in label as for injection: an eviction anywhere else (kube-system, a tenant
    who never opted in) never reaches podgate; only Services with ``min-healthy-targets`` ever
    refuse one."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "podgate"}},
        "webhooks": [
            {
                "name": "eviction-guard.podgate.dev" if i == 0 else f"eviction-guard-{i}.podgate.dev",
                "admissionReviewVersions": ["v1"],
                "clientConfig": server.client_config(ca_bundle, url, service, PATH),
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods/eviction"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": selector,
                # podgate being down must never block a drain
                "failurePolicy": "Ignore",
                "sideEffects": "NoneOnDryRun",
                "timeoutSeconds": timeout_seconds,
            }
            for i, selector in enumerate(gates.namespace_selectors(migration_labels))
        ],
    }
