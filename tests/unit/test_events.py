"""EventRecorder on FakeKube: one Event per (object, reason, message), repeats counted."""

from __future__ import annotations

import asyncio
from typing import Any

from podgate.kube.api import EVENTS, KubeError, PatchType
from podgate.kube.events import EventRecorder
from podgate.kube.fake import FakeKube

POD = {
    "apiVersion": "v1",
    "metadata": {"name": "p1", "namespace": "shop", "uid": "u1", "resourceVersion": "7"},
}


async def test_an_event_names_its_object_and_repeats_are_counted() -> None:
    kube = FakeKube()
    recorder = EventRecorder(kube, "podgate", "node-1")
    await recorder.emit(POD, "Pod", "ProviderError", "quota", "Warning")
    [created] = kube.writes
    assert created.verb == "create" and created.namespace == "shop"
    body = created.body
    assert body["metadata"]["name"].startswith("p1.")
    assert body["involvedObject"] == {
        "kind": "Pod",
        "namespace": "shop",
        "name": "p1",
        "uid": "u1",
        "apiVersion": "v1",
        "resourceVersion": "7",
    }
    assert (body["reason"], body["message"], body["type"], body["count"]) == (
        "ProviderError",
        "quota",
        "Warning",
        1,
    )
    assert body["source"] == {"component": "podgate", "host": "node-1"}
    await recorder.emit(POD, "Pod", "ProviderError", "quota", "Warning")
    repeat = kube.writes[1]
    assert (repeat.verb, repeat.name, repeat.patch_type) == (
        "patch",
        body["metadata"]["name"],
        PatchType.STRATEGIC,
    )
    assert repeat.body["count"] == 2
    await recorder.emit(POD, "Pod", "ProviderError", "other words", "Warning")
    assert kube.writes[2].verb == "create"
    stored = kube.object(EVENTS, body["metadata"]["name"], "shop")
    assert stored is not None and stored["count"] == 2


async def test_recording_never_raises() -> None:
    kube = FakeKube()

    async def forbidden(*args: Any, **kw: Any) -> Any:
        raise KubeError("events is forbidden", 403)

    kube.create = forbidden  # type: ignore[method-assign]
    await EventRecorder(kube, "podgate").emit(POD, "Pod", "X", "y")  # no exception


async def test_emit_later_is_sent_by_run() -> None:
    kube = FakeKube()
    recorder = EventRecorder(kube, "podgate")
    recorder.emit_later(POD, "Pod", "ReadinessGateTrue", "web is True")
    task = asyncio.create_task(recorder.run(senders=1))
    for _ in range(100):
        if kube.writes:
            break
        await asyncio.sleep(0.001)
    task.cancel()
    assert [w.body["reason"] for w in kube.writes] == ["ReadinessGateTrue"]
