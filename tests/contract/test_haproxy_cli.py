"""podgate's HAProxy runtime client against a real HAProxy 2.6: batched changes (``a; b; c``),
their answers split one per command, and the combined read of a backend; and the in-memory
HAProxy of the unit tests against the real one."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from podgate.providers import haproxy_runtime
from podgate.providers.haproxy_fake import FakeRuntime
from podgate.providers.haproxy_runtime import (
    BATCH_CHARS,
    NoSuchBackend,
    Runtime,
    RuntimeAPI,
    parse_admin_states,
)

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"  # installed by `make setup`
BACKEND = "podgate.shop.web.80"

CONFIG = """\
global
    stats socket {dir}/runtime.sock mode 600 level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 10s
    timeout server 10s
frontend web
    bind 127.0.0.1:{port}
    default_backend {backend}
backend {backend}
    balance roundrobin
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[tuple[Runtime, int]]:
    """A real HAProxy: its runtime API, and the port of a frontend in front of the backend."""
    port = free_port()
    (tmp_path / "haproxy.cfg").write_text(CONFIG.format(dir=tmp_path, backend=BACKEND, port=port))
    # its log to a file: a pipe nobody reads fills with "server is DOWN" lines and stops HAProxy
    with open(tmp_path / "haproxy.log", "wb") as log:
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(tmp_path / "haproxy.cfg")], stderr=log)
    sock = tmp_path / "runtime.sock"
    for _ in range(100):
        if sock.exists():
            break
        subprocess.run(["sleep", "0.05"], check=True)
    try:
        yield Runtime(str(sock)), port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def runtime(haproxy: tuple[Runtime, int]) -> Runtime:
    return haproxy[0]


async def test_many_servers_added_in_batches_start_down_with_checks_on(runtime: Runtime) -> None:
    # enough servers for several command lines (each ~130 characters of commands a server)
    servers = [
        (f"podgate-127.50.{i // 200}.{i % 200 + 1}-8080", f"127.50.{i // 200}.{i % 200 + 1}:8080")
        for i in range(300)
    ]
    assert sum(len(n) for n, _ in servers) * 4 > 2 * BATCH_CHARS
    await runtime.add_servers(BACKEND, servers, "check inter 60s rise 3 fall 3")
    rows, admin = await runtime.servers_and_admin(BACKEND)
    assert sorted(r.name for r in rows) == sorted(n for n, _ in servers)
    # started DOWN, checked, in rotation as far as the admin flags go (no MAINT)
    assert {r.status for r in rows} == {"DOWN"}
    assert set(admin.values()) == {0}
    rows_again = await runtime.servers(BACKEND)
    assert [r.name for r in rows_again] == [r.name for r in rows]


async def test_a_batch_reports_servers_haproxy_does_not_have(runtime: Runtime) -> None:
    await runtime.add_servers(BACKEND, [("podgate-127.50.0.1-8080", "127.50.0.1:8080")], "check inter 60s")
    gone = await runtime.drain_servers(BACKEND, ["podgate-127.50.0.1-8080", "podgate-127.50.0.9-8080"])
    assert gone == ["podgate-127.50.0.9-8080"]
    _, admin = await runtime.servers_and_admin(BACKEND)
    assert admin["podgate-127.50.0.1-8080"] & 0x8  # SRV_ADMF_FDRAIN
    await runtime.ready_servers(BACKEND, ["podgate-127.50.0.1-8080"])
    _, admin = await runtime.servers_and_admin(BACKEND)
    assert admin["podgate-127.50.0.1-8080"] == 0
    answers = await runtime.changes(
        ["add server podgate.shop.web.80/podgate-127.50.0.1-8080 127.50.0.1:8080"]
    )
    assert answers[0].startswith("Already exists")


async def test_servers_are_removed_in_batches_and_one_with_a_connection_is_cut_first(
    haproxy: tuple[Runtime, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two connections for any number of deletes (a rollout's pass removes dozens); a server
    still serving a connection is refused by HAProxy's ``del server``, its sessions are cut and
    it is deleted; one already gone is no error."""
    runtime, frontend = haproxy
    upstream = await asyncio.start_server(hold_open, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    busy = f"podgate-127.0.0.1-{port}"
    servers = [
        (f"podgate-127.50.{i // 200}.{i % 200 + 1}-8080", f"127.50.{i // 200}.{i % 200 + 1}:8080")
        for i in range(300)
    ]
    await runtime.add_servers(BACKEND, servers, "check inter 60s")
    await runtime.changes(
        [f"add server {BACKEND}/{busy} 127.0.0.1:{port}", f"set server {BACKEND}/{busy} state ready"]
    )
    await runtime.changes([f"set server {BACKEND}/{n} state maint" for n, _ in servers])  # only busy serves
    reader, writer = await asyncio.open_connection("127.0.0.1", frontend)
    writer.write(b"ping\n")
    async with asyncio.timeout(5):
        assert await reader.readline() == b"ping\n"  # through HAProxy to busy
    assert (await runtime.command(f"del server {BACKEND}/{busy}")).startswith("Only servers in maint")
    await runtime.changes([f"set server {BACKEND}/{busy} state maint"])
    assert "still has connections" in await runtime.command(f"del server {BACKEND}/{busy}")
    await runtime.changes([f"set server {BACKEND}/{busy} state ready"])
    sent: list[str] = []
    real_send = haproxy_runtime.send

    async def counting(address: str, line: str, timeout: float = 5.0, **kw: object) -> str:
        sent.append(line)
        return await real_send(address, line, timeout)

    monkeypatch.setattr(haproxy_runtime, "send", counting)
    await runtime.remove_servers(BACKEND, [busy, *(n for n, _ in servers), "podgate-127.50.9.9-8080"])
    monkeypatch.undo()
    assert await runtime.servers(BACKEND) == []
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # its connection was cut
    # maint, delete; the busy one's sessions cut, deleted again: each a connection per 8,000
    # characters of commands, not two a server
    assert len(sent) <= 2 * (1 + sum(len(n) + 60 for n, _ in servers) // BATCH_CHARS) + 2
    assert [line.split(";")[0].split()[0:2] for line in sent[-2:]] == [
        ["shutdown", "sessions"],
        ["del", "server"],
    ]
    writer.close()
    upstream.close()


async def hold_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream that echoes lines until its client goes."""
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
    writer.close()


async def story(rt: RuntimeAPI) -> list[object]:
    """What the provider relies on, step by step: each server's name, address, status and
    admin flags after each kind of change, and the errors it tells apart."""
    a, b = "podgate-127.50.0.1-8080", "podgate-127.50.0.2-8080"
    options = "check inter 60s rise 3 fall 3"

    async def rows() -> list[tuple[str, str, str, int | None]]:
        servers, admin = await rt.servers_and_admin(BACKEND)
        return [(s.name, s.address, s.status, admin.get(s.name)) for s in servers]

    seen: list[object] = []
    await rt.add_servers(BACKEND, [(a, "127.50.0.1:8080"), (b, "127.50.0.2:8080")], options)
    await rt.add_servers(BACKEND, [(a, "127.50.0.1:8080")], options)  # there already: no error
    seen.append(await rows())
    seen.append(await rt.drain_servers(BACKEND, [a, "podgate-127.50.0.9-8080"]))
    seen.append(await rows())
    await rt.ready_servers(BACKEND, [a])
    seen.append(await rows())
    await rt.drain_servers(BACKEND, [a])
    await rt.add_servers(BACKEND, [(a, "127.50.0.1:8080")], options)  # added again while drained
    seen.append(await rows())
    await rt.empty_slot(BACKEND, b)
    seen.append(await rows())
    await rt.fill_slot(BACKEND, b, "127.50.0.3", 8080)
    seen.append(await rows())
    await rt.recheck_servers(BACKEND, [b])
    await rt.remove_servers(BACKEND, [a, "podgate-127.50.0.9-8080"])  # one gone already: no error
    seen.append(await rows())
    state = await rt.server_state(BACKEND)
    seen.append((state.startswith("1\n"), parse_admin_states(state)))
    for read in (rt.server_state("podgate.shop.gone.80"), rt.servers("podgate.shop.gone.80")):
        with pytest.raises(NoSuchBackend):
            await read
    seen.append(BACKEND in await rt.backends())
    seen.append(re.fullmatch(r"\d+/\d+", await rt.identity()) is not None)
    return seen


async def test_the_in_memory_haproxy_answers_as_the_real_one(runtime: Runtime) -> None:
    """``haproxy_fake.FakeRuntime``, which the provider's unit tests run on, is held to HAProxy."""
    fake = FakeRuntime()
    fake.add_backend(BACKEND)
    assert await story(fake) == await story(runtime)
