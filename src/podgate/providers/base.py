"""The provider seam: what every load balancer implements so the controller can gate on it.

One narrow protocol every provider implements (:class:`TargetPool`: read a pool's targets,
register, drain, deregister), plus small capability protocols for what only some have:
binding a group the user owns (:class:`GroupBinding`, the cloud target/server groups) and
provisioning load balancers of podgate's own (:class:`Provisioning`, HAProxy).  The controller
gets one :class:`Provider` record per configured name and uses a capability only where the
record has one: it never asks a provider's type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from podgate.model.lb import PoolSpec, Target, TargetHealth

AdminState = Literal["ready", "drain", "maint"]


class ProviderError(RuntimeError):
    """The load balancer could not be read or changed; never a reason to open a gate.

    ``permanent``: retrying cannot help (no group named, the group does not exist or does not
    suit); a deleting Service then lets go instead of waiting for ever."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class NotOwned(ProviderError):
    """The group's ownership tags (:mod:`podgate.model.ownership`) do not give it to this cluster
    and Service: refused, the group untouched.  Permanent: only an administrator's tag changes
    the answer (a Service being deleted then lets go without taking anything out)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


@dataclass(frozen=True)
class TargetState:
    """A target as the load balancer holds it."""

    admin: AdminState
    health: TargetHealth
    connections: int = 0
    #: out of rotation and idle by the load balancer's own account: nothing new goes to it and
    #: nothing is in flight (HAProxy: DRAIN or MAINT with no current sessions).  Providers that
    #: cannot count connections leave it False (their targets are drained once they have left the
    #: pool: podgate removes Alibaba's weight-0 backends after the drain delay) or set it by time
    #: (ELB: ``draining`` for its propagation allowance, when no new request reaches the target)
    drained: bool = False
    #: why a target out of rotation here is not drained all the same (HAProxy: an old worker a
    #: reload left serving its last requests still has it in rotation), for the drain's message
    held: str = ""


@dataclass(frozen=True)
class ServiceLB:
    """A provisioned load balancer: the Service's address and its pools (one per port)."""

    address: str
    pools: Sequence[PoolSpec]


class TargetPool(Protocol):
    """The targets of a provider's pools: what the reconciler diffs and gates on."""

    name: str
    #: seconds between health reads of a pool with pending gates, at least (the controller's
    #: --poll-period is the floor): a cloud API is metered, HAProxy's socket is not
    poll_interval: float

    async def targets(self, pool: PoolSpec) -> dict[Target, TargetState]:
        """The pool's targets podgate registered, with admin state and health: a target someone
        else put in the group is not listed, so it is never drained or removed."""

    async def register(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        """Make the targets active: add the absent ones, take draining ones back into rotation."""

    async def drain(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        """Take the targets out of rotation: no new connections, existing ones run on.  Idempotent,
        and safe from any replica (the drain endpoint calls it where the preStop hook lands, the
        leader again when it sees the pod terminating)."""

    async def deregister(self, pool: PoolSpec, targets: Sequence[Target]) -> None: ...

    async def close(self) -> None:
        """Let go of connections and clients (controller shutdown)."""


class TargetRecords(Protocol):
    """Where a provider whose groups cannot mark a target as podgate's (ELBv2) keeps which
    targets it registered in each group for each Service (:mod:`podgate.model.ownership`), so a
    restarted controller, or another replica, never takes out a target podgate did not put in:
    ``kube.records.ConfigMapRecords`` (a ConfigMap per group and Service in podgate's namespace),
    ``kube.records.MemoryRecords`` beside it for tests."""

    async def read(self, group: str, service_key: str) -> Mapping[Target, float]:
        """The recorded targets and when each was recorded (seconds since the epoch)."""

    async def add(self, group: str, service_key: str, targets: Sequence[Target]) -> None:
        """Record the targets (now), before they are registered."""

    async def remove(self, group: str, service_key: str, targets: Sequence[Target]) -> None:
        """Take the targets off the record (the record goes once empty)."""

    async def groups(self, service_key: str) -> list[str]:
        """The groups the Service has a record in."""


class GroupBinding(Protocol):
    """Pools bound to groups the user owns (cloud target/server groups): podgate puts pods into
    them and only podgate can take them out, so the controller holds such a Service with a
    finalizer from its first bind until :meth:`unbind` has run."""

    async def bind(self, service_key: str, pools: Sequence[PoolSpec]) -> None:
        """Check each pool's group exists, suits podgate and carries the ownership tags for this
        cluster and Service (else :class:`NotOwned`), on every call (a short-lived memory of a
        group accepted is allowed; a claim kept only in memory is not).  Nothing is created or
        changed.  Idempotent: also how a restarted controller learns the groups of a Service
        that is being deleted."""

    async def unbind(self, service_key: str) -> None:
        """The Service is gone or no longer podgate's: its pods leave its groups (the groups
        stay, they are the user's) and podgate's claim on them ends."""


class Provisioning(Protocol):
    """Load balancers podgate makes itself (HAProxy): the structure follows the Services, and a
    reload or restart loses the dynamic targets, which :meth:`generation` tells."""

    async def provision(self, service_key: str, pools: Sequence[PoolSpec], address: str | None) -> str | None:
        """Make sure the Service's pools exist (and its frontends); returns the address to
        publish in ``status.loadBalancer.ingress``, if any (None for pools bound to the user's
        own backends)."""

    async def release(self, service_key: str) -> None:
        """Remove what :meth:`provision` made for the Service (no-op for attached pools)."""

    async def sync_all(self, services: Mapping[str, ServiceLB]) -> None:
        """Set the whole structure at once (controller start): no Service flickers out while
        the others are reconciled one by one, and those whose Service is gone are dropped."""

    async def generation(self) -> str:
        """Changes when the load balancer lost its dynamic state (reload, restart): re-sync all."""


class StateChanges(Protocol):
    """A load balancer that says when its targets' health changed, as it happens (HAProxy's ring
    of server state changes), so a pending gate need not be polled for it.  Only a wake-up: a
    pass still reads the pool itself, and while :attr:`live` is False (not listening, or the
    load balancer keeps no such record) pending gates are polled as with any provider."""

    @property
    def live(self) -> bool:
        """Every change is heard now: pending gates may be polled rarely."""

    async def watch(self, changed: Callable[[str | None], None]) -> None:
        """Until cancelled: ``changed(service_key)`` when a target of that Service turned
        healthy or unhealthy, ``changed(None)`` when changes may have been missed (on every
        start of listening: look at every pending Service).  Reconnects by itself."""


class Throttling(Protocol):
    """Cloud API calls retried after "throttled" or "busy" answers, counted since start."""

    throttled: int


@dataclass(frozen=True)
class Provider:
    """One configured load balancer as the controller sees it: the target seam, the annotations
    naming a user's group that it reads, and its capabilities (None: it has not got it)."""

    pool: TargetPool
    #: the Service annotations naming a group of the user's that a pool is bound to
    group_annotations: tuple[str, ...] = ()
    binding: GroupBinding | None = None
    provisioning: Provisioning | None = None
    #: the cloud API's retry counter (``podgate_provider_throttled_total``)
    throttling: Throttling | None = None
    #: health changes told as they happen (HAProxy provisioning mode)
    changes: StateChanges | None = None

    @property
    def name(self) -> str:
        return self.pool.name
