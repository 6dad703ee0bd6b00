"""Cloud API calls: what a burst of new pods costs against a metered load-balancer API.

In a sandbox of its own, the controller runs with the Alibaba Cloud provider against the local
OpenAPI double (real SDK, real HTTP, signatures checked): NLB server groups whose new servers
take an add job (one list poll) and then their first checks, 6 s of them (interval 2 s × healthy
threshold 3: time, not polls, as on a real load balancer).  Each round creates, at once, one
Deployment of gated pods per Service, each Service bound to a server group of its own, and
counts the API calls until every gate is True.  Configurations side by side (Services × pods,
poll period of pending gates, token-bucket rate):

- ``--pods`` pods behind one group at three poll periods and rates, ``--rounds`` rounds each;
- 1,000 pods over 10 groups (10 Services × 100 pods) at poll 1 s and ``--large-rates`` (the
  default rate, 10 calls/s, and 100/s), ``--large-rounds`` rounds (fewer: a round takes minutes);
- with ``--before COMMIT``, each configuration again right after it with the controller of an
  earlier commit (its ``src`` from ``git archive``, first on the controller's PYTHONPATH), so
  a change's effect is measured side by side in one run, on one sandbox.

A full run is longer than a quarter of an hour on 2 cores; ``--only`` and ``--large-rates`` split
it, and ``--merge`` makes one table of the parts (the Markdown says how many runs it holds).

Reported: calls per pod, the peak calls in any 1 s window against what the bucket allows in
one (its rate plus its burst of 20), seconds from creating the Deployments to the last gate
True.  Medians.

    .venv/bin/python bench/cloud_calls.py [--rounds 3] [--pods 40] [--large-rounds 2]
        [--large-rates 10,100] [--only small|large] [--before COMMIT] [--out PATH]
    .venv/bin/python bench/cloud_calls.py --merge A.json B.json --out PATH   # one table of runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from common import RESULTS, sandbox, write
from podgate.kube.client import api_client, call
from podgate.model.ownership import owner_tags
from podgate_sandbox.controlplane import CLUSTER_NAME, Sandbox, SandboxConfig
from podgate_sandbox.doubles.alibaba import AlibabaDouble

CONFIG = SandboxConfig(port_offset=18000, pod_cidr="127.121.0.0/16", lb_cidr="127.221.0.0/16")
PORT = 18630
CREDENTIALS = {
    "ALIBABA_CLOUD_ACCESS_KEY_ID": "podgate-test-ak",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "podgate-test-secret",
}
BURST = 20  # the providers' token-bucket burst
GROUPS = 10  # server groups on the double's NLB, one listener each


@dataclass(frozen=True)
class Config:
    name: str
    services: int  # each with its own server group and Deployment
    pods: int  # per Service
    poll: float  # --alibaba-poll-period
    rate: float  # --alibaba-rate
    rounds: int
    #: the controller's sources from this commit (None: this tree's)
    before: str | None = None


def configs(args: argparse.Namespace) -> list[Config]:
    """The chosen configurations, each followed by its twin on the ``--before`` controller."""
    chosen = []
    if args.only in (None, "small"):
        for poll, rate in ((0.1, 100.0), (1.0, 100.0), (1.0, 10.0)):
            chosen.append(
                Config(
                    f"{args.pods} pods, 1 group, poll {poll:g} s, {rate:g}/s",
                    1,
                    args.pods,
                    poll,
                    rate,
                    args.rounds,
                )
            )
    if args.only in (None, "large"):
        for rate in args.large_rates:
            chosen.append(
                Config(
                    f"1,000 pods, 10 groups, poll 1 s, {rate:g}/s", GROUPS, 100, 1.0, rate, args.large_rounds
                )
            )
    out = []
    for cfg in chosen:
        out.append(cfg)
        if args.before:
            out.append(dataclasses.replace(cfg, before=args.before))
    return out


@contextlib.contextmanager
def sources_of(commit: str | None) -> Iterator[dict[str, str]]:
    """The controller's extra environment: an earlier commit's ``src`` first on its path."""
    if commit is None:
        yield {}
        return
    with tempfile.TemporaryDirectory(prefix="podgate-before-") as tmp:
        repo = Path(__file__).resolve().parent.parent
        archive = subprocess.run(
            ["git", "-C", str(repo), "archive", commit, "src"], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        yield {"PYTHONPATH": f"{tmp}/src"}


class DoubleThread:
    """The double on an event loop of its own: the sandbox's blocking calls (swapping the
    controller) must not stall the API the controller is talking to."""

    def __init__(self) -> None:
        self.double = AlibabaDouble("cn-hangzhou")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> AlibabaDouble:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.double.start("127.0.0.1", PORT), self.loop).result(10)
        return self.double

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.double.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def peak_per_second(times: list[float]) -> int:
    """Most calls in any window of 1 s."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def gate(i: int) -> str:
    return f"service.readiness.podgate.dev/web{i}"


async def one_round(api: client.ApiClient, double: AlibabaDouble, ns: str, cfg: Config) -> dict[str, Any]:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    await call(core.create_namespace, {"metadata": {"name": ns}})
    for i in range(cfg.services):
        # the administrator's ownership tags, for this round's Service (podgate.model.ownership)
        double.tag(f"sgp-web{i}", owner_tags(CLUSTER_NAME, f"{ns}/web{i}"))
        annotations = {
            "podgate.dev/load-balancer-provider": "alibaba",
            "podgate.dev/alibaba-nlb-server-group-id": f"sgp-web{i}",
            "podgate.dev/deregistration-delay": "0",
        }
        spec = {"selector": {"app": f"web{i}"}, "ports": [{"port": 80, "targetPort": 8080}]}
        await call(
            core.create_namespaced_service,
            ns,
            {"metadata": {"name": f"web{i}", "annotations": annotations}, "spec": spec},
        )
    await asyncio.sleep(1)
    mark = len(double.script.call_times)
    t0 = time.monotonic()
    container = {"name": "app", "image": "nginx", "ports": [{"containerPort": 8080}]}
    for i in range(cfg.services):
        template = {
            # no drain hook: the round's clean-up deletes the namespace and is not measured
            "metadata": {"labels": {"app": f"web{i}"}, "annotations": {"podgate.dev/prestop": "none"}},
            "spec": {
                "readinessGates": [{"conditionType": gate(i)}],
                "containers": [container],
                "terminationGracePeriodSeconds": 5,
            },
        }
        body = {
            "metadata": {"name": f"web{i}"},
            "spec": {
                "replicas": cfg.pods,
                "selector": {"matchLabels": {"app": f"web{i}"}},
                "template": template,
            },
        }
        await call(apps.create_namespaced_deployment, ns, body)
    total = cfg.services * cfg.pods
    limit = 120 + 0.3 * total
    deadline = t0 + limit
    every = 0.1 if total <= 100 else 0.5  # a list of 1,000 pods is not free for the API server
    while True:
        items = (await call(core.list_namespaced_pod, ns))["items"]
        done = [
            p
            for p in items
            if any(
                c["type"] == gate(int(p["metadata"]["labels"]["app"][3:])) and c["status"] == "True"
                for c in p["status"].get("conditions") or ()
            )
        ]
        if len(done) == total:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ns}: {len(done)}/{total} gates True after {limit:.0f} s")
        await asyncio.sleep(every)
    elapsed = time.monotonic() - t0
    times = double.script.call_times[mark:]
    actions = Counter(double.script.calls[mark : mark + len(times)])
    await call(core.delete_namespace, ns)
    for _ in range(int(limit * 10)):  # the pods leave the groups as the namespace goes
        if not any(double.nlb_servers(f"sgp-web{i}") for i in range(cfg.services)):
            break
        await asyncio.sleep(0.1)
    else:
        raise TimeoutError(f"{ns}: the server groups did not empty")
    for _ in range(int(limit * 2)):  # and its pods are gone: the next round starts on a quiet node
        if ns not in {n["metadata"]["name"] for n in (await call(core.list_namespace))["items"]}:
            break
        await asyncio.sleep(0.5)
    return {
        "calls": len(times),
        "peak_per_s": peak_per_second(times),
        "seconds_to_all_true": elapsed,
        "calls_by_action": dict(actions.most_common()),
        "round_s": time.monotonic() - t0,
    }


async def run(sb: Sandbox, double: AlibabaDouble, args: argparse.Namespace) -> dict[str, Any]:
    script = double.script
    script.initial_polls, script.nlb_adding_polls = 0, 1
    script.nlb_check_interval, script.nlb_healthy_threshold = 2, 3
    double.add_nlb("nlb-bench", {f"lsn-web{i}": (80 + i, f"sgp-web{i}") for i in range(GROUPS)})
    endpoint = f"http://127.0.0.1:{PORT}"
    results = []
    for n, cfg in enumerate(configs(args)):
        flags = ["--alibaba-provider", "alibaba", "--alibaba-region", "cn-hangzhou"]
        flags += ["--alibaba-poll-period", str(cfg.poll), "--alibaba-rate", str(cfg.rate)]
        flags += [f"--alibaba-{p}-endpoint={endpoint}" for p in ("clb", "nlb", "ecs")]
        with (
            sources_of(cfg.before) as extra,
            sb.controller_replaced(*flags, env={**CREDENTIALS, **extra}, log=f"bench-cloud-{n}.log"),
        ):
            await asyncio.sleep(2)  # the swap takes the lease and syncs its caches
            api = await api_client(str(sb.kubeconfig))
            try:
                rounds = []
                for r in range(cfg.rounds):
                    rounds.append(await one_round(api, double, f"cloud-{n}-{r}", cfg))
                    print(f"{cfg.name}: round {r + 1}/{cfg.rounds} {rounds[-1]}", flush=True)
            finally:
                await api.close()
        pods = cfg.services * cfg.pods
        median = {
            k: statistics.median(r[k] for r in rounds) for k in ("calls", "peak_per_s", "seconds_to_all_true")
        }
        median["calls_per_pod"] = median["calls"] / pods
        results.append(
            {
                "name": cfg.name,
                "services": cfg.services,
                "pods": pods,
                "poll_period_s": cfg.poll,
                "rate_per_s": cfg.rate,
                "burst": BURST,
                "controller_from": cfg.before or "this tree",
                "rounds": rounds,
                "median": median,
            }
        )
    for c in results:  # this tree against the earlier controller, in the same configuration
        twin = next((b for b in results if b["name"] == c["name"] and b is not c), None)
        if twin is not None and c["controller_from"] == "this tree":
            c["ratio_to_before"] = {
                "calls": c["median"]["calls"] / twin["median"]["calls"],
                "seconds_to_all_true": c["median"]["seconds_to_all_true"]
                / twin["median"]["seconds_to_all_true"],
            }
    return {"before": args.before, "configs": results}


def markdown(res: dict[str, Any]) -> str:
    rounds = sorted({len(c["rounds"]) for c in res["configs"]})
    lines = [
        "# Cloud API calls benchmark",
        "",
        f"{res['machine']}; gated pods created at once behind Alibaba NLB server groups, one per "
        "Service (the local OpenAPI double: an add job of one poll, then 6 s of first checks: "
        f"interval 2 s × healthy threshold 3); {' or '.join(map(str, rounds))} rounds per "
        f"configuration (see the table), medians; {res['date']}."
        + (
            f" Merged from {res['runs']} runs of the benchmark, each on a sandbox of its own, "
            'each configuration beside its "before" twin in the same run.'
            if res.get("runs", 1) > 1
            else ""
        ),
        "",
        "| configuration | controller | rounds | API calls | calls per pod | peak calls in 1 s "
        "(bucket allows) | s to all gates True | calls vs before | time vs before |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in res["configs"]:
        m, r = c["median"], c.get("ratio_to_before")
        ratios = f"{r['calls']:.2f} | {r['seconds_to_all_true']:.2f}" if r else " | "
        lines.append(
            f"| {c['name']} | {c['controller_from']} | {len(c['rounds'])} | "
            f"{m['calls']:.0f} | {m['calls_per_pod']:.2f} | {m['peak_per_s']:.0f} "
            f"({c['rate_per_s'] + c['burst']:.0f}) | {m['seconds_to_all_true']:.1f} | {ratios} |"
        )
    lines += ["", "Calls by action (all rounds of a configuration, summed):", ""]
    for c in res["configs"]:
        total: Counter[str] = Counter()
        for r in c["rounds"]:
            total.update(r.get("calls_by_action", {}))
        words = ", ".join(f"{a} {n}" for a, n in total.most_common())
        lines.append(f"- {c['name']}, {c['controller_from']}: {words}")
    before = f" (`{res['before']}`: the commit before coalesced pool reads)" if res.get("before") else ""
    lines += [
        "",
        "Calls are counted by the double as they arrive (after signature checks), from creating the "
        'Deployments to the last gate True. "before" is the same configuration in the same run '
        f"with the controller of an earlier commit{before}. The token bucket allows a burst of 20 "
        "above its rate, so a 1 s window may hold rate + 20 calls. A read of a pending group costs "
        "two calls (`ListServerGroupServers`, up to 100 servers a page, and the listener's "
        "`GetListenerHealthStatus`); adding servers one call per 200. Every pod event of a Service "
        "reconciles it, besides its poll: with coalesced pool reads (`podgate.providers.reads`) a "
        "reconcile within a poll period of the group's last read reuses it, so a group costs one "
        "read per poll plus one after each change podgate makes to it.",
        "",
        "How to read it: at 40 pods behind one group, coalescing removes the reads that pod "
        "events added between polls. At 1,000 pods over 10 groups the 2-core machine is "
        "saturated by the pods being created (about 25 s for 1,000 here), and a group is read "
        "less often than once per poll period (see the ListServerGroupServers counts): a "
        "Service's poll is re-queued a period after its reconcile ends, and reconciles of "
        "Services with 100 pending pods wait for the 4 workers and their condition writes (our "
        "reading, not measured separately). What coalescing removes there is again the extra "
        "reads of pod events: fewer calls at 100/s; at the default 10/s both controllers spend "
        "the whole bucket (10 groups want 20 calls a second at a 1 s poll), and the gain shows "
        "as time, the tokens going to reads that can open gates. The 1,000-pod configurations "
        "run fewer rounds (a round, with its clean-up, takes about a minute).",
    ]
    return "\n".join(lines) + "\n"


def rates(text: str) -> list[float]:
    """``10,100`` → [10.0, 100.0]: positive calls per second."""
    try:
        out = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: every rate must be above 0")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pods", type=int, default=40)
    p.add_argument("--large-rounds", type=int, default=2, help="rounds of the 1,000-pod configuration")
    p.add_argument("--only", choices=("small", "large"), help="run only these configurations")
    p.add_argument("--before", metavar="COMMIT", help="also run the 1,000 pods with this commit's controller")
    p.add_argument(
        "--large-rates",
        type=rates,
        default=[10.0, 100.0],
        help="API rates of the 1,000-pod configuration, comma-separated",
    )
    p.add_argument(
        "--merge", nargs="+", metavar="JSON", help="merge these results into one table, run nothing"
    )
    p.add_argument("--out", default=str(RESULTS / "cloud_calls"))
    args = p.parse_args()
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        merged = {**parts[0], "runs": len(parts), "configs": [c for part in parts for c in part["configs"]]}
        write(args.out, merged, markdown)
        return
    if args.before:
        repo = Path(__file__).resolve().parent.parent
        found = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{args.before}^{{commit}}"],
            capture_output=True,
        )
        if found.returncode != 0:
            p.error(f"--before: {args.before!r} is not a commit of this repository")
    with sandbox(CONFIG) as sb, DoubleThread() as double:
        res = asyncio.run(run(sb, double, args))
    write(args.out, res, markdown)


if __name__ == "__main__":
    main()
