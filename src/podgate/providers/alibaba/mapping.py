"""The Alibaba Cloud's answers → podgate's view, as pure functions: which error codes mean
"try again shortly", how a CLB backend or an NLB server and what its listeners report become
an admin state and a health with the cloud's own words, and one line for an SDK error."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from podgate.model.lb import Health, TargetHealth
from podgate.providers.base import TargetState

#: error codes that mean "try again shortly" rather than "this request is wrong": the API is
#: busy, or an earlier asynchronous job on the same group has not finished
RETRYABLE = frozenset(
    {
        "Rejected.Throttling",
        "ServiceUnavailable",
        "SystemBusy",
        "OperationBusy",
        "Conflict.Lock",
        "IncorrectStatus.serverGroup",
        "OperationFailed.ResourceIsConfiguring",
        "ServiceIsConfiguring",
        "BackendServer.configuring",
        "VServerGroupProcessing",
    }
)
WEIGHT = 100  # of an active backend; 0 is the drain (no new connections, existing ones run on)
DISCOVERY_TTL = 30.0  # seconds a group's load balancer / listeners are trusted before a re-read


def retryable(code: str) -> bool:
    """Whether an error code means "the same request may succeed shortly" (back off, retry)."""
    return code.startswith("Throttling") or code in RETRYABLE


def _draining(where: str) -> TargetState:
    return TargetState("drain", TargetHealth(Health.DRAINING, "weight 0: no new connections", where))


def clb_target(
    backend: Mapping[str, Any],
    checks: Sequence[Mapping[str, Any]],
    listener_ports: Sequence[int],
    where: str,
) -> TargetState:
    """A CLB vServer group backend, the ports of the listeners forwarding to its group, and the
    ``DescribeHealthStatus`` entries for it → admin state and health.

    Healthy only when every one of those listeners reports it ``normal``; the first listener
    that does not (or reports nothing yet) gives the reason.
    """
    if int(backend.get("Weight") or 0) == 0:
        return _draining(where)
    if not listener_ports:
        return TargetState(
            "ready",
            TargetHealth(
                Health.UNKNOWN,
                "no listener forwards to this vServer group, so nothing checks it",
                where,
                "NoListener",
            ),
        )
    by_port = {int(c["ListenerPort"]): c for c in checks if c.get("ListenerPort") is not None}
    for port in listener_ports:
        check = by_port.get(port)
        if check is None:
            return TargetState(
                "ready",
                TargetHealth(
                    Health.INITIAL,
                    f"listener {port} reports no health for this backend yet",
                    where,
                    "NoHealthStatus",
                ),
            )
        status = str(check.get("ServerHealthStatus") or "unavailable")
        if status != "normal":
            health = Health.UNHEALTHY if status == "abnormal" else Health.UNKNOWN
            return TargetState(
                "ready",
                TargetHealth(health, f"ServerHealthStatus {status} on listener {port}", where, status),
            )
    ports = ", ".join(map(str, listener_ports))
    return TargetState(
        "ready", TargetHealth(Health.HEALTHY, f"ServerHealthStatus normal on listener {ports}", where)
    )


@dataclass(frozen=True)
class ListenerReport:
    """What the listeners forwarding to one NLB server group said in one round of reads."""

    listeners: tuple[str, ...] = ()  # forwarding to the group
    silent: tuple[str, ...] = ()  # answered, but not for this group (re-pointed, stopped)
    non_normal: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # "ip:port" → entry
    floor: float = 0.0  # health-check interval × healthy threshold: the soonest a server can pass


def nlb_target(
    server: Mapping[str, Any], report: ListenerReport, available_for: float, where: str
) -> TargetState:
    """An NLB server group server, what the group's listeners report, and how long the server has
    been ``Available`` (as podgate saw it) → admin state and health."""
    status = str(server.get("Status") or "")
    if int(server.get("Weight") or 0) == 0:
        return _draining(where)
    if status in ("Adding", "Configuring"):
        return TargetState(
            "ready", TargetHealth(Health.INITIAL, f"server is {status} (the NLB job runs)", where, status)
        )
    if not report.listeners:
        return TargetState(
            "ready",
            TargetHealth(
                Health.UNKNOWN,
                "no listener forwards to this server group, so nothing checks it",
                where,
                "NoListener",
            ),
        )
    if report.silent:
        return TargetState(
            "ready",
            TargetHealth(
                Health.UNKNOWN,
                f"listener {', '.join(report.silent)} reports nothing for this server group",
                where,
                "NoHealthStatus",
            ),
        )
    bad = report.non_normal.get(f"{server.get('ServerIp') or server.get('ServerId')}:{server.get('Port')}")
    if bad is not None:
        state = str(bad.get("Status") or "Unavailable")
        code = (bad.get("Reason") or {}).get("ReasonCode")
        health = {"Initial": Health.INITIAL, "Unhealthy": Health.UNHEALTHY}.get(state, Health.UNKNOWN)
        words = f"{state}: {code}" if code else state
        return TargetState(
            "ready", TargetHealth(health, f"{words} on listener {bad.get('_listener')}", where, code or state)
        )
    if available_for < report.floor:
        return TargetState(
            "ready",
            TargetHealth(
                Health.INITIAL,
                # no elapsed time in the words: a message that changes at every read would
                # rewrite the gate condition at every read
                f"added; the first checks take {report.floor:g}s (interval × healthy threshold)",
                where,
                "Initial",
            ),
        )
    return TargetState(
        "ready", TargetHealth(Health.HEALTHY, f"healthy on listener {', '.join(report.listeners)}", where)
    )


def describe(e: BaseException) -> str:
    """The SDK's exception in one line: the cloud's code and message, or why it was not reached."""
    code = getattr(e, "code", None)
    if code:
        return f"{code}: {getattr(e, 'message', None) or e}"
    if isinstance(e, TimeoutError):
        return "no answer within the deadline"
    inner = getattr(e, "inner_exception", None) or e.__cause__ or e
    text = getattr(inner, "message", None) or str(inner) or type(inner).__name__
    return f"cannot reach the API: {text}"
