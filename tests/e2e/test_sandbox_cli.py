"""``podgate sandbox up|status|env|down`` as a user runs them, on a sandbox of their own."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest

from podgate_sandbox import podnet
from podgate_sandbox.gobuild import binaries_for
from podgate_sandbox.processes import alive, cmdline, tcp_listeners

from .conftest import KUBERNETES, kubernetes_args, podgate, wait_for

pytestmark = pytest.mark.sandbox
OFFSET = 20000


POD_CIDR = "198.19.16.0/20"


def in_pod_range(address: str) -> bool:
    return ipaddress.ip_address(address.rsplit(":", 1)[0]) in ipaddress.ip_network(POD_CIDR)


def listeners_on(ports: set[int]) -> list[str]:
    return [
        a
        for a, _ in tcp_listeners()
        if in_pod_range(a) or (a.startswith("127.0.0.1:") and int(a.rsplit(":", 1)[1]) in ports)
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
        POD_CIDR,
        "--lb-cidr",
        "127.202.0.0/16",
        *kubernetes_args(),
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
        assert f"export KUBECACHEDIR={state / 'kubectl-cache'}" in env
        kube_env = {
            **os.environ,
            "KUBECONFIG": str(state / "kubeconfig"),
            "KUBECACHEDIR": str(state / "kubectl-cache"),
        }
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
            env=kube_env,
            check=True,
        )
        v = json.loads(version.stdout)
        release = f"v{binaries_for(KUBERNETES).version}"
        assert v["clientVersion"]["gitVersion"] == v["serverVersion"]["gitVersion"] == release

        ports = {p + OFFSET for p in (2379, 2380, 6443, 10257, 8404, 10248, 9443, 9444, 8081, 8082, 9447)}
        assert len(listeners_on(ports)) >= len(ports)
        # a pod, so that down also has pod listeners to remove
        subprocess.run(
            [f"{kubectl_dir}/kubectl", "run", "p", "--image=nginx", "--port=80", "--expose"],
            check=True,
            env=kube_env,
            capture_output=True,
        )
        wait_for("the pod's listener", lambda: any(in_pod_range(a) for a, _ in tcp_listeners()))
        # the pod range is local by the sandbox's route, and the API server takes the pod's
        # address into its Service's EndpointSlice (it refuses loopback ones)
        assert podnet.has_route(podnet.pod_network(POD_CIDR))

        def sliced() -> list[str]:
            got = subprocess.run(
                [
                    f"{kubectl_dir}/kubectl",
                    "get",
                    "endpointslices",
                    "-l",
                    "kubernetes.io/service-name=p",
                    "-o",
                    "json",
                ],
                env=kube_env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert got.returncode == 0, got.stderr
            slices = json.loads(got.stdout)["items"]
            return [
                a for s in slices for e in s.get("endpoints") or () for a in e["addresses"] if in_pod_range(a)
            ]

        wait_for("the pod's address in its Service's EndpointSlice", sliced)
    finally:
        down = podgate("sandbox", "down", *args)
    assert down.returncode == 0
    assert "node-agent" in down.stdout and "etcd" in down.stdout
    for name, pid in pids.items():
        assert not alive(pid, commands[name]), f"{name} (pid {pid}) still running"
    assert listeners_on(ports) == []
    assert not podnet.has_route(podnet.pod_network(POD_CIDR)), "down removes the pod range's route"
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
            "198.19.32.0/20",
            "--lb-cidr",
            "127.203.0.0/16",
            *kubernetes_args(),
        )
    podgate("sandbox", "down", "--state-dir", str(tmp_path / "sb"))
    assert result.returncode == 2
    assert "127.0.0.1:32379 (needed by etcd) is already in use" in result.stderr
