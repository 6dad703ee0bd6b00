"""Churn: pods created and deleted by the thousand through the API server; the controller's memory
must stay flat (issue 21: every per-pod, per-target and per-Service map forgotten when its
object goes).

In a sandbox of its own (port offset 16500; node agent, HAProxy, the controller talking to
HAProxy's runtime API directly): one namespace opted in to injection, one LoadBalancer Service
(HAProxy, TCP check every second, 2 passes to turn healthy, 1 s deregistration delay) and its
pods, created by the benchmark in batches and deleted a batch later (gracefully: the node agent
runs podgate's preStop drain hook, stops the app and deletes the pod).  Each pod lives about one
batch's time, so pods go in every state podgate tracks: unscheduled, gate pending, registered and
health checking, Ready, draining.  A cycle is one pod created and gone.

Reported: the controller's RSS at the start (Service provisioned, no pod yet), every 1,000
cycles, and, settled (every pod gone, the controller idle), after half the cycles and after all
of them; the entries of every map the controller tracks (``podgate_tracked_entries``) at the
same points; its CPU seconds; and what podgate did (gate writes, drain hooks' answers, reconcile
errors) to show the cycles were real.  Bounded by ``--timeout``: past it no new pod is made, the
run finishes the ones alive and reports the cycles done.

    .venv/bin/python bench/churn.py [--cycles 20000] [--batch 100] [--timeout 1800]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import deque
from typing import Any

from common import RESULTS, sandbox, write
from podgate.kube.api import NAMESPACES, PODS, SERVICES, KubeError, NotFound
from podgate.kube.client import ApiKube, api_client
from podgate.kube.informer import Informer
from podgate_sandbox.controlplane import Sandbox, SandboxConfig
from podgate_sandbox.processes import alive
from scale import Process, scrape, total

CONFIG = SandboxConfig(
    port_offset=16500, pod_cidr="127.119.0.0/16", lb_cidr="127.219.0.0/16", data_plane=False
)
NS = "churn"
INJECT = "podgate.dev/pod-readiness-gate-inject"
GATE = "service.readiness.podgate.dev/churn"
#: settled: the controller's RSS is read after this long with no pod left and its queues empty
SETTLE_S = 10.0
#: the controller's queues: what it still has to send (Events, gate writes) after the last pod went
BACKLOG = ("events.outstanding", "gatewriter.wanted", "gatewriter.queued", "gatewriter.writing")


def service_body() -> dict[str, Any]:
    return {
        "metadata": {
            "name": "churn",
            "annotations": {
                "podgate.dev/health-check-interval": "1",
                "podgate.dev/healthy-threshold": "2",
                "podgate.dev/deregistration-delay": "1",
            },
        },
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "churn"},
            "ports": [{"port": 80, "targetPort": "http"}],
        },
    }


def pod_body(name: str) -> dict[str, Any]:
    container = {"name": "app", "image": "nginx", "ports": [{"name": "http", "containerPort": 8080}]}
    return {
        "metadata": {"name": name, "labels": {"app": "churn"}},
        "spec": {"containers": [container], "terminationGracePeriodSeconds": 3},
    }


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """What the benchmark's watch keeps of a pod: its name, deletion and whether its gate opened."""
    meta = obj["metadata"]
    conditions = (obj.get("status") or {}).get("conditions") or ()
    return {
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "resourceVersion": meta.get("resourceVersion"),
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "gated": any(c.get("type") == GATE for c in conditions),
        "open": any(c.get("type") == GATE and c.get("status") == "True" for c in conditions),
    }


class Tally:
    """What the benchmark's own watch saw: pods gone, pods that got a gate condition, and pods
    whose gate opened before their deletion."""

    def __init__(self) -> None:
        self.gone = self.gated = self.opened = 0

    def on_pod(self, kind: str, pod: dict[str, Any], old: dict[str, Any] | None) -> None:
        if kind == "DELETED":
            self.gone += 1
            return
        if pod["gated"] and (old is None or not old["gated"]):
            self.gated += 1
        if pod["open"] and (old is None or not old["open"]):
            self.opened += 1


class Bench:
    def __init__(self, sb: Sandbox, kube: ApiKube, args: argparse.Namespace) -> None:
        self.sb, self.kube, self.args = sb, kube, args
        self.tally = Tally()
        self.informer: Informer[dict[str, Any]] = Informer(
            kube, PODS, namespace=NS, name="churn", project=slim
        )
        self.informer.add_handler(self.tally.on_pod)
        pids = json.loads((sb.state_dir / "pids.json").read_text())
        self.controller = Process(pids["podgate-controller"])
        self.metrics_url = f"http://127.0.0.1:{CONFIG.port(8081)}/metrics"
        self.samples: list[dict[str, Any]] = []
        self.made = 0
        self.t0 = time.monotonic()
        self.cpu0 = 0.0
        self.errors = 0

    async def setup(self) -> None:
        await self.kube.create(NAMESPACES, {"metadata": {"name": NS, "labels": {INJECT: "enabled"}}})
        await self.kube.create(SERVICES, service_body(), NS)
        deadline = time.monotonic() + 120
        while True:
            svc = await self.kube.get(SERVICES, "churn", NS)
            if ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the Service did not get its load balancer")
            await asyncio.sleep(0.5)
        await asyncio.sleep(SETTLE_S)  # the controller idle before the first reading

    def tracked(self) -> dict[str, float]:
        samples = scrape(self.metrics_url)
        return {
            dict(labels)["map"]: v
            for (name, labels), v in samples.items()
            if name == "podgate_tracked_entries"
        }

    async def settle(self) -> float:
        """Wait until the controller has sent what it queued (Events lag behind a churn: two
        senders), then ``SETTLE_S`` more; the seconds the backlog took."""
        t0 = time.monotonic()
        for _ in range(300):  # at most 5 minutes
            if not sum(self.tracked().get(m, 0) for m in BACKLOG):
                break
            await asyncio.sleep(1.0)
        took = time.monotonic() - t0
        await asyncio.sleep(SETTLE_S)
        return took

    def sample(self, label: str, settled: bool, backlog_s: float | None = None) -> dict[str, Any]:
        s = {
            "label": label,
            "cycles": self.tally.gone,
            "settled": settled,
            "elapsed_s": round(time.monotonic() - self.t0, 1),
            "rss_mib": round(self.controller.rss_mib(), 1),
            "hwm_mib": round(self.controller.status("VmHWM") / 1024, 1),
            "cpu_s": round(self.controller.cpu_s() - self.cpu0, 1),
            "tracked": self.tracked(),
        }
        if backlog_s is not None:
            s["backlog_s"] = round(backlog_s, 1)
        self.samples.append(s)
        print(
            f"  {label}: {s['cycles']} cycles, {s['elapsed_s']:.0f} s, RSS {s['rss_mib']:.1f} MiB, "
            f"tracked {sum(s['tracked'].values()):.0f}",
            flush=True,
        )
        return s

    async def _create(self, name: str) -> None:
        for attempt in range(5):
            try:
                await self.kube.create(PODS, pod_body(name), NS)
                return
            except KubeError as e:
                self.errors += 1
                if attempt == 4:
                    raise
                print(f"  create {name}: {e}; again", file=sys.stderr, flush=True)
                await asyncio.sleep(0.5 * (attempt + 1))

    async def _delete(self, name: str) -> None:
        for attempt in range(5):
            try:
                await self.kube.delete(PODS, name, NS)
                return
            except NotFound:
                return
            except KubeError as e:
                self.errors += 1
                if attempt == 4:
                    raise
                print(f"  delete {name}: {e}; again", file=sys.stderr, flush=True)
                await asyncio.sleep(0.5 * (attempt + 1))

    async def _all(self, op: Any, names: list[str]) -> None:
        sem = asyncio.Semaphore(self.args.concurrency)

        async def one(name: str) -> None:
            async with sem:
                await op(name)

        await asyncio.gather(*(one(n) for n in names))

    async def wait_until(self, pred: Any, limit: float, what: str) -> None:
        deadline = time.monotonic() + limit
        while not pred():
            if not alive(self.controller.pid, "podgate"):
                raise RuntimeError("the controller has exited")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}: {len(self.informer.cache)} pods left")
            await asyncio.sleep(0.1)

    async def churn(self, until: int, deadline: float) -> bool:
        """Make pods in batches, each deleted once the next is made, until ``until`` pods were
        made (or the deadline passed: False); then wait for every pod to be gone."""
        batch = self.args.batch
        alive_batches: deque[list[str]] = deque()
        next_mark = (self.tally.gone // 1000 + 1) * 1000
        in_time = True
        while self.made < until:
            if time.monotonic() > deadline:
                in_time = False
                print(f"  the time limit passed after {self.made} pods made: finishing", flush=True)
                break
            names = [f"c-{i}" for i in range(self.made, min(self.made + batch, until))]
            await self._all(self._create, names)
            self.made += len(names)
            alive_batches.append(names)
            if len(alive_batches) > 1:
                await self._all(self._delete, alive_batches.popleft())
            # back-pressure: the sandbox's node agent finishes the deletions before more are made
            await self.wait_until(lambda: len(self.informer.cache) <= 2 * batch, 600, "deletions to finish")
            while self.tally.gone >= next_mark:
                self.sample(f"{next_mark} cycles", settled=False)
                next_mark += 1000
        while alive_batches:
            await self._all(self._delete, alive_batches.popleft())
        await self.wait_until(lambda: not self.informer.cache, 600, "every pod to be gone")
        return in_time


async def run(sb: Sandbox, args: argparse.Namespace) -> dict[str, Any]:
    api = await api_client(str(sb.kubeconfig))
    api.configuration.connection_pool_maxsize = 32
    kube = ApiKube(api)
    bench = Bench(sb, kube, args)
    task = asyncio.create_task(bench.informer.run())
    try:
        await bench.setup()
        await bench.informer.synced.wait()
        bench.t0, bench.cpu0 = time.monotonic(), bench.controller.cpu_s()
        before = await asyncio.to_thread(scrape, bench.metrics_url)
        start = bench.sample("start", settled=True)
        deadline = time.monotonic() + args.timeout
        half = args.cycles // 2
        in_time = await bench.churn(half, deadline)
        middle = bench.sample(f"{bench.tally.gone} cycles, settled", True, await bench.settle())
        if in_time:
            in_time = await bench.churn(args.cycles, deadline)
        end = bench.sample(f"{bench.tally.gone} cycles, settled", True, await bench.settle())
        after = await asyncio.to_thread(scrape, bench.metrics_url)

        def delta(name: str, **labels: str) -> float:
            return total(after, name, **labels) - total(before, name, **labels)

        return {
            "cycles_asked": args.cycles,
            "cycles": bench.tally.gone,
            "batch": args.batch,
            "in_time": in_time,
            "took_s": round(time.monotonic() - bench.t0, 1),
            "rss_mib": {"start": start["rss_mib"], "middle": middle["rss_mib"], "end": end["rss_mib"]},
            "middle_cycles": middle["cycles"],
            "controller_cpu_s": end["cpu_s"],
            "pods_gated": bench.tally.gated,
            "pods_gate_opened": bench.tally.opened,
            "podgate": {
                "gate_writes": delta("podgate_gate_transitions_total"),
                "drain_hooks": {
                    r: delta("podgate_drain_requests_total", result=r)
                    for r in ("drained", "timeout", "no_targets", "not_terminating", "unknown_pod", "error")
                    if delta("podgate_drain_requests_total", result=r)
                },
                "reconcile_errors": delta("controller_runtime_reconcile_errors_total"),
                "reconciles": delta("controller_runtime_reconcile_total"),
            },
            "api_retries": bench.errors,
            "samples": bench.samples,
        }
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()


def markdown(res: dict[str, Any]) -> str:
    rss = res["rss_mib"]
    settled = [s for s in res["samples"] if s["settled"]]
    maps = sorted({m for s in settled for m in s["tracked"]})
    lines = [
        "# Churn benchmark",
        "",
        f"{res['machine']}; {res['cycles']:,} pod create/delete cycles"
        + ("" if res["cycles"] >= res["cycles_asked"] else f" (of {res['cycles_asked']:,} asked)")
        + f" through the API server, in batches of {res['batch']} (each deleted once the next is made), "
        f"one gated Service on HAProxy, the node agent; {res['took_s'] / 60:.1f} min; {res['date']}.",
        "",
        "| controller RSS | start | after " + f"{res['middle_cycles']:,} | after {res['cycles']:,} |",
        "|---|---|---|---|",
        f"| MiB (settled: every pod gone, the controller's Events and writes sent, 10 s idle) | "
        f"{rss['start']:.1f} | {rss['middle']:.1f} | "
        f"{rss['end']:.1f} |",
        "",
        "Entries of every map the controller tracks (`podgate_tracked_entries`), settled:",
        "",
        "| map | " + " | ".join(s["label"] for s in settled) + " |",
        "|---|" + "---|" * len(settled),
    ]
    for m in maps:
        lines.append(f"| {m} | " + " | ".join(f"{s['tracked'].get(m, 0):.0f}" for s in settled) + " |")
    lines += [
        "",
        "RSS while churning (not settled: up to two batches alive, Events queued), every 1,000 "
        "cycles; settled rows say how long the controller took to send its backlog:",
        "",
        "| cycles | elapsed | RSS | tracked entries (sum) |",
        "|---|---|---|---|",
    ]
    for s in res["samples"]:
        lines.append(
            f"| {s['cycles']:,}{_settled(s)} | {s['elapsed_s']:.0f} s | "
            f"{s['rss_mib']:.1f} MiB | {sum(s['tracked'].values()):.0f} |"
        )
    p = res["podgate"]
    drains = ", ".join(f"{n:.0f} {r}" for r, n in sorted(p["drain_hooks"].items())) or "none"
    lines += [
        "",
        f"What podgate did: {res['pods_gated']:,} pods got a gate condition, {res['pods_gate_opened']:,} "
        f"saw it open before their deletion; {p['gate_writes']:.0f} gate writes; "
        f"preStop drain hooks: {drains}; "
        f"{p['reconciles']:.0f} reconciles, {p['reconcile_errors']:.0f} errors; controller CPU "
        f"{res['controller_cpu_s']:.0f} s.",
    ]
    if res.get("note"):
        lines += ["", res["note"]]
    return "\n".join(lines) + "\n"


def _settled(sample: dict[str, Any]) -> str:
    if not sample["settled"]:
        return ""
    if "backlog_s" in sample:
        return f" (settled; backlog sent in {sample['backlog_s']:.0f} s)"
    return " (settled)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20000)
    parser.add_argument(
        "--batch", type=int, default=100, help="pods made at once (and deleted a batch later)"
    )
    parser.add_argument("--concurrency", type=int, default=20, help="API calls in flight at once")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before no new pod is made")
    parser.add_argument("--note", default="", help="a sentence for the results")
    parser.add_argument("--out", default=str(RESULTS / "churn"))
    args = parser.parse_args()
    with sandbox(CONFIG) as sb:
        res = asyncio.run(run(sb, args))
    if args.note:
        res["note"] = args.note
    write(args.out, res, markdown)


if __name__ == "__main__":
    main()
