"""Where a gated pod's time goes, part by part, from records of three components (pure).

A gated pod becomes Ready through five writes by four components: the node agent writes
ContainersReady (a), podgate registers the pod's target with HAProxy (b), HAProxy's checks turn
the server UP (c), podgate writes the pod's gate True (d), the node agent writes Ready (e).
podgate's own share is (b − a) + (d − c); the rest belongs to HAProxy's checks (c − b) and the
node agent (e − d).  (a) and (e) are the times a watch saw the writes; (d) is the API server's
completion of the gate's PATCH, from its audit log (else the watch's sight of it), the watch's
lag after it a part of its own; (b) and (c) come from
HAProxy's own ring of server state changes (``show events``), not from anything podgate read:
registering ends with ``enable server`` ("is UP/READY (leaving forced maintenance)", verified on
HAProxy 2.6) and checks passing says "is UP, reason: Layer4 check passed".

Also here: quantiles of a Prometheus histogram (the API server's admission latency) as
``histogram_quantile`` estimates them, by linear interpolation inside the bucket.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

#: one line of ``show events RING`` in the ``iso`` format
_EVENT = re.compile(
    r"^(?P<at>\S+) Server (?P<backend>[^/\s]+)/podgate-(?P<ip>[0-9.]+)-(?P<port>\d+) (?P<what>.*)$"
)

REGISTERED = "registered"
UP = "up"
DOWN = "down"
DRAIN = "drain"
MAINT = "maint"


@dataclasses.dataclass(frozen=True)
class ServerEvent:
    at: float  # seconds since the epoch, HAProxy's clock
    backend: str
    target: str  # IP:PORT
    kind: str  # REGISTERED, UP, DOWN, DRAIN or MAINT


def _kind(what: str) -> str | None:
    if "leaving forced maintenance" in what:
        return REGISTERED
    if what.startswith("is UP"):
        return UP
    if what.startswith("is DOWN"):
        return DOWN
    if what.startswith("enters drain"):
        return DRAIN
    if "going DOWN for maintenance" in what:
        return MAINT
    return None


def server_events(lines: Iterable[str]) -> list[ServerEvent]:
    """HAProxy's state changes of podgate's servers, oldest first; other lines are skipped."""
    out = []
    for line in lines:
        m = _EVENT.match(line.strip())
        kind = _kind(m["what"]) if m else None
        if m is None or kind is None:
            continue
        at = datetime.fromisoformat(m["at"]).timestamp()
        out.append(ServerEvent(at, m["backend"], f"{m['ip']}:{m['port']}", kind))
    return sorted(out, key=lambda e: e.at)


PARTS = (
    ("registered", "a→b ContainersReady → podgate registered the target"),
    ("checked", "b→c registered → HAProxy's checks turned it UP"),
    ("gated", "c→d UP → podgate's gate write accepted"),
    ("seen", "d→d′ accepted → the watch saw the gate"),
    ("ready", "d′→e gate seen → the node agent's Ready seen"),
    ("podgate", "podgate's share (b−a)+(d−c)"),
    ("total", "a→e ContainersReady → Ready"),
)
#: c→d in two: podgate's (HAProxy's UP → its PATCH reaches the API server) and the API server's
SUBPARTS = (
    ("gate_sent", "c→d₀ UP → podgate's gate PATCH received by the API server"),
    ("gate_api", "d₀→d the API server on that PATCH"),
)


@dataclasses.dataclass(frozen=True)
class PodTimes:
    """The five times of one pod, seconds since the epoch (``None`` when not seen)."""

    seen: float  # first seen at all: events of its target before it belong to an earlier pod
    target: str | None
    containers_ready: float | None
    gate_true: float | None  # the watch's
    ready: float | None
    #: the API server's own times of the gate's PATCH (audit log), when known: received, completed
    gate_write: tuple[float, float] | None = None


def gate_writes(lines: Iterable[str], gate_prefix: str) -> dict[str, tuple[float, float]]:
    """From the API server's audit log (one JSON event a line): each pod's first accepted
    pods/status write that set one of its gates True, as (received, completed), by pod name."""
    out: dict[str, tuple[float, float]] = {}
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        ref = ev.get("objectRef") or {}
        if ref.get("subresource") != "status" or (ev.get("responseStatus") or {}).get("code") != 200:
            continue
        conditions = ((ev.get("requestObject") or {}).get("status") or {}).get("conditions") or ()
        if not any(
            c.get("status") == "True" and str(c.get("type", "")).startswith(gate_prefix) for c in conditions
        ):
            continue
        received = datetime.fromisoformat(ev["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
        completed = datetime.fromisoformat(ev["stageTimestamp"].replace("Z", "+00:00")).timestamp()
        out.setdefault(ref.get("name", ""), (received, completed))
    return out


def parts(pod: PodTimes, events: Sequence[ServerEvent]) -> dict[str, float] | None:
    """The pod's parts (seconds, keys of :data:`PARTS`, and of :data:`SUBPARTS` when the API
    server's times of the gate write are known), or ``None`` when one of its five times is
    missing.  (b) is the target's first registration after the pod was first seen, (c) the first
    UP after that registration; (d) is the gate write's completion at the API server when known,
    else the watch's sight of it."""
    a, seen_d, e = pod.containers_ready, pod.gate_true, pod.ready
    if pod.target is None or a is None or seen_d is None or e is None:
        return None
    b = c = None
    for ev in events:
        if ev.target != pod.target or ev.at < pod.seen:
            continue
        if b is None and ev.kind == REGISTERED:
            b = ev.at
        elif b is not None and ev.kind == UP:
            c = ev.at
            break
    if b is None or c is None:
        return None
    d = pod.gate_write[1] if pod.gate_write else seen_d
    out = {
        "registered": b - a,
        "checked": c - b,
        "gated": d - c,
        "seen": seen_d - d,
        "ready": e - seen_d,
        "podgate": (b - a) + (d - c),
        "total": e - a,
    }
    if pod.gate_write:
        out["gate_sent"] = pod.gate_write[0] - c
        out["gate_api"] = pod.gate_write[1] - pod.gate_write[0]
    return out


def by_target(events: Iterable[ServerEvent]) -> dict[str, list[ServerEvent]]:
    """Events grouped by target, each group oldest first (so :func:`parts` reads a short list)."""
    out: dict[str, list[ServerEvent]] = {}
    for ev in sorted(events, key=lambda e: e.at):
        out.setdefault(ev.target, []).append(ev)
    return out


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram (upper bound → count, +Inf included), linearly
    interpolated inside its bucket as Prometheus's ``histogram_quantile`` does; the highest
    finite bound when it falls in +Inf; ``None`` for no observations."""
    bounds = sorted(buckets)
    total = buckets.get(float("inf"), buckets[bounds[-1]] if bounds else 0.0)
    if not bounds or total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower
