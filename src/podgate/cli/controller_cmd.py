"""``podgate controller``: run the controller and webhook (flags, with environment fallbacks)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from aiohttp import web

from podgate.controller.manager import Controller, serve
from podgate.controller.settings import ControllerSettings, HAProxySettings, SettingsError
from podgate.kube.client import api_client


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"PODGATE_{name}", default)


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
        "--remove-gate-prefix",
        action="append",
        default=[],
        help="remove gates with this prefix at injection (migration from another controller)",
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
    settings = ControllerSettings(
        kubeconfig=args.kubeconfig,
        default_provider=args.default_provider,
        haproxy=haproxy,
        lb_cidr=args.lb_cidr,
        continuous=args.continuous,
        workers=args.workers,
        poll_period=args.poll_period,
        webhook_port=args.webhook_port,
        webhook_bind=args.webhook_bind,
        webhook_url=args.webhook_url,
        webhook_service=args.webhook_service,
        webhook_cert_dir=Path(args.webhook_cert_dir) if args.webhook_cert_dir else None,
        webhook_cert_file=Path(args.webhook_cert_file) if args.webhook_cert_file else None,
        webhook_key_file=Path(args.webhook_key_file) if args.webhook_key_file else None,
        inject=not args.no_inject,
        remove_gate_prefixes=tuple(args.remove_gate_prefix),
        prestop_delay=args.prestop_delay,
    )
    settings.validate()
    return settings


async def _health(controller: Controller, bind: str, port: int) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ok = controller.ready.is_set()
        return web.Response(status=200 if ok else 503, text="ready\n" if ok else "caches not synced\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, bind, port).start()
    return runner


async def run(settings: ControllerSettings, health_bind: str, health_port: int) -> None:
    api = await api_client(settings.kubeconfig)
    controller = Controller(settings, api)
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
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = settings_from(args)
    except SettingsError as e:
        print(f"podgate controller: invalid configuration: {e}")
        return 2
    asyncio.run(run(settings, args.health_bind, args.health_port))
    return 0
