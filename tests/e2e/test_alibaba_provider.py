"""The Alibaba Cloud provider on the sandbox: pods gated on NLB and CLB health answers from a
local double of the OpenAPI, reached by the official SDK over real HTTP with signed requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from podgate.model.ownership import owner_tags
from podgate_sandbox.controlplane import Sandbox
from podgate_sandbox.doubles.alibaba import AlibabaDouble, eni_for

from .conftest import (
    ALIBABA_ACCESS_KEY_SECRET,
    CLOUD_SECRETS,
    STAND_IN_HEALTH_PORT,
    GateWatch,
    SandboxHandle,
    assert_not_logged,
    controller_replaced,
    grant,
    metric,
    reconciled_after,
    scrape,
    wait_for,
)

pytestmark = pytest.mark.sandbox
PORT = 15630
FOREIGN_IP = "10.99.0.9"  # a server someone else put in a group: not a pod's address
FOREIGN = f"{FOREIGN_IP}:8080"
ENDPOINT = f"http://127.0.0.1:{PORT}"
ENV = {
    "ALIBABA_CLOUD_ACCESS_KEY_ID": "podgate-test-ak",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ALIBABA_ACCESS_KEY_SECRET,
    "PODGATE_LOG_LEVEL": "DEBUG",  # the most the controller ever logs is what must not leak it
}
FLAGS = (
    "--alibaba-provider",
    "alibaba",
    "--alibaba-region",
    "cn-hangzhou",
    "--alibaba-rate",
    "50",
    "--alibaba-poll-period",
    "0.5",
    *(f"--alibaba-{product}-endpoint={ENDPOINT}" for product in ("clb", "nlb", "ecs")),
)


@pytest.fixture
async def cloud() -> AsyncIterator[AlibabaDouble]:
    """The double with an NLB (listener lsn-web on port 80 → Ip server group sgp-web) and a CLB
    (listener 80 → vServer group rsp-shop)."""
    double = AlibabaDouble("cn-hangzhou")
    double.add_nlb("nlb-1", {"lsn-web": (80, "sgp-web")})
    double.add_clb("lb-1", {80: "rsp-shop"})
    await double.start("127.0.0.1", PORT)
    try:
        yield double
    finally:
        await double.stop()


def warned(sandbox: SandboxHandle, namespace: str, service: str, group: str) -> bool:
    """Whether the Service has a GroupNotOwned Warning Event naming the group."""
    events = sandbox.get("events", "-n", namespace, "--field-selector", f"involvedObject.name={service}")
    return any(
        e["reason"] == "GroupNotOwned" and e["type"] == "Warning" and group in e["message"]
        for e in events["items"]
    )


def service(name: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "annotations": {
                "podgate.dev/load-balancer-provider": "alibaba",
                "podgate.dev/deregistration-delay": "1",
                **annotations,
            },
        },
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
    }


def deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "readinessGates": [{"conditionType": f"service.readiness.podgate.dev/{name}"}],
                    "containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 8080}]}],
                },
            },
        },
    }


def live_pod_ips(sandbox: SandboxHandle, namespace: str, app: str) -> set[str]:
    pods = sandbox.get("pods", "-n", namespace, "-l", f"app={app}")["items"]
    return {
        p["status"]["podIP"]
        for p in pods
        if not p["metadata"].get("deletionTimestamp") and (p.get("status") or {}).get("podIP")
    }


async def scale_down_to_one(
    sandbox: SandboxHandle,
    namespace: str,
    cloud: AlibabaDouble,
    app: str,
    members: Callable[[], dict[str, Any]],
    what: str,
    weight_then_remove: tuple[str, str],
) -> None:
    """Scale to one pod: only it stays in the group, and the leaving pods' backends went to
    weight 0 (draining) before they were removed."""
    sandbox.kubectl("scale", f"deployment/{app}", "-n", namespace, "--replicas=1")
    await asyncio.to_thread(
        wait_for,
        f"only the remaining pod in the {what}",
        lambda: (
            set(members()) == {f"{i}:8080" for i in live_pod_ips(sandbox, namespace, app)}
            and len(members()) == 1
        ),
        60,
    )
    weight, remove = weight_then_remove
    assert cloud.script.calls.index(weight) < cloud.script.calls.index(remove)


async def test_gates_follow_nlb_server_health(
    sandbox: SandboxHandle, namespace: str, cloud: AlibabaDouble
) -> None:
    watch = GateWatch(sandbox, namespace, "service.readiness.podgate.dev/web", "app=web")
    with controller_replaced(sandbox, *FLAGS, env=ENV, log=f"alibaba-controller-{namespace}.log") as swap:
        grant(sandbox, "alibaba", namespace, "sgp-web")
        sandbox.apply(service("web", {"podgate.dev/alibaba-nlb-server-group-id": "sgp-web"}), namespace)

        # Not tagged for this cluster and Service yet: refused, named in a Warning and in the
        # gate, and the group untouched.
        cloud.script.initial_polls = 10
        sandbox.apply(deployment("web"), namespace)
        refused = await watch.wait("refused", lambda g: g[1] == "GroupNotOwned", 40)
        assert (
            refused[0] == "False" and "NLB server group sgp-web has no tag podgate.dev/cluster" in refused[2]
        )
        await asyncio.to_thread(
            wait_for, "a GroupNotOwned Warning", lambda: warned(sandbox, namespace, "web", "sgp-web"), 30
        )
        assert cloud.nlb_servers("sgp-web") == {}
        assert not {"AddServersToServerGroup", "RemoveServersFromServerGroup"} & set(cloud.script.calls)

        # An administrator tags it: bound (within the reconcile back-off, 30 s at most).
        # Healthy after N polls: the gate waits through the add job and the initial checks.
        cloud.tag("sgp-web", owner_tags("sandbox", f"{namespace}/web"))
        # and someone else's server is in the group too: podgate never drains or removes it
        cloud.add_backend("sgp-web", FOREIGN_IP, 8080, "added by hand")
        first = await watch.wait("initial checks", lambda g: g[1] == "Initial", 60)
        assert first[0] == "False" and "listener lsn-web" in first[2]
        done = await watch.wait("healthy", lambda g: g[0] == "True")
        assert done[1] == "TargetHealthy" and "NLB server group sgp-web" in done[2]
        assert cloud.script.health_polls >= 10
        (ip,) = live_pod_ips(sandbox, namespace, "web")
        assert cloud.nlb_servers("sgp-web") == {f"{ip}:8080": ("Available", 100), FOREIGN: ("Available", 100)}
        assert "AddServersToServerGroup" in cloud.script.calls

        # Throttled: the provider backs off and gets through; nothing opens early.
        cloud.script.initial_polls = 0
        cloud.script.throttle_next = 4
        watch.mark()
        sandbox.kubectl("scale", "deployment/web", "-n", namespace, "--replicas=2")
        await watch.wait("healthy despite throttling", lambda g: g[0] == "True")
        assert cloud.script.throttled == 4
        status, text = scrape(Sandbox(sandbox.state_dir).config.port(8181))  # replica 1's health port
        assert status == 200 and metric(text, "podgate_provider_throttled_total", provider="alibaba") == 4

        # Unhealthy: the gate stays False with the NLB's reason code.
        cloud.script.new_targets_unhealthy = True
        watch.mark()
        sandbox.kubectl("scale", "deployment/web", "-n", namespace, "--replicas=3")
        bad = await watch.wait("unhealthy", lambda g: g[1] == "CONNECT_FAILED")
        assert bad[0] == "False" and "Unhealthy: CONNECT_FAILED on listener lsn-web" in bad[2]
        cloud.script.new_targets_unhealthy = False

        # API down: the gate of a new pod never opens while the API is unreachable.
        await cloud.stop()
        watch.mark()
        sandbox.kubectl("scale", "deployment/web", "-n", namespace, "--replicas=4")
        down = await watch.wait("provider error", lambda g: g[1] == "ProviderError", 40)
        assert down[0] == "False" and "cannot reach the API" in down[2]
        # podgate has reconciled the Service since it failed to reach the API: still False
        await asyncio.to_thread(reconciled_after, sandbox, f"{namespace}/web", port=STAND_IN_HEALTH_PORT)
        assert (watch.gate_of_new_pod() or ("",))[0] == "False"
        await cloud.start("127.0.0.1", PORT)
        await watch.wait("healthy once the API is back", lambda g: g[0] == "True", 60)

        # Scale down: the leaving pods' servers are drained (weight 0), then removed.
        await scale_down_to_one(
            sandbox,
            namespace,
            cloud,
            "web",
            lambda: {k: v for k, v in cloud.nlb_servers("sgp-web").items() if k != FOREIGN},
            "server group",
            ("UpdateServerGroupServersAttribute", "RemoveServersFromServerGroup"),
        )

        # The Service is deleted while no podgate runs: podgate's finalizer holds it until podgate
        # is back and has taken its pods out of the server group (which stays: it is the user's).
        svc = sandbox.get("service", "web", "-n", namespace)
        assert "podgate.dev/load-balancer-targets" in svc["metadata"]["finalizers"]
        swap.stop()
        sandbox.kubectl("delete", "service", "web", "-n", namespace, "--wait=false")
        # no wait: no podgate runs (stop() waited for it) to take a server out, and the deletion
        # is in the API server once kubectl has returned
        assert sandbox.get("service", "web", "-n", namespace)["metadata"]["deletionTimestamp"]
        assert len(cloud.nlb_servers("sgp-web")) == 2
        swap.start()
        await asyncio.to_thread(
            wait_for,
            "only someone else's server left in the group",
            lambda: list(cloud.nlb_servers("sgp-web")) == [FOREIGN],
            30,
        )
        await asyncio.to_thread(
            wait_for,
            "the Service gone",
            lambda: "NotFound" in sandbox.kubectl("get", "service", "web", "-n", namespace, check=False),
            30,
        )
    # Through throttling, errors, an unreachable API and a restart, no secret was logged.
    assert_not_logged(swap.log, CLOUD_SECRETS)


async def test_gates_follow_clb_backend_health(
    sandbox: SandboxHandle, namespace: str, cloud: AlibabaDouble
) -> None:
    watch = GateWatch(sandbox, namespace, "service.readiness.podgate.dev/shop", "app=shop")
    with controller_replaced(sandbox, *FLAGS, env=ENV, log=f"alibaba-controller-{namespace}.log") as swap:
        grant(sandbox, "alibaba", namespace, "rsp-shop")
        cloud.tag("rsp-shop", owner_tags("sandbox", f"{namespace}/shop"))
        sandbox.apply(service("shop", {"podgate.dev/alibaba-clb-vserver-group-id": "rsp-shop"}), namespace)

        # A Service naming the provider but no group is told why and never held: no finalizer,
        # so deleting it does not wait for podgate.
        sandbox.apply(service("bare", {}), namespace)
        await asyncio.to_thread(
            wait_for,
            "a Warning naming the missing annotation",
            lambda: (
                "needs the annotation podgate.dev/alibaba-nlb-server-group-id"
                in sandbox.kubectl(
                    "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=bare"
                )
            ),
            30,
        )
        assert "finalizers" not in sandbox.get("service", "bare", "-n", namespace)["metadata"]
        sandbox.kubectl("delete", "service", "bare", "-n", namespace, "--wait=false")
        await asyncio.to_thread(
            wait_for,
            "the bare Service gone",
            lambda: "NotFound" in sandbox.kubectl("get", "service", "bare", "-n", namespace, check=False),
            10,
        )

        # Healthy after N polls; the pod is an ENI backend (the ENI found through ECS).
        cloud.script.initial_polls = 6
        sandbox.apply(deployment("shop"), namespace)
        first = await watch.wait("not yet checked", lambda g: g[1] == "unavailable")
        assert first[0] == "False" and "ServerHealthStatus unavailable on listener 80" in first[2]
        done = await watch.wait("healthy", lambda g: g[0] == "True")
        assert done[1] == "TargetHealthy" and "CLB lb-1 vServer group rsp-shop" in done[2]
        (ip,) = live_pod_ips(sandbox, namespace, "shop")
        assert cloud.clb_backends("rsp-shop") == {f"{ip}:8080": 100}
        assert cloud.clb_server_ids("rsp-shop") == {f"{ip}:8080": eni_for(ip)}  # the ENI found through ECS

        # Unhealthy: the gate stays False with the CLB's own status.
        cloud.script.initial_polls = 0
        cloud.script.new_targets_unhealthy = True
        watch.mark()
        sandbox.kubectl("scale", "deployment/shop", "-n", namespace, "--replicas=2")
        bad = await watch.wait("abnormal", lambda g: g[1] == "abnormal")
        assert bad[0] == "False" and "ServerHealthStatus abnormal on listener 80" in bad[2]
        cloud.script.new_targets_unhealthy = False

        # Scale down: drained at weight 0, then removed; the healthy pod stays.
        await scale_down_to_one(
            sandbox,
            namespace,
            cloud,
            "shop",
            lambda: cloud.clb_backends("rsp-shop"),
            "vServer group",
            ("SetVServerGroupAttribute", "RemoveVServerGroupBackendServers"),
        )

        # A pod the CLB cannot take (its IP is on no ENI) says why, and does not stop others
        # from leaving the group.
        cloud.script.eni_networking = False
        watch.mark()
        sandbox.kubectl("scale", "deployment/shop", "-n", namespace, "--replicas=2")
        stuck = await watch.wait("no ENI", lambda g: "no ENI in cn-hangzhou holds pod IP" in g[2])
        assert stuck[:2] == ("False", "ProviderError") and "Terway" in stuck[2]
        sandbox.kubectl("delete", "pod", "-n", namespace, *(watch.known), "--wait=false")
        await asyncio.to_thread(
            wait_for, "the deleted pod's backend gone", lambda: not cloud.clb_backends("rsp-shop"), 30
        )
    assert_not_logged(swap.log, CLOUD_SECRETS)


async def test_a_server_group_not_granted_to_the_namespace_is_left_as_it_is(
    sandbox: SandboxHandle, namespace: str, cloud: AlibabaDouble
) -> None:
    """A tenant's Service naming an NLB server group no LoadBalancerGroupGrant gives its
    namespace: its pod's gate and a Warning Event say which grant is missing, and podgate makes no
    call on the group (no read, no add, no removal)."""
    watch = GateWatch(sandbox, namespace, "service.readiness.podgate.dev/web", "app=web")
    with controller_replaced(sandbox, *FLAGS, env=ENV, log=f"alibaba-refused-{namespace}.log"):
        grant(sandbox, "alibaba", namespace, "sgp-other")  # a grant, but of another group
        sandbox.apply(service("web", {"podgate.dev/alibaba-nlb-server-group-id": "sgp-web"}), namespace)
        sandbox.apply(deployment("web"), namespace)
        refused = await watch.wait("refused", lambda g: g[1] == "GroupNotGranted")
        assert refused[0] == "False" and "sgp-web" in refused[2] and "LoadBalancerGroupGrant" in refused[2]
        await asyncio.to_thread(reconciled_after, sandbox, f"{namespace}/web", port=STAND_IN_HEALTH_PORT)
        events = sandbox.get("events", "-n", namespace, "--field-selector", "involvedObject.name=web")[
            "items"
        ]
        assert any(e["reason"] == "GroupNotGranted" and e["type"] == "Warning" for e in events), events
        assert cloud.nlb_servers("sgp-web") == {}
        assert [c for c in cloud.script.calls if "Server" in c or "Health" in c] == []
        assert "finalizers" not in sandbox.get("service", "web", "-n", namespace)["metadata"]
