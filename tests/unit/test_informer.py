"""The informer's list/watch state machine: resume, relist on 410 Gone, deletions seen in a relist.

The API responses here are canned lines in the wire format of a watch (one JSON event per line);
the informer against the real API server is exercised by every sandbox test.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from podgate.kube.informer import Informer


class Content:
    def __init__(self, lines: list[bytes]) -> None:
        self._lines = lines

    async def readline(self) -> bytes:
        if self._lines:
            return self._lines.pop(0)
        await asyncio.sleep(3600)  # a watch that stays open
        return b""


class Response:
    def __init__(self, body: Any = None, lines: list[bytes] | None = None, status: int = 200) -> None:
        self.status, self.reason = status, "OK"
        self._body = json.dumps(body).encode() if body is not None else b""
        self.content = Content(lines or [])

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        pass


def pod(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


async def test_relist_after_410_and_resume() -> None:
    calls: list[dict[str, Any]] = []
    script = [
        Response({"kind": "PodList", "metadata": {"resourceVersion": "10"}, "items": [pod("a", "9")]}),
        Response(
            lines=[
                event("MODIFIED", pod("a", "11")),
                event("BOOKMARK", {"metadata": {"resourceVersion": "12"}}),
                event("ERROR", {"code": 410, "message": "too old resource version: 12"}),
            ]
        ),
        Response({"kind": "PodList", "metadata": {"resourceVersion": "20"}, "items": [pod("b", "19")]}),
        Response(lines=[event("ADDED", pod("c", "21"))]),
    ]

    async def list_fn(**kw: Any) -> Response:
        calls.append(kw)
        return script.pop(0)

    seen: list[tuple[str, str]] = []
    inf = Informer(list_fn, name="pods")
    inf.add_handler(lambda kind, obj, old: seen.append((kind, obj["metadata"]["name"])))
    task = asyncio.create_task(inf.run())
    for _ in range(100):
        if "ns/c" in inf.cache:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a"), ("ADDED", "b"), ("ADDED", "c")]
    assert set(inf.cache) == {"ns/b", "ns/c"}
    assert inf.relists == 2
    assert calls[1]["watch"] is True and calls[1]["resource_version"] == "10"  # resumes from the list
    assert "watch" not in calls[2]  # 410: a fresh list, not a watch from a stale version
    assert calls[3]["resource_version"] == "20"
    assert inf.cache["ns/b"]["kind"] == "Pod"  # list items get their kind back


async def test_update_if_newer_never_goes_back() -> None:
    async def never(**kw: Any) -> Response:
        raise AssertionError("not called")

    inf = Informer(never, name="pods")
    inf.cache["ns/a"] = pod("a", "5")
    inf.update_if_newer(pod("a", "4"))
    assert inf.cache["ns/a"]["metadata"]["resourceVersion"] == "5"
    inf.update_if_newer(pod("a", "6"))
    assert inf.cache["ns/a"]["metadata"]["resourceVersion"] == "6"
    seen: list[str] = []
    inf.add_handler(lambda kind, obj, old: seen.append(kind))
    inf._apply({"type": "MODIFIED", "object": pod("a", "5")})  # the watch catching up
    assert inf.cache["ns/a"]["metadata"]["resourceVersion"] == "6" and seen == []


async def test_a_change_that_arrives_in_our_own_writes_answer_is_emitted() -> None:
    """Another writer's update (RV 6) lands between our read (RV 5) and our write (answer RV 7):
    its watch event comes after our answer is cached and is dropped as older, so caching the
    answer is what tells the handlers of the change."""

    async def never(**kw: Any) -> Response:
        raise AssertionError("not called")

    inf = Informer(never, name="pods")
    inf.cache["ns/a"] = {**pod("a", "5"), "status": {"ready": False}}
    seen: list[tuple[str, str, Any]] = []
    inf.add_handler(lambda kind, obj, old: seen.append((kind, obj["metadata"]["resourceVersion"], old)))
    answer = {**pod("a", "7"), "status": {"ready": True, "gate": True}}
    inf.update_if_newer(answer)
    assert [(k, rv, old["status"]) for k, rv, old in seen] == [("MODIFIED", "7", {"ready": False})]
    inf._apply({"type": "MODIFIED", "object": {**pod("a", "6"), "status": {"ready": True}}})
    assert len(seen) == 1  # the older event is dropped: the change was told once
    assert inf.cache["ns/a"]["status"] == {"ready": True, "gate": True}


async def test_our_answer_never_brings_back_what_the_watch_deleted() -> None:
    """Removing the last finalizer deletes the object: its DELETED event and our write's answer
    race; whichever comes first, the cache must not hold the object afterwards."""

    async def never(**kw: Any) -> Response:
        raise AssertionError("not called")

    gone = {**pod("a", "9"), "metadata": {**pod("a", "9")["metadata"], "deletionTimestamp": "now"}}
    for order in ("deleted first", "answer first"):
        inf = Informer(never, name="services")
        inf.cache["ns/a"] = pod("a", "8")
        if order == "deleted first":
            inf._apply({"type": "DELETED", "object": gone})
            inf.update_if_newer(gone)
        else:
            inf.update_if_newer(gone)
            inf._apply({"type": "DELETED", "object": gone})
        assert "ns/a" not in inf.cache, order
