"""Soak: N minutes of churn under steady load; the controller's memory, descriptors and gate
latency must stay flat, no request may fail, and no gate may open without HAProxy's UP (issue 24,
item 5).

In a sandbox of its own (port offset 15500; node agent, HAProxy, the controller talking to
HAProxy's runtime API directly): a gated Service ``web`` (the rollout lab's, 4 replicas, checks
every second, rise 2) takes a steady request rate through its EXTERNAL-IP for the whole run.
Every ``--step`` seconds the next churn action runs, each to completion: a rolling restart of
``web``, a scale-up to 6, a scale-down to 4, a new Service with a gated Deployment of 2 in a
second namespace (Ready, then the previous one deleted).  Every ``--reload-every`` minutes
HAProxy's master gets SIGUSR2 (a reload: a new worker), and every ``--restart-every`` minutes the
controller is stopped (SIGTERM) and started again.

Reported per ``--window`` minutes: requests and failed requests, gate latency (ContainersReady
→ gate True, as a watch saw both) p50/p99, the controller's RSS and open file descriptors
(sampled every 10 s from /proc; a restart starts a new process), and the actions done.  At the
end, every gate the API server took True (its audit log) is checked against HAProxy's own
record of server state changes (the ``podgate-events`` ring, read every second and before each
reload: a reload, ours or podgate's own when a Service comes or goes, starts an empty ring): a
gate True with no UP of the pod's server before it is a false True.  A verdict line compares
the first window with the last.

    .venv/bin/python bench/soak.py [--minutes 30] [--window 5] [--step 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from typing import Any

from kubernetes_asyncio import client

from common import RESULTS, sandbox, summary, write
from podgate.kube.api import PODS
from podgate.kube.client import ApiKube, api_client, call
from podgate.kube.informer import Informer
from podgate.providers.haproxy_runtime import Runtime
from podgate_sandbox import processes
from podgate_sandbox.controlplane import Sandbox, SandboxConfig
from podgate_sandbox.decompose import UP, ServerEvent, gate_writes
from podgate_sandbox.loadgen import LoadGenerator
from podgate_sandbox.rollout import GATE_PREFIX, RolloutLab
from scale import Process, Timeline, deployment_body, haproxy_events, scrape, service_body, total

CONFIG = SandboxConfig(
    port_offset=15500, pod_cidr="127.123.0.0/16", lb_cidr="127.223.0.0/16", data_plane=False
)
INJECT = "podgate.dev/pod-readiness-gate-inject"
CHURN_NS = "soak-churn"
#: the verdict's rule, first window against last
RSS_GROWTH, FDS_GROWTH, P99_GROWTH, P99_SLACK_S = 1.25, 16, 1.5, 1.0


class Soak:
    def __init__(self, sb: Sandbox, api: client.ApiClient, args: argparse.Namespace) -> None:
        self.sb, self.api, self.args = sb, api, args
        self.apps, self.core = client.AppsV1Api(api), client.CoreV1Api(api)
        self.runtime = Runtime(str(sb.haproxy_runtime_socket))
        self.lab = RolloutLab(
            api, str(sb.haproxy_runtime_socket), replicas=4, interval=1.0, rise=2, prefix="soak"
        )
        self.steady = self.lab.namespace("podgate")
        self.timeline = Timeline()
        self.informers: list[Informer[dict[str, Any]]] = [
            Informer(ApiKube(api), PODS, namespace=ns, name=f"soak-{ns}") for ns in (self.steady, CHURN_NS)
        ]
        for inf in self.informers:
            inf.add_handler(self.timeline.on_pod)
        #: HAProxy's server events, every ring read so far (a reload empties the ring)
        self.events: set[ServerEvent] = set()
        self.samples: list[dict[str, Any]] = []
        self.actions: list[tuple[float, str, float]] = []  # (t since start, action, seconds it took)
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.replicas = 4
        self.services = 0

    # -- the sandbox's processes --------------------------------------------------------------
    def pids(self) -> dict[str, int]:
        pids: dict[str, int] = json.loads((self.sb.state_dir / "pids.json").read_text())
        return pids

    def controller(self) -> Process:
        return Process(self.pids()["podgate-controller"])

    def read_ring(self) -> None:
        self.events.update(haproxy_events(self.sb.haproxy_runtime_socket))

    async def sample_forever(self) -> None:
        while True:
            try:
                proc = self.controller()
                self.samples.append(
                    {
                        "t": round(time.monotonic() - self.t0, 1),
                        "pid": proc.pid,
                        "rss_mib": round(proc.rss_mib(), 1),
                        "fds": len(os.listdir(f"/proc/{proc.pid}/fd")),
                        "cpu_s": round(proc.cpu_s(), 1),
                    }
                )
            except (OSError, KeyError, ValueError):
                pass  # the controller restarting: the next sample finds the new one
            await asyncio.sleep(10.0)

    async def read_ring_forever(self) -> None:
        """Every second: podgate reloads HAProxy itself when a Service comes or goes
        (provisioning), and each reload starts an empty ring."""
        while True:
            with contextlib.suppress(OSError):  # between workers
                await asyncio.to_thread(self.read_ring)
            await asyncio.sleep(1.0)

    # -- actions --------------------------------------------------------------------------------
    async def until(self, what: str, fn: Any, limit: float = 180.0) -> None:
        deadline = time.monotonic() + limit
        while not await fn():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not reached within {limit:.0f}s")
            await asyncio.sleep(0.2)

    async def deployment_done(self, ns: str, name: str, replicas: int) -> bool:
        d = await call(self.apps.read_namespaced_deployment, name, ns)
        st = d.get("status") or {}
        pods = (await call(self.core.list_namespaced_pod, ns, label_selector=f"app={name}")).get(
            "items"
        ) or []
        return bool(
            st.get("observedGeneration", 0) >= d["metadata"]["generation"]
            and st.get("updatedReplicas") == replicas
            and st.get("availableReplicas") == replicas
            and st.get("replicas") == replicas
            and len(pods) == replicas
            and not any(p["metadata"].get("deletionTimestamp") for p in pods)
        )

    async def rollout(self) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        patch = {"spec": {"template": {"metadata": {"annotations": {"podgate.dev/soak-restart": stamp}}}}}
        await call(self.apps.patch_namespaced_deployment, "web", self.steady, patch)
        await self.until("the rollout", lambda: self.deployment_done(self.steady, "web", self.replicas))

    async def scale(self, replicas: int) -> None:
        self.replicas = replicas
        await call(
            self.apps.patch_namespaced_deployment, "web", self.steady, {"spec": {"replicas": replicas}}
        )
        await self.until("the scale", lambda: self.deployment_done(self.steady, "web", replicas))

    async def next_service(self) -> None:
        """A new gated Service and Deployment in the churn namespace, Ready; then the previous
        one deleted."""
        i = self.services
        # each Service that comes or goes makes podgate reload HAProxy, which starts an empty
        # ring: read it first, or a pod's UP less than a second before (the new pods', Ready
        # just now) is missed, and its gate reads as True without an UP (7 of 12 in one run)
        await asyncio.to_thread(self.read_ring)
        await call(self.core.create_namespaced_service, CHURN_NS, service_body(i, self.args))
        await call(self.apps.create_namespaced_deployment, CHURN_NS, deployment_body(i, 2))
        await self.until(f"svc-{i} Ready", lambda: self.deployment_done(CHURN_NS, f"svc-{i}", 2))
        await asyncio.to_thread(self.read_ring)
        if i > 0:
            await call(self.apps.delete_namespaced_deployment, f"svc-{i - 1}", CHURN_NS)
            await call(self.core.delete_namespaced_service, f"svc-{i - 1}", CHURN_NS)
        self.services += 1

    async def reload_haproxy(self) -> None:
        await asyncio.to_thread(self.read_ring)  # the reload starts an empty ring
        before = await self.runtime.identity()
        os.kill(self.pids()["haproxy"], signal.SIGUSR2)

        async def new_worker() -> bool:
            try:
                return await self.runtime.identity() != before
            except Exception:
                return False

        await self.until("a new HAProxy worker", new_worker, 30)

    async def restart_controller(self) -> None:
        comp = next(c for c in self.sb.components() if c.name == "podgate-controller")
        await asyncio.to_thread(processes.stop, self.pids()[comp.name], comp.marker)
        await asyncio.to_thread(self.sb.up)  # starts what is missing: the controller
        url = f"http://127.0.0.1:{CONFIG.port(8081)}/metrics"

        async def leading() -> bool:
            try:
                return total(await asyncio.to_thread(scrape, url), "podgate_leader") == 1.0
            except OSError:
                return False

        await self.until("the controller leading again", leading, 60)

    async def act(self, name: str, action: Any) -> None:
        t = time.monotonic()
        await action
        took = time.monotonic() - t
        self.actions.append((round(t - self.t0, 1), name, round(took, 1)))
        print(f"  {(t - self.t0) / 60:5.1f} min  {name} ({took:.1f}s)", flush=True)

    async def churn(self, seconds: float) -> None:
        cycle = [
            ("rollout", self.rollout),
            ("scale to 6", lambda: self.scale(6)),
            ("new Service, previous deleted", self.next_service),
            ("scale to 4", lambda: self.scale(4)),
        ]
        reload_at, restart_at = self.args.reload_every * 60 / 2, self.args.restart_every * 60 * 3 / 4
        step = 0
        while (now := time.monotonic() - self.t0) < seconds:
            if now >= reload_at:
                await self.act("HAProxy reload", self.reload_haproxy())
                reload_at += self.args.reload_every * 60
            elif now >= restart_at:
                await self.act("controller restart", self.restart_controller())
                restart_at += self.args.restart_every * 60
            else:
                name, fn = cycle[step % len(cycle)]
                await self.act(name, fn())
                step += 1
            await asyncio.sleep(max(0.0, self.args.step - (time.monotonic() - self.t0 - now)))


def false_trues(
    writes: dict[str, tuple[float, float]], timeline: Timeline, events: set[ServerEvent]
) -> tuple[list[str], list[str]]:
    """Gates taken True with no UP of the pod's server in HAProxy's record before the write
    completed (false), and those whose server has no event at all in the rings read (unverified:
    a ring read missed them)."""
    by_target: dict[str, list[ServerEvent]] = {}
    for e in events:
        by_target.setdefault(e.target, []).append(e)
    false, unverified = [], []
    for name, (_, completed) in writes.items():
        target = timeline.target.get(name)
        if target is None or name not in timeline.seen:
            continue  # not one of the soak's pods
        mine = [e for e in by_target.get(target, ()) if e.at >= timeline.seen[name] - 1.0]
        if not mine:
            unverified.append(name)
        elif not any(e.kind == UP and e.at <= completed for e in mine):
            false.append(f"{name} ({target}) True at {completed:.3f} with no UP before it")
    return false, unverified


def windows(soak: Soak, load: Any, minutes: float) -> list[dict[str, Any]]:
    """Whole windows of ``--window`` minutes; the run's last seconds past the last whole one
    (finishing an action, the load's tail) belong to it."""
    width = soak.args.window * 60
    n = max(1, int(minutes * 60 // width))
    out = []
    for i in range(n):
        lo, hi = i * width, ((i + 1) * width if i < n - 1 else float("inf"))
        outcomes = [o for o in load.outcomes if lo <= o[0] - soak.t0 < hi]
        latencies = [
            soak.timeline.gate_true[p] - soak.timeline.containers_ready[p]
            for p in soak.timeline.gate_true
            if p in soak.timeline.containers_ready and lo <= soak.timeline.gate_true[p] - soak.wall0 < hi
        ]
        samples = [s for s in soak.samples if lo <= s["t"] < hi]
        acts = [a for a in soak.actions if lo <= a[0] < hi]
        out.append(
            {
                "window": i + 1,
                "from_min": lo / 60,
                "to_min": min(hi, minutes * 60) / 60,
                "requests": len(outcomes),
                "failed": sum(1 for o in outcomes if o[1] != "ok"),
                "gate_latency_s": summary(latencies) if latencies else None,
                "rss_mib_max": max((s["rss_mib"] for s in samples), default=None),
                "rss_mib_last": samples[-1]["rss_mib"] if samples else None,
                "fds_max": max((s["fds"] for s in samples), default=None),
                "actions": [a[1] for a in acts],
            }
        )
    return out


def verdict(ws: list[dict[str, Any]]) -> dict[str, Any]:
    first, last = ws[0], ws[-1]
    out: dict[str, Any] = {}
    if first["rss_mib_max"] and last["rss_mib_max"]:
        out["rss"] = last["rss_mib_max"] <= first["rss_mib_max"] * RSS_GROWTH
    if first["fds_max"] is not None and last["fds_max"] is not None:
        out["fds"] = last["fds_max"] <= first["fds_max"] + FDS_GROWTH
    if first["gate_latency_s"] and last["gate_latency_s"]:
        a, b = first["gate_latency_s"]["p99"], last["gate_latency_s"]["p99"]
        out["p99"] = b <= max(a * P99_GROWTH, a + P99_SLACK_S)
    # flat: each measured and met; None: not established (a measure missing, or one window)
    out["flat"] = all(out.values()) if len(out) == 3 and len(ws) > 1 else None
    return out


async def run(sb: Sandbox, args: argparse.Namespace) -> dict[str, Any]:
    api = await api_client(str(sb.kubeconfig))
    api.configuration.connection_pool_maxsize = 16
    soak = Soak(sb, api, args)
    tasks: list[asyncio.Task[Any]] = []
    try:
        await call(
            soak.core.create_namespace, {"metadata": {"name": CHURN_NS, "labels": {INJECT: "enabled"}}}
        )
        tasks += [asyncio.create_task(inf.run()) for inf in soak.informers]
        ip = await soak.lab.prepare("podgate")
        load = LoadGenerator(f"http://{ip}/", rate=args.rate, max_seconds=args.minutes * 60 + 900)
        soak.t0, soak.wall0 = time.monotonic(), time.time()
        load_task = asyncio.create_task(load.run())
        tasks += [asyncio.create_task(soak.sample_forever()), asyncio.create_task(soak.read_ring_forever())]
        await soak.churn(args.minutes * 60)
        await asyncio.sleep(2.0)
        load.stop()
        result = await load_task
        took = time.monotonic() - soak.t0
        await asyncio.to_thread(soak.read_ring)
        writes = gate_writes(sb.audit_log.read_text(errors="replace").splitlines(), GATE_PREFIX)
        false, unverified = false_trues(writes, soak.timeline, soak.events)
        ws = windows(soak, result, took / 60)
        return {
            "minutes_asked": args.minutes,
            "minutes": round(took / 60, 1),
            "rate": args.rate,
            "step_s": args.step,
            "window_min": args.window,
            "requests": result.total,
            "failed": result.failed,
            "failures": {k: v for k, v in result.by_kind().items() if k != "ok"},
            "gates_true_audited": len([n for n in writes if n in soak.timeline.seen]),
            "false_trues": false,
            "unverified_trues": unverified,
            "haproxy_events": len(soak.events),
            "actions": soak.actions,
            "windows": ws,
            "verdict": verdict(ws),
            "samples": soak.samples,
        }
    finally:
        await soak.lab.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def markdown(res: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for _, name, _ in res["actions"]:
        counts[name] = counts.get(name, 0) + 1
    done = ", ".join(f"{n} {name}" for name, n in counts.items())
    lines = [
        "# Soak benchmark",
        "",
        f"{res['machine']}; {res['minutes']:.1f} min of churn ({done}; one action every "
        f"{res['step_s']:.0f} s, each to completion) under {res['rate']:.0f} requests/s through a gated "
        f"Service's EXTERNAL-IP; HAProxy, the node agent; {res['date']}.",
        "",
        "| window | requests | failed | gates opened | gate p50 | gate p99 | controller RSS max (last) "
        "| open fds max | actions |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for w in res["windows"]:
        g = w["gate_latency_s"] or {}
        lines.append(
            f"| {w['from_min']:.0f}–{w['to_min']:.0f} min | {w['requests']:,} | {w['failed']} "
            f"| {g.get('n', 0)} | "
            f"{_f(g.get('p50'), '{:.2f} s')} | {_f(g.get('p99'), '{:.2f} s')} | "
            f"{_f(w['rss_mib_max'])} ({_f(w['rss_mib_last'])}) MiB | {_f(w['fds_max'], '{:.0f}')} | "
            f"{', '.join(w['actions']) or '–'} |"
        )
    v = res["verdict"]
    first, last = res["windows"][0], res["windows"][-1]
    fg, lg = first["gate_latency_s"] or {}, last["gate_latency_s"] or {}
    lines += [
        "",
        f"Failed requests: {res['failed']} of {res['requests']:,}"
        + (f" ({res['failures']})" if res["failures"] else "")
        + f". Gates taken True by the API server (audit log): {res['gates_true_audited']}; without an UP "
        f"of the pod's server in HAProxy's own record before it: {len(res['false_trues'])}"
        + (f" ({'; '.join(res['false_trues'][:5])})" if res["false_trues"] else "")
        + f"; not verifiable (no event of the server in the rings read): {len(res['unverified_trues'])}.",
        "",
        f"**Verdict: {_verdict(v.get('flat'))}** (first window against last: RSS max "
        f"{_f(first['rss_mib_max'])} → {_f(last['rss_mib_max'])} MiB, rule ≤ ×{RSS_GROWTH}: "
        f"{_ok(v.get('rss'))}; open fds max {_f(first['fds_max'], '{:.0f}')} → "
        f"{_f(last['fds_max'], '{:.0f}')}, "
        f"rule ≤ +{FDS_GROWTH}: {_ok(v.get('fds'))}; gate p99 {_f(fg.get('p99'), '{:.2f}')} → "
        f"{_f(lg.get('p99'), '{:.2f}')} s, rule ≤ ×{P99_GROWTH} or +{P99_SLACK_S:.0f} s: "
        f"{_ok(v.get('p99'))}).",
        "",
        "RSS and fds are sampled every 10 s; a controller restart starts a new process, so a window "
        "with a restart shows the new process's (lower) values after it.",
    ]
    if res.get("note"):
        lines += ["", res["note"]]
    return "\n".join(lines) + "\n"


def _verdict(flat: bool | None) -> str:
    return "not established" if flat is None else ("flat" if flat else "NOT flat")


def _ok(v: bool | None) -> str:
    return "not measured" if v is None else ("met" if v else "missed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--window", type=float, default=5.0, help="minutes per reported window")
    parser.add_argument("--step", type=float, default=30.0, help="seconds from one churn action to the next")
    parser.add_argument("--reload-every", type=float, default=5.0, help="minutes between HAProxy reloads")
    parser.add_argument(
        "--restart-every", type=float, default=5.0, help="minutes between controller restarts"
    )
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second through the LB")
    parser.add_argument("--interval", type=float, default=1.0, help="churn Services' check interval")
    parser.add_argument("--rise", type=int, default=2, help="churn Services' healthy threshold")
    parser.add_argument("--note", default="", help="a sentence for the results")
    parser.add_argument("--out", default=str(RESULTS / "soak"))
    args = parser.parse_args()
    if args.minutes <= 0 or args.window <= 0 or args.step <= 0:
        parser.error("--minutes, --window and --step must be positive")
    with sandbox(CONFIG) as sb:
        res = asyncio.run(run(sb, args))
    if args.note:
        res["note"] = args.note
    write(args.out, res, markdown)


if __name__ == "__main__":
    main()
