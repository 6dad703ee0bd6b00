"""Typed shapes of the Kubernetes bodies podgate reads and writes (the parts it uses)."""

from __future__ import annotations

from typing import NotRequired, TypedDict


class Condition(TypedDict):
    type: str
    status: str
    reason: NotRequired[str | None]
    message: NotRequired[str | None]
    lastTransitionTime: NotRequired[str | None]
    lastProbeTime: NotRequired[str | None]
