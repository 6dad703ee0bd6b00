"""The controller's garbage collector: fewer, bounded pauses, and each one measured.

The controller holds tens of thousands of small dicts (a slim copy of every pod and Service),
and every watch event makes and drops more.  CPython's cyclic collector scans them all on a
full collection, with every thread stopped: the webhook's thread and the drain hooks too
(bench/results/scale.md has the pauses with the default thresholds and with these).  The
projections hold no reference cycles, so scanning them finds nothing: collections are made
rarer (a young collection per 50,000 allocations), and what the caches hold when they are first
synced is frozen out of every later scan (``gc.freeze``, as large Python services do).
``podgate_gc_pause_seconds`` shows the pauses.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

from podgate.controller.metrics import REGISTRY

#: allocations between young collections, and the older generations' multipliers
THRESHOLDS = (50_000, 50, 100)

GC_PAUSE = Histogram(
    "podgate_gc_pause_seconds",
    "How long each garbage collection stopped every thread of the controller, by generation",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)

_started: list[float] = []

#: each generation's histogram, made before any callback runs: ``labels()`` takes the metric's
#: lock, which a scrape holds while it allocates (a collection can start right there)
_by_generation = {g: GC_PAUSE.labels(str(g)) for g in range(3)}


def _measure(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[:] = [time.perf_counter()]
    elif _started and (child := _by_generation.get(info.get("generation", -1))) is not None:
        child.observe(time.perf_counter() - _started[0])


def tune() -> None:
    """At the controller's start: rarer collections, each one measured."""
    gc.set_threshold(*THRESHOLDS)
    if _measure not in gc.callbacks:
        gc.callbacks.append(_measure)


def freeze() -> None:
    """Once the caches are synced: what they hold now is never scanned again (objects dropped
    later are still freed by reference counting; only cycles among them would stay)."""
    gc.collect()
    gc.freeze()
