"""Writing readiness-gate conditions: the one place that PATCHes ``pods/status`` for podgate.

Load-balancer gates and check gates both go through it, so both get the same rules: a
strategic-merge patch holding only that condition, written only when it changes,
``lastTransitionTime`` only with the status, an Event per transition and failure, and the
time-to-ready metrics.
"""

from __future__ import annotations

import time

from podgate.controller import metrics
from podgate.kube.api import PODS, Conflict, Invalid, Kube, NotFound, PatchType
from podgate.kube.events import EventRecorder, now_rfc3339
from podgate.kube.informer import Informer
from podgate.model import conditions as cond
from podgate.model import lb
from podgate.model.policy import CLOSED, OPEN, TIMED_OUT
from podgate.model.types import Condition, Pod, pod_conditions

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
    def __init__(self, kube: Kube, pods: Informer[Pod], recorder: EventRecorder) -> None:
        self.kube = kube
        self.pods, self.recorder = pods, recorder
        #: when each (pod uid, gate) was first seen pending, and first seen registered in the
        #: load balancer: the phases of time-to-ready
        self.pending_since: dict[tuple[str, str], float] = {}
        self.registered_at: dict[tuple[str, str], float] = {}

    def registered(self, pod: Pod, gate: str) -> None:
        self.registered_at.setdefault((pod["metadata"]["uid"], gate), time.monotonic())

    async def write(self, pod: Pod, desired: Condition, *, sticky: bool, minimum: float = 0.0) -> bool:
        """Write the condition if it changed; True if it did.  ``minimum`` is the load
        balancer's own floor (rise × interval) for the time-to-ready ratio metric."""
        meta = pod["metadata"]
        current = cond.find(pod_conditions(pod), desired["type"])
        write = lb.next_condition(current, desired, sticky, now_rfc3339())
        marker = (meta["uid"], desired["type"])
        if desired["status"] != cond.TRUE and marker not in self.pending_since:
            self.pending_since[marker] = time.monotonic()
        if write is None:
            return False
        patch: Pod = {"metadata": {"uid": meta["uid"]}, "status": {"conditions": [write]}}
        try:
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
        self.pods.update_if_newer(updated)
        metrics.GATE_TRANSITIONS.labels(write["status"], write.get("reason") or "").inc()
        if write.get("reason") == TIMED_OUT and (current is None or current.get("reason") != TIMED_OUT):
            metrics.GATE_TIMEOUTS.labels(OPEN if write["status"] == cond.TRUE else CLOSED).inc()
        if write["status"] == cond.TRUE and write.get("reason") == TIMED_OUT:
            # opened by the user's timeout policy, not by the load balancer: no time-to-ready
            self.pending_since.pop(marker, None)
            self.registered_at.pop(marker, None)
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
        self, pod: Pod, marker: tuple[str, str], desired: Condition, write: Condition, minimum: float
    ) -> None:
        since = self.pending_since.pop(marker, None)
        registered = self.registered_at.pop(marker, None)
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
