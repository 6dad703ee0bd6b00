"""The record of which targets podgate registered in a cloud group for a Service (see
:mod:`podgate.model.ownership`), kept in the cluster: one ConfigMap per group and Service in
podgate's own namespace, so it survives restarts and every replica reads the same.

Only the leader writes (the reconcile registers and deregisters), by read-modify-replace with the
ConfigMap's resourceVersion, read again on a conflict.  A read is served from what this process
last read or wrote for up to ``ttl`` seconds: the drain hooks and health polls of every replica
read it often, and another replica's write (a new leader) is seen within ``ttl``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from podgate.kube.api import Conflict, Kube, NotFound, Resource, list_all
from podgate.model.lb import Target
from podgate.model.ownership import decode_record, encode_record, record_name, service_hash

CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
RECORD_LABEL = "podgate.dev/target-record"
SERVICE_LABEL = "podgate.dev/service-hash"
GROUP_ANNOTATION = "podgate.dev/group"
SERVICE_ANNOTATION = "podgate.dev/service"


class ConfigMapRecords:
    """:class:`~podgate.providers.base.TargetRecords` in ConfigMaps of ``namespace``."""

    def __init__(
        self, kube: Kube, namespace: str, *, ttl: float = 30.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.kube, self.namespace, self.ttl, self.clock = kube, namespace, ttl, clock
        #: ConfigMap name → (when read or written, the ConfigMap or None for none)
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}

    async def _get(self, name: str, fresh: bool = False) -> dict[str, Any] | None:
        cached = self._cache.get(name)
        if not fresh and cached is not None and self.clock() - cached[0] < self.ttl:
            return cached[1]
        try:
            obj: dict[str, Any] | None = dict(await self.kube.get(CONFIGMAPS, name, self.namespace))
        except NotFound:
            obj = None
        self._remember(name, obj)
        return obj

    def _remember(self, name: str, obj: dict[str, Any] | None) -> None:
        now = self.clock()
        for key in [k for k, (at, _) in self._cache.items() if now - at >= self.ttl]:
            del self._cache[key]  # bounded by the records touched within the last ttl
        self._cache[name] = (now, obj)

    async def read(self, group: str, service_key: str) -> Mapping[Target, float]:
        obj = await self._get(record_name(group, service_key))
        return decode_record(((obj or {}).get("data") or {}).get("targets", ""))

    async def add(self, group: str, service_key: str, targets: Sequence[Target]) -> None:
        now = self.clock()
        await self._change(group, service_key, lambda have: {**have, **dict.fromkeys(targets, now)})

    async def remove(self, group: str, service_key: str, targets: Sequence[Target]) -> None:
        gone = set(targets)
        await self._change(
            group, service_key, lambda have: {t: at for t, at in have.items() if t not in gone}
        )

    async def _change(
        self,
        group: str,
        service_key: str,
        change: Callable[[dict[Target, float]], dict[Target, float]],
    ) -> None:
        name = record_name(group, service_key)
        fresh = False
        while True:
            obj = await self._get(name, fresh)
            have = decode_record(((obj or {}).get("data") or {}).get("targets", ""))
            want = change(have)
            if want == have:
                return
            try:
                if obj is None:
                    written: dict[str, Any] | None = dict(
                        await self.kube.create(
                            CONFIGMAPS, self._body(name, group, service_key, want), self.namespace
                        )
                    )
                elif not want:
                    await self.kube.delete(CONFIGMAPS, name, self.namespace, uid=obj["metadata"].get("uid"))
                    written = None
                else:
                    body = self._body(name, group, service_key, want)
                    body["metadata"]["resourceVersion"] = obj["metadata"].get("resourceVersion")
                    written = dict(await self.kube.replace(CONFIGMAPS, name, body, self.namespace))
            except (Conflict, NotFound):
                fresh = True  # written or deleted by another (a previous leader): read, then again
                continue
            self._remember(name, written)
            return

    def _body(
        self, name: str, group: str, service_key: str, targets: Mapping[Target, float]
    ) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": "podgate",
                    RECORD_LABEL: "true",
                    SERVICE_LABEL: service_hash(service_key),
                },
                "annotations": {GROUP_ANNOTATION: group, SERVICE_ANNOTATION: service_key},
            },
            "data": {"targets": encode_record(targets)},
        }

    async def groups(self, service_key: str) -> list[str]:
        page = await list_all(
            self.kube,
            CONFIGMAPS,
            self.namespace,
            label_selector=f"{SERVICE_LABEL}={service_hash(service_key)}",
        )
        found = []
        for obj in page["items"]:
            annotations = (obj.get("metadata") or {}).get("annotations") or {}
            if annotations.get(SERVICE_ANNOTATION) == service_key and annotations.get(GROUP_ANNOTATION):
                found.append(str(annotations[GROUP_ANNOTATION]))
        return sorted(found)


class MemoryRecords:
    """:class:`~podgate.providers.base.TargetRecords` in memory: for tests of what is built on
    the records (a controller given these forgets on restart what it registered)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.records: dict[tuple[str, str], dict[Target, float]] = {}

    async def read(self, group: str, service_key: str) -> Mapping[Target, float]:
        return dict(self.records.get((group, service_key), {}))

    async def add(self, group: str, service_key: str, targets: Sequence[Target]) -> None:
        now = self.clock()
        self.records.setdefault((group, service_key), {}).update(dict.fromkeys(targets, now))

    async def remove(self, group: str, service_key: str, targets: Sequence[Target]) -> None:
        have = self.records.get((group, service_key), {})
        for t in targets:
            have.pop(t, None)
        if not have:
            self.records.pop((group, service_key), None)

    async def groups(self, service_key: str) -> list[str]:
        return sorted(g for g, s in self.records if s == service_key)
