"""The termination benchmark's short form: a scale-down under slow POSTs to an app that aborts at
SIGTERM drops requests without a hook (if it did not, the sandbox would not be realistic) and
none with podgate's drain hook, whose pods get SIGTERM only once the load balancer has drained
them.  And when podgate is down the hook fails and the pod stops at once, as the kubelet does."""

from __future__ import annotations

import json
import time

import pytest

from podgate.kube.client import api_client
from podgate_sandbox.controlplane import Sandbox
from podgate_sandbox.termination import Scenario, TerminationLab, summarise

from .conftest import OFFSET, SandboxHandle, wait_for
from .test_controller import servers

pytestmark = pytest.mark.sandbox
NONE, DRAIN = Scenario("none", "haproxy"), Scenario("drain", "haproxy")
PREFIX = "t-term"


@pytest.mark.compat
async def test_scale_down_under_slow_posts(sandbox: SandboxHandle) -> None:
    api = await api_client(str(sandbox.kubeconfig))
    lab = TerminationLab(
        api,
        str(sandbox.state_dir / "haproxy" / "runtime.sock"),
        f"http://127.0.0.1:{10248 + OFFSET}",
        replicas=6,
        down_to=2,
        rate=40,
        prefix=PREFIX,
    )
    try:
        ips = {s: await lab.prepare(s) for s in (NONE, DRAIN)}
        tokens = [
            p["metadata"]["annotations"]["podgate.dev/drain-token"]
            for p in sandbox.get("pods", "-n", lab.namespace(DRAIN))["items"]
        ]
        rounds = [await lab.round(s, ip, "scale-down", 0) for s, ip in ips.items()]
    finally:
        await api.close()
    summary = summarise(rounds)
    plain, drained = summary[NONE.name]["scale-down"], summary[DRAIN.name]["scale-down"]
    assert all(r.requests >= 100 for r in rounds), ("steady load through the EXTERNAL-IP", rounds)
    assert plain["failed"] > 0, ("an aborting app drops the POSTs in flight at SIGTERM", plain)
    assert drained["failed"] == 0, drained
    assert drained["pods"] == 4 and drained["sigterm_before_lb_drain"] == 0, drained
    # the wait is the load balancer's own drain (requests in flight finish: 1 s at most), no more
    assert drained["sigterm_after_lb_drain_s"]["max"] <= 1.0, drained
    assert drained["to_sigterm_s"]["max"] <= 3.0, drained
    # the pods of the drain scenario carry the injected hook, to the sandbox's front door
    hooks = [
        (c.get("lifecycle") or {}).get("preStop")
        for p in sandbox.get("pods", "-n", lab.namespace(DRAIN))["items"]
        for c in p["spec"]["containers"]
    ]
    assert all(h and h["httpGet"]["port"] == 9447 + OFFSET for h in hooks), hooks
    # the drain tokens of the hooks called: in no line podgate logged and no Event it sent
    assert len(tokens) == 6
    logs = "".join(f.read_text() for f in (sandbox.state_dir / "logs").glob("podgate-controller*.log"))
    events = sandbox.get("events", "-n", lab.namespace(DRAIN))["items"]
    podgates = json.dumps([e for e in events if (e.get("source") or {}).get("component") == "podgate"])
    assert "drained" in logs and not any(t in logs or t in podgates for t in tokens)
    assert not any(
        (c.get("lifecycle") or {}).get("preStop")
        for p in sandbox.get("pods", "-n", lab.namespace(NONE))["items"]
        for c in p["spec"]["containers"]
    )


def test_with_podgate_down_the_hook_fails_and_the_pod_stops_at_once(sandbox: SandboxHandle) -> None:
    """The kubelet's side of an outage: the hook's call fails, FailedPreStopHook is recorded,
    SIGTERM follows; no pod waits for a podgate that is not there."""
    ns = f"{PREFIX}-{DRAIN.name}"  # prepared by the test above: pods with the drain hook
    items = sandbox.get("pods", "-n", ns)["items"] if _exists(sandbox, ns) else []
    pods = [p["metadata"]["name"] for p in items]
    if not pods:
        pytest.skip("needs the drain scenario's pods (test_scale_down_under_slow_posts)")
    with Sandbox(sandbox.state_dir).controller_replaced(env={}, log="termination-down.log") as swap:
        swap.stop()  # no replica at all now
        wait_for(
            "the drain front door's checks (every second, 2 to fall) to see every replica gone",
            lambda: (
                (rows := servers(sandbox, "podgate-drain")) and all(s.status.startswith("DOWN") for s in rows)
            ),
            10,
            0.1,
        )
        started = time.monotonic()
        sandbox.kubectl("delete", "pod", "-n", ns, pods[0], "--wait=false")
        wait_for(
            "the pod to be gone",
            lambda: pods[0] not in sandbox.kubectl("get", "pods", "-n", ns, "-o", "name"),
            timeout=15,
            interval=0.1,
        )
        took = time.monotonic() - started
        events = sandbox.kubectl(
            "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={pods[0]}"
        )
        assert "FailedPreStopHook" in events, events
        # the kubelet's message quotes the hook's path: the token is in it on a cluster whose
        # kubelets may ignore headers (1.20 here), in a header and out of the Event from 1.27
        hook = items[0]["spec"]["containers"][0]["lifecycle"]["preStop"]["httpGet"]
        token = items[0]["metadata"]["annotations"]["podgate.dev/drain-token"]
        assert f"lifecycle hook ({hook['path']})" in events, events
        assert (token in events) is ("httpHeaders" not in hook), (hook, events)
        assert took < 5.0, took


def _exists(sandbox: SandboxHandle, namespace: str) -> bool:
    return namespace in sandbox.kubectl("get", "namespaces", "-o", "name")
