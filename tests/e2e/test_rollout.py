"""The rollout benchmark's short form: under load, podgate's rollout drops no request, with or
without the preStop delay its webhook injects; the plain rollout does (if it did not, the
sandbox would not be realistic)."""

from __future__ import annotations

import pytest

from podgate.kube.client import api_client
from podgate_sandbox.rollout import RolloutLab, summarise

from .conftest import SandboxHandle

pytestmark = pytest.mark.sandbox
GATED = ("podgate", "podgate-prestop")


@pytest.mark.compat
async def test_rollout_under_load(sandbox: SandboxHandle) -> None:
    api = await api_client(str(sandbox.kubeconfig))
    lab = RolloutLab(
        api, str(sandbox.state_dir / "haproxy" / "runtime.sock"), replicas=4, interval=0.5, rise=3
    )
    try:
        ips = {name: await lab.prepare(name) for name in ("plain", *GATED)}
        rounds = [await lab.round(name, ips[name], r) for r in range(2) for name in ips]
    finally:
        await lab.close()
        await api.close()
    summary = summarise(rounds, lab.lb_minimum)
    assert all(r.requests >= 200 for r in rounds), "steady load through the EXTERNAL-IP"
    assert summary["plain"]["failed"] > 0, (
        "the plain rollout drops requests while HAProxy has no healthy target"
    )
    assert summary["plain"]["failed_by_kind"].get("http_5xx", 0) > 0
    # The injected scenario really ran with the webhook's hook: every pod of its last round has it,
    # the kubelet's native sleep action (1.30+, chosen by discovery: no sleep binary needed).
    hooks = [
        (c.get("lifecycle") or {}).get("preStop")
        for p in sandbox.get("pods", "-n", lab.namespace("podgate-prestop"))["items"]
        for c in p["spec"]["containers"]
    ]
    assert hooks == [{"sleep": {"seconds": 2}}] * 4, hooks
    for name in GATED:
        assert summary[name]["failed"] == 0, (name, summary[name])
        gate = summary[name]["gate_latency_s"]
        assert gate["n"] == 2 * 4, (name, gate)
        # A gate that opened at registration would be far below rise x interval (checks run every
        # interval).
        assert gate["p50"] >= 0.9 * lab.lb_minimum, (name, gate)
