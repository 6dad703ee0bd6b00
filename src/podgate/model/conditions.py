"""Pod conditions as the kubelet computes them: the Ready rule and readiness gates.

Mirrors ``pkg/kubelet/status/generate.go`` (Kubernetes 1.20) reason for reason and message for
message, so tools that parse the kubelet's wording read the sandbox the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from podgate.model.types import Condition

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"

POD_SCHEDULED = "PodScheduled"
INITIALIZED = "Initialized"
CONTAINERS_READY = "ContainersReady"
READY = "Ready"
#: The conditions the kubelet (and so the node agent) owns; every other type belongs to
#: someone else (readiness gates, controllers) and is never written or dropped by the agent.
KUBELET_CONDITIONS = (POD_SCHEDULED, INITIALIZED, CONTAINERS_READY, READY)


def find(conditions: Iterable[Mapping[str, Any]] | None, ctype: str) -> Mapping[str, Any] | None:
    for cond in conditions or ():
        if cond.get("type") == ctype:
            return cond
    return None


def _go_list(names: Sequence[str]) -> str:
    """Format a list of names as Go's ``%s`` prints a []string."""
    return "[" + " ".join(names) + "]"


def containers_ready(
    container_names: Sequence[str], ready_by_name: Mapping[str, bool], phase: str
) -> Condition:
    """ContainersReady: every declared container has a status and is ready."""
    unknown = [n for n in container_names if n not in ready_by_name]
    unready = [n for n in container_names if n in ready_by_name and not ready_by_name[n]]
    if phase == "Succeeded" and not unknown:
        return {"type": CONTAINERS_READY, "status": FALSE, "reason": "PodCompleted"}
    messages = []
    if unknown:
        messages.append(f"containers with unknown status: {_go_list(unknown)}")
    if unready:
        messages.append(f"containers with unready status: {_go_list(unready)}")
    if messages:
        return {
            "type": CONTAINERS_READY,
            "status": FALSE,
            "reason": "ContainersNotReady",
            "message": ", ".join(messages),
        }
    return {"type": CONTAINERS_READY, "status": TRUE}


def pod_ready(
    containers_ready_condition: Condition,
    readiness_gates: Sequence[str],
    conditions: Iterable[Mapping[str, Any]] | None,
) -> Condition:
    """Ready: ContainersReady is True and every readiness gate's condition is exactly "True"."""
    if containers_ready_condition["status"] != TRUE:
        cond: Condition = {"type": READY, "status": containers_ready_condition["status"]}
        for key in ("reason", "message"):
            if key in containers_ready_condition:
                cond[key] = containers_ready_condition[key]
        return cond
    unready = []
    conditions = list(conditions or ())
    for gate in readiness_gates:
        found = find(conditions, gate)
        if found is None:
            unready.append(f"corresponding condition of pod readiness gate {_quote(gate)} does not exist.")
        elif found.get("status") != TRUE:
            unready.append(
                f'the status of pod readiness gate {_quote(gate)} is not "True", but {found.get("status")}'
            )
    if unready:
        return {
            "type": READY,
            "status": FALSE,
            "reason": "ReadinessGatesNotReady",
            "message": ", ".join(unready),
        }
    return {"type": READY, "status": TRUE}


def _quote(s: str) -> str:
    """Go's %q for the plain strings condition types are."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def with_transition_times(
    desired: Sequence[Condition], current: Iterable[Mapping[str, Any]] | None, now: str
) -> list[Condition]:
    """Stamp ``lastTransitionTime``: kept from the current condition unless the status changed."""
    out: list[Condition] = []
    current = list(current or ())
    for cond in desired:
        # Explicit nulls: a strategic merge keeps keys the patch leaves out, so a condition
        # going True must say "no reason, no message" or it keeps the False one's words.
        stamped: Condition = {"reason": None, "message": None, **cond}
        old = find(current, cond["type"])
        if old is not None and old.get("status") == cond["status"] and old.get("lastTransitionTime"):
            stamped["lastTransitionTime"] = old["lastTransitionTime"]
        else:
            stamped["lastTransitionTime"] = now
        stamped.setdefault("lastProbeTime", None)
        out.append(stamped)
    return out


def readiness_gates(pod_spec: Mapping[str, Any]) -> list[str]:
    return [g["conditionType"] for g in pod_spec.get("readinessGates") or () if g.get("conditionType")]
