"""Rollout benchmark: rolling updates under steady load, with and without podgate, side by side.

Its own sandbox (ports, loopback ranges), a Deployment of ``--replicas`` behind a LoadBalancer
Service per scenario (see ``podgate_sandbox.rollout``), ``--rate`` requests/s through the
EXTERNAL-IP during each of ``--rounds`` rollout restarts, the scenarios interleaved round by
round so machine noise hits them alike.  JSON and Markdown go to bench/results/.

    .venv/bin/python bench/rollout.py [--rounds 10] [--replicas 6] [--rate 250]

``--registration 2-10`` runs it where the ratio means something (P3 on a cloud-like load
balancer): the sandbox's cloud-like data plane, no retries, each new target's checks starting
2-10 s after registration; the workaround's ``minReadySeconds`` then covers that (rise × interval
+ 10 s + 1, or ``--min-ready``), podgate uses its drain hook.  Results: ``rollout-cloud``.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import asdict
from typing import Any

from common import RESULTS, sandbox, write
from podgate.kube.client import api_client
from podgate_sandbox.controlplane import Sandbox, SandboxConfig
from podgate_sandbox.rollout import RolloutLab, RoundResult, summarise

CONFIG = SandboxConfig(port_offset=17000, pod_cidr="127.112.0.0/16", lb_cidr="127.212.0.0/16")


async def run(sb: Sandbox, args: argparse.Namespace) -> tuple[dict[str, Any], list[RoundResult]]:
    api = await api_client(str(sb.kubeconfig))
    lab = RolloutLab(
        api,
        str(sb.haproxy_runtime_socket),
        replicas=args.replicas,
        interval=args.interval,
        rise=args.rise,
        rate=args.rate,
        registration=args.registration,
        min_ready=args.min_ready,
    )
    names = args.scenarios.split(",")
    try:
        ips = {n: await lab.prepare(n) for n in names}
        rounds = []
        for r in range(args.rounds):
            for n in names:
                res = await lab.round(n, ips[n], r)
                rounds.append(res)
                print(
                    f"round {r + 1}/{args.rounds} {n:16s} requests {res.requests:5d} failed {res.failed:4d} "
                    f"rollout {res.rollout_s:5.1f}s",
                    flush=True,
                )
        return summarise(rounds, lab.lb_minimum), rounds
    finally:
        await lab.close()
        await api.close()


def markdown(res: dict[str, Any]) -> str:
    s = res["scenarios"]
    lines = [
        "# Rollout benchmark",
        "",
        f"{res['machine']}; {res['rounds']} rounds of `rollout restart` per scenario (interleaved); "
        f"{res['replicas']} replicas; {res['rate']:g} requests/s through the EXTERNAL-IP; HAProxy checks "
        f"every {res['interval']:g} s, {res['rise']} passes to turn healthy "
        f"(minimum {res['lb_minimum_s']:g} s); "
        + (
            "cloud-like data plane: no retries, each new target's checks start "
            f"{res['registration_s'][0]:g}-{res['registration_s'][1]:g} s after registration "
            "(podgate's scenario with its drain hook, the default; the workaround's minReadySeconds "
            "covers rise × interval + the longest registration delay + 1 s); "
            if res.get("registration_s")
            else ""
        )
        + f"{res['date']}.",
        "",
        "| scenario | requests | failed | rounds with failures | failures by kind "
        "| rollout p50 | rollout max |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in s.items():
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(e["failed_by_kind"].items())) or "-"
        lines.append(
            f"| {name} ({res['titles'][name]}) | {e['requests']} | {e['failed']} | "
            f"{e['rounds_with_failures']}/{e['rounds']} | {kinds} | {e['rollout_s']['p50']:.1f} s | "
            f"{e['rollout_s']['max']:.1f} s |"
        )
    lines += ["", "| ratio | value | target |", "|---|---|---|"]
    if "podgate" in s and "workaround" in s:
        ratio = s["podgate"]["rollout_s"]["p50"] / s["workaround"]["rollout_s"]["p50"]
        lines.append(f"| podgate rollout / workaround rollout (p50) | {ratio:.2f} | ≤ 0.6 |")
    for name in ("podgate", "podgate-prestop"):
        if name in s and "gate_ratio" in s[name] and res.get("registration_s"):
            # the load balancer's minimum is no longer rise × interval: each target waits its own
            # registration delay first, which podgate cannot see and does not need to
            g = s[name]["gate_latency_s"]
            lines.append(
                f"| {name}: ContainersReady → gate True, p50 / p99 (n = {g['n']}; each includes its "
                f"target's registration delay) | {g['p50']:.2f} s / {g['p99']:.2f} s | - |"
            )
        elif name in s and "gate_ratio" in s[name]:
            g, q = s[name]["gate_latency_s"], s[name]["gate_ratio"]
            lines.append(
                f"| {name}: ContainersReady → gate True / LB minimum, p50 | {q['p50']:.3f} "
                f"({g['p50']:.2f} s) | ≤ 1.05 |"
            )
            lines.append(f"| {name}: same, p99 (n = {g['n']}) | {q['p99']:.3f} ({g['p99']:.2f} s) | ≤ 1.2 |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=6)
    parser.add_argument("--rate", type=float, default=250.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--rise", type=int, default=3)
    parser.add_argument("--scenarios", default="plain,workaround,podgate,podgate-prestop")
    parser.add_argument(
        "--registration",
        type=lambda raw: tuple(float(x) for x in raw.split("-", 1)),
        default=None,
        help="A-B: the cloud-like data plane, each new target's checks starting A-B s after registration",
    )
    parser.add_argument("--min-ready", type=int, default=None, help="the workaround's minReadySeconds")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.out is None:
        args.out = str(RESULTS / ("rollout-cloud" if args.registration else "rollout"))
    with sandbox(CONFIG) as sb:
        summary, rounds = asyncio.run(run(sb, args))
    from podgate_sandbox.rollout import scenarios

    res = {
        "rounds": args.rounds,
        "replicas": args.replicas,
        "rate": args.rate,
        "interval": args.interval,
        "rise": args.rise,
        "lb_minimum_s": args.interval * args.rise,
        "registration_s": list(args.registration) if args.registration else None,
        "titles": {
            n: s.title
            for n, s in scenarios(args.interval, args.rise, args.registration, args.min_ready).items()
        },
        "scenarios": summary,
        "per_round": [
            {k: v for k, v in asdict(r).items() if k not in ("healthy", "outcomes")} for r in rounds
        ],
    }
    write(args.out, res, markdown)


if __name__ == "__main__":
    main()
