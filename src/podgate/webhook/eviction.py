"""The eviction guard: a validating webhook on ``pods/eviction`` (what ``kubectl drain`` and the
cluster autoscaler call) that refuses, with 429 as a PodDisruptionBudget does, an eviction that
would leave a Service with fewer targets its load balancer calls healthy than its
``podgate.dev/min-healthy-targets``.

A PodDisruptionBudget counts Ready pods; the load balancer may not have a Ready pod's target yet
(or any more), so the guard asks the load balancer itself.  Registered with failurePolicy Ignore:
podgate being down never blocks a drain; for the same reason a load balancer that cannot be read
lets the eviction through, with a warning kubectl prints.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from podgate.kube.api import VALIDATING_WEBHOOK_CONFIGURATIONS, Kube
from podgate.kube.informer import EventType, Informer, key_of
from podgate.model import gates, lb
from podgate.model.policy import GatePolicy, eviction_refusal, gate_policy
from podgate.model.types import Pod, Service, is_terminating, labels, meta_of, selector_of
from podgate.providers.base import Provider, ProviderError
from podgate.providers.reads import PoolReads
from podgate.webhook import server
from podgate.webhook.admission import BadReview, parse_review
from podgate.webhook.isolated import Answer

log = logging.getLogger(__name__)
PATH = "/validate-eviction"
#: how long an allowed eviction counts its pod as gone, until the pod cache shows it terminating:
#: two drains racing must not both take the last spare target
EVICTED_FOR = 30.0


class EvictionGuard:
    """Answers eviction reviews from the controller's caches and the load balancers' health."""

    def __init__(
        self,
        pods: Informer[Pod],
        services: Informer[Service],
        providers: Mapping[str, Provider],
        default_provider: str | None,
        policy: GatePolicy,
        observe: Callable[[str], None] = lambda result: None,
        classes: Mapping[str, str] | None = None,
        reads: PoolReads | None = None,
    ) -> None:
        """``reads``: the controller's shared pool reads: an eviction within a poll interval of
        the pool's last read uses that answer (a ``kubectl drain`` of a node asks once a pod)."""
        self.pods, self.services = pods, services
        self.reads = reads if reads is not None else PoolReads()
        self.providers, self.default_provider = providers, default_provider
        #: loadBalancerClass → provider, as the reconciler selects Services
        self.classes = classes
        self.policy = policy
        self.observe = observe
        #: pods (namespace/name) whose eviction this replica allowed, and when; a pod's entry
        #: goes after ``EVICTED_FOR`` or with the pod
        self._evicted: dict[str, float] = {}
        pods.add_handler(self._on_pod)

    def _on_pod(self, kind: EventType, pod: Pod, old: Pod | None) -> None:
        if kind == "DELETED":
            self._evicted.pop(key_of(pod), None)

    def tracked(self) -> dict[str, int]:
        """How many entries the guard's per-pod map holds (leak tests)."""
        return {"evicted": len(self._evicted)}

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
        if refusal:
            response["allowed"] = False
            response["status"] = {"code": 429, "reason": "TooManyRequests", "message": refusal}
            log.info("eviction of %s refused: %s", pod_key, refusal)
        elif not req.get("dryRun") and self.pods.get(pod_key) is not None:
            # (a pod gone meanwhile, or never cached, is nothing to remember: see _on_pod)
            self._evicted[pod_key] = time.monotonic()
        if warnings:
            response["warnings"] = warnings
        self.observe("refused" if refusal else "allowed")
        body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        return Answer(200, json.dumps(body).encode())

    async def refusal(self, pod_key: str) -> tuple[str | None, list[str]]:
        """Why the eviction must wait (None: it may go), and warnings for the user."""
        pod = self.pods.get(pod_key)
        if pod is None or is_terminating(pod):
            return None, []
        namespace = meta_of(pod).get("namespace") or ""
        now = time.monotonic()
        self._evicted = {k: t for k, t in self._evicted.items() if now - t < EVICTED_FOR}
        warnings = []
        for service in self.services.in_namespace(namespace):
            meta = meta_of(service)
            if not gates.selector_matches(selector_of(service), labels(pod)):
                continue
            try:
                minimum = gate_policy(meta.get("annotations"), self.policy).min_healthy_targets
                if minimum <= 0:
                    continue
                provider_name = lb.provider_for(service, self.default_provider, self.providers, self.classes)
                if provider_name is None:
                    continue
                provider = self.providers[provider_name]
                pools = lb.pools_for(service, provider.group_annotations)
                healthy = await self._healthy(provider, pools, selector_of(service), namespace)
            except (lb.ServiceConfigError, ProviderError) as e:
                warnings.append(f"podgate could not check Service {namespace}/{meta.get('name')}: {e}")
                continue
            why = eviction_refusal(f"{namespace}/{meta.get('name')}", pod_key, healthy, minimum)
            if why:
                return why, warnings
        return None, warnings

    async def _healthy(
        self, provider: Provider, pools: list[lb.PoolSpec], selector: Mapping[str, str] | None, namespace: str
    ) -> set[str]:
        """Pods whose targets are healthy in every pool, as the load balancer reads them now;
        terminating pods and pods whose eviction was just allowed left out."""
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
                and key not in self._evicted
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
) -> dict[str, Any]:
    """ValidatingWebhookConfiguration for evictions of pods in any namespace (pure): only
    Services with ``min-healthy-targets`` ever refuse one."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "podgate"}},
        "webhooks": [
            {
                "name": "eviction-guard.podgate.dev",
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
                # podgate being down must never block a drain
                "failurePolicy": "Ignore",
                "sideEffects": "NoneOnDryRun",
                "timeoutSeconds": timeout_seconds,
            }
        ],
    }


async def register(kube: Kube, body: dict[str, Any]) -> bool:
    """Create or update the eviction guard's configuration, writing only when it differs (every
    replica registers at start and after each certificate rotation); returns whether it wrote."""
    return await server.register(kube, body, resource=VALIDATING_WEBHOOK_CONFIGURATIONS)
