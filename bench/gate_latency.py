"""Gate latency: how soon after HAProxy marks a target UP does its gate turn True?

In a sandbox of its own with the podgate controller: a LoadBalancer Service (HTTP check every
``--interval`` s, ``--rise`` passes to turn healthy) and a Deployment of ``--pods`` gated pods,
rolled ``--rounds`` times.  A poller reads HAProxy's ``show stat`` every 10 ms to time each
target's UP; a watch times each pod's ContainersReady and gate condition.  Reported side by side:

- UP → gate True (podgate's own delay; target p99 ≤ 250 ms);
- ContainersReady → gate True, and its ratio to the load balancer's minimum (rise × interval);
- the controller's CPU while nothing is pending (nothing should be polled).

    .venv/bin/python bench/gate_latency.py [--rounds 5] [--pods 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from common import RESULTS, sandbox, summary, write
from podgate.kube.api import PODS
from podgate.kube.client import ApiKube, api_client, call
from podgate.kube.informer import Informer
from podgate.providers.haproxy_config import target_of_server
from podgate.providers.haproxy_runtime import Runtime
from podgate_sandbox.controlplane import Sandbox, SandboxConfig

CONFIG = SandboxConfig(port_offset=16000, pod_cidr="127.111.0.0/16", lb_cidr="127.211.0.0/16")
NS = "latency"
GATE = "service.readiness.podgate.dev/web"


class Timeline:
    """First time (monotonic) each pod reached ContainersReady / gate True, each target UP."""

    def __init__(self) -> None:
        self.containers_ready: dict[str, float] = {}
        self.gate_true: dict[str, float] = {}
        self.ip_of: dict[str, str] = {}
        self.up: dict[str, float] = {}

    def on_pod(self, kind: str, pod: dict[str, Any], old: dict[str, Any] | None) -> None:
        now, name = time.monotonic(), pod["metadata"]["name"]
        if ip := (pod.get("status") or {}).get("podIP"):
            self.ip_of[name] = ip
        for c in (pod.get("status") or {}).get("conditions") or ():
            if c["status"] == "True" and c["type"] == "ContainersReady":
                self.containers_ready.setdefault(name, now)
            if c["status"] == "True" and c["type"] == GATE:
                self.gate_true.setdefault(name, now)

    async def poll_haproxy(self, runtime: Runtime, backend: str) -> None:
        while True:
            try:
                for s in await runtime.servers(backend):
                    target = target_of_server(s.name, s.address)
                    if target and s.status == "UP":
                        self.up.setdefault(target.ip, time.monotonic())
            except Exception:  # the backend may not exist yet
                pass
            await asyncio.sleep(0.01)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


async def run(sb: Sandbox, args: argparse.Namespace) -> dict[str, Any]:
    api = await api_client(str(sb.kubeconfig))
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    timeline = Timeline()
    informer: Informer[dict[str, Any]] = Informer(ApiKube(api), PODS, namespace=NS, name="bench")
    informer.add_handler(timeline.on_pod)
    await call(
        core.create_namespace,
        {"metadata": {"name": NS, "labels": {"podgate.dev/pod-readiness-gate-inject": "enabled"}}},
    )
    tasks = [
        asyncio.create_task(informer.run()),
        asyncio.create_task(
            timeline.poll_haproxy(Runtime(str(sb.haproxy_runtime_socket)), f"podgate.{NS}.web.80")
        ),
    ]
    await call(
        core.create_namespaced_service,
        NS,
        {
            "metadata": {
                "name": "web",
                "annotations": {
                    "podgate.dev/health-check-path": "/healthz",
                    "podgate.dev/health-check-interval": str(args.interval),
                    "podgate.dev/healthy-threshold": str(args.rise),
                },
            },
            "spec": {
                "type": "LoadBalancer",
                "selector": {"app": "web"},
                "ports": [{"port": 80, "targetPort": 8080}],
            },
        },
    )
    await asyncio.sleep(2)
    container = {"name": "app", "image": "nginx", "ports": [{"containerPort": 8080}]}
    body = {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": args.pods,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [container]}},
        },
    }
    await call(apps.create_namespaced_deployment, NS, body)
    for r in range(args.rounds):
        if r:
            patch = {"spec": {"template": {"metadata": {"annotations": {"bench/round": str(r)}}}}}
            await call(apps.patch_namespaced_deployment, "web", NS, patch)
        previous = set(timeline.gate_true)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            live = {
                p["metadata"]["name"]
                for p in informer.cache.values()
                if not p["metadata"].get("deletionTimestamp")
            }
            # Done when every pod is from this round, its gate True, and the old pods are gone.
            if (
                len(live) == args.pods == len(informer.cache)
                and not live & previous
                and live <= set(timeline.gate_true)
            ):
                break
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError(f"round {r}: rollout did not finish")
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    # Idle: nothing pending, so the controller should not be polling HAProxy.
    pid = json.loads((sb.state_dir / "pids.json").read_text())["podgate-controller"]
    await asyncio.sleep(3)
    c0 = cpu_seconds(pid)
    await asyncio.sleep(args.idle_window)
    idle_cpu = 100 * (cpu_seconds(pid) - c0) / args.idle_window
    for t in tasks:
        t.cancel()
    await api.close()

    minimum = args.interval * args.rise
    up_to_gate, cr_to_gate = [], []
    for name, t_gate in timeline.gate_true.items():
        ip = timeline.ip_of.get(name)
        if ip in timeline.up:
            up_to_gate.append(t_gate - timeline.up[ip])
        if name in timeline.containers_ready:
            cr_to_gate.append(t_gate - timeline.containers_ready[name])
    return {
        "pods": args.pods,
        "rounds": args.rounds,
        "interval_s": args.interval,
        "rise": args.rise,
        "lb_minimum_s": minimum,
        "up_to_gate_s": summary(up_to_gate),
        "containers_ready_to_gate_s": summary(cr_to_gate),
        "ratio_to_lb_minimum": {k: v / minimum for k, v in summary(cr_to_gate).items() if k != "n"},
        "controller_idle_cpu_percent": idle_cpu,
        "idle_window_s": args.idle_window,
    }


def markdown(res: dict[str, Any]) -> str:
    u, c, r = res["up_to_gate_s"], res["containers_ready_to_gate_s"], res["ratio_to_lb_minimum"]
    return (
        "\n".join(
            [
                "# Gate latency benchmark",
                "",
                f"{res['machine']}; {res['rounds']} rollouts of {res['pods']} pods; HTTP check every "
                f"{res['interval_s']:g} s, {res['rise']} passes to turn healthy (load balancer minimum "
                f"{res['lb_minimum_s']:g} s); {res['date']}.",
                "",
                "| measure | p50 | p99 | max | target |",
                "|---|---|---|---|---|",
                f"| HAProxy UP → gate True | {u['p50'] * 1000:.0f} ms | {u['p99'] * 1000:.0f} ms | "
                f"{u['max'] * 1000:.0f} ms | p99 ≤ 250 ms |",
                f"| ContainersReady → gate True | {c['p50']:.2f} s | {c['p99']:.2f} s | {c['max']:.2f} s | |",
                f"| ratio to the load balancer's minimum | {r['p50']:.3f} | {r['p99']:.3f} | "
                f"{r['max']:.3f} | "
                "p50 ≤ 1.05, p99 ≤ 1.2 |",
                "",
                f"Controller CPU with nothing pending ({res['idle_window_s']:g} s window): "
                f"{res['controller_idle_cpu_percent']:.1f} % of one core.",
                "",
                f"UP is timed by polling HAProxy every 10 ms, so it is late by up to 10 ms and the first "
                f"row early by as much; n = {u['n']} targets.",
            ]
        )
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pods", type=int, default=6)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--rise", type=int, default=3)
    parser.add_argument("--idle-window", type=float, default=10.0)
    parser.add_argument("--out", default=str(RESULTS / "gate_latency"))
    args = parser.parse_args()
    with sandbox(CONFIG) as sb:
        res = asyncio.run(run(sb, args))
    write(args.out, res, markdown)


if __name__ == "__main__":
    main()
