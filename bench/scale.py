"""Scale: S Services × P gated pods on the node agent, created at once, then all restarted at once,
beside the same Deployments admitted by a no-op webhook and never gated, in the same run.

In a sandbox of its own (port offset 16000): one namespace opted in to injection, S LoadBalancer
Services (HAProxy, TCP check every ``--interval`` s, ``--rise`` passes to turn healthy) and a
Deployment of P replicas behind each.  Two passes, each timed by a watch of the namespace:

1. create: every Deployment created at once (S × P pods admitted, scheduled, gated, Ready);
2. restart: ``kubectl rollout restart`` of every Deployment at once (each Deployment's template
   annotated), until every rollout is complete.

Before them, the baseline (``--no-baseline`` leaves it out): the same two passes in a namespace
podgate does not serve, whose pods the API server sends to ``bench/noop_webhook.go`` (built with
the machine's Go, standard library only) instead; then that namespace is deleted.  Set side by
side: the API server's own ``apiserver_admission_webhook_admission_duration_seconds`` for each
webhook, the CPU-seconds of each webhook's process, of the node agent and of the API server, and
pods/status writes by everyone (the node agent alone, then with podgate).

For each gated pod, five times (:mod:`podgate_sandbox.decompose`): (a) ContainersReady, (d) gate
True and (e) Ready as the benchmark's watch saw them, (b) its target registered and (c) HAProxy's
checks turning it UP from HAProxy's own ring of server state changes, read after each pass;
podgate's share is (b − a) + (d − c).

Also for each pass: the time from the last pod ContainersReady to the last pod Ready; each pod's
ContainersReady → gate True as a ratio of the load balancer's minimum (rise × interval); the
controller's RSS (at the start, and its peak, VmHWM) and CPU seconds; podgate's pods/status
writes per pod (``podgate_gate_transitions_total``: one per PATCH the API server accepted);
admission latency, from a prober in a process of its own that sends the webhook a review every
50 ms (keep-alive, as the API server's client) and from the API server's own histogram.

    .venv/bin/python bench/scale.py [--services 50] [--pods 100] [--interval 2] [--rise 3]
    .venv/bin/python bench/scale.py --short     # 10 × 100 = 1,000 pods, a few minutes
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client
from prometheus_client.parser import text_string_to_metric_families

from common import RESULTS, sandbox, summary, write
from podgate.kube.api import PODS
from podgate.kube.client import ApiKube, api_client, call
from podgate.kube.informer import Informer
from podgate_sandbox.controlplane import EVENTS_RING, Sandbox, SandboxConfig
from podgate_sandbox.decompose import (
    PARTS,
    SUBPARTS,
    PodTimes,
    ServerEvent,
    by_target,
    gate_writes,
    histogram_quantile,
    parts,
    server_events,
)
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
PORT = 8080  # the pods' container port: their targets are IP:8080
#: the baseline's namespace: the same Deployments, admitted by the no-op webhook, never gated
NOOP_NS = "scale-noop"
NOOP_LABEL = "bench.podgate.dev/noop"
PODGATE_WEBHOOK = "readiness-gates"  # podgate's webhook names start so
WEBHOOK_TIMEOUT_S = 5  # podgate's registration's timeoutSeconds (podgate.webhook.server)
GO = "/usr/local/go/bin/go"


# -- what the benchmark watches ---------------------------------------------------------------
class Timeline:
    """First time (wall clock, to set beside HAProxy's) each pod was seen at all, ContainersReady,
    gate True and Ready, and its target (IP:8080) once it had an address."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.target: dict[str, str] = {}
        self.containers_ready: dict[str, float] = {}
        self.gate_true: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.deleting: set[str] = set()

    def on_pod(self, kind: str, pod: dict[str, Any], old: dict[str, Any] | None) -> None:
        now, name = time.time(), pod["metadata"]["name"]
        self.seen.setdefault(name, now)
        if kind == "DELETED" or pod["metadata"].get("deletionTimestamp"):
            self.deleting.add(name)
        status = pod.get("status") or {}
        if status.get("podIP") and name not in self.target:
            self.target[name] = f"{status['podIP']}:{PORT}"
        for c in status.get("conditions") or ():
            if c.get("status") != "True":
                continue
            if c["type"] == "ContainersReady":
                self.containers_ready.setdefault(name, now)
            elif c["type"] == "Ready":
                self.ready.setdefault(name, now)
            elif c["type"].startswith(GATE_PREFIX):
                self.gate_true.setdefault(name, now)

    def times(self, name: str) -> PodTimes:
        return PodTimes(
            self.seen[name],
            self.target.get(name),
            self.containers_ready.get(name),
            self.gate_true.get(name),
            self.ready.get(name),
        )


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


def admission_process(controller: int) -> Process | None:
    """The controller's admission process (``--admission process``, the default); None with
    ``--admission thread``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == controller and b"podgate.app.admission" in (stat.parent / "cmdline").read_bytes():
                return Process(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return None


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


def haproxy_events(runtime: Path) -> list[ServerEvent]:
    """HAProxy's ring of server state changes, whole (``show events``; read after a pass)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(str(runtime))
        s.sendall(f"show events {EVENTS_RING}\n".encode())
        chunks = []
        while data := s.recv(1 << 20):
            chunks.append(data)
    return server_events(b"".join(chunks).decode(errors="replace").splitlines())


def admission(
    before: dict[tuple[str, Any], float], after: dict[tuple[str, Any], float], webhook: str
) -> dict[str, Any]:
    """The API server's own ``apiserver_admission_webhook_admission_duration_seconds`` for pod
    CREATE over a pass, for the webhooks whose name starts with ``webhook``: calls, mean, p50
    and p99 interpolated in its buckets (0.005, 0.025, 0.1, 0.5, 1, 2.5 s...), share ≤ 100 ms."""
    name = "apiserver_admission_webhook_admission_duration_seconds"

    def mine(labels: tuple[tuple[str, str], ...]) -> bool:
        d = dict(labels)
        return (
            d.get("name", "").startswith(webhook)
            and d.get("operation") == "CREATE"
            and d.get("type") == "admit"
        )

    buckets: dict[float, float] = {}
    count = sum_s = 0.0
    for (n, labels), v in after.items():
        if not n.startswith(name) or not mine(labels):
            continue
        delta = v - before.get((n, labels), 0.0)
        if n == name + "_bucket":
            le = float(dict(labels)["le"])
            buckets[le] = buckets.get(le, 0.0) + delta
        elif n == name + "_count":
            count += delta
        elif n == name + "_sum":
            sum_s += delta
    return {
        "calls": count,
        "mean_s": sum_s / count if count else None,
        "p50_s": histogram_quantile(0.5, buckets) if count else None,
        "p99_s": histogram_quantile(0.99, buckets) if count else None,
        "share_within_100ms": buckets.get(WEBHOOK_BUCKET, 0.0) / count if count else None,
    }


def status_writes(samples: dict[tuple[str, Any], float]) -> float:
    """pods/status writes the API server answered, by anyone (``apiserver_request_total``)."""
    return sum(
        v
        for (n, labels), v in samples.items()
        if n == "apiserver_request_total"
        and dict(labels).get("resource") == "pods"
        and dict(labels).get("subresource") == "status"
        and dict(labels).get("verb") in ("PATCH", "UPDATE", "APPLY")
    )


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


QUEUE_WAIT, PASS_DURATION = "workqueue_queue_duration_seconds", "workqueue_work_duration_seconds"
WEBHOOK_HANDLER = "podgate_webhook_request_duration_seconds"
PROVIDER_CALLS = "podgate_provider_call_duration_seconds"


def histogram_delta(
    before: dict[tuple[str, Any], float],
    after: dict[tuple[str, Any], float],
    name: str,
    match: dict[str, str],
) -> dict[str, Any]:
    """A histogram's observations over a pass: count, mean, p50 and p99 interpolated in its
    buckets (as Prometheus's ``histogram_quantile``)."""

    sums: dict[str, float] = {"_count": 0.0, "_sum": 0.0}
    buckets: dict[float, float] = {}
    for (m, labels), v in after.items():
        if not m.startswith(name) or not match.items() <= dict(labels).items():
            continue
        d = v - before.get((m, labels), 0.0)
        if m == name + "_bucket":
            le = float(dict(labels)["le"])
            buckets[le] = buckets.get(le, 0.0) + d
        elif m.removeprefix(name) in sums:
            sums[m.removeprefix(name)] += d
    n = sums["_count"]
    return {
        "count": n,
        "mean_s": sums["_sum"] / n if n else None,
        "p50_s": histogram_quantile(0.5, buckets),
        "p99_s": histogram_quantile(0.99, buckets),
    }


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
    container = {"name": "app", "image": "nginx", "ports": [{"name": "http", "containerPort": PORT}]}
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


class Watched:
    """One namespace's pods as the benchmark's watch sees them."""

    def __init__(self, api: client.ApiClient, ns: str) -> None:
        self.ns, self.timeline = ns, Timeline()
        self.informer: Informer[dict[str, Any]] = Informer(
            ApiKube(api), PODS, namespace=ns, name=f"bench-{ns}"
        )
        self.informer.add_handler(self.timeline.on_pod)

    def live(self) -> dict[str, dict[str, Any]]:
        return {n: p for n, p in self.informer.cache.items() if not p["metadata"].get("deletionTimestamp")}


class NoopWebhook:
    """The floor: ``bench/noop_webhook.go`` built with the machine's Go (standard library only,
    nothing downloaded), registered for pod CREATE in :data:`NOOP_NS` as podgate's webhook is in
    :data:`NS` (same rules, failure policy, timeout and reinvocation), answering allowed with no
    patch.  podgate's webhook is reached through the sandbox's front door (HAProxy, TCP passed
    through); this one directly."""

    NAME = "noop.bench.podgate.dev"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = CONFIG.port(9460)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Build and start it; returns its certificate (PEM) for the caBundle."""
        binary, cert = self.workdir / "noop-webhook", self.workdir / "noop-webhook.pem"
        env = {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "", "CGO_ENABLED": "0"}
        source = Path(__file__).parent / "noop_webhook.go"
        subprocess.run([GO, "build", "-o", str(binary), str(source)], check=True, env=env)
        self.proc = subprocess.Popen([str(binary), f"127.0.0.1:{self.port}", str(cert)])
        deadline = time.monotonic() + 30
        while not cert.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the no-op webhook did not start")
            time.sleep(0.1)
        return cert.read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def configuration(self, cert: str) -> dict[str, Any]:
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "bench-noop"},
            "webhooks": [
                {
                    "name": self.NAME,
                    "admissionReviewVersions": ["v1"],
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{self.port}/mutate",
                        "caBundle": base64.b64encode(cert.encode()).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                            "scope": "Namespaced",
                        }
                    ],
                    "namespaceSelector": {"matchLabels": {NOOP_LABEL: "enabled"}},
                    "failurePolicy": "Ignore",
                    "sideEffects": "None",
                    "timeoutSeconds": WEBHOOK_TIMEOUT_S,
                    "reinvocationPolicy": "IfNeeded",
                }
            ],
        }


class Bench:
    def __init__(self, sb: Sandbox, api: client.ApiClient, args: argparse.Namespace, workdir: Path) -> None:
        self.sb, self.args = sb, args
        self.core, self.apps = client.CoreV1Api(api), client.AppsV1Api(api)
        self.admission = client.AdmissionregistrationV1Api(api)
        self.gated = Watched(api, NS)
        self.baseline = Watched(api, NOOP_NS)
        pids = json.loads((sb.state_dir / "pids.json").read_text())
        self.controller = Process(pids["podgate-controller"])
        self.agent = Process(pids["node-agent"])
        self.apiserver = Process(pids["kube-apiserver"])
        self.noop = NoopWebhook(workdir)
        self.noop_proc: Process | None = None
        self.metrics_url = f"http://127.0.0.1:{CONFIG.port(8081)}/metrics"
        self.webhook_url = f"https://127.0.0.1:{CONFIG.port(9444)}/mutate-pods"
        self.apiserver_metrics = f"{sb.apiserver_url}/metrics"
        self.token = sb.admin_token()
        self.tasks: list[asyncio.Task[None]] = []
        self._told = time.monotonic()
        #: per gated pass, each decomposed pod's ContainersReady (s after the pass's first pod) and parts
        self.rows: list[list[tuple[float, dict[str, float]]]] = []

    @property
    def minimum(self) -> float:
        return float(self.args.interval * self.args.rise)

    async def setup(self) -> None:
        await call(self.core.create_namespace, {"metadata": {"name": NS, "labels": {INJECT: "enabled"}}})
        for w in (self.gated, self.baseline):
            self.tasks.append(asyncio.create_task(w.informer.run()))
            await w.informer.synced.wait()
        if self.args.baseline:
            cert = await asyncio.to_thread(self.noop.start)
            assert self.noop.proc is not None
            self.noop_proc = Process(self.noop.proc.pid)
            await call(self.admission.create_mutating_webhook_configuration, self.noop.configuration(cert))
            await call(
                self.core.create_namespace,
                {"metadata": {"name": NOOP_NS, "labels": {NOOP_LABEL: "enabled"}}},
            )
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

    def progress(self, w: Watched) -> Any:
        def told() -> str:
            live = [p["metadata"]["name"] for p in w.live().values()]
            tl = w.timeline
            cr, gated, ready = (
                sum(n in d for n in live) for d in (tl.containers_ready, tl.gate_true, tl.ready)
            )
            return (
                f"{w.ns}: {len(live)} live pods, {cr} ContainersReady, {gated} gated True, {ready} Ready; "
                f"{len(w.informer.cache) - len(live)} terminating"
                + ("" if alive(self.controller.pid, "podgate") else "; THE CONTROLLER HAS EXITED")
            )

        return told

    def cpu(self, admission: Process | None = None) -> dict[str, float]:
        procs = {"controller": self.controller, "agent": self.agent, "apiserver": self.apiserver}
        if self.noop_proc is not None:
            procs["noop_webhook"] = self.noop_proc
        if admission is not None:
            procs["admission"] = admission
        return {k: p.cpu_s() for k, p in procs.items()}

    async def measured(self, name: str, w: Watched, act: Any, done: Any, pods_of: Any) -> dict[str, Any]:
        """Run one pass: ``act()`` starts it, ``done()`` says it is over, ``pods_of()`` names the
        pods it made (after it is over)."""
        before = await asyncio.to_thread(scrape, self.metrics_url)
        api_before = await asyncio.to_thread(scrape, self.apiserver_metrics, self.token)
        child = admission_process(self.controller.pid)
        rss0, cpu0 = self.controller.rss_mib(), self.cpu(child)
        agent_rss0 = self.agent.rss_mib()
        peak = PeakRss(self.controller)
        agent_peak = PeakRss(self.agent)
        connections = Connections(CONFIG.port(9444))
        sampler = [
            asyncio.create_task(peak.run()),
            asyncio.create_task(agent_peak.run()),
            asyncio.create_task(connections.run()),
        ]
        child_rss0, child_peak = (child.rss_mib(), PeakRss(child)) if child is not None else (None, None)
        if child_peak is not None:
            sampler.append(asyncio.create_task(child_peak.run()))
        prober = Prober(self.webhook_url)
        await asyncio.sleep(1.0)  # the prober's first samples: the webhook at rest
        wall0, t0 = time.time(), time.monotonic()
        print(f"{name}: started", flush=True)
        await act()
        await wait_until(done, self.args.timeout, f"{name} to finish", self.progress(w))
        took, wall1 = time.monotonic() - t0, time.time()
        cpu1 = self.cpu(child)
        for t in sampler:
            t.cancel()
        probes = prober.stop(wall0, wall1)
        after = await asyncio.to_thread(scrape, self.metrics_url)
        api_after = await asyncio.to_thread(scrape, self.apiserver_metrics, self.token)
        pods = pods_of()
        tl = w.timeline
        last_cr = max(tl.containers_ready[p] for p in pods)
        last_ready = max(tl.ready[p] for p in pods)
        writes = total(after, "podgate_gate_transitions_total") - total(
            before, "podgate_gate_transitions_total"
        )
        all_writes = status_writes(api_after) - status_writes(api_before)
        res: dict[str, Any] = {
            "pods": len(pods),
            "took_s": took,
            "last_containers_ready_to_last_ready_s": last_ready - last_cr,
            "containers_ready_to_ready_s": summary([tl.ready[p] - tl.containers_ready[p] for p in pods]),
            "controller_rss_mib": {"start": rss0, "peak": peak.peak},
            "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu1},
            "controller_cpu_s": cpu1["controller"] - cpu0["controller"],
            "agent_rss_mib": {"start": agent_rss0, "peak": agent_peak.peak},
            # the admission process (None: admission on the controller's thread)
            "admission_rss_mib": (
                {"start": child_rss0, "peak": child_peak.peak} if child_peak is not None else None
            ),
            "agent_cpu_s": cpu1["agent"] - cpu0["agent"],
            "status_writes": writes,
            "status_writes_per_pod": writes / len(pods),
            "all_status_writes": all_writes,
            "all_status_writes_per_pod": all_writes / len(pods),
            "webhook_probe": probes,
            "admission": {
                "podgate": admission(api_before, api_after, PODGATE_WEBHOOK),
                "noop": admission(api_before, api_after, NoopWebhook.NAME),
            },
            "webhook_apiserver": webhook_histogram(api_before, api_after),
            "webhook_connections": {"seen": len(connections.peers), "most_at_once": connections.most},
            "health_checking_ratio": ratio_histogram(before, after),
            "drains": drain_histogram(before, after),
            "gc_pauses": gc_pauses(before, after),
            # the controller's work queue: how long a Service's key waited for a worker, and how
            # long its pass took (what stands between a pod's event and podgate's answer to it)
            "queue_wait": histogram_delta(before, after, QUEUE_WAIT, {"name": "services"}),
            "pass_duration": histogram_delta(before, after, PASS_DURATION, {"name": "services"}),
            # podgate's own time on a review, request read → answer (the prober's included):
            # what of the API server's admission time is podgate's handler
            "webhook_handler": histogram_delta(before, after, WEBHOOK_HANDLER, {}),
            # podgate's calls to HAProxy, by operation (a read that saw a server newly UP
            # includes the wait for its state to be saved: the gate may open only then)
            "haproxy_calls": {
                op: histogram_delta(before, after, PROVIDER_CALLS, {"provider": "haproxy", "operation": op})
                for op in ("targets", "register", "drain", "deregister")
            },
            "reconcile_errors": total(after, "controller_runtime_reconcile_errors_total")
            - total(before, "controller_runtime_reconcile_errors_total"),
        }
        if w is self.gated:
            cr_to_gate = [tl.gate_true[p] - tl.containers_ready[p] for p in pods if p in tl.gate_true]
            res["last_containers_ready_to_last_gate_s"] = (
                max(tl.gate_true[p] for p in pods if p in tl.gate_true) - last_cr
            )
            res["containers_ready_to_gate_s"] = summary(cr_to_gate)
            res["ratio_to_lb_minimum"] = {
                k: v / self.minimum for k, v in summary(cr_to_gate).items() if k != "n"
            }
            res["decomposition"] = await self.decomposition(tl, pods)
        print(json.dumps({name: res}, indent=1), flush=True)
        return res

    async def decomposition(self, tl: Timeline, pods: list[str]) -> dict[str, Any]:
        """Each pod's five times, (b) and (c) from HAProxy's ring of server state changes."""
        events = by_target(await asyncio.to_thread(haproxy_events, self.sb.haproxy_runtime_socket))
        audit = self.sb.audit_log
        writes = (
            await asyncio.to_thread(lambda: gate_writes(audit.read_text().splitlines(), GATE_PREFIX))
            if audit.exists()
            else {}
        )
        rows = [
            parts(
                dataclasses.replace(tl.times(p), gate_write=writes.get(p)),
                events.get(tl.target.get(p) or "", []),
            )
            for p in pods
        ]
        got = [r for r in rows if r is not None]
        wall0 = min(tl.seen[p] for p in pods)
        self.rows.append([(tl.containers_ready[p] - wall0, r) for p, r in zip(pods, rows, strict=True) if r])
        out: dict[str, Any] = {"pods": len(pods), "decomposed": len(got)}
        if got:
            out["parts_s"] = {k: summary([r[k] for r in got]) for k, _ in PARTS}
            out["gate_write_s"] = {
                k: summary([r[k] for r in got if k in r]) for k, _ in SUBPARTS if any(k in r for r in got)
            }
            out["podgate_share_over_1s"] = sum(r["podgate"] > 1.0 for r in got)
        return out

    async def create_pass(self, w: Watched, name: str) -> dict[str, Any]:
        want = self.args.services * self.args.pods
        sem = asyncio.Semaphore(10)

        async def create(i: int) -> None:
            async with sem:
                await call(self.apps.create_namespaced_deployment, w.ns, deployment_body(i, self.args.pods))

        async def act() -> None:
            await asyncio.gather(*(create(i) for i in range(self.args.services)))

        def done() -> bool:
            live = w.live()
            return len(live) == want and all(p["metadata"]["name"] in w.timeline.ready for p in live.values())

        return await self.measured(
            name, w, act, done, lambda: [p["metadata"]["name"] for p in w.live().values()]
        )

    async def restart_pass(self, w: Watched, name: str) -> dict[str, Any]:
        old = {p["metadata"]["name"] for p in w.informer.cache.values()}
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        patch = {
            "spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}
        }
        complete: dict[str, bool] = {}
        watcher: list[asyncio.Task[None]] = []

        async def act() -> None:
            await asyncio.gather(
                *(
                    call(self.apps.patch_namespaced_deployment, f"svc-{i}", w.ns, patch)
                    for i in range(self.args.services)
                )
            )
            watcher.append(asyncio.create_task(watch_rollouts()))

        async def watch_rollouts() -> None:
            while True:
                deployments = (await call(self.apps.list_namespaced_deployment, w.ns))["items"]
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
            return [n for n in (p["metadata"]["name"] for p in w.live().values()) if n not in old]

        def done() -> bool:
            if time.monotonic() - self._told > 30:
                self._told = time.monotonic()
                print(f"  rollouts complete: {sum(complete.values())}/{self.args.services}", flush=True)
            fresh = new_pods()
            return (
                len(complete) == self.args.services
                and all(complete.values())
                and len(fresh) == self.args.services * self.args.pods
                and all(n in w.timeline.ready for n in fresh)
            )

        try:
            return await self.measured(name, w, act, done, new_pods)
        finally:
            for t in watcher:
                t.cancel()

    async def remove_baseline(self) -> None:
        """The baseline's pods gone before podgate's passes: neither the node agent nor any
        watch carries them into podgate's figures."""
        await call(self.core.delete_namespace, NOOP_NS)
        await wait_until(
            lambda: not self.baseline.informer.cache,
            self.args.timeout,
            "the baseline's pods to go",
            self.progress(self.baseline),
        )
        await call(self.admission.delete_mutating_webhook_configuration, "bench-noop")


async def run(sb: Sandbox, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    api = await api_client(str(sb.kubeconfig))
    api.configuration.connection_pool_maxsize = 32
    bench = Bench(sb, api, args, workdir)
    try:
        await bench.setup()
        out: dict[str, Any] = {
            "services": args.services,
            "pods_per_service": args.pods,
            "interval_s": args.interval,
            "rise": args.rise,
            "lb_minimum_s": bench.minimum,
            "kubernetes": sb.config.kubernetes,
        }
        if args.baseline:
            out["baseline_create"] = await bench.create_pass(bench.baseline, "baseline_create")
            if args.restart:
                await asyncio.sleep(5.0)
                out["baseline_restart"] = await bench.restart_pass(bench.baseline, "baseline_restart")
            await bench.remove_baseline()
            await asyncio.sleep(5.0)
        out["create"] = await bench.create_pass(bench.gated, "create")
        if bench.rows:
            plot_parts(bench.rows[0], f"{args.services * args.pods} gated pods created at once", args.out)
            out["plot"] = Path(args.out).name + "-create.png"
        if args.restart:
            await asyncio.sleep(5.0)
            out["restart"] = await bench.restart_pass(bench.gated, "restart")
        return out
    finally:
        for t in bench.tasks:
            t.cancel()
        await asyncio.gather(*bench.tasks, return_exceptions=True)
        await api.close()
        bench.noop.stop()


def plot_parts(rows: list[tuple[float, dict[str, float]]], title: str, out: str) -> None:
    """A PNG of each pod's parts against the time its ContainersReady was seen: which component
    held the pods, and when in the pass (``OUT-create.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    colors = {"registered": "tab:orange", "checked": "tab:green", "gated": "tab:red", "ready": "tab:blue"}
    labels = dict(PARTS)
    xs = [x for x, _ in rows]
    for key, color in colors.items():
        ax.scatter(xs, [r[key] for _, r in rows], s=3, color=color, label=labels[key], alpha=0.6)
    ax.scatter(xs, [r["podgate"] for _, r in rows], s=3, color="black", marker="x", label=labels["podgate"])
    ax.set_xlabel("ContainersReady seen, s after the pass's first pod")
    ax.set_ylabel("seconds")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8, markerscale=4)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out + "-create.png", dpi=100)
    plt.close(fig)


# -- the report ---------------------------------------------------------------------------------
GOALS = {
    "last": "≤ LB minimum + 2 s",
    "ratio": "p99 ≤ 1.2",
    "rss": "≤ 250 MB",
    "writes": "≤ 3",
    "webhook": "p99 ≤ 100 ms",
}


def _secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def markdown(res: dict[str, Any]) -> str:
    passes = [p for p in ("create", "restart") if p in res]
    total_pods = res["services"] * res["pods_per_service"]
    lines = [
        "# Scale benchmark",
        "",
        f"{res['machine']}; {res['services']} Services × {res['pods_per_service']} pods = {total_pods} gated "
        f"pods on the node agent, one namespace; HAProxy TCP check every {res['interval_s']:g} s, "
        f"{res['rise']} passes to turn healthy (load balancer minimum {res['lb_minimum_s']:g} s); "
        + (f"Kubernetes {res['kubernetes']}; " if res.get("kubernetes") else "")
        + f"{res['date']}.",
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
    if all("queue_wait" in res[p] for p in passes):
        row(
            "controller passes: count; key's wait for a worker p50 / p99; pass p50 / p99",
            lambda p: (
                f"{p['pass_duration']['count']:.0f}; {_secs(p['queue_wait']['p50_s'])} / "
                f"{_secs(p['queue_wait']['p99_s'])}; {_secs(p['pass_duration']['p50_s'])} / "
                f"{_secs(p['pass_duration']['p99_s'])}"
            ),
        )
    if all("haproxy_calls" in res[p] for p in passes):
        row(
            "HAProxy calls p50 / p99: read; register; drain; remove",
            lambda p: "; ".join(
                f"{_secs(c['p50_s'])} / {_secs(c['p99_s'])}" if c["count"] else "-"
                for c in p["haproxy_calls"].values()
            ),
        )
    row(
        "controller RSS, start → peak",
        lambda p: f"{p['controller_rss_mib']['start']:.0f} → {p['controller_rss_mib']['peak']:.0f} MiB",
        GOALS["rss"],
    )
    row("controller CPU", lambda p: f"{p['controller_cpu_s']:.0f} CPU-s")
    if all(res[p].get("admission_rss_mib") for p in passes):
        row(
            "admission process RSS, start → peak; CPU",
            lambda p: (
                f"{p['admission_rss_mib']['start']:.0f} → {p['admission_rss_mib']['peak']:.0f} MiB; "
                f"{p['cpu_s']['admission']:.0f} CPU-s"
            ),
        )
    row(
        "pods/status writes per pod (podgate's)",
        lambda p: f"{p['status_writes_per_pod']:.2f} ({p['status_writes']:.0f})",
        GOALS["writes"],
    )
    row("webhook latency p50 / p99 (prober, every 50 ms)", webhook, GOALS["webhook"])
    if all("webhook_handler" in res[p] for p in passes):
        row(
            "… podgate's handler per review p50 / p99 (its histogram, request read → answer)",
            lambda p: " / ".join(
                "-" if v is None else f"{v * 1000:.1f} ms"
                for v in (p["webhook_handler"]["p50_s"], p["webhook_handler"]["p99_s"])
            ),
        )
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
    lines += decomposition_markdown(res, passes) + baseline_markdown(res, passes)
    if res.get("note"):
        lines += ["", res["note"]]
    if res.get("plot"):
        lines += [
            "",
            f"![Each pod's parts against the time its ContainersReady was seen, create pass]({res['plot']})",
        ]
    return "\n".join(lines) + "\n"


def _s(v: float | None, unit: float = 1.0, digits: int = 2) -> str:
    return "-" if v is None else f"{v * unit:.{digits}f}"


def decomposition_markdown(res: dict[str, Any], passes: Sequence[str]) -> list[str]:
    """Where each gated pod's time went, part by part, per pass."""
    if not all(res[p].get("decomposition", {}).get("parts_s") for p in passes):
        return []
    lines = [
        "",
        "## Where a pod's time goes",
        "",
        "Per pod, seconds, p50 / p99 / max over the pass's pods. (a) ContainersReady, (d′) gate True "
        "and (e) Ready are the times the benchmark's watch saw the writes; (d) the API server's "
        "completion of podgate's gate PATCH and (d₀) its arrival, from the API server's audit log; "
        "(b) registered and "
        "(c) UP are HAProxy's own, from its ring of server state changes (`show events`): (b) is "
        '`enable server` ("leaving forced maintenance"), (c) "is UP, reason: Layer4 check '
        "passed\". The watch's own lag makes (b − a) shorter.",
        "",
        "| part | " + " | ".join(passes) + " | goal |",
        "|---|" + "---|" * len(passes) + "---|",
    ]
    for key, label in PARTS:
        cells = []
        for p in passes:
            st = res[p]["decomposition"]["parts_s"].get(key)  # runs before a part was measured: none
            cells.append(f"{st['p50']:.2f} / {st['p99']:.2f} / {st['max']:.2f}" if st else "-")
        goal = "p99 ≤ 1 s" if key == "podgate" else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {goal} |")
    for key, label in SUBPARTS:
        if not all(key in res[p]["decomposition"].get("gate_write_s", {}) for p in passes):
            continue
        cells = []
        for p in passes:
            st = res[p]["decomposition"]["gate_write_s"][key]
            cells.append(f"{st['p50']:.2f} / {st['p99']:.2f} / {st['max']:.2f}")
        lines.append(f"| … of c→d: {label} | " + " | ".join(cells) + " | |")
    lines.append(
        "| pods decomposed; podgate's share over 1 s | "
        + " | ".join(
            f"{res[p]['decomposition']['decomposed']} of {res[p]['decomposition']['pods']}; "
            f"{res[p]['decomposition']['podgate_share_over_1s']}"
            for p in passes
        )
        + " | |"
    )
    return lines


def baseline_markdown(res: dict[str, Any], passes: Sequence[str]) -> list[str]:
    """The same passes admitted by a no-op webhook and never gated, beside podgate's."""
    pairs = [(f"baseline_{p}", p) for p in passes if f"baseline_{p}" in res]
    if not pairs:
        return []
    lines = [
        "",
        "## Beside a no-op webhook, in the same run",
        "",
        "Before podgate's passes, the same Deployments in a namespace of their own, admitted by "
        "`bench/noop_webhook.go` (Go, answers allowed with no patch, TLS, registered as podgate's "
        "webhook is) and never gated: the node agent alone. Then that namespace is deleted and "
        "podgate's passes run. Admission is the API server's own "
        "`apiserver_admission_webhook_admission_duration_seconds` (pod CREATE), quantiles "
        "interpolated in its buckets (5, 25, 100, 500 ms, 1 s...); CPU-seconds from /proc over "
        "each pass (podgate's is its whole controller process).",
        "",
        "| measure | " + " | ".join(f"no-op {p} | podgate {p} | ratio" for _, p in pairs) + " | goal |",
        "|---|" + "---|---|---|" * len(pairs) + "---|",
    ]

    def row(label: str, get: Any, fmt: Any, goal: str = "") -> None:
        cells = []
        for base, gated in pairs:
            b, g = get(res[base], "noop"), get(res[gated], "podgate")
            ratio = f"{g / b:.2f}" if b and g is not None else "-"
            cells += [fmt(b), fmt(g), ratio]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {goal} |")

    def ms(v: float | None) -> str:
        return _s(v, 1000, 0) + " ms" if v is not None else "-"

    row("admission calls", lambda r, w: r["admission"][w]["calls"], lambda v: f"{v:.0f}")
    row("admission p50 (API server)", lambda r, w: r["admission"][w]["p50_s"], ms)
    row("admission p99 (API server)", lambda r, w: r["admission"][w]["p99_s"], ms, "podgate ≤ 1.5 × no-op")
    row("admission mean (API server)", lambda r, w: r["admission"][w]["mean_s"], ms)
    row(
        "admission within 100 ms",
        lambda r, w: r["admission"][w]["share_within_100ms"],
        lambda v: "-" if v is None else f"{v * 100:.0f} %",
    )
    row(
        "webhook process CPU-s (no-op webhook / podgate's admission process, or its controller)",
        lambda r, w: (
            r["cpu_s"].get("noop_webhook")
            if w == "noop"
            else r["cpu_s"].get("admission", r["cpu_s"]["controller"])
        ),
        lambda v: _s(v, 1, 1),
    )
    row("node agent CPU-s", lambda r, w: r["cpu_s"]["agent"], lambda v: _s(v, 1, 1))
    row("API server CPU-s", lambda r, w: r["cpu_s"]["apiserver"], lambda v: _s(v, 1, 1))
    row(
        "pods/status writes per pod (API server, everyone's)",
        lambda r, w: r["all_status_writes_per_pod"],
        lambda v: _s(v),
        "podgate's ≤ 3",
    )
    row("… podgate's own", lambda r, w: r["status_writes_per_pod"], lambda v: _s(v))
    row(
        "ContainersReady → Ready p99 (s)",
        lambda r, w: r["containers_ready_to_ready_s"]["p99"],
        lambda v: _s(v),
    )
    row("pass took (s)", lambda r, w: r["took_s"], lambda v: _s(v, 1, 0))
    return lines


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
        "--no-baseline",
        dest="baseline",
        action="store_false",
        help="leave out the baseline passes (the same Deployments admitted by a no-op webhook)",
    )
    parser.add_argument(
        "--data-plane",
        action="store_true",
        help="put the sandbox's cloud-like data plane (a Python proxy) between podgate and HAProxy",
    )
    parser.add_argument("--note", default="", help="a sentence for the Markdown (what was missed and why)")
    parser.add_argument("--out", default=str(RESULTS / "scale"))
    parser.add_argument(
        "--short",
        action="store_true",
        help="the short form: 10 Services × 100 pods, results in bench/results/scale-1000.{json,md}",
    )
    args = parser.parse_args()
    if args.short:
        args.services, args.pods = 10, 100
        if args.out == str(RESULTS / "scale"):
            args.out = str(RESULTS / "scale-1000")
    with (
        sandbox(dataclasses.replace(CONFIG, data_plane=args.data_plane)) as sb,
        tempfile.TemporaryDirectory(prefix="podgate-scale-") as workdir,
    ):
        try:
            res = asyncio.run(run(sb, args, Path(workdir)))
        finally:  # the sandbox's logs outlive it, for a look at what happened
            logs = Path(tempfile.gettempdir()) / "podgate-scale-logs"
            shutil.copytree(sb.state_dir / "logs", logs, dirs_exist_ok=True)
            print(f"the sandbox's logs: {logs}", flush=True)
    res["note"] = args.note
    write(args.out, res, markdown)


if __name__ == "__main__":
    main()
