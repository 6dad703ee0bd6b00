"""The pending-gate tally behind ``podgate_pending_gates`` and ``…_older_than``: kept as pod
events arrive, so a scrape reads the pending gates only, never every pod in the cache.

Each pod's entries are :func:`podgate.model.report.pending_gates`, the reading ``podgate
status`` shows, so the metric and the command agree on every reason.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from podgate.kube.informer import EventType, Informer, key_of
from podgate.model import report
from podgate.model.types import PodView


class PendingGates:
    def __init__(self, pods: Informer[PodView]) -> None:
        #: pod key → its pending gates (reason, since); pods with none are not kept
        self._pending: dict[str, list[tuple[str, datetime | None]]] = {}
        pods.add_handler(self._on_pod)

    def _on_pod(self, kind: EventType, pod: PodView, old: PodView | None) -> None:
        key = key_of(pod)
        entries = [] if kind == "DELETED" else report.pending_gates(pod)
        if entries:
            self._pending[key] = entries
        else:
            self._pending.pop(key, None)

    def __len__(self) -> int:
        """Pods with a pending gate."""
        return len(self._pending)

    def by_reason(self) -> dict[str, int]:
        tally: Counter[str] = Counter(reason for entries in self._pending.values() for reason, _ in entries)
        return dict(tally)

    def by_age(self, now: datetime) -> dict[tuple[str, str], int]:
        return report.by_age((e for entries in list(self._pending.values()) for e in entries), now)
