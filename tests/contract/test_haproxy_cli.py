"""podgate's HAProxy runtime client against a real HAProxy 2.6: batched changes (``a; b; c``),
their answers split one per command, and the combined read of a backend."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from podgate.providers.haproxy_runtime import BATCH_CHARS, Runtime

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
backend {backend}
    balance roundrobin
"""


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    (tmp_path / "haproxy.cfg").write_text(CONFIG.format(dir=tmp_path, backend=BACKEND))
    # its log to a file: a pipe nobody reads fills with "server is DOWN" lines and stops HAProxy
    with open(tmp_path / "haproxy.log", "wb") as log:
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(tmp_path / "haproxy.cfg")], stderr=log)
    sock = tmp_path / "runtime.sock"
    for _ in range(100):
        if sock.exists():
            break
        subprocess.run(["sleep", "0.05"], check=True)
    try:
        yield Runtime(str(sock))
    finally:
        proc.terminate()
        proc.wait(10)


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
