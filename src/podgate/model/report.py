"""What ``podgate status`` shows for a pod: each readiness gate, its state and how long it has
been pending (pure, so the table and JSON/YAML outputs agree)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from podgate.model import conditions as c


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def gate_rows(pod: Mapping[str, Any], now: datetime) -> list[dict[str, Any]]:
    meta = pod.get("metadata") or {}
    conds = (pod.get("status") or {}).get("conditions")
    created = _parse(meta.get("creationTimestamp"))
    rows = []
    for gate in c.readiness_gates(pod.get("spec") or {}):
        cond = c.find(conds, gate)
        status = (cond or {}).get("status") or "Missing"
        since = _parse((cond or {}).get("lastTransitionTime")) if cond else created
        pending = None if status == c.TRUE or since is None else max((now - since).total_seconds(), 0.0)
        rows.append(
            {
                "namespace": meta.get("namespace"),
                "pod": meta.get("name"),
                "gate": gate,
                "status": status,
                "reason": (cond or {}).get("reason") or ("NoCondition" if cond is None else ""),
                "message": (cond or {}).get("message")
                or ("no controller has written this condition yet" if cond is None else ""),
                "pending_seconds": pending,
            }
        )
    return rows


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60}s"
    return f"{s // 3600}h{s % 3600 // 60}m"
