"""The sandbox's process bookkeeping against a real HAProxy, whose master re-executes itself
into its wait mode right after start: for a moment its command line reads empty."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from podgate_sandbox import processes

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"  # installed by `make setup`

CONFIG = """\
global
    stats socket {dir}/runtime.sock mode 600 level admin
defaults
    mode http
    timeout connect 1s
    timeout client 1s
    timeout server 1s
frontend probe
    bind unix@{dir}/probe.sock
"""


def test_haproxy_master_counts_as_alive_through_its_own_reexec(tmp_path: Path) -> None:
    (tmp_path / "haproxy.cfg").write_text(CONFIG.format(dir=tmp_path))
    master = tmp_path / "master.sock"
    marker = str(master)
    for _ in range(5):
        pid = processes.spawn(
            [HAPROXY, "-W", "-S", f"{master},mode,600", "-f", str(tmp_path / "haproxy.cfg")],
            tmp_path / "haproxy.log",
        )
        try:
            # Poll as `sandbox up` does, only tighter, across the re-exec (about 30 ms in).
            deadline = time.monotonic() + 0.5
            misses = 0
            while time.monotonic() < deadline:
                misses += not processes.alive(pid, marker)
            assert misses == 0, (tmp_path / "haproxy.log").read_text()
        finally:
            processes.stop(pid, marker, grace=5)
        assert not processes.alive(pid, marker)
