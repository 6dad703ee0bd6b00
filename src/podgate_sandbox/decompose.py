"""Where a gated pod's time goes, part by part, from records of three components (pure).

A gated pod becomes Ready through five writes by four components: the node agent writes
ContainersReady (a), podgate registers the pod's target with HAProxy (b), HAProxy's checks turn
the server UP (c), podgate writes the pod's gate True (d), the node agent writes Ready (e).
podgate's own share is (b − a) + (d − c); the rest belongs to HAProxy's checks (c − b) and the
node agent (e − d).  (a), (d), (e) are the times a watch saw the writes; (b) and (c) come from
HAProxy's own ring of server state changes (``show events``), not from anything podgate read:
registering ends with ``enable server`` ("is UP/READY (leaving forced maintenance)", verified on
HAProxy 2.6) and checks passing says "is UP, reason: Layer4 check passed".

Also here: quantiles of a Prometheus histogram (the API server's admission latency) as
``histogram_quantile`` estimates them, by linear interpolation inside the bucket.
"""

from __future__ import annotations

import dataclasses
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
    ("gated", "c→d UP → podgate's gate write seen"),
    ("ready", "d→e gate → the node agent's Ready seen"),
    ("podgate", "podgate's share (b−a)+(d−c)"),
    ("total", "a→e ContainersReady → Ready"),
)


@dataclasses.dataclass(frozen=True)
class PodTimes:
    """The five times of one pod, seconds since the epoch (``None`` when not seen)."""

    seen: float  # first seen at all: events of its target before it belong to an earlier pod
    target: str | None
    containers_ready: float | None
    gate_true: float | None
    ready: float | None


def parts(pod: PodTimes, events: Sequence[ServerEvent]) -> dict[str, float] | None:
    """The pod's parts (seconds, keys of :data:`PARTS`), or ``None`` when one of its five times
    is missing.  (b) is the target's first registration after the pod was first seen, (c) the
    first UP after that registration."""
    a, d, e = pod.containers_ready, pod.gate_true, pod.ready
    if pod.target is None or a is None or d is None or e is None:
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
    return {
        "registered": b - a,
        "checked": c - b,
        "gated": d - c,
        "ready": e - d,
        "podgate": (b - a) + (d - c),
        "total": e - a,
    }


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
