"""The real node (``podgate sandbox up --node kubelet``): kubelet, containerd, runc, a CNI bridge
and kube-proxy, fenced by the egress guard, and a ``down`` that leaves the machine as it was.

One sandbox for the module, on its own state directory, ports and ranges; select these tests
with ``-m real_node``.  Run them (like every e2e test) under the shared lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podgate_sandbox.binaries import default_binaries
from podgate_sandbox.controlplane import Sandbox
from podgate_sandbox.node import render
from podgate_sandbox.node.host import UNIFIED, NodeHost, iptables_save, sysctls

from .conftest import SandboxHandle, condition, podgate, wait_for, wide_row
from .test_lb_selection import SEED_IMAGE

pytestmark = pytest.mark.real_node

OFFSET = 12000
POD_CIDR = "127.112.0.0/16"
LB_CIDR = "127.212.0.0/16"
NODE_POD_CIDR = "10.244.0.0/24"
GATE = "example.com/lb-healthy"
#: a loopback address the guard is told to reject, to prove it rejects (never an outside one)
PROBE_ADDRESS = "127.77.0.1"
NODE_PROGRAMS = ("containerd", "containerd-shim", "kubelet", "kube-proxy", "pause", "httpd", "nginx")


def machine(state_root: Path) -> dict[str, Any]:
    """What ``down`` must put back: rule sets, links, routes, mounts, sysctls, host paths,
    cgroups and the node's programs."""

    def out(*args: str) -> str:
        return subprocess.run(args, capture_output=True, text=True, check=False).stdout

    return {
        "iptables": iptables_save(),
        "ip6tables": iptables_save(six=True),
        "nft tables": out("nft", "list", "tables"),
        "links": sorted(line.split(":")[1].strip() for line in out("ip", "-o", "link").splitlines()),
        "routes": out("ip", "route", "show", "table", "all"),
        "routes6": out("ip", "-6", "route", "show", "table", "all"),
        # other people's build roots under /tmp (mmdebstrap, say) come and go: not ours to judge
        "mounts": sorted(
            point
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if not (point := line.split()[4]).startswith("/tmp/") or point.startswith(str(state_root))
        ),
        "sysctls": sysctls(),
        "paths": [p for p in (*render.HOST_PATHS, "/var/lib/containerd") if os.path.lexists(p)],
        "cni results": sorted(os.listdir("/var/lib/cni/results"))
        if os.path.isdir("/var/lib/cni/results")
        else [],
        "cgroups": sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/kubepods"))
        + sorted(str(p) for p in UNIFIED.glob("podgate-node-*")),
        "programs": sorted(
            name
            for pid in os.listdir("/proc")
            if pid.isdigit()
            for name in [_comm(int(pid))]
            if name.startswith(NODE_PROGRAMS)
        ),
    }


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("realnode")


@pytest.fixture(scope="module")
def before(state: Path) -> dict[str, Any]:
    return machine(state)


@pytest.fixture(scope="module")
def node(state: Path, before: dict[str, Any]) -> Iterator[SandboxHandle]:
    t0 = time.monotonic()
    up = podgate(
        "sandbox",
        "up",
        "--node",
        "kubelet",
        "--node-pod-cidr",
        NODE_POD_CIDR,
        "--state-dir",
        str(state),
        "--port-offset",
        str(OFFSET),
        "--pod-cidr",
        POD_CIDR,
        "--lb-cidr",
        LB_CIDR,
        "--without-controller",
        timeout=300,
    )
    handle = SandboxHandle(state, state / "kubeconfig", default_binaries().path("kubectl"))
    try:
        assert up.returncode == 0, f"sandbox up --node kubelet failed:\n{up.stdout}\n{up.stderr}"
        print(f"sandbox up --node kubelet: {time.monotonic() - t0:.1f}s", file=sys.stderr)
        wait_for(
            "the kubelet's Node to be Ready",
            lambda: (
                "True"
                in handle.kubectl(
                    "get", "node", "-o", "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}"
                )
            ),
            timeout=60,
        )
        wait_for(
            "the default ServiceAccount's token",
            lambda: "default-token" in handle.kubectl("get", "secrets", "-n", "default", check=False),
        )
        yield handle
    finally:
        podgate("sandbox", "down", "--state-dir", str(state), timeout=180)


@pytest.fixture
def namespace(node: SandboxHandle) -> Iterator[str]:
    name = f"rn-{uuid.uuid4().hex[:8]}"
    node.kubectl("create", "namespace", name)
    wait_for(
        "the namespace's service-account token",
        lambda: "default-token" in node.kubectl("get", "secrets", "-n", name, check=False),
    )
    yield name
    node.kubectl("delete", "namespace", name, "--wait=false", check=False)


def patch_status(node: SandboxHandle, namespace: str, pod: str, body: dict[str, Any]) -> None:
    """A strategic-merge patch of pods/status (kubectl 1.20 has no --subresource)."""
    state = node.state_dir
    token = json.loads((state / "pki" / "tokens.json").read_text())["admin"]
    port = 6443 + OFFSET
    req = urllib.request.Request(
        f"https://127.0.0.1:{port}/api/v1/namespaces/{namespace}/pods/{pod}/status",
        data=json.dumps(body).encode(),
        method="PATCH",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/strategic-merge-patch+json",
        },
    )
    ctx = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        assert r.status == 200


def web_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {
            "readinessGates": [{"conditionType": GATE}],
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "web",
                    "image": render.WEB_IMAGE,
                    "imagePullPolicy": "Never",
                    "ports": [{"containerPort": 80}],
                }
            ],
        },
    }


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def test_gated_pod_runs_on_the_real_node_and_turns_ready_with_its_gate(
    node: SandboxHandle, namespace: str
) -> None:
    node.apply(web_pod("web-0"), namespace)
    pod = wait_for(
        "the pod Running with its container ready",
        lambda: (
            p
            if (p := node.get("pod", "web-0", "-n", namespace))["status"].get("phase") == "Running"
            and (condition(p, "ContainersReady") or {}).get("status") == "True"
            else None
        ),
        timeout=60,
    )
    row = wide_row(node, namespace, "web-0")
    assert row["READINESS GATES"] == "0/1" and row["READY"] == "1/1"
    assert row["NODE"] == "podgate-node"
    assert (condition(pod, "Ready") or {}).get("status") == "False"
    ip = pod["status"]["podIP"]
    assert ip.startswith("10.244.0."), ip
    # the ServiceAccount admission plugin and the token controller are on: the pod has a token
    assert any(v["name"].startswith("default-token-") for v in pod["spec"]["volumes"])
    assert http_get(f"http://{ip}/").strip() == "podgate-web web-0"

    t0 = time.monotonic()
    patch_status(
        node,
        namespace,
        "web-0",
        {"status": {"conditions": [{"type": GATE, "status": "True", "reason": "TargetHealthy"}]}},
    )
    wait_for(
        "Ready after the gate turned True",
        lambda: (condition(node.get("pod", "web-0", "-n", namespace), "Ready") or {}).get("status") == "True",
        interval=0.05,
    )
    print(f"gate True -> Ready: {(time.monotonic() - t0) * 1000:.0f} ms", file=sys.stderr)
    assert wide_row(node, namespace, "web-0")["READINESS GATES"] == "1/1"


def test_cluster_ip_answers_through_kube_proxy_once_the_gate_is_true(
    node: SandboxHandle, namespace: str
) -> None:
    """The wiring the node agent cannot give: Endpoints with the pod's bridge address, moved from
    notReadyAddresses to addresses by the gate, and kube-proxy routing the ClusterIP to it."""
    pod = web_pod("web-svc")
    pod["metadata"]["labels"] = {"app": "web-svc"}
    node.apply(pod, namespace)
    node.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web-svc"}, "ports": [{"port": 80, "targetPort": 80}]},
        },
        namespace,
    )
    cluster_ip = node.get("service", "web", "-n", namespace)["spec"]["clusterIP"]
    assert cluster_ip.startswith("10.96."), cluster_ip

    def subsets() -> dict[str, list[str]]:
        ep = node.get("endpoints", "web", "-n", namespace)
        out: dict[str, list[str]] = {"addresses": [], "notReadyAddresses": []}
        for subset in ep.get("subsets") or ():
            for key in out:
                out[key] += [a["ip"] for a in subset.get(key) or ()]
        return out

    pod_ip = wait_for(
        "the pod's address among the Service's notReadyAddresses",
        lambda: (s := subsets())["notReadyAddresses"] and not s["addresses"] and s["notReadyAddresses"][0],
        timeout=60,
    )
    assert pod_ip.startswith("10.244.0.")
    # no ready endpoint: kube-proxy rejects the ClusterIP
    with pytest.raises(urllib.error.URLError, match="refused"):
        http_get(f"http://{cluster_ip}/")
    patch_status(
        node,
        namespace,
        "web-svc",
        {"status": {"conditions": [{"type": GATE, "status": "True", "reason": "TargetHealthy"}]}},
    )
    wait_for("the pod among the Service's addresses", lambda: subsets()["addresses"] == [pod_ip])
    answer = wait_for("the ClusterIP to answer", lambda: _get_or_none(f"http://{cluster_ip}/"), timeout=30)
    assert answer.strip() == "podgate-web web-svc"
    # and from another pod, across the bridge (DNAT on the way in, un-DNAT on the bridged reply);
    # Debian's static busybox wget crashes on -T, so no timeout flag
    client = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "wget",
                    "image": render.WEB_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/wget", "-q", "-O", "-", f"http://{cluster_ip}/"],
                }
            ],
        },
    }
    node.apply(client, namespace)
    phase = wait_for(
        "the client pod to finish",
        lambda: (
            node.get("pod", "client", "-n", namespace)["status"].get("phase") in ("Succeeded", "Failed")
            and node.get("pod", "client", "-n", namespace)["status"]["phase"]
        ),
        timeout=60,
    )
    assert phase == "Succeeded"
    # kubectl logs: API server -> kubelet on the node's address, with its client certificate
    assert node.kubectl("logs", "client", "-n", namespace).strip() == "podgate-web web-svc"


def _get_or_none(url: str) -> str | None:
    try:
        return http_get(url)
    except OSError:
        return None


def test_pods_have_routes_only_to_the_sandbox_ranges(node: SandboxHandle, namespace: str) -> None:
    node.apply(web_pod("web-routes"), namespace)
    wait_for(
        "the pod Running",
        lambda: node.get("pod", "web-routes", "-n", namespace)["status"].get("phase") == "Running",
        timeout=60,
    )
    pids = [int(p) for p in subprocess.run(["pidof", "httpd"], capture_output=True, text=True).stdout.split()]
    assert pids, "no httpd process"
    routes = subprocess.run(
        ["nsenter", "-t", str(pids[0]), "-n", "ip", "route"], capture_output=True, text=True, check=True
    ).stdout
    assert "default" not in routes, routes
    assert "10.96.0.0/16" in routes and "10.244.0.0/24" in routes


def test_sandbox_processes_run_in_the_guarded_cgroup_without_cloud_metadata(node: SandboxHandle) -> None:
    sb = Sandbox(node.state_dir)
    pids = json.loads((node.state_dir / "pids.json").read_text())
    cgroup = sb.node_layout.cgroup
    # every process of a sandbox with a real node, the control plane included
    for name in pids:
        assert f"0::/{cgroup}\n" in Path(f"/proc/{pids[name]}/cgroup").read_text(), name
    assert {"etcd", "kube-apiserver", "containerd", "registry", "kubelet", "kube-proxy", "binder"} <= set(
        pids
    )
    environ = Path(f"/proc/{pids['kubelet']}/environ").read_bytes().split(b"\0")
    assert b"AWS_EC2_METADATA_DISABLED=true" in environ


def test_status_lists_the_node_and_switching_modes_while_up_is_refused(node: SandboxHandle) -> None:
    status = podgate("sandbox", "status", "--state-dir", str(node.state_dir))
    rows = {line.split()[0]: line.split()[2] for line in status.stdout.splitlines()[1:]}
    for name in ("containerd", "registry", "kubelet", "kube-proxy", "binder", "egress-guard", "bridge"):
        assert rows.get(name) == "healthy", status.stdout
    switch = podgate("sandbox", "up", "--node", "agent", "--state-dir", str(node.state_dir))
    assert switch.returncode != 0 and "sandbox down" in switch.stderr, switch.stderr


# -- nginx, and podgate on the real node ------------------------------------------------------


def nginx_pod(name: str, image: str) -> dict[str, Any]:
    """A pod as written for nginx: no pull policy, no local name."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "nginx", "image": image, "ports": [{"containerPort": 80}]}]},
    }


def pod_events(node: SandboxHandle, namespace: str, name: str) -> list[str]:
    items = node.get("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]
    return [f"{e['reason']}: {e['message']}" for e in items]


def test_manifests_written_for_nginx_run_debians_nginx(node: SandboxHandle, namespace: str) -> None:
    """Seed 000's image name and Docker Hub's ``nginx`` (tag latest: the kubelet always pulls it)
    run the local nginx; the first without any pull, the second pulled from the node's loopback
    registry; a name the node does not have fails at once, asking nobody else."""
    node.apply(nginx_pod("seed", SEED_IMAGE), namespace)
    node.apply(nginx_pod("hub", "nginx"), namespace)
    node.apply(nginx_pod("elsewhere", "quay.io/podgate-test/missing:1"), namespace)
    for name in ("seed", "hub"):
        pod = wait_for(
            f"{name} Running and Ready",
            lambda name=name: (  # type: ignore[misc]
                p
                if (condition(p := node.get("pod", name, "-n", namespace), "Ready") or {}).get("status")
                == "True"
                else None
            ),
            timeout=60,
        )
        with urllib.request.urlopen(f"http://{pod['status']['podIP']}/", timeout=5) as r:
            assert r.headers["Server"].startswith("nginx/"), r.headers
            assert r.headers["X-Pod-Name"] == name
            assert "Welcome to nginx!" in r.read().decode()
    seed_events = pod_events(node, namespace, "seed")
    assert any("already present on machine" in e for e in seed_events), seed_events
    assert not any(e.startswith("Pulling") for e in seed_events), seed_events
    assert node.get("pod", "hub", "-n", namespace)["spec"]["containers"][0]["imagePullPolicy"] == "Always"
    assert any(
        e.startswith('Pulled: Successfully pulled image "nginx"') for e in pod_events(node, namespace, "hub")
    )
    failed = wait_for(
        "the unknown image's pull to fail",
        lambda: [
            e for e in pod_events(node, namespace, "elsewhere") if e.startswith("Failed: Failed to pull")
        ],
        timeout=30,
    )
    assert "not found" in failed[0], failed
    registry_log = (node.state_dir / "logs" / "registry.log").read_text()
    assert (
        "manifest library/nginx:latest" in registry_log and "unknown: podgate-test/missing:1" in registry_log
    )


def test_nothing_on_the_node_tried_to_leave_the_sandbox(node: SandboxHandle) -> None:
    """After pods ran, a ClusterIP was served and the node lived a while, the guard's final
    REJECT never matched, IPv4 or IPv6: no node process (the kubelet's AWS credential provider
    included: it is told not to) tried the cloud metadata address, a DNS server or anything else
    outside.  (conntrack cannot say which process made a flow, so it is not asked.)"""
    chain = Sandbox(node.state_dir).node_layout.guard_chain
    for tool in ("iptables", "ip6tables"):
        listing = subprocess.run(
            [tool, "-L", chain, "-v", "-n", "-x"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        last = listing[-1].split()
        assert last[2] == "REJECT" and last[0] == "0", (tool, listing)


def _connect_from_node_cgroup(cgroup_procs: Path, host: str, port: int) -> str:
    """Connect from a process inside the node's cgroup; returns "connected" or the error."""
    code = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(({host!r}, {port}), timeout=3); print('connected')\n"
        "except OSError as e:\n"
        "    print(type(e).__name__)\n"
    )

    def join() -> None:
        cgroup_procs.write_text(f"{os.getpid()}\n")

    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=join, check=True, timeout=10
    ).stdout.strip()


def test_egress_guard_rejects_what_it_is_told_to_from_the_node_cgroup(node: SandboxHandle) -> None:
    host = NodeHost(Sandbox(node.state_dir).node_layout)
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind((PROBE_ADDRESS, 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        # the same listener answers the node's cgroup while the guard allows loopback ...
        assert _connect_from_node_cgroup(host.cgroup_procs, PROBE_ADDRESS, port) == "connected"
        host.set_test_rejects([PROBE_ADDRESS])
        stack.callback(host.set_test_rejects, [])
        # ... and is refused once the guard is told to reject its address
        assert _connect_from_node_cgroup(host.cgroup_procs, PROBE_ADDRESS, port) == "ConnectionRefusedError"
        # processes outside the node's cgroup are not affected
        with socket.create_connection((PROBE_ADDRESS, port), timeout=3):
            pass
        rules = subprocess.run(
            ["iptables", "-L", host.n.guard_chain, "-v", "-n", "-x"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        counted = [line.split() for line in rules.splitlines() if PROBE_ADDRESS in line]
        assert counted and int(counted[0][0]) >= 1, rules


def test_down_leaves_the_machine_as_it_was(node: SandboxHandle, before: dict[str, Any]) -> None:
    pids = json.loads((node.state_dir / "pids.json").read_text())
    t0 = time.monotonic()
    down = podgate("sandbox", "down", "--state-dir", str(node.state_dir), timeout=180)
    assert down.returncode == 0, down.stderr
    print(f"sandbox down --node kubelet: {time.monotonic() - t0:.1f}s", file=sys.stderr)
    after = machine(node.state_dir)
    for key in before:
        assert after[key] == before[key], key
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or _comm(int(pid)) == "", pid
