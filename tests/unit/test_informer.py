"""The informer's list/watch state machine: pages, resume, relist on 410 Gone, deletions seen in
a relist, and our own writes' answers.  The API server is :class:`FakeKube`; the informer against
the real one is exercised by every sandbox test."""

from __future__ import annotations

import asyncio
from typing import Any

from podgate.kube.api import PODS, SERVICES, Gone, PatchType
from podgate.kube.fake import FakeKube
from podgate.kube.informer import Informer
from podgate.model.types import Pod


def pod(name: str, rv: str = "") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}


async def until(cond: Any) -> None:
    for _ in range(200):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out")


async def test_lists_in_pages_then_watches_from_the_lists_version() -> None:
    kube = FakeKube()
    for i in range(5):
        kube.add(PODS, pod(f"p{i}"))
    pages: list[str | None] = []
    real_list = kube.list

    async def counting_list(*args: Any, **kw: Any) -> Any:
        pages.append(kw.get("continue_"))
        return await real_list(*args, **kw)

    kube.list = counting_list  # type: ignore[method-assign]
    inf: Informer[Pod] = Informer(kube, PODS, page_size=2)
    seen: list[tuple[str, str]] = []
    inf.add_handler(lambda kind, obj, old: seen.append((kind, obj["metadata"]["name"])))
    task = asyncio.create_task(inf.run())
    await until(lambda: inf.synced.is_set())
    assert pages == [None, "2", "4"] and len(inf.cache) == 5
    assert inf.cache["ns/p0"]["kind"] == "Pod"  # list items get their kind back
    await kube.patch(PODS, "p1", {"metadata": {"labels": {"a": "b"}}}, "ns", patch_type=PatchType.MERGE)
    await until(lambda: ("MODIFIED", "p1") in seen)
    task.cancel()


async def test_relist_after_410_and_resume() -> None:
    kube = FakeKube()
    kube.add(PODS, pod("a"))
    seen: list[tuple[str, str]] = []
    inf: Informer[Pod] = Informer(kube, PODS, watch_timeout=0)  # every watch ends at once
    inf.add_handler(lambda kind, obj, old: seen.append((kind, obj["metadata"]["name"])))
    task = asyncio.create_task(inf.run())
    await until(lambda: inf.synced.is_set())
    listed_at = inf.resource_version
    await kube.patch(PODS, "a", {"metadata": {"labels": {"x": "1"}}}, "ns", patch_type=PatchType.MERGE)
    await until(lambda: ("MODIFIED", "a") in seen)
    assert inf.relists == 1 and inf.resource_version != listed_at  # resumed, not relisted
    await kube.delete(PODS, "a", "ns", grace_period_seconds=0)
    kube.add(PODS, pod("b"))
    kube.compact()  # the informer's version is gone: only a relist sees b and a's deletion
    kube.add(PODS, pod("c"))
    await until(lambda: "ns/c" in inf.cache)
    task.cancel()
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a"), ("ADDED", "b"), ("ADDED", "c")]
    assert set(inf.cache) == {"ns/b", "ns/c"}
    assert inf.relists == 2


async def test_a_watch_error_that_is_not_gone_backs_off_and_resumes() -> None:
    kube = FakeKube()
    inf: Informer[Pod] = Informer(kube, SERVICES, max_backoff=0.01)
    calls = 0

    async def broken(*args: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        raise Gone("too old") if calls > 1 else RuntimeError("connection reset")
        yield  # an async generator, as the real watch is

    kube.watch = broken  # type: ignore[method-assign]
    task = asyncio.create_task(inf.run())
    await until(lambda: inf.relists >= 2)
    task.cancel()
    assert calls >= 2


async def test_update_if_newer_never_goes_back() -> None:
    inf: Informer[Pod] = Informer(FakeKube(), PODS)
    inf.cache["ns/a"] = pod("a", "5")  # type: ignore[assignment]
    inf.update_if_newer(pod("a", "4"))
    assert inf.cache["ns/a"]["metadata"]["resourceVersion"] == "5"
    inf.update_if_newer(pod("a", "6"))
    assert inf.cache["ns/a"]["metadata"]["resourceVersion"] == "6"
    seen: list[str] = []
    inf.add_handler(lambda kind, obj, old: seen.append(kind))
    inf.apply({"type": "MODIFIED", "object": pod("a", "5")})  # the watch catching up
    assert inf.cache["ns/a"]["metadata"]["resourceVersion"] == "6" and seen == []


async def test_a_change_that_arrives_in_our_own_writes_answer_is_emitted() -> None:
    """Another writer's update (RV 6) lands between our read (RV 5) and our write (answer RV 7):
    its watch event comes after our answer is cached and is dropped as older, so caching the
    answer is what tells the handlers of the change."""
    inf: Informer[Any] = Informer(FakeKube(), PODS)
    inf.cache["ns/a"] = {**pod("a", "5"), "status": {"ready": False}}
    seen: list[tuple[str, str, Any]] = []
    inf.add_handler(lambda kind, obj, old: seen.append((kind, obj["metadata"]["resourceVersion"], old)))
    answer = {**pod("a", "7"), "status": {"ready": True, "gate": True}}
    inf.update_if_newer(answer)
    assert [(k, rv, old["status"]) for k, rv, old in seen] == [("MODIFIED", "7", {"ready": False})]
    inf.apply({"type": "MODIFIED", "object": {**pod("a", "6"), "status": {"ready": True}}})
    assert len(seen) == 1  # the older event is dropped: the change was told once
    assert inf.cache["ns/a"]["status"] == {"ready": True, "gate": True}


async def test_our_answer_never_brings_back_what_the_watch_deleted() -> None:
    """Removing the last finalizer deletes the object: its DELETED event and our write's answer
    race; whichever comes first, the cache must not hold the object afterwards."""
    gone = {**pod("a", "9"), "metadata": {**pod("a", "9")["metadata"], "deletionTimestamp": "now"}}
    for order in ("deleted first", "answer first"):
        inf: Informer[Any] = Informer(FakeKube(), SERVICES)
        inf.cache["ns/a"] = pod("a", "8")
        if order == "deleted first":
            inf.apply({"type": "DELETED", "object": gone})
            inf.update_if_newer(gone)
        else:
            inf.update_if_newer(gone)
            inf.apply({"type": "DELETED", "object": gone})
        assert "ns/a" not in inf.cache, order


def labelled(name: str, rv: str, ns: str = "ns", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "labels": labels}}


async def test_indexes_follow_every_change_and_a_relist() -> None:
    kube = FakeKube()
    kube.add(PODS, labelled("a", "1", app="web"))
    kube.add(PODS, labelled("b", "1", ns="other", app="web"))
    inf: Informer[Any] = Informer(kube, PODS)
    inf.add_index("app", lambda p: [p["metadata"]["labels"].get("app", "")])
    await inf.relist()

    def names(index: str, value: str) -> list[str]:
        return sorted(p["metadata"]["name"] for p in inf.by_index(index, value))

    assert names("namespace", "ns") == ["a"] and names("app", "web") == ["a", "b"]
    inf.apply({"type": "MODIFIED", "object": labelled("a", "2", app="api")})
    assert names("app", "web") == ["b"] and names("app", "api") == ["a"]
    inf.apply({"type": "ADDED", "object": labelled("c", "3", app="api")})
    inf.apply({"type": "DELETED", "object": labelled("a", "4", app="api")})
    assert names("app", "api") == ["c"] and [p["metadata"]["name"] for p in inf.in_namespace("ns")] == ["c"]
    assert sorted(inf.index_values("app")) == ["api", "web"]
    inf.update_if_newer(labelled("c", "5", app="web"))  # our own write's answer
    assert names("app", "web") == ["b", "c"] and "api" not in inf.index_values("app")
    await inf.relist()  # the API server's truth: a as first listed, c never there
    assert names("app", "web") == ["a", "b"] and names("namespace", "ns") == ["a"]
    assert "api" not in inf.index_values("app")


async def test_the_cache_keeps_only_the_projection() -> None:
    kube = FakeKube()
    kube.add(PODS, {**labelled("a", "1", app="web"), "spec": {"big": "x" * 1000}})
    inf: Informer[Any] = Informer(kube, PODS, project=lambda p: {"metadata": p["metadata"], "slim": True})
    seen: list[Any] = []
    inf.add_handler(lambda kind, obj, old: seen.append(obj))
    await inf.relist()
    inf.update_if_newer({**labelled("a", "2", app="web"), "spec": {"big": "y"}})
    inf.apply({"type": "MODIFIED", "object": {**labelled("a", "3", app="web"), "spec": {"big": "z"}}})
    assert all(obj.get("slim") and "spec" not in obj for obj in [*seen, *inf.cache.values()])
    assert len(seen) == 3


async def test_a_failed_page_is_asked_again_from_its_continue_token() -> None:
    kube = FakeKube()
    for i in range(5):
        kube.add(PODS, pod(f"p{i}"))
    asked: list[str | None] = []
    real_list = kube.list
    failures = {"2": 2}  # the second page fails twice, then answers

    async def flaky_list(*args: Any, **kw: Any) -> Any:
        token = kw.get("continue_")
        asked.append(token)
        if failures.get(token or "", 0):
            failures[token] -= 1
            raise RuntimeError("connection reset")
        return await real_list(*args, **kw)

    kube.list = flaky_list  # type: ignore[method-assign]
    inf: Informer[Pod] = Informer(kube, PODS, page_size=2, max_backoff=0.01)
    await inf.relist()
    assert asked == [None, "2", "2", "2", "4"]  # resumed, not started over
    assert len(inf.cache) == 5 and inf.relists == 1


async def test_an_expired_continue_token_starts_the_list_over() -> None:
    kube = FakeKube()
    for i in range(3):
        kube.add(PODS, pod(f"p{i}"))
    asked: list[str | None] = []
    real_list = kube.list
    expired = [True]

    async def compacting_list(*args: Any, **kw: Any) -> Any:
        asked.append(kw.get("continue_"))
        if kw.get("continue_") and expired:
            expired.clear()
            raise Gone("the provided continue parameter is too old")
        return await real_list(*args, **kw)

    kube.list = compacting_list  # type: ignore[method-assign]
    inf: Informer[Pod] = Informer(kube, PODS, page_size=2)
    await inf.relist()
    assert asked == [None, "2", None, "2"] and len(inf.cache) == 3
