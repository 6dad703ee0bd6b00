"""Two controller replicas: only the leader reconciles; when it dies, the other takes over
within the lease duration and gates keep converging."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from .conftest import SandboxHandle, condition, podgate, wait_for
from .test_controller import all_ready, deployment, gate, lb_service

pytestmark = pytest.mark.sandbox
SANDBOX_HEALTH = 8081 + 10000
SECOND_HEALTH = 8181 + 10000


def leader(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    return next(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("podgate_leader "))


def test_failover(sandbox: SandboxHandle, namespace: str) -> None:
    state = sandbox.state_dir
    second = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "podgate",
            "controller",
            "--kubeconfig",
            str(state / "controller.kubeconfig"),
            "--haproxy-runtime-socket",
            str(state / "haproxy" / "runtime.sock"),
            "--haproxy-master-socket",
            str(state / "haproxy" / "master.sock"),
            "--haproxy-config",
            str(state / "haproxy" / "haproxy.cfg"),
            "--haproxy-base-config",
            str(state / "haproxy" / "base.cfg"),
            "--lb-cidr",
            "127.201.0.0/16",
            "--webhook-bind",
            "127.0.0.1",
            "--webhook-port",
            str(9543 + 10000),
            "--webhook-cert-dir",
            str(state / "webhook-certs"),
            "--health-bind",
            "127.0.0.1",
            "--health-port",
            str(SECOND_HEALTH),
            "--leader-elect",
            "--lease-duration",
            "6",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(state / "logs" / "second-controller.log", "w"),  # noqa: SIM115
        start_new_session=True,
    )
    try:
        wait_for("the second replica up", lambda: leader(SECOND_HEALTH) is not None, 20)
        time.sleep(2)
        assert (leader(SANDBOX_HEALTH), leader(SECOND_HEALTH)) == (1.0, 0.0), "one leader, one follower"

        sandbox.apply(lb_service("ha", "ha"), namespace)
        sandbox.apply(deployment("ha", 1, gates=[gate("ha")]), namespace)
        wait_for("Ready under the first leader", lambda: all_ready(sandbox, namespace, "ha", 1), 30)

        # The leader dies without a word (no lease release): the follower waits out the lease.
        pid = json.loads((state / "pids.json").read_text())["podgate-controller"]
        killed = time.monotonic()
        os.killpg(pid, signal.SIGKILL)
        wait_for("the follower to lead", lambda: leader(SECOND_HEALTH) == 1.0, 15, 0.2)
        took = time.monotonic() - killed
        assert took <= 6 + 2 + 1, f"failover took {took:.1f}s, lease is 6s"

        sandbox.kubectl("scale", "deployment/ha", "-n", namespace, "--replicas=3")
        ready = wait_for(
            "new pods Ready under the new leader", lambda: all_ready(sandbox, namespace, "ha", 3), 30
        )
        assert all((condition(p, gate("ha")) or {}).get("status") == "True" for p in ready)
    finally:
        second.terminate()
        second.wait(15)
        assert podgate("sandbox", "up", "--state-dir", str(state)).returncode == 0
        wait_for("the sandbox's controller leading again", lambda: leader(SANDBOX_HEALTH) == 1.0, 20)
