"""The sandbox: a real Kubernetes control plane and a load balancer on one machine.

etcd, kube-apiserver (RBAC on) and kube-controller-manager (every controller but node
lifecycle) from the cached binaries, HAProxy in master-worker mode with its runtime and master
sockets, and a node: podgate's node agent standing in for the kubelet (``--node agent``, the
default), or a real one (``--node kubelet``: containerd, the kubelet, kube-proxy and a binder,
see :mod:`podgate_sandbox.node`).  All state lives in one directory; ``up`` is idempotent (it
starts only what is not running) and ``down`` stops what it started, by PID.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from podgate.kube import pki
from podgate.model.addresses import AddressPoolError, loopback_network
from podgate.webhook import eviction
from podgate.webhook import server as webhook
from podgate_sandbox import podnet, processes
from podgate_sandbox.binaries import ALL_BINARIES, NODE_BINARIES, KubeBinaries, Progress
from podgate_sandbox.gobuild import NEWEST_RELEASE, binaries_for
from podgate_sandbox.node import images as node_images
from podgate_sandbox.node import render as node_render
from podgate_sandbox.node.certs import KUBELET_CLIENT, ensure_kubelet_client_cert
from podgate_sandbox.node.host import HostError, NodeHost

HOST = "127.0.0.1"
NODE_MODES = ("agent", "kubelet")
#: the controller's own namespace, as deploy/base's (created by rbac.yaml)
#: this sandbox's name as cloud groups' ownership tags give it (``podgate.dev/cluster``)
CLUSTER_NAME = "sandbox"
CONTROLLER_NAMESPACE = "podgate-system"
#: HAProxy's ring of server state changes (notice and above: no traffic is logged), 32 MiB:
#: about 150,000 events, enough for two passes of 5,000 pods (``bench/scale.py``)
EVENTS_RING = "podgate-events"

#: the sandbox's webhook configurations (by the front door's URL), beside a deploy/ install's "podgate"
WEBHOOK_CONFIG = "podgate-sandbox"

#: the loadBalancerClasses the sandbox's HAProxy serves besides podgate's own
#: (``podgate.dev/<provider>``): Alibaba Cloud's, so Services written for its controller run as
#: written, as its class-less (CLB) Services already do through ``--default-provider``.
#: ``alibabacloud.com/nlb`` is the class its NLB Services must name; ``alibabacloud.com/clb`` is
#: the value Alibaba's own charts give for a CLB (its controller's default when no class is set).
#: Other controllers' classes (AWS's ``service.k8s.aws/nlb``, ...) are left alone.
SANDBOX_CLASSES = ("alibabacloud.com/nlb", "alibabacloud.com/clb")
#: the flags that add a provider, whose ``podgate.dev/<name>`` class stays served
PROVIDER_FLAGS = ("--aws-provider", "--alibaba-provider")

#: With a real node, HAProxy's runtime API also listens on the bridge's address, this port, for
#: podgate running in pods (deploy/overlays/sandbox); one real node per machine, so it is fixed.
NODE_RUNTIME_PORT = 9999
#: ... and the backend those pods attach Services to (podgate.dev/haproxy-backend)
DEPLOYED_BACKEND = "podgate-deployed"


def _class_flags(extra: tuple[str, ...]) -> list[str]:
    """``--load-balancer-class`` pairs for the sandbox's controller: the list replaces the
    default ``podgate.dev/<provider>`` one, so it names podgate's own class for HAProxy and for
    each provider a test adds in ``extra`` (``--alibaba-provider alibaba``), then Alibaba's."""
    providers = ["haproxy"]
    for i, arg in enumerate(extra):
        flag, eq, value = arg.partition("=")
        name = value if eq else (extra[i + 1] if i + 1 < len(extra) else "")
        if flag in PROVIDER_FLAGS and name:
            providers.append(name)
    pairs = [f"podgate.dev/{name}={name}" for name in providers]
    pairs += [f"{cls}=haproxy" for cls in SANDBOX_CLASSES]
    return [a for pair in pairs for a in ("--load-balancer-class", pair)]


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "podgate" / "sandbox"


#: what the sandbox's API server audits: the writes of podgate's sandbox controller (user
#: ``podgate-controller``) to pods' status and to Leases, with their bodies; nothing else
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Request
  users: [podgate-controller]
  verbs: [create, update, patch]
  resources:
  - group: ""
    resources: [pods/status]
  - group: coordination.k8s.io
    resources: [leases]
- level: None
"""

#: the release of a state directory whose sandbox.json names none (sandboxes before session 8)
LEGACY_RELEASE = "1.20.2"


class SandboxError(RuntimeError):
    """Something the user has to act on; the message says what."""


def kube_minor(version: str) -> tuple[int, int]:
    """``1.37.2`` → (1, 37): patch releases of one minor share a cluster's etcd."""
    major, minor = version.strip().lstrip("v").split(".")[:2]
    return int(major), int(minor)


@dataclass(frozen=True)
class SandboxConfig:
    """Addresses and names of one sandbox; persisted in its state directory on first ``up``."""

    port_offset: int = 0
    node_name: str = "podgate-node"
    #: the node agent's pods (:mod:`podgate_sandbox.podnet`: local by a route ``up`` adds)
    pod_cidr: str = "198.18.0.0/16"
    lb_cidr: str = "127.200.0.0/16"
    service_cidr: str = "10.96.0.0/16"
    #: the node agent runs containers' explicit commands as local processes (no isolation)
    run_commands: bool = False
    #: "agent": the node agent (fast, loopback pods); "kubelet": a real node
    node: str = "agent"
    #: the real node's pod range, on a bridge the sandbox creates (its first address is the node's)
    node_pod_cidr: str = "10.244.0.0/24"
    #: the cloud-like data plane between the controllers and HAProxy (:mod:`podgate_sandbox.dataplane`:
    #: Services may ask it for a load balancer's delays); off, the controllers talk to HAProxy's
    #: runtime API directly, as podgate does beside a user's HAProxy (``bench/scale.py``: a Python
    #: hop for each of tens of thousands of commands is the sandbox's cost, not podgate's)
    data_plane: bool = True
    #: the Kubernetes release (built from Go modules): exact as ``up --kubernetes`` saves it, or a
    #: minor (the newest cached patch of it)
    kubernetes: str = NEWEST_RELEASE

    def port(self, base: int) -> int:
        return base + self.port_offset

    @property
    def etcd_port(self) -> int:
        return self.port(2379)

    @property
    def apiserver_port(self) -> int:
        return self.port(6443)

    @property
    def haproxy_health_port(self) -> int:
        return self.port(8404)

    @property
    def agent_healthz_port(self) -> int:
        return self.port(10248)

    def validate(self) -> None:
        try:
            pods, lbs = podnet.pod_network(self.pod_cidr), loopback_network(self.lb_cidr)
        except AddressPoolError as e:
            raise SandboxError(str(e)) from e
        if pods.overlaps(lbs):
            raise SandboxError(f"pod CIDR {self.pod_cidr} overlaps load-balancer CIDR {self.lb_cidr}")
        if not 0 <= self.port_offset <= 50000:
            raise SandboxError(f"port offset {self.port_offset} is out of range 0..50000")
        if self.node not in NODE_MODES:
            raise SandboxError(f"unknown node mode {self.node!r}: one of {', '.join(NODE_MODES)}")
        try:
            node_render.validate_pod_cidr(self.node_pod_cidr, self.service_cidr)
        except ValueError as e:
            raise SandboxError(str(e)) from e


@dataclass
class Component:
    name: str
    marker: str
    argv: list[str]
    health: Callable[[], bool]
    env: dict[str, str] | None = None
    needs: list[str] = field(default_factory=list)
    before_start: Callable[[], object] | None = None
    ports: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    running: bool
    healthy: bool
    log: str


def _get(
    url: str, token: str | None = None, timeout: float = 2.0, insecure: bool = False
) -> tuple[int, bytes]:
    ctx = ssl.create_default_context()
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(
            req, timeout=timeout, context=ctx if url.startswith("https") else None
        ) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, ssl.SSLError):
        return 0, b""


class Sandbox:
    def __init__(
        self,
        state_dir: Path | None = None,
        config: SandboxConfig | None = None,
        binaries: KubeBinaries | None = None,
    ) -> None:
        self.state_dir = (state_dir or default_state_dir()).resolve()
        saved = self.state_dir / "sandbox.json"
        self._saved = None
        if saved.exists():
            fields = json.loads(saved.read_text())
            # written before releases were chosen: the Debian-built 1.20.2 the sandbox ran then
            fields.setdefault("kubernetes", LEGACY_RELEASE)
            self._saved = SandboxConfig(**fields)
        self.config = config or self._saved or SandboxConfig()
        self.config.validate()
        self.binaries = binaries or binaries_for(self.config.kubernetes)

    # -- paths -----------------------------------------------------------------------------
    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def haproxy_dir(self) -> Path:
        return self.state_dir / "haproxy"

    @property
    def haproxy_runtime_socket(self) -> Path:
        return self.haproxy_dir / "runtime.sock"

    @property
    def data_plane_socket(self) -> Path:
        """The controllers' runtime API: the cloud-like data plane in front of HAProxy's own
        (:mod:`podgate_sandbox.dataplane`; transparent unless a Service asks for delays)."""
        return self.haproxy_dir / "dataplane.sock"

    @property
    def drain_url(self) -> str:
        """Where a preStop hook reaches podgate's drain endpoint: the front door's plain-HTTP
        side, to every replica's drain port (as a cluster's Service port ``drain`` would)."""
        return f"http://{HOST}:{self.config.port(9447)}"

    @property
    def haproxy_master_socket(self) -> Path:
        return self.haproxy_dir / "master.sock"

    @property
    def haproxy_config(self) -> Path:
        return self.haproxy_dir / "haproxy.cfg"

    @property
    def haproxy_base_config(self) -> Path:
        return self.haproxy_dir / "base.cfg"

    @property
    def webhook_url(self) -> str:
        return f"https://{HOST}:{self.config.port(9443)}/mutate-pods"

    @property
    def node_layout(self) -> node_render.NodeLayout:
        c = self.config
        return node_render.NodeLayout(
            root=self.state_dir / "node",
            node_name=c.node_name,
            pod_cidr=c.node_pod_cidr,
            service_cidr=c.service_cidr,
            port_offset=c.port_offset,
            kubeconfig=self.state_dir / "node-agent.kubeconfig",
            ca_file=self.pki_dir / "ca.crt",
            kubernetes=c.kubernetes,
        )

    @property
    def audit_policy(self) -> Path:
        return self.state_dir / "audit-policy.yaml"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: podgate's own writes of gates and of its Lease (who wrote
        what, when the server took it), which the fault tests read (tests/e2e/test_faults.py)."""
        return self.log_dir / "audit.log"

    def log_of(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    @property
    def apiserver_url(self) -> str:
        return f"https://{HOST}:{self.config.apiserver_port}"

    # -- state -------------------------------------------------------------------------------
    def _pids(self) -> dict[str, int]:
        path = self.state_dir / "pids.json"
        return {k: int(v) for k, v in json.loads(path.read_text()).items()} if path.exists() else {}

    def _save_pid(self, name: str, pid: int | None) -> None:
        pids = self._pids()
        if pid is None:
            pids.pop(name, None)
        else:
            pids[name] = pid
        (self.state_dir / "pids.json").write_text(json.dumps(pids, indent=1))

    def _tokens(self) -> dict[str, str]:
        path = self.pki_dir / "tokens.json"
        if path.exists():
            tokens = dict(json.loads(path.read_text()))
            if "controller" in tokens:
                return tokens
        tokens = {
            user: secrets.token_hex(24)
            for user in ("admin", "controller-manager", "node-agent", "controller")
        }
        path.write_text(json.dumps(tokens))
        path.chmod(0o600)
        return tokens

    def admin_token(self) -> str:
        return self._tokens()["admin"]

    def _prepare(self) -> None:
        """Certificates, tokens and kubeconfigs: made once, kept across ``down``/``up``."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "sandbox.json").write_text(json.dumps(asdict(self.config), indent=1))
        self.log_dir.mkdir(exist_ok=True)
        self.haproxy_dir.mkdir(exist_ok=True)
        ca = pki.ensure_ca(self.pki_dir)
        pki.ensure_serving_cert(
            self.pki_dir,
            "apiserver",
            ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            [HOST, _first_host(self.config.service_cidr)],
            ca,
        )
        pki.ensure_keypair(self.pki_dir, "service-account")
        if self.config.node == "kubelet":
            ensure_kubelet_client_cert(self.pki_dir)
        tokens = self._tokens()
        # Control-plane components are trusted parts of the cluster here: system:masters.
        # podgate's own controller gets a least-privilege ServiceAccount, not one of these.
        lines = [
            f'{tokens["admin"]},admin,uid-admin,"system:masters"',
            f'{tokens["controller-manager"]},system:kube-controller-manager,uid-kcm,"system:masters"',
            f'{tokens["node-agent"]},system:node:{self.config.node_name},uid-node,"system:nodes,system:masters"',
            # podgate itself gets only what sandbox/rbac.yaml grants.
            f'{tokens["controller"]},podgate-controller,uid-podgate,"podgate:controllers"',
        ]
        (self.pki_dir / "tokens.csv").write_text("\n".join(lines) + "\n")
        for name, user in (
            ("kubeconfig", "admin"),
            ("controller-manager.kubeconfig", "controller-manager"),
            ("node-agent.kubeconfig", "node-agent"),
            ("controller.kubeconfig", "controller"),
        ):
            path = self.state_dir / name
            path.write_text(yaml.safe_dump(self._kubeconfig(user, tokens[user])))
            path.chmod(0o600)
        self.audit_policy.write_text(AUDIT_POLICY)
        # The controller renders haproxy.cfg as base.cfg plus one frontend/backend per Service.
        self.haproxy_base_config.write_text(self.base_haproxy_config())
        if not self.haproxy_config.exists():
            self.haproxy_config.write_text(self.base_haproxy_config())

    def _kubeconfig(self, user: str, token: str) -> dict[str, object]:
        ca = base64.b64encode((self.pki_dir / "ca.crt").read_bytes()).decode()
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "podgate-sandbox",
                    "cluster": {"server": self.apiserver_url, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "podgate-sandbox",
                    "context": {"cluster": "podgate-sandbox", "user": user, "namespace": "default"},
                }
            ],
            "current-context": "podgate-sandbox",
        }

    def base_haproxy_config(self) -> str:
        """The load balancer before any Service exists: sockets, a health frontend, and the
        webhook's front door (TLS passed through to every controller replica, as a cluster's
        Service would: the API server keeps reaching a webhook while one replica is down)."""
        c = self.config
        return (
            # HAProxy's own record of each server's state changes (registered, DOWN, UP after its
            # checks, drain, maintenance) with microsecond times, read with ``show events``:
            # benchmarks time the load balancer's part from it, not from podgate's reads
            f"ring {EVENTS_RING}\n"
            "    format iso\n"
            "    maxlen 1024\n"
            "    size 33554432\n"
            "global\n"
            f"    stats socket {self.haproxy_runtime_socket} mode 600 level admin expose-fd listeners\n"
            + (self._node_haproxy_global() if c.node == "kubelet" else "")
            + "    stats timeout 30s\n"
            f"    log ring@{EVENTS_RING} local0 notice\n"
            "defaults\n"
            "    mode http\n"
            "    log global\n"
            "    timeout connect 2s\n"
            "    timeout client 30s\n"
            "    timeout server 30s\n"
            "frontend podgate-sandbox-health\n"
            f"    bind {HOST}:{c.haproxy_health_port}\n"
            "    monitor-uri /healthz\n"
            "frontend podgate-webhook\n"
            "    mode tcp\n"
            f"    bind {HOST}:{c.port(9443)}\n"
            "    default_backend podgate-webhook\n"
            "backend podgate-webhook\n"
            "    mode tcp\n"
            "    retries 3\n"
            "    option redispatch 1\n"
            f"    server replica-0 {HOST}:{c.port(9444)} check inter 1s fall 2 rise 1\n"
            f"    server replica-1 {HOST}:{c.port(9445)} check inter 1s fall 2 rise 1\n"
            f"    server replica-2 {HOST}:{c.port(9446)} check inter 1s fall 2 rise 1\n"
            # the drain endpoint, plain HTTP as the kubelet's preStop httpGet speaks it, to each
            # replica's drain listener (a port of its own, as deploy/'s Service port "drain")
            "frontend podgate-drain\n"
            "    mode tcp\n"
            f"    bind {HOST}:{c.port(9447)}\n"
            "    default_backend podgate-drain\n"
            "backend podgate-drain\n"
            "    mode tcp\n"
            "    retries 3\n"
            "    option redispatch 1\n"
            f"    server replica-0 {HOST}:{c.port(8082)} check inter 1s fall 2 rise 1\n"
            f"    server replica-1 {HOST}:{c.port(8182)} check inter 1s fall 2 rise 1\n"
            f"    server replica-2 {HOST}:{c.port(8282)} check inter 1s fall 2 rise 1\n"
        ) + (self._node_haproxy_proxies() if c.node == "kubelet" else "")

    def _node_haproxy_global(self) -> str:
        """The runtime API for podgate in pods, on the bridge (pods reach it; nothing outside
        routes to the bridge's range)."""
        return f"    stats socket ipv4@{self.node_layout.node_ip}:{NODE_RUNTIME_PORT} level admin\n"

    def _node_haproxy_proxies(self) -> str:
        """With a real node: the API server for pods (the ``kubernetes`` Service's endpoint is
        the bridge's address, where this forwards to the API server on loopback), and the
        backend podgate in pods attaches Services to, with its front door on loopback."""
        c, n = self.config, self.node_layout
        return (
            "frontend kube-apiserver-bridge\n"
            "    mode tcp\n"
            f"    bind {n.node_ip}:{c.apiserver_port}\n"
            # watches are quiet for minutes: the defaults' 30 s would cut every one of them
            "    timeout client 1h\n"
            "    default_backend kube-apiserver\n"
            "backend kube-apiserver\n"
            "    mode tcp\n"
            "    timeout server 1h\n"
            f"    server apiserver {HOST}:{c.apiserver_port}\n"
            f"frontend {DEPLOYED_BACKEND}\n"
            f"    bind {self.deployed_lb_address}\n"
            f"    default_backend {DEPLOYED_BACKEND}\n"
            f"backend {DEPLOYED_BACKEND}\n"
            "    balance roundrobin\n"
            "    retries 3\n"
            "    option redispatch 1\n"
            f"    server-template podgate- 1-32 podgate.invalid:1 disabled init-addr last,0.0.0.0 "
            "check inter 1s rise 2 fall 2\n"
        )

    @property
    def deployed_lb_address(self) -> str:
        """Where the sandbox's HAProxy serves :data:`DEPLOYED_BACKEND` (loopback)."""
        return f"{HOST}:{self.config.port(8480)}"

    # -- components ------------------------------------------------------------------------
    def components(self) -> list[Component]:
        c, b, p = self.config, self.binaries, self.pki_dir
        token = self._tokens()["admin"] if (p / "tokens.json").exists() else ""
        etcd_url = f"http://{HOST}:{c.etcd_port}"
        return [
            Component(
                "etcd",
                f"--name podgate-sandbox-{c.port_offset}",
                [
                    shutil.which("etcd") or "/usr/bin/etcd",
                    "--name",
                    f"podgate-sandbox-{c.port_offset}",
                    "--data-dir",
                    str(self.state_dir / "etcd"),
                    "--listen-client-urls",
                    etcd_url,
                    "--advertise-client-urls",
                    etcd_url,
                    "--listen-peer-urls",
                    f"http://{HOST}:{c.port(2380)}",
                    "--initial-advertise-peer-urls",
                    f"http://{HOST}:{c.port(2380)}",
                    "--initial-cluster",
                    f"podgate-sandbox-{c.port_offset}=http://{HOST}:{c.port(2380)}",
                    "--quota-backend-bytes",
                    str(4 * 1024**3),
                    "--snapshot-count",
                    "10000",
                ],
                lambda: _get(f"{etcd_url}/health")[0] == 200,
            ),
            Component(
                "kube-apiserver",
                str(b.path("kube-apiserver")),
                [
                    str(b.path("kube-apiserver")),
                    f"--etcd-servers={etcd_url}",
                    f"--secure-port={c.apiserver_port}",
                    f"--bind-address={HOST}",
                    # Endpoints may not hold loopback addresses: with a real node, the ``kubernetes``
                    # Service's endpoint is the bridge's address, where HAProxy forwards to this
                    # loopback listener (pods get in-cluster access); with the node agent, none.
                    f"--advertise-address={self.node_layout.node_ip if c.node == 'kubelet' else HOST}",
                    *(["--endpoint-reconciler-type=none"] if c.node == "agent" else []),
                    "--authorization-mode=RBAC",
                    f"--token-auth-file={p / 'tokens.csv'}",
                    f"--client-ca-file={p / 'ca.crt'}",
                    f"--tls-cert-file={p / 'apiserver.crt'}",
                    f"--tls-private-key-file={p / 'apiserver.key'}",
                    "--service-account-issuer=https://kubernetes.default.svc",
                    f"--service-account-key-file={p / 'service-account.pub'}",
                    f"--service-account-signing-key-file={p / 'service-account.key'}",
                    f"--service-cluster-ip-range={c.service_cidr}",
                    # The node agent mounts no token volumes: admitting pods without them keeps
                    # manifests as written. A real kubelet mounts them: pods get their tokens.
                    *(
                        ["--disable-admission-plugins=ServiceAccount"]
                        if c.node == "agent"
                        # logs, exec, port-forward: the kubelet accepts CA-signed clients only,
                        # dialled at its InternalIP (the bridge's address): never by host name,
                        # which would be a DNS query to the machine's resolver
                        else [
                            f"--kubelet-client-certificate={p / (KUBELET_CLIENT + '.crt')}",
                            f"--kubelet-client-key={p / (KUBELET_CLIENT + '.key')}",
                            "--kubelet-preferred-address-types=InternalIP",
                        ]
                    ),
                    "--allow-privileged=true",
                    "--profiling=false",
                    f"--audit-policy-file={self.audit_policy}",
                    f"--audit-log-path={self.audit_log}",
                    "--audit-log-maxsize=100",
                    "--audit-log-maxbackup=1",
                    "--v=1",
                ],
                lambda: _get(f"{self.apiserver_url}/readyz", token, insecure=True)[0] == 200,
                needs=["etcd"],
            ),
            Component(
                "kube-controller-manager",
                str(b.path("kube-controller-manager")),
                [
                    str(b.path("kube-controller-manager")),
                    f"--kubeconfig={self.state_dir / 'controller-manager.kubeconfig'}",
                    f"--authentication-kubeconfig={self.state_dir / 'controller-manager.kubeconfig'}",
                    f"--authorization-kubeconfig={self.state_dir / 'controller-manager.kubeconfig'}",
                    "--controllers=*,-nodelifecycle",
                    # The default 20 requests/s (burst 30) is what a Deployment of thousands of
                    # pods waits for: 5,000 pods would take over four minutes just to be created.
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                    "--leader-elect=false",
                    f"--secure-port={c.port(10257)}",
                    f"--bind-address={HOST}",
                    f"--cert-dir={self.state_dir / 'kcm-certs'}",
                    f"--service-account-private-key-file={p / 'service-account.key'}",
                    f"--root-ca-file={p / 'ca.crt'}",
                    f"--cluster-signing-cert-file={p / 'ca.crt'}",
                    f"--cluster-signing-key-file={p / 'ca.key'}",
                    f"--service-cluster-ip-range={c.service_cidr}",
                    "--v=1",
                ],
                lambda: _get(f"https://{HOST}:{c.port(10257)}/healthz", insecure=True)[0] == 200,
                needs=["kube-apiserver"],
            ),
            Component(
                "haproxy",
                str(self.haproxy_master_socket),
                [
                    shutil.which("haproxy") or "/usr/sbin/haproxy",
                    "-W",
                    "-S",
                    f"{self.haproxy_master_socket},mode,600",
                    "-f",
                    str(self.haproxy_config),
                ],
                lambda: _get(f"http://{HOST}:{c.haproxy_health_port}/healthz")[0] == 200,
            ),
            *(
                [
                    Component(
                        "lb-data-plane",
                        f"podgate_sandbox.dataplane --kubeconfig {self.kubeconfig}",
                        [
                            sys.executable,
                            "-m",
                            "podgate_sandbox.dataplane",
                            "--kubeconfig",
                            str(self.kubeconfig),
                            "--listen",
                            str(self.data_plane_socket),
                            "--haproxy",
                            str(self.haproxy_runtime_socket),
                        ],
                        lambda: _unix_socket_answers(self.data_plane_socket),
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                        needs=["kube-apiserver", "haproxy"],
                    )
                ]
                if c.data_plane
                else []
            ),
            *(
                self._node_components()
                if c.node == "kubelet"
                else [
                    Component(
                        "node-agent",
                        f"podgate_sandbox.nodeagent --kubeconfig {self.state_dir}",
                        [
                            sys.executable,
                            "-m",
                            "podgate_sandbox.nodeagent",
                            "--kubeconfig",
                            str(self.state_dir / "node-agent.kubeconfig"),
                            "--node-name",
                            c.node_name,
                            "--pod-cidr",
                            c.pod_cidr,
                            "--healthz-port",
                            str(c.agent_healthz_port),
                            *(["--run-commands"] if c.run_commands else []),
                        ],
                        lambda: _get(f"http://{HOST}:{c.agent_healthz_port}/healthz")[0] == 200,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                        needs=["kube-apiserver"],
                        before_start=self._route_pods,
                    ),
                ]
            ),
            Component(
                "podgate-controller",
                f"podgate controller --kubeconfig {self.state_dir}",
                self.controller_argv(replica=0),
                lambda: _get(f"http://{HOST}:{c.port(8081)}/readyz")[0] == 200,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                needs=["kube-apiserver", "haproxy", *(["lb-data-plane"] if c.data_plane else [])],
                before_start=self._apply_controller_rbac,
                ports=[c.port(9444), c.port(8081), c.port(8082)],
            ),
        ]

    def _node_components(self) -> list[Component]:
        """The real node: containerd, the kubelet, kube-proxy and the binder.  Like every
        process of a sandbox with a real node, they run in the guarded cgroup (see
        :meth:`_prepare_node_host`)."""
        n, b = self.node_layout, self.binaries
        # The kubelet 1.20's AWS credential provider dials the cloud metadata address unless
        # told not to; no proxy settings reach the node (nothing leaves the sandbox anyway).
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env |= {"AWS_EC2_METADATA_DISABLED": "true", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        ctr = shutil.which("ctr") or "/usr/bin/ctr"

        return [
            Component(
                "containerd",
                f"--config {n.containerd_config}",
                [shutil.which("containerd") or "/usr/bin/containerd", "--config", str(n.containerd_config)],
                lambda: _unix_socket_answers(n.containerd_socket),
                env=env,
                needs=["kube-apiserver"],
            ),
            Component(
                "registry",
                f"podgate_sandbox.node.registry --port {n.registry_port}",
                [
                    sys.executable,
                    "-m",
                    "podgate_sandbox.node.registry",
                    "--port",
                    str(n.registry_port),
                    str(node_images.images_dir()),
                ],
                lambda: _get(f"http://{HOST}:{n.registry_port}/healthz")[0] == 200,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                # the archives it serves, built (cached) before it reads them
                before_start=node_images.archives,
                ports=[n.registry_port],
            ),
            Component(
                "kubelet",
                f"--config={n.kubelet_config}",
                node_render.kubelet_args(n, b.path("kubelet")),
                lambda: _get(f"http://{HOST}:{n.kubelet_healthz_port}/healthz")[0] == 200,
                env=env,
                needs=["containerd", "registry"],
                before_start=lambda: node_images.import_all(n.containerd_socket, ctr),
                ports=[n.kubelet_port, n.kubelet_healthz_port],
            ),
            Component(
                "kube-proxy",
                f"--healthz-bind-address=127.0.0.1:{n.proxy_healthz_port}",
                node_render.kube_proxy_args(n, b.path("kube-proxy")),
                lambda: _get(f"http://{HOST}:{n.proxy_healthz_port}/healthz")[0] == 200,
                env=env,
                needs=["kubelet"],
                ports=[n.proxy_healthz_port, n.proxy_metrics_port],
            ),
            Component(
                "binder",
                f"podgate_sandbox.node.binder --kubeconfig {n.kubeconfig}",
                [
                    sys.executable,
                    "-m",
                    "podgate_sandbox.node.binder",
                    "--kubeconfig",
                    str(n.kubeconfig),
                    "--node-name",
                    n.node_name,
                    "--healthz-port",
                    str(n.binder_port),
                ],
                lambda: _get(f"http://{HOST}:{n.binder_port}/healthz")[0] == 200,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                needs=["kube-apiserver"],
                ports=[n.binder_port],
            ),
        ]

    def controller_argv(self, replica: int = 0, *extra: str) -> list[str]:
        """``podgate controller`` for this sandbox.  Replica 0 is the one ``up`` starts; replicas 1
        and 2 (tests, failover) take the webhook front door's next slots, their own health and drain ports
        and their own certificate directories (as a cluster's emptyDirs): the certificates they
        serve come from the Secret in the controller's namespace, which all of them share."""
        c = self.config
        argv = [
            sys.executable,
            "-m",
            "podgate",
            "controller",
            "--kubeconfig",
            str(self.state_dir / "controller.kubeconfig"),
            "--haproxy-runtime-socket",
            str(self.data_plane_socket if self.config.data_plane else self.haproxy_runtime_socket),
            "--haproxy-master-socket",
            str(self.haproxy_master_socket),
            "--haproxy-config",
            str(self.haproxy_config),
            "--haproxy-base-config",
            str(self.haproxy_base_config),
            "--lb-cidr",
            c.lb_cidr,
            "--webhook-bind",
            HOST,
            "--webhook-port",
            str(c.port(9444 + replica)),
            "--webhook-cert-dir",
            str(self.state_dir / ("webhook-certs" if replica == 0 else f"webhook-certs-{replica}")),
            # the Lease and the certificate Secret in the controller's own namespace (rbac.yaml)
            "--namespace",
            CONTROLLER_NAMESPACE,
            "--leader-election-namespace",
            CONTROLLER_NAMESPACE,
            "--health-bind",
            HOST,
            "--health-port",
            str(c.port(8081 + 100 * replica)),
            "--drain-bind",
            HOST,
            "--drain-port",
            str(c.port(8082 + 100 * replica)),
            "--leader-elect",
            "--lease-duration",
            "6",
            # pods and namespaces written for Alibaba Cloud's controller are gated here as they are
            "--adopt-gate-prefix",
            "service.readiness.alibabacloud.com/",
            "--migration-labels",
            # no cloud controller manager here: podgate's HAProxy is the cluster's load balancer
            "--default-provider",
            "haproxy",
            *_class_flags(extra),
            "--drain-url",
            self.drain_url,
        ]
        if replica == 0:
            # keeps the caBundle of the sandbox's webhook configurations (written by
            # _apply_controller_rbac, by front door URL) current; their own name, so a cluster's
            # "podgate" (deploy/) can sit beside them
            argv += ["--webhook-url", self.webhook_url, "--webhook-config-name", WEBHOOK_CONFIG]
        return argv + list(extra)

    def webhook_configurations(self, name: str = WEBHOOK_CONFIG) -> list[dict[str, Any]]:
        """The sandbox's static webhook configurations, as an installer writes them (deploy/base's
        by Service, these by the front door's URL): podgate renders them, the sandbox applies them,
        the controller only writes their caBundle."""
        url = self.webhook_url
        eviction_url = url.rsplit("/", 1)[0] + eviction.PATH
        out = []
        for body in (
            webhook.webhook_configuration(name, b"", url=url, service=None, migration_labels=True),
            eviction.webhook_configuration(name, b"", url=eviction_url, service=None, migration_labels=True),
        ):
            for hook in body["webhooks"]:
                hook["clientConfig"] = {k: v for k, v in hook["clientConfig"].items() if k != "caBundle"}
            out.append(body)
        return out

    def _apply_controller_rbac(self) -> None:
        """The controller's RBAC rules, podgate's CRDs (ReadinessCheck, LoadBalancerGroupGrant) and
        the webhook configurations, before the controller starts (``kubectl apply`` leaves the
        caBundle the controller wrote: it is no field of the applied object)."""
        rbac = resources.files("podgate_sandbox").joinpath("rbac.yaml")
        crds = [
            resources.files("podgate").joinpath("crds", f)
            for f in ("readinesscheck.yaml", "loadbalancergroupgrant.yaml")
        ]
        out = subprocess.run(
            [
                str(self.binaries.path("kubectl")),
                "apply",
                "-f",
                str(rbac),
                *(a for c in crds for a in ("-f", str(c))),
            ],
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise SandboxError(f"could not grant the controller its RBAC rules: {out.stderr.strip()}")
        out = subprocess.run(
            [str(self.binaries.path("kubectl")), "apply", "-f", "-"],
            input=yaml.safe_dump_all(self.webhook_configurations()),
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise SandboxError(f"could not write the webhook configurations: {out.stderr.strip()}")

    # -- commands ----------------------------------------------------------------------------
    def up(
        self, progress: Progress | None = None, timeout: float = 60.0, with_controller: bool = True
    ) -> None:
        progress = progress or Progress()
        if (
            self._saved is not None
            and kube_minor(self._saved.kubernetes) != kube_minor(self.config.kubernetes)
            and (self.state_dir / "etcd").exists()
        ):
            # etcd keeps objects in the storage versions of the release that wrote them: no
            # downgrade is possible, and an upgrade across many releases is not a sandbox's job
            raise SandboxError(
                f"{self.state_dir} holds a Kubernetes {self._saved.kubernetes} cluster; for "
                f"{self.config.kubernetes} use another --state-dir (and --port-offset if it stays up), "
                "or `podgate sandbox down` and remove this one"
            )
        needed = (*ALL_BINARIES, *NODE_BINARIES) if self.config.node == "kubelet" else ALL_BINARIES
        missing = self.binaries.broken(needed)
        if missing:
            install = "podgate sandbox install" + (
                f" --kubernetes {self.config.kubernetes}" if self.config.kubernetes != NEWEST_RELEASE else ""
            )
            raise SandboxError(
                f"Kubernetes {self.binaries.version} binaries missing or broken: {', '.join(missing)}. "
                f"Run `{install}`"
                + (" (or `make setup`)" if install.endswith("install") else "")
                + " to build them."
            )
        if self._saved is not None and self._saved.node != self.config.node and self._running():
            raise SandboxError(
                f"this sandbox is up with --node {self._saved.node}; run `podgate sandbox down` "
                f"before switching it to --node {self.config.node}"
            )
        self._prepare()
        guarded = self._prepare_node_host() if self.config.node == "kubelet" else None
        pids = self._pids()
        started: dict[str, float] = {}
        pending = [comp for comp in self.components() if with_controller or comp.name != "podgate-controller"]
        running = {
            comp.name
            for comp in pending
            if comp.name in pids and processes.alive(pids[comp.name], comp.marker)
        }
        healthy: set[str] = set()
        deadline = time.monotonic() + timeout
        while pending:
            for comp in list(pending):
                if comp.name in healthy:
                    pending.remove(comp)
                    continue
                if not all(dep in healthy for dep in comp.needs):
                    continue
                if comp.name not in running and comp.name not in started:
                    self._check_ports(comp)
                    if comp.before_start is not None:
                        comp.before_start()
                    pid = processes.spawn(
                        comp.argv,
                        self.log_of(comp.name),
                        env=comp.env,
                        cgroup_procs=guarded,
                    )
                    self._save_pid(comp.name, pid)
                    started[comp.name] = time.monotonic()
                    progress.say(f"started {comp.name} (pid {pid})")
                if comp.health():
                    healthy.add(comp.name)
                    pending.remove(comp)
                    since: float | None = started.get(comp.name)
                    progress.say(
                        f"{comp.name} healthy" + (f" after {time.monotonic() - since:.1f}s" if since else "")
                    )
                    continue
                current = self._pids().get(comp.name)
                if comp.name in started and current is not None and not processes.alive(current, comp.marker):
                    raise SandboxError(
                        f"{comp.name} exited during start-up; see {self.log_of(comp.name)}:\n"
                        + _tail(self.log_of(comp.name))
                    )
            if time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise SandboxError(f"not healthy after {timeout:.0f}s: {names}; logs in {self.log_dir}")
            if pending:
                time.sleep(0.1)

    def _prepare_node_host(self) -> Path:
        """The real node's footprint, before any process starts; returns the guarded cgroup's
        ``cgroup.procs``.  With a real node every sandbox process runs in that cgroup, the
        control plane too: nothing the sandbox starts can reach past it (the API server once
        dialled the kubelet by host name, a DNS query to the machine's resolver)."""
        host = NodeHost(self.node_layout)
        try:
            host.prepare()
        except HostError as e:
            raise SandboxError(f"the real node cannot start: {e}") from e
        return host.cgroup_procs

    def _route_pods(self) -> None:
        """The node agent's pod range made local (:mod:`podgate_sandbox.podnet`), before the
        agent gives a pod its first address there."""
        net = podnet.pod_network(self.config.pod_cidr)
        if podnet.needs_route(net):
            try:
                podnet.add_route(net)
            except AddressPoolError as e:
                raise SandboxError(str(e)) from e

    def _running(self) -> list[str]:
        """Names of recorded processes still alive (whatever the mode that started them)."""
        return [name for name, pid in self._pids().items() if processes.alive(pid, "")]

    def _check_ports(self, comp: Component) -> None:
        c = self.config
        ports = {
            "etcd": [c.etcd_port, c.port(2380)],
            "kube-apiserver": [c.apiserver_port],
            "kube-controller-manager": [c.port(10257)],
            "haproxy": [
                c.haproxy_health_port,
                c.port(9447),
                *([c.port(8480)] if c.node == "kubelet" else []),
            ],
            "node-agent": [c.agent_healthz_port],
        }.get(comp.name, comp.ports)
        for port in ports:
            if processes.port_in_use(HOST, port):
                raise SandboxError(
                    f"{HOST}:{port} (needed by {comp.name}) is already in use by another process; "
                    "stop it, or use another --state-dir with --port-offset"
                )

    def status(self) -> list[ComponentStatus]:
        pids = self._pids()
        out = []
        for comp in self.components():
            pid = pids.get(comp.name)
            running = pid is not None and processes.alive(pid, comp.marker)
            out.append(
                ComponentStatus(
                    comp.name,
                    pid if running else None,
                    running,
                    running and comp.health(),
                    str(self.log_of(comp.name)),
                )
            )
        if self.config.node == "kubelet":
            for name, present, what in NodeHost(self.node_layout).footprint():
                out.append(ComponentStatus(name, None, present, present, what))
        return out

    @contextlib.contextmanager
    def controller_replaced(self, *flags: str, env: Mapping[str, str], log: str) -> Iterator[ControllerSwap]:
        """The sandbox's controller swapped, for the block, for replica 1 with extra flags (a
        cloud provider and its endpoint) and environment (its credentials); the sandbox's own
        comes back after.  Stopping it first releases its lease, so the swap leads at once."""
        comp = next(c for c in self.components() if c.name == "podgate-controller")
        pid = self._pids().get(comp.name)
        if pid is not None:
            processes.stop(pid, comp.marker)
        swap = ControllerSwap(
            self.controller_argv(1, *flags),
            # the name the cloud doubles' groups are tagged with (podgate.dev/cluster); a variable,
            # not a flag, so a controller from before the setting (bench/cloud_calls.py) still runs
            {**os.environ, "PODGATE_CLUSTER_NAME": CLUSTER_NAME, **env},
            self.state_dir / "logs" / log,
        )
        swap.start()
        try:
            yield swap
        finally:
            swap.stop()
            self.up()

    def down(self) -> list[str]:
        """Stop every component we started, dependants first; returns the names stopped.  A
        real node's footprint on the machine is then undone (whatever mode the sandbox is in
        now: the record says what the node changed)."""
        pids = self._pids()
        stopped = []
        for comp in reversed(self.components()):
            pid = pids.get(comp.name)
            if pid is not None and processes.stop(
                pid, comp.marker, grace=15.0 if comp.name == "node-agent" else 10.0
            ):
                stopped.append(comp.name)
            if comp.name in pids:  # nothing recorded (a state directory gone): nothing to write
                self._save_pid(comp.name, None)
        pod_net = podnet.pod_network(self.config.pod_cidr)
        if podnet.needs_route(pod_net) and podnet.has_route(pod_net):
            podnet.remove_route(pod_net)
        problems = NodeHost(self.node_layout).teardown()
        if problems:
            raise SandboxError("the real node was not fully undone: " + "; ".join(problems))
        return stopped

    def import_image(self, archive: Path) -> list[str]:
        """Import an OCI archive into the real node's containerd (``podgate sandbox import``,
        say ``make image``'s): pods name it with ``imagePullPolicy: Never`` or ``IfNotPresent``.
        Returns the names imported."""
        if self.config.node != "kubelet" or "containerd" not in self._running():
            raise SandboxError("import needs a running real node: podgate sandbox up --node kubelet")
        if not archive.is_file():
            raise SandboxError(f"import: {archive} is not a file (make image writes dist/podgate-image.tar)")
        ctr = shutil.which("ctr") or "/usr/bin/ctr"
        try:
            return node_images.import_archive(self.node_layout.containerd_socket, archive, ctr)
        except RuntimeError as e:
            raise SandboxError(f"import: {e}") from e

    @property
    def kubectl_cache(self) -> Path:
        """kubectl's discovery cache for this sandbox: the default (~/.kube/cache, keyed by host
        and port) would serve one release's API groups to another sandbox later on the same port
        (seen: 1.37's kubectl failing on EndpointSlices after a 1.20 sandbox there)."""
        return self.state_dir / "kubectl-cache"

    def env(self) -> str:
        return (
            f"export KUBECONFIG={self.kubeconfig}\nexport PATH={self.binaries.bin_dir}:$PATH\n"
            f"export KUBECACHEDIR={self.kubectl_cache}\n"
        )


class ControllerSwap:
    """The stand-in controller of :meth:`Sandbox.controller_replaced`; a test may stop it and
    start it again (e.g. to change the cluster while no controller runs)."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.env, self.log = argv, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "a") as err:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
            )

    def stop(self) -> None:
        """SIGTERM and wait: the controller releases its lease on the way out."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(15)
            self.process = None


def _unix_socket_answers(path: Path) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _first_host(cidr: str) -> str:
    """The ``kubernetes`` Service's ClusterIP: the first address of the service range."""
    import ipaddress

    return str(next(ipaddress.ip_network(cidr).hosts()))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
