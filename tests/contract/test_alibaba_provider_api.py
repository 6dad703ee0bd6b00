"""The Alibaba Cloud provider against the API double, without a cluster: batching within the
API's limits, paging, the errors a user must be able to act on, and throttling back-off."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from alibabacloud_credentials.client import Client as CredentialClient
from alibabacloud_credentials.models import Config

from podgate.model import lb
from podgate.model.lb import GroupRef, Health, HealthCheck, PoolSpec, Target
from podgate.model.ownership import SERVICE_TAG, owner_tags
from podgate.providers.alibaba import AlibabaProvider
from podgate.providers.base import NotOwned, ProviderError
from podgate.providers.ownership import ACCEPT_TTL
from podgate_sandbox.doubles.alibaba import AlibabaDouble, eni_for

PORT = 15635
CLUSTER = "test"
ENDPOINT = f"http://127.0.0.1:{PORT}"


@pytest.fixture
async def cloud() -> AsyncIterator[AlibabaDouble]:
    double = AlibabaDouble("cn-hangzhou")
    double.add_nlb("nlb-1", {"lsn-1": (80, "sgp-1")})
    double.add_nlb("nlb-2", {"lsn-2": (80, "sgp-ecs")}, server_group_type="Instance")
    double.add_nlb("nlb-3", {"lsn-3": (81, "sgp-any")}, any_port=True)
    double.script.nlb_check_interval = 0  # no floor after Available, unless a test sets one
    double.add_clb("lb-1", {80: "rsp-1"})
    await double.start("127.0.0.1", PORT)
    try:
        # an administrator tags the groups for Service ns/web (the last test's for ns/api), through
        # the SDK's own TagResources of each product
        for product, kind, group in (
            ("clb", "vservergroup", "rsp-1"),
            ("nlb", "servergroup", "sgp-1"),
            ("nlb", "servergroup", "sgp-ecs"),
            ("nlb", "servergroup", "sgp-any"),
        ):
            await tag(product, kind, group, owner_tags(CLUSTER, "ns/web"))
        yield double
    finally:
        await double.stop()


async def tag(product: str, kind: str, group: str, tags: dict[str, str]) -> None:
    """TagResources through the product's own SDK client, as an administrator's tool calls it."""
    from alibabacloud_tea_openapi import utils_models as openapi

    if product == "clb":
        from alibabacloud_slb20140515 import models
        from alibabacloud_slb20140515.client import Client
    else:
        from alibabacloud_nlb20220430 import models  # type: ignore[no-redef]
        from alibabacloud_nlb20220430.client import Client  # type: ignore[assignment]
    config = openapi.Config(
        credential=credential(), region_id="cn-hangzhou", endpoint=f"127.0.0.1:{PORT}", protocol="http"
    )
    request = models.TagResourcesRequest(
        region_id="cn-hangzhou",
        resource_type=kind,
        resource_id=[group],
        tag=[models.TagResourcesRequestTag(key=k, value=v) for k, v in tags.items()],
    )
    await asyncio.to_thread(Client(config).tag_resources, request)


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
        cluster=CLUSTER,
    )


def pool(product: str, group: str) -> PoolSpec:
    annotation = lb.ALIBABA_CLB_GROUP if product == "clb" else lb.ALIBABA_NLB_GROUP
    return PoolSpec("ns", "web", 80, "", 8080, "TCP", HealthCheck(), group=GroupRef(annotation, group))


def ips(n: int) -> list[Target]:
    return [Target(f"10.1.{i // 250}.{i % 250 + 1}", 8080) for i in range(n)]


async def test_clb_batches_of_20_and_eni_backends(cloud: AlibabaDouble) -> None:
    p, clb = provider(), pool("clb", "rsp-1")
    await p.bind("ns/web", [clb])
    assert await p.targets(clb) == {}
    await p.register(clb, ips(45))
    assert cloud.script.calls.count("AddVServerGroupBackendServers") == 3  # 20 + 20 + 5
    assert cloud.script.calls.count("DescribeNetworkInterfaces") == 1  # 45 IPs in one look-up
    assert len(cloud.clb_backends("rsp-1")) == 45
    assert cloud.clb_server_ids("rsp-1") == {f"{t}": eni_for(t.ip) for t in ips(45)}  # each IP's own ENI
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
    # weight changes reuse the ENI read before; a removed backend's IP may come back on another
    # ENI (pod IPs are reused), so adding it again asks ECS again
    assert cloud.script.calls.count("DescribeNetworkInterfaces") == 1
    await p.targets(clb)
    await p.register(clb, ips(2)[1:])
    assert cloud.script.calls.count("DescribeNetworkInterfaces") == 2


async def test_clb_pod_ip_without_eni_is_a_clear_error(cloud: AlibabaDouble) -> None:
    p, clb = provider(), pool("clb", "rsp-1")
    cloud.script.without_eni = {"10.1.0.2"}
    await p.targets(clb)
    with pytest.raises(ProviderError, match=r"no ENI in cn-hangzhou holds pod IP\(s\) 10\.1\.0\.2.*Terway"):
        await p.register(clb, ips(3))
    assert set(cloud.clb_backends("rsp-1")) == {"10.1.0.1:8080", "10.1.0.3:8080"}  # the others went in


async def test_nlb_batches_of_200_and_paging(cloud: AlibabaDouble) -> None:
    p, nlb = provider(), pool("nlb", "sgp-1")
    cloud.script.nlb_adding_polls = 0
    await p.bind("ns/web", [nlb])
    await p.targets(nlb)
    await p.register(nlb, ips(450))
    assert cloud.script.calls.count("AddServersToServerGroup") == 3  # 200 + 200 + 50
    before = cloud.script.calls.count("ListServerGroupServers")
    got = await p.targets(nlb)
    assert len(got) == 450
    assert cloud.script.calls.count("ListServerGroupServers") - before == 5  # pages of 100
    assert {st.health.health for st in got.values()} == {Health.HEALTHY}
    cloud.script.unhealthy = {"10.1.0.1:8080"}
    bad = (await p.targets(nlb))[ips(1)[0]]
    assert (bad.health.health, bad.health.reason) == (Health.UNHEALTHY, "CONNECT_FAILED")


async def test_nlb_health_is_read_to_the_last_page(cloud: AlibabaDouble) -> None:
    """30 servers still in their initial checks: the listener pages them (20 a page by default);
    none of them may read as healthy because it was not on the first page."""
    p, nlb = provider(), pool("nlb", "sgp-1")
    cloud.script.nlb_adding_polls = 0
    cloud.script.initial_polls = 100
    await p.bind("ns/web", [nlb])
    await p.targets(nlb)
    await p.register(nlb, ips(30))
    got = await p.targets(nlb)
    assert {st.health.reason for st in got.values()} == {"Initial"}
    assert {st.health.health for st in got.values()} == {Health.INITIAL}


async def test_nlb_new_server_waits_for_the_first_checks(cloud: AlibabaDouble) -> None:
    """Absent from the non-normal list is healthy only once the group's interval × healthy
    threshold has passed since the server became Available."""
    p, nlb = provider(), pool("nlb", "sgp-1")
    cloud.script.nlb_adding_polls = 0
    cloud.script.nlb_check_interval, cloud.script.nlb_healthy_threshold = 1, 2
    await p.bind("ns/web", [nlb])
    await p.targets(nlb)
    await p.register(nlb, ips(1))
    (st,) = (await p.targets(nlb)).values()
    assert (st.health.health, st.health.reason) == (Health.INITIAL, "Initial")
    assert "the first checks take 2s" in st.health.detail
    await asyncio.sleep(2.1)
    (st,) = (await p.targets(nlb)).values()
    assert st.health.health is Health.HEALTHY


async def test_a_group_is_bound_only_with_the_tags_of_this_cluster_and_service(cloud: AlibabaDouble) -> None:
    """The tags say whose a group is, in the cloud: another Service, another cluster or no tag
    at all is refused with a message naming the group and the tag, and nothing in it changes."""
    p = provider()
    await p.bind("ns/web", [pool("nlb", "sgp-1"), pool("clb", "rsp-1")])
    with pytest.raises(
        NotOwned,
        match=r"NLB server group sgp-1 is tagged podgate\.dev/service=ns/web: it is another Service's",
    ):
        await p.bind("ns/other", [pool("nlb", "sgp-1")])
    cloud.add_nlb("nlb-9", {"lsn-9": (80, "sgp-9")})
    with pytest.raises(NotOwned, match=r"NLB server group sgp-9 has no tag podgate\.dev/cluster"):
        await p.bind("ns/web", [pool("nlb", "sgp-9")])
    await tag("nlb", "servergroup", "sgp-9", owner_tags("prod", "ns/web"))
    with pytest.raises(NotOwned, match=r"sgp-9 is tagged podgate\.dev/cluster=prod: it is another cluster's"):
        await p.bind("ns/web", [pool("nlb", "sgp-9")])
    cloud.add_clb("lb-9", {80: "rsp-9"})
    with pytest.raises(NotOwned, match=r"CLB vServer group rsp-9 has no tag podgate\.dev/cluster"):
        await p.bind("ns/web", [pool("clb", "rsp-9")])
    refused = [c for c in cloud.script.calls if c not in ("ListTagResources", "TagResources")]
    await tag("clb", "vservergroup", "rsp-9", owner_tags(CLUSTER, "ns/web"))
    await p.bind("ns/web", [pool("clb", "rsp-9")])  # tagged by the administrator: bound
    assert "AddVServerGroupBackendServers" not in refused and "AddServersToServerGroup" not in refused
    assert (cloud.nlb_servers("sgp-9"), cloud.clb_backends("rsp-9")) == ({}, {})


async def test_an_accepted_group_is_read_again_after_the_accept_ttl(cloud: AlibabaDouble) -> None:
    """Tags are read on bind; an acceptance is remembered for a short while only, so a tag an
    administrator takes away is seen within that while, by this replica or a restarted one."""
    p = provider()
    now = [0.0]
    p.ownership.clock = lambda: now[0]
    await p.bind("ns/web", [pool("nlb", "sgp-1")])
    await p.bind("ns/web", [pool("nlb", "sgp-1")])
    assert cloud.script.calls.count("ListTagResources") == 1
    cloud.tag("sgp-1", {SERVICE_TAG: "ns/api"})
    now[0] += ACCEPT_TTL
    with pytest.raises(NotOwned, match="another Service's"):
        await p.bind("ns/web", [pool("nlb", "sgp-1")])
    with pytest.raises(NotOwned, match="another Service's"):  # a refusal is not remembered
        await provider().bind("ns/web", [pool("nlb", "sgp-1")])


async def test_unbind_takes_the_services_pods_out_of_its_groups(cloud: AlibabaDouble) -> None:
    p, clb, nlb = provider(), pool("clb", "rsp-1"), pool("nlb", "sgp-1")
    cloud.tag("sgp-1", {SERVICE_TAG: "ns/api"})
    await p.bind("ns/web", [clb])
    await p.bind("ns/api", [nlb])
    for each in (clb, nlb):
        await p.targets(each)
        await p.register(each, ips(3))
    await p.unbind("ns/web")
    assert cloud.clb_backends("rsp-1") == {}
    assert len(cloud.nlb_servers("sgp-1")) == 3  # another Service's group is untouched
    await p.unbind("ns/web")  # nothing left to do: no call
    assert cloud.script.calls[-1] == "RemoveVServerGroupBackendServers"


async def test_nlb_group_must_be_ip_and_exist(cloud: AlibabaDouble) -> None:
    p = provider()
    with pytest.raises(ProviderError, match=r"ServerGroupType 'Instance'.*needs an 'Ip' server group"):
        await p.bind("ns/web", [pool("nlb", "sgp-ecs")])
    with pytest.raises(ProviderError, match=r"sgp-any forwards all ports \(AnyPortEnabled\)"):
        await p.bind("ns/web", [pool("nlb", "sgp-any")])
    with pytest.raises(ProviderError, match="sgp-nope does not exist"):
        await p.bind("ns/web", [pool("nlb", "sgp-nope")])
    with pytest.raises(ProviderError, match=r"needs the annotation podgate\.dev/alibaba-nlb-server-group-id"):
        await p.bind("ns/web", [PoolSpec("ns", "web", 80, "", 8080, "TCP", HealthCheck())])


async def test_wrong_credentials_name_the_cloud_error(cloud: AlibabaDouble) -> None:
    with pytest.raises(ProviderError, match="DescribeVServerGroupAttribute: SignatureDoesNotMatch"):
        await provider(secret="wrong").targets(pool("clb", "rsp-1"))


async def test_throttling_is_retried_then_reported(cloud: AlibabaDouble) -> None:
    p, nlb = provider(), pool("nlb", "sgp-1")
    cloud.script.throttle_next = 3
    assert await p.targets(nlb) == {}
    assert (p.retry.throttled, cloud.script.throttled) == (3, 3)
    cloud.script.throttle_next = 100
    with pytest.raises(ProviderError, match=r"Throttling\.User"):
        await p.targets(nlb)
    assert p.retry.throttled == 3 + p.retry.max_retries


async def test_api_down_is_a_provider_error(cloud: AlibabaDouble) -> None:
    await cloud.stop()
    with pytest.raises(
        ProviderError, match=r"ListServerGroupServers: cannot reach the API: .*Connection refused"
    ):
        await provider().targets(pool("nlb", "sgp-1"))


async def test_only_podgates_own_backends_are_listed_drained_and_removed(cloud: AlibabaDouble) -> None:
    """Backends someone else added to a group tagged for the Service (no description, or not
    podgate's) are never listed, so never drained or removed, by this provider or a restarted
    one; podgate's own carry ``podgate/<namespace>/<name>``."""
    p, clb, nlb = provider(), pool("clb", "rsp-1"), pool("nlb", "sgp-1")
    cloud.script.nlb_adding_polls = 0
    foreign = Target("10.9.9.9", 8080)
    await p.transport.call(  # an administrator's server, through the SDK
        "nlb",
        "AddServersToServerGroup",
        {
            "ServerGroupId": "sgp-1",
            "Servers": [{"ServerId": foreign.ip, "ServerType": "Ip", "ServerIp": foreign.ip, "Port": 8080}],
        },
    )
    backend = {"ServerId": eni_for(foreign.ip), "Type": "eni", "ServerIp": foreign.ip, "Port": 8080}
    await p.transport.call(
        "clb",
        "AddVServerGroupBackendServers",
        {"VServerGroupId": "rsp-1", "BackendServers": json.dumps([{**backend, "Description": "admin"}])},
    )
    await p.bind("ns/web", [clb, nlb])
    for each in (clb, nlb):
        assert await p.targets(each) == {}
        await p.register(each, ips(2))
        assert set(await p.targets(each)) == set(ips(2))
        await p.drain(each, [foreign, *ips(1)])
        await p.deregister(each, [foreign])
    assert cloud.nlb_servers("sgp-1") == {
        "10.1.0.1:8080": ("Available", 0),
        "10.1.0.2:8080": ("Available", 100),
        "10.9.9.9:8080": ("Available", 100),
    }
    assert cloud.clb_backends("rsp-1") == {"10.9.9.9:8080": 100, "10.1.0.1:8080": 0, "10.1.0.2:8080": 100}
    restarted = provider()
    await restarted.bind("ns/web", [clb, nlb])
    await restarted.unbind("ns/web")
    assert list(cloud.nlb_servers("sgp-1")) == ["10.9.9.9:8080"]
    assert list(cloud.clb_backends("rsp-1")) == ["10.9.9.9:8080"]
