"""``podgate sandbox up|status|env|down`` as a user runs them, on a sandbox of their own."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from podgate_sandbox.processes import alive, cmdline, tcp_listeners

from .conftest import podgate, wait_for

pytestmark = pytest.mark.sandbox
OFFSET = 20000


def listeners_on(ports: set[int], prefix: str = "127.102.") -> list[str]:
    return [
        a
        for a, _ in tcp_listeners()
        if a.startswith(prefix) or (a.startswith("127.0.0.1:") and int(a.rsplit(":", 1)[1]) in ports)
    ]


def test_up_is_idempotent_and_down_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "sb"
    args = ["--state-dir", str(state)]
    first = podgate(
        "sandbox",
        "up",
        *args,
        "--port-offset",
        str(OFFSET),
        "--pod-cidr",
        "127.102.0.0/16",
        "--lb-cidr",
        "127.202.0.0/16",
    )
    try:
        assert first.returncode == 0, first.stderr
        pids = json.loads((state / "pids.json").read_text())
        assert set(pids) == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "haproxy",
            "lb-data-plane",
            "node-agent",
            "podgate-controller",
        }
        commands = {name: cmdline(pid) for name, pid in pids.items()}
        assert all(commands.values())

        second = podgate("sandbox", "up", *args)
        assert second.returncode == 0, second.stderr
        assert json.loads((state / "pids.json").read_text()) == pids, "a second up starts nothing new"
        assert "started" not in second.stderr

        status = podgate("sandbox", "status", *args)
        assert status.returncode == 0
        for name, pid in pids.items():
            line = next(ln for ln in status.stdout.splitlines() if ln.startswith(name + " "))
            assert str(pid) in line and "healthy" in line and str(state / "logs") in line

        env = podgate("sandbox", "env", *args).stdout
        assert f"export KUBECONFIG={state / 'kubeconfig'}" in env
        kubectl_dir = (
            next(ln for ln in env.splitlines() if ln.startswith("export PATH="))
            .split("=", 1)[1]
            .split(":")[0]
        )
        version = subprocess.run(
            [f"{kubectl_dir}/kubectl", "version", "-o", "json"],
            capture_output=True,
            text=True,
            env={**os.environ, "KUBECONFIG": str(state / "kubeconfig")},
            check=True,
        )
        v = json.loads(version.stdout)
        assert v["clientVersion"]["gitVersion"] == v["serverVersion"]["gitVersion"] == "v1.20.2"

        ports = {p + OFFSET for p in (2379, 2380, 6443, 10257, 8404, 10248, 9443, 9444, 8081, 8082, 9447)}
        assert len(listeners_on(ports)) >= len(ports)
        # a pod, so that down also has pod listeners to remove
        subprocess.run(
            [f"{kubectl_dir}/kubectl", "run", "p", "--image=nginx", "--port=80"],
            check=True,
            env={**os.environ, "KUBECONFIG": str(state / "kubeconfig")},
            capture_output=True,
        )
        wait_for("the pod's listener", lambda: any(a.startswith("127.102.") for a, _ in tcp_listeners()))
    finally:
        down = podgate("sandbox", "down", *args)
    assert down.returncode == 0
    assert "node-agent" in down.stdout and "etcd" in down.stdout
    for name, pid in pids.items():
        assert not alive(pid, commands[name]), f"{name} (pid {pid}) still running"
    assert listeners_on(ports) == []
    status = podgate("sandbox", "status", *args)
    assert status.returncode == 1 and status.stdout.count("stopped") == 7


def test_up_reports_a_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", 2379 + 30000))
        blocker.listen()
        result = podgate(
            "sandbox",
            "up",
            "--state-dir",
            str(tmp_path / "sb"),
            "--port-offset",
            "30000",
            "--pod-cidr",
            "127.103.0.0/16",
            "--lb-cidr",
            "127.203.0.0/16",
        )
    podgate("sandbox", "down", "--state-dir", str(tmp_path / "sb"))
    assert result.returncode == 2
    assert "127.0.0.1:32379 (needed by etcd) is already in use" in result.stderr
