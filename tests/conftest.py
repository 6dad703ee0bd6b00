"""Markers by directory: ``-m unit`` (no processes), ``-m contract`` (real HAProxy, pip, the cloud
API doubles; no cluster), ``-m e2e`` (the sandbox)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent
KINDS = ("unit", "contract", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = item.path.relative_to(HERE).parts[0]
        if kind in KINDS:
            item.add_marker(getattr(pytest.mark, kind))
