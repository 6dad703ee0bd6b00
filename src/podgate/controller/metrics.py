"""Prometheus metrics of the controller and webhook.

Work-queue and reconcile metrics use controller-runtime's names, so existing dashboards and
alerts work.  Most gauges are computed at scrape time from the controller's own state (custom
collector) instead of being updated on hot paths.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from podgate.model.lb import PoolSpec, Target
from podgate.providers.base import GroupBinding, Provider, Provisioning, ServiceLB, TargetPool, TargetState

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
    "Evictions the eviction guard answered, by result (allowed, refused, forced, bad_request)",
    ["result"],
    registry=REGISTRY,
)
EVICTIONS_FORCED = Counter(
    "podgate_evictions_forced_total",
    "Evictions let through although below a Service's min-healthy-targets, because the pod's "
    "eviction had been refused for --max-eviction-refusal",
    registry=REGISTRY,
)
DRAIN_REQUESTS = Counter(
    "podgate_drain_requests_total",
    "preStop drain hooks answered, by result (drained; timeout: the drain budget passed first, "
    "with a DrainTimedOut Event; no_targets; not_terminating; unknown_pod; busy: over the cap of "
    "pods waited for, 429; error)",
    ["result"],
    registry=REGISTRY,
)
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


@dataclass(frozen=True)
class StateReadings:
    """What the scrape-time gauges read, each a narrow callable the composition root wires to
    the component that owns the state; none walks every pod."""

    queue_depth: Callable[[], Mapping[str, int]]
    gate_writes_pending: Callable[[], int]
    pending_by_reason: Callable[[], Mapping[str, int]]
    pending_by_age: Callable[[datetime], Mapping[tuple[str, str], int]]
    throttled: Callable[[], Mapping[str, int]]
    leading: Callable[[], bool]
    unreadable: Callable[[], int] = lambda: 0
    tracked: Callable[[], Mapping[str, int]] = dict


class StateCollector:
    """Gauges read at scrape time."""

    def __init__(self, readings: StateReadings) -> None:
        self.readings = readings

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        r = self.readings
        depth = GaugeMetricFamily("workqueue_depth", "Keys waiting in the queue", labels=["name"])
        for name, n in sorted(r.queue_depth().items()):
            depth.add_metric([name], n)
        yield depth
        writes = GaugeMetricFamily(
            "podgate_gate_writes_pending",
            "Gate conditions submitted by reconciles and not sent yet (one per pod and gate: a newer "
            "wish replaces an older one)",
        )
        writes.add_metric([], r.gate_writes_pending())
        yield writes
        pending = GaugeMetricFamily(
            "podgate_pending_gates", "podgate gates not True, by reason", labels=["reason"]
        )
        for reason, n in sorted(r.pending_by_reason().items()):
            pending.add_metric([reason], n)
        yield pending
        aged = GaugeMetricFamily(
            "podgate_pending_gates_older_than",
            "podgate gates not True, by reason, pending longer than older_than (cumulative: a gate "
            'pending 6m counts in 30s, 1m and 5m), e.g. alert on {older_than="5m"} > 0',
            labels=["reason", "older_than"],
        )
        for (reason, age), n in sorted(r.pending_by_age(datetime.now(UTC)).items()):
            aged.add_metric([reason, age], n)
        yield aged
        retried = CounterMetricFamily(
            "podgate_provider_throttled",
            "Cloud API calls answered 'throttled' or 'busy' and retried after a back-off",
            labels=["provider"],
        )
        for name, n in sorted(r.throttled().items()):
            retried.add_metric([name], n)
        yield retried
        unreadable = GaugeMetricFamily(
            "podgate_services_unreadable",
            "Services whose load balancer podgate cannot read now (their gates keep their status)",
        )
        unreadable.add_metric([], r.unreadable())
        yield unreadable
        leader = GaugeMetricFamily("podgate_leader", "1 when this replica is the leader and reconciles")
        leader.add_metric([], 1.0 if r.leading() else 0.0)
        yield leader
        tracked = GaugeMetricFamily(
            "podgate_tracked_entries",
            "Entries of the controller's per-pod, per-target and per-Service maps, by map: each is "
            "forgotten when its pod, target or Service goes, so none grows with churn",
            labels=["map"],
        )
        for name, n in sorted(r.tracked().items()):
            tracked.add_metric([name], n)
        yield tracked


def observe_reconcile(key: str, result: str, seconds: float, waited: float, queue: str = "services") -> None:
    """One reconcile pass of the Service ``key``, under controller-runtime's names."""
    QUEUE_DURATION.labels(queue).observe(waited)
    RECONCILE_TOTAL.labels("service", result).inc()
    if result == "error":
        RECONCILE_ERRORS.labels("service").inc()
    RECONCILE_TIME.labels("service").observe(seconds)
    WORK_DURATION.labels(queue).observe(seconds)
    SERVICE_RECONCILES.labels(*key.split("/", 1)).inc()


def forget_service(key: str) -> None:
    """The Service is gone: its own series go with it (a cluster's Services come and go)."""
    with contextlib.suppress(KeyError):
        SERVICE_RECONCILES.remove(*key.split("/", 1))


def observe_webhook(result: str, seconds: float) -> None:
    WEBHOOK_REQUESTS.labels(result).inc()
    WEBHOOK_LATENCY.observe(seconds)


def drain_results(results: Iterable[str]) -> None:
    """Every drain result's series exists from the start, so ``increase()`` sees the first."""
    for result in results:
        DRAIN_REQUESTS.labels(result)


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
