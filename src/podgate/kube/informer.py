"""A list+watch cache of one resource, with handlers: the informer client-go users know.

Lists in pages, resumes a dropped watch from the last resourceVersion, relists on 410 Gone (the
resourceVersion fell out of etcd's window), and backs off with a cap on any other error, so a
flaky API server delays the cache but never stops it.  It talks to the API only through the
:class:`~podgate.kube.api.Kube` seam.  Handlers get the plain dicts (typed as the body the
informer holds, ``Informer[Pod]``) and run in the informer's task: they should be quick
(enqueue a key, set an event), not do I/O.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Generic, Literal, TypeVar, cast

from podgate.kube.api import Gone, Kube, KubeError, Obj, Resource, WatchEvent, list_all

log = logging.getLogger(__name__)

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
#: the typed body the cache holds (``podgate.model.types.Pod`` …)
T = TypeVar("T", bound=Mapping[str, Any])
Handler = Callable[[EventType, T, T | None], None]


def key_of(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else str(meta["name"])


class Informer(Generic[T]):
    def __init__(
        self,
        kube: Kube,
        resource: Resource,
        *,
        name: str | None = None,
        namespace: str | None = None,
        field_selector: str | None = None,
        label_selector: str | None = None,
        watch_timeout: int = 300,
        max_backoff: float = 30.0,
        page_size: int = 500,
    ) -> None:
        self._kube, self.resource, self.namespace = kube, resource, namespace
        self.name = name or resource.plural
        self._field_selector, self._label_selector = field_selector, label_selector
        self._watch_timeout = watch_timeout
        self._max_backoff = max_backoff
        self._page_size = page_size
        self._handlers: list[Handler[T]] = []
        self.cache: dict[str, T] = {}
        self.synced = asyncio.Event()
        self.resource_version: str | None = None
        self.relists = 0

    def add_handler(self, handler: Handler[T]) -> None:
        self._handlers.append(handler)

    def get(self, key: str) -> T | None:
        return self.cache.get(key)

    def update_if_newer(self, answer: Obj) -> None:
        """Put an object we just wrote (the API's answer) into the cache ahead of its watch
        event, so decisions made before the event arrives do not write the same change twice.

        The answer can carry more than our own change: another writer's update that the watch
        has not delivered yet (the kubelet's ContainersReady, say).  Once the answer is cached,
        that update's event is older than the cache and is dropped, so the change is emitted
        here, to the same handlers: every change the cache takes is emitted exactly once.

        resourceVersions are compared as integers: etcd's revisions, which is what this
        project's API server uses (client-go treats them as opaque; a cache here may not)."""
        obj = cast(T, answer)
        key = key_of(obj)
        cached = self.cache.get(key)
        if cached is None:
            return  # we only write what we read: the watch has already seen it go
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return  # our write let it go (the last finalizer): its DELETED event is on the way
        if resource_version(obj) > resource_version(cached):
            self.cache[key] = obj
            self._emit("MODIFIED", obj, cached)

    def _emit(self, kind: EventType, obj: T, old: T | None) -> None:
        for handler in self._handlers:
            try:
                handler(kind, obj, old)
            except Exception:
                log.exception("informer %s: handler failed on %s %s", self.name, kind, key_of(obj))

    async def run(self) -> None:
        """List, then watch forever; never returns except by cancellation."""
        backoff = 0.5
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                await self._watch()
                backoff = 0.5
            except Gone:
                log.info("informer %s: resourceVersion %s gone, relisting", self.name, self.resource_version)
                need_list = True
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("informer %s: %s; retrying in %.1fs", self.name, _short(e), backoff)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self._max_backoff)

    async def _relist(self) -> None:
        page = await list_all(
            self._kube,
            self.resource,
            self.namespace,
            label_selector=self._label_selector,
            field_selector=self._field_selector,
            page_size=self._page_size,
        )
        self.relists += 1
        fresh: dict[str, T] = {}
        for item in page["items"]:
            item.setdefault("kind", self.resource.kind)  # a list's items come without them
            item.setdefault("apiVersion", self.resource.api_version)
            fresh[key_of(item)] = cast(T, item)
        old_cache, self.cache = self.cache, fresh
        self.resource_version = page["resourceVersion"]
        for key, obj in old_cache.items():
            if key not in fresh:
                self._emit("DELETED", obj, obj)
        for key, new in fresh.items():
            old = old_cache.get(key)
            if old is None:
                self._emit("ADDED", new, None)
            elif old["metadata"].get("resourceVersion") != new["metadata"].get("resourceVersion"):
                self._emit("MODIFIED", new, old)
        self.synced.set()

    async def _watch(self) -> None:
        """Apply events until the server closes the watch (its timeout): the caller resumes
        from ``resource_version``; :class:`Gone` when that version is too old."""
        async for event in self._kube.watch(
            self.resource,
            self.namespace,
            resource_version=self.resource_version,
            label_selector=self._label_selector,
            field_selector=self._field_selector,
            timeout_seconds=self._watch_timeout,
        ):
            self._apply(event)

    def _apply(self, event: WatchEvent) -> None:
        kind, obj = event["type"], cast(T, event["object"])
        rv = obj["metadata"].get("resourceVersion")
        if rv:
            self.resource_version = rv
        if kind == "BOOKMARK":
            return
        key = key_of(obj)
        old = self.cache.get(key)
        if kind == "DELETED":
            self.cache.pop(key, None)
            self._emit("DELETED", obj, old)
        elif old is not None and resource_version(obj) < resource_version(old):
            # Older than what we hold: our own write's answer (update_if_newer) got here first.
            return
        else:
            self.cache[key] = obj
            self._emit("ADDED" if old is None else "MODIFIED", obj, old)


def resource_version(obj: Mapping[str, Any]) -> int:
    """An object's resourceVersion as a number (etcd's revision), 0 if absent or opaque."""
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except ValueError:
        return 0


def _short(e: BaseException) -> str:
    if isinstance(e, KubeError):
        return f"API error {e}"
    return f"{type(e).__name__}: {e}"
