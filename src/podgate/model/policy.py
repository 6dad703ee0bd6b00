"""Per-Service gate policies (pure): how long a gate may wait for the load balancer and what
happens then, whether a True gate follows the load balancer back to False, and how many healthy
targets an eviction must leave.

A gate whose load balancer never says healthy (a wrong check path, a group on no listener)
would block a rollout for ever; the timeout lets the user choose, per Service, between failing
open (the rollout goes on, loudly) and failing closed (it stays blocked, with a reason that says
why).  The clock is read from the pod's own conditions, never from controller memory, so a
restarted controller keeps the same deadline.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from podgate.model import conditions as c
from podgate.model.gates import DOMAIN
from podgate.model.lb import ServiceConfigError
from podgate.model.types import Condition, PodView, pod_conditions

READINESS_TIMEOUT = f"{DOMAIN}/readiness-timeout"
ON_TIMEOUT = f"{DOMAIN}/on-timeout"
GATE_MODE = f"{DOMAIN}/gate-mode"
MIN_HEALTHY_TARGETS = f"{DOMAIN}/min-healthy-targets"

#: the reason of a gate the timeout decided (True when failing open, False when closed)
TIMED_OUT = "ReadinessTimedOut"
OPEN, CLOSED = "open", "closed"
CONTINUOUS, STARTUP = "continuous", "startup"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(raw: str) -> float:
    """Seconds in a duration written as Kubernetes users write them (``90s``, ``10m``,
    ``1h30m``) or a plain number of seconds; ValueError for anything else or zero."""
    text = raw.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{raw!r} is not a duration such as 90s, 10m or 1h30m") from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{raw!r} is not a positive duration")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` as a duration (``90s`` → ``1m30s``)."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    s, out = int(seconds), ""
    for unit, size in (("h", 3600), ("m", 60)):
        if s >= size:
            out += f"{s // size}{unit}"
            s %= size
    return out + (f"{s}s" if s or not out else "")


@dataclass(frozen=True)
class GatePolicy:
    """What a Service's gates do beyond following the load balancer's verdict."""

    #: seconds from ContainersReady a gate may stay False; None: no limit
    timeout: float | None = None
    #: when the timeout passes: True writes the gate True (the user chose availability)
    fail_open: bool = False
    #: True gates follow the load balancer back to False (else True once set stays True)
    continuous: bool = False
    #: the eviction guard's floor of targets the load balancer calls healthy; 0: no guard
    min_healthy_targets: int = 0


#: no timeout, True once set, no eviction guard: podgate's behaviour without any setting
DEFAULT_POLICY = GatePolicy()


def gate_policy(annotations: Mapping[str, str] | None, default: GatePolicy) -> GatePolicy:
    """The Service's policy: its annotations over the controller's defaults.  A bad value raises
    ServiceConfigError naming the annotation (the Service's gates then say so)."""
    a = annotations or {}
    timeout = default.timeout
    raw = a.get(READINESS_TIMEOUT)
    if raw is not None:
        try:
            timeout = parse_duration(raw)
        except ValueError as e:
            raise ServiceConfigError(f"annotation {READINESS_TIMEOUT}: {e}") from None
    fail_open = default.fail_open
    raw = a.get(ON_TIMEOUT)
    if raw is not None:
        if raw.strip() not in (OPEN, CLOSED):
            raise ServiceConfigError(f"annotation {ON_TIMEOUT}={raw!r} is not {OPEN} or {CLOSED}")
        fail_open = raw.strip() == OPEN
    continuous = default.continuous
    raw = a.get(GATE_MODE)
    if raw is not None:
        if raw.strip() not in (CONTINUOUS, STARTUP):
            raise ServiceConfigError(f"annotation {GATE_MODE}={raw!r} is not {CONTINUOUS} or {STARTUP}")
        continuous = raw.strip() == CONTINUOUS
    minimum = default.min_healthy_targets
    raw = a.get(MIN_HEALTHY_TARGETS)
    if raw is not None:
        if not raw.strip().isdigit():
            raise ServiceConfigError(
                f"annotation {MIN_HEALTHY_TARGETS}={raw!r} is not a whole number of targets"
            )
        minimum = int(raw.strip())
    return GatePolicy(timeout, fail_open, continuous, minimum)


def _time(ts: Any) -> float | None:
    if not isinstance(ts, str) or not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def clock_start(pod: PodView, gate: str) -> float | None:
    """When the gate's wait began: the pod turning ContainersReady, or the gate last going False
    after that (a continuous gate that fell back gets a fresh wait).  None: not waiting yet."""
    conditions = pod_conditions(pod)
    ready = c.find(conditions, c.CONTAINERS_READY)
    if ready is None or ready.get("status") != c.TRUE:
        return None
    started = _time(ready.get("lastTransitionTime"))
    current = c.find(conditions, gate)
    fell = _time(current.get("lastTransitionTime")) if current and current.get("status") == c.FALSE else None
    if started is None or fell is None:
        return started if started is not None else fell
    return max(started, fell)


def with_timeout(desired: Condition, pod: PodView, policy: GatePolicy, now: float) -> Condition:
    """The condition to write once the policy's timeout is applied to the load balancer's verdict.

    Before the deadline, or when the load balancer says healthy, the verdict stands.  After it,
    the gate takes the reason ``ReadinessTimedOut``, True when failing open and False when
    closed, quoting the verdict it overrode, and keeps it until the load balancer says healthy
    (the condition's own time says when it was decided, so the clock does not restart).  A gate
    opened this way keeps its words while the verdict stays negative, so re-reads write nothing.
    """
    if policy.timeout is None or desired["status"] == c.TRUE:
        return desired
    current = c.find(pod_conditions(pod), desired["type"])
    if (
        policy.fail_open
        and current is not None
        and current.get("status") == c.TRUE
        and current.get("reason") == TIMED_OUT
    ):
        return {
            "type": desired["type"],
            "status": c.TRUE,
            "reason": TIMED_OUT,
            "message": current.get("message") or "",
        }
    decided = current is not None and current.get("reason") == TIMED_OUT  # the deadline passed
    started = clock_start(pod, desired["type"])
    if not decided and (started is None or now - started < policy.timeout):
        return desired
    verdict = "opened it" if policy.fail_open else "keeps it closed"
    return {
        "type": desired["type"],
        "status": c.TRUE if policy.fail_open else c.FALSE,
        "reason": TIMED_OUT,
        "message": (
            f"no healthy verdict within {format_duration(policy.timeout)} of the pod's containers "
            f"being ready; {ON_TIMEOUT}={OPEN if policy.fail_open else CLOSED} {verdict} "
            f"({desired.get('reason')}: {desired.get('message')})"
        ),
    }


def eviction_refusal(service: str, pod: str, healthy: Collection[str], minimum: int) -> str | None:
    """Why evicting ``pod`` must wait, or None to let it go.

    ``healthy`` holds the Service's pods (namespace/name) whose targets its load balancer calls
    healthy in every pool, terminating ones left out.  Evicting a pod that is not among them
    takes no healthy target away, so only a healthy pod can be refused: when the others would be
    fewer than the Service's ``min-healthy-targets``.  The words follow the PodDisruptionBudget's
    own refusal, which ``kubectl drain`` users already read.
    """
    if minimum <= 0 or pod not in healthy or len(healthy) - 1 >= minimum:
        return None
    return (
        f"Cannot evict pod as it would leave Service {service} with {len(healthy) - 1} target(s) its "
        f"load balancer calls healthy, fewer than {MIN_HEALTHY_TARGETS}={minimum} "
        f"({len(healthy)} healthy now)"
    )


#: the Warning Event of a Service whose floor no eviction can pass (a PDB allowing none)
FLOOR_UNREACHABLE = "MinHealthyTargetsUnreachable"
#: the Warning Event of a pod whose eviction went through after the longest refusal
EVICTION_FORCED = "EvictionForced"


def floor_unreachable(service: str, minimum: int, selected: int) -> str | None:
    """Why the Service's ``min-healthy-targets`` refuses every eviction of its pods, or None.
    ``selected``: the pods the Service selects, terminating ones included (a pod just evicted
    stands for its replacement until that shows).

    At or above the pods the Service selects, even all of them healthy leave none to spare: as a
    PodDisruptionBudget that allows no disruption, every drain of a node holding one waits until
    the cluster-wide ``--max-eviction-refusal`` passes.  A Service selecting no pod has nothing
    to evict and says nothing."""
    if minimum <= 0 or selected <= 0 or minimum < selected:
        return None
    return (
        f"{MIN_HEALTHY_TARGETS}={minimum} is at or above the {selected} pod(s) Service {service} "
        "selects: no eviction of its pods can pass (as a PodDisruptionBudget allowing no "
        "disruption); lower it below the replicas, or scale up"
    )


def forced_eviction(refusal: str, refused_for: float, limit: float) -> str:
    """What the user reads when an eviction refused for ``refused_for`` seconds goes through."""
    return (
        f"podgate let this eviction through after refusing it for {format_duration(round(refused_for))} "
        f"(--max-eviction-refusal={format_duration(limit)}); it would still be refused: {refusal}"
    )
