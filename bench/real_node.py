"""The real node beside the node agent: pod create → Ready, gate True → Ready, memory at 50 pods.

One sandbox per node mode, the same port offset (17000), one after the other (as `sandbox up`:
with the controller, which leaves these pods alone); pods as written for nginx (``nginx``:
Debian's nginx in real containers on the real node, the built-in app in the node agent).  Per
mode: the node's memory (PSS) on an empty node and with ``--scale`` pods Ready (the node agent's
process; for the real node the kubelet, containerd, kube-proxy, the containerd shims and every
container process: pause and nginx), then ``--rounds`` rounds of ``--pods`` pods created at once
(create → Ready, client-side watch), then ``--gate-pods`` gated pods patched True one at a time
(patch → Ready: the kubelet's, or the agent's, reaction).

    .venv/bin/python bench/real_node.py [--rounds 3] [--pods 10] [--gate-pods 5] [--scale 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from common import RESULTS, sandbox, write
from podgate.kube.client import api_client, call
from podgate_sandbox.controlplane import Sandbox, SandboxConfig
from podgate_sandbox.node.host import UNIFIED
from sandbox_bench import bench_create, bench_gate, pod_body, wait_until, watched_namespace

OFFSET = 17000
CONFIGS = {
    "agent": SandboxConfig(port_offset=OFFSET, pod_cidr="127.117.0.0/16", lb_cidr="127.217.0.0/16"),
    "kubelet": SandboxConfig(
        port_offset=OFFSET, pod_cidr="127.117.0.0/16", lb_cidr="127.217.0.0/16", node="kubelet"
    ),
}
NODE_PROCESSES = ("kubelet", "containerd", "kube-proxy")


def pss_kib(pid: int) -> int:
    """A process's proportional set size: its private memory plus its share of pages it shares
    (summing RSS over hundreds of shims and nginx workers would count libc hundreds of times)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def node_pids(sb: Sandbox) -> set[int]:
    """The node's processes: the agent; or the kubelet, containerd, kube-proxy, the shims and
    every container's processes (the kubepods cgroup)."""
    pids = json.loads((sb.state_dir / "pids.json").read_text())
    if sb.config.node == "agent":
        return {int(pids["node-agent"])}
    out = {int(pids[name]) for name in NODE_PROCESSES}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().startswith("containerd-shim"):
                    out.add(int(proc.name))
            except OSError:
                continue
    for procs in (UNIFIED / "kubepods").rglob("cgroup.procs"):
        out |= {int(p) for p in procs.read_text().split()}
    return out


async def bench_memory(api: client.ApiClient, sb: Sandbox, pods: int) -> dict[str, Any]:
    """The node's memory with no pods, then with ``pods`` Ready, settled; the pods are deleted
    after (and gone before the timing rounds start)."""
    core = client.CoreV1Api(api)
    await asyncio.sleep(5.0)
    before = sum(pss_kib(p) for p in node_pids(sb))
    w, task = await watched_namespace(core, "memory")
    await asyncio.gather(
        *(call(core.create_namespaced_pod, "memory", pod_body(f"m{i}")) for i in range(pods))
    )
    await wait_until(lambda: len(w.ready) >= pods, 300)
    await asyncio.sleep(5.0)
    pids = node_pids(sb)
    at_scale = sum(pss_kib(p) for p in pids)
    task.cancel()
    await call(core.delete_namespace, "memory")
    t0 = time.monotonic()
    while (await call(core.list_namespaced_pod, "memory"))["items"]:
        if time.monotonic() - t0 > 120:
            raise TimeoutError("the memory pods were not deleted")
        await asyncio.sleep(0.5)
    return {
        "pods": pods,
        "node_pss_mib_before": before / 1024,
        "node_pss_mib_at_scale": at_scale / 1024,
        "node_pss_kib_per_pod": (at_scale - before) / pods,
        "processes_at_scale": len(pids),
    }


async def measure(sb: Sandbox, args: argparse.Namespace) -> dict[str, Any]:
    api = await api_client(str(sb.kubeconfig))
    api.configuration.connection_pool_maxsize = 32
    try:
        t0 = time.monotonic()
        while "True" not in json.dumps(
            [
                c
                for n in (await call(client.CoreV1Api(api).list_node))["items"]
                for c in n["status"]["conditions"]
            ]
        ):
            if time.monotonic() - t0 > 120:
                raise TimeoutError("the node never turned Ready")
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)  # the default ServiceAccount of new namespaces
        # memory first, on an empty node: the timing rounds leave their pods behind
        memory = await bench_memory(api, sb, args.scale)
        return {
            "memory": memory,
            "create": await bench_create(api, args.pods, args.rounds),
            "gate": await bench_gate(api, args.gate_pods, args.rounds),
        }
    finally:
        await api.close()


def markdown(res: dict[str, Any]) -> str:
    a, k = res["modes"]["agent"], res["modes"]["kubelet"]

    def ms(s: dict[str, float]) -> str:
        return f"{s['p50'] * 1000:.0f} ms / {s['p99'] * 1000:.0f} ms"

    ca, ck = a["create"]["create_to_ready_s"], k["create"]["create_to_ready_s"]
    ga, gk = a["gate"]["patch_to_ready_s"], k["gate"]["patch_to_ready_s"]
    ma, mk = a["memory"], k["memory"]
    return "\n".join(
        [
            "# Real node beside the node agent",
            "",
            f"{res['machine']}; {res['rounds']} rounds; {res['pods']} pods created at once per round "
            f"(`nginx`, no gate); {res['gate_pods']} gated pods per round patched True one at a time; "
            f"memory at {res['scale']} pods; {res['date']}.",
            "",
            "| measure (p50 / p99) | node agent | real node | real / agent (p50) |",
            "|---|---|---|---|",
            f"| pod create → Ready | {ms(ca)} | {ms(ck)} | {ck['p50'] / ca['p50']:.1f} |",
            f"| gate True → pod Ready | {ms(ga)} | {ms(gk)} | {gk['p50'] / ga['p50']:.1f} |",
            *(
                f"| {label} | {ma[key]:.0f} {unit} | {mk[key]:.0f} {unit} | {mk[key] / ma[key]:.1f} |"
                for label, key, unit in (
                    ("node memory (PSS), no pods", "node_pss_mib_before", "MiB"),
                    (f"node memory (PSS) at {res['scale']} pods", "node_pss_mib_at_scale", "MiB"),
                    ("node memory (PSS) per pod", "node_pss_kib_per_pod", "KiB"),
                )
            ),
            "",
            "Memory is the proportional set size (PSS: shared pages divided among their users). "
            "The real node's is the kubelet, containerd, kube-proxy, the containerd shims and "
            "every container process (pause and nginx: a master and two workers); the node agent's is "
            "its one process, which holds every pod's built-in app. Both react to the pod's update "
            "from their watch; the kubelet's pod worker syncs the whole pod (status generated, then "
            "patched by its status manager), the agent computes Ready and writes it.",
            "",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pods", type=int, default=10)
    p.add_argument("--gate-pods", type=int, default=5)
    p.add_argument("--scale", type=int, default=50)
    p.add_argument("--out", default=str(RESULTS / "real_node"))
    args = p.parse_args()
    modes: dict[str, Any] = {}
    for mode, config in CONFIGS.items():
        with tempfile.TemporaryDirectory(prefix=f"podgate-bench-{mode}-") as state:
            print(f"{mode} ...", flush=True)
            with sandbox(config, Path(state)) as sb:
                modes[mode] = asyncio.run(measure(sb, args))
    res = {
        "rounds": args.rounds,
        "pods": args.pods,
        "gate_pods": args.gate_pods,
        "scale": args.scale,
        "modes": modes,
    }
    write(args.out, res, markdown)


if __name__ == "__main__":
    main()
