"""``make demo``: podgate's story on the sandbox, as the cloud vendors' guides tell theirs.

Label a namespace, create a LoadBalancer Service and see its EXTERNAL-IP, create a Deployment
and watch READINESS GATES go 0/1 → 1/1 as HAProxy's own health check passes, then send
traffic through the load balancer's address.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from podgate.kube.client import api_client
from podgate_sandbox.binaries import Progress
from podgate_sandbox.controlplane import Sandbox
from podgate_sandbox.rollout import RolloutLab
from podgate_sandbox.termination import Scenario, TerminationLab

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

    # client and server of one release: the sandbox's kubectl is built with its control plane
    k("version")
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

    asyncio.run(_rollouts(sb, progress, k))
    asyncio.run(_terminations(sb, progress, k))

    print(
        "\nThe sandbox keeps running. Explore it with:\n"
        '  eval "$(.venv/bin/podgate sandbox env)"\n'
        f"  kubectl get pods -n {NS} -o wide\n"
        f"  kubectl describe pod -n {NS}      # the gate's Events\n"
        "  .venv/bin/podgate sandbox status\n"
        "Stop it with:\n"
        "  .venv/bin/podgate sandbox down"
    )


async def _rollouts(sb: Sandbox, progress: Progress, k: Any) -> None:
    """A rollout under load, without and with podgate, side by side."""
    from podgate_sandbox.plots import timeline

    print("\n5. Rolling updates under a steady 250 requests/s through each Service's EXTERNAL-IP.")
    names = ["plain", "workaround", "podgate"]
    for name in names:
        if f"namespace/rollout-{name}\n" in k("get", "namespaces", "-o", "name", show=False):
            k("delete", "namespace", f"rollout-{name}", "--timeout=120s", show=False)
    api = await api_client(str(sb.kubeconfig))
    lab = RolloutLab(api, str(sb.haproxy_runtime_socket), replicas=6, interval=1.0, rise=3)
    results = {}
    try:
        for name in names:
            progress.say(f"{name}: {lab.scenarios[name].title}: deploying 6 replicas behind a LoadBalancer")
            ip = await lab.prepare(name)
            progress.say(f"{name}: rollout restart under load through http://{ip}/ ...")
            results[name] = await lab.round(name, ip, 1)
            r = results[name]
            progress.say(f"{name}: {r.requests} requests, {r.failed} failed, rollout {r.rollout_s:.1f} s")
    finally:
        await lab.close()
        await api.close()
    print(f"\n{'scenario':<40}{'requests':>9}{'failed':>8}{'rollout':>10}  gate latency / LB minimum")
    for name, r in results.items():
        ratio = (
            f"{statistics.median(r.gate_latency_s) / lab.lb_minimum:.2f} (p50)" if r.gate_latency_s else "-"
        )
        title = f"{name} ({lab.scenarios[name].title})"
        print(f"{title:<40.40}{r.requests:>9}{r.failed:>8}{r.rollout_s:>9.1f}s  {ratio}")
    out = Path("demo-output")
    for name, r in results.items():
        path = timeline(r, f"{name}: {lab.scenarios[name].title}", out / f"rollout-{name}.png", lab.replicas)
        print(f"timeline: {path}")


async def _terminations(sb: Sandbox, progress: Progress, k: Any) -> None:
    """A scale-down under slow POSTs, without a preStop hook and with podgate's drain hook, on a
    cloud-like data plane (the drain takes effect 5 s after podgate asks; no retries)."""
    print(
        "\n6. Scale-down 6 -> 2 under 40 POSTs/s (0.5-1 s each) to an app that aborts at SIGTERM, on a "
        "cloud-like load balancer (drains take effect 5 s late, no retries)."
    )
    scenarios = [Scenario("none", "cloud"), Scenario("drain", "cloud")]
    api = await api_client(str(sb.kubeconfig))
    lab = TerminationLab(
        api,
        str(sb.haproxy_runtime_socket),
        f"http://127.0.0.1:{sb.config.agent_healthz_port}",
        prefix="demo-term",
    )
    for s in scenarios:
        if f"namespace/{lab.namespace(s)}\n" in k("get", "namespaces", "-o", "name", show=False):
            k("delete", "namespace", lab.namespace(s), "--timeout=120s", show=False)
    results = {}
    try:
        for s in scenarios:
            progress.say(f"{s.name}: {s.title(lab.sleep, lab.propagation)}: deploying 6 replicas")
            ip = await lab.prepare(s)
            progress.say(f"{s.name}: scaling down to 2 under load through http://{ip}/ ...")
            results[s] = await lab.round(s, ip, "scale-down", 1)
    finally:
        await api.close()
    print(f"\n{'scenario':<68}{'requests':>9}{'failed':>8}  deletion -> SIGTERM   SIGTERM - LB drained")
    for s, r in results.items():
        sigterm = [p.to_sigterm for p in r.pods if p.to_sigterm is not None]
        after = [
            p.to_sigterm - p.lb_drained
            for p in r.pods
            if p.to_sigterm is not None and p.lb_drained is not None
        ]
        title = s.title(lab.sleep, lab.propagation)
        print(
            f"{title:<68.68}{r.requests:>9}{r.failed:>8}  max {max(sigterm, default=0):5.2f} s"
            f"          max {max(after, default=0):+5.2f} s"
        )
    hook = json.loads(k("get", "pods", "-n", lab.namespace(scenarios[1]), "-o", "json", show=False))["items"][
        0
    ]
    print(f"\nthe hook podgate injected: {json.dumps(hook['spec']['containers'][0]['lifecycle']['preStop'])}")


def _wait(fn: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        if time.monotonic() > deadline:
            raise SystemExit("demo: timed out waiting; see `podgate sandbox status` and its logs")
        time.sleep(0.3)
    return value


if __name__ == "__main__":
    main()
