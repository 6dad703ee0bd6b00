"""The Alibaba Cloud provider against the API double, without a cluster: batching within the
API's limits, paging, the errors a user must be able to act on, and throttling back-off."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from alibabacloud_credentials.client import Client as CredentialClient
from alibabacloud_credentials.models import Config

from podgate.model.lb import Health, HealthCheck, PoolSpec, ServerGroup, Target
from podgate.providers.alibaba import AlibabaProvider
from podgate.providers.base import ProviderError

from .alibaba_double import AlibabaDouble, eni_for

PORT = 15635
ENDPOINT = f"http://127.0.0.1:{PORT}"


@pytest.fixture
async def cloud() -> AsyncIterator[AlibabaDouble]:
    double = AlibabaDouble("cn-hangzhou")
    double.add_nlb("nlb-1", {"lsn-1": (80, "sgp-1")})
    double.add_nlb("nlb-2", {"lsn-2": (80, "sgp-ecs")}, server_group_type="Instance")
    double.add_nlb("nlb-3", {})
    double.add_clb("lb-1", {80: "rsp-1"})
    await double.start("127.0.0.1", PORT)
    try:
        yield double
    finally:
        await double.stop()


def credential(secret: str = "podgate-test-secret") -> CredentialClient:
    """An explicit key: the SDK's default chain reads the environment only once, at import."""
    return CredentialClient(
        Config(type="access_key", access_key_id="podgate-test-ak", access_key_secret=secret)
    )


def provider(secret: str = "podgate-test-secret") -> AlibabaProvider:
    return AlibabaProvider(
        "alibaba",
        "cn-hangzhou",
        clb_endpoint=ENDPOINT,
        nlb_endpoint=ENDPOINT,
        ecs_endpoint=ENDPOINT,
        rate=1000.0,
        burst=1000,
        base_delay=0.01,
        credential=credential(secret),
    )


def pool(product: str, group: str) -> PoolSpec:
    return PoolSpec("ns", "web", 80, "", 8080, "TCP", HealthCheck(), server_group=ServerGroup(product, group))


def ips(n: int) -> list[Target]:
    return [Target(f"10.1.{i // 250}.{i % 250 + 1}", 8080) for i in range(n)]


async def test_clb_batches_of_20_and_eni_backends(cloud: AlibabaDouble) -> None:
    p, clb = provider(), pool("clb", "rsp-1")
    await p.provision("ns/web", [clb], None)
    assert await p.targets(clb) == {}
    await p.register(clb, ips(45))
    assert cloud.script.calls.count("AddVServerGroupBackendServers") == 3  # 20 + 20 + 5
    assert cloud.script.calls.count("DescribeNetworkInterfaces") == 1  # 45 IPs in one look-up
    assert len(cloud.clb_backends("rsp-1")) == 45
    got = await p.targets(clb)
    assert set(got) == set(ips(45))
    assert {st.admin for st in got.values()} == {"ready"}
    assert {st.health.health for st in got.values()} == {Health.HEALTHY}

    # drain = weight 0 (read back as draining), register = weight back up, deregister = gone
    await p.drain(clb, ips(3))
    assert [cloud.clb_backends("rsp-1")[f"{t}"] for t in ips(3)] == [0, 0, 0]
    got = await p.targets(clb)
    assert [got[t].admin for t in ips(3)] == ["drain"] * 3
    await p.register(clb, ips(1))
    assert cloud.clb_backends("rsp-1")[str(ips(1)[0])] == 100
    await p.deregister(clb, ips(2)[1:])
    assert len(cloud.clb_backends("rsp-1")) == 44
    # the look-up is remembered for the pod's life: a re-add asks ECS nothing
    await p.targets(clb)
    await p.register(clb, ips(2)[1:])
    assert cloud.script.calls.count("DescribeNetworkInterfaces") == 1


async def test_clb_pod_ip_without_eni_is_a_clear_error(cloud: AlibabaDouble) -> None:
    p, clb = provider(), pool("clb", "rsp-1")
    cloud.script.without_eni = {"10.1.0.2"}
    await p.targets(clb)
    with pytest.raises(ProviderError, match=r"no ENI in cn-hangzhou holds pod IP\(s\) 10\.1\.0\.2.*Terway"):
        await p.register(clb, ips(3))
    assert set(cloud.clb_backends("rsp-1")) == {"10.1.0.1:8080", "10.1.0.3:8080"}  # the others went in
    assert eni_for("10.1.0.1").startswith("eni-")


async def test_nlb_batches_of_200_and_paging(cloud: AlibabaDouble) -> None:
    p, nlb = provider(), pool("nlb", "sgp-1")
    cloud.script.nlb_adding_polls = 0
    await p.provision("ns/web", [nlb], None)
    await p.targets(nlb)
    await p.register(nlb, ips(450))
    assert cloud.script.calls.count("AddServersToServerGroup") == 3  # 200 + 200 + 50
    got = await p.targets(nlb)
    assert len(got) == 450  # ListServerGroupServers pages of 100
    assert cloud.script.calls.count("ListServerGroupServers") >= 1 + 5
    assert {st.health.health for st in got.values()} == {Health.HEALTHY}
    cloud.script.unhealthy = {"10.1.0.1:8080"}
    bad = (await p.targets(nlb))[ips(1)[0]]
    assert (bad.health.health, bad.health.reason) == (Health.UNHEALTHY, "CONNECT_FAILED")


async def test_nlb_group_must_be_ip_and_exist(cloud: AlibabaDouble) -> None:
    p = provider()
    with pytest.raises(ProviderError, match=r"ServerGroupType 'Instance'.*needs an 'Ip' server group"):
        await p.provision("ns/web", [pool("nlb", "sgp-ecs")], None)
    with pytest.raises(ProviderError, match="sgp-nope does not exist"):
        await p.provision("ns/web", [pool("nlb", "sgp-nope")], None)
    with pytest.raises(ProviderError, match=r"needs the annotation podgate\.dev/alibaba-nlb-server-group-id"):
        await p.provision("ns/web", [PoolSpec("ns", "web", 80, "", 8080, "TCP", HealthCheck())], None)


async def test_wrong_credentials_name_the_cloud_error(cloud: AlibabaDouble) -> None:
    with pytest.raises(ProviderError, match="DescribeVServerGroupAttribute: SignatureDoesNotMatch"):
        await provider(secret="wrong").targets(pool("clb", "rsp-1"))


async def test_throttling_is_retried_then_reported(cloud: AlibabaDouble) -> None:
    p, nlb = provider(), pool("nlb", "sgp-1")
    cloud.script.throttle_next = 3
    assert await p.targets(nlb) == {}
    assert (p.throttled, cloud.script.throttled) == (3, 3)
    cloud.script.throttle_next = 100
    with pytest.raises(ProviderError, match=r"Throttling\.User"):
        await p.targets(nlb)
    assert p.throttled == 3 + p.max_retries


async def test_api_down_is_a_provider_error(cloud: AlibabaDouble) -> None:
    await cloud.stop()
    with pytest.raises(ProviderError, match="ListServerGroupServers: cannot reach the API: Cannot connect"):
        await provider().targets(pool("nlb", "sgp-1"))
