"""A load balancer in memory, behind the :class:`~podgate.providers.base.Provider` seam, for
table tests of the reconciler: targets and their admin state, health a test sets, scripted
failures, and a record of every call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from podgate.model.lb import Health, PoolSpec, Target, TargetHealth
from podgate.providers.base import ProviderError, TargetState

PoolKey = tuple[str, int]  # (service key, port)


@dataclass
class FakeProvider:
    name: str = "fake"
    poll_interval: float = 0.0
    #: behave as the cloud providers do (groups the user owns: a finalizer holds the Service)
    binds_user_groups: bool = False
    pools: dict[PoolKey, dict[Target, TargetState]] = field(default_factory=dict)
    #: the health a target reports once registered; INITIAL for the ones not named here
    health: dict[Target, TargetHealth] = field(default_factory=dict)
    #: method name → the error its next calls raise (see :meth:`fail`)
    failures: dict[str, tuple[ProviderError, int]] = field(default_factory=dict)
    #: every call: (method, service key, targets as "ip:port" strings)
    calls: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    provisioned_keys: set[str] = field(default_factory=set)

    def fail(self, method: str, error: ProviderError, times: int = 1) -> None:
        self.failures[method] = (error, times)

    def set_health(self, target: Target, health: Health, detail: str = "") -> None:
        self.health[target] = TargetHealth(health, detail or health.value, self.name)

    def _call(self, method: str, key: str, targets: Sequence[Target] = ()) -> None:
        self.calls.append((method, key, tuple(map(str, targets))))
        error, times = self.failures.get(method, (None, 0))
        if error is not None:
            if times <= 1:
                del self.failures[method]
            else:
                self.failures[method] = (error, times - 1)
            raise error

    def _pool(self, pool: PoolSpec) -> dict[Target, TargetState]:
        return self.pools.setdefault((pool.service_key, pool.port), {})

    async def provision(self, service_key: str, pools: Sequence[PoolSpec], address: str | None) -> str | None:
        self._call("provision", service_key)
        self.provisioned_keys.add(service_key)
        return address

    async def release(self, service_key: str) -> None:
        self._call("release", service_key)
        self.provisioned_keys.discard(service_key)
        for key in [k for k in self.pools if k[0] == service_key]:
            del self.pools[key]

    async def provisioned(self) -> set[str]:
        return set(self.provisioned_keys)

    async def targets(self, pool: PoolSpec) -> dict[Target, TargetState]:
        self._call("targets", pool.service_key)
        return {
            t: TargetState(st.admin, self.health.get(t, st.health) if st.admin == "ready" else st.health)
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

    async def generation(self) -> str:
        return "1"
