r"""Writing readiness-gate conditions: the one place that PATCHes ``pods/status`` for podgate.

Load-balancer gates and check gates both go through it, so both get the same rules: a
strategic-merge patch holding only that condition, written only when it changes,
``lastTransitionTime`` only with the status, an Event per transition and failure, and the
time-to-ready metrics.

The reconciler does not wait for its writes: it :meth:`GateWriter.submit`\ s what each gate
should be and goes on to the next Service, so a slow API server delays writes, never the other
Services' passes (whose targets may be turning healthy meanwhile).  Submitted writes wait in
one queue that keeps only the latest wanted condition per pod and gate, and sends changes of
status (a gate opening or closing) before progress (a new reason on a gate that stays False):
when the API server falls behind, "registering" and "health checking" are overtaken by
"healthy" and never sent, so writes per pod fall exactly when they cost the most.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from podgate.controller import metrics
from podgate.kube.api import PODS, Conflict, Invalid, Kube, NotFound, PatchType
from podgate.kube.events import EventRecorder, now_rfc3339
from podgate.kube.informer import EventType, Informer
from podgate.kube.leader import Fenced
from podgate.model import conditions as cond
from podgate.model import lb
from podgate.model.policy import CLOSED, OPEN, TIMED_OUT
from podgate.model.types import Condition, Pod, PodView, pod_conditions

log = logging.getLogger(__name__)

#: gate writes in flight at once (the queue's writer tasks)
WRITE_CONCURRENCY = 32
#: of them, the writers that may also send progress; the others send only gates opening or
#: closing, so a gate turning True never waits for progress writes to return from a slow API
#: server (1,000 pods created at once: a True wish waited 0.09 s p50, 0.59 s p99 for a writer
#: while hundreds of progress wishes were queued and up to 32 in flight)
PROGRESS_WRITERS = 8

#: queue priorities: a gate changing status before one only changing its reason
OPENING_OR_CLOSING, PROGRESS = 0, 1

#: (pod key, gate type): what the queue keeps one wanted condition for
WriteKey = tuple[str, str]


@dataclass(frozen=True)
class Wanted:
    """A condition the gate should have, as submitted; the pod is read afresh at write time."""

    desired: Condition
    sticky: bool
    minimum: float
    #: the pod it was decided for: a pod made again under the same name is another pod
    uid: str
    #: called with the error when the write fails (the reconciler queues its Service again)
    on_error: Callable[[BaseException], None] | None


#: reasons that are a problem someone should look at (Warning Events), not progress
WARNING_REASONS = frozenset(
    {
        lb.SERVICE_NOT_FOUND,
        lb.PROVIDER_ERROR,
        lb.SERVICE_CONFIG_ERROR,
        TIMED_OUT,
        "HealthCheckFailing",
        "CheckFailing",
        "CheckNotFound",
        "CheckInvalid",
    }
)


class GateWriter:
    def __init__(
        self,
        kube: Kube,
        pods: Informer[PodView],
        recorder: EventRecorder,
        fence: Callable[[], float | None] = lambda: None,
    ) -> None:
        """``fence()`` raises when this replica may not write (its leader lease is not fresh),
        else says how many seconds the write may take (None: no bound but the request's own);
        it is asked before every write, and a write not answered in time is given up, so none
        outlasts the lease it was sent under."""
        self.kube = kube
        self.fence = fence
        self.pods, self.recorder = pods, recorder
        #: when each pod's gate was first seen pending, and first seen registered in the load
        #: balancer (pod uid → gate → monotonic time): the phases of time-to-ready.  A pod's
        #: entries go when its gate turns True or when the pod goes (:meth:`_on_pod`)
        self.pending_since: dict[str, dict[str, float]] = {}
        self.registered_at: dict[str, dict[str, float]] = {}
        #: the queue: the latest wanted condition per key, the keys to write in priority order
        #: (a key may be listed twice; its first turn takes the wanted condition), the keys
        #: being written (one write per key at a time; a newer wish waits for it to return)
        self._wanted: dict[WriteKey, Wanted] = {}
        self._queued: dict[WriteKey, int] = {}
        self._order: asyncio.PriorityQueue[tuple[int, int, WriteKey]] = asyncio.PriorityQueue()
        #: the keys of opening and closing wishes again, for the writers that send only those
        #: (a key's turn in either queue takes its wish; the other turn finds none)
        self._urgent: asyncio.Queue[tuple[int, int, WriteKey]] = asyncio.Queue()
        #: how many writers take from ``_urgent`` (none: nothing is put there)
        self._urgent_writers = 0
        self._writing: set[WriteKey] = set()
        self._seq = itertools.count()
        #: while a write's answer is put in the pod cache (its handlers run then): the pod, the
        #: gate and the status written, so a handler can tell podgate's own change from another's
        self.echo: tuple[str, str, str] | None = None
        pods.add_handler(self._on_pod)

    def _on_pod(self, kind: EventType, pod: PodView, old: PodView | None) -> None:
        """A pod deleted (or made again under its name while the watch was away: its
        predecessor's uid is gone) takes its time-to-ready marks with it."""
        uid = pod["metadata"].get("uid")
        if kind == "DELETED" and uid:
            self.forget(uid)
        if old is not None and (gone := old["metadata"].get("uid")) and gone != uid:
            self.forget(gone)

    def forget(self, uid: str) -> None:
        """Drop the time-to-ready marks of the pod with this uid."""
        self.pending_since.pop(uid, None)
        self.registered_at.pop(uid, None)

    def tracked(self) -> dict[str, int]:
        """How many entries each of the writer's per-pod maps holds (leak tests, the churn
        benchmark): pods with a pending or registered mark, wishes queued or being written."""
        return {
            "pending_since": len(self.pending_since),
            "registered_at": len(self.registered_at),
            "wanted": len(self._wanted),
            "queued": len(self._queued),
            "writing": len(self._writing),
        }

    def _mark(self, table: dict[str, dict[str, float]], pod: PodView, gate: str) -> None:
        """Note now in ``table`` for the pod's gate unless noted already: only for a pod the
        cache still holds (one whose deletion was seen while its pass or check awaited must
        not be noted after its marks were forgotten)."""
        meta = pod["metadata"]
        cached = self.pods.get(f"{meta['namespace']}/{meta['name']}")
        if cached is None or cached["metadata"].get("uid") != meta["uid"]:
            return
        table.setdefault(meta["uid"], {}).setdefault(gate, time.monotonic())

    @staticmethod
    def _take(table: dict[str, dict[str, float]], uid: str, gate: str) -> float | None:
        marks = table.get(uid)
        if marks is None:
            return None
        at = marks.pop(gate, None)
        if not marks:
            del table[uid]
        return at

    def submit(
        self,
        pod: PodView,
        desired: Condition,
        *,
        sticky: bool,
        minimum: float = 0.0,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Queue ``desired`` for the pod's gate, replacing any wish for it not yet sent; the
        writer tasks (:meth:`run`) send it unless the pod already has it when its turn comes."""
        meta = pod["metadata"]
        key = (f"{meta['namespace']}/{meta['name']}", desired["type"])
        if desired["status"] != cond.TRUE:
            self._mark(self.pending_since, pod, desired["type"])
        current = cond.find(pod_conditions(self.pods.get(key[0]) or pod), desired["type"])
        if (
            key not in self._writing  # the cache does not show a write in flight yet
            and current is not None
            and lb.next_condition(current, desired, sticky, now_rfc3339()) is None
        ):
            # nothing to write; a wish still queued for another condition is void too
            self._wanted.pop(key, None)
            return
        self._wanted[key] = Wanted(desired, sticky, minimum, meta["uid"], on_error)
        self._enqueue(key, self._priority(key, desired))

    def _priority(self, key: WriteKey, desired: Condition) -> int:
        """Opening or closing a gate goes first; a new reason on a gate that stays as it is
        (progress a user reads in ``kubectl describe``) after."""
        current = cond.find(pod_conditions(self.pods.get(key[0]) or {}), key[1])
        status = current.get("status", cond.FALSE) if current is not None else cond.FALSE
        return OPENING_OR_CLOSING if status != desired["status"] else PROGRESS

    def _enqueue(self, key: WriteKey, priority: int) -> None:
        if key in self._writing:
            return  # its writer queues it again when the write in flight returns
        if self._queued.get(key, PROGRESS + 1) <= priority:
            return
        self._queued[key] = priority
        item = (priority, next(self._seq), key)
        self._order.put_nowait(item)
        if priority == OPENING_OR_CLOSING and self._urgent_writers:
            self._urgent.put_nowait(item)

    def pending(self) -> int:
        """Wishes not yet sent (for the queue-depth gauge and tests)."""
        return len(self._wanted)

    async def run(self, concurrency: int = WRITE_CONCURRENCY, progress: int = PROGRESS_WRITERS) -> None:
        """The writer tasks, ``concurrency`` of them: ``progress`` take any wish, the most
        urgent first, and the rest only gates opening or closing.  They stop when cancelled
        (leadership lost: no write after it, and the wishes not sent are dropped: the next
        leader's passes decide afresh)."""
        progress = max(1, min(progress, concurrency))
        workers = [
            asyncio.create_task(self._writer(self._order), name=f"gate writer {i}") for i in range(progress)
        ]
        workers += [
            asyncio.create_task(self._writer(self._urgent), name=f"gate writer {i}")
            for i in range(progress, concurrency)
        ]
        self._urgent_writers = concurrency - progress
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._urgent_writers = 0
            self._drop_queue()

    def _drop_queue(self) -> None:
        self._wanted.clear()
        self._queued.clear()
        self._writing.clear()
        for queue in (self._order, self._urgent):
            while not queue.empty():
                queue.get_nowait()
                queue.task_done()

    async def idle(self) -> None:
        """Return once every submitted wish was taken and its write returned (while :meth:`run`
        runs, or :meth:`flush` is called: nothing else takes them)."""
        await self._order.join()
        await self._urgent.join()

    async def flush(self) -> None:
        """Send every queued wish now, in this task (tests; a controller runs :meth:`run`)."""
        while not self._order.empty():
            await self._write_next(self._order.get_nowait(), self._order)
        while not self._urgent.empty():  # each taken above already: these turns find none
            await self._write_next(self._urgent.get_nowait(), self._urgent)
        await self.idle()

    async def _writer(self, queue: asyncio.Queue[tuple[int, int, WriteKey]]) -> None:
        while True:
            await self._write_next(await queue.get(), queue)

    async def _write_next(
        self, item: tuple[int, int, WriteKey], queue: asyncio.Queue[tuple[int, int, WriteKey]]
    ) -> None:
        _, _, key = item
        try:
            if key in self._writing:
                return  # a stale turn: the write in flight queues the newer wish when it returns
            self._queued.pop(key, None)
            wanted = self._wanted.pop(key, None)
            pod = self.pods.get(key[0])
            if wanted is None or pod is None or pod["metadata"].get("uid") != wanted.uid:
                # an earlier turn of this key took the wish, or the pod is gone (or made again
                # under its name: its gates are decided afresh by its own pass)
                return
            self._writing.add(key)
            try:
                await self.write(pod, wanted.desired, sticky=wanted.sticky, minimum=wanted.minimum)
            except Exception as e:  # a cancellation (leadership lost) is no Exception: it goes on
                log.warning("writing %s of pod %s failed: %s", key[1], key[0], e)
                if wanted.on_error is not None:
                    with contextlib.suppress(Exception):
                        wanted.on_error(e)
            finally:
                self._writing.discard(key)
                newer = self._wanted.get(key)
                if newer is not None:
                    self._enqueue(key, self._priority(key, newer.desired))
        finally:
            queue.task_done()

    def registered(self, pod: PodView, gate: str) -> None:
        self._mark(self.registered_at, pod, gate)

    async def write(self, pod: PodView, desired: Condition, *, sticky: bool, minimum: float = 0.0) -> bool:
        """Write the condition if it changed; True if it did.  ``minimum`` is the load
        balancer's own floor (rise × interval) for the time-to-ready ratio metric."""
        meta = pod["metadata"]
        current = cond.find(pod_conditions(pod), desired["type"])
        write = lb.next_condition(current, desired, sticky, now_rfc3339(), generation=meta.get("generation"))
        marker = (meta["uid"], desired["type"])
        if desired["status"] != cond.TRUE:
            self._mark(self.pending_since, pod, desired["type"])
        if write is None:
            return False
        patch: Pod = {"metadata": {"uid": meta["uid"]}, "status": {"conditions": [write]}}
        budget = self.fence()
        bound = asyncio.timeout(budget)
        try:
            async with bound:
                updated = await self.kube.patch(
                    PODS,
                    meta["name"],
                    patch,
                    meta["namespace"],
                    patch_type=PatchType.STRATEGIC,
                    subresource="status",
                )
        except (NotFound, Conflict, Invalid):  # pod gone or replaced: the next event brings the truth
            return False
        except TimeoutError as e:
            if bound.expired():
                raise Fenced(
                    f"{desired['type']} of {meta['namespace']}/{meta['name']}: no answer within the "
                    f"{budget:.1f}s the leader lease had left: given up"
                ) from e
            raise
        # the answer goes into the cache at once; its handlers are told which change is ours
        self.echo = (f"{meta['namespace']}/{meta['name']}", write["type"], write["status"])
        try:
            self.pods.update_if_newer(updated)
        finally:
            self.echo = None
        metrics.GATE_TRANSITIONS.labels(write["status"], write.get("reason") or "").inc()
        if write.get("reason") == TIMED_OUT and (current is None or current.get("reason") != TIMED_OUT):
            metrics.GATE_TIMEOUTS.labels(OPEN if write["status"] == cond.TRUE else CLOSED).inc()
        if write["status"] == cond.TRUE and write.get("reason") == TIMED_OUT:
            # opened by the user's timeout policy, not by the load balancer: no time-to-ready
            self._take(self.pending_since, *marker)
            self._take(self.registered_at, *marker)
            self.recorder.emit_later(
                pod, "Pod", TIMED_OUT, f"{desired['type']} is True: {write.get('message', '')}", "Warning"
            )
        elif write["status"] == cond.TRUE:
            self._ready(pod, marker, desired, write, minimum)
        elif (
            current is None
            or current.get("status") != write["status"]
            or write.get("reason") != current.get("reason")
        ):
            kind = "Warning" if write.get("reason") in WARNING_REASONS else "Normal"
            self.recorder.emit_later(
                pod,
                "Pod",
                write.get("reason") or "ReadinessGateFalse",
                f"{desired['type']} is False: {write.get('message', '')}",
                kind,
            )
        return True

    def _ready(
        self, pod: PodView, marker: tuple[str, str], desired: Condition, write: Condition, minimum: float
    ) -> None:
        since = self._take(self.pending_since, *marker)
        registered = self._take(self.registered_at, *marker)
        now = time.monotonic()
        if since is not None:
            metrics.TIME_TO_READY.labels("total").observe(now - since)
            if registered is not None:
                metrics.TIME_TO_READY.labels("registration").observe(max(registered - since, 0.0))
                metrics.TIME_TO_READY.labels("health_checking").observe(now - registered)
                if minimum:
                    metrics.TIME_TO_READY_RATIO.observe((now - registered) / minimum)
        took = f" after {now - since:.1f}s" if since else ""
        self.recorder.emit_later(
            pod, "Pod", "ReadinessGateTrue", f"{desired['type']} is True{took}: {write.get('message', '')}"
        )
