"""Starting, finding and stopping the sandbox's background processes, by PID.

Each process runs in its own session (it outlives the ``podgate sandbox up`` that started it),
logs to a file, and is recorded with a marker string from its command line so a PID reused by
an unrelated process is never mistaken for ours, let alone killed.  :func:`serve_until_signalled`
is the other side: the shell a Python background process runs its work in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


#: How long a command line may read empty while its process execs before it counts as not ours.
EXEC_GRACE = 0.2


def alive(pid: int, marker: str) -> bool:
    """The process exists, is not a zombie, and its command line carries our marker.

    A process's command line reads empty for a moment while it execs.  HAProxy's master does
    that by itself about 30 ms after it starts (it re-executes into its wait mode), so an empty
    read is asked again for up to :data:`EXEC_GRACE` before the process counts as gone; a
    single read once made ``sandbox up`` report a healthy HAProxy as "exited during start-up".
    """
    _reap(pid)
    deadline = time.monotonic() + EXEC_GRACE
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return False
        line = cmdline(pid)
        if line or time.monotonic() >= deadline:
            return marker in line
        time.sleep(0.002)


def spawn(
    argv: Sequence[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    cgroup_procs: Path | None = None,
) -> int:
    """Start ``argv`` in its own session, logging to ``log``; with ``cgroup_procs`` it joins that
    cgroup before it runs a single instruction of its own (so no packet of it escapes a guard
    keyed on the cgroup)."""
    log.parent.mkdir(parents=True, exist_ok=True)

    def join_cgroup() -> None:
        if cgroup_procs is not None:
            cgroup_procs.write_text(f"{os.getpid()}\n")

    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=cwd,
            close_fds=True,
            preexec_fn=join_cgroup if cgroup_procs is not None else None,
        )
    return proc.pid


def stop(pid: int, marker: str, grace: float = 10.0) -> bool:
    """SIGTERM the process group, SIGKILL after ``grace``; True if it was running."""
    if not alive(pid, marker):
        return False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid, marker):
                return True
            time.sleep(0.05)
    return True


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def listeners_in(pids: set[int]) -> list[str]:
    """Listening TCP sockets (``ip:port``) owned by any of ``pids`` (from /proc)."""
    inodes: dict[str, int] = {}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes[target[8:-1]] = pid
    return [addr for addr, inode in tcp_listeners() if inode in inodes]


def tcp_listeners() -> list[tuple[str, str]]:
    """Every listening IPv4 TCP socket on the host as (``ip:port``, inode)."""
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            ip = ".".join(str(int(hex_ip[i : i + 2], 16)) for i in (6, 4, 2, 0))
            out.append((f"{ip}:{int(hex_port, 16)}", fields[9]))
    return out


async def serve_until_signalled(
    work: Coroutine[Any, Any, None], app: web.Application, host: str, port: int, stopping: str
) -> None:
    """Serve ``app`` (health and introspection) on ``host:port`` while ``work`` runs, until
    SIGTERM or SIGINT cancels it; ``stopping`` is logged then.  The sandbox's ``down`` stops a
    process by SIGTERM and waits: the work's own cleanup runs, the port is closed after."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    main = asyncio.create_task(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    try:
        await main
    except asyncio.CancelledError:
        log.info(stopping)
    finally:
        await runner.cleanup()
