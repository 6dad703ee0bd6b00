"""The controller's garbage-collector settings (podgate.controller.gctune)."""

from __future__ import annotations

import gc

from podgate.controller import gctune
from podgate.controller.metrics import REGISTRY


def paused(generation: str) -> float:
    return REGISTRY.get_sample_value("podgate_gc_pause_seconds_count", {"generation": generation}) or 0.0


def test_collections_are_rarer_and_every_pause_is_measured() -> None:
    before = gc.get_threshold()
    try:
        gctune.tune()
        gctune.tune()  # idempotent: one callback
        assert gc.get_threshold() == gctune.THRESHOLDS
        assert gc.callbacks.count(gctune._measure) == 1
        n = paused("2")
        gc.collect()
        assert paused("2") == n + 1
    finally:
        gc.set_threshold(*before)
        gc.callbacks.remove(gctune._measure)
