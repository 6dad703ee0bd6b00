"""The AWS ELBv2 provider against moto (server mode, the real SDK over real HTTP), without a
cluster: a target group is bound only with the ownership tags of this cluster and Service
(``DescribeTags``), and podgate lists, drains and removes only the targets it registered (its
records, here ConfigMaps in a FakeKube), across a restart too."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session

from podgate.kube.fake import FakeKube
from podgate.kube.records import CONFIGMAPS, ConfigMapRecords
from podgate.model import lb
from podgate.model.lb import GroupRef, HealthCheck, PoolSpec, Target
from podgate.model.ownership import RECORD_GRACE, SERVICE_TAG, owner_tags, record_name
from podgate.providers.aws_elbv2 import AwsElbv2Provider
from podgate.providers.base import NotOwned, ProviderError

pytestmark = pytest.mark.contract

MOTO_PORT = 15650
CLUSTER = "test"
MOTO: dict[str, Any] = {
    "region_name": "us-east-1",
    "endpoint_url": f"http://127.0.0.1:{MOTO_PORT}",
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}
POD, OTHER, FOREIGN = Target("10.0.0.7", 8080), Target("10.0.0.8", 8080), Target("10.9.9.9", 8080)


@pytest.fixture
async def groups(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, str]]:
    """moto with three IP target groups: ``web`` tagged for ns/web, ``bare`` untagged, ``prod``
    tagged for another cluster; yields name → ARN."""
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(MOTO_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            try:
                async with get_session().create_client("ec2", **MOTO) as ec2:
                    vpc = (await ec2.create_vpc(CidrBlock="10.0.0.0/16"))["Vpc"]["VpcId"]
                break
            except Exception:
                await asyncio.sleep(0.2)
        arns = {}
        async with get_session().create_client("elbv2", **MOTO) as elbv2:
            for name, tags in (
                ("web", owner_tags(CLUSTER, "ns/web")),
                ("bare", {}),
                ("prod", owner_tags("prod", "ns/web")),
            ):
                answer = await elbv2.create_target_group(
                    Name=name, Protocol="HTTP", Port=8080, VpcId=vpc, TargetType="ip"
                )
                arns[name] = answer["TargetGroups"][0]["TargetGroupArn"]
                if tags:
                    await elbv2.add_tags(
                        ResourceArns=[arns[name]], Tags=[{"Key": k, "Value": v} for k, v in tags.items()]
                    )
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{MOTO_PORT}",
        }.items():
            monkeypatch.setenv(name, value)
        yield arns
    finally:
        moto.terminate()
        moto.wait(10)


def pool(arn: str, service: str = "web") -> PoolSpec:
    return PoolSpec(
        "ns", service, 80, "", 8080, "TCP", HealthCheck(), group=GroupRef(lb.AWS_TARGET_GROUP, arn)
    )


async def registered(arn: str) -> set[Target]:
    async with get_session().create_client("elbv2", **MOTO) as elbv2:
        answer = await elbv2.describe_target_health(TargetGroupArn=arn)
    return {Target(d["Target"]["Id"], d["Target"]["Port"]) for d in answer["TargetHealthDescriptions"]}


async def someone_registers(arn: str, target: Target) -> None:
    """A target podgate did not put in: an administrator's, another tool's."""
    async with get_session().create_client("elbv2", **MOTO) as elbv2:
        await elbv2.register_targets(TargetGroupArn=arn, Targets=[{"Id": target.ip, "Port": target.port}])


def provider(kube: FakeKube, now: list[float] | None = None) -> AwsElbv2Provider:
    """The provider, its records in ``kube``; ``now``: the records' clock, if not the real one."""
    clock = (lambda: now[0]) if now else time.time
    records = ConfigMapRecords(kube, "podgate-system", ttl=0.0, clock=clock)
    p = AwsElbv2Provider("aws", "us-east-1", records=records, base_delay=0.01, cluster=CLUSTER)
    p.epoch = clock
    return p


async def test_a_target_group_is_bound_only_with_this_clusters_and_services_tags(
    groups: dict[str, str],
) -> None:
    p = provider(FakeKube())
    try:
        await p.bind("ns/web", [pool(groups["web"])])
        with pytest.raises(NotOwned, match=rf"target group {groups['bare']} has no tag podgate\.dev/cluster"):
            await p.bind("ns/web", [pool(groups["bare"])])
        with pytest.raises(NotOwned, match=r"tagged podgate\.dev/cluster=prod: it is another cluster's"):
            await p.bind("ns/web", [pool(groups["prod"])])
        with pytest.raises(NotOwned, match=r"tagged podgate\.dev/service=ns/web: it is another Service's"):
            await p.bind("ns/api", [pool(groups["web"], "api")])
        assert [await registered(arn) for arn in groups.values()] == [set(), set(), set()]  # untouched
        async with get_session().create_client("elbv2", **MOTO) as elbv2:  # the administrator tags it
            await elbv2.add_tags(
                ResourceArns=[groups["bare"]],
                Tags=[{"Key": k, "Value": v} for k, v in owner_tags(CLUSTER, "ns/web").items()],
            )
            await p.bind("ns/web", [pool(groups["bare"])])
            await elbv2.add_tags(
                ResourceArns=[groups["bare"]], Tags=[{"Key": SERVICE_TAG, "Value": "ns/api"}]
            )
        await p.bind("ns/web", [pool(groups["bare"])])  # accepted within the last 30 s: not read again
        p.ownership.forget("ns/web")
        with pytest.raises(NotOwned, match="another Service's"):
            await p.bind("ns/web", [pool(groups["bare"])])
        with pytest.raises(ProviderError, match="TargetGroupNotFound"):
            await p.bind("ns/web", [pool(groups["web"].replace("/web/", "/gone/"))])
    finally:
        await p.close()


async def test_only_the_targets_podgate_registered_are_listed_drained_and_removed(
    groups: dict[str, str],
) -> None:
    arn, kube = groups["web"], FakeKube()
    p = provider(kube)
    try:
        await p.bind("ns/web", [pool(arn)])
        await someone_registers(arn, FOREIGN)
        assert await p.targets(pool(arn)) == {}  # not podgate's: not listed, so never in a diff
        await p.register(pool(arn), [POD, OTHER])
        assert set(await p.targets(pool(arn))) == {POD, OTHER}
        # the record is a ConfigMap in podgate's namespace, named for the group and Service
        record = kube.object(CONFIGMAPS, record_name(arn, "ns/web"), "podgate-system")
        assert record is not None and record["metadata"]["annotations"]["podgate.dev/group"] == arn
        assert [line.split()[0] for line in record["data"]["targets"].splitlines()] == [str(POD), str(OTHER)]

        # asked to drain or remove another's target too: only its own (moto forgets a drained
        # target at once, so each call takes a different one of podgate's)
        await p.drain(pool(arn), [FOREIGN, OTHER])
        assert await registered(arn) == {POD, FOREIGN}
        await p.deregister(pool(arn), [FOREIGN, POD])
        assert await registered(arn) == {FOREIGN}
        await p.register(pool(arn), [POD])
    finally:
        await p.close()

    # a restarted controller (a new provider, the same cluster) takes out only what podgate put in
    restarted = provider(kube)
    try:
        await restarted.unbind("ns/web")
        assert await registered(arn) == {FOREIGN}
        assert kube.object(CONFIGMAPS, record_name(arn, "ns/web"), "podgate-system") is None
        await restarted.unbind("ns/web")  # nothing recorded: nothing to do
        assert await registered(arn) == {FOREIGN}
    finally:
        await restarted.close()


async def test_a_record_written_for_a_registration_that_never_happened_is_dropped_once_stale(
    groups: dict[str, str],
) -> None:
    """Recorded first, then registered: a crash in between leaves a recorded target absent from
    the group.  It is never listed, and a later registration drops it from the record once a
    read at least RECORD_GRACE after it was recorded did not find it."""
    arn, kube, now = groups["web"], FakeKube(), [1_000_000.0]
    p = provider(kube, now)
    try:
        await p.records.add(arn, "ns/web", [OTHER])  # the crash: recorded, never registered
        assert await p.targets(pool(arn)) == {}
        await p.register(pool(arn), [POD])
        assert set(await p.records.read(arn, "ns/web")) == {POD, OTHER}  # too young to drop
        now[0] += RECORD_GRACE
        assert set(await p.targets(pool(arn))) == {POD}
        await p.register(pool(arn), [Target("10.0.0.9", 8080)])
        assert set(await p.records.read(arn, "ns/web")) == {POD, Target("10.0.0.9", 8080)}
    finally:
        await p.close()
