"""The HAProxy provider: provisioned load balancers (the sandbox's "cloud") or attach mode.

Provisioning: the controller owns the configuration file.  Structure (frontends, backends,
health checks) is rendered from every handled Service and applied with a validated, seamless
reload through the master CLI; targets go through the runtime API with no reload.  A reload or
restart starts a worker with none of the dynamic servers: :meth:`generation` changes and the
controller re-syncs every Service from desired state.

Attach: the user's own HAProxy (an HA pair, say) in front of a bare-metal cluster.  A Service
annotation names an existing backend; podgate adds and removes only its own servers (named
``podgate-IP-PORT``), on every runtime address configured, and a target is healthy only when
every HAProxy says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from podgate.model import lb
from podgate.model.lb import Health, PoolSpec, Target, TargetHealth
from podgate.providers import haproxy_config as cfg
from podgate.providers.base import AdminState, Provider, ProviderError, ServiceLB, TargetState
from podgate.providers.haproxy_runtime import ADMIN_DRAIN, Master, Runtime, ServerStat, Unreachable

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
        # podgate's servers are checked: one in rotation without checks was half registered (at
        # 5,000 pods HAProxy dropped an "enable health" unanswered, then took "enable server"):
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


def _retrieved(future: asyncio.Future[None]) -> None:
    """A save nobody waits for may fail unseen: log it (its backends stay dirty for the next)."""
    if not future.cancelled() and (e := future.exception()) is not None:
        log.warning("saving HAProxy's server state failed: %s; retried with the next save", e)


#: HAProxy's view of a backend as last saved: (haproxy, server, address, UP/DOWN/..., admin flags)
View = tuple[tuple[object, ...], ...]


def _newly_up(saved: View | None, view: View) -> bool:
    """Whether ``view`` has a server UP that ``saved`` did not (by HAProxy, name and address)."""
    was_up = {row[:3] for row in saved or () if row[3] == "UP"}
    return any(row[3] == "UP" and row[:3] not in was_up for row in view)


class HAProxyProvider:
    """The target seam and provisioning (:class:`~podgate.providers.base.Provisioning`) in one:
    in attach mode :meth:`provision` only checks the user's backends exist, and the generation
    still tells the controller when the user's HAProxy reloaded."""

    #: attach mode: the Service names a backend of the user's own HAProxy
    GROUP_ANNOTATIONS = (lb.HAPROXY_BACKEND,)

    def __init__(
        self,
        runtime_addresses: Sequence[str],
        *,
        name: str = "haproxy",
        master_address: str | None = None,
        config_path: Path | None = None,
        base_config: str = "",
        validate: bool = True,
        require_all: bool = True,
    ) -> None:
        if not runtime_addresses:
            raise ValueError("HAProxy provider needs at least one runtime API address")
        self.name = name
        self.poll_interval = 0.0  # the runtime socket is local and cheap: the controller's period
        self.runtimes = [Runtime(a) for a in runtime_addresses]
        self.master = Master(master_address) if master_address else None
        self.config_path = config_path
        self.base_config = base_config
        self.validate = validate
        #: an HA pair with one HAProxy unreachable: True, pending gates wait (False, naming it);
        #: False, podgate decides on the reachable ones (and registers there)
        self.require_all = require_all
        self._services: dict[str, ServiceLB] = {}
        #: backend → its podgate servers (name, address) as the configuration file lists them
        self._servers: dict[str, list[tuple[str, str]]] = {}
        self._lock = asyncio.Lock()
        #: backend → the view of its servers (as ``targets`` reads them) last saved
        self._saved: dict[str, View] = {}
        #: backends changed since the last save → whether their server list may have changed too
        self._dirty: dict[str, bool] = {}
        #: the save that will take the changes made now (see :meth:`_persist`)
        self._next_save: asyncio.Future[None] | None = None
        self._initialised = False
        self.reloads = 0

    def provider(self) -> Provider:
        """The controller's record: no group binding, hence no finalizer (provisioned backends
        are podgate's own and rendered again at start; attached ones keep the user's servers)."""
        return Provider(self, self.GROUP_ANNOTATIONS, provisioning=self)

    @property
    def owns_config(self) -> bool:
        """Provisioning mode: podgate renders the configuration and reloads through the master."""
        return self.master is not None and self.config_path is not None

    def _reachable(
        self, answers: Sequence[T | BaseException], require_all: bool | None = None
    ) -> list[tuple[Runtime, T]]:
        """Each HAProxy's answer, by the HA-pair policy: with ``require_all`` any failure is
        the error; otherwise an unreachable one is left out, unless every one is."""
        require_all = self.require_all if require_all is None else require_all
        out: list[tuple[Runtime, T]] = []
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

    async def _on_each(
        self, action: Callable[[Runtime], Awaitable[T]], require_all: bool | None = None
    ) -> list[tuple[Runtime, T]]:
        results = await asyncio.gather(*(action(rt) for rt in self.runtimes), return_exceptions=True)
        return self._reachable(results, require_all)

    async def close(self) -> None:
        """Nothing to let go: each runtime command opens its own connection."""

    # -- structure ----------------------------------------------------------------------------
    async def provision(self, service_key: str, pools: Sequence[PoolSpec], address: str | None) -> str | None:
        if any(p.group for p in pools):
            missing = [p.group.id for p in pools if p.group]
            backends = set((await self._on_each(lambda rt: rt.backends()))[0][1])
            absent = [b for b in missing if b not in backends]
            if absent:
                raise ProviderError(f"HAProxy has no backend {', '.join(map(repr, absent))} to attach to")
            return None
        if not self.owns_config:
            raise ProviderError(
                "this HAProxy provider is in attach mode: annotate the Service with "
                "podgate.dev/haproxy-backend naming an existing backend"
            )
        if address is None:
            raise ProviderError("no load-balancer address for the Service")
        async with self._lock:
            self._services[service_key] = ServiceLB(address, list(pools))
            await self.apply()
        return address

    async def release(self, service_key: str) -> None:
        if not self.owns_config:
            return
        async with self._lock:
            if self._services.pop(service_key, None) is not None or not self._initialised:
                await self.apply()

    async def sync_all(self, services: Mapping[str, ServiceLB]) -> None:
        """Set the whole structure at once (controller start): no Service flickers out while
        the others are reconciled one by one."""
        if not self.owns_config:
            return
        async with self._lock:
            self._services = dict(services)
            await self.apply()

    async def apply(self) -> None:
        assert self.config_path is not None and self.master is not None
        mark = cfg.STRUCTURE_MARK + cfg.structure_id(self.base_config, self._services)
        try:
            with self.config_path.open() as f:  # the first line only: the file lists every target
                current = f.readline().rstrip("\n")
        except OSError:
            current = ""
        self._initialised = True
        if current == mark:
            return
        # Carry the registered targets and their state across the reload.
        self._servers = {}
        for service_lb in self._services.values():
            for pool in service_lb.pools:
                be = cfg.backend_name(pool)
                with contextlib.suppress(ProviderError):  # a new backend has no servers yet
                    await self._save_state(be)
                    self._servers[be] = await self._listed(be)
        text = self._render()
        await self._validate(text)
        self._write(text)
        before = await self._identity()
        await self.master.reload()
        self.reloads += 1
        await self._await_new_worker(before)
        log.info("HAProxy reloaded with %d Services", len(self._services))

    # -- what a reload starts from --------------------------------------------------------------
    # Any reload (podgate's, SIGUSR2 to the master, someone's `reload` on the master CLI) starts
    # a worker from the configuration file alone.  So the file lists every target as a server
    # line, rewritten (never reloaded) when targets change, and each backend's state file holds
    # HAProxy's own view of them (`load-server-state-from-file local`): the new worker starts
    # with every target, UP ones UP, draining ones draining.  A server is written to the file
    # only after its state is saved, and a gate reads health before the state is saved, so a
    # reload can never bring back a target in a state podgate has not seen saved.

    @property
    def state_dir(self) -> Path:
        assert self.config_path is not None
        return self.config_path.with_name("server-state")

    async def _listed(self, backend: str) -> list[tuple[str, str]]:
        return [
            (s.name, s.address)
            for s in await self.runtimes[0].servers(backend)
            if cfg.target_of_server(s.name, s.address)
        ]

    async def _save_state(self, backend: str) -> None:
        """HAProxy's own state of the backend's servers, where the next worker will load it."""
        text = await self.runtimes[0].command(f"show servers state {backend}")
        if not text.startswith("1\n"):  # the format's version line; else HAProxy's complaint
            raise ProviderError(f"HAProxy show servers state {backend}: {text.strip()[:200]}")
        self.state_dir.mkdir(exist_ok=True)
        tmp = self.state_dir / f".{backend}.new"
        tmp.write_text(text)
        os.replace(tmp, self.state_dir / backend)

    def _render(self) -> str:
        mark = cfg.STRUCTURE_MARK + cfg.structure_id(self.base_config, self._services)
        return mark + "\n" + cfg.render(self.base_config, self._services, self._servers, str(self.state_dir))

    def _write(self, text: str) -> None:
        """Replace the file in one step: a reload never reads half of it."""
        assert self.config_path is not None
        tmp = self.config_path.with_suffix(".new")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    async def _targets_changed(self, pool: PoolSpec) -> None:
        """After a register or removal: save the backend's state, then list its servers in the
        configuration file (no reload)."""
        if not self._owns_files(pool):
            return
        await self._persist(cfg.backend_name(pool), relist=True)

    async def _persist(self, backend: str, relist: bool) -> None:
        """Save ``backend``'s state (and with ``relist``, list its servers in the configuration
        file), returning once a save that started after this call is done.  Changes made while
        a save waits for the lock or runs are taken together by the next one: a rollout of
        5,000 pods made thousands of drains, each saving its backend and rendering every
        backend's servers under the provider's one lock, and the drain hooks queued there for
        tens of seconds (``bench/scale.py``).  A failed save keeps its backends for the next."""
        await asyncio.shield(self._schedule_save(backend, relist))

    def _schedule_save(self, backend: str, relist: bool) -> asyncio.Future[None]:
        """The save that will include ``backend`` (started after this call)."""
        self._dirty[backend] = self._dirty.get(backend, False) or relist
        if self._next_save is None:
            self._next_save = asyncio.ensure_future(self._save_dirty())
            self._next_save.add_done_callback(_retrieved)
        return self._next_save

    async def _save_dirty(self) -> None:
        async with self._lock:
            self._next_save = None  # changes made from now on wait for the next save
            dirty, self._dirty = self._dirty, {}

            async def save(be: str, relist: bool) -> list[tuple[str, str]] | None:
                await self._save_state(be)
                return await self._listed(be) if relist else None

            # side by side (the CLI slots bound them): one after the other, 50 backends dirty
            # in a rollout were 100 round trips in a row, and drain hooks waited for them
            results = await asyncio.gather(
                *(save(be, rl) for be, rl in dirty.items()), return_exceptions=True
            )
            relisted, failure = False, None
            for (be, relist), result in zip(dirty.items(), results, strict=True):
                if isinstance(result, BaseException):
                    if "Can't find backend" in str(result):
                        continue  # released meanwhile: nothing left to save, never again
                    self._dirty[be] = self._dirty.get(be, False) or relist  # for the next save
                    failure = failure or result
                elif result is not None and result != self._servers.get(be, []):
                    self._servers[be] = result
                    relisted = True
            if relisted:
                self._write(self._render())
            if failure is not None:
                raise failure

    def _owns_files(self, pool: PoolSpec) -> bool:
        """Whether this process keeps the pool's configuration and state files: in provisioning
        mode, once it has set the structure (the leader).  Another replica drains a target from
        the drain endpoint through the runtime API only: it never rendered the structure, so a
        file it wrote would drop every Service, and the leader saves the state on its next read."""
        return self.owns_config and pool.group is None and self._initialised

    async def _validate(self, text: str) -> None:
        if not self.validate:
            return
        with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as f:
            f.write(text)
        try:
            proc = await asyncio.create_subprocess_exec(
                "haproxy",
                "-c",
                "-q",
                "-f",
                f.name,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await proc.communicate()
        finally:
            os.unlink(f.name)
        if proc.returncode != 0:
            raise ProviderError(
                f"rendered HAProxy configuration is invalid: {out.decode(errors='replace')[-500:]}"
            )

    async def _identity(self) -> str:
        with contextlib.suppress(ProviderError):
            return await self.runtimes[0].identity()
        return ""

    async def _await_new_worker(self, before: str, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            now = await self._identity()
            if now and now != before:
                return
            await asyncio.sleep(0.05)
        raise ProviderError(f"HAProxy did not start a new worker within {timeout:.0f}s of the reload")

    async def generation(self) -> str:
        """The workers' identities; with the ``reachable`` policy an unreachable member counts
        as one more state, so its return (a fresh worker, no dynamic servers) is a change."""
        answers = await asyncio.gather(*(rt.identity() for rt in self.runtimes), return_exceptions=True)
        self._reachable(answers)
        return ",".join(a if isinstance(a, str) else "unreachable" for a in answers)

    # -- targets ------------------------------------------------------------------------------
    async def targets(self, pool: PoolSpec) -> dict[Target, TargetState]:
        be = cfg.backend_name(pool)
        views: dict[Target, list[TargetState]] = {}

        async def read(rt: Runtime) -> tuple[list[ServerStat], dict[str, int]]:
            return await rt.servers_and_admin(be)

        seen = await self._on_each(read)
        if self._owns_files(pool):
            # saved after the read: any health a gate is decided on is what a reload restores;
            # only when HAProxy's view changed since the last save (pending gates of 50 Services
            # read every 0.1 s were 500 saves a second, each under the provider's lock), and
            # only a change a gate can be decided on: UP, DOWN, MAINT, DRAIN, admin flags.  A
            # check's progress ("DOWN 1/3" → "DOWN 2/3", L4CON → L4OK) is not: a reload that
            # restores an older count only takes a pending server a check or two longer, and
            # saving it made every read of a backend in health checking a save too (5,000 pods)
            view = tuple(
                (rt.address, r.name, r.address, r.status.split(" ", 1)[0], flags.get(r.name))
                for rt, (rows, flags) in seen
                for r in rows
            )
            saved = self._saved.get(be)
            if saved != view:
                if _newly_up(saved, view):
                    # a gate may open on this read: only once a reload would restore it
                    await self._persist(be, relist=False)
                    self._saved[be] = view
                else:
                    # nothing opens on it (a drain, a server down or gone): saved soon, not
                    # waited for; drain hooks waited for two saves each and missed their budget
                    def saved_as(future: asyncio.Future[None], view: View = view) -> None:
                        if not future.cancelled() and future.exception() is None:
                            self._saved[be] = view

                    self._schedule_save(be, relist=False).add_done_callback(saved_as)
        for rt, (rows, flags) in seen:
            where = (
                f"haproxy {rt.address} backend {be}" if len(self.runtimes) > 1 else f"haproxy backend {be}"
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
                states = [
                    *states,
                    TargetState(
                        "maint", TargetHealth(Health.UNREGISTERED, "not registered on every HAProxy")
                    ),
                ]
            out[target] = combine(states)
        return out

    async def register(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        be, options = cfg.backend_name(pool), cfg.server_options(pool.health)

        async def on(rt: Runtime) -> None:
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
            # each kind in one batch: a connection per command queued drain hooks behind it
            if new:
                await rt.add_servers(be, new, options)
            if unchecked:
                await rt.recheck_servers(be, unchecked)
            if back:
                await rt.ready_servers(be, back)

        await self._on_each(on)
        await self._targets_changed(pool)

    async def drain(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        be = cfg.backend_name(pool)

        async def on(rt: Runtime) -> None:
            names = {cfg.target_of_server(s.name, s.address): s.name for s in await rt.servers(be)}
            # one batch; a server already gone on this HAProxy is no error
            await rt.drain_servers(be, [names.get(t, cfg.server_name(t)) for t in targets])

        # a leaving target leaves every HAProxy that can be told, whatever the policy
        await self._on_each(on, require_all=False)
        if self._owns_files(pool):
            # Saved soon, not waited for: the drain is made in HAProxy (what a drain hook waits
            # to see), and the servers listed stay the same.  Waiting made 3,278 of 5,000 hooks
            # miss their 3 s budget in a 5,000-pod restart, queued behind saves of 50 backends.
            # A reload before the save lands restores the server in rotation; the generation
            # watch re-syncs within a second and the plan drains it again.
            self._schedule_save(cfg.backend_name(pool), relist=False)

    async def deregister(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        be = cfg.backend_name(pool)
        if self._owns_files(pool):
            # out of the file first: a reload in between leaves out a target that is leaving
            gone = {cfg.server_name(t) for t in targets}
            async with self._lock:
                self._servers[be] = [s for s in self._servers.get(be, []) if s[0] not in gone]
                self._write(self._render())

        async def on(rt: Runtime) -> None:
            names = {cfg.target_of_server(s.name, s.address): s.name for s in await rt.servers(be)}
            for t in targets:
                name = names.get(t)
                if name == cfg.server_name(t):
                    await rt.remove(be, name)
                elif name is not None:  # a slot of the user's server-template: emptied, kept
                    await rt.empty_slot(be, name)

        await self._on_each(on, require_all=False)
        await self._targets_changed(pool)
