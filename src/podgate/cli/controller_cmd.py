"""``podgate controller``: run the controller and webhook.

Its settings are declared once, in ``SETTINGS``: each gives a flag, a ``PODGATE_*`` variable and a
config-file key (podgate.cli.declared), read only when this command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from podgate.app.admission import no_setup
from podgate.app.build import build, build_providers, state_readings
from podgate.cli import declared
from podgate.cli.declared import (
    BOOLEAN,
    Kind,
    Setting,
    checked,
    choice,
    integer,
    path,
    pattern,
    positive,
    seconds,
    words,
)
from podgate.cli.logs import setup_logging
from podgate.controller import gctune, metrics
from podgate.controller.settings import (
    AlibabaSettings,
    AwsSettings,
    ControllerSettings,
    HAProxySettings,
    SettingsError,
)
from podgate.kube.client import ApiKube, api_client, user_agent
from podgate.model import addresses, checks, gates, policy

log = logging.getLogger("podgate")

#: what Kubernetes accepts as a namespace (a DNS label) and as most object names (a DNS subdomain)
DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
DNS_SUBDOMAIN = rf"(?=.{{1,253}}$){DNS_LABEL}(\.{DNS_LABEL})*"
PROVIDER_NAME = pattern("a provider name (lower-case letters, digits and '-')", DNS_LABEL)
REGION = pattern("a region id such as us-east-1 or cn-hangzhou", r"[a-z]{2,}(-[a-z0-9]+)+")
#: the host part of a listening address: an IPv4/IPv6 address or a host name
BIND = pattern("an IP address or host name", r"[0-9A-Za-z.:\-\[\]]+")
LB_CLASS = pattern(
    "CLASS=PROVIDER, CLASS a qualified name such as podgate.dev/haproxy",
    rf"(?=[^=]{{1,253}}=)({DNS_SUBDOMAIN}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?={DNS_LABEL}",
)
GATE_PREFIX = pattern("a condition type prefix such as example.com/", r"[A-Za-z0-9][-A-Za-z0-9_./]*")


def _haproxy_address(raw: str) -> None:
    """Where haproxy_runtime connects: a unix path (``/…`` or ``unix@…``) or ``[ipv4@]HOST:PORT``."""
    if raw.startswith("/") or (raw.startswith("unix@") and len(raw) > len("unix@")):
        return
    host, _, port = raw.removeprefix("ipv4@").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(raw)


def _webhook_url(raw: str) -> None:
    url = urlsplit(raw)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(raw)


def _drain_url(raw: str) -> None:
    if gates.drain_url_errors(raw):
        raise ValueError(raw)


def _endpoint(raw: str) -> None:
    if "://" in raw and not raw.startswith(("http://", "https://")):
        raise ValueError(raw)


HAPROXY_ADDRESS = checked("a unix socket path or HOST:PORT", _haproxy_address)


def _cloud_settings(cloud: str, label: str, provider_help: str, region_variable: str) -> list[Setting]:
    """A cloud provider's settings: its name (which enables it), region, API rate and poll period."""
    return [
        Setting(
            f"--{cloud}-provider",
            PROVIDER_NAME,
            None,
            provider_help,
            metavar="NAME",
            field=f"{cloud}.name",
        ),
        Setting(
            f"--{cloud}-region",
            REGION,
            None,
            "region of the load balancers",
            ambient_env=region_variable,
            field=f"{cloud}.region",
        ),
        Setting(
            f"--{cloud}-rate",
            positive("calls per second"),
            10.0,
            f"{label} API calls per second at most (token bucket), throttling retried with back-off",
            field=f"{cloud}.rate",
        ),
        Setting(
            f"--{cloud}-poll-period",
            seconds(0.01, 60),
            1.0,
            "seconds between health reads of a pool with pending gates (a cloud API is metered)",
            field=f"{cloud}.poll_period",
        ),
    ]


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "--kubeconfig",
        pattern("a kubeconfig file path", r".*\S.*"),
        None,
        "kubeconfig file (default: in-cluster service account)",
        ambient_env="KUBECONFIG",
    ),
    Setting(
        "--default-provider",
        PROVIDER_NAME,
        None,
        "provider for type LoadBalancer Services with neither a loadBalancerClass nor the provider "
        "annotation (default: podgate leaves them to the cluster's cloud controller)",
    ),
    Setting(
        "--haproxy-name",
        PROVIDER_NAME,
        "haproxy",
        "name of the HAProxy provider",
        field="haproxy.name",
    ),
    Setting(
        "--haproxy-runtime-socket",
        HAPROXY_ADDRESS,
        (),
        "HAProxy runtime API address; repeat for an HA pair",
        env="HAPROXY_RUNTIME_SOCKETS",
        repeated=True,
        field="haproxy.runtime_sockets",
    ),
    Setting(
        "--haproxy-master-socket",
        HAPROXY_ADDRESS,
        None,
        "master CLI socket: podgate provisions frontends/backends and reloads through it",
        field="haproxy.master_socket",
    ),
    Setting(
        "--haproxy-config",
        path("a file"),
        None,
        "configuration file podgate renders",
        field="haproxy.config_path",
    ),
    Setting(
        "--haproxy-base-config",
        path("a file"),
        None,
        "global/defaults sections the rendered configuration starts with",
        field="haproxy.base_config_path",
    ),
    Setting(
        "--cluster-name",
        pattern(
            "a name of letters, digits, '-', '_' and '.' (at most 63)",
            r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?",
        ),
        None,
        "this cluster's name: a cloud group is bound only when tagged podgate.dev/cluster=NAME and "
        "podgate.dev/service=NAMESPACE/SERVICE (required with a cloud provider)",
    ),
    *_cloud_settings(
        "aws",
        "AWS",
        "enable the AWS ELBv2 provider under this name (Services pick it with "
        "podgate.dev/load-balancer-provider and bind a target group with "
        "podgate.dev/aws-target-group-arn); credentials and AWS_ENDPOINT_URL from the "
        "standard chain",
        region_variable="AWS_REGION",
    ),
    *_cloud_settings(
        "alibaba",
        "Alibaba Cloud",
        "enable the Alibaba Cloud provider under this name (Services pick it with "
        "podgate.dev/load-balancer-provider and bind a group with "
        "podgate.dev/alibaba-nlb-server-group-id or podgate.dev/alibaba-clb-vserver-group-id); "
        "credentials from the SDK's default chain (ALIBABA_CLOUD_* variables, RRSA, profile, "
        "RAM role)",
        region_variable="ALIBABA_CLOUD_REGION_ID",
    ),
    *(
        Setting(
            f"--alibaba-{product}-endpoint",
            checked("HOST[:PORT] or http(s)://HOST[:PORT]", _endpoint),
            None,
            f"{name} API endpoint (default: the region's public endpoint)",
            metavar="URL",
            field=f"alibaba.{product}_endpoint",
        )
        for product, name in (("clb", "CLB (SLB)"), ("nlb", "NLB"), ("ecs", "ECS (ENI look-ups for CLB)"))
    ),
    Setting(
        "--lb-cidr",
        checked("an IPv4 CIDR inside 127.0.0.0/8 with at least 4 addresses", addresses.loopback_network),
        None,
        "loopback range for provisioned load-balancer addresses",
    ),
    Setting(
        "--continuous",
        BOOLEAN,
        False,
        "gates follow the load balancer back to False (default: True once set stays True)",
        flag_sets=True,
    ),
    Setting(
        "--readiness-timeout",
        Kind("a duration such as 90s, 10m or 1h30m", policy.parse_duration),
        None,
        "how long a gate may wait for the load balancer after the pod's containers are ready "
        f"(default: for ever); per Service: annotation {policy.READINESS_TIMEOUT}",
    ),
    Setting(
        "--on-timeout",
        choice(policy.OPEN, policy.CLOSED),
        policy.CLOSED,
        "the gate when --readiness-timeout passes: open (True, reason ReadinessTimedOut, a Warning) or "
        f"closed (False with that reason); per Service: annotation {policy.ON_TIMEOUT}",
    ),
    Setting(
        "--max-eviction-refusal",
        Kind("a duration such as 90s, 10m or 1h30m", policy.parse_duration),
        600.0,
        "the longest the eviction guard refuses one pod's eviction (any Service editor sets "
        f"{policy.MIN_HEALTHY_TARGETS}); then it goes through with an EvictionForced Warning Event",
    ),
    Setting("--workers", integer(1), 4, "reconcile workers"),
    Setting(
        "--poll-period",
        seconds(0.01, 5),
        0.1,
        "seconds between health reads of pools with pending gates",
    ),
    Setting("--webhook-port", integer(1, 65535), 9443, "port the admission webhook listens on"),
    Setting("--webhook-bind", BIND, "0.0.0.0", "address the admission webhook listens on"),
    Setting(
        "--admission",
        choice("thread", "process"),
        "thread",
        "answer admission reviews on a thread of the controller, or in a process of its own (its "
        "own watches of Services, ReadinessChecks and grants: the webhook's own latency lower, "
        "about 150 MiB more memory)",
    ),
    Setting(
        "--webhook-url", checked("an http(s):// URL", _webhook_url), None, "register the webhook by this URL"
    ),
    Setting(
        "--webhook-service",
        pattern("NAMESPACE/NAME", f"{DNS_LABEL}/{DNS_SUBDOMAIN}"),
        None,
        "register the webhook by the Service in front of it (in-cluster)",
    ),
    Setting(
        "--webhook-config-name",
        pattern("a Kubernetes object name", DNS_SUBDOMAIN),
        "podgate",
        "name of the MutatingWebhookConfiguration podgate registers",
    ),
    Setting(
        "--webhook-cert-dir",
        path("a directory"),
        Path("/tmp/podgate-webhook-certs"),
        "where a generated CA and serving certificate are kept",
    ),
    Setting(
        "--webhook-cert-file",
        path("a file"),
        None,
        "serving certificate (cert-manager): reloaded when it changes, no restart",
    ),
    Setting("--webhook-key-file", path("a file"), None, "serving certificate's private key"),
    Setting(
        "--no-inject",
        BOOLEAN,
        True,
        "the webhook passes every pod unchanged",
        env="INJECT",
        flag_sets=False,
        field="inject",
    ),
    Setting(
        "--adopt-gate-prefix",
        GATE_PREFIX,
        (),
        "manage gates with this prefix + <service name> as podgate's own, e.g. "
        "service.readiness.alibabacloud.com/ (switch controllers without editing manifests)",
        env="ADOPT_GATE_PREFIXES",
        repeated=True,
        field="adopt_gate_prefixes",
    ),
    Setting(
        "--remove-gate-prefix",
        GATE_PREFIX,
        (),
        "remove gates with this prefix at injection (migration from another controller)",
        env="REMOVE_GATE_PREFIXES",
        repeated=True,
        field="remove_gate_prefixes",
    ),
    Setting(
        "--prestop",
        Kind("drain, 'sleep N' (seconds) or none", gates.parse_prestop),
        None,
        "preStop hook injected into load-balanced pods without one: drain (an httpGet to podgate that "
        "returns once the load balancer has drained the pod), sleep N (the kubelet's sleep action "
        "on 1.30+, else exec sleep) or none; per pod: annotation podgate.dev/prestop (default drain)",
    ),
    Setting(
        "--prestop-delay",
        seconds(0, 3600),
        None,
        "older form of --prestop: N seconds means 'sleep N', 0 means none; per pod: annotation "
        "podgate.dev/prestop-delay",
    ),
    Setting(
        "--drain-url",
        checked("http://HOST:PORT or https://HOST:PORT (no path)", _drain_url),
        None,
        "where the kubelet reaches podgate's drain endpoint (--drain-port, plain HTTP); default: "
        "http://CLUSTER-IP:PORT of --webhook-service's port named drain",
    ),
    Setting(
        "--health-port",
        integer(1, 65535),
        8081,
        "plain-HTTP /healthz, /readyz and /metrics port",
    ),
    Setting(
        "--health-bind",
        BIND,
        "0.0.0.0",
        "address /healthz, /readyz and /metrics listen on",
    ),
    Setting(
        "--drain-port",
        integer(1, 65535),
        8082,
        "plain-HTTP port of the drain endpoint alone (the kubelets' preStop hooks: open it to the "
        "nodes only)",
    ),
    Setting("--drain-bind", BIND, "0.0.0.0", "address the drain endpoint listens on"),
    Setting(
        "--verbose",
        words({"DEBUG": True, "INFO": False}),
        False,
        "debug logging",
        env="LOG_LEVEL",
        flag_sets=True,
        short="-v",
        field=None,
    ),
    Setting(
        "--leader-elect",
        BOOLEAN,
        False,
        "run as one of several replicas: only the holder of a Lease reconciles; every replica serves "
        "the webhook",
        flag_sets=True,
    ),
    Setting(
        "--leader-election-namespace",
        pattern("a namespace name", DNS_LABEL),
        "kube-system",
        "namespace of the Lease",
        ambient_env="POD_NAMESPACE",
    ),
    Setting(
        "--leader-election-id",
        pattern("a Lease name", DNS_SUBDOMAIN),
        "podgate-controller",
        "name of the Lease",
        field="leader_election_name",
    ),
    Setting(
        "--lease-duration",
        seconds(3, 300),
        15.0,
        "seconds a leader's Lease lasts without renewal: the longest failover",
    ),
    Setting(
        "--namespace",
        pattern("a namespace name", DNS_LABEL),
        "podgate-system",
        "the controller's own namespace, where the webhook certificate Secret is kept",
        ambient_env="POD_NAMESPACE",
    ),
    Setting(
        "--webhook-cert-secret",
        pattern("a Secret name", DNS_SUBDOMAIN),
        "podgate-webhook-certs",
        "Secret holding the webhook's generated CA and serving certificate, shared by every "
        "replica (created by the first; not used with --webhook-cert-file)",
    ),
    Setting(
        "--webhook-cert-validity",
        seconds(10, 10 * 365 * 86400),
        365 * 86400.0,
        "seconds a generated serving certificate is valid",
    ),
    Setting(
        "--webhook-ca-validity",
        seconds(10, 100 * 365 * 86400),
        10 * 365 * 86400.0,
        "seconds a generated CA is valid",
    ),
    Setting(
        "--webhook-cert-renew-at",
        seconds(0.1, 0.95, "a fraction of the lifetime from 0.1 to 0.95"),
        0.67,
        "a generated certificate (or CA) is replaced once this fraction of its lifetime has passed",
    ),
    Setting(
        "--webhook-cert-check-period",
        seconds(0.1, 3600),
        10.0,
        "seconds between looks at the certificate (Secret or files) by each replica; a CA is "
        "retired 6 periods after every replica serves its successor",
    ),
    Setting(
        "--log-format",
        choice("text", "json"),
        "text",
        "human-readable lines, or one JSON object per line",
        field=None,
    ),
    Setting(
        "--load-balancer-class",
        LB_CLASS,
        (),
        "CLASS=PROVIDER: serve type LoadBalancer Services of this spec.loadBalancerClass with this "
        "provider; repeat for several (default: podgate.dev/<provider> for each provider)",
        env="LOAD_BALANCER_CLASSES",
        repeated=True,
        field="load_balancer_classes",
    ),
    Setting(
        "--haproxy-ha-policy",
        choice("all", "reachable"),
        "all",
        "with several runtime sockets (an HA pair) and one unreachable: 'all' keeps pending gates "
        "False with a reason naming it; 'reachable' decides on the reachable ones",
        field="haproxy.ha_policy",
    ),
    Setting(
        "--prometheus-allow",
        checked(
            "http(s)://HOST[:PORT][/PATH] or HOST:PORT, never a link-local or metadata address",
            checks.parse_allowed,
        ),
        (),
        "a Prometheus server ReadinessChecks may query (spec.prometheus.url within it); repeat for "
        "several; none by default: a check naming any other URL gets URLNotAllowed and no request",
        env="PROMETHEUS_ALLOW",
        repeated=True,
        field="prometheus_allow",
    ),
    Setting(
        "--migration-labels",
        BOOLEAN,
        False,
        "inject gates also in namespaces labelled k8s.alibabacloud.com/pod-readiness-gate-inject=enabled "
        "or elbv2.k8s.aws/pod-readiness-gate-inject=enabled (switch controllers without relabelling)",
        flag_sets=True,
    ),
)
"""Every setting of ``podgate controller``, declared once (see podgate.cli.declared)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    declared.add_arguments(p, SETTINGS)


def settings_from(values: declared.Values) -> ControllerSettings:
    """The controller's settings from resolved values, each put where its ``Setting.field`` says;
    a provider group exists once its enabling setting is given (HAProxy: a runtime socket, a cloud:
    its provider name).  Checked as a whole before it is returned."""
    fields: dict[str, dict[str, Any]] = {"": {}, "haproxy": {}, "aws": {}, "alibaba": {}}
    for s in SETTINGS:
        if s.target is not None:
            group, _, name = s.target.rpartition(".")
            fields[group][name] = values[s.dest]
    haproxy, aws, alibaba = fields["haproxy"], fields["aws"], fields["alibaba"]
    settings = ControllerSettings(
        haproxy=(HAProxySettings(**haproxy),) if haproxy["runtime_sockets"] else (),
        aws=(AwsSettings(**aws),) if aws["name"] else (),
        alibaba=(AlibabaSettings(**alibaba),) if alibaba["name"] else (),
        identity=f"{socket.gethostname()}-{os.getpid()}",
        **fields[""],
    )
    try:
        settings.validate()
    except SettingsError as e:
        raise SettingsError(_with_variables(str(e))) from None
    return settings


def _with_variables(message: str) -> str:
    """A message about settings that do not fit together names their flags; the user may have
    given them as variables, so name those too."""
    by_flag = {s.flag: s for s in SETTINGS}
    flags = dict.fromkeys(re.findall(r"--[a-z0-9-]+", message))
    variables = [by_flag[f].env_name for f in flags if f in by_flag]
    return f"{message} [{', '.join(variables)}]" if variables else message


def controller_settings(argv: Sequence[str], environ: Mapping[str, str]) -> ControllerSettings:
    """What ``podgate controller ARGV...`` would run with in ``environ``: for tests and for checking
    a deployment's arguments and environment without starting anything."""
    parser = argparse.ArgumentParser(prog="podgate controller")
    add_arguments(parser)
    return settings_from(declared.resolve(SETTINGS, parser.parse_args(argv), environ))


#: seconds a thread holding the interpreter lock may keep it while another waits (Python's
#: default is 5 ms): the webhook's thread needs it a few dozen times per review, and at 5 ms a
#: wait while the reconcile loop computes, a burst of reviews queued for over a second
SWITCH_INTERVAL = 0.001


async def run(settings: ControllerSettings, child_setup: Callable[[], None] = no_setup) -> None:
    """The controller process until SIGTERM or SIGINT (then every part stops in order), or until
    a part fails (then the process exits and its replacement starts clean)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    gctune.tune()
    api = await api_client(settings.kubeconfig)
    # the replica's identity (its Lease holder name) in every request: an audit log then says
    # which replica wrote what; the field manager (the part before "/") stays "podgate"
    api.user_agent = user_agent(settings.identity)
    try:
        kube = ApiKube(api)
        app = build(settings, kube, build_providers(settings, kube=kube), child_setup=child_setup)
        metrics.REGISTRY.register(metrics.StateCollector(state_readings(app)))
        assert app.supervisor is not None
        main = asyncio.create_task(app.supervisor.run(), name="supervisor")
        loop = asyncio.get_running_loop()

        def stop(sig: signal.Signals) -> None:
            log.info("%s: stopping", sig.name)
            main.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop, sig)
        try:
            await main
        except asyncio.CancelledError:
            log.info("controller stopped")
        finally:
            await app.close()
    finally:
        await api.close()


def cmd_controller(args: argparse.Namespace) -> int:
    try:
        values = declared.resolve(SETTINGS, args, os.environ)
        settings = settings_from(values)
    except SettingsError as e:
        print(f"podgate controller: invalid configuration: {e}", file=sys.stderr)
        return 2
    setup_logging(values["verbose"], values["log_format"])
    try:
        # the admission process logs as this one does
        asyncio.run(run(settings, functools.partial(setup_logging, values["verbose"], values["log_format"])))
    except SettingsError as e:  # found while building the providers (e.g. two rates, one account)
        print(f"podgate controller: invalid configuration: {e}", file=sys.stderr)
        return 2
    return 0
