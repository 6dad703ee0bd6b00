"""What ``podgate status`` shows for a pod: each readiness gate, its state and how long it has
been pending, and for a pod that is not Ready every other reason too (a container or its probe,
a load-balanced Service it has no gate for).  Pure, so the table, JSON/YAML outputs and the
pending-gate metrics agree.

The gate rows read only what the controller's cache keeps (they take a ``PodView``: the metrics
count cached pods); why a pod is not Ready reads container statuses, probes and PodScheduled,
which the cache drops, so ``container_rows`` and ``explain`` take a raw ``Pod`` from the API."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from podgate.model import conditions as c
from podgate.model import gates, resolution
from podgate.model.types import (
    Pod,
    PodView,
    containers,
    is_terminating,
    labels,
    meta_of,
    pod_conditions,
    pod_spec,
    pod_status,
)


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def _gate_states(
    pod: PodView,
) -> list[tuple[str, Mapping[str, Any] | None, str, str, datetime | None]]:
    """Each readiness gate of the pod as (gate, its condition, status, reason, since when): the
    one reading behind the table, the JSON outputs and the pending-gate metrics."""
    meta = meta_of(pod)
    conds = pod_conditions(pod)
    created = _parse(meta.get("creationTimestamp"))
    out = []
    for gate in c.readiness_gates(pod_spec(pod)):
        cond = c.find(conds, gate)
        status = (cond or {}).get("status") or "Missing"
        reason = (cond or {}).get("reason") or ("NoCondition" if cond is None else "")
        since = _parse((cond or {}).get("lastTransitionTime")) if cond else created
        out.append((gate, cond, status, reason, since))
    return out


def gate_rows(pod: PodView, now: datetime) -> list[dict[str, Any]]:
    meta = meta_of(pod)
    rows = []
    for gate, cond, status, reason, since in _gate_states(pod):
        pending = None if status == c.TRUE or since is None else max((now - since).total_seconds(), 0.0)
        rows.append(
            {
                "namespace": meta.get("namespace"),
                "pod": meta.get("name"),
                "gate": gate,
                "status": status,
                "reason": reason,
                "message": (cond or {}).get("message")
                or ("no controller has written this condition yet" if cond is None else ""),
                "pending_seconds": pending,
            }
        )
    return rows


def _row(
    pod: PodView, what: str, status: str, reason: str, message: str, pending: float | None
) -> dict[str, Any]:
    meta = meta_of(pod)
    return {
        "namespace": meta.get("namespace"),
        "pod": meta.get("name"),
        "gate": what,
        "status": status,
        "reason": reason,
        "message": message,
        "pending_seconds": pending,
    }


def _since(ts: str | None, now: datetime) -> float | None:
    at = _parse(ts)
    return None if at is None else max((now - at).total_seconds(), 0.0)


def container_rows(pod: Pod, now: datetime) -> list[dict[str, Any]]:
    """Why the kubelet's own part of Ready is False: unscheduled, or which container is not
    ready and why (waiting, terminated, or running with its readiness probe not passing).  A
    raw pod: the controller's cache keeps none of this."""
    status = pod_status(pod)
    conds = status.get("conditions")
    scheduled = c.find(conds, c.POD_SCHEDULED)
    if scheduled is None or scheduled.get("status") != c.TRUE:
        return [
            _row(
                pod,
                c.POD_SCHEDULED,
                (scheduled or {}).get("status") or "Missing",
                (scheduled or {}).get("reason") or "Unscheduled",
                (scheduled or {}).get("message") or "no node has taken the pod yet",
                _since(
                    (scheduled or {}).get("lastTransitionTime") or meta_of(pod).get("creationTimestamp"),
                    now,
                ),
            )
        ]
    ready = c.find(conds, c.CONTAINERS_READY)
    if ready is not None and ready.get("status") == c.TRUE:
        return []
    pending = _since((ready or {}).get("lastTransitionTime"), now)
    probes = {x.get("name"): "readinessProbe" in x for x in containers(pod)}
    rows = []
    for cs in status.get("containerStatuses") or ():
        if cs.get("ready"):
            continue
        name, state = cs.get("name"), cs.get("state") or {}
        if state.get("waiting"):
            reason = state["waiting"].get("reason") or "Waiting"
            message = state["waiting"].get("message") or f"container {name} is waiting to start"
        elif state.get("terminated"):
            reason = state["terminated"].get("reason") or "Terminated"
            message = f"container {name} exited with code {state['terminated'].get('exitCode')}"
        elif probes.get(name):
            reason, message = (
                "ReadinessProbeFailing",
                f"container {name} is running; its readiness probe is not passing",
            )
        else:
            reason, message = "ContainerNotReady", f"container {name} is running but not ready yet"
        rows.append(_row(pod, f"container/{name}", c.FALSE, reason, message, pending))
    if not rows:
        rows.append(
            _row(
                pod,
                c.CONTAINERS_READY,
                (ready or {}).get("status") or "Missing",
                (ready or {}).get("reason") or "ContainersNotReady",
                (ready or {}).get("message") or "the node has not reported the containers yet",
                pending,
            )
        )
    return rows


@dataclass(frozen=True)
class Serving:
    """What the controller serves, as ``podgate status`` is told it (the controller's own
    ``--default-provider``, ``--load-balancer-class`` and ``--adopt-gate-prefix``): the CLI has
    no other way to know, and a Service beside a cloud controller is that controller's unless
    podgate's class or annotation says otherwise."""

    default_provider: str | None = None
    #: loadBalancerClass → provider; None: ``podgate.dev/<provider>``
    classes: Mapping[str, str] | None = None
    adopted_prefixes: tuple[str, ...] = ()

    def serves(self, service: Mapping[str, Any]) -> bool:
        """Whether podgate gates this Service's pods, as :func:`resolution.resolve` decides it
        for the controller.  The provider names are the controller's; the CLI takes the ones the
        Service itself names (its annotation, a ``podgate.dev/<name>`` class), so a name podgate
        may not have configured still counts: the controller then tells the pods why."""
        annotations = (service.get("metadata") or {}).get("annotations") or {}
        lb_class = (service.get("spec") or {}).get("loadBalancerClass") or ""
        names = {(annotations.get(gates.PROVIDER_ANNOTATION) or "").strip(), self.default_provider or ""}
        names |= set((self.classes or {}).values())
        if self.classes is None and lb_class.startswith(f"{gates.DOMAIN}/"):
            names.add(lb_class.split("/", 1)[1])
        names -= {"", "none"}
        settings = resolution.Settings({n: () for n in names}, self.default_provider, self.classes)
        return resolution.resolve(service, settings).handled


def missing_gate_rows(
    pod: PodView, services: Iterable[Mapping[str, Any]], now: datetime, serving: Serving | None = None
) -> list[dict[str, Any]]:
    """A Service podgate serves selects the pod but the pod has no gate for it (podgate's own or
    an adopted vendor's): it was created before the Service (injection happens at creation
    only), so a rollout will not wait.  Another controller's Service is never counted: its pods
    are not podgate's to restart."""
    serving = serving or Serving()
    meta = meta_of(pod)
    if is_terminating(pod):
        return []
    have = {gates.service_of_gate(g, serving.adopted_prefixes) for g in c.readiness_gates(pod_spec(pod))}
    rows = []
    for s in services:
        smeta = s.get("metadata") or {}
        name = smeta.get("name") or ""
        gate = gates.service_gate(name)
        if (
            smeta.get("namespace") == meta.get("namespace")
            and name not in have
            and gates.selector_matches((s.get("spec") or {}).get("selector"), labels(pod))
            and serving.serves(s)
        ):
            rows.append(
                _row(
                    pod,
                    gate,
                    "NoGate",
                    "NoReadinessGate",
                    f"Service {smeta.get('name')} load-balances this pod, but the pod has no gate for it "
                    "(created before the Service, or not injected): restart it (kubectl rollout restart) "
                    "so rollouts wait for the load balancer",
                    None,
                )
            )
    return rows


def explain(
    pod: Pod, services: Iterable[Mapping[str, Any]], now: datetime, serving: Serving | None = None
) -> list[dict[str, Any]]:
    """Every row ``podgate status`` shows for a pod (as the API server sends it: a cached pod
    lacks what ``container_rows`` reads): its gates; if it is not Ready, what else holds it;
    and the Services podgate serves that it has no gate for."""
    rows = gate_rows(pod, now)
    ready = c.find(pod_conditions(pod), c.READY)
    if (ready is None or ready.get("status") != c.TRUE) and not is_terminating(pod):
        rows += container_rows(pod, now)
    return rows + missing_gate_rows(pod, services, now, serving)


#: the ages ``podgate_pending_gates_older_than`` reports (seconds, label)
AGES: Sequence[tuple[float, str]] = ((30, "30s"), (60, "1m"), (300, "5m"), (900, "15m"), (3600, "1h"))


def pending_gates(pod: PodView) -> list[tuple[str, datetime | None]]:
    """The live pod's podgate load-balancer gates that are not True, each as (reason, pending
    since), read as :func:`gate_rows` reads them: what the pending-gate metrics count."""
    if is_terminating(pod):
        return []
    return [
        (reason, since)
        for gate, _, status, reason, since in _gate_states(pod)
        if status != c.TRUE and gates.service_of_gate(gate) is not None
    ]


def by_age(pending: Iterable[tuple[str, datetime | None]], now: datetime) -> dict[tuple[str, str], int]:
    """Pending gates by reason and by each age in ``AGES`` they are older than (cumulative, so
    ``{older_than="5m"} > 0`` is a stuck-gate alert)."""
    out: dict[tuple[str, str], int] = {}
    for reason, since in pending:
        age = max((now - since).total_seconds(), 0.0) if since is not None else 0.0
        for limit, label in AGES:
            if age >= limit:
                key = (reason, label)
                out[key] = out.get(key, 0) + 1
    return out


def pending_by_age(pods: Iterable[PodView], now: datetime) -> dict[tuple[str, str], int]:
    """Pending load-balancer gates of live pods, by reason and age (see :func:`by_age`)."""
    return by_age((entry for pod in pods for entry in pending_gates(pod)), now)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60}s"
    return f"{s // 3600}h{s % 3600 // 60}m"
