"""Sandbox benchmark: up time, pod create → Ready, gate → Ready, and the agent at 2,000 pods.

Runs its own sandbox (own state directory, ports and loopback ranges) so it never disturbs one
you have up.  Several rounds, medians reported; JSON and Markdown written to bench/results/.

    .venv/bin/python bench/sandbox_bench.py [--rounds 3] [--pods 100] [--scale 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from common import RESULTS, sandbox, summary, write
from podgate.kube.api import PODS, Kube
from podgate.kube.client import ApiException, ApiKube, api_client, call
from podgate.kube.informer import Informer
from podgate_sandbox.controlplane import Sandbox, SandboxConfig

CONFIG = SandboxConfig(port_offset=15000, pod_cidr="127.110.0.0/16", lb_cidr="127.210.0.0/16")
GATE = "bench.podgate.dev/gate"


def podgate(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "podgate", "sandbox", *args], check=True, capture_output=True)


def bench_up(state: Path, rounds: int) -> dict[str, Any]:
    """Cold: a new state directory (certificates, etcd bootstrap). Warm: restart of an existing one."""
    cold, warm = [], []
    for r in range(rounds):
        d = state / f"up-{r}"
        t0 = time.monotonic()
        podgate(
            "up",
            "--state-dir",
            str(d),
            "--port-offset",
            str(CONFIG.port_offset),
            "--pod-cidr",
            CONFIG.pod_cidr,
            "--lb-cidr",
            CONFIG.lb_cidr,
        )
        cold.append(time.monotonic() - t0)
        podgate("down", "--state-dir", str(d))
        t0 = time.monotonic()
        podgate("up", "--state-dir", str(d))
        warm.append(time.monotonic() - t0)
        podgate("down", "--state-dir", str(d))
    return {"cold_s": summary(cold), "warm_s": summary(warm)}


class Watcher:
    """Records when each pod is first seen Ready / ContainersReady (client-side monotonic time)."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.ready: dict[str, float] = {}
        self.containers_ready: dict[str, float] = {}
        self.informer: Informer[dict[str, Any]] = Informer(
            kube, PODS, namespace=namespace, name=f"bench-{namespace}"
        )
        self.informer.add_handler(self._on)

    def _on(self, kind: str, pod: dict[str, Any], old: dict[str, Any] | None) -> None:
        now = time.monotonic()
        for c in (pod.get("status") or {}).get("conditions") or ():
            if c["status"] != "True":
                continue
            if c["type"] == "Ready":
                self.ready.setdefault(pod["metadata"]["name"], now)
            elif c["type"] == "ContainersReady":
                self.containers_ready.setdefault(pod["metadata"]["name"], now)


def pod_body(name: str, gated: bool = False) -> dict[str, Any]:
    container = {"name": "app", "image": "nginx", "ports": [{"containerPort": 80}]}
    spec: dict[str, Any] = {"containers": [container]}
    if gated:
        spec["readinessGates"] = [{"conditionType": GATE}]
    return {"metadata": {"name": name, "labels": {"bench": "yes"}}, "spec": spec}


async def wait_until(pred: Any, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step timed out")
        await asyncio.sleep(0.01)


async def watched_namespace(core: client.CoreV1Api, ns: str) -> tuple[Watcher, asyncio.Task[None]]:
    await call(core.create_namespace, {"metadata": {"name": ns}})
    # With a real node the ServiceAccount admission plugin refuses pods until the namespace's
    # default ServiceAccount has its token (bench/real_node.py); the token controller makes it.
    deadline = time.monotonic() + 30
    while True:
        try:
            if (await call(core.read_namespaced_service_account, "default", ns)).get("secrets"):
                break
        except ApiException as e:
            if e.status != 404:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"namespace {ns}: no ServiceAccount token")
        await asyncio.sleep(0.05)
    w = Watcher(ApiKube(core.api_client), ns)
    task = asyncio.create_task(w.informer.run())
    await w.informer.synced.wait()
    return w, task


async def create_round(core: client.CoreV1Api, ns: str, pods: int) -> tuple[list[float], float]:
    w, task = await watched_namespace(core, ns)
    created: dict[str, float] = {}
    sem = asyncio.Semaphore(20)

    async def create(name: str) -> None:
        async with sem:
            created[name] = time.monotonic()
            await call(core.create_namespaced_pod, ns, pod_body(name))

    t0 = time.monotonic()
    await asyncio.gather(*(create(f"p{i}") for i in range(pods)))
    await wait_until(lambda: len(w.ready) >= pods, 300)
    task.cancel()
    return [w.ready[n] - created[n] for n in created], max(w.ready.values()) - t0


async def bench_create(api: client.ApiClient, pods: int, rounds: int) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    latencies: list[float] = []
    totals: list[float] = []
    for r in range(rounds):
        each, total = await create_round(core, f"create-{r}", pods)
        latencies += each
        totals.append(total)
    return {"pods_per_round": pods, "create_to_ready_s": summary(latencies), "all_ready_s": summary(totals)}


async def gate_round(core: client.CoreV1Api, ns: str, pods: int) -> list[float]:
    w, task = await watched_namespace(core, ns)
    names = [f"g{i}" for i in range(pods)]
    await asyncio.gather(*(call(core.create_namespaced_pod, ns, pod_body(n, gated=True)) for n in names))
    await wait_until(lambda: len(w.containers_ready) >= pods, 120)
    await asyncio.sleep(1.0)
    latencies = []
    for name in names:  # one at a time, so each latency is the agent's alone
        t0 = time.monotonic()
        await call(
            core.patch_namespaced_pod_status,
            name,
            ns,
            {"status": {"conditions": [{"type": GATE, "status": "True", "reason": "Bench"}]}},
        )
        await wait_until(lambda n=name: n in w.ready, 30)  # type: ignore[misc]
        latencies.append(w.ready[name] - t0)
    task.cancel()
    return latencies


async def bench_gate(api: client.ApiClient, pods: int, rounds: int) -> dict[str, Any]:
    """Gate condition patched True → Ready=True observed: the node agent's reaction time."""
    core = client.CoreV1Api(api)
    latencies: list[float] = []
    for r in range(rounds):
        latencies += await gate_round(core, f"gate-{r}", pods)
    return {"pods_per_round": pods, "patch_to_ready_s": summary(latencies)}


def proc_stats(pid: int) -> tuple[int, float]:
    """(RSS in KiB, CPU seconds used so far) of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return rss, ticks / 100.0


async def bench_scale(api: client.ApiClient, sb: Sandbox, replicas: int, window: float) -> dict[str, Any]:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    pid = json.loads((sb.state_dir / "pids.json").read_text())["node-agent"]
    rss0, cpu0 = proc_stats(pid)
    ns = "scale"
    w, task = await watched_namespace(core, ns)
    container = {
        "name": "app",
        "image": "nginx",
        "ports": [{"containerPort": 80}],
        "readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 10},
    }
    body = {
        "metadata": {"name": "many"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "many"}},
            "template": {"metadata": {"labels": {"app": "many"}}, "spec": {"containers": [container]}},
        },
    }
    t0 = time.monotonic()
    await call(apps.create_namespaced_deployment, ns, body)
    await wait_until(lambda: len(w.ready) >= replicas, 1800)
    all_ready = time.monotonic() - t0
    rss1, cpu1 = proc_stats(pid)
    await asyncio.sleep(window)
    rss2, cpu2 = proc_stats(pid)
    task.cancel()
    listening = sum(1 for p in w.informer.cache.values() if (p.get("status") or {}).get("podIP"))
    return {
        "pods": replicas,
        "pods_with_ip": listening,
        "all_ready_s": all_ready,
        "agent_rss_mib_before": rss0 / 1024,
        "agent_rss_mib_at_scale": max(rss1, rss2) / 1024,
        "agent_rss_kib_per_pod": (max(rss1, rss2) - rss0) / replicas,
        "agent_cpu_s_to_start_all": cpu1 - cpu0,
        "agent_cpu_percent_steady": 100 * (cpu2 - cpu1) / window,
        "steady_window_s": window,
    }


async def run_cluster_benches(sb: Sandbox, args: argparse.Namespace) -> dict[str, Any]:
    api = await api_client(str(sb.kubeconfig))
    api.configuration.connection_pool_maxsize = 32
    try:
        out: dict[str, Any] = {}
        print("pod create → Ready ...", flush=True)
        out["create"] = await bench_create(api, args.pods, args.rounds)
        print("gate → Ready ...", flush=True)
        out["gate"] = await bench_gate(api, args.gate_pods, args.rounds)
        if args.scale:
            print(f"{args.scale} pods ...", flush=True)
            out["scale"] = await bench_scale(api, sb, args.scale, args.idle_window)
        return out
    finally:
        await api.close()


def markdown(res: dict[str, Any]) -> str:
    def ms(s: dict[str, float]) -> str:
        return f"{s['p50'] * 1000:.0f} ms | {s['p99'] * 1000:.0f} ms | {s['max'] * 1000:.0f} ms"

    up, cr, gate = res["up"], res["create"], res["gate"]
    lines = [
        "# Sandbox benchmark",
        "",
        f"{res['machine']}; {res['rounds']} rounds; {res['date']}.",
        "",
        "| measure | p50 | p99 | max | target |",
        "|---|---|---|---|---|",
        f"| `sandbox up`, new state dir (binaries cached) | {ms(up['cold_s'])} | ≤ 30 s |",
        f"| `sandbox up`, existing state dir | {ms(up['warm_s'])} | ≤ 30 s |",
        f"| pod create → Ready ({cr['pods_per_round']} pods at once) | {ms(cr['create_to_ready_s'])} | |",
        f"| all {cr['pods_per_round']} pods Ready | {ms(cr['all_ready_s'])} | |",
        f"| gate condition True → pod Ready | {ms(gate['patch_to_ready_s'])} | ≤ 100 ms |",
    ]
    if "scale" in res:
        s = res["scale"]
        lines += [
            "",
            f"## Node agent with {s['pods']} pods (Deployment, tcpSocket readiness probe every 10 s)",
            "",
            "| measure | value |",
            "|---|---|",
            f"| all {s['pods']} pods Ready after the Deployment is created | {s['all_ready_s']:.0f} s |",
            f"| agent RSS before → at {s['pods']} pods | {s['agent_rss_mib_before']:.0f} MiB → "
            f"{s['agent_rss_mib_at_scale']:.0f} MiB ({s['agent_rss_kib_per_pod']:.0f} KiB per pod) |",
            f"| agent CPU to start them all | {s['agent_cpu_s_to_start_all']:.0f} CPU-s |",
            f"| agent CPU at steady state ({s['steady_window_s']:.0f} s window) | "
            f"{s['agent_cpu_percent_steady']:.1f} % of one core |",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--gate-pods", type=int, default=20)
    parser.add_argument("--scale", type=int, default=2000, help="0 to skip the scale run")
    parser.add_argument("--idle-window", type=float, default=30.0)
    parser.add_argument("--out", default=str(RESULTS / "sandbox"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="podgate-bench-") as tmp:
        state = Path(tmp)
        print("sandbox up/down rounds ...", flush=True)
        res: dict[str, Any] = {"up": bench_up(state, args.rounds)}
        with sandbox(CONFIG, state / "main") as sb:
            res.update(asyncio.run(run_cluster_benches(sb, args)))
    res["rounds"] = args.rounds
    write(args.out, res, markdown)


if __name__ == "__main__":
    main()
