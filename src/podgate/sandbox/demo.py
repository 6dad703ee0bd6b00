"""``make demo``: podgate's story on the sandbox, as the cloud vendors' guides tell theirs.

Label a namespace, create a LoadBalancer Service and see its EXTERNAL-IP, create a Deployment
and watch READINESS GATES go 0/1 → 1/1 as HAProxy's own health check passes, then send
traffic through the load balancer's address.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from typing import Any

from podgate.sandbox.binaries import Progress
from podgate.sandbox.controlplane import Sandbox

NS = "podgate-demo"


def main() -> None:
    progress = Progress(sys.stdout)
    sb = Sandbox()
    progress.say(
        "bringing the sandbox up: etcd, kube-apiserver, kube-controller-manager, HAProxy, "
        "node agent, podgate controller"
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
        if show and out.stdout.strip():
            print(out.stdout.rstrip(), flush=True)
        return out.stdout

    k("get", "nodes", "-o", "wide")
    if NS in k("get", "namespaces", "-o", "name", show=False):
        progress.say(f"removing the previous demo's namespace {NS}")
        k("delete", "namespace", NS, "--timeout=120s", show=False)
    k("create", "namespace", NS)
    print("\n1. Opt the namespace in: new pods get one readiness gate per load-balanced Service.")
    k("label", "namespace", NS, "podgate.dev/pod-readiness-gate-inject=enabled")

    print("\n2. A LoadBalancer Service; HAProxy checks GET /healthz every second, 3 passes to turn healthy.")
    service: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "web",
            "namespace": NS,
            "annotations": {
                "podgate.dev/health-check-path": "/healthz",
                "podgate.dev/health-check-interval": "1",
                "podgate.dev/healthy-threshold": "3",
            },
        },
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": "http"}],
        },
    }
    k("apply", "-f", "-", input=json.dumps(service))
    ip = _wait(
        lambda: k(
            "get",
            "service",
            "web",
            "-n",
            NS,
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
            show=False,
        ).strip()
    )
    k("get", "service", "web", "-n", NS)

    print("\n3. A Deployment: watch READINESS GATES go 0/1 -> 1/1 once HAProxy says healthy.")
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
                    "containers": [
                        {
                            "name": "nginx",
                            "image": "nginx:1.25",
                            "ports": [{"name": "http", "containerPort": 8080}],
                        }
                    ]
                },
            },
        },
    }
    k("apply", "-f", "-", input=json.dumps(deployment))
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < 60:
        out = k("get", "pods", "-n", NS, "-o", "wide", show=False)
        rows = [ln for ln in out.splitlines()[1:] if ln.strip()]
        if out != last and rows:
            print(f"\n[{time.monotonic() - t0:4.1f}s]\n" + out.rstrip(), flush=True)
            last = out
        if len(rows) == 3 and all(ln.split()[-1] == "1/1" for ln in rows):
            break
        time.sleep(0.5)
    pod = json.loads(k("get", "pods", "-n", NS, "-o", "json", show=False))["items"][0]
    gate = next(c for c in pod["status"]["conditions"] if c["type"].startswith("service.readiness"))
    print(
        f"\n{pod['metadata']['name']}: {gate['type']}={gate['status']} ({gate['reason']}): {gate['message']}"
    )

    print(f"\n4. Traffic through the load balancer's address http://{ip}/:")
    seen: Counter[str] = Counter()
    for _ in range(30):
        with urllib.request.urlopen(f"http://{ip}/", timeout=5) as r:
            seen[r.headers["X-Pod-Name"]] += 1
    for name, n in sorted(seen.items()):
        print(f"  {n:3d} responses from {name}")

    print(
        "\nThe sandbox keeps running. Explore it with:\n"
        '  eval "$(.venv/bin/podgate sandbox env)"\n'
        f"  kubectl get pods -n {NS} -o wide\n"
        f"  kubectl describe pod -n {NS}      # the gate's Events\n"
        "  .venv/bin/podgate sandbox status\n"
        "Stop it with:\n"
        "  .venv/bin/podgate sandbox down"
    )


def _wait(fn: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        if time.monotonic() > deadline:
            raise SystemExit("demo: timed out waiting; see `podgate sandbox status` and its logs")
        time.sleep(0.3)
    return value


if __name__ == "__main__":
    main()
