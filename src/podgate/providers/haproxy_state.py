"""What a reload of a provisioned HAProxy starts from: the configuration file and the state files.

Any reload (podgate's, SIGUSR2 to the master, someone's ``reload`` on the master CLI) starts a
worker from the configuration file alone.  So the file lists every target as a server line,
rewritten (never reloaded) when targets change, and each backend's state file holds HAProxy's own
view of them (``load-server-state-from-file local``): the new worker starts with every target, UP
ones UP, draining ones draining.  A server is written to the file only after its state is saved,
and a gate opens only on health already saved (:class:`SaveOnRead`), so a reload never brings
back a target in a state podgate has not seen saved.

Only the process that set the structure writes these files (:attr:`StateFiles.active`: the
leader, after its first ``sync_all``).  Another replica drains a target from the drain endpoint
through the runtime API only: it never rendered the structure, so a file it wrote would drop every
Service, and the leader saves the state on its next read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from podgate.model.lb import PoolSpec
from podgate.providers import haproxy_config as cfg
from podgate.providers.base import ProviderError, ServiceLB
from podgate.providers.haproxy_runtime import NoSuchBackend, RuntimeAPI, ServerStat, state_columns

log = logging.getLogger(__name__)

#: HAProxy's view of a backend as last saved: (haproxy, server, address, UP/DOWN/..., admin flags)
View = tuple[tuple[object, ...], ...]


def view_of(seen: Sequence[tuple[str, tuple[list[ServerStat], dict[str, int]]]]) -> View:
    """What of a read (each HAProxy's address, rows and admin flags) a gate can be decided on.
    A check's progress ("DOWN 1/3" → "DOWN 2/3", L4CON → L4OK) is left out: a reload that
    restores an older count only takes a pending server a check or two longer, and counting it
    would make every read of a backend in health checking a change to save."""
    return tuple(
        (address, r.name, r.address, r.status.split(" ", 1)[0], flags.get(r.name))
        for address, (rows, flags) in seen
        for r in rows
    )


def newly_up(saved: View | None, view: View) -> bool:
    """Whether ``view`` has a server UP that ``saved`` did not (by HAProxy, name and address)."""
    was_up = {row[:3] for row in saved or () if row[3] == "UP"}
    return any(row[3] == "UP" and row[:3] not in was_up for row in view)


def servers_in_state(text: str) -> list[tuple[str, str]] | None:
    """Each server's (name, ``IP:port``) in a ``show servers state BACKEND`` answer (its
    ``srv_name``, ``srv_addr`` and ``srv_port``; verified on HAProxy 2.6); None when a server's
    address is not IPv4 or the columns are not there (the caller reads ``show stat`` then)."""
    rows = state_columns(text, "srv_name", "srv_addr", "srv_port")
    if rows is None or any(":" in addr or not port.isdigit() for _, addr, port in rows):
        return None
    return [(name, f"{addr}:{port}") for name, addr, port in rows]


def _retrieved(future: asyncio.Future[None]) -> None:
    """A save nobody waits for may fail unseen: log it (its backends stay dirty for the next)."""
    if not future.cancelled() and (e := future.exception()) is not None:
        log.warning("saving HAProxy's server state failed: %s; retried with the next save", e)


class StateFiles:
    """The configuration file (structure and server lines) and the per-backend state files of
    one provisioned HAProxy, with the one lock every writer of them takes.

    Saves are shared: a change asks for a save that starts after it (:meth:`schedule`), and
    changes made while that save waits for the lock are taken by it together, their backends
    saved side by side; many drains at once would otherwise queue a save each behind the lock.
    A failed save keeps its backends for the next; a backend HAProxy no longer has is dropped."""

    def __init__(self, runtime: RuntimeAPI, config_path: Path, base_config: str = "") -> None:
        #: the HAProxy whose state is saved (the first of a pair: they were told the same)
        self.runtime = runtime
        self.config_path, self.base_config = config_path, base_config
        self.lock = asyncio.Lock()
        #: the structure last set (:meth:`set_structure`)
        self.services: dict[str, ServiceLB] = {}
        #: backend → its podgate servers (name, address) as the configuration file lists them
        self.servers: dict[str, list[tuple[str, str]]] = {}
        #: this process set the structure, so it keeps the files (see the module's docstring)
        self.active = False
        #: backends changed since the last save → whether their server list may have changed too
        self._dirty: dict[str, bool] = {}
        #: the save that will take the changes made now
        self._next_save: asyncio.Future[None] | None = None
        #: each pool's block of the file as last rendered (``haproxy_config.render``)
        self._blocks: cfg.Blocks = {}

    @property
    def state_dir(self) -> Path:
        return self.config_path.with_name("server-state")

    def keeps(self, pool: PoolSpec) -> bool:
        """Whether this process writes the pool's files: a provisioned pool, once it is active."""
        return pool.group is None and self.active

    @property
    def saving(self) -> bool:
        """A save is asked for and not done yet."""
        return self._next_save is not None

    # -- the structure -------------------------------------------------------------------------
    def set_structure(self, services: Mapping[str, ServiceLB]) -> bool:
        """Take ``services`` as the structure, and this process as the files' writer; whether
        the file on disk has another structure (then it must be rendered and reloaded)."""
        self.services = dict(services)
        self.active = True
        try:
            with self.config_path.open() as f:  # the first line only: the file lists every target
                current = f.readline().rstrip("\n")
        except OSError:
            current = ""
        return current != self._mark()

    async def carry(self) -> None:
        """Before a reload: each backend's state saved and its servers listed, so the new worker
        starts with them.  Under :attr:`lock`, held by the caller."""
        self.servers = {}
        for service_lb in self.services.values():
            for pool in service_lb.pools:
                be = cfg.backend_name(pool)
                with contextlib.suppress(ProviderError):  # a new backend has no servers yet
                    self.servers[be] = await self._listed(be, await self.save(be))

    def _mark(self) -> str:
        return cfg.STRUCTURE_MARK + cfg.structure_id(self.base_config, self.services)

    def render(self) -> str:
        return (
            self._mark()
            + "\n"
            + cfg.render(self.base_config, self.services, self.servers, str(self.state_dir), self._blocks)
        )

    def write(self, text: str | None = None) -> None:
        """Replace the file in one step (a reload never reads half of it); by default with
        what :meth:`render` gives now."""
        tmp = self.config_path.with_suffix(".new")
        tmp.write_text(self.render() if text is None else text)
        os.replace(tmp, self.config_path)

    # -- targets -------------------------------------------------------------------------------
    async def leaving(self, backend: str, names: set[str]) -> None:
        """Servers about to be removed leave the file first: a reload in between leaves out a
        target that is leaving."""
        async with self.lock:
            self.servers[backend] = [s for s in self.servers.get(backend, []) if s[0] not in names]
            self.write()

    async def _listed(self, backend: str, state: str) -> list[tuple[str, str]]:
        """podgate's servers of the backend, (name, address), from the state just saved: the
        servers the next worker loads are the ones to list.  Read from ``show stat`` only when
        an address is not IPv4 (the state file gives address and port apart)."""
        listed = servers_in_state(state)
        if listed is None:
            listed = [(s.name, s.address) for s in await self.runtime.servers(backend)]
        return [(name, address) for name, address in listed if cfg.target_of_server(name, address)]

    async def save(self, backend: str) -> str:
        """HAProxy's own state of the backend's servers, where the next worker will load it;
        the state saved."""
        text = await self.runtime.server_state(backend)
        self.state_dir.mkdir(exist_ok=True)
        tmp = self.state_dir / f".{backend}.new"
        tmp.write_text(text)
        os.replace(tmp, self.state_dir / backend)
        return text

    async def persist(self, backend: str, relist: bool) -> None:
        """Save ``backend``'s state (and with ``relist``, list its servers in the configuration
        file); returns once a save that started after this call is done."""
        await asyncio.shield(self.schedule(backend, relist))

    def schedule(self, backend: str, relist: bool) -> asyncio.Future[None]:
        """The save that will include ``backend`` (started after this call); nobody need wait."""
        self._dirty[backend] = self._dirty.get(backend, False) or relist
        if self._next_save is None:
            self._next_save = asyncio.ensure_future(self._save_dirty())
            self._next_save.add_done_callback(_retrieved)
        return self._next_save

    async def _save_dirty(self) -> None:
        async with self.lock:
            self._next_save = None  # changes made from now on wait for the next save
            dirty, self._dirty = self._dirty, {}

            async def save(be: str, relist: bool) -> list[tuple[str, str]] | None:
                state = await self.save(be)
                return await self._listed(be, state) if relist else None

            # side by side (the CLI slots bound them): one after the other, a rollout's dirty
            # backends were as many round trips in a row, and drain hooks waited for them
            results = await asyncio.gather(
                *(save(be, rl) for be, rl in dirty.items()), return_exceptions=True
            )
            relisted, failure = False, None
            for (be, relist), result in zip(dirty.items(), results, strict=True):
                if isinstance(result, NoSuchBackend):
                    continue  # released meanwhile: nothing left to save, never again
                if isinstance(result, BaseException):
                    self._dirty[be] = self._dirty.get(be, False) or relist  # for the next save
                    failure = failure or result
                elif result is not None and result != self.servers.get(be, []):
                    self.servers[be] = result
                    relisted = True
            if relisted:
                self.write()
            if failure is not None:
                raise failure


class Saves(Protocol):
    """What :class:`SaveOnRead` asks of the files (:class:`StateFiles`)."""

    async def persist(self, backend: str, relist: bool) -> None: ...

    def schedule(self, backend: str, relist: bool) -> asyncio.Future[None]: ...


class SaveOnRead:
    """Which health reads save their backend's state, and which of them wait for the save.

    A read is what tells podgate a server's health changed (HAProxy changes it on its own), so
    a read that saw a change a gate can be decided on asks for a save; one that saw none asks
    for nothing.  It waits for the save only when a server is newly UP: a gate may open on that
    read, and only once a reload would restore it.  Anything else (a drain, a server down or
    gone) is saved soon and not waited for: drain hooks waiting for saves missed their budget
    (bench/results/scale.md)."""

    def __init__(self, files: Saves) -> None:
        self.files = files
        #: backend → the view last saved
        self._saved: dict[str, View] = {}

    async def seen(self, backend: str, view: View) -> None:
        """A read of ``backend`` saw ``view``; returns when a gate may be decided on it."""
        saved = self._saved.get(backend)
        if saved == view:
            return
        if newly_up(saved, view):
            await self.files.persist(backend, relist=False)
            self._saved[backend] = view
            return

        def saved_as(future: asyncio.Future[None]) -> None:
            if not future.cancelled() and future.exception() is None:
                self._saved[backend] = view

        self.files.schedule(backend, relist=False).add_done_callback(saved_as)
