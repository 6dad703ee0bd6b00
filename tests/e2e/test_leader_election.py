"""Two controller replicas: only the leader reconciles; when it dies, the other takes over
within the lease duration and gates keep converging."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest

from podgate.kube.client import api_client
from podgate_sandbox.controlplane import Sandbox
from podgate_sandbox.rollout import RolloutLab

from .conftest import SandboxHandle, condition, podgate, wait_for

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


async def test_failover_during_a_rollout_under_load(sandbox: SandboxHandle) -> None:
    state = sandbox.state_dir
    second = subprocess.Popen(
        Sandbox(state).controller_argv(replica=1),
        stdout=subprocess.DEVNULL,
        stderr=open(state / "logs" / "second-controller.log", "w"),  # noqa: SIM115
        start_new_session=True,
    )
    try:
        await asyncio.to_thread(
            wait_for, "the second replica up", lambda: leader(SECOND_HEALTH) is not None, 20
        )
        await asyncio.sleep(2)
        assert (leader(SANDBOX_HEALTH), leader(SECOND_HEALTH)) == (1.0, 0.0), "one leader, one follower"

        # A rollout under load, and the leader dies in the middle of it, without a word (no lease
        # release): the follower waits out the lease and takes over; no request fails.
        pid = json.loads((state / "pids.json").read_text())["podgate-controller"]
        failover: list[float] = []

        async def kill_leader() -> None:
            await asyncio.sleep(1.0)
            killed = time.monotonic()
            os.killpg(pid, signal.SIGKILL)
            while await asyncio.to_thread(leader, SECOND_HEALTH) != 1.0:
                await asyncio.sleep(0.2)
            failover.append(time.monotonic() - killed)

        api = await api_client(str(sandbox.kubeconfig))
        lab = RolloutLab(
            api, str(state / "haproxy" / "runtime.sock"), replicas=4, interval=0.5, rise=3, prefix="ha"
        )
        try:
            ip = await lab.prepare("podgate")
            result = await lab.round("podgate", ip, 1, during=kill_leader)
        finally:
            await lab.close()
            await api.close()
        assert failover and failover[0] <= 6 + 2, f"failover took {failover}, the lease is 6 s"
        assert result.requests >= 200
        assert result.failed == 0, result.failures
        assert len(result.gate_latency_s) == 4, "every new pod's gate converged"
        pods = sandbox.get("pods", "-n", lab.namespace("podgate"))["items"]
        ready = [(condition(p, "Ready") or {}).get("status") for p in pods]
        assert ready == ["True"] * 4, ready  # all() of no pods would be True too
    finally:
        second.terminate()
        second.wait(15)
        assert podgate("sandbox", "up", "--state-dir", str(state)).returncode == 0
        await asyncio.to_thread(
            wait_for, "the sandbox's controller leading again", lambda: leader(SANDBOX_HEALTH) == 1.0, 20
        )
