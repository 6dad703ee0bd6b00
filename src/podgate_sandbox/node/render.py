"""What the real node's pieces are told, and how ``down`` finds what they changed: pure.

Configuration text for containerd, CNI, the kubelet and kube-proxy; the egress guard's iptables
rules; and the bookkeeping that turns "the machine before ``up``" and "the machine now" into the
exact commands that undo the difference (iptables rules and chains, mounts, sysctls).
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

#: Every sysctl the node's programs are known to write: the kubelet's kernel tunables, the CNI
#: bridge's forwarding, kube-proxy's route_localnet (and conntrack, left alone by its flags).
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.default.forwarding",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
)
#: Host paths the node writes whatever its configuration: the kubelet's device plugins, pod and
#: container logs; containerd 1.6's shim sockets (/run/containerd/s, fixed in the shim) and
#: libcni's result cache (/var/lib/cni, not configurable through containerd).
HOST_PATHS = ("/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/run/containerd", "/var/lib/cni")
#: Where node mounts may appear besides the node's own directory (defaults of the programs).
MOUNT_PREFIXES = (
    "/var/lib/kubelet",
    "/run/netns",
    "/var/run/netns",
    "/run/containerd",
    "/var/lib/containerd",
)
PAUSE_IMAGE = "localhost/podgate/pause:1"
WEB_IMAGE = "localhost/podgate/web:1"
#: Debian's nginx (see :mod:`podgate_sandbox.node.images`)
NGINX_IMAGE = "localhost/podgate/nginx:1"
#: Names manifests written for nginx use, tagged on the local nginx at import: a pod naming one
#: with a tag other than ``latest`` (``imagePullPolicy: IfNotPresent`` by default) starts with
#: no pull at all.  Any other nginx name (``nginx``, i.e. ``:latest``, which the kubelet always
#: pulls) is answered by the node's loopback registry (:func:`local_image_for`).
NGINX_ALIASES = (
    "docker.io/library/nginx:latest",
    "anolis-registry.cn-zhangjiakou.cr.aliyuncs.com/openanolis/nginx:1.14.1-8.6",
)


@dataclass(frozen=True)
class NodeLayout:
    """Names, paths, addresses and ports of one real node (one per sandbox)."""

    root: Path  # STATE/node
    node_name: str
    pod_cidr: str  # the bridge's subnet; its first address is the gateway and --node-ip
    service_cidr: str
    port_offset: int
    kubeconfig: Path
    ca_file: Path
    #: the release of the node's kubelet and kube-proxy (flags and fields differ by release)
    kubernetes: str = "1.37.2"

    @property
    def minor(self) -> tuple[int, int]:
        major, minor = self.kubernetes.strip().lstrip("v").split(".")[:2]
        return int(major), int(minor)

    @property
    def bridge(self) -> str:
        return f"pgbr{self.port_offset}"

    @property
    def cgroup(self) -> str:
        """The cgroup (v2 path, relative to its root) every node process runs in."""
        return f"podgate-node-{self.port_offset}"

    @property
    def network(self) -> str:
        """The CNI network's name (libcni keys its result cache by it)."""
        return f"podgate-{self.port_offset}"

    @property
    def guard_chain(self) -> str:
        return f"PODGATE-EGRESS-{self.port_offset}"

    @property
    def node_ip(self) -> str:
        return str(next(ipaddress.ip_network(self.pod_cidr).hosts()))

    def port(self, base: int) -> int:
        return base + self.port_offset

    @property
    def kubelet_port(self) -> int:
        return self.port(10350)

    @property
    def kubelet_healthz_port(self) -> int:
        return self.port(10348)

    @property
    def proxy_healthz_port(self) -> int:
        return self.port(10356)

    @property
    def proxy_metrics_port(self) -> int:
        return self.port(10349)

    @property
    def binder_port(self) -> int:
        return self.port(10347)

    @property
    def registry_port(self) -> int:
        return self.port(10346)

    @property
    def registry_hosts_dir(self) -> Path:
        """containerd's registry host configuration (``hosts.toml`` per registry)."""
        return self.containerd_dir / "certs.d"

    @property
    def containerd_dir(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.containerd_dir / "config.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def resolv_conf(self) -> Path:
        return self.root / "resolv.conf"

    @property
    def record(self) -> Path:
        """The machine as it was before ``up``: what ``down`` restores."""
        return self.root / "host-record.json"


def validate_pod_cidr(pod_cidr: str, service_cidr: str) -> None:
    """The real node's pod range: private IPv4, room for pods, clear of the service range."""
    net = ipaddress.ip_network(pod_cidr, strict=True)
    svc = ipaddress.ip_network(service_cidr)
    if not isinstance(net, ipaddress.IPv4Network) or not net.is_private or net.is_loopback:
        raise ValueError(f"node pod CIDR {pod_cidr} must be a private, non-loopback IPv4 range")
    if net.prefixlen > 28:
        raise ValueError(f"node pod CIDR {pod_cidr} is too small (at most /28)")
    if net.overlaps(svc):
        raise ValueError(f"node pod CIDR {pod_cidr} overlaps the service range {service_cidr}")


def containerd_config(n: NodeLayout) -> str:
    """containerd with everything under the node's directory; each CRI setting is one this
    machine needs (see GUIDE §4): root lacks CAP_SYS_RESOURCE, there is no AppArmor, no systemd."""
    d = n.containerd_dir
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return "\n".join(
        [
            "version = 2",
            f"root = {_q(d / 'root')}",
            f"state = {_q(d / 'state')}",
            "disabled_plugins = ["
            + ", ".join(
                _q(p)
                for p in (
                    "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.tracing.processor.v1.otlp",
                    "io.containerd.internal.v1.tracing",
                )
            )
            + "]",
            "[grpc]",
            f"  address = {_q(n.containerd_socket)}",
            "[ttrpc]",
            f"  address = {_q(d / 'containerd.sock.ttrpc')}",
            "[debug]",
            '  address = ""',
            "[metrics]",
            '  address = ""',
            '[plugins."io.containerd.internal.v1.opt"]',
            f"  path = {_q(d / 'opt')}",
            f"[{cri}]",
            f"  sandbox_image = {_q(PAUSE_IMAGE)}",
            "  restrict_oom_score_adj = true",
            "  disable_apparmor = true",
            "  enable_selinux = false",
            "  netns_mounts_under_state_dir = true",
            '  stream_server_address = "127.0.0.1"',
            "  max_container_log_line_size = 16384",
            f"[{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            f"[{cri}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"[{cri}.containerd.runtimes.runc.options]",
            "  SystemdCgroup = false",
            f"[{cri}.registry]",
            f"  config_path = {_q(n.registry_hosts_dir)}",
            f"[{cri}.cni]",
            '  bin_dir = "/usr/lib/cni"',
            f"  conf_dir = {_q(n.cni_conf_dir)}",
            "  max_conf_num = 1",
            "",
        ]
    )


def registry_hosts(n: NodeLayout) -> dict[str, str]:
    """containerd's ``hosts.toml`` files: every registry, whatever its name, is the node's
    loopback registry (``_default``), so a pull never leaves the machine; docker.io is also
    named, for the images Docker Hub's short names mean."""
    url = f"http://127.0.0.1:{n.registry_port}"
    # containerd 1.6 refuses a hosts.toml without a host table ("invalid `host` tree") and then
    # falls back to the registry's public address: the table is required
    text = f'server = {_q(url)}\n[host.{_q(url)}]\n  capabilities = ["pull", "resolve"]\n'
    return {f"{host}/hosts.toml": text for host in ("_default", "docker.io")}


def local_image_for(repository: str) -> str | None:
    """The local image the node's registry serves for ``repository`` (the path in its URL,
    ``/v2/<repository>/manifests/<tag>``; containerd leaves the registry's host out), or None
    ("unknown name").  Every repository called ``nginx``, whatever its registry, path or tag, is
    Debian's nginx; the node's own images answer to their own names."""
    own = {i.split("/", 1)[1].rsplit(":", 1)[0]: i for i in (PAUSE_IMAGE, WEB_IMAGE, NGINX_IMAGE)}
    if repository in own:
        return own[repository]
    if repository.rsplit("/", 1)[-1] == "nginx":
        return NGINX_IMAGE
    return None


def cni_conflist(n: NodeLayout) -> str:
    """A bridge on the sandbox's own link, host-local addresses, and routes only to the pod and
    service ranges: no default route, no masquerade, so a pod cannot reach past the sandbox."""
    net = ipaddress.ip_network(n.pod_cidr)
    hosts = list(net.hosts())
    conf = {
        "cniVersion": "0.4.0",
        "name": n.network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": n.bridge,
                "isGateway": True,
                "isDefaultGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(n.root / "cni-ipam"),
                    "ranges": [
                        [
                            {
                                "subnet": n.pod_cidr,
                                "gateway": n.node_ip,
                                "rangeStart": str(hosts[1]),
                                "rangeEnd": str(hosts[-1]),
                            }
                        ]
                    ],
                    "routes": [{"dst": n.service_cidr}],
                },
            }
        ],
    }
    return json.dumps(conf, indent=1) + "\n"


def kubelet_config(n: NodeLayout) -> str:
    """KubeletConfiguration: cgroupfs, swap tolerated, ports off the node agent's, health on
    loopback, no DNS beyond a loopback resolver, eviction thresholds a shared development
    machine does not trip.  Its API serves on the bridge's address (the node's InternalIP, where
    the API server dials it for logs and exec), to clients the sandbox CA signed only."""
    conf = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": n.node_ip,
        "port": n.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": n.kubelet_healthz_port,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "resolvConf": str(n.resolv_conf),
        "clusterDomain": "cluster.local",
        "podCIDR": n.pod_cidr,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(n.ca_file)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "maxPods": 110,
        "fileCheckFrequency": "0s",
        "staticPodPath": "",
        "syncFrequency": "10s",
    }
    if n.minor >= (1, 31):
        # This host has hybrid cgroups (v1 controllers plus a unified mount): the kubelet of
        # 1.35+ refuses to start on cgroup v1 unless told not to (the field exists from 1.31).
        conf["failCgroupV1"] = False
    return yaml.safe_dump(conf, sort_keys=True)


def kubelet_args(n: NodeLayout, kubelet: Path) -> list[str]:
    """The kubelet's flags for its release: ``--container-runtime`` went in 1.27 (remote is the
    only runtime since dockershim's removal in 1.24), ``--pod-infra-container-image`` in 1.35
    (containerd's ``sandbox_image`` names the pause image, and pins it, on its own)."""
    sock = f"unix://{n.containerd_socket}"
    return [
        str(kubelet),
        f"--config={n.kubelet_config}",
        f"--kubeconfig={n.kubeconfig}",
        *(["--container-runtime=remote"] if n.minor < (1, 24) else []),
        f"--container-runtime-endpoint={sock}",
        f"--image-service-endpoint={sock}",
        *([f"--pod-infra-container-image={PAUSE_IMAGE}"] if n.minor < (1, 35) else []),
        f"--node-ip={n.node_ip}",
        f"--hostname-override={n.node_name}",
        f"--root-dir={n.kubelet_dir}",
        "--v=1",
    ]


def kube_proxy_args(n: NodeLayout, kube_proxy: Path) -> list[str]:
    """iptables mode; every conntrack flag 0 so the host's conntrack sysctls stay as they are;
    NodePorts only on the bridge's address."""
    return [
        str(kube_proxy),
        f"--kubeconfig={n.kubeconfig}",
        "--proxy-mode=iptables",
        f"--hostname-override={n.node_name}",
        f"--bind-address={n.node_ip}",
        f"--cluster-cidr={n.pod_cidr}",
        f"--healthz-bind-address=127.0.0.1:{n.proxy_healthz_port}",
        f"--metrics-bind-address=127.0.0.1:{n.proxy_metrics_port}",
        f"--nodeport-addresses={n.node_ip}/32",
        "--conntrack-max-per-core=0",
        "--conntrack-min=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        "--v=1",
    ]


def egress_rules(n: NodeLayout, reject_also: Sequence[str] = ()) -> list[list[str]]:
    """The egress guard as iptables argument lists (IPv4): the node's cgroup may reach loopback
    and the sandbox's pod and service ranges, nothing else.  ``reject_also`` lists loopback
    addresses rejected anyway: how a test proves the guard rejects without leaving the machine."""
    chain = n.guard_chain
    rules = [["-N", chain]]
    rules += [["-A", chain, "-d", addr, "-j", "REJECT"] for addr in reject_also]
    rules += [["-A", chain, "-d", dst, "-j", "RETURN"] for dst in ("127.0.0.0/8", n.pod_cidr, n.service_cidr)]
    rules.append(["-A", chain, "-j", "REJECT"])
    # The node's programs, and pods' containers wherever runc puts them (hostNetwork pods
    # share the host's network namespace).
    for cgroup in (n.cgroup, "kubepods"):
        rules.append(["-I", "OUTPUT", "1", "-m", "cgroup", "--path", cgroup, "-j", chain])
    # Pods sit in their own network namespaces: their packets cross the bridge (FORWARD), not
    # OUTPUT; the same chain decides whatever is routed off the bridge (frames between pods,
    # bridged, stay on it).
    rules.append(["-I", "FORWARD", "1", "-i", n.bridge, "!", "-o", n.bridge, "-j", chain])
    return rules


def egress_rules6(n: NodeLayout) -> list[list[str]]:
    """The IPv6 half: the node's cgroup may reach ::1 only; pods have no IPv6 at all."""
    chain = n.guard_chain
    return [
        ["-N", chain],
        ["-A", chain, "-d", "::1/128", "-j", "RETURN"],
        ["-A", chain, "-j", "REJECT"],
        ["-I", "OUTPUT", "1", "-m", "cgroup", "--path", n.cgroup, "-j", chain],
        ["-I", "OUTPUT", "1", "-m", "cgroup", "--path", "kubepods", "-j", chain],
        ["-I", "FORWARD", "1", "-i", n.bridge, "!", "-o", n.bridge, "-j", chain],
    ]


@dataclass(frozen=True)
class SaveParse:
    """``iptables-save`` output without counters: tables, their chains and their rules."""

    chains: dict[str, list[str]]
    rules: dict[str, list[str]]


def parse_save(text: str) -> SaveParse:
    chains: dict[str, list[str]] = {}
    rules: dict[str, list[str]] = {}
    table = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
            chains.setdefault(table, [])
            rules.setdefault(table, [])
        elif line.startswith(":") and table:
            chains[table].append(line[1:].split()[0])
        elif line.startswith("-A ") and table:
            rules[table].append(line)
    return SaveParse(chains, rules)


def normalise_save(text: str) -> str:
    """``iptables-save`` output minus comments and counters: equal text, equal rule sets."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith(":"):
            line = line.split(" [", 1)[0]
        out.append(line)
    return "\n".join(out)


def undo_iptables(before: str, after: str) -> tuple[list[list[str]], list[str]]:
    """What turns the rule set ``after`` back into ``before``: iptables argument lists (rules
    added to chains that existed, then chains that did not), and the tables that did not exist
    at all (iptables cannot remove a table: ``nft delete table`` does)."""
    b, a = parse_save(before), parse_save(after)
    commands: list[list[str]] = []
    new_tables = [t for t in a.chains if t not in b.chains]
    for table in a.chains:
        if table in new_tables:
            continue
        new_chains = [c for c in a.chains[table] if c not in b.chains[table]]
        # first every new chain is emptied, so nothing jumps anywhere it should not ...
        commands += [["-t", table, "-F", c] for c in new_chains]
        # ... then rules added to old chains go (a multiset: a duplicate added is removed once)
        extra = Counter(a.rules[table]) - Counter(b.rules[table])
        for rule in a.rules[table]:
            if extra[rule] > 0 and shlex.split(rule)[1] not in new_chains:
                extra[rule] -= 1
                commands.append(["-t", table, "-D", *shlex.split(rule)[1:]])
        commands += [["-t", table, "-X", c] for c in new_chains]
    return commands, new_tables


def mounts_under(mountinfo: str, prefixes: Iterable[str]) -> list[str]:
    """Mount points in ``/proc/self/mountinfo`` text under any of ``prefixes``, in mount order."""
    roots = [p.rstrip("/") for p in prefixes]
    out = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        if any(point == r or point.startswith(r + "/") for r in roots):
            out.append(point)
    return out


def mounts_to_undo(before: Sequence[str], now: Sequence[str]) -> list[str]:
    """Mount points to unmount, the newest (deepest stacked) first; one point mounted twice
    appears twice."""
    extra = Counter(now) - Counter(before)
    out = []
    for point in reversed(now):
        if extra[point] > 0:
            extra[point] -= 1
            out.append(point)
    return out


def cni_results_to_remove(before: Iterable[str], now: Iterable[str], network: str) -> list[str]:
    """libcni's cached results (``/var/lib/cni/results``) the node left: files of its network
    that appeared since ``up``, and the loopback results of the same sandboxes (containers
    killed at ``down`` get no CNI DEL, which would have removed them)."""
    new = sorted(set(now) - set(before))
    ours = [name for name in new if name.startswith(network + "-")]
    sandboxes = {name[len(network) + 1 :].rsplit("-", 1)[0] for name in ours}
    return ours + [
        name for name in new if name.startswith("cni-loopback-") and name[13:].rsplit("-", 1)[0] in sandboxes
    ]


def sysctls_to_restore(before: Mapping[str, str], now: Mapping[str, str]) -> dict[str, str]:
    """The recorded values of sysctls that changed (absent ones are skipped: no such key)."""
    return {k: v for k, v in before.items() if k in now and now[k] != v}


def _q(value: object) -> str:
    return json.dumps(str(value))
