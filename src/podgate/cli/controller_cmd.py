"""``podgate controller``: run the controller and webhook (flags, with environment fallbacks)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

import yaml
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from podgate.controller import metrics
from podgate.controller.manager import Controller, serve
from podgate.controller.settings import (
    AlibabaSettings,
    AwsSettings,
    ControllerSettings,
    HAProxySettings,
    SettingsError,
)
from podgate.kube.client import api_client


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"PODGATE_{name}", default)


def add_cloud_arguments(
    p: argparse.ArgumentParser, cloud: str, label: str, provider_help: str, region_variable: str
) -> None:
    """A cloud provider's flags: its name, region, API rate and poll period (each with its
    PODGATE_* variable; the region also from the cloud's own variable)."""
    var = cloud.upper()
    p.add_argument(
        f"--{cloud}-provider",
        default=env(f"{var}_PROVIDER"),
        metavar="NAME",
        help=f"{provider_help} [PODGATE_{var}_PROVIDER]",
    )
    p.add_argument(
        f"--{cloud}-region",
        default=env(f"{var}_REGION", os.environ.get(region_variable)),
        help=f"region of the load balancers [PODGATE_{var}_REGION, {region_variable}]",
    )
    p.add_argument(
        f"--{cloud}-rate",
        type=float,
        default=float(env(f"{var}_RATE", "10") or 10),
        help=f"{label} API calls per second at most (token bucket), throttling retried with back-off",
    )
    p.add_argument(
        f"--{cloud}-poll-period",
        type=float,
        default=float(env(f"{var}_POLL_PERIOD", "1") or 1),
        help="seconds between health reads of a pool with pending gates (a cloud API is metered)",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kubeconfig",
        default=env("KUBECONFIG", os.environ.get("KUBECONFIG")),
        help="kubeconfig file (default: in-cluster service account) [PODGATE_KUBECONFIG]",
    )
    p.add_argument(
        "--default-provider",
        default=env("DEFAULT_PROVIDER", "haproxy"),
        help="provider for type LoadBalancer Services without the provider annotation",
    )
    p.add_argument(
        "--haproxy-name", default=env("HAPROXY_NAME", "haproxy"), help="name of the HAProxy provider"
    )
    p.add_argument(
        "--haproxy-runtime-socket",
        action="append",
        default=None,
        help="HAProxy runtime API address (unix path or host:port); repeat for an HA pair "
        "[PODGATE_HAPROXY_RUNTIME_SOCKETS, comma-separated]",
    )
    p.add_argument(
        "--haproxy-master-socket",
        default=env("HAPROXY_MASTER_SOCKET"),
        help="master CLI socket: podgate provisions frontends/backends and reloads through it",
    )
    p.add_argument(
        "--haproxy-config", default=env("HAPROXY_CONFIG"), help="configuration file podgate renders"
    )
    p.add_argument(
        "--haproxy-base-config",
        default=env("HAPROXY_BASE_CONFIG"),
        help="global/defaults sections the rendered configuration starts with",
    )
    add_cloud_arguments(
        p,
        "aws",
        "AWS",
        "enable the AWS ELBv2 provider under this name (Services pick it with "
        "podgate.dev/load-balancer-provider and bind a target group with "
        "podgate.dev/aws-target-group-arn); credentials and AWS_ENDPOINT_URL from the "
        "standard chain",
        region_variable="AWS_REGION",
    )
    add_cloud_arguments(
        p,
        "alibaba",
        "Alibaba Cloud",
        "enable the Alibaba Cloud provider under this name (Services pick it with "
        "podgate.dev/load-balancer-provider and bind a group with "
        "podgate.dev/alibaba-nlb-server-group-id or podgate.dev/alibaba-clb-vserver-group-id); "
        "credentials from the SDK's default chain (ALIBABA_CLOUD_* variables, RRSA, profile, "
        "RAM role)",
        region_variable="ALIBABA_CLOUD_REGION_ID",
    )
    for product, name in (("clb", "CLB (SLB)"), ("nlb", "NLB"), ("ecs", "ECS (ENI look-ups for CLB)")):
        p.add_argument(
            f"--alibaba-{product}-endpoint",
            default=env(f"ALIBABA_{product.upper()}_ENDPOINT"),
            metavar="URL",
            help=f"{name} API endpoint, HOST[:PORT] or http(s)://HOST[:PORT] (default: the "
            f"region's public endpoint) [PODGATE_ALIBABA_{product.upper()}_ENDPOINT]",
        )
    p.add_argument(
        "--lb-cidr", default=env("LB_CIDR"), help="loopback range for provisioned load-balancer addresses"
    )
    p.add_argument(
        "--continuous",
        action="store_true",
        default=env("CONTINUOUS") == "true",
        help="gates follow the load balancer back to False (default: True once set stays True)",
    )
    p.add_argument("--workers", type=int, default=int(env("WORKERS", "4") or 4))
    p.add_argument(
        "--poll-period",
        type=float,
        default=float(env("POLL_PERIOD", "0.1") or 0.1),
        help="seconds between health reads of pools with pending gates",
    )
    p.add_argument("--webhook-port", type=int, default=int(env("WEBHOOK_PORT", "9443") or 9443))
    p.add_argument("--webhook-bind", default=env("WEBHOOK_BIND", "0.0.0.0"))
    p.add_argument("--webhook-url", default=env("WEBHOOK_URL"), help="register the webhook by this URL")
    p.add_argument(
        "--webhook-service",
        default=env("WEBHOOK_SERVICE"),
        help="register the webhook by Service NAMESPACE/NAME (in-cluster)",
    )
    p.add_argument(
        "--webhook-config-name",
        default=env("WEBHOOK_CONFIG_NAME", "podgate"),
        help="name of the MutatingWebhookConfiguration podgate registers",
    )
    p.add_argument(
        "--webhook-cert-dir",
        default=env("WEBHOOK_CERT_DIR", "/tmp/podgate-webhook-certs"),
        help="where a generated CA and serving certificate are kept",
    )
    p.add_argument(
        "--webhook-cert-file", default=env("WEBHOOK_CERT_FILE"), help="serving certificate (cert-manager)"
    )
    p.add_argument("--webhook-key-file", default=env("WEBHOOK_KEY_FILE"))
    p.add_argument(
        "--no-inject",
        action="store_true",
        default=env("INJECT") == "false",
        help="the webhook passes every pod unchanged",
    )
    p.add_argument(
        "--adopt-gate-prefix",
        action="append",
        default=[x for x in (env("ADOPT_GATE_PREFIXES") or "").split(",") if x],
        help="manage gates with this prefix + <service name> as podgate's own, e.g. "
        "service.readiness.alibabacloud.com/ (switch controllers without editing manifests) "
        "[PODGATE_ADOPT_GATE_PREFIXES, comma-separated]",
    )
    p.add_argument(
        "--remove-gate-prefix",
        action="append",
        default=[x for x in (env("REMOVE_GATE_PREFIXES") or "").split(",") if x],
        help="remove gates with this prefix at injection (migration from another controller) "
        "[PODGATE_REMOVE_GATE_PREFIXES, comma-separated]",
    )
    p.add_argument(
        "--prestop-delay",
        type=float,
        default=float(env("PRESTOP_DELAY", "0") or 0),
        help="seconds of preStop sleep injected into load-balanced pods without a preStop hook, so the load "
        "balancer drains them before SIGTERM; per pod: annotation podgate.dev/prestop-delay "
        "(default 0: none)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=int(env("HEALTH_PORT", "8081") or 8081),
        help="plain-HTTP /healthz and /readyz",
    )
    p.add_argument("--health-bind", default=env("HEALTH_BIND", "0.0.0.0"))
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=env("LOG_LEVEL") == "DEBUG",
        help="debug logging [PODGATE_LOG_LEVEL=DEBUG]",
    )
    p.add_argument(
        "--leader-elect",
        action="store_true",
        default=env("LEADER_ELECT") == "true",
        help="run as one of several replicas: only the holder of a Lease reconciles; every "
        "replica serves the webhook [PODGATE_LEADER_ELECT=true]",
    )
    p.add_argument(
        "--leader-election-namespace",
        default=env("LEADER_ELECTION_NAMESPACE", os.environ.get("POD_NAMESPACE", "kube-system")),
    )
    p.add_argument(
        "--leader-election-id",
        default=env("LEADER_ELECTION_ID", "podgate-controller"),
        help="name of the Lease",
    )
    p.add_argument(
        "--lease-duration",
        type=float,
        default=float(env("LEASE_DURATION", "15") or 15),
        help="seconds a leader's Lease lasts without renewal: the longest failover",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=env("LOG_FORMAT", "text"),
        help="human-readable lines, or one JSON object per line [PODGATE_LOG_FORMAT]",
    )
    p.add_argument(
        "--config",
        default=env("CONFIG"),
        help="YAML file of settings named like the flags (e.g. lb-cidr: 127.200.0.0/16); "
        "flags win over it, it wins over PODGATE_* variables [PODGATE_CONFIG]",
    )


def apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Load ``--config`` (if any) as the parser's defaults, so flags still override it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=env("CONFIG"))
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return
    try:
        data = yaml.safe_load(Path(known.config).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SettingsError(f"--config {known.config}: {e}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"--config {known.config}: expected a mapping of setting: value")
    dests = {a.dest: a for a in parser._actions}
    defaults = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in dests or dest in ("help", "config"):
            raise SettingsError(f"--config {known.config}: unknown setting {key!r}")
        action = dests[dest]
        if isinstance(action, argparse._AppendAction) and not isinstance(value, list):
            value = [value]
        if callable(action.type) and not isinstance(value, list):
            try:
                value = action.type(value)
            except (TypeError, ValueError):
                raise SettingsError(
                    f"--config {known.config}: setting {key!r}: invalid value {value!r}"
                ) from None
        defaults[dest] = value
    parser.set_defaults(**defaults)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(verbose: bool, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    # The API client's own debug output may carry request details: never below INFO.
    for noisy in ("kubernetes_asyncio", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.INFO)


def settings_from(args: argparse.Namespace) -> ControllerSettings:
    sockets = args.haproxy_runtime_socket or [
        s for s in (env("HAPROXY_RUNTIME_SOCKETS") or "").split(",") if s
    ]
    haproxy = (
        (
            HAProxySettings(
                name=args.haproxy_name,
                runtime_sockets=tuple(sockets),
                master_socket=args.haproxy_master_socket,
                config_path=Path(args.haproxy_config) if args.haproxy_config else None,
                base_config_path=Path(args.haproxy_base_config) if args.haproxy_base_config else None,
            ),
        )
        if sockets
        else ()
    )
    aws = (
        (AwsSettings(args.aws_provider, args.aws_region, args.aws_rate, args.aws_poll_period),)
        if args.aws_provider
        else ()
    )
    alibaba = (
        (
            AlibabaSettings(
                args.alibaba_provider,
                args.alibaba_region,
                args.alibaba_rate,
                args.alibaba_poll_period,
                clb_endpoint=args.alibaba_clb_endpoint,
                nlb_endpoint=args.alibaba_nlb_endpoint,
                ecs_endpoint=args.alibaba_ecs_endpoint,
            ),
        )
        if args.alibaba_provider
        else ()
    )
    settings = ControllerSettings(
        kubeconfig=args.kubeconfig,
        default_provider=args.default_provider,
        haproxy=haproxy,
        aws=aws,
        alibaba=alibaba,
        lb_cidr=args.lb_cidr,
        continuous=args.continuous,
        workers=args.workers,
        poll_period=args.poll_period,
        webhook_port=args.webhook_port,
        webhook_bind=args.webhook_bind,
        webhook_url=args.webhook_url,
        webhook_service=args.webhook_service,
        webhook_config_name=args.webhook_config_name,
        webhook_cert_dir=Path(args.webhook_cert_dir) if args.webhook_cert_dir else None,
        webhook_cert_file=Path(args.webhook_cert_file) if args.webhook_cert_file else None,
        webhook_key_file=Path(args.webhook_key_file) if args.webhook_key_file else None,
        inject=not args.no_inject,
        remove_gate_prefixes=tuple(args.remove_gate_prefix),
        adopt_gate_prefixes=tuple(args.adopt_gate_prefix),
        prestop_delay=args.prestop_delay,
        leader_elect=args.leader_elect,
        leader_election_namespace=args.leader_election_namespace,
        leader_election_name=args.leader_election_id,
        identity=f"{socket.gethostname()}-{os.getpid()}",
        lease_duration=args.lease_duration,
    )
    settings.validate()
    return settings


async def _health(controller: Controller, bind: str, port: int) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        problems = [
            f"informer {i.name} not synced"
            for i in (controller.pods, controller.services, controller.namespaces)
            if not i.synced.is_set()
        ]
        problems += [f"load balancer {n} unreachable" for n, ok in controller.provider_ok.items() if not ok]
        if not controller.ready.is_set():
            problems.append("controller starting")
        if problems:
            return web.Response(status=503, text="\n".join(problems) + "\n")
        return web.Response(text="ready\n")

    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, bind, port).start()
    return runner


async def run(settings: ControllerSettings, health_bind: str, health_port: int) -> None:
    api = await api_client(settings.kubeconfig)
    controller = Controller(settings, api)
    metrics.watch(controller)
    main = asyncio.create_task(controller.run(), name="controller")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    runners = [await _health(controller, health_bind, health_port)]
    try:
        await asyncio.wait(
            [main, asyncio.create_task(controller.ready.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if not main.done():
            runners += await serve(settings, controller)
        await main
    except asyncio.CancelledError:
        logging.getLogger("podgate").info("controller stopping")
    finally:
        for r in runners:
            await r.cleanup()
        await api.close()


def cmd_controller(args: argparse.Namespace) -> int:
    setup_logging(args.verbose, args.log_format)
    try:
        settings = settings_from(args)
    except SettingsError as e:
        print(f"podgate controller: invalid configuration: {e}", file=sys.stderr)
        return 2
    asyncio.run(run(settings, args.health_bind, args.health_port))
    return 0
