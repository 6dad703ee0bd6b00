"""Each Service resolved once: :func:`podgate.model.resolution.resolve` memoised per version of
the Service in the informer's cache, and the providers the resolutions name.

One instance is built by the composition root (:mod:`podgate.app`) and read by the reconciler,
the drain endpoint, the eviction guard and the admission webhook, the last from its own thread:
a lookup is a dict read, a resolution an immutable value, and the memo is checked against the
identity of the cached object (the informer replaces an object on every change, never edits it),
so a resolution computed on either thread from a stale object is simply recomputed.

The administrator's group grants (:mod:`podgate.model.grants`) are part of every resolution: a
change to any grant starts a new generation of them, and a memoised resolution of an older
generation is computed again, so a grant given or taken back applies on the Service's next
pass (the Service controller queues the Services it may concern).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podgate.kube.api import Kube, Obj, Resource
from podgate.kube.informer import EventType, Informer
from podgate.model import grants as gr
from podgate.model.policy import DEFAULT_POLICY, GatePolicy
from podgate.model.resolution import Resolution, Settings, resolve
from podgate.model.types import Service
from podgate.providers.base import Provider

GRANTS = Resource(gr.GROUP, gr.VERSION, gr.PLURAL, gr.KIND, namespaced=False)


def grants_informer(kube: Kube) -> Informer[Obj]:
    # snapshots: the webhook resolves Services from its own thread
    return Informer(kube, GRANTS, snapshots=True)


class ServiceResolutions:
    def __init__(
        self,
        services: Informer[Service],
        providers: Mapping[str, Provider],
        *,
        default_provider: str | None = None,
        classes: Mapping[str, str] | None = None,
        policy: GatePolicy = DEFAULT_POLICY,
        grants: Informer[Obj] | None = None,
        settings: Settings | None = None,
    ) -> None:
        """``grants``: the informer of LoadBalancerGroupGrants; None grants nothing (a Service
        that names a group is refused).  ``settings``: the controller-wide inputs as another
        instance computed them (the admission process resolves Services without providers of its
        own); by default from the providers and the arguments."""
        self.services = services
        self.providers = providers
        self.settings = settings or Settings(
            group_annotations={n: p.group_annotations for n, p in providers.items()},
            default_provider=default_provider,
            classes=classes,
            policy=policy,
        )
        #: the grants as of their last change, and that change's generation
        self._grants = (0, gr.NO_GRANTS)
        self.grant_informer = grants
        #: key → (the cached Service it was computed from, the grants' generation, its resolution)
        self._memo: dict[str, tuple[Mapping[str, Any], int, Resolution]] = {}
        services.add_handler(self._on_service)
        if grants is not None:
            grants.add_handler(self._on_grant)

    @property
    def grants(self) -> gr.Grants:
        return self._grants[1]

    def of(self, service: Mapping[str, Any]) -> Resolution:
        """The Service's resolution, computed at most once per version of it."""
        meta = service.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        generation, grants = self._grants  # one read: the webhook's thread may be asking too
        hit = self._memo.get(key)
        if hit is not None and hit[0] is service and hit[1] == generation:
            return hit[2]
        resolution = resolve(service, self.settings, grants)
        self._memo[key] = (service, generation, resolution)
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

    def _on_grant(self, kind: EventType, obj: Obj, old: Obj | None) -> None:
        """Any grant changed: read them all again (there are few), as a new generation."""
        assert self.grant_informer is not None
        grants = gr.Grants.of(self.grant_informer.snapshot().values())
        self._grants = (self._grants[0] + 1, grants)
