"""HAProxy's targets behind the :class:`~podgate.providers.base.TargetPool` seam, through the
runtime API of one HAProxy or of each of an HA pair; no reload.

A target is a server named ``podgate-IP-PORT`` (or a slot of the user's ``server-template
podgate- …`` in attach mode); the user's own servers are neither reported nor touched.  In
provisioning mode each change is also kept for the next reload (``haproxy_state``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from podgate.model.lb import Health, PoolSpec, Target, TargetHealth
from podgate.providers import haproxy_config as cfg
from podgate.providers.base import AdminState, ProviderError, TargetState
from podgate.providers.haproxy_runtime import ADMIN_DRAIN, MasterAPI, RuntimeAPI, ServerStat, Unreachable
from podgate.providers.haproxy_state import SaveOnRead, StateFiles, view_of

log = logging.getLogger(__name__)

T = TypeVar("T")
_CHECK_OK = ("L4OK", "L6OK", "L7OK", "L7OKC")


def server_health(stat: ServerStat, where: str, admin_flags: int = 0) -> tuple[AdminState, TargetHealth]:
    """Admin state and health from HAProxy's own status words (verified on 2.6), and the
    server's admin flags (``show servers state``): a drained server whose checks fail reads
    DOWN in ``show stat``, and is draining all the same."""
    status, check = stat.status, stat.check_status
    detail = f"server {stat.name} is {status}, check {check or 'none'}"
    if stat.check_desc and check not in ("", "INI"):
        detail += f" ({stat.check_desc}" + (f": {stat.last_check})" if stat.last_check else ")")
    if status.startswith("MAINT"):
        return "maint", TargetHealth(Health.UNREGISTERED, detail, where)
    if status == "no check":
        # podgate's servers are checked: one in rotation without checks was half registered
        # (HAProxy under load dropped an "enable health" unanswered, then took "enable server"):
        # not registered until its checks run again, which the next register does
        detail += ": health checks off, registration incomplete"
        return "maint", TargetHealth(Health.UNREGISTERED, detail, where)
    if status.startswith("DRAIN") or status.startswith("NOLB") or admin_flags & ADMIN_DRAIN:
        if not status.startswith(("DRAIN", "NOLB")):
            detail += ", set to drain"
        return "drain", TargetHealth(Health.DRAINING, detail, where)
    if status.startswith("UP") and check in ("", "INI"):
        # a server a new worker read from its configuration with no saved state starts UP
        # before any check (seen on 2.6: "UP 1/3", INI): not healthy until HAProxy checked it
        return "ready", TargetHealth(Health.INITIAL, detail, where)
    if status.startswith("UP"):
        return "ready", TargetHealth(Health.HEALTHY, detail, where)
    if status.startswith("DOWN") and (check in ("", "INI") or check in _CHECK_OK):
        return "ready", TargetHealth(Health.INITIAL, detail, where)
    if status.startswith("DOWN"):
        return "ready", TargetHealth(Health.UNHEALTHY, detail, where)
    return "ready", TargetHealth(Health.UNKNOWN, detail, where)


def combine(states: Sequence[TargetState]) -> TargetState:
    """One target seen by several HAProxy processes: the least healthy view wins."""
    order = [
        Health.UNKNOWN,
        Health.UNREGISTERED,
        Health.UNHEALTHY,
        Health.INITIAL,
        Health.DRAINING,
        Health.HEALTHY,
    ]
    worst = min(states, key=lambda s: order.index(s.health.health))
    admin: AdminState = "drain" if any(s.admin == "drain" for s in states) else worst.admin
    # drained only when every HAProxy of the pair has it out of rotation and idle
    drained = all(s.drained for s in states)
    return TargetState(admin, worst.health, sum(s.connections for s in states), drained)


class HAPair:
    """The HAProxy processes one provider drives (one, or an HA pair), and what happens when one
    of them cannot be reached.  ``require_all``: any failure is the error, so pending gates wait;
    otherwise podgate decides on (and changes) the reachable ones, unless none is."""

    def __init__(self, runtimes: Sequence[RuntimeAPI], require_all: bool = True) -> None:
        if not runtimes:
            raise ValueError("HAProxy provider needs at least one runtime API address")
        self.runtimes = list(runtimes)
        self.require_all = require_all

    def reachable(
        self, answers: Sequence[T | BaseException], require_all: bool | None = None
    ) -> list[tuple[RuntimeAPI, T]]:
        """Each HAProxy's answer, by the policy (``require_all`` overrides it)."""
        require_all = self.require_all if require_all is None else require_all
        out: list[tuple[RuntimeAPI, T]] = []
        errors: list[BaseException] = []
        for rt, answer in zip(self.runtimes, answers, strict=True):
            if isinstance(answer, BaseException):
                errors.append(answer)
            else:
                out.append((rt, answer))
        for e in errors:
            if require_all or not isinstance(e, Unreachable) or not out:
                raise e
            log.warning("deciding without an HA-pair member: %s", e)
        return out

    async def on_each(
        self, action: Callable[[RuntimeAPI], Awaitable[T]], require_all: bool | None = None
    ) -> list[tuple[RuntimeAPI, T]]:
        """``action`` on every HAProxy at once; the answers by :meth:`reachable`."""
        results = await asyncio.gather(*(action(rt) for rt in self.runtimes), return_exceptions=True)
        return self.reachable(results, require_all)


def routes(row: ServerStat) -> bool:
    """Whether a worker sends new requests to the server: in rotation (UP, going down, NOLB,
    unchecked), not drained, in maintenance or down."""
    return not row.status.startswith(("DRAIN", "MAINT", "DOWN"))


class HAProxyTargets:
    """The :class:`~podgate.providers.base.TargetPool` of an HAProxy (or a pair).  ``files``
    (provisioning mode) keeps each change for the next reload, and ``on_read`` decides which
    reads save their backend's state; attach mode has neither.  ``master`` (provisioning mode):
    the master CLI, through which a drain also waits for the old workers (see
    :meth:`_held_by_old_workers`)."""

    def __init__(
        self,
        pair: HAPair,
        *,
        name: str = "haproxy",
        files: StateFiles | None = None,
        on_read: SaveOnRead | None = None,
        master: MasterAPI | None = None,
    ) -> None:
        self.name = name
        self.poll_interval = 0.0  # the runtime socket is local and cheap: the controller's period
        self.pair = pair
        self.files, self.on_read = files, on_read
        self.master = master

    def _kept(self, pool: PoolSpec) -> StateFiles | None:
        """The files that keep ``pool`` for the next reload, if this process writes them."""
        return self.files if self.files is not None and self.files.keeps(pool) else None

    async def close(self) -> None:
        """Nothing to let go: each runtime command opens its own connection."""

    async def targets(self, pool: PoolSpec) -> dict[Target, TargetState]:
        be = cfg.backend_name(pool)
        seen = await self.pair.on_each(lambda rt: rt.servers_and_admin(be))
        if self.on_read is not None and self._kept(pool):
            await self.on_read.seen(be, view_of([(rt.address, answer) for rt, answer in seen]))
        views: dict[Target, list[TargetState]] = {}
        for rt, (rows, flags) in seen:
            where = (
                f"haproxy {rt.address} backend {be}"
                if len(self.pair.runtimes) > 1
                else f"haproxy backend {be}"
            )
            for row in rows:
                target = cfg.target_of_server(row.name, row.address)
                if target is None:
                    continue
                admin, health = server_health(row, where, flags.get(row.name, 0))
                drained = admin != "ready" and row.sessions == 0
                views.setdefault(target, []).append(TargetState(admin, health, row.sessions, drained))
        out = {}
        for target, states in views.items():
            if len(states) < len(seen):  # missing on one HAProxy of the pair
                missing = TargetState(
                    "maint", TargetHealth(Health.UNREGISTERED, "not registered on every HAProxy")
                )
                states = [*states, missing]
            out[target] = combine(states)
        if self.master is not None and pool.group is None:  # any replica's drain, a provisioned pool
            await self._held_by_old_workers(cfg.frontend_name(pool), be, out)
        return out

    async def _held_by_old_workers(self, fe: str, be: str, out: dict[Target, TargetState]) -> None:
        """Drained targets that an old worker still routes to are not drained.

        A reload leaves the old worker serving one last request on each idle keep-alive
        connection (``option idle-close-on-response``), with its servers as they were at the
        reload: it runs no more checks and refuses every change ("Proxy is disabled", seen on
        2.6).  A target podgate drained after the reload is UP there, and a pod stopped on the
        strength of the new worker's drain gets that last request: a 503.  So a drain also
        waits, within its budget, until no old worker with a client connection on the pool's
        frontend has the target in rotation or a session on it; old workers exit once their
        connections close (one held by other frontends only, the webhook's TCP connections
        say, cannot route the pool's requests).  Asked only while some target reads drained,
        so reads of pools with nothing leaving cost no master call."""
        assert self.master is not None
        drained = {t for t, st in out.items() if st.drained}
        if not drained:
            return
        held: dict[Target, str] = {}
        try:
            for pid in await self.master.old_workers():
                if not await self.master.worker_connections(pid, fe):
                    continue  # stopped listening, no client left: it routes nothing more
                for row in await self.master.worker_servers(pid, be):
                    target = cfg.target_of_server(row.name, row.address)
                    if target in drained and target not in held and (routes(row) or row.sessions):
                        held[target] = (
                            f"in rotation in HAProxy worker {pid}, which a reload left serving its "
                            "connections' last requests"
                            if routes(row)
                            else f"{row.sessions} session(s) in HAProxy worker {pid}, left by a reload"
                        )
        except ProviderError as e:
            # unknown is not drained: a pod stopped while an old worker may route to it drops
            # requests; the drain budget bounds the wait
            held = dict.fromkeys(drained, f"old HAProxy workers unknown: {e}")
        for target, why in held.items():
            out[target] = dataclasses.replace(out[target], drained=False, held=why)

    async def register(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        be, options = cfg.backend_name(pool), cfg.server_options(pool.health)

        async def on(rt: RuntimeAPI) -> None:
            rows = await rt.servers(be)
            present = {cfg.target_of_server(s.name, s.address): s for s in rows}
            # the user's server-template slots first: they survive the user's reloads
            free = [s.name for s in rows if cfg.is_free_slot(s.name, s.address)]
            unchecked, back, new = [], [], []
            for t in targets:
                if t in present:
                    if present[t].status == "no check":
                        unchecked.append(present[t].name)
                    elif present[t].status.startswith(("DRAIN", "MAINT", "NOLB")):
                        back.append(present[t].name)
                elif free:
                    await rt.fill_slot(be, free.pop(0), t.ip, t.port)
                else:
                    new.append((cfg.server_name(t), str(t)))
            # each kind in one batch: a connection per command queues drain hooks behind it
            if new:
                await rt.add_servers(be, new, options)
            if unchecked:
                await rt.recheck_servers(be, unchecked)
            if back:
                await rt.ready_servers(be, back)

        await self.pair.on_each(on)
        if (files := self._kept(pool)) is not None:
            await files.persist(be, relist=True)  # added servers go into the file

    async def drain(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        be = cfg.backend_name(pool)

        async def on(rt: RuntimeAPI) -> None:
            # a provisioned backend's servers are podgate's, named by their target: no read to
            # find them (the user's backend may hold a target in a server-template slot)
            names = (
                {cfg.target_of_server(s.name, s.address): s.name for s in await rt.servers(be)}
                if pool.group is not None
                else {}
            )
            # one batch; a server already gone on this HAProxy is no error
            await rt.drain_servers(be, [names.get(t, cfg.server_name(t)) for t in targets])

        # a leaving target leaves every HAProxy that can be told, whatever the policy
        await self.pair.on_each(on, require_all=False)
        if (files := self._kept(pool)) is not None:
            # Saved soon, not waited for: the drain is made in HAProxy (what a drain hook waits
            # to see), and the servers listed stay the same.  A reload before the save lands
            # restores the server in rotation; the generation watch re-syncs within a second
            # and the plan drains it again.
            files.schedule(be, relist=False)

    async def deregister(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        be = cfg.backend_name(pool)
        if (files := self._kept(pool)) is not None:
            await files.leaving(be, {cfg.server_name(t) for t in targets})

        async def on(rt: RuntimeAPI) -> None:
            names = {cfg.target_of_server(s.name, s.address): s.name for s in await rt.servers(be)}
            present = [(t, names[t]) for t in targets if t in names]
            # podgate's own servers deleted in one batch
            await rt.remove_servers(be, [name for t, name in present if name == cfg.server_name(t)])
            for t, name in present:
                if name != cfg.server_name(t):  # a slot of the user's server-template: emptied, kept
                    await rt.empty_slot(be, name)

        await self.pair.on_each(on, require_all=False)
        if (files := self._kept(pool)) is not None:
            await files.persist(be, relist=True)
