"""The AWS ELBv2 provider on the sandbox: pods gated on target health from moto (server mode,
real SDK over real HTTP) behind a scripted front for the states moto does not model."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session

from podgate.model.ownership import owner_tags
from podgate_sandbox.controlplane import CLUSTER_NAME
from podgate_sandbox.doubles.elb import ElbDouble

from .conftest import (
    AWS_SECRET_ACCESS_KEY,
    CLOUD_SECRETS,
    STAND_IN_HEALTH_PORT,
    GateWatch,
    SandboxHandle,
    assert_not_logged,
    controller_replaced,
    grant,
    reconciled_after,
    wait_for,
)

pytestmark = pytest.mark.sandbox
MOTO_PORT, DOUBLE_PORT = 15600, 15601
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",  # moto derives its account from the key id: the one MOTO_KW uses
    "AWS_SECRET_ACCESS_KEY": AWS_SECRET_ACCESS_KEY,  # moto checks no signature; the logs must not show it
    "PODGATE_LOG_LEVEL": "DEBUG",  # the most the controller ever logs is what must not leak it
    "AWS_REGION": "us-east-1",
    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{DOUBLE_PORT}",
}
GATE = "service.readiness.podgate.dev/web"
FOREIGN_IP = "10.99.0.9"  # a target someone else registered: not a pod's address
FOREIGN = f"{FOREIGN_IP}:8080"
MOTO_KW: dict[str, Any] = {
    "region_name": "us-east-1",
    "endpoint_url": f"http://127.0.0.1:{MOTO_PORT}",
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}


async def tag_for(arn: str, service_key: str) -> None:
    """What an administrator does before a Service may bind the target group: its ownership
    tags for this (the sandbox's) cluster and the Service."""
    async with get_session().create_client("elbv2", **MOTO_KW) as elbv2:
        tags = owner_tags(CLUSTER_NAME, service_key)
        await elbv2.add_tags(ResourceArns=[arn], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])


def web_service(arn: str) -> dict[str, Any]:
    """The Service ``web`` naming target group ``arn`` for the aws provider."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "web",
            "annotations": {
                "podgate.dev/load-balancer-provider": "aws",
                "podgate.dev/aws-target-group-arn": arn,
            },
        },
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }


def web_deployment(replicas: int = 1) -> dict[str, Any]:
    """The Deployment ``web`` whose pods carry the Service's gate."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "readinessGates": [{"conditionType": GATE}],
                    "containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 8080}]}],
                },
            },
        },
    }


async def registered(arn: str) -> list[str]:
    """The target group's targets as moto holds them (read past the scripted front)."""
    async with get_session().create_client("elbv2", **MOTO_KW) as elbv2:
        answer = await elbv2.describe_target_health(TargetGroupArn=arn)
    return sorted(f"{d['Target']['Id']}:{d['Target']['Port']}" for d in answer["TargetHealthDescriptions"])


@pytest.fixture
async def elb(tmp_path: Path) -> AsyncIterator[tuple[ElbDouble, str]]:
    """moto, its scripted front, and an IP-type target group; yields (double, target group ARN)."""
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(MOTO_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    double = ElbDouble(f"http://127.0.0.1:{MOTO_PORT}")
    try:
        await double.start("127.0.0.1", DOUBLE_PORT)
        session = get_session()
        kw = MOTO_KW
        for _ in range(50):
            try:
                async with session.create_client("ec2", **kw) as ec2:
                    vpc = (await ec2.create_vpc(CidrBlock="10.0.0.0/16"))["Vpc"]["VpcId"]
                break
            except Exception:
                await asyncio.sleep(0.2)
        async with session.create_client("elbv2", **kw) as elbv2:
            tg = (
                await elbv2.create_target_group(
                    Name="web",
                    Protocol="HTTP",
                    Port=8080,
                    VpcId=vpc,
                    TargetType="ip",
                    HealthCheckPath="/healthz",
                )
            )["TargetGroups"][0]
        yield double, tg["TargetGroupArn"]
    finally:
        await double.stop()
        moto.terminate()
        moto.wait(10)


async def test_gates_follow_elb_target_health(
    sandbox: SandboxHandle, namespace: str, elb: tuple[ElbDouble, str]
) -> None:
    double, arn = elb
    watch = GateWatch(sandbox, namespace, GATE, "app=web")
    log = sandbox.state_dir / "logs" / f"aws-controller-{namespace}.log"
    with controller_replaced(
        sandbox,
        "--aws-provider",
        "aws",
        "--aws-rate",
        "50",
        "--aws-poll-period",
        "0.5",
        env=AWS_ENV,
        log=log.name,
    ):
        grant(sandbox, "aws", namespace, arn)
        sandbox.apply(web_service(arn), namespace)
        dep = web_deployment()

        # Not tagged for this cluster and Service yet: refused, named in a Warning and in the
        # gate, and the target group untouched.
        double.script.default_initial_polls = 15
        sandbox.apply(dep, namespace)
        refused = await watch.wait("refused", lambda g: g[1] == "GroupNotOwned", 40)
        assert refused[0] == "False" and f"target group {arn} has no tag podgate.dev/cluster" in refused[2]
        await asyncio.to_thread(
            wait_for,
            "a GroupNotOwned Warning naming the target group",
            lambda: any(
                e["reason"] == "GroupNotOwned" and e["type"] == "Warning" and arn in e["message"]
                for e in sandbox.get(
                    "events", "-n", namespace, "--field-selector", "involvedObject.name=web"
                )["items"]
            ),
            30,
        )
        assert await registered(arn) == []

        # An administrator tags it: bound (within the reconcile back-off, 30 s at most).
        # Healthy after N polls: the gate waits through ELB's initial health checking.
        await tag_for(arn, f"{namespace}/web")
        async with get_session().create_client("elbv2", **MOTO_KW) as elbv2:
            # and someone else's target is in the group too: podgate never deregisters it
            await elbv2.register_targets(TargetGroupArn=arn, Targets=[{"Id": FOREIGN_IP, "Port": 8080}])
        first = await watch.wait(
            "initial health checking",
            lambda g: g[1] == "Elb.InitialHealthChecking",
            60,
        )
        assert first[0] == "False" and "Initial health checks in progress" in first[2]
        done = await watch.wait("healthy", lambda g: g[0] == "True")
        assert done[1] == "TargetHealthy"
        assert double.script.polls >= 15

        # Throttled: the provider backs off and gets through; nothing opens early.
        double.script.default_initial_polls = 0
        double.script.throttle_next = 4
        watch.mark()
        sandbox.kubectl("scale", "deployment/web", "-n", namespace, "--replicas=2")
        await watch.wait("healthy despite throttling", lambda g: g[0] == "True")
        assert double.script.throttled == 4

        # Unhealthy: the gate stays False with ELB's reason and words.
        double.script.new_targets_unhealthy = True
        watch.mark()
        sandbox.kubectl("scale", "deployment/web", "-n", namespace, "--replicas=3")
        bad = await watch.wait("unhealthy", lambda g: g[1] == "Target.ResponseCodeMismatch")
        assert bad[0] == "False" and "Health checks failed with these codes: [503]" in bad[2]
        double.script.new_targets_unhealthy = False
        double.script.unhealthy = set()

        # API down: the gate of a new pod never opens while the ELB API is unreachable.
        await double.stop()
        watch.mark()
        sandbox.kubectl("scale", "deployment/web", "-n", namespace, "--replicas=4")
        down = await watch.wait("provider error", lambda g: g[1] == "ProviderError", 40)
        assert down[0] == "False"
        # podgate has reconciled the Service since it failed to reach the API: still False
        await asyncio.to_thread(reconciled_after, sandbox, f"{namespace}/web", port=STAND_IN_HEALTH_PORT)
        assert (watch.gate_of_new_pod() or ("",))[0] == "False"
        await double.start("127.0.0.1", DOUBLE_PORT)
        await watch.wait("healthy once the API is back", lambda g: g[0] == "True", 60)

        # The Service is deleted: podgate's finalizer holds it until its pods have left the
        # target group, which stays (it is the user's).  (--wait=false: the ELB front runs on
        # this test's event loop, which a waiting kubectl would block.)
        assert len(await registered(arn)) == 5 and FOREIGN in await registered(arn)
        svc = sandbox.get("service", "web", "-n", namespace)
        assert "podgate.dev/load-balancer-targets" in svc["metadata"]["finalizers"]
        sandbox.kubectl("delete", "service", "web", "-n", namespace, "--wait=false")
        for _ in range(100):
            if await registered(arn) == [FOREIGN]:
                break
            await asyncio.sleep(0.2)
        assert await registered(arn) == [FOREIGN]
        await asyncio.to_thread(
            wait_for,
            "the Service gone",
            lambda: "NotFound" in sandbox.kubectl("get", "service", "web", "-n", namespace, check=False),
            30,
        )
    # Through throttling, errors and an unreachable API, the controller never logged its secret.
    assert_not_logged(log, CLOUD_SECRETS)


async def test_a_target_group_not_granted_to_the_namespace_is_left_as_it_is(
    sandbox: SandboxHandle, namespace: str, elb: tuple[ElbDouble, str]
) -> None:
    """A tenant's Service naming a target group no LoadBalancerGroupGrant gives its namespace:
    its pod's gate says which grant is missing, a Warning Event too, and the target group keeps
    exactly what it held (here another owner's target) while podgate registers nothing."""
    double, arn = elb
    async with get_session().create_client("elbv2", **MOTO_KW) as elbv2:
        await elbv2.register_targets(TargetGroupArn=arn, Targets=[{"Id": "10.0.9.9", "Port": 8080}])
    watch = GateWatch(sandbox, namespace, GATE, "app=web")
    with controller_replaced(
        sandbox, "--aws-provider", "aws", env=AWS_ENV, log=f"aws-refused-{namespace}.log"
    ):
        grant(sandbox, "aws", "another-namespace", arn)  # a grant, but not for this namespace
        sandbox.apply(web_service(arn), namespace)
        sandbox.apply(web_deployment(), namespace)
        refused = await watch.wait("refused", lambda g: g[1] == "GroupNotGranted")
        assert refused[0] == "False" and arn in refused[2] and "LoadBalancerGroupGrant" in refused[2]
        await asyncio.to_thread(reconciled_after, sandbox, f"{namespace}/web", port=STAND_IN_HEALTH_PORT)
        events = sandbox.get("events", "-n", namespace, "--field-selector", "involvedObject.name=web")[
            "items"
        ]
        assert any(e["reason"] == "GroupNotGranted" and e["type"] == "Warning" for e in events), events
        assert await registered(arn) == ["10.0.9.9:8080"]
        assert double.script.polls == 0  # podgate did not even read the group's health
        assert "finalizers" not in sandbox.get("service", "web", "-n", namespace)["metadata"]
