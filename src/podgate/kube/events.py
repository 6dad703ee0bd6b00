"""Kubernetes Events, as ``kubectl describe`` shows them.

Repeats of the same (object, reason, message) within ``FOLD_FOR`` are folded into one Event
with a count, as client-go's recorder does, so a pod stuck in a loop does not flood etcd.  What
that takes is remembered per object: an object's memory goes with the object
(:meth:`EventRecorder.forget_deleted`, an informer handler) or once no repeat can be folded into
it any more.  Recording never raises: an Event is a courtesy and must not break the work that
emits it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from podgate.kube.api import EVENTS, Kube, PatchType
from podgate.model.types import Event, meta_of

log = logging.getLogger(__name__)

#: seconds within which a repeat is folded into the Event before it (a count, not a new Event)
FOLD_FOR = 600.0
#: Events remembered for folding at most; past it the memory starts over (an API outage)
REMEMBERED_AT_MOST = 10000
#: (reason, message, type): one Event of an object
_What = tuple[str, str, str]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventRecorder:
    def __init__(self, kube: Kube, component: str, host: str | None = None) -> None:
        self._kube = kube
        self._component = component
        self._host = host
        #: object uid → its Events remembered for folding → (Event name, count, when sent)
        self._seen: dict[str, dict[_What, tuple[str, int, float]]] = {}
        self._remembered = 0
        self._pending: asyncio.Queue[tuple[Mapping[str, Any], str, str, str, str]] = asyncio.Queue(
            maxsize=5000
        )
        #: Events queued or being sent, by object uid; the objects forgotten meanwhile (their
        #: Events, sent after the object went, are forgotten again once the last is sent)
        self._outstanding: dict[str, int] = {}
        self._gone: set[str] = set()

    def emit_later(
        self, obj: Mapping[str, Any], kind: str, reason: str, message: str, type_: str = "Normal"
    ) -> None:
        """Queue an Event for :meth:`run` to send: the caller never waits on the API for it.
        When the queue is full (an API outage), Events are dropped rather than memory grown."""
        try:
            self._pending.put_nowait((obj, kind, reason, message, type_))
        except asyncio.QueueFull:
            return
        uid = str(meta_of(obj).get("uid"))
        self._outstanding[uid] = self._outstanding.get(uid, 0) + 1

    async def run(self, senders: int = 2) -> None:
        async def sender() -> None:
            while True:
                obj, kind, reason, message, type_ = await self._pending.get()
                try:
                    await self.emit(obj, kind, reason, message, type_)
                finally:
                    self._sent(str(meta_of(obj).get("uid")))

        async def sweeper() -> None:
            while True:
                await asyncio.sleep(FOLD_FOR / 10)
                self.sweep()

        await asyncio.gather(*(sender() for _ in range(senders)), sweeper())

    def forget(self, uid: str) -> None:
        """The object is gone: nothing will be folded into its Events any more."""
        self._remembered -= len(self._seen.pop(uid, {}))
        if uid in self._outstanding:
            self._gone.add(uid)

    def _sent(self, uid: str) -> None:
        left = self._outstanding.pop(uid, 1) - 1
        if left > 0:
            self._outstanding[uid] = left
        elif uid in self._gone:
            self._gone.discard(uid)
            self.forget(uid)  # what its Events sent after it went left behind

    def forget_deleted(self, kind: str, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> None:
        """An informer handler: a deleted object's Events are forgotten with it."""
        uid = meta_of(obj).get("uid")
        if kind == "DELETED" and uid:
            self.forget(str(uid))

    def sweep(self, now: float | None = None) -> None:
        """Forget the Events no repeat can be folded into any more (sent ``FOLD_FOR`` ago)."""
        now = time.monotonic() if now is None else now
        for uid in list(self._seen):
            events = self._seen[uid]
            for what in [w for w, (_, _, at) in events.items() if now - at >= FOLD_FOR]:
                del events[what]
                self._remembered -= 1
            if not events:
                del self._seen[uid]

    def tracked(self) -> dict[str, int]:
        """How many objects and Events the recorder remembers for folding (leak tests, the
        churn benchmark)."""
        return {
            "objects": len(self._seen),
            "events": self._remembered,
            "outstanding": len(self._outstanding),
            "gone": len(self._gone),
        }

    def _remember(self, uid: str, what: _What, sent: tuple[str, int, float]) -> None:
        events = self._seen.setdefault(uid, {})
        if what not in events:
            self._remembered += 1
        events[what] = sent

    async def emit(
        self, obj: Mapping[str, Any], kind: str, reason: str, message: str, type_: str = "Normal"
    ) -> None:
        meta = meta_of(obj)
        ns = meta.get("namespace") or "default"
        uid, what = str(meta.get("uid")), (reason, message, type_)
        now = now_rfc3339()
        try:
            prior = self._seen.get(uid, {}).get(what)
            if prior is not None and time.monotonic() - prior[2] < FOLD_FOR:
                name, count, _ = prior
                await self._kube.patch(
                    EVENTS,
                    name,
                    {"count": count + 1, "lastTimestamp": now},
                    ns,
                    patch_type=PatchType.STRATEGIC,
                )
                self._remember(uid, what, (name, count + 1, time.monotonic()))
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
            self._remember(uid, what, (name, 1, time.monotonic()))
            if self._remembered > REMEMBERED_AT_MOST:
                self._seen.clear()
                self._remembered = 0
        except Exception as e:  # an Event must never break the caller
            log.debug("event %s on %s/%s not recorded: %s", reason, ns, meta.get("name"), e)
