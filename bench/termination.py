"""Termination benchmark (P6): pods leaving under load, with no hook, the usual fixed
``preStop: sleep 15`` and podgate's drain hook, on HAProxy as podgate provisions it and on a
cloud-like data plane (no retries, a propagation delay between podgate's drain and the load
balancer acting on it), side by side.

Its own sandbox (ports, loopback ranges), one namespace per scenario (see
``podgate_sandbox.termination``): a Deployment of ``--replicas`` pods of an app that aborts at
SIGTERM and answers in 0.5-1 s, behind a LoadBalancer Service; keep-alive clients send
``--rate`` POSTs/s through the EXTERNAL-IP during each round: a scale-down to ``--down-to`` and a
``rollout restart``, the scenarios interleaved round by round so machine noise hits them alike.
Per leaving pod, the node agent's times from deletion to SIGTERM and to gone, and HAProxy's own
state's time to drained.  JSON and Markdown go to bench/results/.

    .venv/bin/python bench/termination.py [--rounds 2] [--replicas 6] [--down-to 2] [--rate 40]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import asdict
from typing import Any

from common import RESULTS, sandbox, write
from podgate.kube.client import api_client
from podgate_sandbox.controlplane import Sandbox, SandboxConfig
from podgate_sandbox.termination import (
    ACTIONS,
    HOOKS,
    PLANES,
    RoundResult,
    Scenario,
    TerminationLab,
    summarise,
)

CONFIG = SandboxConfig(port_offset=15000, pod_cidr="127.115.0.0/16", lb_cidr="127.215.0.0/16")


async def run(sb: Sandbox, args: argparse.Namespace) -> tuple[dict[str, Any], list[RoundResult]]:
    api = await api_client(str(sb.kubeconfig))
    lab = TerminationLab(
        api,
        str(sb.haproxy_runtime_socket),
        f"http://127.0.0.1:{sb.config.agent_healthz_port}",
        replicas=args.replicas,
        down_to=args.down_to,
        rate=args.rate,
        sleep=args.sleep,
        propagation=args.propagation,
    )
    scenarios = [Scenario(h, p) for p in args.planes.split(",") for h in args.hooks.split(",")]
    actions = args.actions.split(",")
    try:
        ips = {s: await lab.prepare(s) for s in scenarios}
        rounds = []
        for r in range(args.rounds):
            for action in actions:
                for s in scenarios:
                    t0 = time.monotonic()
                    res = await lab.round(s, ips[s], action, r)
                    rounds.append(res)
                    sigterm = max((p.to_sigterm or 0.0 for p in res.pods), default=0.0)
                    print(
                        f"round {r + 1}/{args.rounds} {action:10s} {s.name:14s} requests {res.requests:4d} "
                        f"failed {res.failed:3d} deletion→SIGTERM max {sigterm:5.2f}s "
                        f"({time.monotonic() - t0:.0f}s)",
                        flush=True,
                    )
        return summarise(rounds), rounds
    finally:
        await api.close()


def _range(entry: dict[str, Any], key: str) -> str:
    v = entry.get(key)
    return f"{v['p50']:.2f} / {v['max']:.2f} s" if v else "-"


def markdown(res: dict[str, Any]) -> str:
    s = res["scenarios"]
    lines = [
        "# Termination benchmark",
        "",
        f"{res['machine']}; {res['rounds']} rounds per scenario and action (interleaved); "
        f"{res['replicas']} replicas of an app that aborts at SIGTERM (in-flight requests dropped) "
        f"and answers in 0.5-1 s; {res['rate']:g} POSTs/s from keep-alive clients through the "
        f"EXTERNAL-IP; HAProxy checks every 1 s, 2 to rise or fall; the cloud-like data plane "
        f"applies a drain {res['propagation_s']:g} s after podgate asks and never retries; "
        f"terminationGracePeriodSeconds 30; {res['date']}.",
        "",
        "Per leaving pod, p50 / max: from its deletion to SIGTERM and to gone, and to the moment "
        "HAProxy itself had it drained (out of rotation, no session left); *SIGTERM − drained*: "
        "how long the pod waited past the load balancer's drain (negative: SIGTERM came first).",
    ]
    for action in res["actions"]:
        what = (
            f"scale-down {res['replicas']} → {res['down_to']}"
            if action == "scale-down"
            else f"`rollout restart` of {res['replicas']}"
        )
        lines += [
            "",
            f"## {what}",
            "",
            "| scenario | failed / requests | rounds with failures | failures by kind | "
            "deletion → SIGTERM | deletion → gone | deletion → LB drained | SIGTERM − drained (max) "
            "| pods SIGTERMed before drained |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, by_action in s.items():
            e = by_action.get(action)
            if e is None:
                continue
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(e["failed_by_kind"].items())) or "-"
            after = e.get("sigterm_after_lb_drain_s")
            lines.append(
                f"| {res['titles'][name]} | {e['failed']} / {e['requests']} | "
                f"{sum(1 for f in e['failed_per_round'] if f)}/{e['rounds']} | {kinds} | "
                f"{_range(e, 'to_sigterm_s')} | {_range(e, 'to_gone_s')} | {_range(e, 'lb_drained_s')} | "
                f"{after['max']:+.2f} s | {e['sigterm_before_lb_drain']}/{e['pods']} |"
                if after
                else f"| {res['titles'][name]} | {e['failed']} / {e['requests']} | - | {kinds} |" + " - |" * 5
            )
    goals = res.get("goals") or {}
    if goals:
        lines += ["", "| goal (podgate's drain hook) | result |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in goals.items()]
    return "\n".join(lines) + "\n"


def goals(summary: dict[str, Any]) -> dict[str, str]:
    """The issue's goals for (c), as measured: 0 failed in every round; SIGTERM no later than
    the load balancer's own drain + 1 s."""
    out = {}
    drains = {n: a for n, a in summary.items() if n.startswith("drain-")}
    if drains:
        per_round = [f for a in drains.values() for e in a.values() for f in e["failed_per_round"]]
        out["0 failed requests in every round"] = (
            f"{'yes' if not any(per_round) else 'no'} ({sum(per_round)} failed in {len(per_round)} rounds)"
        )
        waits = [
            e["sigterm_after_lb_drain_s"]["max"]
            for a in drains.values()
            for e in a.values()
            if "sigterm_after_lb_drain_s" in e
        ]
        early = sum(e["sigterm_before_lb_drain"] for a in drains.values() for e in a.values())
        if waits:
            out["SIGTERM ≤ the load balancer's own drain + 1 s"] = (
                f"{'yes' if max(waits) <= 1.0 and not early else 'no'} (at most {max(waits):+.2f} s past it; "
                f"{early} pods SIGTERMed before it)"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=6)
    parser.add_argument("--down-to", type=int, default=2)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--sleep", type=float, default=15.0, help="the fixed preStop sleep of (b)")
    parser.add_argument("--propagation", type=float, default=5.0, help="the cloud-like plane's delay")
    parser.add_argument("--hooks", default=",".join(HOOKS))
    parser.add_argument("--planes", default=",".join(PLANES))
    parser.add_argument("--actions", default=",".join(ACTIONS))
    parser.add_argument("--out", default=str(RESULTS / "termination"))
    args = parser.parse_args()
    started = time.monotonic()
    with sandbox(CONFIG) as sb:
        summary, rounds = asyncio.run(run(sb, args))
    res = {
        "rounds": args.rounds,
        "replicas": args.replicas,
        "down_to": args.down_to,
        "rate": args.rate,
        "sleep_s": args.sleep,
        "propagation_s": args.propagation,
        "actions": args.actions.split(","),
        "titles": {
            Scenario(h, p).name: Scenario(h, p).title(args.sleep, args.propagation)
            for p in args.planes.split(",")
            for h in args.hooks.split(",")
        },
        "scenarios": summary,
        "goals": goals(summary),
        "run_s": round(time.monotonic() - started),
        "per_round": [asdict(r) for r in rounds],
    }
    write(args.out, res, markdown)


if __name__ == "__main__":
    main()
