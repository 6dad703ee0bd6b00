"""A list+watch cache of one resource, with handlers: the informer client-go users know.

Resumes a dropped watch from the last resourceVersion, relists on 410 Gone (the resourceVersion
fell out of etcd's window), and backs off with a cap on any other error, so a flaky API server
delays the cache but never stops it.  Handlers get plain dicts and run in the informer's task:
they should be quick (enqueue a key, set an event), not do I/O.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from podgate.kube.client import ApiException, call, check

log = logging.getLogger(__name__)

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
Obj = dict[str, Any]
Handler = Callable[[EventType, Obj, Obj | None], None]
#: Calls a list endpoint of the generated client (``list_pod_for_all_namespaces`` and so on).
ListFn = Callable[..., Awaitable[Any]]


class Gone(Exception):
    """The watch's resourceVersion is too old: only a relist recovers."""


def key_of(obj: Obj) -> str:
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else str(meta["name"])


class Informer:
    def __init__(
        self,
        list_fn: ListFn,
        *,
        name: str,
        field_selector: str | None = None,
        label_selector: str | None = None,
        watch_timeout: int = 300,
        max_backoff: float = 30.0,
    ) -> None:
        self._list = list_fn
        self.name = name
        self._selectors: dict[str, str] = {}
        if field_selector:
            self._selectors["field_selector"] = field_selector
        if label_selector:
            self._selectors["label_selector"] = label_selector
        self._watch_timeout = watch_timeout
        self._max_backoff = max_backoff
        self._handlers: list[Handler] = []
        self.cache: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        self.resource_version: str | None = None
        self.relists = 0

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def get(self, key: str) -> Obj | None:
        return self.cache.get(key)

    def update_if_newer(self, obj: Obj) -> None:
        """Put an object we just wrote (the API's answer) into the cache ahead of its watch
        event, so decisions made before the event arrives do not write the same change twice.

        The answer can carry more than our own change: another writer's update that the watch
        has not delivered yet (the kubelet's ContainersReady, say).  Once the answer is cached,
        that update's event is older than the cache and is dropped, so the change is emitted
        here, to the same handlers: every change the cache takes is emitted exactly once.

        resourceVersions are compared as integers: etcd's revisions, which is what this
        project's API server uses (client-go treats them as opaque; a cache here may not)."""
        key = key_of(obj)
        cached = self.cache.get(key)
        if cached is None:
            return  # we only write what we read: the watch has already seen it go
        meta = obj.get("metadata") or {}
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return  # our write let it go (the last finalizer): its DELETED event is on the way
        if resource_version(obj) > resource_version(cached):
            self.cache[key] = obj
            self._emit("MODIFIED", obj, cached)

    def _emit(self, kind: EventType, obj: Obj, old: Obj | None) -> None:
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
                status = e.status if isinstance(e, ApiException) else None
                if status == 410:
                    need_list = True
                    continue
                log.warning("informer %s: %s; retrying in %.1fs", self.name, _short(e), backoff)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self._max_backoff)

    async def _relist(self) -> None:
        body = await call(self._list, **self._selectors)
        self.relists += 1
        fresh = {key_of(o): o for o in body.get("items") or ()}
        kind = body.get("kind", "").removesuffix("List")
        api_version = body.get("apiVersion")
        for obj in fresh.values():
            obj.setdefault("kind", kind)
            obj.setdefault("apiVersion", api_version)
        old_cache, self.cache = self.cache, fresh
        self.resource_version = body["metadata"].get("resourceVersion")
        for key, obj in old_cache.items():
            if key not in fresh:
                self._emit("DELETED", obj, obj)
        for key, obj in fresh.items():
            old = old_cache.get(key)
            if old is None:
                self._emit("ADDED", obj, None)
            elif old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._emit("MODIFIED", obj, old)
        self.synced.set()

    async def _watch(self) -> None:
        resp = await self._list(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            _preload_content=False,
            **self._selectors,
        )
        try:
            if resp.status != 200:
                check(resp, await resp.read())
            while True:
                line = await resp.content.readline()
                if not line:
                    return  # server closed the watch (timeout): resume from resourceVersion
                event = json.loads(line)
                self._apply(event)
        finally:
            resp.release()

    def _apply(self, event: dict[str, Any]) -> None:
        kind, obj = event["type"], event["object"]
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone(obj.get("message", ""))
            raise RuntimeError(f"watch error: {obj.get('message', obj)}")
        rv = obj.get("metadata", {}).get("resourceVersion")
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


def resource_version(obj: Obj) -> int:
    """An object's resourceVersion as a number (etcd's revision), 0 if absent or opaque."""
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except ValueError:
        return 0


def _short(e: BaseException) -> str:
    if isinstance(e, ApiException):
        return f"API error {e.status} {e.reason}"
    return f"{type(e).__name__}: {e}"
