"""``podgate status`` and ``podgate gate set``: why a pod is 0/1, and setting a gate by hand."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import yaml

from podgate.kube.api import PODS, SERVICES, Kube, NotFound, PatchType, list_all
from podgate.kube.client import ApiKube, api_client
from podgate.kube.events import now_rfc3339
from podgate.model import conditions as c
from podgate.model import gates, lb, report
from podgate.model.types import Condition, Pod, meta_of, pod_conditions, pod_spec


class CommandError(Exception):
    """A user error: printed as ``podgate: message`` with exit status 2."""


def _namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return str(args.namespace)
    try:
        cfg = yaml.safe_load(Path(args.kubeconfig).read_text()) if args.kubeconfig else None
    except OSError:
        cfg = None
    if cfg:
        current = next(
            (x for x in cfg.get("contexts") or () if x.get("name") == cfg.get("current-context")), None
        )
        ns = ((current or {}).get("context") or {}).get("namespace")
        if ns:
            return str(ns)
    return "default"


async def _read_pod(kube: Kube, namespace: str, name: str) -> Pod:
    try:
        return cast(Pod, await kube.get(PODS, name, namespace))
    except NotFound:
        raise CommandError(f"pod {namespace}/{name} not found") from None


async def _status(args: argparse.Namespace) -> list[dict[str, Any]]:
    serving = serving_of(args)
    api = await api_client(args.kubeconfig)
    try:
        kube = ApiKube(api)
        namespace = None if args.all_namespaces and not args.pod else _namespace(args)
        if args.pod:
            pods = [await _read_pod(kube, _namespace(args), args.pod)]
        else:
            pods = [cast(Pod, p) for p in (await list_all(kube, PODS, namespace))["items"]]
        services = (await list_all(kube, SERVICES, namespace))["items"]
    finally:
        await api.close()
    now = datetime.now(UTC)
    return [row for pod in pods for row in report.explain(pod, services, now, serving)]


def serving_of(args: argparse.Namespace) -> report.Serving:
    """What the controller serves, from the flags that mirror its own."""
    classes = None
    if args.load_balancer_class:
        classes = {}
        for pair in args.load_balancer_class:
            cls, eq, provider = pair.partition("=")
            if not (cls and eq and provider):
                raise CommandError(f"--load-balancer-class {pair!r}: give CLASS=PROVIDER")
            classes[cls] = provider
    return report.Serving(args.default_provider, classes, tuple(args.adopt_gate_prefix or ()))


def cmd_status(args: argparse.Namespace) -> int:
    rows = asyncio.run(_status(args))
    if args.output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if args.output == "yaml":
        print(yaml.safe_dump(rows, sort_keys=False), end="")
        return 0
    if not rows:
        print("nothing holds " + ("this pod" if args.pod else "any pod here") + ": no gates, all Ready")
        return 0
    cols = (["NAMESPACE"] if args.all_namespaces else []) + [
        "POD",
        "GATE",
        "STATUS",
        "REASON",
        "PENDING",
        "MESSAGE",
    ]
    table = [
        [
            *([r["namespace"]] if args.all_namespaces else []),
            r["pod"],
            r["gate"],
            r["status"],
            r["reason"],
            report.duration(r["pending_seconds"]),
            r["message"],
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *table, strict=False)]
    for line in [cols, *table]:
        cells = [str(x).ljust(w) for x, w in zip(line[:-1], widths[:-1], strict=False)]
        print("   ".join([*cells, str(line[-1])]))
    return 0


async def _gate_set(args: argparse.Namespace) -> str:
    errors = gates.condition_type_errors(args.condition_type)
    if errors:
        raise CommandError(f"{args.condition_type!r} is not a valid condition type: {'; '.join(errors)}")
    if args.status not in (c.TRUE, c.FALSE):
        raise CommandError(
            f"status must be True or False (capitalised, as the kubelet reads it), not {args.status!r}"
        )
    ns = _namespace(args)
    api = await api_client(args.kubeconfig)
    try:
        kube = ApiKube(api)
        pod = await _read_pod(kube, ns, args.pod)
        wanted = c.readiness_gates(pod_spec(pod))
        if args.condition_type not in wanted and not args.force:
            have = ", ".join(wanted) or "none"
            raise CommandError(
                f"pod {ns}/{args.pod} has no readiness gate {args.condition_type} (its gates: {have}); "
                "--force sets the condition anyway"
            )
        desired: Condition = {
            "type": args.condition_type,
            "status": args.status,
            "reason": args.reason or ("SetByHand" if args.status == c.TRUE else "SetFalseByHand"),
            "message": args.message or "set with podgate gate set",
        }
        current = c.find(pod_conditions(pod), args.condition_type)
        write = lb.next_condition(
            current,
            desired,
            sticky=False,
            now=now_rfc3339(),
            words=True,
            generation=meta_of(pod).get("generation"),
        )
        if write is None:
            return f"pod/{args.pod} {args.condition_type} is already {args.status}: unchanged"
        patch: Pod = {"metadata": {"uid": meta_of(pod)["uid"]}, "status": {"conditions": [write]}}
        await kube.patch(PODS, args.pod, patch, ns, patch_type=PatchType.STRATEGIC, subresource="status")
        return f"pod/{args.pod} {args.condition_type}={args.status} (reason {write['reason']})"
    finally:
        await api.close()


def cmd_gate_set(args: argparse.Namespace) -> int:
    print(asyncio.run(_gate_set(args)))
    return 0


def add_commands(sub: Any, kubeconfig_default: str | None) -> None:
    st = sub.add_parser(
        "status",
        help="why pods are not Ready: each readiness gate (status, reason, how long pending, the load "
        "balancer's words), containers and probes not ready, load-balanced Services a pod has no gate for",
    )
    st.add_argument("pod", nargs="?", help="one pod (default: every pod of the namespace)")
    st.add_argument("-n", "--namespace")
    st.add_argument("-A", "--all-namespaces", action="store_true")
    st.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    st.add_argument("--kubeconfig", default=kubeconfig_default)
    # which Services are podgate's: the controller's own settings, given the same way (podgate
    # cannot read them from the cluster); without them, only Services with podgate's annotation
    # or a podgate.dev/ class are counted, never another controller's
    st.add_argument(
        "--default-provider",
        metavar="NAME",
        help="the controller's --default-provider: class-less type LoadBalancer Services are podgate's",
    )
    st.add_argument(
        "--load-balancer-class",
        action="append",
        metavar="CLASS=PROVIDER",
        help="the controller's --load-balancer-class (repeatable; default podgate.dev/<provider>)",
    )
    st.add_argument(
        "--adopt-gate-prefix",
        action="append",
        metavar="PREFIX",
        help="the controller's --adopt-gate-prefix: a vendor gate with it counts as the Service's gate",
    )
    st.set_defaults(func=cmd_status)
    gate = sub.add_parser("gate", help="set a readiness gate condition by hand")
    gsub = gate.add_subparsers(dest="gate_command", required=True)
    gs = gsub.add_parser("set", help="strategic-merge patch of pods/status with only this condition")
    gs.add_argument("pod")
    gs.add_argument("condition_type", metavar="CONDITION_TYPE")
    gs.add_argument("status", metavar="True|False")
    gs.add_argument("--reason")
    gs.add_argument("--message")
    gs.add_argument("-n", "--namespace")
    gs.add_argument("--force", action="store_true", help="set it even if the pod has no such gate")
    gs.add_argument("--kubeconfig", default=kubeconfig_default)
    gs.set_defaults(func=cmd_gate_set)
