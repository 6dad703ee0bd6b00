"""The rollout benchmark's short form: under load, podgate's rollout drops no request; the plain
rollout does (if it did not, the sandbox would not be realistic)."""

from __future__ import annotations

import pytest

from podgate.kube.client import api_client
from podgate_sandbox.rollout import RolloutLab, summarise

from .conftest import SandboxHandle

pytestmark = pytest.mark.sandbox


async def test_rollout_under_load(sandbox: SandboxHandle) -> None:
    api = await api_client(str(sandbox.kubeconfig))
    lab = RolloutLab(
        api, str(sandbox.state_dir / "haproxy" / "runtime.sock"), replicas=4, interval=0.5, rise=3
    )
    try:
        ips = {name: await lab.prepare(name) for name in ("plain", "podgate")}
        rounds = [await lab.round(name, ips[name], r) for r in range(2) for name in ips]
    finally:
        await lab.close()
        await api.close()
    summary = summarise(rounds, lab.lb_minimum)
    assert all(r.requests >= 200 for r in rounds), "steady load through the EXTERNAL-IP"
    assert summary["podgate"]["failed"] == 0, summary["podgate"]
    assert summary["plain"]["failed"] > 0, (
        "the plain rollout drops requests while HAProxy has no healthy target"
    )
    assert summary["plain"]["failed_by_kind"].get("http_5xx", 0) > 0
    gate = summary["podgate"]["gate_latency_s"]
    assert gate["n"] == 2 * 4
    # A gate that opened at registration would be far below rise x interval (checks run every interval).
    assert gate["p50"] >= 0.9 * lab.lb_minimum, gate
