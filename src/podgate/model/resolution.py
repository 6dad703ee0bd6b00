"""What podgate makes of one Service: which provider serves it, its pools, its gate policy, or
why none of that can be worked out.

The reconciler, the drain endpoint, the eviction guard and the admission webhook all ask this of
the same Service; they ask :func:`resolve` (through the memo in :mod:`podgate.services`), so the
four can never disagree about a Service the way separate copies of this logic once did (one
dropped configuration errors, another turned them into warnings).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from podgate.model import lb
from podgate.model.grants import NO_GRANTS, Grants
from podgate.model.policy import DEFAULT_POLICY, GatePolicy, gate_policy


@dataclass(frozen=True)
class Settings:
    """The controller-wide inputs of a resolution: the same for every Service."""

    #: provider name → the annotations naming a user's own group for that provider
    group_annotations: Mapping[str, Sequence[str]]
    #: provider for class-less ``type: LoadBalancer`` Services; None: leave them alone
    default_provider: str | None = None
    #: loadBalancerClass → provider; None: ``podgate.dev/<provider>`` for each
    classes: Mapping[str, str] | None = None
    #: the controller's policy, which a Service's annotations override field by field
    policy: GatePolicy = DEFAULT_POLICY


@dataclass(frozen=True)
class Resolution:
    """One Service as podgate serves it."""

    key: str
    #: the provider serving it; None: another controller's Service, or none's
    provider: str | None = None
    pools: tuple[lb.PoolSpec, ...] = ()
    policy: GatePolicy = DEFAULT_POLICY
    #: a bad annotation, or a group its namespace is not granted, named: podgate serves the
    #: Service but cannot, and its pods must hear why
    error: str | None = None
    #: the reason the Event and the gates give for ``error``
    error_reason: str = lb.SERVICE_CONFIG_ERROR

    @property
    def handled(self) -> bool:
        """Whether the Service's pods are podgate's to gate (an invalid one's are: to say why)."""
        return self.provider is not None or self.error is not None

    @property
    def served(self) -> bool:
        """Whether podgate puts the Service's pods in a load balancer."""
        return self.provider is not None and self.error is None


def resolve(service: Mapping[str, Any], settings: Settings, grants: Grants = NO_GRANTS) -> Resolution:
    """The Service's provider, pools and policy; a bad annotation becomes ``error`` (with the
    controller's policy, so a timeout the operator chose still applies to its gates), and so does
    a group the Service's namespace is not granted (:mod:`podgate.model.grants`; with its pools
    kept, for the message, but never bound: ``served`` is False)."""
    meta = service.get("metadata") or {}
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    provider: str | None = None
    try:
        provider = lb.provider_for(
            service, settings.default_provider, settings.group_annotations, settings.classes
        )
        pools = lb.pools_for(service, settings.group_annotations[provider]) if provider else []
        policy = gate_policy(meta.get("annotations"), settings.policy)
    except lb.ServiceConfigError as e:
        return Resolution(key, provider, policy=settings.policy, error=str(e))
    named = [p.group.id for p in pools if p.group is not None]
    refusal = grants.refusal(provider, str(meta.get("namespace")), named) if provider and named else None
    if refusal is not None:
        return Resolution(
            key, provider, tuple(pools), policy, error=refusal, error_reason=lb.GROUP_NOT_GRANTED
        )
    return Resolution(key, provider, tuple(pools), policy)


def group_annotations(providers: Iterable[tuple[str, Sequence[str]]]) -> dict[str, tuple[str, ...]]:
    """``{name: annotations}`` from each provider's name and group annotations."""
    return {name: tuple(annotations) for name, annotations in providers}
