"""The HAProxy seam: its runtime API (stats socket) and master CLI, as plain async calls.

Nothing above this module builds a socket line.  The provider sees one HAProxy through the
:class:`RuntimeAPI` and :class:`MasterAPI` protocols; :class:`Runtime` and :class:`Master`
speak them on the sockets, and ``haproxy_fake`` keeps an HAProxy in memory behind them.

Addresses are a unix socket path or ``host:port`` for a TCP stats socket; each command uses its
own connection (non-interactive mode: HAProxy answers and closes), so a reload never strands a
half-read answer.  At most :data:`CONNECTIONS` of them are open to one HAProxy at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import math
import operator
import re
import socket
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import NamedTuple, Protocol

from podgate.providers.base import ProviderError
from podgate.providers.retry import Retry

_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


def check_name(name: str) -> str:
    """Proxy and server names go into command lines verbatim: refuse anything but HAProxy's
    own name characters (no '/', no spaces, no ';')."""
    if not _NAME.match(name):
        raise ProviderError(f"{name!r} is not a valid HAProxy name")
    return name


class Unreachable(ProviderError):
    """No connection to this HAProxy at all (as opposed to a command it refused)."""


class NoSuchBackend(ProviderError):
    """HAProxy has no backend of that name: released, or not there after a reload.  Retrying
    cannot bring it back; a state save drops the backend instead of trying again."""


class _NoAnswer(ProviderError):
    """A read answered nothing: every ``show`` says something, so HAProxy dropped it.  Never
    read as an empty answer: "no rows" would say a backend's targets are gone, and a drain
    would take a target still in an old worker's rotation for drained."""


async def _connect(address: str, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(timeout):
        if address.startswith("/") or address.startswith("unix@"):
            return await asyncio.open_unix_connection(address.removeprefix("unix@"))
        host, _, port = address.removeprefix("ipv4@").rpartition(":")
        return await asyncio.open_connection(host, int(port))


#: CLI connections one process keeps open to one HAProxy at once.  HAProxy's stats socket takes
#: about 20 at a time (its default ``maxconn`` of 10 and a backlog) and drops the rest
#: unanswered (verified on 2.6); two replicas at 10 stay within the 20, and fewer queue drain
#: hooks behind each other (bench/results).
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


def _socket_to(address: str) -> tuple[socket.socket, str | tuple[str, int]]:
    """A non-blocking socket for ``address`` (a path, ``unix@PATH`` or ``ipv4@HOST:PORT``) and
    what to connect it to."""
    where: str | tuple[str, int]
    if address.startswith("/") or address.startswith("unix@"):
        sock, where = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), address.removeprefix("unix@")
    else:
        host, _, port = address.removeprefix("ipv4@").rpartition(":")
        sock, where = socket.socket(socket.AF_INET, socket.SOCK_STREAM), (host, int(port))
    sock.setblocking(False)
    return sock, where


async def _send(address: str, line: str, timeout: float, half_close: bool) -> str:
    """One command on a connection of its own, on the loop's socket calls: no transport, no
    protocol, no stream pair for a connection that carries one line and one answer.  A
    rollout's passes and drain hooks open thousands of them, and making streams for each was
    half the CPU of a read (py-spy, 1,000 pods restarting: 216 of 1,285 samples of the
    controller's loop in connections, 106 of them in making them)."""
    loop = asyncio.get_running_loop()
    sock, where = _socket_to(address)
    try:
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, where)
        except (OSError, TimeoutError) as e:
            raise Unreachable(f"HAProxy at {address} unreachable: {e or type(e).__name__}") from None
        chunks = []
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_sendall(sock, line.encode() + b"\n")
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
                while data := await loop.sock_recv(sock, 65536):
                    chunks.append(data)
        except TimeoutError:
            # a stopped (or wedged) HAProxy: its socket still accepts (the kernel's backlog) and
            # never answers.  That is one podgate cannot reach, which `--haproxy-ha-policy
            # reachable` decides without, not an answer to wait on (the command may have been made)
            raise Unreachable(
                f"HAProxy at {address} did not answer {line.split()[0]} within {timeout:g}s"
            ) from None
        except OSError as e:
            raise ProviderError(
                f"HAProxy at {address}: {line.split()[0]} failed: {e or type(e).__name__}"
            ) from None
        return b"".join(chunks).decode(errors="replace")
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def following(address: str, line: str, timeout: float = 5.0) -> AsyncIterator[AsyncIterator[str]]:
    """A command whose answer does not end (``show events RING -w``) sent, for the block: the
    lines of its answer as HAProxy writes them, until it closes the connection.  It holds one of
    this process's :data:`CONNECTIONS` to that HAProxy for as long, so the others never exceed
    what its socket takes."""
    async with _slot(address):
        try:
            reader, writer = await _connect(address, timeout)
        except (OSError, TimeoutError) as e:
            raise Unreachable(f"HAProxy at {address} unreachable: {e or type(e).__name__}") from None

        async def lines() -> AsyncIterator[str]:
            try:
                while raw := await reader.readline():
                    yield raw.decode(errors="replace").rstrip("\n")
            except (OSError, ValueError) as e:  # ValueError: a line over the reader's limit
                raise ProviderError(f"HAProxy at {address}: {line.split()[0]} failed: {e}") from None

        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            yield lines()
        except OSError as e:
            raise ProviderError(f"HAProxy at {address}: {line.split()[0]} failed: {e}") from None
        finally:
            writer.close()


#: how HAProxy's CLI begins the answer to a command it did not carry out
REFUSALS = ("Unknown", "No such", "Require", "Permission denied")

#: characters of one batched command line (HAProxy reads a line into one 16 KiB buffer)
BATCH_CHARS = 8000


def chunks(lines: Sequence[str], limit: int, group: int = 1) -> list[list[str]]:
    """``lines`` cut into command lines of at most ``limit`` characters, never inside a group
    of ``group`` lines (a group longer than the limit goes alone)."""
    out: list[list[str]] = []
    size = limit + 1
    for start in range(0, len(lines), group):
        chunk = lines[start : start + group]
        length = sum(len(line) + 2 for line in chunk)
        if size + length > limit:
            out.append([])
            size = 0
        out[-1].extend(chunk)
        size += length
    return out


def _start_down(ref: str) -> list[str]:
    """Health checks on, in rotation, forced DOWN until ``rise`` checks pass (the order that
    works: see :meth:`Runtime.add_servers`)."""
    return [f"enable health {ref}", f"enable server {ref}", f"set server {ref} health down"]


def _refusal(answer: str) -> str | None:
    first = answer.strip().splitlines()[0] if answer.strip() else ""
    return first if first.startswith(REFUSALS) else None


def _raise_refusal(what: str, lines: Sequence[str], answers: Sequence[str]) -> None:
    for line, answer in zip(lines, answers, strict=True):
        refused = _refusal(answer)
        if refused is not None:
            raise ProviderError(f"HAProxy refused {line.split()[0]} {line.split()[1]} for {what}: {refused}")


def _deleted(answer: str) -> bool:
    """``del server`` did it, or there was nothing to delete."""
    return "Server deleted" in answer or answer.startswith("No such server")


def split_answers(text: str) -> list[str]:
    """The answers of ``a; b; c``: each ends with an empty line (an empty answer is the empty
    line alone)."""
    answers, current = [], []
    for line in text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"):
        if line.strip():
            current.append(line)
        else:
            answers.append("\n".join(current))
            current = []
    if current:
        answers.append("\n".join(current))
    return answers


class ServerStat(NamedTuple):
    """One row of ``show stat``: a server as HAProxy reports it.  A named tuple, not a frozen
    dataclass: every read of a pool makes one per server (200 in a rollout of a 100-pod
    Service), and a tuple is made in half the time."""

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
    # every poll of a pending pool)
    where = {name: i for i, name in enumerate(header)}
    wanted = ("pxname", "svname", "addr", "status", "check_status", "check_desc", "last_chk", "scur")
    at = [where.get(name, len(header)) for name in wanted]  # a column not there reads ""
    pick, width = operator.itemgetter(*at), max(at) + 1
    out = []
    for row in csv.reader(io.StringIO("\n".join(lines[1:]))):
        if len(row) < width:
            row += [""] * (width - len(row))
        backend, name, address, status, check, desc, last, scur = pick(row)
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


def state_columns(text: str, *names: str) -> list[tuple[str, ...]] | None:
    """The named columns of each server row of a ``show servers state`` answer, by its header
    (the version line and rows cut short are skipped); None when a column is not there."""
    lines = text.splitlines()
    header = next((ln.lstrip("# ").split() for ln in lines if ln.startswith("#")), [])
    if not all(name in header for name in names):
        return None
    at = [header.index(name) for name in names]
    out = []
    for ln in lines:
        fields = ln.split()
        if ln.startswith("#") or len(fields) <= max(at):
            continue
        out.append(tuple(fields[i] for i in at))
    return out


def parse_admin_states(text: str) -> dict[str, int]:
    """Server name → ``srv_admin_state`` flags from a ``show servers state BACKEND`` answer.
    ``show stat`` cannot tell them: a server told to drain whose checks fail reads DOWN there."""
    out = {}
    for name, state in state_columns(text, "srv_name", "srv_admin_state") or ():
        if state.isdigit():
            out[name] = int(state)
    return out


class RuntimeAPI(Protocol):
    """One HAProxy process's runtime API, as the provider uses it: every call names the backend,
    and server names are HAProxy's (podgate's ``podgate-IP-PORT`` or a user's template slot)."""

    #: where it listens (also how a read of an HA pair names the HAProxy it came from)
    address: str

    async def servers(self, backend: str) -> list[ServerStat]:
        """The backend's servers; a :class:`NoSuchBackend` when HAProxy has no such backend."""

    async def servers_and_admin(self, backend: str) -> tuple[list[ServerStat], dict[str, int]]:
        """:meth:`servers` and each server's ``srv_admin_state`` flags (:data:`ADMIN_DRAIN`)."""

    async def server_state(self, backend: str) -> str:
        """The backend's ``show servers state``: what a server-state file holds for the next
        worker to load."""

    async def backends(self) -> list[str]: ...

    async def identity(self) -> str:
        """The worker answering (``pid/start``): changes on every reload and restart."""

    async def add_servers(self, backend: str, servers: Sequence[tuple[str, str]], options: str) -> None:
        """Add servers (name, address), checked, held DOWN until ``rise`` checks pass; one that
        exists already is no error."""

    async def fill_slot(self, backend: str, server: str, ip: str, port: int) -> None:
        """Point an empty ``server-template`` slot at a target; it starts as an added server."""

    async def empty_slot(self, backend: str, server: str) -> None:
        """Take a slot's target out (maintenance, address 0.0.0.0); the slot stays."""

    async def recheck_servers(self, backend: str, servers: Sequence[str]) -> None:
        """Checks back on for servers left without them, held DOWN until they pass."""

    async def ready_servers(self, backend: str, servers: Sequence[str]) -> None:
        """Back into rotation from drain or maintenance."""

    async def drain_servers(self, backend: str, servers: Sequence[str]) -> list[str]:
        """Out of rotation, connections kept; returns the servers HAProxy does not have."""

    async def remove_servers(self, backend: str, servers: Sequence[str]) -> None:
        """Delete the servers, cutting connections they still have (they are leaving); one
        HAProxy does not have is gone already, no error."""


class MasterAPI(Protocol):
    """The master process of an HAProxy in master-worker mode."""

    async def reload(self) -> None:
        """Start a new worker from the configuration file (the old one finishes its connections)."""

    async def old_workers(self) -> list[int]:
        """The PIDs of the workers earlier reloads left finishing their connections."""

    async def worker_connections(self, pid: int, frontend: str) -> int:
        """The client connections (idle keep-alive ones included) the worker ``pid`` holds on
        ``frontend``; 0 when that worker has exited or has no such frontend."""

    async def worker_servers(self, pid: int, backend: str) -> list[ServerStat]:
        """``backend``'s servers as the worker ``pid`` holds them; none when that worker has
        exited or has no such backend."""


class Runtime:
    """One HAProxy process's runtime API on its socket (:class:`RuntimeAPI`)."""

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        self.address, self.timeout = address, timeout
        #: backend name → its proxy id (``show stat`` by id: see :meth:`servers`)
        self._ids: dict[str, int] = {}
        self._retry = Retry(None, max_retries=1, base_delay=0.0, deadline=math.inf)

    async def command(self, line: str) -> str:
        """One command, its answer; a refusal is a ProviderError.  A read is asked again once,
        at once, when its connection is dropped or it answers nothing: under load HAProxy drops
        a CLI connection now and then before answering, and a reconcile or a drain hook would
        fail on it.  A change is never repeated: it may have been made (and answers nothing)."""
        read = line.startswith("show ")

        async def attempt() -> str:
            answer = await send(self.address, line, self.timeout)
            if read and not answer.strip():
                raise _NoAnswer(f"HAProxy at {self.address}: {line.split()[0]} answered nothing")
            return answer

        # nothing, twice: a _NoAnswer for the caller, who reads again later (unknown is not empty)
        answer = await self._retry.call(attempt, lambda e: read and isinstance(e, ProviderError))
        refused = _refusal(answer)
        if refused is not None:
            raise ProviderError(
                f"HAProxy refused {line.split()[0]} {line.split()[1] if ' ' in line else ''}: {refused}"
            )
        return answer

    async def changes(self, lines: Sequence[str], group: int = 1) -> list[str]:
        """Several changes, one connection per :data:`BATCH_CHARS` of them, their answers in
        order ("" for a change HAProxy made without a word): a connection per command would
        make a registration of many targets queue behind the :data:`CONNECTIONS` slots while
        drain hooks wait for theirs.  HAProxy runs ``a; b; c`` one after the other and ends
        each answer with an empty line; only commands whose answer is one line at most may go
        here (``del server``'s has no empty line after it: not here).  A change is never
        repeated; an answer that does not split into one per command is an error, and the
        caller reads HAProxy afresh.  Each ``group`` lines in a row (one server's commands)
        stay on one connection: ``enable server`` without the ``health down`` after it would
        leave a server in rotation unchecked while the next connection waits."""
        answers: list[str] = []
        for chunk in chunks(lines, BATCH_CHARS, group):
            text = await send(self.address, "; ".join(chunk), self.timeout)
            got = split_answers(text)
            if len(got) != len(chunk):
                raise ProviderError(
                    f"HAProxy answered {len(got)} of {len(chunk)} commands ({chunk[0].split()[0]} ...): "
                    f"{text.strip()[:200]}"
                )
            answers += got
        return answers

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

    async def servers_and_admin(self, backend: str) -> tuple[list[ServerStat], dict[str, int]]:
        """:meth:`servers` and :meth:`admin_states` over one connection (``a; b``): the read a
        pending gate makes every poll, half the connections.  Anything unexpected (the proxy
        id unknown or stale, an answer cut short) falls back to the two reads one by one."""
        iid = self._ids.get(backend)
        if iid is not None:
            line = f"show stat {iid} 4 -1; show servers state {check_name(backend)}"
            try:
                answers = split_answers(await send(self.address, line, self.timeout))
            except Unreachable:
                raise
            except ProviderError:
                answers = []
            if len(answers) == 2 and answers[1].startswith("1"):
                rows = parse_stat(answers[0])
                if rows and all(r.backend == backend for r in rows):
                    return rows, parse_admin_states(answers[1])
        return await self.servers(backend), await self.admin_states(backend)

    async def _backend_id(self, backend: str) -> int | None:
        """The proxy id of ``backend`` (``show servers state`` looks up backends only), None
        when it has no servers; a ProviderError when HAProxy has no such backend."""
        answer = await self.command(f"show servers state {check_name(backend)}")
        if "Can't find backend" in answer:
            raise NoSuchBackend(f"HAProxy has no backend {backend!r}")
        for line in answer.splitlines():
            fields = line.split()
            if len(fields) > 1 and not line.startswith("#") and fields[1] == backend and fields[0].isdigit():
                return int(fields[0])
        return None

    async def admin_states(self, backend: str) -> dict[str, int]:
        return parse_admin_states(await self.command(f"show servers state {check_name(backend)}"))

    async def server_state(self, backend: str) -> str:
        text = await self.command(f"show servers state {check_name(backend)}")
        if not text.startswith("1\n"):  # the format's version line; else HAProxy's complaint
            error = NoSuchBackend if "Can't find backend" in text else ProviderError
            raise error(f"HAProxy show servers state {backend}: {text.strip()[:200]}")
        return text

    async def backends(self) -> list[str]:
        answer = await self.command("show backend")
        return [ln.strip() for ln in answer.splitlines() if ln.strip() and not ln.startswith("#")]

    async def identity(self) -> str:
        """``pid/start`` of the worker answering: changes on every reload and restart."""
        info = dict(ln.split(": ", 1) for ln in (await self.command("show info")).splitlines() if ": " in ln)
        return f"{info.get('Pid', '?')}/{info.get('Start_time_sec') or info.get('Uptime_sec', '?')}"

    async def add_servers(self, backend: str, servers: Sequence[tuple[str, str]], options: str) -> None:
        """Add servers (name, address) that start DOWN and turn UP only after ``rise`` passing
        checks, in one batch (see :meth:`changes`); every one is tried, the first refusal raised.

        The order matters (verified on HAProxy 2.6): ``enable server`` reports UP before any
        check ran unless the health is forced down *after* it.
        """
        refs = [f"{check_name(backend)}/{check_name(server)}" for server, _ in servers]
        lines: list[str] = []
        for ref, (_, address) in zip(refs, servers, strict=True):
            lines += [f"add server {ref} {address} {options}", *_start_down(ref)]
        answers = await self.changes(lines, group=4)
        for i, ref in enumerate(refs):
            added, *started = answers[4 * i : 4 * i + 4]
            if "New server registered" not in added and "Already exists" not in added:
                raise ProviderError(f"HAProxy add server {ref}: {added.strip()}")
            _raise_refusal(ref, lines[4 * i + 1 : 4 * i + 4], started)

    async def fill_slot(self, backend: str, server: str, ip: str, port: int) -> None:
        """Put a target into an empty ``server-template`` slot; it starts DOWN, like
        :meth:`add_servers`, and its health checks are the slot's own."""
        ref = f"{check_name(backend)}/{check_name(server)}"
        answer = await self.command(f"set server {ref} addr {check_name(ip)} port {int(port)}")
        if "changed" not in answer and "no need to change" not in answer:
            raise ProviderError(f"HAProxy set server {ref} addr: {answer.strip()}")
        await self.recheck_servers(backend, [server])

    async def empty_slot(self, backend: str, server: str) -> None:
        ref = f"{check_name(backend)}/{check_name(server)}"
        await self.command(f"set server {ref} state maint")
        # port 1, not 0: a port 0 would make the slot follow the client's port (HAProxy's
        # port mapping), as a template written with :0 would
        await self.command(f"set server {ref} addr 0.0.0.0 port 1")

    async def recheck_servers(self, backend: str, servers: Sequence[str]) -> None:
        """Servers left without health checks (a registration cut short) checked again, and
        out of rotation until their checks pass, as new ones."""
        await self._each(backend, servers, _start_down, group=3)

    async def ready_servers(self, backend: str, servers: Sequence[str]) -> None:
        """Back into rotation from drain; health checks never stopped, so their state is current."""
        await self._each(backend, servers, lambda ref: [f"set server {ref} state ready"])

    async def drain_servers(self, backend: str, servers: Sequence[str]) -> list[str]:
        """Out of rotation, connections kept; returns the servers HAProxy does not have (gone
        already)."""
        refs = [f"{check_name(backend)}/{check_name(s)}" for s in servers]
        answers = await self.changes([f"set server {ref} state drain" for ref in refs])
        return [s for s, a in zip(servers, answers, strict=True) if a.startswith("No such")]

    async def _each(
        self,
        backend: str,
        servers: Sequence[str],
        lines_for: Callable[[str], list[str]],
        group: int = 1,
    ) -> None:
        refs = [f"{check_name(backend)}/{check_name(s)}" for s in servers]
        lines = [line for ref in refs for line in lines_for(ref)]
        answers = await self.changes(lines, group)
        _raise_refusal(", ".join(refs), lines, answers)

    async def remove_servers(self, backend: str, servers: Sequence[str]) -> None:
        """Into maintenance, then deleted: two connections for any number of servers (a pass of
        a rollout removes dozens, and two connections a server held its worker for seconds on a
        busy loop: 4.3 s p99 at 5,000 pods).  Servers that still have connections are cut (they
        are leaving anyway) and deleted once more; one refused then is a ProviderError, after
        the others are gone."""
        if not servers:
            return
        refs = [f"{check_name(backend)}/{check_name(s)}" for s in servers]
        answers = await self.changes([f"set server {ref} state maint" for ref in refs])
        # gone already: nothing to delete (a refusal of anything else shows on the delete)
        refs = [ref for ref, a in zip(refs, answers, strict=True) if not a.startswith("No such server")]
        kept = [ref for ref, a in zip(refs, await self._deletions(refs), strict=True) if not _deleted(a)]
        if not kept:
            return
        await self.changes([f"shutdown sessions server {ref}" for ref in kept])
        refused = [
            (ref, a) for ref, a in zip(kept, await self._deletions(kept), strict=True) if not _deleted(a)
        ]
        if refused:
            (ref, answer), more = refused[0], len(refused) - 1
            raise ProviderError(
                f"HAProxy del server {ref}: {answer.strip()}" + (f" (and {more} more)" if more else "")
            )

    async def _deletions(self, refs: Sequence[str]) -> list[str]:
        """``del server`` for each, batched; their answers in order.  HAProxy (2.6) ends a
        delete's one-line answer without the empty line every other command's has, so a batch of
        deletes alone is answered one line each, whichever way a version ends them; a count that
        does not match is an error and the caller reads HAProxy afresh."""
        answers: list[str] = []
        for chunk in chunks([f"del server {ref}" for ref in refs], BATCH_CHARS):
            text = await send(self.address, "; ".join(chunk), self.timeout)
            got = [line for line in text.splitlines() if line.strip()]
            if len(got) != len(chunk):
                raise ProviderError(
                    f"HAProxy answered {len(got)} of {len(chunk)} del server commands: {text.strip()[:200]}"
                )
            answers += got
        return answers


class Master:
    """The master CLI of an HAProxy in master-worker mode (``-W -S SOCKET``): :class:`MasterAPI`."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        self.address, self.timeout = address, timeout

    async def command(self, line: str) -> str:
        """One command, its answer.  A read (every command but ``reload``) that answers nothing
        was dropped (the master re-executing itself on a reload, say): an error, not "no old
        worker" or "no connection", which would let a drain finish too early."""
        answer = await send(self.address, line, self.timeout, half_close=True)
        if line != "reload" and not answer.strip():
            raise _NoAnswer(f"HAProxy master at {self.address}: {line} answered nothing")
        return answer

    async def reload(self) -> None:
        await self.command("reload")

    async def old_workers(self) -> list[int]:
        return parse_old_workers(await self.command("show proc"))

    async def worker_connections(self, pid: int, frontend: str) -> int:
        answer = await self.command(f"@!{pid} show stat {check_name(frontend)} 1 -1")
        return parse_frontend_sessions(answer, frontend) if _worker_has(answer, pid) else 0

    async def worker_servers(self, pid: int, backend: str) -> list[ServerStat]:
        """By the backend's name (``@!PID`` addresses one worker through the master): an old
        worker answers reads, though it refuses every change ("Proxy is disabled")."""
        answer = await self.command(f"@!{pid} show stat {check_name(backend)} 4 -1")
        if not _worker_has(answer, pid):
            return []
        return [row for row in parse_stat(answer) if row.backend == backend]


def _worker_has(answer: str, pid: int) -> bool:
    """Whether a worker's ``show stat PROXY`` answer holds that proxy's rows: False when the
    worker exited meanwhile ("Can't find the target PID") or has no such proxy ("No such
    proxy.", one added after it stopped taking traffic); anything else is an error."""
    if answer.startswith("#"):
        return True
    if answer.startswith(("Can't find the target PID", "No such proxy")):
        return False
    raise ProviderError(f"HAProxy worker {pid}: unexpected answer to show stat: {answer.strip()[:120]!r}")


def parse_frontend_sessions(text: str, frontend: str) -> int:
    """The current sessions (``scur``) of ``frontend``'s FRONTEND row in a ``show stat`` answer."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or not rows[0]:
        return 0
    header = [name.lstrip("# ") for name in rows[0]]
    if not {"svname", "pxname", "scur"} <= set(header):
        raise ProviderError(f"HAProxy: not a show stat answer: {text[:80]!r}")
    at, name, scur = header.index("svname"), header.index("pxname"), header.index("scur")
    for row in rows[1:]:
        if len(row) > max(at, name, scur) and row[name] == frontend and row[at] == "FRONTEND":
            return int(row[scur] or 0)
    return 0


def parse_old_workers(show_proc: str) -> list[int]:
    """The PIDs under ``# old workers`` in the master's ``show proc``."""
    pids: list[int] = []
    section = ""
    for line in show_proc.splitlines():
        if line.startswith("#"):
            section = line.strip("# ").strip()
        elif section == "old workers" and line.split() and line.split()[0].isdigit():
            pids.append(int(line.split()[0]))
    return pids
