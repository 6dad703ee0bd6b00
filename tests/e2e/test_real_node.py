"""The real node (``podgate sandbox up --node kubelet``): kubelet, containerd, runc, a CNI bridge
and kube-proxy, fenced by the egress guard, and a ``down`` that leaves the machine as it was.

One sandbox for the module, on its own state directory, ports and ranges; select these tests
with ``-m real_node``.  Run them (like every e2e test) under the shared lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from podgate.kube.client import api_client
from podgate.model import gates
from podgate.providers.haproxy_runtime import Runtime
from podgate_sandbox import processes
from podgate_sandbox.controlplane import CONTROLLER_NAMESPACE, DEPLOYED_BACKEND, Sandbox
from podgate_sandbox.image import build
from podgate_sandbox.loadgen import LoadGenerator
from podgate_sandbox.node import render
from podgate_sandbox.node.host import UNIFIED, NodeHost, iptables_save, sysctls
from podgate_sandbox.rollout import RolloutLab, summarise

from .conftest import (
    GRANTED_TO,
    SandboxHandle,
    condition,
    grant,
    kubernetes_args,
    podgate,
    sandbox_kubectl,
    wait_for,
    wide_row,
)
from .test_controller import INJECT, all_ready, external_ip, gate, pods, servers
from .test_lb_selection import ALIBABA_GATE, ALIBABA_LABEL, SEED_IMAGE, seed_manifests
from .test_webhook_replicas import front_door_up

pytestmark = pytest.mark.real_node

OFFSET = 12000
POD_CIDR = "127.112.0.0/16"
LB_CIDR = "127.212.0.0/16"
NODE_POD_CIDR = "10.244.0.0/24"
GATE = "example.com/lb-healthy"
#: a loopback address the guard is told to reject, to prove it rejects (never an outside one)
PROBE_ADDRESS = "127.77.0.1"
ROOT = Path(__file__).resolve().parents[2]
#: deploy/overlays/sandbox's image
DEPLOYED_IMAGE = "localhost/podgate:0.1.0"
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
        *kubernetes_args(),
        timeout=300,
    )
    handle = SandboxHandle(state, state / "kubeconfig", sandbox_kubectl(state))
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
        # pods get projected tokens (1.24+ makes no token Secrets): the account is enough
        wait_for(
            "the default ServiceAccount",
            lambda: "default" in handle.kubectl("get", "serviceaccount", "-n", "default", check=False),
        )
        yield handle
    finally:
        podgate("sandbox", "down", "--state-dir", str(state), timeout=180)


@pytest.fixture
def namespace(node: SandboxHandle) -> Iterator[str]:
    name = f"rn-{uuid.uuid4().hex[:8]}"
    node.kubectl("create", "namespace", name)
    wait_for(
        "the namespace's default ServiceAccount",
        lambda: "default" in node.kubectl("get", "serviceaccount", "-n", name, check=False),
    )
    yield name
    node.kubectl("delete", "namespace", name, "--wait=false", check=False)
    node.kubectl("delete", "loadbalancergroupgrants", "-l", f"{GRANTED_TO}={name}", check=False)


def has_token(pod: dict[str, Any]) -> bool:
    """Whether the ServiceAccount admission plugin gave a pod its projected API token volume."""
    return any(
        "serviceAccountToken" in source
        for v in pod["spec"].get("volumes") or ()
        for source in (v.get("projected") or {}).get("sources") or ()
    )


def patch_status(node: SandboxHandle, namespace: str, pod: str, body: dict[str, Any]) -> None:
    """A strategic-merge patch of pods/status, as a user sends it: ``kubectl patch
    --subresource=status`` (kubectl 1.24+)."""
    node.kubectl(
        "patch",
        "pod",
        pod,
        "-n",
        namespace,
        "--subresource=status",
        "--type=strategic",
        "-p",
        json.dumps(body),
    )


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


def http_get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
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
    # the ServiceAccount admission plugin is on: the pod has a projected token
    assert has_token(pod)
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


def _get_or_none(url: str, timeout: float = 5) -> str | None:
    try:
        return http_get(url, timeout)
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


@pytest.fixture(scope="module")
def controller(node: SandboxHandle) -> SandboxHandle:
    """The sandbox's own podgate controller (a host process, as with the node agent), started
    on the real node's sandbox by a second, idempotent ``up``."""
    up = podgate("sandbox", "up", "--state-dir", str(node.state_dir), timeout=120)
    assert up.returncode == 0, up.stderr
    wait_for("the webhook front door", lambda: front_door_up(OFFSET), timeout=30)
    return node


@pytest.mark.parametrize("opt_in", ["podgate", "alibaba"])
def test_seed_000_flow_real_nginx_through_the_external_ip(
    controller: SandboxHandle, namespace: str, opt_in: str
) -> None:
    """The namespace opted in (podgate's label: the webhook injects the gate; or Alibaba's
    procedure verbatim, its gate in the template), ``my-svc`` through the sandbox's HAProxy and
    ``my-nginx`` with seed 000's image: the pods turn Ready only once HAProxy says UP, and real
    nginx answers through the EXTERNAL-IP."""
    node = controller
    service, nginx = seed_manifests()
    if opt_in == "podgate":
        node.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
        del nginx["spec"]["template"]["spec"]["readinessGates"]
        want = [gate("my-svc")]
    else:
        node.kubectl("label", "namespace", namespace, f"{ALIBABA_LABEL}=enabled")
        want = [ALIBABA_GATE, gate("my-svc")]  # the template's, and podgate's for the label
    node.apply(service, namespace)
    node.apply(nginx, namespace)
    be = f"podgate.{namespace}.my-svc.80"
    seen_pending = False
    ready: list[dict[str, Any]] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not ready:
        current = pods(node, namespace, "nginx")
        up = {s.address for s in servers(node, be) if s.status.startswith("UP")}
        for p in current:
            if (condition(p, "Ready") or {}).get("status") == "True":
                assert f"{p['status']['podIP']}:80" in up, (
                    f"{p['metadata']['name']} Ready before HAProxy said UP"
                )
            elif (condition(p, "ContainersReady") or {}).get("status") == "True":
                seen_pending = True
        if len(current) == 2 and all((condition(p, "Ready") or {}).get("status") == "True" for p in current):
            ready = current
        time.sleep(0.1)
    assert ready, f"my-nginx pods not Ready: {pods(node, namespace, 'nginx')}"
    assert seen_pending, "containers were ready while the gate held the pods back"
    for p in ready:
        assert p["status"]["podIP"].startswith("10.244.0.")
        assert sorted(g["conditionType"] for g in p["spec"]["readinessGates"]) == sorted(want)
        for t in want:
            assert (condition(p, t) or {}).get("reason") == "TargetHealthy", (t, condition(p, t))
        assert (
            wide_row(node, namespace, p["metadata"]["name"])["READINESS GATES"] == f"{len(want)}/{len(want)}"
        )
    ip = wait_for("an EXTERNAL-IP", lambda: external_ip(node, namespace, "my-svc"))
    assert ip.startswith("127.212.")
    seen = set()
    for _ in range(8):
        with urllib.request.urlopen(f"http://{ip}/", timeout=5) as r:
            assert r.headers["Server"].startswith("nginx/") and "Welcome to nginx!" in r.read().decode()
            seen.add(r.headers["X-Pod-Name"])
    assert seen == {p["metadata"]["name"] for p in ready}


async def test_gated_rollout_restart_under_load_loses_nothing_the_plain_one_does(
    controller: SandboxHandle,
) -> None:
    """``kubectl rollout restart``'s change under 250 requests/s through the EXTERNAL-IP, real
    nginx pods on the real node: with podgate's gates no request fails; with a readiness probe
    only, requests fail while HAProxy has no healthy pod."""
    api = await api_client(str(controller.kubeconfig))
    # Two replicas: the Deployment's default surge lets one new pod in and takes one old pod out
    # as soon as the new one is Ready, so without gates the last old pod goes about a second after
    # the first new one is Ready, before HAProxy's three 1 s checks call it UP.
    lab = RolloutLab(
        api,
        str(controller.state_dir / "haproxy" / "runtime.sock"),
        replicas=2,
        interval=1.0,
        rise=3,
        rate=250,
        prefix="rn-rollout",
    )
    try:
        ips = {name: await lab.prepare(name) for name in ("plain", "podgate")}
        rounds = [await lab.round(name, ips[name], 1) for name in ips]
    finally:
        await lab.close()
        await api.close()
        for name in ("plain", "podgate"):
            controller.kubectl("delete", "namespace", lab.namespace(name), "--wait=false", check=False)
    summary = summarise(rounds, lab.lb_minimum)
    print(f"real node rollout: {json.dumps(summary)}", file=sys.stderr)
    assert all(r.requests >= 200 * r.rollout_s for r in rounds), "at least 200 requests/s throughout"
    assert summary["podgate"]["failed"] == 0, summary["podgate"]
    assert summary["plain"]["failed"] > 0 and summary["plain"]["failed_by_kind"].get("http_5xx", 0) > 0
    gate_latency = summary["podgate"]["gate_latency_s"]
    assert gate_latency["n"] == 2 and gate_latency["p50"] >= 0.9 * lab.lb_minimum, gate_latency


def test_termination_real_sigterm_after_the_pod_left_the_load_balancer(
    controller: SandboxHandle, namespace: str
) -> None:
    """A gated nginx pod deleted: podgate drains it in HAProxy at once; the webhook's injected
    preStop delay keeps nginx serving meanwhile; then the container gets a real SIGTERM (nginx logs
    it and exits 0, well within the grace period) and HAProxy forgets the pod.  The delay is the
    kubelet's native ``sleep`` action (1.30+; chosen by discovery), which needs no sleep binary in
    the image: the kubelet itself waits."""
    node = controller
    node.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    service, nginx = seed_manifests()
    template = nginx["spec"]["template"]
    del template["spec"]["readinessGates"]
    nginx["spec"]["replicas"] = 1
    template["metadata"]["annotations"] = {"podgate.dev/prestop-delay": "2"}
    template["spec"]["terminationGracePeriodSeconds"] = 30
    node.apply(service, namespace)
    node.apply(nginx, namespace)
    pod = wait_for("my-nginx Ready", lambda: all_ready(node, namespace, "nginx", 1), 90)[0]
    name, addr = pod["metadata"]["name"], f"{pod['status']['podIP']}:80"
    assert pod["spec"]["containers"][0]["lifecycle"]["preStop"] == {"sleep": {"seconds": 2}}
    be = f"podgate.{namespace}.my-svc.80"
    # nginx's own log, streamed (API server -> kubelet), each line with the moment it arrived
    logs = subprocess.Popen(
        [str(node.kubectl_path), "logs", "-f", name, "-n", namespace],
        env={**os.environ, "KUBECONFIG": str(node.kubeconfig)},
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(
        target=lambda: [lines.append((time.monotonic(), line)) for line in logs.stdout or ()], daemon=True
    )
    reader.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    node.kubectl("delete", "pod", name, "-n", namespace, "--wait=false")
    left_lb: float | None = None
    served_while_draining = False
    while time.monotonic() - t0 < 20 and logs.poll() is None:
        state = {s.address: s.status for s in servers(node, be)}
        if left_lb is None and not state.get(addr, "").startswith("UP"):
            left_lb = time.monotonic()
        if left_lb is not None and not any("SIGTERM" in line for _, line in lines):
            served_while_draining |= _get_or_none(f"http://{addr}/healthz") == "ok\n"
        time.sleep(0.05)
    logs.wait(10)
    reader.join(5)
    sigterm = [t for t, line in lines if "signal 15 (SIGTERM) received" in line]
    assert sigterm, [line for _, line in lines]
    assert left_lb is not None and left_lb < sigterm[0], (left_lb, sigterm, t0)
    assert sigterm[0] - left_lb >= 1.5, "the injected preStop delay ran between the drain and SIGTERM"
    assert served_while_draining, "nginx kept serving while HAProxy drained it"
    assert sigterm[0] - t0 < 10, "SIGTERM came after the preStop delay, not the grace period's SIGKILL"
    wait_for(
        "the server removed from HAProxy", lambda: addr not in {s.address for s in servers(node, be)}, 20
    )
    wait_for(
        "the pod gone", lambda: name not in node.kubectl("get", "pods", "-n", namespace, "-o", "name"), 30
    )


# -- ipMode: Proxy, native sidecars ---------------------------------------------------------------


def backend_sessions(node: SandboxHandle, backend: str) -> int:
    """HAProxy's own count of sessions a backend took (``show stat``, column ``stot``)."""
    rt = Runtime(str(node.state_dir / "haproxy" / "runtime.sock"))
    lines = asyncio.run(rt.command("show stat")).splitlines()
    header = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == backend and row.get("svname") == "BACKEND":
            return int(row["stot"])
    raise AssertionError(f"HAProxy has no backend {backend}")


def sessions_during(node: SandboxHandle, backend: str, action: Callable[[], None]) -> int:
    """How many sessions ``backend`` took while ``action`` ran, as one HAProxy worker counted
    them.  A worker's counters start at 0, and a reload meanwhile (another test's Service came
    or went) hands the count to a new worker, which may or may not have seen the traffic: such
    an attempt proves nothing either way, so the action runs again, up to three times."""

    def worker() -> str:
        return asyncio.run(Runtime(str(node.state_dir / "haproxy" / "runtime.sock")).identity())

    for _ in range(3):
        counted_by, before = worker(), backend_sessions(node, backend)
        action()
        after = backend_sessions(node, backend)
        if worker() == counted_by:
            return after - before
    raise AssertionError(f"HAProxy reloaded during each of three attempts to count {backend}'s sessions")


def iptables_rules(table: str) -> str:
    return subprocess.run(
        ["iptables", "-w", "-t", table, "-S"], capture_output=True, text=True, check=True
    ).stdout


def deployment(name: str, app: str, replicas: int, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}}, "spec": spec},
        },
    }


def lb_service(name: str, app: str, target_port: int | str, **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": app},
            "ports": [{"port": 80, "targetPort": target_port}],
        },
    }


#: an address outside the sandbox's load-balancer range, for a Service podgate does not serve
UNSERVED_IP = "127.78.0.1"


def test_external_ip_is_proxy_mode_so_kube_proxy_leaves_it_to_haproxy(
    controller: SandboxHandle, namespace: str
) -> None:
    """podgate publishes its HAProxy address with ``ipMode: Proxy``: kube-proxy writes no rule
    for it, so the node's own clients (the host, a hostNetwork pod) reach HAProxy, whose
    counters move, with no NOTRACK rule on the node.  The control, on the same node: kube-proxy
    takes the host's connections to an ingress IP without the field away from a load balancer
    listening there (seen: they time out, reaching neither), and leaves them once it is set."""
    node = controller
    node.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    node.apply(lb_service("web", "pm", 80), namespace)
    nginx = {"containers": [{"name": "nginx", "image": SEED_IMAGE, "ports": [{"containerPort": 80}]}]}
    node.apply(deployment("pm", "pm", 1, nginx), namespace)
    pod = wait_for("the pod Ready behind HAProxy", lambda: all_ready(node, namespace, "pm", 1), 90)[0]
    ip = wait_for("an EXTERNAL-IP", lambda: external_ip(node, namespace, "web"))
    assert ip.startswith("127.212."), ip
    mode = node.kubectl(
        "get", "svc", "web", "-n", namespace, "-o", "jsonpath={.status.loadBalancer.ingress[0].ipMode}"
    )
    assert mode == "Proxy"
    assert "NOTRACK" not in iptables_rules("raw")
    cluster_ip = node.get("service", "web", "-n", namespace)["spec"]["clusterIP"]
    wait_for("kube-proxy's rules for the Service", lambda: f"-d {cluster_ip}/32" in iptables_rules("nat"))
    assert f"-d {ip}/32" not in iptables_rules("nat")

    be = f"podgate.{namespace}.web.80"

    def from_host() -> None:
        for _ in range(20):
            with urllib.request.urlopen(f"http://{ip}/", timeout=5) as r:
                assert (
                    r.headers["X-Pod-Name"] == pod["metadata"]["name"]
                    and "Welcome to nginx!" in r.read().decode()
                )

    assert sessions_during(node, be, from_host) >= 20

    # an in-cluster client on the node: a hostNetwork pod (the kubepods cgroup, the node's network)
    attempt = iter(range(100))

    def from_a_host_network_pod() -> None:
        name = f"on-node-{next(attempt)}"
        client = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "hostNetwork": True,
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "wget",
                        "image": render.WEB_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/wget", "-q", "-O", "-", f"http://{ip}/healthz"],
                    }
                ],
            },
        }
        node.apply(client, namespace)
        phase = wait_for(
            "the hostNetwork client to finish",
            lambda: (
                node.get("pod", name, "-n", namespace)["status"].get("phase") in ("Succeeded", "Failed")
                and node.get("pod", name, "-n", namespace)["status"]["phase"]
            ),
            timeout=60,
        )
        assert phase == "Succeeded", node.kubectl("logs", name, "-n", namespace, check=False)
        assert node.kubectl("logs", name, "-n", namespace).strip() == "ok"

    assert sessions_during(node, be, from_a_host_network_pod) >= 1

    # the control: a load balancer of its own at an ingress IP without ipMode (a Service podgate
    # does not serve, its status written by hand) is bypassed, kube-proxy takes its traffic;
    # once the field is there kube-proxy lets go and the load balancer gets it
    with own_load_balancer(UNSERVED_IP) as reached:
        node.apply(lb_service("unserved", "pm", 80, **{gates.PROVIDER_ANNOTATION: "none"}), namespace)
        ingress = {"ip": UNSERVED_IP}
        write_ingress(node, namespace, "unserved", ingress)
        wait_for(
            "kube-proxy's rule for an ingress IP without ipMode",
            lambda: f"-d {UNSERVED_IP}/32" in iptables_rules("nat"),
        )
        answer = _get_or_none(f"http://{UNSERVED_IP}/", timeout=2)
        assert reached == [] and answer != "own load balancer\n", answer
        write_ingress(node, namespace, "unserved", ingress | {"ipMode": "Proxy"})
        wait_for("kube-proxy to drop the rule", lambda: f"-d {UNSERVED_IP}/32" not in iptables_rules("nat"))
        assert http_get(f"http://{UNSERVED_IP}/") == "own load balancer\n"
        assert len(reached) == 1


@contextlib.contextmanager
def own_load_balancer(address: str) -> Iterator[list[str]]:
    """An HTTP server on ``address``:80 playing a load balancer: the paths it was asked for."""
    reached: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            reached.append(self.path)
            body = b"own load balancer\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((address, 80), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield reached
    finally:
        server.shutdown()
        server.server_close()


def write_ingress(node: SandboxHandle, namespace: str, service: str, ingress: dict[str, str]) -> None:
    patch = {"status": {"loadBalancer": {"ingress": [ingress]}}}
    node.kubectl(
        "patch",
        "svc",
        service,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(patch),
    )


#: the native sidecar: a TCP proxy (busybox nc, one process per connection) in front of the main
#: container, logging its SIGTERM
PROXY_SCRIPT = (
    "trap 'echo proxy: SIGTERM; exit 0' TERM; echo proxy: up; "
    "/bin/busybox nc -ll -p 8080 -e /bin/busybox nc 127.0.0.1 80 & wait"
)
#: the main container: the web image's httpd, logging its SIGTERM and, a second later, its exit
WEB_LOGGED_SCRIPT = (
    'mkdir -p /www && echo "podgate-web $HOSTNAME" > /www/index.html && '
    "trap 'echo web: SIGTERM; sleep 1; echo web: exiting; exit 0' TERM; "
    "httpd -f -p 80 -h /www & wait"
)


def sidecar_pod_spec() -> dict[str, Any]:
    return {
        "terminationGracePeriodSeconds": 30,
        "initContainers": [
            {
                "name": "proxy",
                "image": render.WEB_IMAGE,
                "imagePullPolicy": "Never",
                "restartPolicy": "Always",
                "command": ["/bin/sh", "-c", PROXY_SCRIPT],
                "ports": [{"name": "proxy", "containerPort": 8080}],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
            }
        ],
        "containers": [
            {
                "name": "web",
                "image": render.WEB_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", WEB_LOGGED_SCRIPT],
                "ports": [{"containerPort": 80}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 1},
            }
        ],
    }


LOG_LINE = re.compile(r"^\[pod/(?P<pod>[^/\]]+)/(?P<container>[^\]]+)\] (?P<at>\S+) (?P<text>.*)$")


def log_time(stamp: str) -> float:
    """A CRI log timestamp (RFC 3339, up to nanoseconds, trailing zeros trimmed) in seconds."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    t = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC).timestamp()
    return t + float(f"0.{fraction or '0'}")


@contextlib.contextmanager
def following(node: SandboxHandle, *args: str) -> Iterator[list[str]]:
    """A streaming kubectl command (``logs -f``, ``get -w``) in the background: its lines so far."""
    proc = subprocess.Popen(
        [str(node.kubectl_path), *args],
        env={**os.environ, "KUBECONFIG": str(node.kubeconfig)},
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        yield lines
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(5)


def terminating(node: SandboxHandle, namespace: str, app: str) -> dict[str, str]:
    """The pods of ``app`` being deleted: name → address."""
    return {
        p["metadata"]["name"]: p["status"]["podIP"]
        for p in node.get("pods", "-n", namespace, "-l", f"app={app}")["items"]
        if p["metadata"].get("deletionTimestamp")
    }


def sidecars_served(
    node: SandboxHandle, namespace: str, leaving: dict[str, str], lines: list[str]
) -> dict[str, int]:
    """Until the leaving pods are gone: how often each one's sidecar answered on the pod's own
    address (port 8080) for the main container, up to the main container's last log line."""
    served = dict.fromkeys(leaving, 0)
    deadline = time.monotonic() + 60
    while set(leaving) & {p["metadata"]["name"] for p in node.get("pods", "-n", namespace)["items"]}:
        assert time.monotonic() < deadline, f"{sorted(leaving)} still there after 60s"
        for name, ip in leaving.items():
            if not any(line.startswith(f"[pod/{name}/web] ") and "web: exiting" in line for line in lines):
                served[name] += _get_or_none(f"http://{ip}:8080/") == f"podgate-web {name}\n"
        time.sleep(0.1)
    return served


def container_finished(updates: list[str], names: Iterable[str]) -> dict[tuple[str, str], str]:
    """Each container's ``finishedAt`` as the kubelet last reported it, from ``kubectl get -w -o
    json``'s stream of pods (one JSON document per update)."""
    decoder, text, out, i = json.JSONDecoder(), "".join(updates), {}, 0
    while (i := len(text) - len(text[i:].lstrip())) < len(text):
        pod, i = decoder.raw_decode(text, i)
        status = pod.get("status") or {}
        for c in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
            if pod["metadata"]["name"] in names and (t := (c.get("state") or {}).get("terminated")):
                out[(pod["metadata"]["name"], c["name"])] = t["finishedAt"]
    return out


async def test_native_sidecar_in_the_traffic_path_outlives_the_drain_scale_down_loses_nothing(
    controller: SandboxHandle, namespace: str
) -> None:
    """Pods whose load-balanced port is a native sidecar (a restartable init container proxying
    to the main container), scaled from 3 to 1 under load through the EXTERNAL-IP: podgate
    registers the sidecar's named port and hooks its drain on the main container only; the real
    kubelet runs it, SIGTERMs the main container, and stops the sidecar only once the main
    container has exited, so the sidecar carries every request through the drain: none fails."""
    node = controller
    node.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    node.apply(lb_service("web", "sc", "proxy"), namespace)
    node.apply(deployment("sc", "sc", 3, sidecar_pod_spec()), namespace)
    ready = wait_for("3 pods Ready", lambda: all_ready(node, namespace, "sc", 3), 120)
    for p in ready:
        spec = p["spec"]
        assert [g["conditionType"] for g in spec["readinessGates"]] == [gate("web")]
        hook = spec["containers"][0]["lifecycle"]["preStop"]["httpGet"]
        assert hook["path"] == f"{gates.DRAIN_PATH}/{namespace}", hook
        assert spec["initContainers"][0]["restartPolicy"] == "Always"
        assert "lifecycle" not in spec["initContainers"][0], spec["initContainers"][0]
    ip = wait_for("an EXTERNAL-IP", lambda: external_ip(node, namespace, "web"))
    be = f"podgate.{namespace}.web.80"
    up = {s.address for s in await asyncio.to_thread(servers, node, be) if s.status.startswith("UP")}
    assert up == {f"{p['status']['podIP']}:8080" for p in ready}, up
    drain_log = node.state_dir / "logs" / "podgate-controller.log"

    # what a user watches: every container's log with its runtime timestamp, and the pods' updates
    logs = ("logs", "-f", "-n", namespace, "-l", "app=sc", "--all-containers", "--prefix", "--timestamps")
    watch = ("get", "pods", "-n", namespace, "-l", "app=sc", "-w", "-o", "json")
    with following(node, *logs, "--max-log-requests=10") as lines, following(node, *watch) as updates:
        await asyncio.sleep(1.0)
        load = LoadGenerator(f"http://{ip}/", rate=150, max_seconds=120)
        running = asyncio.create_task(load.run())
        try:
            await asyncio.sleep(2.0)
            await asyncio.to_thread(node.kubectl, "scale", "deployment/sc", "-n", namespace, "--replicas=1")
            leaving = await asyncio.to_thread(
                wait_for,
                "two pods terminating",
                lambda: t if len(t := terminating(node, namespace, "sc")) == 2 else None,
                10,
            )
            served = await asyncio.to_thread(sidecars_served, node, namespace, leaving, lines)
            await asyncio.sleep(1.0)
        finally:
            load.stop()
            result = await running
    print(f"sidecar scale-down: {result.total} requests, {dict(result.by_kind())}", file=sys.stderr)
    assert result.total >= 500 and result.failed == 0, result.by_kind()

    # the drain hook ran once per leaving pod: the main container's (the sidecar has none)
    drains = drain_log.read_text()
    for name in leaving:
        assert drains.count(f"drained {namespace}/{name} in ") == 1, name
        events = pod_events(node, namespace, name)
        assert not [e for e in events if e.startswith("FailedPreStopHook")], events
        assert {"Killing: Stopping container web", "Killing: Stopping container proxy"} <= set(events), events
    # the order, from the containers' own lines as the runtime stamped them: the sidecar got its
    # SIGTERM only after the main container had exited, and answered until then
    stamped: dict[tuple[str, str], float] = {}
    for line in lines:
        m = LOG_LINE.match(line.rstrip("\n"))
        if m and m["text"] in ("web: SIGTERM", "web: exiting", "proxy: SIGTERM"):
            stamped[(m["pod"], m["text"])] = log_time(m["at"])
    for name in leaving:
        term, exiting, proxy = (
            stamped.get((name, t)) for t in ("web: SIGTERM", "web: exiting", "proxy: SIGTERM")
        )
        assert term and exiting and proxy, (name, stamped)
        assert term < exiting < proxy, (name, term, exiting, proxy)
        assert served[name] > 0, f"{name}'s sidecar answered nothing while the pod terminated"
    # and the containers' terminated states as the kubelet reported them (whole seconds)
    finished = container_finished(updates, leaving)
    for name in leaving:
        assert finished.get((name, "web")) and finished.get((name, "proxy")), finished
        assert finished[(name, "web")] <= finished[(name, "proxy")], finished


@pytest.fixture(scope="module")
def podgate_image(node: SandboxHandle, tmp_path_factory: pytest.TempPathFactory) -> str:
    """podgate's image as ``make image`` builds it, imported into the node's containerd under the
    name deploy/overlays/sandbox gives it."""
    archive = build(tmp_path_factory.mktemp("image") / "podgate-image.tar")
    imported = podgate("sandbox", "import", str(archive), "--state-dir", str(node.state_dir), timeout=180)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.split() == ["imported", DEPLOYED_IMAGE]
    return DEPLOYED_IMAGE


def lease_holder(node: SandboxHandle) -> str:
    """The pod leading (the controller's identity is ``<host name>-<pid>``; a pod's host name is
    its name)."""
    lease = node.get("lease", "podgate-controller", "-n", CONTROLLER_NAMESPACE)
    return str(lease["spec"].get("holderIdentity") or "").rsplit("-", 1)[0]


def test_podgate_deployed_from_its_image_two_replicas_through_deploy(
    controller: SandboxHandle, podgate_image: str, namespace: str
) -> None:
    """``kubectl apply -k deploy/overlays/sandbox``: two replicas from podgate's image, in-cluster
    configuration from their token (through the ``kubernetes`` Service), the webhook reached
    through its Service, leader election on its Lease.  Pods created one after another in a
    labelled namespace, the leader deleted mid-way: every pod is gated (no admission failed
    open) and turns Ready behind the sandbox's HAProxy."""
    node = controller
    sb = Sandbox(node.state_dir)
    # the sandbox's own (host) controller leaves: the deployed podgate is the only one
    own = next(c for c in sb.components() if c.name == "podgate-controller")
    processes.stop(json.loads((node.state_dir / "pids.json").read_text())["podgate-controller"], own.marker)
    node.kubectl(
        "delete",
        "mutatingwebhookconfiguration,validatingwebhookconfiguration",
        "podgate-sandbox",
        check=False,
    )
    assert "podgate-sandbox" not in node.kubectl("get", "mutatingwebhookconfiguration", "-o", "name")
    # the kubernetes Service's endpoint is the node's address (HAProxy forwards it to the API server)
    ep = node.get("endpoints", "kubernetes", "-n", "default")
    assert [a["ip"] for a in ep["subsets"][0]["addresses"]] == [sb.node_layout.node_ip], ep

    applied = node.kubectl("apply", "-k", str(ROOT / "deploy" / "overlays" / "sandbox"))
    assert "deployment.apps/podgate created" in applied, applied
    replicas = wait_for(
        "two podgate replicas Ready",
        lambda: (
            ps
            if len(
                ps := node.get("pods", "-n", CONTROLLER_NAMESPACE, "-l", "app.kubernetes.io/name=podgate")[
                    "items"
                ]
            )
            == 2
            and all((condition(p, "Ready") or {}).get("status") == "True" for p in ps)
            else None
        ),
        timeout=120,
    )
    for p in replicas:
        assert p["spec"]["containers"][0]["image"] == podgate_image
        assert p["spec"]["nodeName"] == "podgate-node" and p["status"]["podIP"].startswith("10.244.0.")
        assert has_token(p)
    names = {p["metadata"]["name"] for p in replicas}
    leader = wait_for("a leader among the replicas", lambda: (h := lease_holder(node)) in names and h, 60)
    hook = node.get("mutatingwebhookconfiguration", "podgate")["webhooks"][0]["clientConfig"]
    assert hook["service"] == {
        "namespace": CONTROLLER_NAMESPACE,
        "name": "podgate",
        "path": "/mutate-pods",
        "port": 443,
    }
    assert "url" not in hook

    node.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    grant(node, "haproxy", namespace, DEPLOYED_BACKEND)
    node.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "web",
                "annotations": {
                    "podgate.dev/load-balancer-provider": "haproxy",
                    "podgate.dev/haproxy-backend": DEPLOYED_BACKEND,
                },
            },
            "spec": {
                "type": "LoadBalancer",
                "selector": {"app": "web"},
                "ports": [{"port": 80, "targetPort": 80}],
            },
        },
        namespace,
    )
    apiserver_log = node.state_dir / "logs" / "kube-apiserver.log"
    failed_calls_before = apiserver_log.read_text().count("failed calling webhook")
    # 24 pods, one every half second; the leader is deleted at the fifth: it leaves the webhook's
    # endpoints at once, serves out its 5 s preStop, then stops; the last third or so of the pods
    # exist only after it is gone, so only the new leader can open their gates
    count = 24
    for i in range(count):
        if i == 4:
            node.kubectl("delete", "pod", leader, "-n", CONTROLLER_NAMESPACE, "--wait=false")
        pod = nginx_pod(f"web-{i}", SEED_IMAGE)
        pod["metadata"]["labels"] = {"app": "web"}
        node.apply(pod, namespace)
        time.sleep(0.5)
    created = node.get("pods", "-n", namespace, "-l", "app=web")["items"]
    assert len(created) == count
    ungated = [p["metadata"]["name"] for p in created if not p["spec"].get("readinessGates")]
    assert ungated == [], "admitted without the webhook (failurePolicy Ignore)"
    assert apiserver_log.read_text().count("failed calling webhook") == failed_calls_before
    ready = wait_for(
        "every pod Ready behind HAProxy",
        lambda: (
            ps
            if len(ps := node.get("pods", "-n", namespace, "-l", "app=web")["items"]) == count
            and all((condition(p, "Ready") or {}).get("status") == "True" for p in ps)
            else None
        ),
        timeout=150,
    )
    for p in ready:
        assert (condition(p, gate("web")) or {}).get("reason") == "TargetHealthy"
    up = {s.address for s in servers(node, DEPLOYED_BACKEND) if s.status.startswith("UP")}
    assert up == {f"{p['status']['podIP']}:80" for p in ready}
    new_leader = lease_holder(node)
    assert new_leader and new_leader != leader, (leader, new_leader)
    with urllib.request.urlopen(f"http://{sb.deployed_lb_address}/", timeout=5) as r:
        assert r.headers["Server"].startswith("nginx/") and r.headers["X-Pod-Name"].startswith("web-")

    # the drain hook as a cluster wires it: the real kubelet (of the sandbox's release: 1.25+
    # sends the hook's headers, so the token goes in one) calls the podgate Service's port drain
    # (8081), which kube-proxy sends to a replica's drain port (8082); that replica drains the pod
    # in HAProxy before SIGTERM
    leaving = ready[0]["metadata"]["name"]
    prestop = ready[0]["spec"]["containers"][0]["lifecycle"]["preStop"]["httpGet"]
    svc = node.get("service", "podgate", "-n", CONTROLLER_NAMESPACE)
    assert (prestop["host"], prestop["port"]) == (svc["spec"]["clusterIP"], 8081), prestop
    # every supported kubelet sends a hook's headers: the token goes in one, out of the path (and
    # so out of a FailedPreStopHook Event, which quotes the path)
    assert prestop["path"] == f"{gates.DRAIN_PATH}/{namespace}", prestop
    assert [h["name"] for h in prestop["httpHeaders"]] == [gates.DRAIN_TOKEN_HEADER], prestop
    node.kubectl("delete", "pod", leaving, "-n", namespace, "--wait=false")
    wait_for(
        "the deleted pod gone",
        lambda: leaving not in node.kubectl("get", "pods", "-n", namespace, "-o", "name"),
        timeout=60,
    )
    logs = node.kubectl(
        "logs", "-n", CONTROLLER_NAMESPACE, "-l", "app.kubernetes.io/name=podgate", "--tail=-1"
    )
    assert f"drained {namespace}/{leaving} in " in logs, logs[-3000:]
    failed = [e for e in pod_events(node, namespace, leaving) if e.startswith("FailedPreStopHook")]
    assert failed == [], failed


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
