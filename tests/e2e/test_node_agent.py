"""The node agent on a real kube-apiserver: what a user sees with kubectl and over HTTP."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import urllib.request
from typing import Any

import pytest
from kubernetes_asyncio import client

from podgate.kube.client import api_client
from podgate_sandbox.processes import tcp_listeners

from .conftest import POD_CIDR, SandboxHandle, condition, wait_for, wide_row

pytestmark = pytest.mark.sandbox


def deployment(
    name: str,
    replicas: int = 3,
    env: dict[str, str] | None = None,
    probe: dict[str, Any] | None = None,
    extra_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "nginx",
        "image": "nginx:1.25",
        "ports": [{"containerPort": 80}],
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
    }
    if probe:
        container["readinessProbe"] = probe
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [container], **(extra_spec or {})},
            },
        },
    }


def pod_manifest(name: str, **spec: Any) -> dict[str, Any]:
    containers = spec.pop("containers", None) or [
        {"name": "app", "image": "nginx", "ports": [{"containerPort": 8080}]}
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": containers, **spec},
    }


def http_get(ip: str, port: int, path: str = "/") -> tuple[int, str]:
    with urllib.request.urlopen(f"http://{ip}:{port}{path}", timeout=2) as r:
        return r.status, r.read().decode()


def pods_of(sandbox: SandboxHandle, namespace: str, app: str) -> list[dict[str, Any]]:
    return list(sandbox.get("pods", "-n", namespace, "-l", f"app={app}")["items"])


def test_deployment_becomes_available_and_serves_http(sandbox: SandboxHandle, namespace: str) -> None:
    sandbox.apply(deployment("web"), namespace)
    sandbox.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=60s")
    dep = sandbox.get("deployment", "web", "-n", namespace)
    assert dep["status"]["availableReplicas"] == 3
    pods = pods_of(sandbox, namespace, "web")
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 3, "every pod has its own IP"
    for p in pods:
        ip = p["status"]["podIP"]
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(POD_CIDR), "from the sandbox's pod range"
        status, body = http_get(ip, 80)
        assert status == 200
        assert p["metadata"]["name"] in body
        assert p["spec"]["nodeName"] == "podgate-node"
        assert {c["type"]: c["status"] for c in p["status"]["conditions"]} == {
            "PodScheduled": "True",
            "Initialized": "True",
            "ContainersReady": "True",
            "Ready": "True",
        }
        cs = p["status"]["containerStatuses"][0]
        assert cs["ready"] is True and "running" in cs["state"] and cs["restartCount"] == 0


async def test_readiness_gate_holds_pod_until_condition_is_true(
    sandbox: SandboxHandle, namespace: str
) -> None:
    gate = "example.com/load-balancer-ready"
    sandbox.apply(pod_manifest("gated", readinessGates=[{"conditionType": gate}]), namespace)
    pod = wait_for(
        "ContainersReady",
        lambda: (
            (p := sandbox.get("pod", "gated", "-n", namespace))
            and (condition(p, "ContainersReady") or {}).get("status") == "True"
            and p
        ),
    )
    ready = condition(pod, "Ready")
    assert ready is not None and ready["status"] == "False"
    assert ready["reason"] == "ReadinessGatesNotReady"
    assert ready["message"] == f'corresponding condition of pod readiness gate "{gate}" does not exist.'
    row = wide_row(sandbox, namespace, "gated")
    assert row["READINESS GATES"] == "0/1"
    assert row["READY"] == "1/1"  # containers are ready: only the gate holds the pod back

    api = await api_client(str(sandbox.kubeconfig))
    try:
        # The way a custom controller does it: a strategic-merge patch of pods/status with a dict body.
        await client.CoreV1Api(api).patch_namespaced_pod_status(
            "gated",
            namespace,
            {
                "status": {
                    "conditions": [
                        {"type": gate, "status": "True", "reason": "TestSaysSo", "message": "set by the test"}
                    ]
                }
            },
        )
    finally:
        await api.close()

    pod = await asyncio.to_thread(
        wait_for,
        "Ready after the gate",
        lambda: (
            (p := sandbox.get("pod", "gated", "-n", namespace))
            and (condition(p, "Ready") or {}).get("status") == "True"
            and p
        ),
        10,
    )
    assert wide_row(sandbox, namespace, "gated")["READINESS GATES"] == "1/1"
    gate_cond = condition(pod, gate)
    assert gate_cond is not None and gate_cond["status"] == "True" and gate_cond["reason"] == "TestSaysSo"
    for owned in ("PodScheduled", "Initialized", "ContainersReady", "Ready"):
        assert condition(pod, owned) is not None, f"{owned} survived the gate patch"


def test_rollout_restart_replaces_pods_and_their_listeners(sandbox: SandboxHandle, namespace: str) -> None:
    sandbox.apply(deployment("roll", replicas=2), namespace)
    sandbox.kubectl("rollout", "status", "deployment/roll", "-n", namespace, "--timeout=60s")
    old = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods_of(sandbox, namespace, "roll")}
    sandbox.kubectl("rollout", "restart", "deployment/roll", "-n", namespace)
    sandbox.kubectl("rollout", "status", "deployment/roll", "-n", namespace, "--timeout=90s")
    wait_for(
        "old pods to be deleted",
        lambda: not (set(old) & {p["metadata"]["name"] for p in pods_of(sandbox, namespace, "roll")}),
    )
    new = pods_of(sandbox, namespace, "roll")
    assert len(new) == 2 and all((condition(p, "Ready") or {}).get("status") == "True" for p in new)
    listening = {addr for addr, _ in tcp_listeners()}
    for ip in old.values():
        assert f"{ip}:80" not in listening, f"old pod's listener {ip}:80 is gone"
    for p in new:
        assert f"{p['status']['podIP']}:80" in listening


def test_readiness_probe_follows_the_app(sandbox: SandboxHandle, namespace: str) -> None:
    probe = {
        "httpGet": {"path": "/healthz", "port": "http"},
        "periodSeconds": 1,
        "failureThreshold": 2,
        "successThreshold": 2,
    }
    containers = [
        {
            "name": "app",
            "image": "nginx",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": probe,
        }
    ]
    sandbox.apply(pod_manifest("probed", containers=containers), namespace)
    pod = wait_for(
        "Ready",
        lambda: (
            (p := sandbox.get("pod", "probed", "-n", namespace))
            and (condition(p, "Ready") or {}).get("status") == "True"
            and p
        ),
    )
    ip = pod["status"]["podIP"]
    req = urllib.request.Request(f"http://{ip}:8080/control/health?status=503", method="POST")
    urllib.request.urlopen(req, timeout=2).read()
    pod = wait_for(
        "NotReady after failing probes",
        lambda: (
            (p := sandbox.get("pod", "probed", "-n", namespace))
            and (condition(p, "Ready") or {}).get("status") == "False"
            and p
        ),
    )
    assert condition(pod, "ContainersReady") == {
        **condition(pod, "ContainersReady"),  # type: ignore[dict-item]
        "reason": "ContainersNotReady",
        "message": "containers with unready status: [app]",
    }
    events = sandbox.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=probed"
    )
    assert "Readiness probe failed: HTTP probe failed with statuscode: 503" in events
    urllib.request.urlopen(
        urllib.request.Request(f"http://{ip}:8080/control/health?status=200", method="POST"), timeout=2
    ).read()
    wait_for(
        "Ready again",
        lambda: (
            (condition(sandbox.get("pod", "probed", "-n", namespace), "Ready") or {}).get("status") == "True"
        ),
    )


def test_tcp_probe_waits_for_the_startup_delay(sandbox: SandboxHandle, namespace: str) -> None:
    containers = [
        {
            "name": "app",
            "image": "nginx",
            "ports": [{"containerPort": 8080}],
            "env": [{"name": "PODGATE_APP_STARTUP_DELAY", "value": "3"}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        }
    ]
    sandbox.apply(pod_manifest("slow", containers=containers), namespace)
    pod = wait_for(
        "running",
        lambda: (
            (p := sandbox.get("pod", "slow", "-n", namespace)) and p["status"].get("phase") == "Running" and p
        ),
    )
    assert (condition(pod, "Ready") or {}).get("status") == "False", (
        "not ready while the app is not listening"
    )
    pod = wait_for(
        "Ready once listening",
        lambda: (
            (p := sandbox.get("pod", "slow", "-n", namespace))
            and (condition(p, "Ready") or {}).get("status") == "True"
            and p
        ),
        15,
    )
    started = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    ready_at = condition(pod, "Ready")["lastTransitionTime"]  # type: ignore[index]
    assert ready_at > started  # RFC 3339 in UTC compares as text


def test_graceful_deletion_runs_prestop_then_sigterm(sandbox: SandboxHandle, namespace: str) -> None:
    containers = [
        {
            "name": "app",
            "image": "nginx",
            "ports": [{"containerPort": 8080}],
            "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "sleep 2"]}}},
        }
    ]
    sandbox.apply(
        pod_manifest("graceful", containers=containers, terminationGracePeriodSeconds=20), namespace
    )
    pod = wait_for(
        "Ready",
        lambda: (
            (p := sandbox.get("pod", "graceful", "-n", namespace))
            and (condition(p, "Ready") or {}).get("status") == "True"
            and p
        ),
    )
    ip = pod["status"]["podIP"]
    sandbox.kubectl("delete", "pod", "graceful", "-n", namespace, "--wait=false")
    # During preStop the app still serves (SIGTERM has not been sent yet).
    assert http_get(ip, 8080)[0] == 200
    wait_for(
        "the pod object to be gone",
        lambda: "NotFound" in sandbox.kubectl("get", "pod", "graceful", "-n", namespace, check=False),
        15,
    )
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((ip, 8080), timeout=1)


def test_grace_period_bounds_a_slow_shutdown(sandbox: SandboxHandle, namespace: str) -> None:
    containers = [
        {
            "name": "app",
            "image": "nginx",
            "ports": [{"containerPort": 8080}],
            "env": [{"name": "PODGATE_APP_SHUTDOWN_DELAY", "value": "60"}],
        }
    ]
    sandbox.apply(pod_manifest("stubborn", containers=containers, terminationGracePeriodSeconds=2), namespace)
    wait_for(
        "Ready",
        lambda: (
            (condition(sandbox.get("pod", "stubborn", "-n", namespace), "Ready") or {}).get("status")
            == "True"
        ),
    )
    sandbox.kubectl("delete", "pod", "stubborn", "-n", namespace, "--wait=false")
    wait_for(
        "deletion within the grace period",
        lambda: "NotFound" in sandbox.kubectl("get", "pod", "stubborn", "-n", namespace, check=False),
        10,
    )


def test_exited_containers_follow_the_restart_policy(sandbox: SandboxHandle, namespace: str) -> None:
    def crashing(name: str, policy: str, code: str) -> dict[str, Any]:
        containers = [
            {
                "name": "app",
                "image": "nginx",
                "ports": [{"containerPort": 8080}],
                "env": [
                    {"name": "PODGATE_APP_EXIT_AFTER", "value": "0.5"},
                    {"name": "PODGATE_APP_EXIT_CODE", "value": code},
                ],
            }
        ]
        return pod_manifest(name, containers=containers, restartPolicy=policy)

    sandbox.apply(crashing("once-ok", "Never", "0"), namespace)
    sandbox.apply(crashing("once-bad", "Never", "3"), namespace)
    sandbox.apply(crashing("again", "Always", "1"), namespace)
    wait_for(
        "Succeeded",
        lambda: sandbox.get("pod", "once-ok", "-n", namespace)["status"].get("phase") == "Succeeded",
    )
    bad = wait_for(
        "Failed",
        lambda: (
            (p := sandbox.get("pod", "once-bad", "-n", namespace))
            and p["status"].get("phase") == "Failed"
            and p
        ),
    )
    assert bad["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    again = wait_for(
        "a restart after the back-off",
        lambda: (
            (p := sandbox.get("pod", "again", "-n", namespace))
            and p["status"]["containerStatuses"][0]["restartCount"] >= 1
            and p
        ),
        25,
    )
    cs = again["status"]["containerStatuses"][0]
    assert cs["lastState"]["terminated"]["exitCode"] == 1
    assert again["status"]["phase"] == "Running"


def test_a_pod_it_cannot_run_says_why_and_the_agent_keeps_going(
    sandbox: SandboxHandle, namespace: str
) -> None:
    bad_env = [
        {
            "name": "app",
            "image": "nginx",
            "ports": [{"containerPort": 8080}],
            "env": [{"name": "PODGATE_APP_STARTUP_DELAY", "value": "soon"}],
        }
    ]
    clash = [
        {"name": "a", "image": "nginx", "ports": [{"containerPort": 8080}]},
        {"name": "b", "image": "nginx", "ports": [{"containerPort": 8080}]},
    ]
    sandbox.apply(pod_manifest("bad-env", containers=bad_env), namespace)
    sandbox.apply(pod_manifest("clash", containers=clash), namespace)
    pod = wait_for(
        "a waiting reason",
        lambda: (
            (p := sandbox.get("pod", "bad-env", "-n", namespace))
            and "waiting" in p["status"].get("containerStatuses", [{}])[0].get("state", {})
            and p["status"]["containerStatuses"][0]["state"]["waiting"].get("reason")
            == "CreateContainerConfigError"
            and p
        ),
    )
    assert (
        "PODGATE_APP_STARTUP_DELAY='soon' is not a number"
        in pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    )
    clash_pod = wait_for(
        "one container of the clash failing",
        lambda: (
            (p := sandbox.get("pod", "clash", "-n", namespace))
            and any(
                cs.get("state", {}).get("waiting", {}).get("reason") == "CreateContainerError"
                for cs in p["status"].get("containerStatuses", [])
            )
            and p
        ),
    )
    assert (condition(clash_pod, "Ready") or {}).get("status") == "False"
    events = sandbox.kubectl("get", "events", "-n", namespace)
    assert "Error: PODGATE_APP_STARTUP_DELAY='soon'" in events
    # The agent is still serving everyone else.
    sandbox.apply(pod_manifest("fine"), namespace)
    wait_for(
        "a healthy pod after the bad ones",
        lambda: (
            (condition(sandbox.get("pod", "fine", "-n", namespace), "Ready") or {}).get("status") == "True"
        ),
    )


def test_node_and_lease(sandbox: SandboxHandle) -> None:
    nodes = sandbox.get("nodes")["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["podgate-node"]
    ready = next(c for c in nodes[0]["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    lease = sandbox.get("lease", "podgate-node", "-n", "kube-node-lease")
    assert lease["spec"]["holderIdentity"] == "podgate-node"
    assert lease["spec"]["renewTime"]


def test_explicit_command_runs_as_a_local_process(sandbox: SandboxHandle, namespace: str) -> None:
    # The sandbox under test runs with --run-commands: a command is a real process, with the
    # pod's env and $(VAR) expansion, and SIGTERM on deletion.
    containers = [
        {
            "name": "py",
            "image": "python",
            "ports": [{"containerPort": 8080}],
            "command": ["python3", "-m", "http.server", "--bind", "$(POD_IP)", "8080"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        }
    ]
    sandbox.apply(pod_manifest("proc", containers=containers), namespace)
    pod = wait_for(
        "Ready",
        lambda: (
            (p := sandbox.get("pod", "proc", "-n", namespace))
            and (condition(p, "Ready") or {}).get("status") == "True"
            and p
        ),
        30,
    )
    ip = pod["status"]["podIP"]
    status, body = http_get(ip, 8080)
    assert status == 200 and "Directory listing" in body  # python's server, not the built-in app
    sandbox.kubectl("delete", "pod", "proc", "-n", namespace, "--wait=false")
    wait_for(
        "the pod gone",
        lambda: "NotFound" in sandbox.kubectl("get", "pod", "proc", "-n", namespace, check=False),
        20,
    )
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((ip, 8080), timeout=1)


def test_prestop_http_get_is_called_before_sigterm(sandbox: SandboxHandle, namespace: str) -> None:
    containers = [
        {
            "name": "app",
            "image": "nginx",
            "ports": [{"containerPort": 8080}],
            "env": [{"name": "PODGATE_APP_SHUTDOWN_DELAY", "value": "3"}],
            "lifecycle": {"preStop": {"httpGet": {"path": "/prestop", "port": 8080}}},
        }
    ]
    sandbox.apply(pod_manifest("hook", containers=containers, terminationGracePeriodSeconds=10), namespace)
    pod = wait_for(
        "Ready",
        lambda: (
            (p := sandbox.get("pod", "hook", "-n", namespace))
            and (condition(p, "Ready") or {}).get("status") == "True"
            and p
        ),
    )
    ip = pod["status"]["podIP"]

    def prestop_calls() -> int:
        return int(json.loads(http_get(ip, 8080, "/control/stats")[1])["requests"].get("/prestop", 0))

    assert prestop_calls() == 0
    sandbox.kubectl("delete", "pod", "hook", "-n", namespace, "--wait=false")
    # The app keeps serving for its shutdown delay after SIGTERM: the hook's GET is visible.
    assert wait_for("the preStop GET", prestop_calls, 3, 0.05) == 1
