"""No secret reaches a log line at any level: each cloud provider runs at DEBUG, through the
controller's own logging set-up, against its API double with canary credentials (a secret key
and a session/STS token), and every captured line is searched for them.  Each test first runs
the same calls with plain DEBUG logging, the control: the canary token shows up there (the SDKs
print it), so the search is able to find one."""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiobotocore.session import get_session
from alibabacloud_credentials.client import Client as CredentialClient
from alibabacloud_credentials.models import Config

from podgate.cli.logs import setup_logging
from podgate.kube.records import MemoryRecords
from podgate.model import lb
from podgate.model.lb import GroupRef, HealthCheck, PoolSpec, Target
from podgate.model.ownership import owner_tags
from podgate.providers.alibaba import AlibabaProvider
from podgate.providers.aws_elbv2 import AwsElbv2Provider
from podgate_sandbox.doubles.alibaba import AlibabaDouble
from podgate_sandbox.doubles.elb import ElbDouble

pytestmark = pytest.mark.contract

SECRET = "CANARYsecretKEY0123456789abcdefghijklmnop"
TOKEN = "CANARYsessionTOKEN9876543210zyxwvutsrqponm"
MOTO_PORT, ELB_PORT, ALIBABA_PORT = 15640, 15641, 15642


async def logged(guarded: bool, calls: Callable[[], Awaitable[None]]) -> str:
    """What ``calls`` log at DEBUG: through podgate's set-up, or (the control) plain logging."""
    out = io.StringIO()
    if guarded:
        setup_logging(verbose=True, fmt="text", stream=out)
    else:
        logging.basicConfig(level=logging.DEBUG, stream=out, force=True)
        for name in logging.root.manager.loggerDict:
            logging.getLogger(name).setLevel(logging.NOTSET)
    try:
        await calls()
    finally:
        setup_logging(verbose=False, fmt="text")
    return out.getvalue()


@pytest.fixture
async def target_group(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[ElbDouble, str]]:
    """moto behind its scripted front, an IP target group, and canary credentials in the
    environment the AWS SDK reads them from."""
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(MOTO_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    double = ElbDouble(f"http://127.0.0.1:{MOTO_PORT}")
    kw = {
        "region_name": "us-east-1",
        "endpoint_url": f"http://127.0.0.1:{MOTO_PORT}",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    try:
        await double.start("127.0.0.1", ELB_PORT)
        for _ in range(50):
            try:
                async with get_session().create_client("ec2", **kw) as ec2:
                    vpc = (await ec2.create_vpc(CidrBlock="10.0.0.0/16"))["Vpc"]["VpcId"]
                break
            except Exception:
                await asyncio.sleep(0.2)
        async with get_session().create_client("elbv2", **kw) as elbv2:
            group = await elbv2.create_target_group(
                Name="web",
                Protocol="HTTP",
                Port=8080,
                VpcId=vpc,
                TargetType="ip",
                Tags=[{"Key": k, "Value": v} for k, v in owner_tags("test", "ns/web").items()],
            )
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_SESSION_TOKEN": TOKEN,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ELB_PORT}",
        }.items():
            monkeypatch.setenv(name, value)
        yield double, group["TargetGroups"][0]["TargetGroupArn"]
    finally:
        await double.stop()
        moto.terminate()
        moto.wait(10)


async def test_the_aws_provider_logs_no_credential(target_group: tuple[ElbDouble, str]) -> None:
    double, arn = target_group
    group = GroupRef(lb.AWS_TARGET_GROUP, arn)

    async def calls() -> None:
        provider = AwsElbv2Provider(
            "aws", "us-east-1", records=MemoryRecords(), base_delay=0.01, cluster="test"
        )
        pool = PoolSpec("ns", "web", 80, "", 8080, "TCP", HealthCheck(), group=group)
        try:
            await provider.bind("ns/web", [pool])
            await provider.register(pool, [Target("10.0.0.7", 8080)])
            double.script.throttle_next = 1  # an error answer, retried
            assert Target("10.0.0.7", 8080) in await provider.targets(pool)
            await provider.deregister(pool, [Target("10.0.0.7", 8080)])
        finally:
            await provider.close()

    assert TOKEN in await logged(False, calls), "the control: botocore prints the session token"
    text = await logged(True, calls)
    assert SECRET not in text and TOKEN not in text


async def test_the_alibaba_provider_logs_no_credential(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEBUG", "sdk")  # the SDK's own request dump, headers and all
    cloud = AlibabaDouble("cn-hangzhou", credentials={"canary-ak": SECRET})
    cloud.add_nlb("nlb-1", {"lsn-1": (80, "sgp-1")})
    cloud.tag("sgp-1", owner_tags("test", "ns/web"))
    endpoint = f"http://127.0.0.1:{ALIBABA_PORT}"
    group = GroupRef(lb.ALIBABA_NLB_GROUP, "sgp-1")

    async def calls() -> None:
        credential = CredentialClient(
            Config(type="sts", access_key_id="canary-ak", access_key_secret=SECRET, security_token=TOKEN)
        )
        provider = AlibabaProvider(
            "alibaba",
            "cn-hangzhou",
            nlb_endpoint=endpoint,
            clb_endpoint=endpoint,
            ecs_endpoint=endpoint,
            credential=credential,
            base_delay=0.01,
            cluster="test",
        )
        pool = PoolSpec("ns", "web", 80, "", 8080, "TCP", HealthCheck(), group=group)
        try:
            await provider.bind("ns/web", [pool])
            await provider.register(pool, [Target("10.1.0.7", 8080)])
            cloud.script.throttle_next = 1
            await provider.targets(pool)
            await provider.deregister(pool, [Target("10.1.0.7", 8080)])
        finally:
            await provider.close()

    await cloud.start("127.0.0.1", ALIBABA_PORT)
    try:
        control = await logged(False, calls)
        capfd.readouterr()
        text = await logged(True, calls)
        text += "".join(capfd.readouterr())  # the SDK's own handlers write to stderr directly
    finally:
        await cloud.stop()
    assert TOKEN in control, "the control: the SDK prints the STS token"
    assert SECRET not in text and TOKEN not in text
