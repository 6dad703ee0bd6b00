"""HAProxy reloads lose nothing: SIGUSR2 to the master (what ``systemctl reload haproxy`` does)
in the middle of a gated rollout under load fails no request, and no gate opens for a target
the new worker has not checked."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from podgate.kube.client import api_client
from podgate.providers.haproxy_runtime import Runtime
from podgate_sandbox.rollout import RolloutLab

from .conftest import SandboxHandle, condition

pytestmark = pytest.mark.sandbox
GATE = "service.readiness.podgate.dev/web"


async def test_sigusr2_in_the_middle_of_a_gated_rollout(sandbox: SandboxHandle) -> None:
    api = await api_client(str(sandbox.kubeconfig))
    runtime = Runtime(str(sandbox.state_dir / "haproxy" / "runtime.sock"))
    lab = RolloutLab(api, runtime.address, replicas=4, interval=0.5, rise=3, prefix="reload")
    master = json.loads((sandbox.state_dir / "pids.json").read_text())["haproxy"]
    workers: list[str] = []

    async def reload_twice() -> None:
        # while the first new targets are health-checked, then while old ones drain
        for delay in (1.0, 2.0):
            await asyncio.sleep(delay)
            before = await runtime.identity()
            os.kill(master, signal.SIGUSR2)
            deadline = time.monotonic() + 10
            while (now := await runtime.identity()) == before and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            workers.append(now)

    try:
        ip = await lab.prepare("podgate")
        first = await runtime.identity()
        result = await lab.round("podgate", ip, 0, during=reload_twice)
    finally:
        await lab.close()
        await api.close()
    assert len(set([first, *workers])) == 3, f"two reloads, each a new worker: {first}, {workers}"
    assert result.requests >= 200, "steady load through the EXTERNAL-IP"
    assert result.failed == 0, result.failures
    pods = sandbox.get("pods", "-n", lab.namespace("podgate"))["items"]
    assert len(pods) == 4
    for p in pods:
        c = condition(p, GATE) or {}
        assert c.get("status") == "True", (p["metadata"]["name"], c)
        assert "is UP, check L7OK" in c.get("message", ""), c  # HAProxy's own passed check
    # rise passing checks at the least: (rise - 1) intervals after registration
    assert len(result.gate_latency_s) == 4, result.gate_latency_s
    assert min(result.gate_latency_s) >= (lab.rise - 1) * lab.interval, result.gate_latency_s
    # every target is in the file a reload starts from, with its saved state
    be = f"podgate.{lab.namespace('podgate')}.web.80"
    listed = (sandbox.state_dir / "haproxy" / "haproxy.cfg").read_text()
    for p in pods:
        assert f"{p['status']['podIP']}:8080" in listed
    assert (sandbox.state_dir / "haproxy" / "server-state" / be).exists()
