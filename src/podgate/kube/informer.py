"""A list+watch cache of one resource, with handlers: the informer client-go users know.

Lists in pages, resumes a dropped watch from the last resourceVersion, relists on 410 Gone (the
resourceVersion fell out of etcd's window), and backs off with a cap on any other error, so a
flaky API server delays the cache but never stops it.  It talks to the API only through the
:class:`~podgate.kube.api.Kube` seam.  Handlers get the plain dicts (typed as the body the
informer holds, ``Informer[PodView]``) and run in the informer's task: they should be quick
(enqueue a key, set an event), not do I/O.

At scale (thousands of pods) three options matter:

- ``project``: what the cache keeps of each object, built once per event (the controller keeps
  a slim projection, ``podgate.model.projection.slim_pod``: a tenth of the raw object); the raw
  object is dropped as soon as it is projected, a list page at a time.  Handlers and readers
  see only projections.
- indexes (``add_index``; by namespace always, for a namespaced resource): readers ask for the
  objects of one namespace, or of any key an index function gives, instead of scanning all.
- ``snapshots``: after every change the cache is published as an immutable mapping that
  another thread may read (the webhook's, which must not wait for this loop).

A list is paged (``limit``/``continue``) and resumable: a page that fails is asked again from
its continue token, a few times, before the list starts over; an expired token (410) starts
it over at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar, cast

from podgate.kube.api import WATCH_GRACE, Gone, Kube, KubeError, ListPage, Obj, Resource, WatchEvent

log = logging.getLogger(__name__)

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
#: the typed body the cache holds (``podgate.model.types.PodView`` …)
T = TypeVar("T", bound=Mapping[str, Any])
Handler = Callable[[EventType, T, T | None], None]
#: an index function: the index values an object is filed under (none, one or several)
IndexFn = Callable[[T], Iterable[str]]
NAMESPACE_INDEX = "namespace"
#: how often one page of a list is asked again before the list starts over
PAGE_ATTEMPTS = 4


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
        project: Callable[[Obj], T] | None = None,
        snapshots: bool = False,
    ) -> None:
        self._kube, self.resource, self.namespace = kube, resource, namespace
        self.name = name or resource.plural
        self._field_selector, self._label_selector = field_selector, label_selector
        self._watch_timeout = watch_timeout
        self._max_backoff = max_backoff
        self._page_size = page_size
        self._project: Callable[[Obj], T] = project or (lambda obj: cast(T, obj))
        self._handlers: list[Handler[T]] = []
        #: when the informer last made progress (monotonic): a list, a watch opened or ended as
        #: the server closed it, an event or a bookmark; see :meth:`stalled`
        self.progressed_at = time.monotonic()
        self.cache: dict[str, T] = {}
        self.synced = asyncio.Event()
        self.resource_version: str | None = None
        self.relists = 0
        #: index name → (its function, index value → {key: object})
        self._indexes: dict[str, tuple[IndexFn[T], dict[str, dict[str, T]]]] = {}
        if resource.namespaced:
            self.add_index(NAMESPACE_INDEX, _namespace_of)
        self._snapshots = snapshots
        self._snapshot: Mapping[str, T] = MappingProxyType({})

    def add_handler(self, handler: Handler[T]) -> None:
        self._handlers.append(handler)

    def get(self, key: str) -> T | None:
        return self.cache.get(key)

    # -- indexes and snapshots ------------------------------------------------------------------
    def add_index(self, name: str, fn: IndexFn[T]) -> None:
        """File every object (those cached now and every later one) under ``fn(obj)``."""
        buckets: dict[str, dict[str, T]] = {}
        self._indexes[name] = (fn, buckets)
        for key, obj in self.cache.items():
            for value in fn(obj):
                buckets.setdefault(value, {})[key] = obj

    def by_index(self, name: str, value: str) -> list[T]:
        """The objects filed under ``value`` in index ``name`` (a copy: callers may await while
        they go through it)."""
        return list(self._indexes[name][1].get(value, {}).values())

    def index_values(self, name: str) -> list[str]:
        """The values index ``name`` files objects under now."""
        return list(self._indexes[name][1])

    def keys_by_index(self, name: str, value: str) -> set[str]:
        return set(self._indexes[name][1].get(value, ()))

    def in_namespace(self, namespace: str) -> list[T]:
        """The objects of one namespace (a namespaced resource)."""
        return self.by_index(NAMESPACE_INDEX, namespace)

    def snapshot(self) -> Mapping[str, T]:
        """The cache as of its last change, immutable, safe to read from another thread (with
        ``snapshots=True``; without, the cache itself, for this loop only)."""
        return self._snapshot if self._snapshots else self.cache

    def _put(self, key: str, obj: T) -> None:
        old = self.cache.get(key)
        if old is not None:
            self._unindex(key, old)
        self.cache[key] = obj
        for fn, buckets in self._indexes.values():
            for value in fn(obj):
                buckets.setdefault(value, {})[key] = obj

    def _drop(self, key: str) -> None:
        old = self.cache.pop(key, None)
        if old is not None:
            self._unindex(key, old)

    def _unindex(self, key: str, old: T) -> None:
        for fn, buckets in self._indexes.values():
            for value in fn(old):
                bucket = buckets.get(value)
                if bucket is not None:
                    bucket.pop(key, None)
                    if not bucket:
                        del buckets[value]

    def _publish(self) -> None:
        if self._snapshots:
            self._snapshot = MappingProxyType(dict(self.cache))

    def update_if_newer(self, answer: Obj) -> None:
        """Put an object we just wrote (the API's answer) into the cache ahead of its watch
        event, so decisions made before the event arrives do not write the same change twice.

        The answer can carry more than our own change: another writer's update that the watch
        has not delivered yet (the kubelet's ContainersReady, say).  Once the answer is cached,
        that update's event is older than the cache and is dropped, so the change is emitted
        here, to the same handlers: every change the cache takes is emitted exactly once.

        resourceVersions are compared as integers: etcd's revisions, which is what this
        project's API server uses (client-go treats them as opaque; a cache here may not)."""
        key = key_of(answer)
        cached = self.cache.get(key)
        if cached is None:
            return  # we only write what we read: the watch has already seen it go
        meta = answer["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return  # our write let it go (the last finalizer): its DELETED event is on the way
        if resource_version(answer) > resource_version(cached):
            obj = self._project(answer)
            self._put(key, obj)
            self._publish()
            self._emit("MODIFIED", obj, cached)

    def _emit(self, kind: EventType, obj: T, old: T | None) -> None:
        for handler in self._handlers:
            try:
                handler(kind, obj, old)
            except Exception:
                log.exception("informer %s: handler failed on %s %s", self.name, kind, key_of(obj))

    async def run(self) -> None:
        """List, then watch forever; never returns except by cancellation."""
        self.progressed_at = time.monotonic()
        backoff = 0.5
        need_list = True
        while True:
            try:
                if need_list:
                    await self.relist()
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

    async def relist(self) -> None:
        """Replace the cache with a fresh list, emitting the differences as events (what a watch
        that expired does, and what a test does to catch the cache up with the API server).  In
        pages, projecting each page as it comes (the raw items of the whole list are never held
        at once); a failed page is asked again from its continue token."""
        fresh: dict[str, T] = {}
        token: str | None = None
        while True:
            try:
                page = await self._page(token)
            except Gone:
                if token is None:
                    raise
                # the continue token expired (etcd compacted past the list's revision): the
                # pages so far are of a revision that is gone, so the list starts over
                log.info("informer %s: list continue token expired, listing again", self.name)
                fresh, token = {}, None
                continue
            for item in page["items"]:
                item.setdefault("kind", self.resource.kind)  # a list's items come without them
                item.setdefault("apiVersion", self.resource.api_version)
                fresh[key_of(item)] = self._project(item)
            page["items"].clear()
            token = page["continue_"] or None
            if token is None:
                break
        self.relists += 1
        self.progressed_at = time.monotonic()
        old_cache, self.cache = self.cache, fresh
        for fn, buckets in self._indexes.values():
            buckets.clear()
            for key, obj in fresh.items():
                for value in fn(obj):
                    buckets.setdefault(value, {})[key] = obj
        self._publish()
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

    async def _page(self, token: str | None) -> ListPage:
        """One page of the list, asked again (from the same continue token) after an error
        other than 410, up to ``PAGE_ATTEMPTS`` times."""
        backoff = min(0.2, self._max_backoff)
        for attempt in range(1, PAGE_ATTEMPTS + 1):
            try:
                return await self._kube.list(
                    self.resource,
                    self.namespace,
                    label_selector=self._label_selector,
                    field_selector=self._field_selector,
                    limit=self._page_size,
                    continue_=token,
                )
            except (Gone, asyncio.CancelledError):
                raise
            except Exception as e:
                if token is None or attempt == PAGE_ATTEMPTS:
                    raise
                log.info("informer %s: list page failed (%s); asking it again", self.name, _short(e))
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self._max_backoff)
        raise AssertionError("unreachable")

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
            self.progressed_at = time.monotonic()
            self.apply(event)
        self.progressed_at = time.monotonic()  # the server closed it at its timeout: alive

    def stalled(self, now: float | None = None) -> bool:
        """Whether the informer has made no progress for two watch timeouts: a healthy one
        reopens its watch at least once per timeout, so its cache may be stale and the process
        is wedged (liveness fails, and the kubelet restarts the replica)."""
        now = time.monotonic() if now is None else now
        return now - self.progressed_at > 2 * (self._watch_timeout + WATCH_GRACE)

    def apply(self, event: WatchEvent) -> None:
        """One watch event into the cache, its indexes and handlers."""
        kind, raw = event["type"], event["object"]
        rv = raw["metadata"].get("resourceVersion")
        if rv:
            self.resource_version = rv
        if kind == "BOOKMARK":
            return
        key = key_of(raw)
        old = self.cache.get(key)
        if kind == "DELETED":
            self._drop(key)
            self._publish()
            self._emit("DELETED", self._project(raw), old)
        elif old is not None and resource_version(raw) < resource_version(old):
            # Older than what we hold: our own write's answer (update_if_newer) got here first.
            return
        else:
            obj = self._project(raw)
            self._put(key, obj)
            self._publish()
            self._emit("ADDED" if old is None else "MODIFIED", obj, old)


def _namespace_of(obj: Mapping[str, Any]) -> tuple[str, ...]:
    ns = obj["metadata"].get("namespace")
    return (ns,) if ns else ()


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
