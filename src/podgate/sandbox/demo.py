"""``make demo``: the sandbox story, on a real control plane.

Until the controller lands this shows the platform the gates run on: the sandbox comes up, a
Deployment becomes available, its pods answer HTTP on their loopback IPs, and a pod with a
readiness gate waits at READINESS GATES 0/1 until the gate's condition is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from typing import Any

from podgate.sandbox.binaries import Progress
from podgate.sandbox.controlplane import Sandbox

NS = "podgate-demo"
GATE = "example.com/load-balancer-ready"


def main() -> None:
    progress = Progress(sys.stdout)
    sb = Sandbox()
    progress.say(
        "bringing the sandbox up (etcd, kube-apiserver, kube-controller-manager, HAProxy, node agent)"
    )
    sb.up(progress)
    env = {**os.environ, "KUBECONFIG": str(sb.kubeconfig)}
    kubectl = str(sb.binaries.path("kubectl"))

    def k(*args: str, input: str | None = None, show: bool = True) -> str:
        if show:
            print(f"\n$ kubectl {' '.join(args)}", flush=True)
        out = subprocess.run(
            [kubectl, *args], input=input, env=env, capture_output=True, text=True, check=True
        )
        if show:
            print(out.stdout.rstrip(), flush=True)
        return out.stdout

    k("get", "nodes", "-o", "wide")
    if NS not in k("get", "namespaces", "-o", "name", show=False):
        k("create", "namespace", NS)
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{"name": "nginx", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}]
                },
            },
        },
    }
    k("apply", "-f", "-", input=json.dumps(deployment))
    k("rollout", "status", "deployment/web", "-n", NS, "--timeout=120s")
    k("get", "pods", "-n", NS, "-o", "wide")
    pods = json.loads(k("get", "pods", "-n", NS, "-l", "app=web", "-o", "json", show=False))["items"]
    for pod in pods:
        ip = pod["status"]["podIP"]
        with urllib.request.urlopen(f"http://{ip}/", timeout=5) as r:
            print(f"$ curl http://{ip}/  ->  {r.status} {r.read().decode().strip()}")

    gated: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gated", "namespace": NS},
        "spec": {
            "readinessGates": [{"conditionType": GATE}],
            "containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 80}]}],
        },
    }
    k("delete", "pod", "gated", "-n", NS, "--ignore-not-found", "--wait=true", show=False)
    k("apply", "-f", "-", input=json.dumps(gated))
    _wait(
        lambda: (
            "True"
            in k(
                "get",
                "pod",
                "gated",
                "-n",
                NS,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='ContainersReady')].status}",
                show=False,
            )
        )
    )
    print("\nThe containers are ready, but the readiness gate has no condition yet: the pod is not Ready.")
    k("get", "pod", "gated", "-n", NS, "-o", "wide")
    print("\nSetting the gate's condition through the status subresource, as a gate controller does:")
    patch = {"status": {"conditions": [{"type": GATE, "status": "True", "reason": "Demo"}]}}
    _patch_status(sb, NS, "gated", patch)
    _wait(
        lambda: (
            "True"
            in k(
                "get",
                "pod",
                "gated",
                "-n",
                NS,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                show=False,
            )
        )
    )
    k("get", "pod", "gated", "-n", NS, "-o", "wide")
    print(
        "\nThe sandbox keeps running. Explore it with:\n"
        '  eval "$(.venv/bin/podgate sandbox env)"\n'
        f"  kubectl get pods -n {NS} -o wide\n"
        "  .venv/bin/podgate sandbox status\n"
        "Stop it with:\n"
        "  .venv/bin/podgate sandbox down"
    )


def _patch_status(sb: Sandbox, namespace: str, name: str, patch: dict[str, Any]) -> None:
    """kubectl 1.20 has no --subresource: PATCH pods/status directly, as a controller would."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(sb.pki_dir / "ca.crt"))
    req = urllib.request.Request(
        f"{sb.apiserver_url}/api/v1/namespaces/{namespace}/pods/{name}/status",
        data=json.dumps(patch).encode(),
        method="PATCH",
        headers={
            "Content-Type": "application/strategic-merge-patch+json",
            "Authorization": f"Bearer {sb.admin_token()}",
        },
    )
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        r.read()


def _wait(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("demo: timed out waiting; see `podgate sandbox status` and its logs")
        time.sleep(0.3)


if __name__ == "__main__":
    main()
