"""Prometheus metrics of the controller and webhook.

Work-queue and reconcile metrics use controller-runtime's names, so existing dashboards and
alerts work.  Most gauges are computed at scrape time from the controller's own state (custom
collector) instead of being updated on hot paths.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from podgate.kube import queue as workqueue
from podgate.model import conditions as c
from podgate.model import gates, report
from podgate.model.lb import PoolSpec, Target
from podgate.providers.base import GroupBinding, Provider, Provisioning, ServiceLB, TargetPool, TargetState
from podgate.webhook import drain

if TYPE_CHECKING:
    from podgate.controller.manager import Controller

REGISTRY = CollectorRegistry()
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 60, 120, 300)

GATE_TRANSITIONS = Counter(
    "podgate_gate_transitions_total",
    "Gate condition writes, by status and reason",
    ["status", "reason"],
    registry=REGISTRY,
)
GATE_TIMEOUTS = Counter(
    "podgate_gate_timeouts_total",
    "Gates whose readiness timeout passed before the load balancer said healthy, by what "
    "the policy did (open: written True; closed: kept False)",
    ["on_timeout"],
    registry=REGISTRY,
)
for _policy in ("open", "closed"):  # both series exist from the start, so increase() sees the first
    GATE_TIMEOUTS.labels(_policy)
TIME_TO_READY = Histogram(
    "podgate_time_to_ready_seconds",
    "From a gate first pending to True, split by phase (registration: until the load "
    "balancer has the target; health_checking: from then to True; total)",
    ["phase"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TIME_TO_READY_RATIO = Histogram(
    "podgate_time_to_ready_ratio",
    "Health-checking phase over the load balancer's own minimum (rise x interval)",
    buckets=(0.9, 1.0, 1.02, 1.05, 1.1, 1.2, 1.5, 2, 3, 5, 10),
    registry=REGISTRY,
)
RECONCILE_TOTAL = Counter(
    "controller_runtime_reconcile_total", "Reconciliations", ["controller", "result"], registry=REGISTRY
)
RECONCILE_ERRORS = Counter(
    "controller_runtime_reconcile_errors_total", "Reconciliation errors", ["controller"], registry=REGISTRY
)
RECONCILE_TIME = Histogram(
    "controller_runtime_reconcile_time_seconds",
    "Reconcile duration",
    ["controller"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
SERVICE_RECONCILES = Counter(
    "podgate_service_reconciles_total",
    "Reconcile passes completed, by Service (whatever their result): a test or an operator that "
    "changed something waits for this to advance before judging what podgate did about it",
    ["namespace", "service"],
    registry=REGISTRY,
)
CHECK_RUNS = Counter(
    "podgate_check_runs_total",
    "ReadinessCheck runs completed, each with its gate written or found unchanged, by check: the "
    "positive signal a test waits for before judging that a check gate stayed as it was",
    ["namespace", "check"],
    registry=REGISTRY,
)
QUEUE_DURATION = Histogram(
    "workqueue_queue_duration_seconds",
    "Time a key waits in the queue",
    ["name"],
    buckets=(0.0001, 0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10),
    registry=REGISTRY,
)
WORK_DURATION = Histogram(
    "workqueue_work_duration_seconds",
    "Time processing a key",
    ["name"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
QUEUE_ADDS = Counter(
    "workqueue_adds", "Total number of adds handled by the work queue", ["name"], registry=REGISTRY
)
QUEUE_RETRIES = Counter(
    "workqueue_retries", "Total number of retries handled by the work queue", ["name"], registry=REGISTRY
)
WEBHOOK_REQUESTS = Counter(
    "podgate_webhook_requests_total", "AdmissionReview requests, by result", ["result"], registry=REGISTRY
)
WEBHOOK_LATENCY = Histogram(
    "podgate_webhook_request_duration_seconds",
    "AdmissionReview handling time",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
    registry=REGISTRY,
)
EVICTION_REVIEWS = Counter(
    "podgate_eviction_reviews_total",
    "Evictions the eviction guard answered, by result (allowed, refused, bad_request)",
    ["result"],
    registry=REGISTRY,
)
DRAIN_REQUESTS = Counter(
    "podgate_drain_requests_total",
    "preStop drain hooks answered, by result (drained; timeout: the drain budget passed first, "
    "with a DrainTimedOut Event; no_targets; not_terminating; unknown_pod; error)",
    ["result"],
    registry=REGISTRY,
)
for _result in drain.RESULTS:
    DRAIN_REQUESTS.labels(_result)
DRAIN_TIMEOUTS = Counter(
    "podgate_drain_timeouts_total",
    "preStop drain hooks answered because the pod's drain budget passed before the load balancer "
    "had drained it (each with a DrainTimedOut Warning Event on the pod)",
    registry=REGISTRY,
)
DRAIN_DURATION = Histogram(
    "podgate_drain_duration_seconds",
    "How long a preStop drain hook waited (for the load balancer's drain, or the budget)",
    ["result"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
WEBHOOK_TLS_FAILURES = Counter(
    "podgate_webhook_tls_handshake_failures_total",
    "TLS handshakes with the webhook that failed at podgate's side, by OpenSSL's reason "
    "(e.g. TLSV1_ALERT_UNKNOWN_CA: the caller does not trust the certificate served)",
    ["reason"],
    registry=REGISTRY,
)
PROVIDER_CALLS = Counter(
    "podgate_provider_calls_total", "Load-balancer API calls", ["provider", "operation"], registry=REGISTRY
)
PROVIDER_ERRORS = Counter(
    "podgate_provider_errors_total",
    "Failed load-balancer API calls",
    ["provider", "operation"],
    registry=REGISTRY,
)
PROVIDER_LATENCY = Histogram(
    "podgate_provider_call_duration_seconds",
    "Load-balancer API call time",
    ["provider", "operation"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10),
    registry=REGISTRY,
)


def observe_drain(result: str, seconds: float) -> None:
    DRAIN_REQUESTS.labels(result).inc()
    DRAIN_DURATION.labels(result).observe(seconds)
    if result == "timeout":
        DRAIN_TIMEOUTS.inc()


class QueueCounters:
    """Every work queue's adds and retries as Prometheus counters, as controller-runtime makes
    client-go's: ``rate()`` and ``increase()`` need the counter type, and the queue counts them
    where they happen instead of this module reading them at scrape time."""

    def created(self, name: str) -> None:
        QUEUE_ADDS.labels(name)
        QUEUE_RETRIES.labels(name)

    def added(self, name: str) -> None:
        QUEUE_ADDS.labels(name).inc()

    def retried(self, name: str) -> None:
        QUEUE_RETRIES.labels(name).inc()


workqueue.set_metrics_provider(QueueCounters())


class StateCollector:
    """Gauges read from the controller at scrape time."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        ctl = self.controller
        q = ctl.queue
        depth = GaugeMetricFamily("workqueue_depth", "Keys waiting in the queue", labels=["name"])
        depth.add_metric([q.name], len(q))
        yield depth
        writes = GaugeMetricFamily(
            "podgate_gate_writes_pending",
            "Gate conditions submitted by reconciles and not sent yet (one per pod and gate: a newer "
            "wish replaces an older one)",
        )
        writes.add_metric([], ctl.reconciler.gates.pending())
        yield writes
        pending = GaugeMetricFamily(
            "podgate_pending_gates", "podgate gates not True, by reason", labels=["reason"]
        )
        tally: Tally[str] = Tally()
        for pod in ctl.pods.cache.values():
            if pod["metadata"].get("deletionTimestamp"):
                continue
            for gate in c.readiness_gates(pod.get("spec") or {}):
                if gates.service_of_gate(gate) is None:
                    continue
                cond = c.find((pod.get("status") or {}).get("conditions"), gate)
                if cond is None or cond.get("status") != c.TRUE:
                    tally[(cond or {}).get("reason") or "NoCondition"] += 1
        for reason, n in sorted(tally.items()):
            pending.add_metric([reason], n)
        yield pending
        aged = GaugeMetricFamily(
            "podgate_pending_gates_older_than",
            "podgate gates not True, by reason, pending longer than older_than (cumulative: a gate "
            'pending 6m counts in 30s, 1m and 5m), e.g. alert on {older_than="5m"} > 0',
            labels=["reason", "older_than"],
        )
        for (reason, age), n in sorted(
            report.pending_by_age(ctl.pods.cache.values(), datetime.now(UTC)).items()
        ):
            aged.add_metric([reason, age], n)
        yield aged
        retried = CounterMetricFamily(
            "podgate_provider_throttled",
            "Cloud API calls answered 'throttled' or 'busy' and retried after a back-off",
            labels=["provider"],
        )
        for name, provider in sorted(ctl.providers.items()):
            if provider.throttling is not None:
                retried.add_metric([name], provider.throttling.throttled)
        yield retried
        leader = GaugeMetricFamily("podgate_leader", "1 when this replica is the leader and reconciles")
        leader.add_metric([], 1.0 if ctl.is_leader else 0.0)
        yield leader


def watch(controller: Controller) -> None:
    REGISTRY.register(StateCollector(controller))


T = TypeVar("T")


async def _timed(provider: str, op: str, call: Awaitable[T]) -> T:
    PROVIDER_CALLS.labels(provider, op).inc()
    t0 = time.monotonic()
    try:
        return await call
    except Exception:
        PROVIDER_ERRORS.labels(provider, op).inc()
        raise
    finally:
        PROVIDER_LATENCY.labels(provider, op).observe(time.monotonic() - t0)


def instrumented(provider: Provider) -> Provider:
    """The provider's record with its seam and each capability it has counted and timed
    (``podgate_provider_*``, by provider and operation), so providers stay free of metrics."""
    name = provider.name
    return dataclasses.replace(
        provider,
        pool=InstrumentedProvider(provider.pool),
        binding=_InstrumentedBinding(name, provider.binding) if provider.binding else None,
        provisioning=_InstrumentedProvisioning(name, provider.provisioning)
        if provider.provisioning
        else None,
    )


class InstrumentedProvider:
    """The target seam wrapped with call counts, errors and latency."""

    def __init__(self, inner: TargetPool) -> None:
        self.inner = inner
        self.name = inner.name
        self.poll_interval = inner.poll_interval

    async def targets(self, pool: PoolSpec) -> dict[Target, TargetState]:
        return await _timed(self.name, "targets", self.inner.targets(pool))

    async def register(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        await _timed(self.name, "register", self.inner.register(pool, targets))

    async def drain(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        await _timed(self.name, "drain", self.inner.drain(pool, targets))

    async def deregister(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        await _timed(self.name, "deregister", self.inner.deregister(pool, targets))

    async def close(self) -> None:
        await self.inner.close()


class _InstrumentedBinding:
    def __init__(self, name: str, inner: GroupBinding) -> None:
        self.name, self.inner = name, inner

    async def bind(self, service_key: str, pools: Sequence[PoolSpec]) -> None:
        await _timed(self.name, "bind", self.inner.bind(service_key, pools))

    async def unbind(self, service_key: str) -> None:
        await _timed(self.name, "unbind", self.inner.unbind(service_key))


class _InstrumentedProvisioning:
    def __init__(self, name: str, inner: Provisioning) -> None:
        self.name, self.inner = name, inner

    async def provision(self, service_key: str, pools: Sequence[PoolSpec], address: str | None) -> str | None:
        return await _timed(self.name, "provision", self.inner.provision(service_key, pools, address))

    async def release(self, service_key: str) -> None:
        await _timed(self.name, "release", self.inner.release(service_key))

    async def sync_all(self, services: Mapping[str, ServiceLB]) -> None:
        await _timed(self.name, "sync_all", self.inner.sync_all(services))

    async def generation(self) -> str:
        return await _timed(self.name, "generation", self.inner.generation())
