"""``podgate sandbox …``: the sandbox's command, plugged into the ``podgate`` CLI.

It is registered under the ``podgate.commands`` entry-point group by the podgate-sandbox
distribution, so the command users type stays ``podgate sandbox up`` while the product's CLI
never imports sandbox code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from podgate_sandbox.binaries import ALL_BINARIES
from podgate_sandbox.controlplane import Sandbox, SandboxConfig, SandboxError
from podgate_sandbox.gobuild import (
    GO_BINARIES,
    NEWEST_RELEASE,
    OLDEST_RELEASE,
    GoBuildError,
    binaries_for,
    check_supported,
    ensure,
)


def _sandbox(args: argparse.Namespace, for_up: bool = False) -> Sandbox:
    state = Path(args.state_dir) if args.state_dir else None
    config = None
    if for_up and (
        args.run_commands
        or any(
            v is not None
            for v in (
                args.port_offset,
                args.pod_cidr,
                args.lb_cidr,
                args.node,
                args.node_pod_cidr,
                args.kubernetes,
            )
        )
    ):
        defaults = SandboxConfig()
        if args.kubernetes:
            check_supported(args.kubernetes)
        config = SandboxConfig(
            # the exact release whose binaries the cache holds for the request (1.37 → 1.37.2)
            kubernetes=binaries_for(args.kubernetes).version,
            port_offset=args.port_offset if args.port_offset is not None else defaults.port_offset,
            pod_cidr=args.pod_cidr or defaults.pod_cidr,
            lb_cidr=args.lb_cidr or defaults.lb_cidr,
            run_commands=args.run_commands,
            node=args.node or defaults.node,
            node_pod_cidr=args.node_pod_cidr or defaults.node_pod_cidr,
        )
    return Sandbox(state, config)


def cmd_sandbox(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (SandboxError, GoBuildError) as e:
        print(f"podgate: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.archive and args.action != "import":
        print(f"podgate: sandbox {args.action} takes no argument (got {args.archive!r})", file=sys.stderr)
        return 2
    if args.action == "install":
        # --node agent: what a node-agent sandbox runs (no kubelet, no kube-proxy)
        ensure(args.kubernetes, names=ALL_BINARIES if args.node == "agent" else GO_BINARIES)
        return 0
    sb = _sandbox(args, for_up=args.action == "up")
    if args.action == "up":
        sb.up(with_controller=not args.without_controller)
        print(f"sandbox up; state in {sb.state_dir}")
        print("to use kubectl with it:")
        print(
            '  eval "$(podgate sandbox env'
            + (f" --state-dir {args.state_dir}" if args.state_dir else "")
            + ')"'
        )
        return 0
    if args.action == "down":
        stopped = sb.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    if args.action == "import":
        if not args.archive:
            print(
                "podgate: sandbox import needs an image archive (OCI), e.g. dist/podgate-image.tar",
                file=sys.stderr,
            )
            return 2
        for name in sb.import_image(Path(args.archive)):
            print(f"imported {name}")
        return 0
    if args.action == "env":
        sys.stdout.write(sb.env())
        return 0
    rows = sb.status()
    print(f"{'COMPONENT':<26}{'PID':<9}{'HEALTH':<11}LOG")
    for row in rows:
        health = "healthy" if row.healthy else ("unhealthy" if row.running else "stopped")
        print(f"{row.name:<26}{row.pid or '-':<9}{health:<11}{row.log}")
    return 0 if all(r.healthy for r in rows) else 1


def add_commands(sub: Any) -> None:
    """Entry point (``podgate.commands``): add ``sandbox`` to the ``podgate`` parser."""
    sb = sub.add_parser("sandbox", help="a local Kubernetes control plane, node agent and HAProxy")
    sb.add_argument(
        "action",
        choices=["up", "down", "status", "env", "install", "import"],
        help="up: start (idempotent); down: stop; status: components; env: shell exports; "
        "install: build/fetch the Kubernetes binaries into the cache; "
        "import ARCHIVE: an OCI image archive into the real node's containerd",
    )
    sb.add_argument("archive", nargs="?", help="import: the OCI archive (make image: dist/podgate-image.tar)")
    sb.add_argument("--state-dir", help="where the sandbox keeps its state (default: XDG state dir)")
    sb.add_argument("--port-offset", type=int, help="added to every sandbox port (run a second sandbox)")
    sb.add_argument(
        "--pod-cidr",
        help="the node agent's pod IPs: inside 198.18.0.0/15, made local by a route `up` adds "
        "(default 198.18.0.0/16), or inside 127.0.0.0/8 (no route; Endpoints refuse loopback)",
    )
    sb.add_argument("--lb-cidr", help="loopback range for load-balancer addresses (default 127.200.0.0/16)")
    sb.add_argument(
        "--run-commands",
        action="store_true",
        help="up: run containers' explicit `command` as local processes, as root, with no isolation",
    )
    sb.add_argument(
        "--node",
        choices=["agent", "kubelet"],
        help="up: the node agent (default: fast, loopback pods) or a real node (kubelet, containerd, "
        "runc, a CNI bridge and kube-proxy; needs root); install --node agent: only what the node "
        "agent's sandbox needs (control plane and kubectl)",
    )
    sb.add_argument(
        "--node-pod-cidr",
        help="up --node kubelet: the pods' range on the sandbox's bridge (default 10.244.0.0/24)",
    )
    sb.add_argument(
        "--kubernetes",
        metavar="VERSION",
        help=f"install, up: the Kubernetes release, 1.NN (the newest 1.NN.x) or 1.NN.P, from "
        f"{OLDEST_RELEASE} to {NEWEST_RELEASE} (the default); `install` builds it from the Go module proxy",
    )
    sb.add_argument("--without-controller", action="store_true", help="up: leave the podgate controller out")
    sb.set_defaults(func=cmd_sandbox)


def main() -> None:
    """``python -m podgate_sandbox``: the sandbox command without the podgate CLI around it."""
    parser = argparse.ArgumentParser(prog="podgate")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args()
    sys.exit(args.func(args))
