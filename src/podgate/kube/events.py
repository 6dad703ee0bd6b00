"""Kubernetes Events, as ``kubectl describe`` shows them.

Repeats of the same (object, reason, message) are folded into one Event with a count, as
client-go's recorder does, so a pod stuck in a loop does not flood etcd.  Recording never
raises: an Event is a courtesy and must not break the work that emits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from podgate.kube.api import EVENTS, Kube, PatchType
from podgate.model.types import Event, meta_of

log = logging.getLogger(__name__)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventRecorder:
    def __init__(self, kube: Kube, component: str, host: str | None = None) -> None:
        self._kube = kube
        self._component = component
        self._host = host
        self._seen: dict[tuple[str, str, str, str], tuple[str, int, float]] = {}
        self._pending: asyncio.Queue[tuple[Mapping[str, Any], str, str, str, str]] = asyncio.Queue(
            maxsize=5000
        )

    def emit_later(
        self, obj: Mapping[str, Any], kind: str, reason: str, message: str, type_: str = "Normal"
    ) -> None:
        """Queue an Event for :meth:`run` to send: the caller never waits on the API for it.
        When the queue is full (an API outage), Events are dropped rather than memory grown."""
        with contextlib.suppress(asyncio.QueueFull):
            self._pending.put_nowait((obj, kind, reason, message, type_))

    async def run(self, senders: int = 2) -> None:
        async def sender() -> None:
            while True:
                obj, kind, reason, message, type_ = await self._pending.get()
                await self.emit(obj, kind, reason, message, type_)

        await asyncio.gather(*(sender() for _ in range(senders)))

    async def emit(
        self, obj: Mapping[str, Any], kind: str, reason: str, message: str, type_: str = "Normal"
    ) -> None:
        meta = meta_of(obj)
        ns = meta.get("namespace") or "default"
        key = (str(meta.get("uid")), reason, message, type_)
        now = now_rfc3339()
        try:
            prior = self._seen.get(key)
            if prior is not None and time.monotonic() - prior[2] < 600:
                name, count, _ = prior
                await self._kube.patch(
                    EVENTS,
                    name,
                    {"count": count + 1, "lastTimestamp": now},
                    ns,
                    patch_type=PatchType.STRATEGIC,
                )
                self._seen[key] = (name, count + 1, time.monotonic())
                return
            name = f"{meta['name']}.{uuid.uuid4().hex[:16]}"
            body: Event = {
                "metadata": {"name": name, "namespace": ns},
                "involvedObject": {
                    "kind": kind,
                    "namespace": meta.get("namespace"),
                    "name": meta["name"],
                    "uid": meta.get("uid"),
                    "apiVersion": obj.get("apiVersion", "v1"),
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "reason": reason,
                "message": message,
                "type": type_,
                "source": {"component": self._component, **({"host": self._host} if self._host else {})},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
                "reportingComponent": self._component,
            }
            await self._kube.create(EVENTS, body, ns)
            self._seen[key] = (name, 1, time.monotonic())
            if len(self._seen) > 10000:
                self._seen.clear()
        except Exception as e:  # an Event must never break the caller
            log.debug("event %s on %s/%s not recorded: %s", reason, ns, meta.get("name"), e)
