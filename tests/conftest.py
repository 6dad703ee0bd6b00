"""Markers by directory: ``-m unit`` (no processes), ``-m contract`` (real HAProxy, pip, the cloud
API doubles; no cluster), ``-m e2e`` (the sandbox)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Network rule: tests talk to loopback only. The cloud SDKs' default credential chains end at the
# instance metadata services (AWS 169.254.169.254, Alibaba 100.100.100.200): botocore asks it
# whenever a client is made without credentials, and Alibaba's SDK reads its switch at import.
# Set here, before any test module imports an SDK, for this process and every one it starts.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["ALIBABA_CLOUD_ECS_METADATA_DISABLED"] = "true"

HERE = Path(__file__).parent
KINDS = ("unit", "contract", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = item.path.relative_to(HERE).parts[0]
        if kind in KINDS:
            item.add_marker(getattr(pytest.mark, kind))
