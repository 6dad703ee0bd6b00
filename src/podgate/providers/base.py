"""The provider seam: what every load balancer implements so the controller can gate on it."""

from __future__ import annotations

from collections.abc import Sequence
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


@dataclass(frozen=True)
class TargetState:
    """A target as the load balancer holds it."""

    admin: AdminState
    health: TargetHealth
    connections: int = 0


class Provider(Protocol):
    name: str
    #: seconds between health reads of a pool with pending gates, at least (the controller's
    #: --poll-period is the floor): a cloud API is metered, HAProxy's socket is not
    poll_interval: float
    #: the provider puts pods into groups the user owns (cloud target/server groups): only
    #: podgate can take them out, so the Service is held by a finalizer until it has
    binds_user_groups: bool

    async def provision(self, service_key: str, pools: Sequence[PoolSpec], address: str | None) -> str | None:
        """Make sure the Service's pools exist (and its frontends, where the provider makes them);
        returns the address to publish in ``status.loadBalancer.ingress``, if any."""

    async def release(self, service_key: str) -> None:
        """Remove what :meth:`provision` made for the Service (no-op for attached pools)."""

    async def provisioned(self) -> set[str]:
        """Service keys the provider holds pools for (garbage collection after a restart)."""

    async def targets(self, pool: PoolSpec) -> dict[Target, TargetState]:
        """The pool's targets managed by podgate, with admin state and health."""

    async def register(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        """Make the targets active: add the absent ones, take draining ones back into rotation."""

    async def drain(self, pool: PoolSpec, targets: Sequence[Target]) -> None: ...

    async def deregister(self, pool: PoolSpec, targets: Sequence[Target]) -> None: ...

    async def generation(self) -> str:
        """Changes when the load balancer lost its dynamic state (reload, restart): re-sync all."""
