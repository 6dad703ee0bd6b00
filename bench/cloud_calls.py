"""Cloud API calls: what a burst of new pods costs against a metered load-balancer API.

In a sandbox of its own, the controller runs with the Alibaba Cloud provider against the local
OpenAPI double (real SDK, real HTTP, signatures checked): an NLB server group whose new servers
take an add job (one list poll) and then its first checks, 6 s of them (interval 2 s × healthy
threshold 3: time, not polls, as on a real load balancer).  Each round creates a Deployment of
``--pods`` gated pods at once and counts the API calls until every gate is True.
Configurations side by side (poll period of pending gates, token-bucket rate), ``--rounds``
rounds each:

- calls per pod, and the peak calls in any 1 s window against the configured rate;
- seconds from creating the Deployment to the last gate True.

    .venv/bin/python bench/cloud_calls.py [--rounds 3] [--pods 40]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from typing import Any

from kubernetes_asyncio import client

from common import RESULTS, sandbox, write
from podgate.kube.client import api_client, call
from podgate_sandbox.controlplane import Sandbox, SandboxConfig
from podgate_sandbox.doubles.alibaba import AlibabaDouble

CONFIG = SandboxConfig(port_offset=18000, pod_cidr="127.121.0.0/16", lb_cidr="127.221.0.0/16")
PORT = 18630
GATE = "service.readiness.podgate.dev/web"
CREDENTIALS = {
    "ALIBABA_CLOUD_ACCESS_KEY_ID": "podgate-test-ak",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "podgate-test-secret",
}
#: (name, poll period of pending gates in s, API calls per second allowed)
CONFIGS = [("poll 0.1 s, 100/s", 0.1, 100.0), ("poll 1 s, 100/s", 1.0, 100.0), ("poll 1 s, 10/s", 1.0, 10.0)]


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


async def one_round(api: client.ApiClient, double: AlibabaDouble, ns: str, pods: int) -> dict[str, Any]:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    await call(core.create_namespace, {"metadata": {"name": ns}})
    await call(
        core.create_namespaced_service,
        ns,
        {
            "metadata": {
                "name": "web",
                "annotations": {
                    "podgate.dev/load-balancer-provider": "alibaba",
                    "podgate.dev/alibaba-nlb-server-group-id": "sgp-web",
                    "podgate.dev/deregistration-delay": "0",
                },
            },
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    await asyncio.sleep(1)
    mark = len(double.script.call_times)
    t0 = time.monotonic()
    container = {"name": "app", "image": "nginx", "ports": [{"containerPort": 8080}]}
    template = {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"readinessGates": [{"conditionType": GATE}], "containers": [container]},
    }
    body = {
        "metadata": {"name": "web"},
        "spec": {"replicas": pods, "selector": {"matchLabels": {"app": "web"}}, "template": template},
    }
    await call(apps.create_namespaced_deployment, ns, body)
    deadline = t0 + 180
    while True:
        items = (await call(core.list_namespaced_pod, ns))["items"]
        done = [
            p
            for p in items
            if any(c["type"] == GATE and c["status"] == "True" for c in p["status"].get("conditions") or ())
        ]
        if len(done) == pods:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ns}: {len(done)}/{pods} gates True after 180 s")
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - t0
    times = double.script.call_times[mark:]
    await call(core.delete_namespace, ns)
    for _ in range(600):  # the pods leave the group as the namespace goes
        if not double.nlb_servers("sgp-web"):
            break
        await asyncio.sleep(0.1)
    else:
        raise TimeoutError(f"{ns}: the server group did not empty")
    return {"calls": len(times), "peak_per_s": peak_per_second(times), "seconds_to_all_true": elapsed}


async def run(sb: Sandbox, double: AlibabaDouble, args: argparse.Namespace) -> dict[str, Any]:
    script = double.script
    script.initial_polls, script.nlb_adding_polls = 0, 1
    script.nlb_check_interval, script.nlb_healthy_threshold = 2, 3
    double.add_nlb("nlb-bench", {"lsn-web": (80, "sgp-web")})
    endpoint = f"http://127.0.0.1:{PORT}"
    configs = []
    for i, (name, poll, rate) in enumerate(CONFIGS):
        flags = ["--alibaba-provider", "alibaba", "--alibaba-region", "cn-hangzhou"]
        flags += ["--alibaba-poll-period", str(poll), "--alibaba-rate", str(rate)]
        flags += [f"--alibaba-{p}-endpoint={endpoint}" for p in ("clb", "nlb", "ecs")]
        with sb.controller_replaced(*flags, env=CREDENTIALS, log=f"bench-cloud-{i}.log"):
            await asyncio.sleep(2)  # the swap takes the lease and syncs its caches
            api = await api_client(str(sb.kubeconfig))
            try:
                rounds = []
                for r in range(args.rounds):
                    rounds.append(await one_round(api, double, f"cloud-{i}-{r}", args.pods))
                    print(f"{name}: round {r + 1}/{args.rounds} {rounds[-1]}", flush=True)
            finally:
                await api.close()
        configs.append({"name": name, "poll_period_s": poll, "rate_per_s": rate, "rounds": rounds})
    for c in configs:
        c["median"] = {
            k: statistics.median(r[k] for r in c["rounds"])
            for k in ("calls", "peak_per_s", "seconds_to_all_true")
        }
        c["median"]["calls_per_pod"] = c["median"]["calls"] / args.pods
    base = configs[0]["median"]
    for c in configs:
        c["ratio_to_first"] = {
            "calls": c["median"]["calls"] / base["calls"],
            "seconds_to_all_true": c["median"]["seconds_to_all_true"] / base["seconds_to_all_true"],
        }
    return {"pods": args.pods, "rounds": args.rounds, "configs": configs}


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# Cloud API calls benchmark",
        "",
        f"{res['machine']}; {res['rounds']} rounds per configuration of {res['pods']} gated pods created "
        "at once behind an Alibaba NLB server group (the local OpenAPI double: an add job of one poll, "
        f"then 6 s of first checks: interval 2 s × healthy threshold 3); medians; {res['date']}.",
        "",
        "| configuration | API calls | calls per pod | peak calls in 1 s | s to all gates True | "
        "calls vs first | time vs first |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in res["configs"]:
        m, r = c["median"], c["ratio_to_first"]
        lines.append(
            f"| {c['name']} | {m['calls']:.0f} | {m['calls_per_pod']:.2f} | {m['peak_per_s']:.0f} | "
            f"{m['seconds_to_all_true']:.1f} | {r['calls']:.2f} | {r['seconds_to_all_true']:.2f} |"
        )
    lines += [
        "",
        "Calls are counted by the double as they arrive (after signature checks), from creating the "
        "Deployment to the last gate True. The token bucket allows a burst of 20 above the rate. "
        "Each read of a pending pool costs two calls (the group's servers, the listener's health), "
        "adding 40 servers one, whatever the number of pods (batches of 200).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pods", type=int, default=40)
    p.add_argument("--out", default=str(RESULTS / "cloud_calls"))
    args = p.parse_args()
    with sandbox(CONFIG) as sb, DoubleThread() as double:
        res = asyncio.run(run(sb, double, args))
    write(args.out, res, markdown)


if __name__ == "__main__":
    main()
