"""The pod status the node agent writes, computed from what its containers are doing.

The Ready rule mirrors ``pkg/kubelet/status/generate.go`` (Kubernetes 1.20) reason for reason
and message for message, so tools that parse the kubelet's wording read the sandbox the same way.

Pure: the agent turns its runtime into :class:`ContainerView` values, and this module decides
phase, container statuses and the kubelet-owned conditions, and whether anything changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from podgate.model import conditions as c
from podgate.model.types import Condition

#: The conditions the kubelet (and so the node agent) owns; every other type belongs to
#: someone else (readiness gates, controllers) and is never written or dropped by the agent.
KUBELET_CONDITIONS = (c.POD_SCHEDULED, c.INITIALIZED, c.CONTAINERS_READY, c.READY)

State = Literal["waiting", "running", "terminated"]


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
        return {"type": c.CONTAINERS_READY, "status": c.FALSE, "reason": "PodCompleted"}
    messages = []
    if unknown:
        messages.append(f"containers with unknown status: {_go_list(unknown)}")
    if unready:
        messages.append(f"containers with unready status: {_go_list(unready)}")
    if messages:
        return {
            "type": c.CONTAINERS_READY,
            "status": c.FALSE,
            "reason": "ContainersNotReady",
            "message": ", ".join(messages),
        }
    return {"type": c.CONTAINERS_READY, "status": c.TRUE}


def pod_ready(
    containers_ready_condition: Condition,
    readiness_gates: Sequence[str],
    conditions: Iterable[Mapping[str, Any]] | None,
) -> Condition:
    """Ready: ContainersReady is True and every readiness gate's condition is exactly "True"."""
    if containers_ready_condition["status"] != c.TRUE:
        cond: Condition = {"type": c.READY, "status": containers_ready_condition["status"]}
        for key in ("reason", "message"):
            if key in containers_ready_condition:
                cond[key] = containers_ready_condition[key]
        return cond
    unready = []
    conditions = list(conditions or ())
    for gate in readiness_gates:
        found = c.find(conditions, gate)
        if found is None:
            unready.append(f"corresponding condition of pod readiness gate {_quote(gate)} does not exist.")
        elif found.get("status") != c.TRUE:
            unready.append(
                f'the status of pod readiness gate {_quote(gate)} is not "True", but {found.get("status")}'
            )
    if unready:
        return {
            "type": c.READY,
            "status": c.FALSE,
            "reason": "ReadinessGatesNotReady",
            "message": ", ".join(unready),
        }
    return {"type": c.READY, "status": c.TRUE}


def _quote(s: str) -> str:
    """Go's %q for the plain strings condition types are."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class ContainerView:
    name: str
    image: str
    state: State = "waiting"
    reason: str | None = "ContainerCreating"
    message: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    ready: bool = False
    restart_count: int = 0
    container_id: str | None = None
    last_terminated: Mapping[str, Any] | None = field(default=None)

    def state_body(self) -> dict[str, Any]:
        """``state`` with explicit nulls for the other keys, so a strategic merge replaces it."""
        body: dict[str, Any] = {"waiting": None, "running": None, "terminated": None}
        if self.state == "running":
            body["running"] = {"startedAt": self.started_at}
        elif self.state == "terminated":
            body["terminated"] = _drop_none(
                {
                    "exitCode": self.exit_code if self.exit_code is not None else 0,
                    "reason": self.reason,
                    "message": self.message,
                    "startedAt": self.started_at,
                    "finishedAt": self.finished_at,
                    "containerID": self.container_id,
                }
            )
        else:
            body["waiting"] = _drop_none({"reason": self.reason, "message": self.message})
        return body

    def status_body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "imageID": "podgate://builtin-app",
            "containerID": self.container_id,
            "ready": self.ready,
            "started": self.state == "running",
            "restartCount": self.restart_count,
            "state": self.state_body(),
            "lastState": {"terminated": dict(self.last_terminated)}
            if self.last_terminated
            else {"terminated": None},
        }


def phase(restart_policy: str, views: Sequence[ContainerView], current: str | None = None) -> str:
    """The kubelet's getPhase for regular containers (init containers complete at once here)."""
    if current in ("Succeeded", "Failed"):
        return current  # terminal phases never go back
    running = stopped = succeeded = waiting = 0
    for v in views:
        if v.state == "running":
            running += 1
        elif v.state == "terminated":
            stopped += 1
            succeeded += v.exit_code == 0
        elif v.last_terminated is not None:
            stopped += 1
        else:
            waiting += 1
    if waiting > 0:
        return "Pending"
    if running > 0:
        return "Running"
    if stopped > 0:
        if restart_policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if restart_policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def desired_status(
    pod: Mapping[str, Any],
    views: Sequence[ContainerView],
    *,
    pod_ip: str | None,
    host_ip: str,
    start_time: str,
    now: str,
    init_views: Sequence[ContainerView] = (),
) -> dict[str, Any]:
    """The ``status`` body of a strategic-merge patch holding only what the kubelet owns."""
    spec = pod.get("spec") or {}
    current = pod.get("status") or {}
    ph = phase(spec.get("restartPolicy") or "Always", views, current.get("phase"))
    names = [ctr["name"] for ctr in spec.get("containers") or ()]
    ready_by_name = {v.name: v.ready for v in views}
    cr = containers_ready(names, ready_by_name, ph)
    initialized: dict[str, Any] = {"type": c.INITIALIZED, "status": c.TRUE}
    desired = [
        initialized,
        pod_ready(cr, c.readiness_gates(spec), current.get("conditions")),
        cr,
        {"type": c.POD_SCHEDULED, "status": c.TRUE},
    ]
    status: dict[str, Any] = {
        "phase": ph,
        "hostIP": host_ip,
        "startTime": start_time,
        "conditions": c.with_transition_times(desired, current.get("conditions"), now),  # type: ignore[arg-type]
        "containerStatuses": [v.status_body() for v in views],
    }
    if init_views:
        status["initContainerStatuses"] = [v.status_body() for v in init_views]
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _without_volatile(cond: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cond.items() if k not in ("lastProbeTime",)}


def needs_write(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether the desired status differs from what the API server holds (nulls mean absent)."""
    want = _drop_none(dict(desired))
    have = dict(current or {})
    for key, value in want.items():
        if key == "conditions":
            mine = {cd["type"]: _without_volatile(cd) for cd in value}
            theirs = {
                cd.get("type"): _without_volatile(_drop_none(cd)) for cd in have.get("conditions") or ()
            }
            if any(theirs.get(t) != cd for t, cd in mine.items()):
                return True
        elif key in ("containerStatuses", "initContainerStatuses"):
            if _normalise_statuses(value) != _normalise_statuses(have.get(key) or []):
                return True
        elif have.get(key) != value:
            return True
    return False


def _normalise_statuses(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out = {}
    for item in items:
        item = _drop_none(dict(item))
        item["state"] = {k: v for k, v in (item.get("state") or {}).items() if v}
        item["lastState"] = {k: v for k, v in (item.get("lastState") or {}).items() if v}
        out[item["name"]] = item
    return out
