"""The AWS ELBv2 provider on the sandbox: pods gated on target health from moto (server mode,
real SDK over real HTTP) behind a scripted front for the states moto does not model."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session

from podgate.sandbox.controlplane import Sandbox

from .conftest import SandboxHandle, condition, podgate, wait_for
from .elb_double import ElbDouble

pytestmark = pytest.mark.sandbox
MOTO_PORT, DOUBLE_PORT = 15600, 15601
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{DOUBLE_PORT}",
}
GATE = "service.readiness.podgate.dev/web"


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
        kw: dict[str, Any] = {
            "region_name": "us-east-1",
            "endpoint_url": f"http://127.0.0.1:{MOTO_PORT}",
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
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


def controller_with_aws(sandbox: SandboxHandle) -> subprocess.Popen[bytes]:
    """The sandbox's controller replaced by one with the AWS provider configured as well."""
    state = sandbox.state_dir
    pid = json.loads((state / "pids.json").read_text())["podgate-controller"]
    os.killpg(pid, signal.SIGTERM)  # releases the lease: the new one leads at once
    return subprocess.Popen(
        Sandbox(state).controller_argv(1, "--aws-provider", "aws", "--aws-rate", "50"),
        env={**os.environ, **AWS_ENV},
        stdout=subprocess.DEVNULL,
        stderr=open(state / "logs" / "aws-controller.log", "w"),
        start_new_session=True,
    )


def pod_names(sandbox: SandboxHandle, ns: str) -> set[str]:
    return {p["metadata"]["name"] for p in sandbox.get("pods", "-n", ns, "-l", "app=web")["items"]}


def gate_of(sandbox: SandboxHandle, ns: str, known: set[str]) -> tuple[str, str, str] | None:
    """The gate of the one pod not in ``known`` (the one the step under test created)."""
    new = [
        p
        for p in sandbox.get("pods", "-n", ns, "-l", "app=web")["items"]
        if p["metadata"]["name"] not in known and not p["metadata"].get("deletionTimestamp")
    ]
    c = condition(new[0], GATE) if len(new) == 1 else None
    return (c["status"], c.get("reason", ""), c.get("message", "")) if c else None


async def wait_gate(
    sandbox: SandboxHandle, ns: str, known: set[str], what: str, pred: Any, limit: float = 30
) -> tuple[str, str, str]:
    return await asyncio.to_thread(
        wait_for, what, lambda: (g := gate_of(sandbox, ns, known)) and pred(g) and g, limit, 0.1
    )


async def test_gates_follow_elb_target_health(
    sandbox: SandboxHandle, namespace: str, elb: tuple[ElbDouble, str]
) -> None:
    double, arn = elb
    ctl = controller_with_aws(sandbox)
    try:
        sandbox.apply(
            {
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
            },
            namespace,
        )
        dep = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
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

        # Healthy after N polls: the gate waits through ELB's initial health checking.
        double.script.default_initial_polls = 15
        known: set[str] = set()
        sandbox.apply(dep, namespace)
        first = await wait_gate(
            sandbox,
            namespace,
            known,
            "initial health checking",
            lambda g: g[1] == "Elb.InitialHealthChecking",
        )
        assert first[0] == "False" and "Initial health checks in progress" in first[2]
        done = await wait_gate(sandbox, namespace, known, "healthy", lambda g: g[0] == "True")
        assert done[1] == "TargetHealthy"
        assert double.script.polls >= 15

        # Throttled: the provider backs off and gets through; nothing opens early.
        double.script.default_initial_polls = 0
        double.script.throttle_next = 4
        known = pod_names(sandbox, namespace)
        sandbox.kubectl("scale", "deployment/web", "-n", namespace, "--replicas=2")
        await wait_gate(sandbox, namespace, known, "healthy despite throttling", lambda g: g[0] == "True")
        assert double.script.throttled == 4

        # Unhealthy: the gate stays False with ELB's reason and words.
        double.script.new_targets_unhealthy = True
        known = pod_names(sandbox, namespace)
        sandbox.kubectl("scale", "deployment/web", "-n", namespace, "--replicas=3")
        bad = await wait_gate(
            sandbox, namespace, known, "unhealthy", lambda g: g[1] == "Target.ResponseCodeMismatch"
        )
        assert bad[0] == "False" and "Health checks failed with these codes: [503]" in bad[2]
        double.script.new_targets_unhealthy = False
        double.script.unhealthy = set()

        # API down: the gate of a new pod never opens while the ELB API is unreachable.
        await double.stop()
        known = pod_names(sandbox, namespace)
        sandbox.kubectl("scale", "deployment/web", "-n", namespace, "--replicas=4")
        down = await wait_gate(
            sandbox, namespace, known, "provider error", lambda g: g[1] == "ProviderError", 40
        )
        assert down[0] == "False"
        await asyncio.sleep(2)
        assert (gate_of(sandbox, namespace, known) or ("",))[0] == "False"
        await double.start("127.0.0.1", DOUBLE_PORT)
        await wait_gate(
            sandbox, namespace, known, "healthy once the API is back", lambda g: g[0] == "True", 60
        )
    finally:
        ctl.terminate()
        ctl.wait(15)
        time.sleep(0.5)
        assert podgate("sandbox", "up", "--state-dir", str(sandbox.state_dir)).returncode == 0
