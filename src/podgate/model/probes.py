"""Readiness probes: the spec with the kubelet's defaults, and the result state machine.

The state machine is the kubelet's ``prober/worker.go``: a probe result changes the container's
readiness only after ``successThreshold`` consecutive successes or ``failureThreshold``
consecutive failures; readiness starts False.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol


class ProbeSpecError(ValueError):
    """A probe the agent cannot run as written (the pod shows it, the agent keeps going)."""


@dataclass(frozen=True)
class ProbeSpec:
    kind: Literal["httpGet", "tcpSocket", "exec"]
    port: int | str | None
    path: str = "/"
    scheme: str = "HTTP"
    host: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


def parse_probe(probe: Mapping[str, Any]) -> ProbeSpec:
    """Read a core/v1 Probe, applying the API's defaults."""
    timing = {
        "initial_delay": float(probe.get("initialDelaySeconds") or 0),
        "period": float(probe.get("periodSeconds") or 10),
        "timeout": float(probe.get("timeoutSeconds") or 1),
        "success_threshold": int(probe.get("successThreshold") or 1),
        "failure_threshold": int(probe.get("failureThreshold") or 3),
    }
    if timing["period"] <= 0 or timing["timeout"] <= 0:
        raise ProbeSpecError("periodSeconds and timeoutSeconds must be positive")
    if "httpGet" in probe and probe["httpGet"] is not None:
        h = probe["httpGet"]
        scheme = str(h.get("scheme") or "HTTP").upper()
        if scheme not in ("HTTP", "HTTPS"):
            raise ProbeSpecError(f"httpGet scheme {scheme!r} is not HTTP or HTTPS")
        headers = tuple((str(x["name"]), str(x.get("value", ""))) for x in h.get("httpHeaders") or ())
        return ProbeSpec(
            "httpGet",
            h.get("port"),
            str(h.get("path") or "/"),
            scheme,
            h.get("host"),
            headers,
            **timing,  # type: ignore[arg-type]
        )
    if "tcpSocket" in probe and probe["tcpSocket"] is not None:
        t = probe["tcpSocket"]
        return ProbeSpec("tcpSocket", t.get("port"), host=t.get("host"), **timing)  # type: ignore[arg-type]
    if "exec" in probe and probe["exec"] is not None:
        return ProbeSpec("exec", None, command=tuple(probe["exec"].get("command") or ()), **timing)  # type: ignore[arg-type]
    raise ProbeSpecError("probe has none of httpGet, tcpSocket, exec")


def resolve_port(port: int | str | None, container: Mapping[str, Any]) -> int:
    """A probe or Service port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        number = int(port)
        if not 0 < number < 65536:
            raise ProbeSpecError(f"port {number} is out of range")
        return number
    for p in container.get("ports") or ():
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ProbeSpecError(f"container {container.get('name')!r} has no port named {port!r}")


@dataclass(frozen=True)
class ProbeState:
    """Readiness as the prober sees it: the current verdict and the run of equal results."""

    ready: bool = False
    last_result: bool | None = None
    run: int = 0


class Thresholds(Protocol):
    """What the state machine needs of a probe or a check."""

    @property
    def success_threshold(self) -> int: ...

    @property
    def failure_threshold(self) -> int: ...


def observe(state: ProbeState, spec: Thresholds, success: bool) -> ProbeState:
    """Fold one probe result into the state (kubelet's worker.doProbe); check gates use the
    same rule for their success and failure thresholds."""
    run = state.run + 1 if state.last_result == success else 1
    state = replace(state, last_result=success, run=run)
    threshold = spec.success_threshold if success else spec.failure_threshold
    if run < threshold:
        return state
    return replace(state, ready=success)
