"""Scale: S Services × P gated pods on the node agent, created at once, then all restarted at once.

In a sandbox of its own (port offset 16000): one namespace opted in to injection, S LoadBalancer
Services (HAProxy, TCP check every ``--interval`` s, ``--rise`` passes to turn healthy) and a
Deployment of P replicas behind each.  Two passes, each timed by a watch of the namespace:

1. create: every Deployment created at once (S × P pods admitted, scheduled, gated, Ready);
2. restart: ``kubectl rollout restart`` of every Deployment at once (each Deployment's template
   annotated), until every rollout is complete.

For each pass: the time from the last pod ContainersReady to the last pod Ready; each pod's
ContainersReady → gate True as a ratio of the load balancer's minimum (rise × interval); the
controller's RSS (at the start, and its peak, VmHWM) and CPU seconds; podgate's pods/status
writes per pod (``podgate_gate_transitions_total``: one per PATCH the API server accepted);
admission latency, from a prober in a process of its own that sends the webhook a review every
50 ms (keep-alive, as the API server's client) and from the API server's own histogram.

    .venv/bin/python bench/scale.py [--services 50] [--pods 100] [--interval 2] [--rise 3]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client
from prometheus_client.parser import text_string_to_metric_families

from common import RESULTS, sandbox, summary, write
from podgate.kube.api import PODS
from podgate.kube.client import ApiKube, api_client, call
from podgate.kube.informer import Informer
from podgate_sandbox.controlplane import Sandbox, SandboxConfig
from podgate_sandbox.processes import alive

#: podgate talks to HAProxy's runtime API directly, as beside a user's HAProxy: the sandbox's data
#: plane (a Python proxy for every runtime command) is for Services that ask for a cloud's delays
CONFIG = SandboxConfig(
    port_offset=16000, pod_cidr="127.113.0.0/16", lb_cidr="127.213.0.0/16", data_plane=False
)
NS = "scale"
INJECT = "podgate.dev/pod-readiness-gate-inject"
GATE_PREFIX = "service.readiness.podgate.dev/"
WEBHOOK_BUCKET = 0.1  # the API server's histogram bucket the goal is (p99 ≤ 100 ms)


# -- what the benchmark watches ---------------------------------------------------------------
class Timeline:
    """First time (monotonic) each pod was seen ContainersReady, gate True and Ready."""

    def __init__(self) -> None:
        self.containers_ready: dict[str, float] = {}
        self.gate_true: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.deleting: set[str] = set()

    def on_pod(self, kind: str, pod: dict[str, Any], old: dict[str, Any] | None) -> None:
        now, name = time.monotonic(), pod["metadata"]["name"]
        if kind == "DELETED" or pod["metadata"].get("deletionTimestamp"):
            self.deleting.add(name)
        for c in (pod.get("status") or {}).get("conditions") or ():
            if c.get("status") != "True":
                continue
            if c["type"] == "ContainersReady":
                self.containers_ready.setdefault(name, now)
            elif c["type"] == "Ready":
                self.ready.setdefault(name, now)
            elif c["type"].startswith(GATE_PREFIX):
                self.gate_true.setdefault(name, now)


class Process:
    """RSS and CPU seconds of one sandbox process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def status(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def rss_mib(self) -> float:
        return self.status("VmRSS") / 1024

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakRss:
    """The highest RSS seen by sampling every 0.2 s (VmHWM would be the process's whole life)."""

    def __init__(self, proc: Process) -> None:
        self.proc, self.peak = proc, proc.rss_mib()

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, self.proc.rss_mib())
            await asyncio.sleep(0.2)


class Connections:
    """TCP connections to a local port, sampled every 0.2 s from /proc/net/tcp: how many the
    webhook was sent (distinct peers seen; a connection shorter than a sample may be missed)."""

    def __init__(self, port: int) -> None:
        self.port, self.peers, self.most = port, set[str](), 0

    def sample(self) -> None:
        now = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.split(":")[1], 16) == self.port and state == "01":  # ESTABLISHED
                now.add(remote)
        self.peers |= now
        self.most = max(self.most, len(now))

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(0.2)


def scrape(url: str, token: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus endpoint: (name, sorted labels) → value."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10, context=ctx if url.startswith("https") else None) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict[tuple[str, Any], float], name: str, **match: str) -> float:
    return sum(v for (n, labels), v in samples.items() if n == name and match.items() <= dict(labels).items())


def webhook_histogram(
    before: dict[tuple[str, Any], float], after: dict[tuple[str, Any], float]
) -> dict[str, float]:
    """The API server's admission-webhook latency histogram over a pass: calls, and the share
    within the goal's bucket."""
    name = "apiserver_admission_webhook_admission_duration_seconds"
    match = {"type": "admit", "operation": "CREATE"}

    def delta(suffix: str, **extra: str) -> float:
        return total(after, name + suffix, **match, **extra) - total(before, name + suffix, **match, **extra)

    calls = delta("_count")
    within = delta("_bucket", le=str(WEBHOOK_BUCKET))
    return {
        "calls": calls,
        "share_within_100ms": within / calls if calls else 1.0,
        "mean_s": delta("_sum") / calls if calls else 0.0,
    }


def ratio_histogram(
    before: dict[tuple[str, Any], float], after: dict[tuple[str, Any], float]
) -> dict[str, float]:
    """podgate's own ``podgate_time_to_ready_ratio`` over a pass: from the target's registration to
    its gate True, over the load balancer's minimum (no API server or node agent lag in it)."""
    name = "podgate_time_to_ready_ratio"

    def delta(suffix: str, **labels: str) -> float:
        return total(after, name + suffix, **labels) - total(before, name + suffix, **labels)

    n = delta("_count")
    return {
        "n": n,
        "mean": delta("_sum") / n if n else 0.0,
        "share_within_1.2": delta("_bucket", le="1.2") / n if n else 1.0,
        "share_within_1.5": delta("_bucket", le="1.5") / n if n else 1.0,
    }


def drain_histogram(
    before: dict[tuple[str, Any], float], after: dict[tuple[str, Any], float]
) -> dict[str, Any]:
    """podgate's preStop drain hooks over a pass (``podgate_drain_*``): answers by result, and
    the wait of the drained ones as bucket bounds (the histogram's: p50 ≤ x s)."""
    name = "podgate_drain_duration_seconds"

    def delta(metric: str, **labels: str) -> float:
        return total(after, metric, **labels) - total(before, metric, **labels)

    results = {
        r: delta("podgate_drain_requests_total", result=r)
        for r in ("drained", "timeout", "no_targets", "not_terminating", "unknown_pod", "error")
    }
    n = delta(name + "_count", result="drained")
    bounds = sorted(
        {float(dict(labels)["le"]) for (m, labels) in after if m == name + "_bucket"} - {float("inf")}
    )

    def quantile(q: float) -> float | None:
        for le in bounds:
            if n and delta(name + "_bucket", result="drained", le=_le(le)) >= q * n:
                return le
        return None

    return {
        "answers": {r: v for r, v in results.items() if v},
        "drained_mean_s": delta(name + "_sum", result="drained") / n if n else None,
        "drained_p50_le_s": quantile(0.5),
        "drained_p90_le_s": quantile(0.9),
    }


def gc_pauses(before: dict[tuple[str, Any], float], after: dict[tuple[str, Any], float]) -> dict[str, float]:
    """The controller's garbage-collection pauses over a pass (``podgate_gc_pause_seconds``):
    how many, their sum, and how many took 100 ms or more (every thread stops for them)."""
    name = "podgate_gc_pause_seconds"

    def delta(suffix: str, **labels: str) -> float:
        return total(after, name + suffix, **labels) - total(before, name + suffix, **labels)

    n = delta("_count")
    return {"count": n, "sum_s": delta("_sum"), "over_100ms": n - delta("_bucket", le="0.1")}


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client labels it (1.0, not 1)."""
    return str(float(bound))


# -- the admission prober (a process of its own, so the benchmark's loop cannot delay it) -----
def probe_main(url: str, out: str, period: float) -> None:
    import aiohttp

    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "probe",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": NS,
            "operation": "CREATE",
            "object": {
                "metadata": {"generateName": "svc-0-", "namespace": NS, "labels": {"app": "svc-0"}},
                "spec": {"containers": [{"name": "app", "image": "nginx"}]},
            },
        },
    }

    async def main() -> list[tuple[float, float, str]]:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        samples: list[tuple[float, float, str]] = []
        connector = aiohttp.TCPConnector(ssl=False, limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    async with session.post(url, json=review, timeout=aiohttp.ClientTimeout(total=10)) as r:
                        body = await r.json()
                        result = "patched" if "patch" in body["response"] else f"HTTP {r.status} unchanged"
                except Exception as e:  # a failed probe is a sample too
                    result = type(e).__name__
                samples.append((time.time(), time.monotonic() - t0, result))
                await asyncio.sleep(max(0.0, period - (time.monotonic() - t0)))
        return samples

    Path(out).write_text(json.dumps(asyncio.run(main())))


class Prober:
    def __init__(self, url: str, period: float = 0.05) -> None:
        fd, self.out = tempfile.mkstemp(prefix="podgate-probe-", suffix=".json")
        os.close(fd)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--probe", url, self.out, str(period)], cwd=Path(__file__).parent
        )

    def stop(self, since: float, until: float) -> dict[str, Any]:
        """Latencies of the probes sent between ``since`` and ``until`` (wall clock)."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        samples = json.loads(Path(self.out).read_text())
        os.unlink(self.out)
        inside = [(lat, res) for at, lat, res in samples if since <= at <= until]
        ok = [lat for lat, res in inside if res == "patched"]
        return {
            "probes": len(inside),
            "failed": len(inside) - len(ok),
            "latency_s": summary(ok) if ok else None,
        }


# -- the passes -------------------------------------------------------------------------------
async def wait_until(pred: Any, limit: float, what: str, progress: Any = None) -> None:
    start = time.monotonic()
    told = start
    while not pred():
        now = time.monotonic()
        if now - start > limit:
            raise TimeoutError(
                f"timed out after {limit:.0f}s waiting for {what}: {progress() if progress else ''}"
            )
        if progress and now - told > 30:
            print(f"  {now - start:.0f} s: {progress()}", flush=True)
            told = now
        await asyncio.sleep(0.1)


def service_body(i: int, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"svc-{i}",
            "annotations": {
                "podgate.dev/health-check-interval": str(args.interval),
                "podgate.dev/healthy-threshold": str(args.rise),
                "podgate.dev/deregistration-delay": "1",
            },
        },
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": f"svc-{i}"},
            "ports": [{"port": 80, "targetPort": "http"}],
        },
    }


def deployment_body(i: int, replicas: int) -> dict[str, Any]:
    container = {"name": "app", "image": "nginx", "ports": [{"name": "http", "containerPort": 8080}]}
    return {
        "metadata": {"name": f"svc-{i}"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": f"svc-{i}"}},
            "template": {
                "metadata": {"labels": {"app": f"svc-{i}"}},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 5},
            },
        },
    }


class Bench:
    def __init__(self, sb: Sandbox, api: client.ApiClient, args: argparse.Namespace) -> None:
        self.sb, self.args = sb, args
        self.core, self.apps = client.CoreV1Api(api), client.AppsV1Api(api)
        self.timeline = Timeline()
        self.informer: Informer[dict[str, Any]] = Informer(ApiKube(api), PODS, namespace=NS, name="bench")
        self.informer.add_handler(self.timeline.on_pod)
        pids = json.loads((sb.state_dir / "pids.json").read_text())
        self.controller = Process(pids["podgate-controller"])
        self.agent = Process(pids["node-agent"])
        self.metrics_url = f"http://127.0.0.1:{CONFIG.port(8081)}/metrics"
        self.webhook_url = f"https://127.0.0.1:{CONFIG.port(9444)}/mutate-pods"
        self.apiserver_metrics = f"{sb.apiserver_url}/metrics"
        self.token = sb.admin_token()
        self.tasks: list[asyncio.Task[None]] = []
        self._told = time.monotonic()

    @property
    def minimum(self) -> float:
        return self.args.interval * self.args.rise

    async def setup(self) -> None:
        await call(self.core.create_namespace, {"metadata": {"name": NS, "labels": {INJECT: "enabled"}}})
        self.tasks.append(asyncio.create_task(self.informer.run()))
        await self.informer.synced.wait()
        sem = asyncio.Semaphore(10)

        async def create(i: int) -> None:
            async with sem:
                await call(self.core.create_namespaced_service, NS, service_body(i, self.args))

        await asyncio.gather(*(create(i) for i in range(self.args.services)))

        async def all_addressed() -> bool:
            services = (await call(self.core.list_namespaced_service, NS))["items"]
            return len(services) == self.args.services and all(
                ((s.get("status") or {}).get("loadBalancer") or {}).get("ingress") for s in services
            )

        deadline = time.monotonic() + 120
        while not await all_addressed():
            if time.monotonic() > deadline:
                raise TimeoutError("Services did not get their load balancers")
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)  # the controller idle again before the clock starts

    def progress(self) -> str:
        live = [p["metadata"]["name"] for p in self.live().values()]
        tl = self.timeline
        return (
            f"{len(live)} live pods, {sum(n in tl.containers_ready for n in live)} ContainersReady, "
            f"{sum(n in tl.gate_true for n in live)} gated True, {sum(n in tl.ready for n in live)} Ready; "
            f"{len(self.informer.cache) - len(live)} terminating"
            + ("" if alive(self.controller.pid, "podgate") else "; THE CONTROLLER HAS EXITED")
        )

    async def measured(self, name: str, act: Any, done: Any, pods_of: Any) -> dict[str, Any]:
        """Run one pass: ``act()`` starts it, ``done()`` says it is over, ``pods_of()`` names the
        pods it made (after it is over)."""
        before = await asyncio.to_thread(scrape, self.metrics_url)
        api_before = await asyncio.to_thread(scrape, self.apiserver_metrics, self.token)
        rss0, cpu0 = self.controller.rss_mib(), self.controller.cpu_s()
        agent_rss0, agent_cpu0 = self.agent.rss_mib(), self.agent.cpu_s()
        peak = PeakRss(self.controller)
        agent_peak = PeakRss(self.agent)
        connections = Connections(CONFIG.port(9444))
        sampler = [
            asyncio.create_task(peak.run()),
            asyncio.create_task(agent_peak.run()),
            asyncio.create_task(connections.run()),
        ]
        prober = Prober(self.webhook_url)
        await asyncio.sleep(1.0)  # the prober's first samples: the webhook at rest
        wall0, t0 = time.time(), time.monotonic()
        print(f"{name}: started", flush=True)
        await act()
        await wait_until(done, self.args.timeout, f"{name} to finish", self.progress)
        took, wall1 = time.monotonic() - t0, time.time()
        cpu1, agent_cpu1 = self.controller.cpu_s(), self.agent.cpu_s()
        for t in sampler:
            t.cancel()
        probes = prober.stop(wall0, wall1)
        after = await asyncio.to_thread(scrape, self.metrics_url)
        api_after = await asyncio.to_thread(scrape, self.apiserver_metrics, self.token)
        pods = pods_of()
        tl = self.timeline
        last_cr = max(tl.containers_ready[p] for p in pods)
        last_ready = max(tl.ready[p] for p in pods)
        cr_to_gate = [tl.gate_true[p] - tl.containers_ready[p] for p in pods if p in tl.gate_true]
        writes = total(after, "podgate_gate_transitions_total") - total(
            before, "podgate_gate_transitions_total"
        )
        res = {
            "pods": len(pods),
            "took_s": took,
            "last_containers_ready_to_last_ready_s": last_ready - last_cr,
            # podgate's part of it: the rest is the node agent writing Ready after the gate
            "last_containers_ready_to_last_gate_s": max(tl.gate_true[p] for p in pods if p in tl.gate_true)
            - last_cr,
            "containers_ready_to_gate_s": summary(cr_to_gate),
            "ratio_to_lb_minimum": {k: v / self.minimum for k, v in summary(cr_to_gate).items() if k != "n"},
            "controller_rss_mib": {"start": rss0, "peak": peak.peak},
            "controller_cpu_s": cpu1 - cpu0,
            "agent_rss_mib": {"start": agent_rss0, "peak": agent_peak.peak},
            "agent_cpu_s": agent_cpu1 - agent_cpu0,
            "status_writes": writes,
            "status_writes_per_pod": writes / len(pods),
            "webhook_probe": probes,
            "webhook_apiserver": webhook_histogram(api_before, api_after),
            "webhook_connections": {"seen": len(connections.peers), "most_at_once": connections.most},
            "health_checking_ratio": ratio_histogram(before, after),
            "drains": drain_histogram(before, after),
            "gc_pauses": gc_pauses(before, after),
            "reconcile_errors": total(after, "controller_runtime_reconcile_errors_total")
            - total(before, "controller_runtime_reconcile_errors_total"),
        }
        print(json.dumps({name: res}, indent=1), flush=True)
        return res

    def live(self) -> dict[str, dict[str, Any]]:
        return {n: p for n, p in self.informer.cache.items() if not p["metadata"].get("deletionTimestamp")}

    async def create_pass(self) -> dict[str, Any]:
        want = self.args.services * self.args.pods
        sem = asyncio.Semaphore(10)

        async def create(i: int) -> None:
            async with sem:
                await call(self.apps.create_namespaced_deployment, NS, deployment_body(i, self.args.pods))

        async def act() -> None:
            await asyncio.gather(*(create(i) for i in range(self.args.services)))

        def done() -> bool:
            live = self.live()
            return len(live) == want and all(
                p["metadata"]["name"] in self.timeline.ready for p in live.values()
            )

        return await self.measured(
            "create", act, done, lambda: [p["metadata"]["name"] for p in self.live().values()]
        )

    async def restart_pass(self) -> dict[str, Any]:
        old = {p["metadata"]["name"] for p in self.informer.cache.values()}
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        patch = {
            "spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}
        }
        complete: dict[str, bool] = {}

        async def act() -> None:
            await asyncio.gather(
                *(
                    call(self.apps.patch_namespaced_deployment, f"svc-{i}", NS, patch)
                    for i in range(self.args.services)
                )
            )
            self.tasks.append(asyncio.create_task(watch_rollouts()))

        async def watch_rollouts() -> None:
            while True:
                deployments = (await call(self.apps.list_namespaced_deployment, NS))["items"]
                for d in deployments:
                    st, spec = d.get("status") or {}, d["spec"]
                    complete[d["metadata"]["name"]] = (
                        st.get("observedGeneration", 0) >= d["metadata"]["generation"]
                        and st.get("updatedReplicas") == spec["replicas"]
                        and st.get("replicas") == spec["replicas"]
                        and st.get("availableReplicas") == spec["replicas"]
                    )
                await asyncio.sleep(0.5)

        def new_pods() -> list[str]:
            return [n for n in (p["metadata"]["name"] for p in self.live().values()) if n not in old]

        def done() -> bool:
            if time.monotonic() - self._told > 30:
                self._told = time.monotonic()
                print(f"  rollouts complete: {sum(complete.values())}/{self.args.services}", flush=True)
            fresh = new_pods()
            return (
                len(complete) == self.args.services
                and all(complete.values())
                and len(fresh) == self.args.services * self.args.pods
                and all(n in self.timeline.ready for n in fresh)
            )

        return await self.measured("restart", act, done, new_pods)


async def run(sb: Sandbox, args: argparse.Namespace) -> dict[str, Any]:
    api = await api_client(str(sb.kubeconfig))
    api.configuration.connection_pool_maxsize = 32
    bench = Bench(sb, api, args)
    try:
        await bench.setup()
        out: dict[str, Any] = {
            "services": args.services,
            "pods_per_service": args.pods,
            "interval_s": args.interval,
            "rise": args.rise,
            "lb_minimum_s": bench.minimum,
            "create": await bench.create_pass(),
        }
        if args.restart:
            await asyncio.sleep(5.0)
            out["restart"] = await bench.restart_pass()
        return out
    finally:
        for t in bench.tasks:
            t.cancel()
        await asyncio.gather(*bench.tasks, return_exceptions=True)
        await api.close()


# -- the report ---------------------------------------------------------------------------------
GOALS = {
    "last": "≤ LB minimum + 2 s",
    "ratio": "p99 ≤ 1.2",
    "rss": "≤ 250 MB",
    "writes": "≤ 3",
    "webhook": "p99 ≤ 100 ms",
}


def markdown(res: dict[str, Any]) -> str:
    passes = [p for p in ("create", "restart") if p in res]
    total_pods = res["services"] * res["pods_per_service"]
    lines = [
        "# Scale benchmark",
        "",
        f"{res['machine']}; {res['services']} Services × {res['pods_per_service']} pods = {total_pods} gated "
        f"pods on the node agent, one namespace; HAProxy TCP check every {res['interval_s']:g} s, "
        f"{res['rise']} passes to turn healthy (load balancer minimum {res['lb_minimum_s']:g} s); "
        f"{res['date']}.",
        "",
        "| measure | " + " | ".join(passes) + " | goal |",
        "|---|" + "---|" * len(passes) + "---|",
    ]

    def row(label: str, fmt: Any, goal: str = "") -> None:
        lines.append(f"| {label} | " + " | ".join(fmt(res[p]) for p in passes) + f" | {goal} |")

    def webhook(p: dict[str, Any]) -> str:
        lat = p["webhook_probe"]["latency_s"]
        return f"{lat['p50'] * 1000:.0f} ms / {lat['p99'] * 1000:.0f} ms" if lat else "-"

    row("took (first write → every pod Ready)", lambda p: f"{p['took_s']:.0f} s")
    row(
        "last ContainersReady → last Ready",
        lambda p: f"{p['last_containers_ready_to_last_ready_s']:.1f} s",
        f"≤ {res['lb_minimum_s'] + 2:g} s",
    )
    if all("last_containers_ready_to_last_gate_s" in res[p] for p in passes):
        row(
            "… of which podgate's: last ContainersReady → last gate True",
            lambda p: f"{p['last_containers_ready_to_last_gate_s']:.1f} s",
        )
    row(
        "ContainersReady → gate True, p50 / p99",
        lambda p: (
            f"{p['containers_ready_to_gate_s']['p50']:.2f} s / {p['containers_ready_to_gate_s']['p99']:.2f} s"
        ),
    )
    row(
        "… as a ratio of the LB minimum, p50 / p99",
        lambda p: f"{p['ratio_to_lb_minimum']['p50']:.2f} / {p['ratio_to_lb_minimum']['p99']:.2f}",
        GOALS["ratio"],
    )
    if all("health_checking_ratio" in res[p] for p in passes):
        row(
            "registration → gate True over the LB minimum (podgate's metric): mean; ≤ 1.2",
            lambda p: (
                f"{p['health_checking_ratio']['mean']:.2f}; "
                f"{p['health_checking_ratio']['share_within_1.2'] * 100:.0f} %"
            ),
        )
    if all("drains" in res[p] for p in passes):

        def drains(p: dict[str, Any]) -> str:
            d = p["drains"]
            if not d["answers"]:
                return "none"
            answers = ", ".join(f"{n:.0f} {r}" for r, n in sorted(d["answers"].items()))
            if d["drained_mean_s"] is None:
                return answers
            return (
                f"{answers}; drained in {d['drained_mean_s']:.2f} s mean, "
                f"p50 ≤ {d['drained_p50_le_s']:g} s, p90 ≤ {d['drained_p90_le_s']:g} s"
            )

        row("preStop drain hooks (podgate's metrics)", drains, "0 timeout")
    if all("gc_pauses" in res[p] for p in passes):
        row(
            "controller GC pauses: count, sum; ≥ 100 ms",
            lambda p: (
                f"{p['gc_pauses']['count']:.0f}, {p['gc_pauses']['sum_s']:.1f} s; "
                f"{p['gc_pauses']['over_100ms']:.0f}"
            ),
        )
    row(
        "controller RSS, start → peak",
        lambda p: f"{p['controller_rss_mib']['start']:.0f} → {p['controller_rss_mib']['peak']:.0f} MiB",
        GOALS["rss"],
    )
    row("controller CPU", lambda p: f"{p['controller_cpu_s']:.0f} CPU-s")
    row(
        "pods/status writes per pod (podgate's)",
        lambda p: f"{p['status_writes_per_pod']:.2f} ({p['status_writes']:.0f})",
        GOALS["writes"],
    )
    row("webhook latency p50 / p99 (prober, every 50 ms)", webhook, GOALS["webhook"])
    row(
        "API server's webhook calls within 100 ms",
        lambda p: (
            f"{p['webhook_apiserver']['share_within_100ms'] * 100:.1f} % "
            f"of {p['webhook_apiserver']['calls']:.0f}"
        ),
        "≥ 99 %",
    )
    row(
        "node agent RSS, start → peak; CPU",
        lambda p: (
            f"{p['agent_rss_mib']['start']:.0f} → {p['agent_rss_mib']['peak']:.0f} MiB; "
            f"{p['agent_cpu_s']:.0f} CPU-s"
        ),
    )
    lines += [
        "",
        "Gate latency is from the pod's ContainersReady (the node agent's write, seen by the benchmark's "
        "watch) to its gate True (podgate's write, seen by the same watch). Writes are podgate's "
        "`podgate_gate_transitions_total` over the pass (one per pods/status PATCH the API server "
        "accepted). The prober runs in a process of its own and sends the controller's webhook a review "
        "every 50 ms on a kept-alive connection; the API server's share is from its "
        "`apiserver_admission_webhook_admission_duration_seconds` histogram (bucket 100 ms).",
    ]
    if res.get("note"):
        lines += ["", res["note"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        probe_main(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--pods", type=int, default=100, help="pods per Service")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--rise", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds a pass may take")
    parser.add_argument("--no-restart", dest="restart", action="store_false")
    parser.add_argument(
        "--data-plane",
        action="store_true",
        help="put the sandbox's cloud-like data plane (a Python proxy) between podgate and HAProxy",
    )
    parser.add_argument("--note", default="", help="a sentence for the Markdown (what was missed and why)")
    parser.add_argument("--out", default=str(RESULTS / "scale"))
    args = parser.parse_args()
    with sandbox(dataclasses.replace(CONFIG, data_plane=args.data_plane)) as sb:
        try:
            res = asyncio.run(run(sb, args))
        finally:  # the sandbox's logs outlive it, for a look at what happened
            logs = Path(tempfile.gettempdir()) / "podgate-scale-logs"
            shutil.copytree(sb.state_dir / "logs", logs, dirs_exist_ok=True)
            print(f"the sandbox's logs: {logs}", flush=True)
    res["note"] = args.note
    write(args.out, res, markdown)


if __name__ == "__main__":
    main()
