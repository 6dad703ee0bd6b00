"""The HAProxy seam: its runtime API (stats socket) and master CLI, as plain async calls.

Nothing above this module builds a socket line.  Addresses are a unix socket path or
``host:port`` for a TCP stats socket; each command uses its own connection (non-interactive
mode: HAProxy answers and closes), so a reload never strands a half-read answer.  At most
:data:`CONNECTIONS` of them are open to one HAProxy at a time.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import weakref
from dataclasses import dataclass

from podgate.providers.base import ProviderError

_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


def check_name(name: str) -> str:
    """Proxy and server names go into command lines verbatim: refuse anything but HAProxy's
    own name characters (no '/', no spaces, no ';')."""
    if not _NAME.match(name):
        raise ProviderError(f"{name!r} is not a valid HAProxy name")
    return name


class Unreachable(ProviderError):
    """No connection to this HAProxy at all (as opposed to a command it refused)."""


async def _connect(address: str, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(timeout):
        if address.startswith("/") or address.startswith("unix@"):
            return await asyncio.open_unix_connection(address.removeprefix("unix@"))
        host, _, port = address.removeprefix("ipv4@").rpartition(":")
        return await asyncio.open_connection(host, int(port))


#: CLI connections one process keeps open to one HAProxy at once.  HAProxy's stats socket takes
#: about 20 at a time (its default ``maxconn`` of 10 and a backlog) and drops the rest unanswered:
#: measured on 2.6, 20 commands at once all answered, 100 at once lost 79 ("Connection lost"),
#: and at 5,000 pods drains and reconciles failed on it.  Two replicas at 10 stay within the 20;
#: at 5 the restart of 5,000 pods queued its drain hooks for 7.7 s at the median.
CONNECTIONS = 10
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _slot(address: str) -> asyncio.Semaphore:
    """The connection slots to ``address`` on the running loop (the webhook's thread has its own)."""
    per_loop = _slots.setdefault(asyncio.get_running_loop(), {})
    if address not in per_loop:
        per_loop[address] = asyncio.Semaphore(CONNECTIONS)
    return per_loop[address]


async def send(address: str, line: str, timeout: float = 5.0, half_close: bool = False) -> str:
    """One command, its whole answer.  The master CLI answers only after the client's
    half-close (shutdown of its write side); the runtime API answers either way."""
    async with _slot(address):
        return await _send(address, line, timeout, half_close)


async def _send(address: str, line: str, timeout: float, half_close: bool) -> str:
    try:
        reader, writer = await _connect(address, timeout)
    except (OSError, TimeoutError) as e:
        raise Unreachable(f"HAProxy at {address} unreachable: {e or type(e).__name__}") from None
    try:
        writer.write(line.encode() + b"\n")
        await writer.drain()
        if half_close and writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(timeout):
            return (await reader.read()).decode(errors="replace")
    except (OSError, TimeoutError) as e:
        raise ProviderError(
            f"HAProxy at {address}: {line.split()[0]} failed: {e or type(e).__name__}"
        ) from None
    finally:
        writer.close()


@dataclass(frozen=True)
class ServerStat:
    """One row of ``show stat``: a server as HAProxy reports it."""

    backend: str
    name: str
    address: str
    status: str  # UP, DOWN, UP 1/3, DOWN 2/3, MAINT, DRAIN, NOLB, no check
    check_status: str  # L4OK, L7OK, L4CON, L7STS, INI, ... ('* ' = check in progress stripped)
    check_desc: str
    last_check: str
    sessions: int


def parse_stat(text: str) -> list[ServerStat]:
    """Servers (not FRONTEND/BACKEND rows) of a ``show stat`` CSV answer."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("#"):
        if lines and ("Unknown" in lines[0] or "No such" in lines[0]):
            raise ProviderError(f"HAProxy: {lines[0].strip()}")
        return []
    header = lines[0].lstrip("# ").split(",")
    # the columns read, by position (a row is some 90 of them: no dict per row, it is read on
    # every poll of a pending pool, hundreds of rows a second at scale)
    where = {name: i for i, name in enumerate(header)}
    wanted = ("pxname", "svname", "addr", "status", "check_status", "check_desc", "last_chk", "scur")
    at = [where.get(name, -1) for name in wanted]
    out = []
    for row in csv.reader(io.StringIO("\n".join(lines[1:]))):
        backend, name, address, status, check, desc, last, scur = (
            row[i] if 0 <= i < len(row) else "" for i in at
        )
        if name in ("FRONTEND", "BACKEND") or not name:
            continue
        out.append(
            ServerStat(
                backend=backend,
                name=name,
                address=address,
                status=status,
                check_status=check.removeprefix("* "),
                check_desc=desc,
                last_check=last,
                sessions=int(scur or 0),
            )
        )
    return out


#: ``srv_admin_state`` flags (``show servers state``) of a server put to drain (forced, or
#: inherited from a tracked server)
ADMIN_DRAIN = 0x08 | 0x10


def parse_admin_states(text: str) -> dict[str, int]:
    """Server name → ``srv_admin_state`` flags from a ``show servers state BACKEND`` answer.
    ``show stat`` cannot tell them: a server told to drain whose checks fail reads DOWN there."""
    lines = text.splitlines()
    header = next((ln.lstrip("# ").split() for ln in lines if ln.startswith("#")), [])
    if "srv_name" not in header or "srv_admin_state" not in header:
        return {}
    name, state = header.index("srv_name"), header.index("srv_admin_state")
    out = {}
    for ln in lines:
        fields = ln.split()
        if ln.startswith("#") or len(fields) <= max(name, state):
            continue
        try:
            out[fields[name]] = int(fields[state])
        except ValueError:
            continue
    return out


class Runtime:
    """One HAProxy process's runtime API."""

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        self.address, self.timeout = address, timeout
        #: backend name → its proxy id (``show stat`` by id: see :meth:`servers`)
        self._ids: dict[str, int] = {}

    async def command(self, line: str) -> str:
        # A read is safe to repeat, once: under load (5,000 servers, tens of CLI connections at
        # once) HAProxy now and then drops a CLI connection before answering ("Connection lost",
        # or nothing at all where every ``show`` says something), and a reconcile or a drain
        # hook failed on it.  A change is never repeated: it may have been made.
        read = line.startswith("show ")
        try:
            answer = await send(self.address, line, self.timeout)
        except ProviderError:
            if not read:
                raise
            answer = ""
        if read and not answer.strip():
            answer = await send(self.address, line, self.timeout)
        first = answer.strip().splitlines()[0] if answer.strip() else ""
        if first.startswith(("Unknown", "No such", "Require", "Permission denied")):
            raise ProviderError(
                f"HAProxy refused {line.split()[0]} {line.split()[1] if ' ' in line else ''}: {first}"
            )
        return answer

    async def servers(self, backend: str) -> list[ServerStat]:
        """The backend's servers, read by the backend's proxy id: ``show stat NAME`` takes the
        first proxy of that name, and a user's frontend often shares its backend's name (then
        no servers are seen, and podgate would add the same ones again and again).  The id is
        looked up once and checked on every read: a reload that renumbers proxies is noticed
        by rows of another proxy, or none."""
        iid = self._ids.get(backend)
        if iid is not None:
            rows = parse_stat(await self.command(f"show stat {iid} 4 -1"))
            if rows and all(r.backend == backend for r in rows):
                return rows
        iid = await self._backend_id(backend)
        if iid is None:
            return []  # no servers to read
        self._ids[backend] = iid
        return [r for r in parse_stat(await self.command(f"show stat {iid} 4 -1")) if r.backend == backend]

    async def _backend_id(self, backend: str) -> int | None:
        """The proxy id of ``backend`` (``show servers state`` looks up backends only), None
        when it has no servers; a ProviderError when HAProxy has no such backend."""
        answer = await self.command(f"show servers state {check_name(backend)}")
        if "Can't find backend" in answer:
            raise ProviderError(f"HAProxy has no backend {backend!r}")
        for line in answer.splitlines():
            fields = line.split()
            if len(fields) > 1 and not line.startswith("#") and fields[1] == backend and fields[0].isdigit():
                return int(fields[0])
        return None

    async def admin_states(self, backend: str) -> dict[str, int]:
        return parse_admin_states(await self.command(f"show servers state {check_name(backend)}"))

    async def backends(self) -> list[str]:
        answer = await self.command("show backend")
        return [ln.strip() for ln in answer.splitlines() if ln.strip() and not ln.startswith("#")]

    async def identity(self) -> str:
        """``pid/start`` of the worker answering: changes on every reload and restart."""
        info = dict(ln.split(": ", 1) for ln in (await self.command("show info")).splitlines() if ": " in ln)
        return f"{info.get('Pid', '?')}/{info.get('Start_time_sec') or info.get('Uptime_sec', '?')}"

    async def add_server(self, backend: str, server: str, address: str, options: str) -> None:
        """Add a server that starts DOWN and turns UP only after ``rise`` passing checks.

        The order matters (verified on HAProxy 2.6): ``enable server`` reports UP before any
        check ran unless the health is forced down *after* it.
        """
        ref = f"{check_name(backend)}/{check_name(server)}"
        answer = await self.command(f"add server {ref} {address} {options}")
        if "New server registered" not in answer and "Already exists" not in answer:
            raise ProviderError(f"HAProxy add server {ref}: {answer.strip()}")
        await self._start_down(ref)

    async def fill_slot(self, backend: str, server: str, ip: str, port: int) -> None:
        """Put a target into an empty ``server-template`` slot; it starts DOWN, like
        :meth:`add_server`, and its health checks are the slot's own."""
        ref = f"{check_name(backend)}/{check_name(server)}"
        answer = await self.command(f"set server {ref} addr {check_name(ip)} port {int(port)}")
        if "changed" not in answer and "no need to change" not in answer:
            raise ProviderError(f"HAProxy set server {ref} addr: {answer.strip()}")
        await self._start_down(ref)

    async def empty_slot(self, backend: str, server: str) -> None:
        ref = f"{check_name(backend)}/{check_name(server)}"
        await self.command(f"set server {ref} state maint")
        # port 1, not 0: a port 0 would make the slot follow the client's port (HAProxy's
        # port mapping), as a template written with :0 would
        await self.command(f"set server {ref} addr 0.0.0.0 port 1")

    async def _start_down(self, ref: str) -> None:
        await self.command(f"enable health {ref}")
        await self.command(f"enable server {ref}")
        await self.command(f"set server {ref} health down")

    async def restart_checks(self, backend: str, server: str) -> None:
        """A server left without health checks (a registration cut short) checked again, and
        out of rotation until its checks pass, as a new one."""
        await self._start_down(f"{check_name(backend)}/{check_name(server)}")

    async def set_ready(self, backend: str, server: str) -> None:
        """Back into rotation from drain; health checks never stopped, so its state is current."""
        await self.command(f"set server {check_name(backend)}/{check_name(server)} state ready")

    async def drain(self, backend: str, server: str) -> None:
        await self.command(f"set server {check_name(backend)}/{check_name(server)} state drain")

    async def remove(self, backend: str, server: str) -> None:
        ref = f"{check_name(backend)}/{check_name(server)}"
        await self.command(f"set server {ref} state maint")
        answer = await self.command(f"del server {ref}")
        if "Server deleted" not in answer:
            # Connections remain: cut them (the target is leaving anyway) and try once more.
            await self.command(f"shutdown sessions server {ref}")
            answer = await self.command(f"del server {ref}")
            if "Server deleted" not in answer:
                raise ProviderError(f"HAProxy del server {ref}: {answer.strip()}")


class Master:
    """The master CLI of an HAProxy in master-worker mode (``-W -S SOCKET``)."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        self.address, self.timeout = address, timeout

    async def command(self, line: str) -> str:
        return await send(self.address, line, self.timeout, half_close=True)

    async def reload(self) -> None:
        await self.command("reload")
