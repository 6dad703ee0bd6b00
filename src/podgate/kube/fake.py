"""An in-memory :class:`~podgate.kube.api.Kube` for tests: objects, versions, watches, errors.

It behaves as the API server does in the cases podgate relies on: every write bumps one
cluster-wide resourceVersion; a strategic merge merges ``conditions`` by ``type`` and
``finalizers`` as a set (``$deleteFromPrimitiveList`` removes), a merge patch follows RFC 7386;
``metadata.uid`` in a patch is a precondition (409 when it differs); the ``status``
subresource changes only the status and the main resource everything but it; a ``replace``
with a stale resourceVersion is a 409; an object with finalizers (and a pod, until its kubelet
is done) is only marked for deletion, and goes when its last finalizer does.  Every write is
recorded in :attr:`FakeKube.writes` (even one that then failed: it was sent), so a test can
assert exactly which patch went out, or that nothing did.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from podgate.kube.api import (
    Conflict,
    Gone,
    KubeError,
    ListPage,
    NotFound,
    Obj,
    PatchBody,
    PatchType,
    Resource,
    WatchEvent,
    WatchEventType,
)
from podgate.model.types import labels, meta_of

Verb = Literal["create", "replace", "patch", "delete"]
#: lists a strategic merge merges by a key (the API's ``patchMergeKey``) in the bodies podgate uses
MERGE_KEYS = {"conditions": "type", "containers": "name", "containerStatuses": "name", "webhooks": "name"}
#: primitive lists a strategic merge treats as sets (``patchStrategy: merge``)
SET_LISTS = frozenset({"finalizers"})
_DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"
_TIMESTAMP = "2026-01-01T00:00:00Z"


@dataclass(frozen=True)
class Write:
    verb: Verb
    resource: str  # the plural, with "/status" for the subresource
    namespace: str | None
    name: str
    body: Any = None
    patch_type: PatchType | None = None


@dataclass
class _Failure:
    error: KubeError
    times: int


@dataclass
class FakeKube:
    objects: dict[tuple[Resource, str | None, str], Obj] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    _events: list[tuple[int, Resource, str | None, WatchEvent]] = field(default_factory=list)
    _compacted: int = 0
    _failures: dict[tuple[str, str, str], _Failure] = field(default_factory=dict)
    _last_rv: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: what :meth:`version` answers (the API server's ``/version``)
    server_version: Obj = field(
        default_factory=lambda: {"major": "1", "minor": "37", "gitVersion": "v1.37.2"}
    )

    # -- set-up and inspection for tests ------------------------------------------------------
    def add(self, resource: Resource, obj: Mapping[str, Any]) -> Obj:
        """Put an object in as if someone else had created it (no write is recorded)."""
        return self._store(resource, _ns(resource, obj), copy.deepcopy(dict(obj)), "ADDED")

    def object(self, resource: Resource, name: str, namespace: str | None = None) -> Obj | None:
        obj = self.objects.get((resource, namespace if resource.namespaced else None, name))
        return copy.deepcopy(obj)

    def fail(self, verb: str, resource: Resource, name: str, error: KubeError, times: int = 1) -> None:
        """The next ``times`` calls of ``verb`` ("get", "list", "create", …) on that object fail."""
        self._failures[(verb, resource.plural, name)] = _Failure(error, times)

    def compact(self) -> None:
        """Forget the watch history, as etcd's compaction does: older versions are Gone."""
        self._compacted = self._last_rv
        self._events.clear()

    # -- the Kube protocol --------------------------------------------------------------------
    async def version(self) -> Obj:
        await self._answer("get", _VERSION, "version")
        return copy.deepcopy(self.server_version)

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> Obj:
        await self._answer("get", resource, name)
        return copy.deepcopy(self._existing(resource, name, namespace))

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_: str | None = None,
    ) -> ListPage:
        if field_selector:
            raise NotImplementedError("FakeKube does not filter by fields")
        await self._answer("list", resource, "")
        wanted = dict(kv.split("=", 1) for kv in label_selector.split(",")) if label_selector else {}
        items = [
            copy.deepcopy(o)
            for (res, ns, _), o in sorted(self.objects.items(), key=lambda kv: (kv[0][1] or "", kv[0][2]))
            if res == resource
            and (namespace is None or ns == namespace)
            and wanted.items() <= labels(o).items()
        ]
        start = int(continue_ or 0)
        end = start + limit if limit else len(items)
        return {
            "items": items[start:end],
            "resourceVersion": str(self._last_rv),
            "continue_": str(end) if end < len(items) else "",
        }

    async def watch(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        resource_version: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[WatchEvent]:
        since = int(resource_version or 0)
        if since < self._compacted:
            raise Gone(f"too old resource version: {since} ({self._compacted})")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        while True:
            for rv, res, ns, event in list(self._events):
                if rv > since and res == resource and (namespace is None or ns == namespace):
                    since = rv
                    yield copy.deepcopy(event)
            self._changed.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._changed.wait()
            except TimeoutError:
                return

    async def create(self, resource: Resource, body: Mapping[str, Any], namespace: str | None = None) -> Obj:
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        if resource.namespaced:
            meta["namespace"] = namespace or meta.get("namespace")
        self.writes.append(
            Write("create", resource.plural, namespace, meta.get("name", ""), copy.deepcopy(obj))
        )
        await self._answer("create", resource, meta.get("name", ""))
        if (resource, _ns(resource, obj), meta["name"]) in self.objects:
            raise Conflict(f'{resource.plural} "{meta["name"]}" already exists', reason="AlreadyExists")
        return copy.deepcopy(self._store(resource, _ns(resource, obj), obj, "ADDED"))

    async def replace(
        self, resource: Resource, name: str, body: Mapping[str, Any], namespace: str | None = None
    ) -> Obj:
        self.writes.append(Write("replace", resource.plural, namespace, name, copy.deepcopy(body)))
        await self._answer("replace", resource, name)
        current = self._existing(resource, name, namespace)
        sent_rv = meta_of(body).get("resourceVersion")
        if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
            raise Conflict("the object has been modified; please apply your changes to the latest version")
        obj = copy.deepcopy(dict(body))
        obj["metadata"] = {**current["metadata"], **obj.get("metadata", {})}
        return copy.deepcopy(self._store(resource, _ns(resource, current), obj, "MODIFIED"))

    async def patch(
        self,
        resource: Resource,
        name: str,
        body: PatchBody,
        namespace: str | None = None,
        *,
        patch_type: PatchType,
        subresource: str | None = None,
    ) -> Obj:
        plural = f"{resource.plural}/{subresource}" if subresource else resource.plural
        self.writes.append(Write("patch", plural, namespace, name, copy.deepcopy(body), patch_type))
        await self._answer("patch", resource, name)
        current = self._existing(resource, name, namespace)
        if not isinstance(body, Mapping):
            raise NotImplementedError("FakeKube applies strategic-merge and merge patches only")
        uid = meta_of(body).get("uid")
        if uid is not None and uid != current["metadata"].get("uid"):
            raise Conflict(
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                f"{current['metadata'].get('uid')}"
            )
        if patch_type is PatchType.JSON:
            raise NotImplementedError("FakeKube applies strategic-merge and merge patches only")
        merged = (
            strategic_merge(current, body)
            if patch_type is PatchType.STRATEGIC
            else merge_patch(current, body)
        )
        if subresource == "status":
            obj = {**current, "status": merged.get("status") or {}}
        else:
            obj = {k: v for k, v in merged.items() if k != "status"}
            if "status" in current:
                obj["status"] = current["status"]
        return copy.deepcopy(self._store(resource, _ns(resource, current), obj, "MODIFIED"))

    async def delete(
        self,
        resource: Resource,
        name: str,
        namespace: str | None = None,
        *,
        uid: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> None:
        self.writes.append(Write("delete", resource.plural, namespace, name))
        await self._answer("delete", resource, name)
        current = self._existing(resource, name, namespace)
        if uid is not None and uid != current["metadata"].get("uid"):
            raise Conflict("Precondition failed: UID mismatch")
        graceful = resource.plural == "pods" and grace_period_seconds != 0  # the kubelet finishes it
        if current["metadata"].get("finalizers") or graceful:
            current["metadata"].setdefault("deletionTimestamp", _TIMESTAMP)
            self._store(resource, _ns(resource, current), current, "MODIFIED")
        else:
            self._remove(resource, _ns(resource, current), current)

    # -- the store ----------------------------------------------------------------------------
    def _existing(self, resource: Resource, name: str, namespace: str | None) -> Obj:
        obj = self.objects.get((resource, namespace if resource.namespaced else None, name))
        if obj is None:
            raise NotFound(f'{resource.plural} "{name}" not found', reason="NotFound")
        return obj

    def _store(self, resource: Resource, namespace: str | None, obj: Obj, kind: WatchEventType) -> Obj:
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _TIMESTAMP)
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        obj.setdefault("kind", resource.kind)
        obj.setdefault("apiVersion", resource.api_version)
        previous = self.objects.get((resource, namespace, meta["name"]))
        let_go = (
            previous is not None and previous["metadata"].get("finalizers") and not meta.get("finalizers")
        )
        if meta.get("deletionTimestamp") and let_go:  # the last finalizer went: so does the object
            self._remove(resource, namespace, obj)
            return obj
        self.objects[(resource, namespace, meta["name"])] = obj
        self._record(rv, resource, namespace, kind, obj)
        return obj

    def _remove(self, resource: Resource, namespace: str | None, obj: Obj) -> None:
        self.objects.pop((resource, namespace, obj["metadata"]["name"]), None)
        rv = self._next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        self._record(rv, resource, namespace, "DELETED", obj)

    def _record(
        self, rv: int, resource: Resource, namespace: str | None, kind: WatchEventType, obj: Obj
    ) -> None:
        self._events.append((rv, resource, namespace, {"type": kind, "object": copy.deepcopy(obj)}))
        self._changed.set()

    def _next_rv(self) -> int:
        self._last_rv += 1
        return self._last_rv

    async def _answer(self, verb: str, resource: Resource, name: str) -> None:
        """Every call yields to the loop, as a real one does, then fails if a test said so."""
        await asyncio.sleep(0)
        failure = self._failures.get((verb, resource.plural, name))
        if failure is None:
            return
        failure.times -= 1
        if failure.times <= 0:
            del self._failures[(verb, resource.plural, name)]
        raise failure.error


def _ns(resource: Resource, obj: Mapping[str, Any]) -> str | None:
    return meta_of(obj).get("namespace") if resource.namespaced else None


def strategic_merge(current: Any, patch: Any) -> Any:
    """The API server's strategic merge, for the lists podgate's bodies hold (see MERGE_KEYS)."""
    if not isinstance(patch, Mapping) or not isinstance(current, Mapping):
        return copy.deepcopy(patch)
    out = dict(copy.deepcopy(current))
    for k, v in patch.items():
        if k.startswith(_DELETE_PRIMITIVE):
            name = k.removeprefix(_DELETE_PRIMITIVE)
            out[name] = [x for x in out.get(name) or () if x not in v]
        elif v is None:
            out.pop(k, None)
        elif k in SET_LISTS and isinstance(v, list):
            out[k] = list(out.get(k) or ()) + [x for x in v if x not in (out.get(k) or ())]
        elif k in MERGE_KEYS and isinstance(v, list):
            out[k] = _merge_by_key(out.get(k) or [], v, MERGE_KEYS[k])
        else:
            out[k] = strategic_merge(out.get(k), v)
    return out


def _merge_by_key(current: list[Any], patch: list[Any], key: str) -> list[Any]:
    out = copy.deepcopy(current)
    for item in patch:
        i = next((n for n, c in enumerate(out) if c.get(key) == item.get(key)), None)
        if i is None:
            out.append(strategic_merge({}, item))
        else:
            out[i] = strategic_merge(out[i], item)
    return out


def merge_patch(current: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, ``null`` deletes, anything else (lists too) replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(copy.deepcopy(current)) if isinstance(current, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


#: ``/version`` as a resource only so that a test can make it fail like any read
_VERSION = Resource("", "version", "version", "Version", namespaced=False)
