"""Pod conditions: their names and values, finding one, stamping transition times, readiness gates.

The kubelet's own Ready rule lives with the sandbox's node agent (``podgate_sandbox.podstatus``):
podgate reads conditions, it never computes a kubelet-owned one.
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


def find(conditions: Iterable[Mapping[str, Any]] | None, ctype: str) -> Mapping[str, Any] | None:
    for cond in conditions or ():
        if cond.get("type") == ctype:
            return cond
    return None


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
