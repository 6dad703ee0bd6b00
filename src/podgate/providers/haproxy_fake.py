"""HAProxy in memory, behind :class:`~podgate.providers.haproxy_runtime.RuntimeAPI` and
:class:`~podgate.providers.haproxy_runtime.MasterAPI`, for unit tests of the provider's parts.

It answers as HAProxy 2.6 does where the provider relies on it (``tests/contract/test_haproxy_cli.py``
holds it to the real one): added servers start DOWN with checks on; a server put to drain whose
checks fail reads DOWN in ``show stat`` and only its admin flags tell the drain; a server that
exists already is no error to add; a drain names the servers it did not find; a reload starts a
worker from the configuration file alone, with the state files it names.  Health is what a test
sets (:meth:`FakeRuntime.set_health`): no checks run.  Every call is recorded, and a test can
make calls fail, slow them down or cut the HAProxy off.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from podgate.providers.base import ProviderError
from podgate.providers.fake import raise_scripted
from podgate.providers.haproxy_runtime import (
    ADMIN_DRAIN,
    MasterAPI,
    NoSuchBackend,
    RuntimeAPI,
    ServerStat,
    Unreachable,
    parse_admin_states,
)

#: ``srv_admin_state`` flag of a server forced into maintenance
ADMIN_MAINT = 0x01
_FORCED_DRAIN = 0x08
#: the columns of ``show servers state`` the fake writes (HAProxy writes more, after these)
STATE_HEADER = "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_port"
_pids = itertools.count(4000)


@dataclass
class FakeServer:
    address: str  # ip:port
    #: the operational word of ``show stat`` while in rotation: UP, DOWN, "DOWN 1/3" …
    op: str = "DOWN"
    check: str = "INI"
    checked: bool = True
    admin: int = 0
    sessions: int = 0

    @property
    def status(self) -> str:
        if self.admin & ADMIN_MAINT:
            return "MAINT"
        if not self.checked:
            return "no check"
        if self.admin & ADMIN_DRAIN and self.op.startswith("UP"):
            return "DRAIN"
        return self.op


def _start_down(server: FakeServer) -> None:
    """``enable health``, ``enable server`` (out of maintenance and drain), ``health down``."""
    server.checked, server.op, server.admin = True, "DOWN", server.admin & ~(ADMIN_MAINT | ADMIN_DRAIN)


@dataclass
class FakeRuntime:
    """One HAProxy process's runtime API (:class:`~podgate.providers.haproxy_runtime.RuntimeAPI`)."""

    address: str = "fake-haproxy"
    #: backend → server name → server, in the order HAProxy lists them
    table: dict[str, dict[str, FakeServer]] = field(default_factory=dict)
    pid: int = field(default_factory=lambda: next(_pids))
    start: int = 1
    #: every call: (method, backend)
    calls: list[tuple[str, str]] = field(default_factory=list)
    #: method → (the error its next calls raise, how many)
    failures: dict[str, tuple[ProviderError, int]] = field(default_factory=dict)
    #: seconds each call takes (a loaded HAProxy's round trip)
    delay: float = 0.0
    #: method → an event its calls wait for before they are answered (a test holds them)
    held: dict[str, asyncio.Event] = field(default_factory=dict)
    #: the process is gone: every call is :class:`Unreachable`
    down: bool = False

    # -- what a test sets ----------------------------------------------------------------------
    def add_backend(self, backend: str, servers: dict[str, FakeServer] | None = None) -> None:
        self.table[backend] = dict(servers or {})

    def server(self, backend: str, name: str) -> FakeServer:
        return self.table[backend][name]

    def set_health(self, backend: str, name: str, op: str, check: str = "L4OK") -> None:
        server = self.server(backend, name)
        server.op, server.check = op, check

    def fail(self, method: str, error: ProviderError, times: int = 1) -> None:
        self.failures[method] = (error, times)

    def restart(self, config: str = "", state_dir: Path | None = None) -> None:
        """A new worker from ``config`` alone: its backends and server lines, each server's
        health and admin state from ``state_dir/BACKEND`` when saved there (else UP, never
        checked); dynamic servers added since are gone."""
        self.pid, self.start = next(_pids), self.start + 1
        self.table = {}
        backend = None
        for line in config.splitlines():
            words = line.split()
            if words[:1] == ["backend"]:
                backend = words[1]
                self.table[backend] = {}
            elif words[:1] == ["server"] and backend is not None:
                self.table[backend][words[1]] = FakeServer(words[2], op="UP", check="INI")
        for backend, servers in self.table.items():
            saved = state_dir / backend if state_dir is not None else None
            if saved is None or not saved.exists():
                continue
            text = saved.read_text()
            ops = {f[3]: f[5] for f in (ln.split() for ln in text.splitlines()[2:]) if len(f) > 5}
            for name, admin in parse_admin_states(text).items():
                if name in servers:
                    up = ops.get(name) == "2"
                    servers[name].op, servers[name].check = ("UP", "L4OK") if up else ("DOWN", "L4CON")
                    servers[name].admin = admin

    async def _call(self, method: str, backend: str = "") -> None:
        self.calls.append((method, backend))
        if self.delay:
            await asyncio.sleep(self.delay)
        if (gate := self.held.get(method)) is not None:
            await gate.wait()
        if self.down:
            raise Unreachable(f"HAProxy at {self.address} unreachable: ConnectionRefusedError")
        raise_scripted(self.failures, method)

    def _backend(self, backend: str) -> dict[str, FakeServer]:
        if backend not in self.table:
            raise NoSuchBackend(f"HAProxy has no backend {backend!r}")
        return self.table[backend]

    def _existing(self, backend: str, name: str, verb: str) -> FakeServer:
        servers = self.table.get(backend, {})
        if name not in servers:
            raise ProviderError(f"HAProxy refused {verb} {backend}/{name}: No such server.")
        return servers[name]

    # -- reads ---------------------------------------------------------------------------------
    async def servers(self, backend: str) -> list[ServerStat]:
        await self._call("servers", backend)
        return self._stats(backend)

    def _stats(self, backend: str) -> list[ServerStat]:
        return [
            ServerStat(backend, name, s.address, s.status, s.check, "", "", s.sessions)
            for name, s in self._backend(backend).items()
        ]

    async def servers_and_admin(self, backend: str) -> tuple[list[ServerStat], dict[str, int]]:
        await self._call("servers_and_admin", backend)
        return self._stats(backend), {name: s.admin for name, s in self._backend(backend).items()}

    async def server_state(self, backend: str) -> str:
        await self._call("server_state", backend)
        if backend not in self.table:
            raise NoSuchBackend(f"HAProxy show servers state {backend}: Can't find backend.")
        be_id = list(self.table).index(backend) + 2
        rows = [
            f"{be_id} {backend} {i} {name} {s.address.rpartition(':')[0]} "
            f"{2 if s.op.startswith('UP') else 0} {s.admin} {s.address.rpartition(':')[2]}\n"
            for i, (name, s) in enumerate(self.table[backend].items(), start=1)
        ]
        return "1\n" + STATE_HEADER + "\n" + "".join(rows)

    async def backends(self) -> list[str]:
        await self._call("backends")
        return list(self.table)

    async def identity(self) -> str:
        await self._call("identity")
        return f"{self.pid}/{self.start}"

    # -- changes -------------------------------------------------------------------------------
    async def add_servers(self, backend: str, servers: Sequence[tuple[str, str]], options: str) -> None:
        await self._call("add_servers", backend)
        if backend not in self.table:
            raise ProviderError(f"HAProxy add server {backend}/{servers[0][0]}: No such backend.")
        for name, address in servers:
            _start_down(self.table[backend].setdefault(name, FakeServer(address)))

    async def fill_slot(self, backend: str, server: str, ip: str, port: int) -> None:
        await self._call("fill_slot", backend)
        slot = self._existing(backend, server, "set server")
        slot.address = f"{ip}:{port}"
        _start_down(slot)

    async def empty_slot(self, backend: str, server: str) -> None:
        await self._call("empty_slot", backend)
        slot = self._existing(backend, server, "set server")
        slot.admin |= ADMIN_MAINT
        slot.address = "0.0.0.0:1"

    async def recheck_servers(self, backend: str, servers: Sequence[str]) -> None:
        await self._call("recheck_servers", backend)
        for name in servers:
            _start_down(self._existing(backend, name, "enable health"))

    async def ready_servers(self, backend: str, servers: Sequence[str]) -> None:
        await self._call("ready_servers", backend)
        for name in servers:
            s = self._existing(backend, name, "set server")
            s.admin &= ~(ADMIN_MAINT | ADMIN_DRAIN)

    async def drain_servers(self, backend: str, servers: Sequence[str]) -> list[str]:
        await self._call("drain_servers", backend)
        present = self.table.get(backend, {})
        for name in servers:
            if name in present:
                present[name].admin |= _FORCED_DRAIN
        return [name for name in servers if name not in present]

    async def remove_servers(self, backend: str, servers: Sequence[str]) -> None:
        await self._call("remove_servers", backend)
        for name in servers:
            self.table.get(backend, {}).pop(name, None)


@dataclass
class FakeMaster:
    """The master CLI (:class:`~podgate.providers.haproxy_runtime.MasterAPI`): a reload starts
    a new worker in each runtime from the configuration file, with the state directory the file
    names (``server-state-base``)."""

    config_path: Path
    runtimes: Sequence[FakeRuntime]
    reloads: int = 0
    #: the workers reloads left finishing their connections: pid → the first runtime's servers
    #: as that worker last held them (frozen: an old worker runs no checks and takes no changes)
    old: dict[int, list[ServerStat]] = field(default_factory=dict)
    #: the client connections each old worker still holds (every frontend alike); one each
    #: unless a test says otherwise
    connections: dict[int, int] = field(default_factory=dict)

    async def reload(self) -> None:
        self.reloads += 1
        if self.runtimes:
            first = self.runtimes[0]
            self.old[first.pid] = [row for backend in first.table for row in first._stats(backend)]
            self.connections[first.pid] = 1
        config = self.config_path.read_text()
        base = next(
            (ln.split()[1] for ln in config.splitlines() if ln.split()[:1] == ["server-state-base"]), None
        )
        for rt in self.runtimes:
            rt.restart(config, Path(base) if base else None)

    async def old_workers(self) -> list[int]:
        return list(self.old)

    async def worker_connections(self, pid: int, frontend: str) -> int:
        return self.connections.get(pid, 0) if pid in self.old else 0

    async def worker_servers(self, pid: int, backend: str) -> list[ServerStat]:
        return [row for row in self.old.get(pid, []) if row.backend == backend]


if TYPE_CHECKING:  # the fakes stand where the protocols are asked for
    _runtime: RuntimeAPI = FakeRuntime()
    _master: MasterAPI = FakeMaster(Path("haproxy.cfg"), [])
