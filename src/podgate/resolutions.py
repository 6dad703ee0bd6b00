"""Each Service resolved once: :func:`podgate.model.resolution.resolve` memoised per version of
the Service in the informer's cache, and the providers the resolutions name.

One instance is built by the composition root (:mod:`podgate.app`) and read by the reconciler,
the drain endpoint, the eviction guard and the admission webhook, the last from its own thread:
a lookup is a dict read, a resolution an immutable value, and the memo is checked against the
identity of the cached object (the informer replaces an object on every change, never edits it),
so a resolution computed on either thread from a stale object is simply recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podgate.kube.informer import EventType, Informer
from podgate.model.policy import DEFAULT_POLICY, GatePolicy
from podgate.model.resolution import Resolution, Settings, resolve
from podgate.model.types import Service
from podgate.providers.base import Provider


class ServiceResolutions:
    def __init__(
        self,
        services: Informer[Service],
        providers: Mapping[str, Provider],
        *,
        default_provider: str | None = None,
        classes: Mapping[str, str] | None = None,
        policy: GatePolicy = DEFAULT_POLICY,
    ) -> None:
        self.services = services
        self.providers = providers
        self.settings = Settings(
            group_annotations={n: p.group_annotations for n, p in providers.items()},
            default_provider=default_provider,
            classes=classes,
            policy=policy,
        )
        #: key → (the cached Service it was computed from, its resolution)
        self._memo: dict[str, tuple[Mapping[str, Any], Resolution]] = {}
        services.add_handler(self._on_service)

    def of(self, service: Mapping[str, Any]) -> Resolution:
        """The Service's resolution, computed at most once per version of it."""
        meta = service.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        hit = self._memo.get(key)
        if hit is not None and hit[0] is service:
            return hit[1]
        resolution = resolve(service, self.settings)
        self._memo[key] = (service, resolution)
        return resolution

    def get(self, key: str) -> Resolution | None:
        """The resolution of the cached Service ``namespace/name``; None when there is none."""
        service = self.services.get(key)
        return self.of(service) if service is not None else None

    def provider(self, resolution: Resolution) -> Provider | None:
        return self.providers[resolution.provider] if resolution.provider else None

    def __len__(self) -> int:
        return len(self._memo)

    def _on_service(self, kind: EventType, service: Service, old: Service | None) -> None:
        if kind == "DELETED":
            meta = service.get("metadata") or {}
            self._memo.pop(f"{meta.get('namespace')}/{meta.get('name')}", None)
