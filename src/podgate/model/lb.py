"""Load-balancer policy as pure functions: which Services are handled and how, which targets a
pool should hold, and which gate condition follows from what the load balancer says."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from podgate.model import conditions as c
from podgate.model.gates import DOMAIN, PROVIDER_ANNOTATION, selector_matches
from podgate.model.probes import ProbeSpecError, resolve_port
from podgate.model.types import (
    Condition,
    PodView,
    containers,
    is_terminating,
    labels,
    meta_of,
    pod_conditions,
    pod_ip,
    sidecars,
)

HC_PATH = f"{DOMAIN}/health-check-path"
HC_PROTOCOL = f"{DOMAIN}/health-check-protocol"
HC_INTERVAL = f"{DOMAIN}/health-check-interval"
HC_HEALTHY = f"{DOMAIN}/healthy-threshold"
HC_UNHEALTHY = f"{DOMAIN}/unhealthy-threshold"
HAPROXY_BACKEND = f"{DOMAIN}/haproxy-backend"
DRAIN_DELAY = f"{DOMAIN}/deregistration-delay"
#: "false": the load balancer never retries a request on another target (HAProxy provisioning
#: renders no retries, redispatch or retry-on: a cloud load balancer's behaviour)
RETRIES = f"{DOMAIN}/load-balancer-retries"
AWS_TARGET_GROUP = f"{DOMAIN}/aws-target-group-arn"
ALIBABA_CLB_GROUP = f"{DOMAIN}/alibaba-clb-vserver-group-id"
ALIBABA_NLB_GROUP = f"{DOMAIN}/alibaba-nlb-server-group-id"

NONE = "none"
#: held on a Service whose pods podgate put into a group the user owns (a cloud target group or
#: server group): deleting the Service waits until podgate has taken them out again
TARGETS_FINALIZER = f"{DOMAIN}/load-balancer-targets"


class ServiceConfigError(ValueError):
    """A Service annotation podgate cannot honour; the message names the annotation."""


@dataclass(frozen=True)
class HealthCheck:
    """The load balancer's own check of a target: podgate's gate waits for its verdict."""

    path: str | None = None  # None: a TCP connect check
    interval: float = 2.0
    healthy_threshold: int = 3
    unhealthy_threshold: int = 3

    @property
    def minimum_to_healthy(self) -> float:
        """The load balancer's own floor from registration to healthy (rise × inter)."""
        return self.interval * self.healthy_threshold


def default_classes(providers: Iterable[str]) -> dict[str, str]:
    """``podgate.dev/<provider>`` for each configured provider: the classes podgate serves when
    the operator names none (the AWS and Alibaba controllers select their Services the same way)."""
    return {f"{DOMAIN}/{name}": name for name in providers}


def provider_for(
    service: Mapping[str, Any],
    default: str | None,
    configured: Iterable[str],
    classes: Mapping[str, str] | None = None,
) -> str | None:
    """The provider handling this Service, or None when podgate leaves it alone.

    In order: podgate's provider annotation (``none`` opts out); ``spec.loadBalancerClass``
    (Kubernetes 1.24+), served only when it is one of ``classes`` (class → provider, by default
    :func:`default_classes`), another controller's class otherwise; a class-less ``type:
    LoadBalancer`` Service only when the operator named a ``default`` provider.  Beside a cloud
    controller manager, claiming class-less Services would fight it over the same Service."""
    configured = set(configured)
    served = default_classes(configured) if classes is None else classes
    annotations = (service.get("metadata") or {}).get("annotations") or {}
    spec = service.get("spec") or {}
    lb_class = spec.get("loadBalancerClass")
    chosen: str | None = annotations.get(PROVIDER_ANNOTATION)
    if chosen is not None:
        chosen = chosen.strip()
        if chosen == NONE:
            return None
        if chosen not in configured:
            raise ServiceConfigError(
                f"annotation {PROVIDER_ANNOTATION}={chosen!r} names no configured provider "
                f"(configured: {', '.join(sorted(configured)) or 'none'})"
            )
        if lb_class and lb_class not in served:
            raise ServiceConfigError(
                f"annotation {PROVIDER_ANNOTATION}={chosen!r} conflicts with "
                f"spec.loadBalancerClass={lb_class!r}, which another controller serves"
            )
        return chosen
    if spec.get("type") != "LoadBalancer":
        return None
    if lb_class:
        return served.get(lb_class)
    return default


def finalizers_patch(service: Mapping[str, Any], present: bool) -> dict[str, Any] | None:
    """The strategic-merge patch that adds (``present``) or removes podgate's finalizer, or None
    when there is nothing to do.  Strategic merge adds to and deletes from the list item by
    item (``finalizers`` merges as a set), so other controllers' finalizers are never touched
    and a concurrent change to them is no conflict."""
    current = list((service.get("metadata") or {}).get("finalizers") or ())
    if (TARGETS_FINALIZER in current) == present:
        return None
    if present:
        return {"metadata": {"finalizers": [TARGETS_FINALIZER]}}
    return {"metadata": {"$deleteFromPrimitiveList/finalizers": [TARGETS_FINALIZER]}}


#: ``status.loadBalancer.ingress[].ipMode`` of an address podgate provisions (KEP-1860, GA in
#: 1.32): the load balancer terminates connections, so kube-proxy must leave traffic for the
#: address to it rather than send in-cluster clients' packets straight to the endpoints
IP_MODE_PROXY = "Proxy"


def ingress_patch(
    service: Mapping[str, Any], address: str, *, ip_mode_kept: bool = True
) -> dict[str, Any] | None:
    """The merge patch of ``services/status`` publishing ``address`` as the Service's EXTERNAL-IP
    with ``ipMode: Proxy``, or None when the status already says so.  ``ip_mode_kept`` False (an
    API server that dropped the field from an earlier write: before 1.30, or the feature off)
    compares the address alone, so such a server is not written on every pass."""
    current = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    first = current[0] if current and isinstance(current[0], Mapping) else {}
    if first.get("ip") == address and (first.get("ipMode") == IP_MODE_PROXY or not ip_mode_kept):
        return None
    return {"status": {"loadBalancer": {"ingress": [{"ip": address, "ipMode": IP_MODE_PROXY}]}}}


def health_check(annotations: Mapping[str, str] | None) -> HealthCheck:
    a = annotations or {}

    def number(key: str, default: float, integer: bool = False) -> float:
        raw = a.get(key)
        if raw is None:
            return default
        try:
            value = int(raw) if integer else float(raw.removesuffix("s"))
        except ValueError:
            kind = "an integer" if integer else "a number of seconds"
            raise ServiceConfigError(f"annotation {key}={raw!r} is not {kind}") from None
        if value <= 0 or (not integer and value < 0.1):
            raise ServiceConfigError(f"annotation {key}={raw!r} is too small")
        return value

    protocol = a.get(HC_PROTOCOL, "").upper()
    path = a.get(HC_PATH)
    if protocol not in ("", "TCP", "HTTP"):
        raise ServiceConfigError(f"annotation {HC_PROTOCOL}={a[HC_PROTOCOL]!r} is not TCP or HTTP")
    if path is not None and not path.startswith("/"):
        raise ServiceConfigError(f"annotation {HC_PATH}={path!r} must start with '/'")
    if path is not None and any(ch.isspace() for ch in path):
        raise ServiceConfigError(f"annotation {HC_PATH}={path!r} must not contain spaces")
    if protocol == "HTTP" and path is None:
        path = "/"
    if protocol == "TCP":
        path = None
    return HealthCheck(
        path=path,
        interval=number(HC_INTERVAL, 2.0),
        healthy_threshold=int(number(HC_HEALTHY, 3, integer=True)),
        unhealthy_threshold=int(number(HC_UNHEALTHY, 3, integer=True)),
    )


def _seconds(annotations: Mapping[str, str], key: str, default: float, minimum: float) -> float:
    raw = annotations.get(key)
    if raw is None:
        return default
    try:
        value = float(raw.removesuffix("s"))
    except ValueError:
        raise ServiceConfigError(f"annotation {key}={raw!r} is not a number of seconds") from None
    if value < minimum:
        raise ServiceConfigError(f"annotation {key}={raw!r} must be at least {minimum:g}")
    return value


#: annotations whose value may name one group per Service port (``ID:PORT,ID:PORT``)
PER_PORT_GROUPS = frozenset({ALIBABA_CLB_GROUP, ALIBABA_NLB_GROUP})


@dataclass(frozen=True)
class GroupRef:
    """The existing group of the user's a pool is bound to (an attached HAProxy backend, an AWS
    target group, an Alibaba vServer or server group): the annotation that named it, by which
    its provider tells its kinds apart, and its id."""

    annotation: str
    id: str


_GROUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


def pool_groups(
    annotations: Mapping[str, str], ports: Sequence[int], keys: Sequence[str]
) -> dict[int, GroupRef]:
    """The group each Service port is bound to, from the one of ``keys`` (the provider's own
    group annotations) the Service carries.

    Most values name one group for every port.  Those in :data:`PER_PORT_GROUPS` take one group
    id (a Service with one port) or ``id:port,id:port`` naming a group per port, like the
    Alibaba cloud controller's own vgroup-port annotation.  One group per port and every port
    named: podgate treats the pod targets of a group as its own, so two ports sharing a group
    would each remove the other's targets.
    """
    present = [key for key in keys if annotations.get(key, "").strip()]
    if not present:
        return {}
    if len(present) > 1:
        raise ServiceConfigError(f"annotations {' and '.join(present)} exclude each other")
    key = present[0]
    raw = annotations[key].strip()
    if key not in PER_PORT_GROUPS:
        return {p: GroupRef(key, raw) for p in ports}
    out: dict[int, GroupRef] = {}
    if ":" not in raw and "," not in raw:
        if not _GROUP_ID.match(raw):
            raise ServiceConfigError(f"annotation {key}={raw!r} is not a server group id")
        if len(ports) > 1:
            raise ServiceConfigError(
                f"annotation {key}={raw!r}: the Service has {len(ports)} ports; name a group per "
                "port as ID:PORT,ID:PORT"
            )
        return {p: GroupRef(key, raw) for p in ports}
    for item in raw.split(","):
        gid, sep, port = item.strip().rpartition(":")
        if not sep or not _GROUP_ID.match(gid) or not port.isdigit():
            raise ServiceConfigError(f"annotation {key}={raw!r}: {item.strip()!r} is not ID:PORT")
        if int(port) not in ports:
            raise ServiceConfigError(f"annotation {key}={raw!r}: the Service has no port {port}")
        if int(port) in out:
            raise ServiceConfigError(f"annotation {key}={raw!r}: port {port} is named twice")
        out[int(port)] = GroupRef(key, gid)
    missing = sorted(set(ports) - set(out))
    if missing:
        raise ServiceConfigError(f"annotation {key}={raw!r} names no group for port(s) {missing}")
    groups = [g.id for g in out.values()]
    if len(set(groups)) != len(groups):
        raise ServiceConfigError(f"annotation {key}={raw!r}: each port needs its own group")
    return out


@dataclass(frozen=True)
class PoolSpec:
    """One load-balancer pool: a Service port and how its targets are checked."""

    namespace: str
    service: str
    port: int
    port_name: str
    target_port: int | str
    protocol: str
    health: HealthCheck
    #: the user's own group this pool is bound to; None: the provider makes the pool itself
    group: GroupRef | None = None
    #: seconds a leaving target stays draining (if its pod still exists) before removal
    drain_delay: float = 5.0
    #: whether the load balancer may send a request again to another target when the
    #: connection failed or the answer was empty (HAProxy provisioning; clouds never do)
    retries: bool = True

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.service}"


def pools_for(service: Mapping[str, Any], group_annotations: Sequence[str] = ()) -> list[PoolSpec]:
    """The Service's pools (its TCP ports), bound to the groups named by those of
    ``group_annotations`` (its provider's) it carries."""
    meta, spec = service["metadata"], service.get("spec") or {}
    annotations = meta.get("annotations") or {}
    hc = health_check(annotations)
    drain_delay = _seconds(annotations, DRAIN_DELAY, 5.0, minimum=0.0)
    retries = annotations.get(RETRIES, "true").strip().lower()
    if retries not in ("true", "false"):
        raise ServiceConfigError(f"annotation {RETRIES}={annotations[RETRIES]!r} is not true or false")
    ports = [p for p in spec.get("ports") or () if (p.get("protocol") or "TCP") == "TCP"]
    groups = pool_groups(annotations, [int(p["port"]) for p in ports], group_annotations)
    pools = []
    for p in ports:
        protocol = "TCP"  # HAProxy balances TCP/HTTP only; other protocols get no pool
        pools.append(
            PoolSpec(
                namespace=meta["namespace"],
                service=meta["name"],
                port=int(p["port"]),
                port_name=p.get("name") or "",
                target_port=p.get("targetPort") or p["port"],
                protocol=protocol,
                health=hc,
                group=groups.get(int(p["port"])),
                drain_delay=drain_delay,
                retries=retries == "true",
            )
        )
    return pools


@dataclass(frozen=True, order=True)
class Target:
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


class Membership(enum.Enum):
    ACTIVE = "active"  # registered, receives traffic once healthy
    DRAIN = "drain"  # leaving: no new connections, removed once drained


def _true(pod: PodView, ctype: str) -> bool:
    cond = c.find(pod_conditions(pod), ctype)
    return cond is not None and cond.get("status") == c.TRUE


def membership(pod: PodView, selector: Mapping[str, str] | None) -> Membership | None:
    """ACTIVE for matching pods that are ContainersReady (or Ready) and not terminating; DRAIN
    for pods that were eligible and no longer are; None for pods that never were targets."""
    if not pod_ip(pod):
        return None
    eligible = (_true(pod, c.CONTAINERS_READY) or _true(pod, c.READY)) and not is_terminating(pod)
    if eligible and selector_matches(selector, labels(pod)):
        return Membership.ACTIVE
    return Membership.DRAIN


def target_of(pod: PodView, target_port: int | str) -> Target | None:
    """The pod's address for a Service targetPort (a number, or a named port of a main container
    or, as the EndpointSlice controller reads it, of a native sidecar)."""
    ip = pod_ip(pod)
    if not ip:
        return None
    if isinstance(target_port, int) or str(target_port).isdigit():
        return Target(ip, int(target_port))
    for container in (*containers(pod), *sidecars(pod)):
        try:
            return Target(ip, resolve_port(target_port, container))
        except ProbeSpecError:
            continue
    return None


@dataclass(frozen=True)
class TargetPlan:
    """What the pool should hold: active targets and targets to drain, each with its pod key."""

    active: dict[Target, str] = field(default_factory=dict)
    drain: dict[Target, str] = field(default_factory=dict)


def plan_targets(pool: PoolSpec, selector: Mapping[str, str] | None, pods: Iterable[PodView]) -> TargetPlan:
    plan = TargetPlan()
    for pod in pods:
        meta = meta_of(pod)
        if meta.get("namespace") != pool.namespace:
            continue
        member = membership(pod, selector)
        target = target_of(pod, pool.target_port) if member else None
        if target is None:
            continue
        key = f"{meta['namespace']}/{meta['name']}"
        if member is Membership.ACTIVE:
            plan.active[target] = key
            plan.drain.pop(target, None)
        elif target not in plan.active:
            plan.drain[target] = key
    return plan


@dataclass(frozen=True)
class Diff:
    add: list[Target]
    drain: list[Target]
    remove: list[Target]


def diff_targets(plan: TargetPlan, present: Mapping[Target, str], drained: Iterable[Target] = ()) -> Diff:
    """Level-triggered diff of the pool: ``present`` maps each server to its admin state
    (``ready``/``drain``/``maint``); ``drained`` lists draining targets that are done (no
    connections left and the drain delay passed).  A target whose pod is gone is removed at once."""
    drained = set(drained)
    # Active targets not taking traffic are (re-)registered: absent, or left draining when their
    # pod lost readiness for a moment and got it back.
    add = sorted(t for t in plan.active if present.get(t) != "ready")
    drain = sorted(t for t, state in present.items() if t not in plan.active and state == "ready")
    remove = sorted(
        t
        for t, state in present.items()
        if t not in plan.active
        and (t not in plan.drain or state == "maint" or (state == "drain" and t in drained))
    )
    return Diff(add, [t for t in drain if t not in remove], remove)


class Health(enum.Enum):
    UNREGISTERED = "unregistered"
    INITIAL = "initial"  # registered, the check has not yet passed `rise` times
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # the check passed before, or is failing
    DRAINING = "draining"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class TargetHealth:
    health: Health
    detail: str  # the load balancer's own words, quoted in the condition message
    where: str = ""  # which pool / load balancer said it
    #: the load balancer's own reason code (e.g. ELB's ``Elb.InitialHealthChecking``): when set,
    #: the condition carries it verbatim instead of podgate's generic reason
    reason: str | None = None


REASONS = {
    Health.UNREGISTERED: "RegistrationInProgress",
    Health.INITIAL: "InitialHealthChecking",
    Health.UNHEALTHY: "HealthCheckFailing",
    Health.DRAINING: "TargetDraining",
    Health.UNKNOWN: "ProviderError",
}
HEALTHY_REASON = "TargetHealthy"
SERVICE_NOT_FOUND = "ServiceNotFound"
NOT_LOAD_BALANCED = "ServiceNotLoadBalanced"
SERVICE_CONFIG_ERROR = "ServiceConfigInvalid"
PROVIDER_ERROR = "ProviderError"
#: the Service names a load-balancer group no LoadBalancerGroupGrant gives its namespace
GROUP_NOT_GRANTED = "GroupNotGranted"


def gate_condition(gate: str, healths: Sequence[TargetHealth]) -> Condition:
    """The gate's condition from the target's health in every pool of the Service.

    True only when there is at least one pool and every pool says healthy; otherwise False
    with the reason of the first pool that is not, quoting its load balancer.
    """
    if not healths:
        return {
            "type": gate,
            "status": c.FALSE,
            "reason": REASONS[Health.UNREGISTERED],
            "message": "the pod is not a target of the load balancer yet",
        }
    for h in healths:
        if h.health is not Health.HEALTHY:
            return {
                "type": gate,
                "status": c.FALSE,
                "reason": h.reason or REASONS[h.health],
                "message": _message(h),
            }
    return {
        "type": gate,
        "status": c.TRUE,
        "reason": HEALTHY_REASON,
        "message": "; ".join(_message(h) for h in healths),
    }


def _message(h: TargetHealth) -> str:
    return f"{h.where}: {h.detail}" if h.where else h.detail


def failure_condition(gate: str, reason: str, message: str) -> Condition:
    return {"type": gate, "status": c.FALSE, "reason": reason, "message": message}


def next_condition(
    current: Mapping[str, Any] | None,
    desired: Condition,
    sticky: bool,
    now: str,
    *,
    words: bool = False,
    generation: int | None = None,
) -> Condition | None:
    """What to write, or None for no write.

    Sticky (default) mode keeps a gate True once set: the load balancer itself stops routing to
    an unhealthy target, and flapping readiness would only make the Deployment controller churn.
    ``lastTransitionTime`` is carried over unless the status changes.

    A write only for a new status or reason: a message that only counts progress ("DOWN 1/3" →
    "DOWN 2/3") is not written.  Each write is a watch event for every pod watcher in the
    cluster; the progress itself is in the Events of the transitions, the metrics and ``podgate
    status``.  So a pod costs about three writes from creation to Ready (registration, initial
    health checking, healthy), as the AWS controller's do.  ``words``: a new message is a
    change too (a condition set by hand says what the user wrote).

    ``generation``: the pod's ``metadata.generation`` as last seen (Kubernetes 1.34+; None when
    the pod has none), written as the condition's ``observedGeneration``.  A new generation
    alone is no change: the gate's verdict is the load balancer's, which no pod spec change
    that bumps the generation (image, activeDeadlineSeconds, tolerations, resources) decides;
    the next write for a new status or reason carries the generation of then.
    """
    if current is not None and current.get("status") == c.TRUE and sticky and desired["status"] != c.TRUE:
        return None
    compared = ("status", "reason", "message") if words else ("status", "reason")
    if current is not None and all(current.get(k) == desired.get(k) for k in compared):
        return None
    cond = c.with_transition_times([desired], [current] if current else [], now)[0]
    cond.pop("lastProbeTime", None)
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond
