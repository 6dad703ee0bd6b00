"""``podgate status`` and ``podgate gate set`` (also as ``kubectl podgate``) on the sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import SandboxHandle, condition, wait_for

pytestmark = pytest.mark.sandbox
GATE = "example.com/manual"


def run(sandbox: SandboxHandle, *args: str, kubectl: bool = False) -> subprocess.CompletedProcess[str]:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "KUBECONFIG": str(sandbox.kubeconfig), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    cmd = (
        [str(sandbox.kubectl_path), "podgate", *args] if kubectl else [sys.executable, "-m", "podgate", *args]
    )
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)


def test_status_and_gate_set(sandbox: SandboxHandle, namespace: str) -> None:
    applied = time.time()
    sandbox.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "held"},
            "spec": {
                "readinessGates": [{"conditionType": GATE}],
                "containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 8080}]}],
            },
        },
        namespace,
    )
    wait_for(
        "ContainersReady",
        lambda: (
            (condition(sandbox.get("pod", "held", "-n", namespace), "ContainersReady") or {}).get("status")
            == "True"
        ),
    )
    table = run(sandbox, "status", "-n", namespace)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:5] == ["POD", "GATE", "STATUS", "REASON", "PENDING"]
    assert row.split()[:4] == ["held", GATE, "Missing", "NoCondition"]

    as_plugin = run(sandbox, "status", "held", "-n", namespace, "-o", "json", kubectl=True)
    assert as_plugin.returncode == 0, as_plugin.stderr
    [entry] = json.loads(as_plugin.stdout)
    assert entry["gate"] == GATE and entry["status"] == "Missing"
    # Pending since the pod was created: counting, and no longer than the test has run (+1 s:
    # creationTimestamp has whole seconds).
    assert 0 < entry["pending_seconds"] < time.time() - applied + 1, entry

    done = run(sandbox, "gate", "set", "held", GATE, "True", "--reason", "Warm", "-n", namespace)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"pod/held {GATE}=True (reason Warm)"
    pod = wait_for(
        "Ready",
        lambda: (
            (p := sandbox.get("pod", "held", "-n", namespace))
            and (condition(p, "Ready") or {}).get("status") == "True"
            and p
        ),
    )
    cond = condition(pod, GATE)
    assert cond is not None and cond["reason"] == "Warm" and cond["lastTransitionTime"]
    again = run(sandbox, "gate", "set", "held", GATE, "True", "--reason", "Warm", "-n", namespace)
    assert "unchanged" in again.stdout
    assert (
        sandbox.get("pod", "held", "-n", namespace)["metadata"]["resourceVersion"]
        == pod["metadata"]["resourceVersion"]
    ), "no write when nothing changes"
    yaml_out = run(sandbox, "status", "held", "-n", namespace, "-o", "yaml")
    assert "status: 'True'" in yaml_out.stdout and "reason: Warm" in yaml_out.stdout


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["gate", "set", "nosuch", GATE, "True"], "pod {ns}/nosuch not found"),
        (
            ["gate", "set", "lonely", "example.com/other", "True"],
            "pod {ns}/lonely has no readiness gate example.com/other (its gates: none); --force sets",
        ),
        (["gate", "set", "lonely", "bad type", "True"], "'bad type' is not a valid condition type"),
        (["gate", "set", "lonely", GATE, "true"], "status must be True or False"),
    ],
)
def test_gate_set_errors(sandbox: SandboxHandle, namespace: str, args: list[str], error: str) -> None:
    sandbox.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "lonely"},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]},
        },
        namespace,
    )
    result = run(sandbox, *args, "-n", namespace)
    assert result.returncode == 2
    assert error.format(ns=namespace) in result.stderr


def test_gate_set_force(sandbox: SandboxHandle, namespace: str) -> None:
    sandbox.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "free"},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]},
        },
        namespace,
    )
    result = run(sandbox, "gate", "set", "free", "example.com/extra", "False", "--force", "-n", namespace)
    assert result.returncode == 0, result.stderr
    cond = wait_for(
        "the condition", lambda: condition(sandbox.get("pod", "free", "-n", namespace), "example.com/extra")
    )
    assert cond["status"] == "False" and cond["reason"] == "SetFalseByHand"


def test_status_counts_only_services_podgate_serves(sandbox: SandboxHandle, namespace: str) -> None:
    """A class-less ``type: LoadBalancer`` Service is the cloud controller's unless podgate is
    told it has a default provider (deploy/'s cloud overlays have none): ``podgate status`` does
    not tell its pods to restart for a gate podgate would never give them."""
    sandbox.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "behind", "labels": {"app": "vendor"}},
            "spec": {"containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 8080}]}]},
        },
        namespace,
    )
    sandbox.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "vendor", "annotations": {"podgate.dev/prestop": "none"}},
            "spec": {
                "type": "LoadBalancer",
                "selector": {"app": "vendor"},
                "ports": [{"port": 80, "targetPort": 8080}],
            },
        },
        namespace,
    )
    plain = run(sandbox, "status", "behind", "-n", namespace, "-o", "json")
    assert plain.returncode == 0, plain.stderr
    assert [r for r in json.loads(plain.stdout) if r["status"] == "NoGate"] == []
    told = run(sandbox, "status", "behind", "-n", namespace, "-o", "json", "--default-provider", "haproxy")
    assert told.returncode == 0, told.stderr
    [row] = [r for r in json.loads(told.stdout) if r["status"] == "NoGate"]
    assert row["gate"] == "service.readiness.podgate.dev/vendor" and "restart" in row["message"]
    bad = run(sandbox, "status", "-n", namespace, "--load-balancer-class", "service.k8s.aws/nlb")
    assert bad.returncode == 2 and "give CLASS=PROVIDER" in bad.stderr
