"""A load balancer in memory, behind the :class:`~podgate.providers.base.TargetPool` seam, for
table tests of the reconciler: targets and their admin state, health a test sets, scripted
failures, and a record of every call.

It offers one capability, as real providers do: provisioning (HAProxy's shape) by default, or
binding a user's group (the clouds' shape: the Service is held by a finalizer) with
``binds_user_groups=True``; :meth:`FakeProvider.provider` hands the controller its record."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from podgate.model.lb import Health, PoolSpec, Target, TargetHealth
from podgate.providers.base import Provider, ProviderError, ServiceLB, TargetState

PoolKey = tuple[str, int]  # (service key, port)
#: the Service annotation naming a (fake) group of the user's
FAKE_GROUP = "podgate.dev/fake-group"


@dataclass
class FakeProvider:
    name: str = "fake"
    poll_interval: float = 0.0
    #: offer GroupBinding as the cloud providers do (groups the user owns: a finalizer holds
    #: the Service) instead of Provisioning
    binds_user_groups: bool = False
    pools: dict[PoolKey, dict[Target, TargetState]] = field(default_factory=dict)
    #: the health a target reports once registered; INITIAL for the ones not named here
    health: dict[Target, TargetHealth] = field(default_factory=dict)
    #: method name → the error its next calls raise (see :meth:`fail`)
    failures: dict[str, tuple[ProviderError, int]] = field(default_factory=dict)
    #: every call: (method, service key, targets as "ip:port" strings)
    calls: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    #: Service keys provisioned or bound, and not yet released or unbound
    held: set[str] = field(default_factory=set)
    #: what the last sync_all set (provisioning only)
    synced: dict[str, ServiceLB] = field(default_factory=dict)
    #: connections in flight to a target, as a test sets them (a draining target with none is
    #: drained, as HAProxy counts them)
    sessions: dict[Target, int] = field(default_factory=dict)
    #: count no connections, as ELB and Alibaba do: a draining target is drained only once it has
    #: left the pool
    drained_when_removed: bool = False
    #: targets idle here that are still not drained, and why (HAProxy: an old worker a reload
    #: left still has them in rotation), as a test sets them
    holds: dict[Target, str] = field(default_factory=dict)

    def provider(self) -> Provider:
        """The record the controller is given: the seam plus this fake's one capability."""
        if self.binds_user_groups:
            return Provider(self, (FAKE_GROUP,), binding=self)
        return Provider(self, provisioning=self)

    def fail(self, method: str, error: ProviderError, times: int = 1) -> None:
        self.failures[method] = (error, times)

    def set_health(self, target: Target, health: Health, detail: str = "") -> None:
        self.health[target] = TargetHealth(health, detail or health.value, self.name)

    def _call(self, method: str, key: str, targets: Sequence[Target] = ()) -> None:
        self.calls.append((method, key, tuple(map(str, targets))))
        raise_scripted(self.failures, method)

    def _pool(self, pool: PoolSpec) -> dict[Target, TargetState]:
        return self.pools.setdefault((pool.service_key, pool.port), {})

    # -- Provisioning --------------------------------------------------------------------------
    async def provision(self, service_key: str, pools: Sequence[PoolSpec], address: str | None) -> str | None:
        self._call("provision", service_key)
        self.held.add(service_key)
        return address

    async def release(self, service_key: str) -> None:
        self._call("release", service_key)
        self._forget(service_key)

    async def sync_all(self, services: Mapping[str, ServiceLB]) -> None:
        self._call("sync_all", ",".join(sorted(services)))
        self.synced = dict(services)

    async def generation(self) -> str:
        return "1"

    # -- GroupBinding ----------------------------------------------------------------------------
    async def bind(self, service_key: str, pools: Sequence[PoolSpec]) -> None:
        self._call("bind", service_key)
        self.held.add(service_key)

    async def unbind(self, service_key: str) -> None:
        self._call("unbind", service_key)
        self._forget(service_key)

    def _forget(self, service_key: str) -> None:
        self.held.discard(service_key)
        for key in [k for k in self.pools if k[0] == service_key]:
            del self.pools[key]

    # -- TargetPool ------------------------------------------------------------------------------
    async def targets(self, pool: PoolSpec) -> dict[Target, TargetState]:
        self._call("targets", pool.service_key)
        return {
            t: TargetState(
                st.admin,
                self.health.get(t, st.health) if st.admin == "ready" else st.health,
                self.sessions.get(t, 0),
                st.admin != "ready"
                and not self.drained_when_removed
                and not self.sessions.get(t, 0)
                and t not in self.holds,
                self.holds.get(t, ""),
            )
            for t, st in self._pool(pool).items()
        }

    async def register(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        self._call("register", pool.service_key, targets)
        for t in targets:
            self._pool(pool)[t] = TargetState("ready", TargetHealth(Health.INITIAL, "checking", self.name))

    async def drain(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        self._call("drain", pool.service_key, targets)
        for t in targets:
            self._pool(pool)[t] = TargetState("drain", TargetHealth(Health.DRAINING, "draining", self.name))

    async def deregister(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        self._call("deregister", pool.service_key, targets)
        for t in targets:
            self._pool(pool).pop(t, None)

    async def close(self) -> None:
        self._call("close", "")


def raise_scripted(failures: dict[str, tuple[ProviderError, int]], method: str) -> None:
    """Raise the error a test scripted for ``method``'s next calls (see ``fail``), one call
    fewer each time: the fakes beside the seams share the rule."""
    error, times = failures.get(method, (None, 0))
    if error is None:
        return
    if times <= 1:
        del failures[method]
    else:
        failures[method] = (error, times - 1)
    raise error
