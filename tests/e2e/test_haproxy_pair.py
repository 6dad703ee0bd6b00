"""An HA pair of the user's own HAProxy processes (attach mode, end to end through the Service
annotations) with one of them down: ``--haproxy-ha-policy all`` keeps a pending gate False and
names the unreachable one; ``reachable`` decides on the one that answers."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podgate_sandbox.controlplane import ControllerSwap, Sandbox

from .conftest import (
    STAND_IN_HEALTH_PORT,
    SandboxHandle,
    condition,
    grant,
    reconciled_after,
    wait_for,
    wide_row,
)
from .test_controller import INJECT, deployment, events, gate, lb_service, pods
from .test_webhook_replicas import front_door_up

pytestmark = pytest.mark.sandbox
FRONTENDS = ("127.78.0.1", "127.78.0.2")
PORT = 18090
#: the sandbox's own HAProxy, which this test's controller does not use
PROVISIONING_FLAGS = (
    "--haproxy-runtime-socket",
    "--haproxy-master-socket",
    "--haproxy-config",
    "--haproxy-base-config",
)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[list[str], list[subprocess.Popen[bytes]]]]:
    """Two HAProxy processes, each with the user's backend ``app`` behind its own frontend."""
    procs, sockets = [], []
    for i, ip in enumerate(FRONTENDS):
        sock, cfg = tmp_path / f"rt{i}.sock", tmp_path / f"h{i}.cfg"
        cfg.write_text(
            f"global\n    stats socket {sock} mode 600 level admin\n"
            "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n"
            f"frontend fe\n    bind {ip}:{PORT}\n    default_backend app\n"
            "backend app\n    balance roundrobin\n    retry-on conn-failure\n"
        )
        procs.append(subprocess.Popen(["haproxy", "-f", str(cfg)], stderr=subprocess.DEVNULL))
        sockets.append(str(sock))
    for sock in sockets:
        wait_for(f"HAProxy socket {sock}", Path(sock).exists, 10, 0.05)
    yield sockets, procs
    for p in procs:
        p.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)


def attach_to(swap: ControllerSwap, sockets: list[str], policy: str) -> None:
    """The swapped-in controller, restarted in attach mode on the pair with this policy."""
    swap.stop()
    argv, i = [], 0
    while i < len(swap.argv):
        if swap.argv[i] in PROVISIONING_FLAGS:
            i += 2
            continue
        argv.append(swap.argv[i])
        i += 1
    swap.argv = [*argv, *(f"--haproxy-runtime-socket={s}" for s in sockets), f"--haproxy-ha-policy={policy}"]
    swap.start()
    wait_for("the webhook front door to send to it", front_door_up, 15)


def answers(ip: str) -> set[str]:
    seen = set()
    for _ in range(6):
        with urllib.request.urlopen(f"http://{ip}:{PORT}/", timeout=3) as r:
            assert r.status == 200
            seen.add(r.headers["X-Pod-Name"])
    return seen


def new_pod(sandbox: SandboxHandle, namespace: str, known: set[str]) -> dict[str, Any]:
    """The pod not in ``known`` ({} while there is none)."""
    fresh = [p for p in pods(sandbox, namespace, "web") if p["metadata"]["name"] not in known]
    return fresh[0] if fresh else {}


def test_ha_pair_with_one_haproxy_down(
    sandbox: SandboxHandle, namespace: str, pair: tuple[list[str], list[subprocess.Popen[bytes]]]
) -> None:
    sockets, procs = pair
    with Sandbox(sandbox.state_dir).controller_replaced(env={}, log=f"pair-{namespace}.log") as swap:
        attach_to(swap, sockets, "all")
        grant(sandbox, "haproxy", namespace, "app")
        sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
        sandbox.apply(
            lb_service(
                "web",
                "web",
                "ClusterIP",
                **{"podgate.dev/load-balancer-provider": "haproxy", "podgate.dev/haproxy-backend": "app"},
            ),
            namespace,
        )
        sandbox.apply(deployment("web", 1), namespace)
        first: dict[str, Any]
        [first] = wait_for(
            "the first pod Ready",
            lambda: (
                (ps := pods(sandbox, namespace, "web"))
                and all((condition(p, "Ready") or {}).get("status") == "True" for p in ps)
                and ps
            ),
            60,
        )
        assert first["spec"]["readinessGates"] == [{"conditionType": gate("web")}], "injected"
        for ip in FRONTENDS:
            assert answers(ip) == {first["metadata"]["name"]}, f"through the pair's {ip}"

        # One HAProxy of the pair goes away; a new pod must wait for it.
        procs[1].terminate()
        procs[1].wait(5)
        sandbox.kubectl("scale", "deployment", "web", "--replicas=2", "-n", namespace)
        known = {first["metadata"]["name"]}
        pending = wait_for(
            "the new pod's containers ready",
            lambda: (
                (p := new_pod(sandbox, namespace, known))
                and (condition(p, "ContainersReady") or {}).get("status") == "True"
                and p
            ),
            30,
        )
        name = pending["metadata"]["name"]
        # podgate has reconciled the Service since the new pod's containers were ready: the pair
        # cannot be read whole, so podgate registers it nowhere and the gate waits
        reconciled_after(sandbox, f"{namespace}/web", port=STAND_IN_HEALTH_PORT)
        c = condition(new_pod(sandbox, namespace, known), gate("web")) or {}
        assert c.get("status") == "False", c
        assert sockets[1] in c.get("message", ""), f"the reason names the unreachable HAProxy: {c}"
        assert wide_row(sandbox, namespace, name)["READINESS GATES"] == "0/1"

        # Deciding on the reachable one: the pod turns Ready and serves through it.
        attach_to(swap, sockets, "reachable")
        wait_for(
            "the new pod Ready on the reachable HAProxy",
            lambda: (condition(new_pod(sandbox, namespace, known), "Ready") or {}).get("status") == "True",
            30,
        )
        c = condition(new_pod(sandbox, namespace, known), gate("web")) or {}
        assert c.get("status") == "True" and "is UP" in c.get("message", ""), c
        assert answers(FRONTENDS[0]) == {first["metadata"]["name"], name}


def servers(sock: str, backend: str = "app") -> set[tuple[str, str, str]]:
    """Each server of ``backend`` as HAProxy holds it: (name, address, admin state)."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(sock)
        conn.sendall(f"show servers state {backend}\n".encode())
        out = b""
        while chunk := conn.recv(65536):
            out += chunk
    rows = [line.split() for line in out.decode().splitlines()[1:] if line and not line.startswith("#")]
    return {(r[3], r[4], r[6]) for r in rows if len(r) > 6}


def test_a_tenant_naming_another_tenants_backend_is_refused_and_the_backend_untouched(
    sandbox: SandboxHandle, namespace: str, pair: tuple[list[str], list[subprocess.Popen[bytes]]]
) -> None:
    """Tenant A is granted the backend ``app`` and serves through it; tenant B's Service names
    the same backend without a grant: B's pods hear why, an Event says which grant is missing,
    and the backend keeps exactly A's servers, in the state they were in."""
    sockets, _ = pair
    other = f"{namespace}-b"
    annotations = {"podgate.dev/load-balancer-provider": "haproxy", "podgate.dev/haproxy-backend": "app"}
    with Sandbox(sandbox.state_dir).controller_replaced(env={}, log=f"grant-{namespace}.log") as swap:
        try:
            attach_to(swap, sockets, "all")
            grant(sandbox, "haproxy", namespace, "app")
            sandbox.kubectl("create", "namespace", other)
            for ns in (namespace, other):
                sandbox.kubectl("label", "namespace", ns, f"{INJECT}=enabled")
            sandbox.apply(lb_service("web", "web", "ClusterIP", **annotations), namespace)
            sandbox.apply(deployment("web", 1), namespace)
            [owner] = wait_for(
                "tenant A's pod Ready through the granted backend",
                lambda: (
                    (ps := pods(sandbox, namespace, "web"))
                    and all((condition(p, "Ready") or {}).get("status") == "True" for p in ps)
                    and ps
                ),
                60,
            )
            before = [servers(s) for s in sockets]
            assert all(owner["status"]["podIP"] in {addr for _, addr, _ in b} for b in before), before

            wait_for(
                "tenant B's default ServiceAccount",
                lambda: "default" in sandbox.kubectl("get", "serviceaccount", "-n", other, check=False),
            )
            sandbox.apply(lb_service("web", "web", "ClusterIP", **annotations), other)
            sandbox.apply(deployment("web", 1), other)
            [intruder] = wait_for(
                "tenant B's pod's containers ready",
                lambda: (
                    (ps := pods(sandbox, other, "web"))
                    and all((condition(p, "ContainersReady") or {}).get("status") == "True" for p in ps)
                    and ps
                ),
                60,
            )
            reconciled_after(sandbox, f"{other}/web", port=STAND_IN_HEALTH_PORT)
            [intruder] = pods(sandbox, other, "web")
            c = condition(intruder, gate("web")) or {}
            assert (c.get("status"), c.get("reason")) == ("False", "GroupNotGranted"), c
            assert "app" in c.get("message", "") and "LoadBalancerGroupGrant" in c["message"], c
            assert (condition(intruder, "Ready") or {}).get("status") == "False"
            warnings = [e for e in events(sandbox, other, "web") if e["reason"] == "GroupNotGranted"]
            assert warnings and warnings[0]["type"] == "Warning", events(sandbox, other, "web")
            assert [servers(s) for s in sockets] == before, "the backend is exactly as tenant A left it"
            for ip in FRONTENDS:
                assert answers(ip) == {owner["metadata"]["name"]}, f"only tenant A's pod behind {ip}"
        finally:
            sandbox.kubectl("delete", "namespace", other, "--wait=false", check=False)
