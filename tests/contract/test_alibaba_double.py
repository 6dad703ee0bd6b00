"""The Alibaba Cloud double driven by the real SDK over real HTTP on loopback.

The provider's tests can only be as good as the double they run against, so this checks the
double where it meets the SDK: every action round-trips through the SDK's own request encoding
and response models, both signature versions are accepted and a wrong secret, unknown key,
tampered request, reused nonce or stale clock is refused in Alibaba's codes, and the scripted
health, job and throttling behaviour comes out as the provider will see it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aiohttp
import pytest
from alibabacloud_credentials.client import Client as CredentialClient
from alibabacloud_credentials.models import Config as CredentialConfig
from alibabacloud_nlb20220430 import models as nlb
from alibabacloud_nlb20220430.client import Client as NlbClient
from alibabacloud_slb20140515 import models as slb
from alibabacloud_slb20140515.client import Client as SlbClient
from alibabacloud_tea_openapi import utils_models as openapi
from alibabacloud_tea_openapi.client import Client as OpenApiClient
from alibabacloud_tea_openapi.exceptions import ClientException
from alibabacloud_tea_openapi.utils import Utils
from darabonba.core import DaraCore
from darabonba.exceptions import UnretryableException
from darabonba.runtime import RuntimeOptions

from podgate_sandbox.doubles.alibaba import AlibabaDouble, eni_for

PORT = 15620
REGION = "cn-hangzhou"
AK, SECRET = "podgate-test-ak", "podgate-test-secret"


@pytest.fixture
async def cloud() -> AsyncIterator[tuple[AlibabaDouble, str]]:
    """The double with a CLB (listeners 80, 443), an NLB of an Ip group and one of an Instance group."""
    double = AlibabaDouble(REGION)
    double.add_clb("lb-web", {80: "rsp-web", 443: "rsp-tls"})
    double.add_nlb("nlb-web", {"lsn-web": (80, "sgp-web")})
    double.add_nlb("nlb-inst", {"lsn-inst": (90, "sgp-inst")}, server_group_type="Instance")
    endpoint = await double.start("127.0.0.1", PORT)
    try:
        yield double, endpoint
    finally:
        await double.stop()


def config(endpoint: str, **kw: Any) -> openapi.Config:
    kw.setdefault("access_key_id", AK)
    kw.setdefault("access_key_secret", SECRET)
    return openapi.Config(endpoint=endpoint, protocol="http", region_id=REGION, **kw)


def eni(ip: str, port: int, weight: int = 100) -> dict[str, Any]:
    return {"ServerId": eni_for(ip), "Type": "eni", "ServerIp": ip, "Port": port, "Weight": weight}


async def clb_call(client: SlbClient, action: str, group: str, servers: list[dict[str, Any]]) -> Any:
    """A CLB backend action (Add/Remove/Set) with the servers as the JSON string CLB takes."""
    method = {
        "add": ("add_vserver_group_backend_servers_async", slb.AddVServerGroupBackendServersRequest),
        "remove": ("remove_vserver_group_backend_servers_async", slb.RemoveVServerGroupBackendServersRequest),
        "set": ("set_vserver_group_attribute_async", slb.SetVServerGroupAttributeRequest),
    }[action]
    request = method[1](region_id=REGION, vserver_group_id=group, backend_servers=json.dumps(servers))
    return (await getattr(client, method[0])(request)).body


async def clb_health(client: SlbClient, listener_port: int | None = None) -> list[tuple[int, str, str]]:
    """(listener port, "ip:port", status) for every row of DescribeHealthStatus."""
    request = slb.DescribeHealthStatusRequest(
        region_id=REGION, load_balancer_id="lb-web", listener_port=listener_port
    )
    body = (await client.describe_health_status_async(request)).body
    return [
        (b.listener_port, f"{b.server_ip}:{b.port}", b.server_health_status)
        for b in body.backend_servers.backend_server
    ]


def ip_servers(model: type[Any], *keys: tuple[str, int], weight: int | None = None) -> list[Any]:
    """NLB ``Ip`` servers of the request model given, one per (ip, port)."""
    extra = {} if weight is None else {"weight": weight}
    return [model(server_id=ip, server_type="Ip", server_ip=ip, port=port, **extra) for ip, port in keys]


async def nlb_add(client: NlbClient, group: str, servers: list[Any]) -> Any:
    request = nlb.AddServersToServerGroupRequest(region_id=REGION, server_group_id=group, servers=servers)
    return (await client.add_servers_to_server_group_async(request)).body


async def nlb_list(client: NlbClient, group: str = "sgp-web", **kw: Any) -> Any:
    request = nlb.ListServerGroupServersRequest(region_id=REGION, server_group_id=group, **kw)
    return (await client.list_server_group_servers_async(request)).body


async def nlb_not_normal(client: NlbClient) -> dict[str, tuple[str, str | None]]:
    """GetListenerHealthStatus of lsn-web: "ip:port" → (status, reason code) of the servers listed."""
    request = nlb.GetListenerHealthStatusRequest(region_id=REGION, listener_id="lsn-web")
    body = (await client.get_listener_health_status_async(request)).body
    [listener] = body.listener_health_status
    [info] = listener.server_group_infos
    assert (listener.listener_port, info.server_group_id, info.heath_check_enabled) == (80, "sgp-web", True)
    return {
        f"{s.server_ip}:{s.port}": (s.status, s.reason.reason_code if s.reason else None)
        for s in info.non_normal_servers
    }


def rpc(action: str, version: str) -> Any:
    """An RPC-style action for the generic client, as the product SDKs describe theirs."""
    return openapi.Params(
        action=action,
        version=version,
        protocol="HTTPS",
        pathname="/",
        method="POST",
        auth_type="AK",
        style="RPC",
        req_body_type="formData",
        body_type="json",
    )


async def ecs_enis(endpoint: str, ips: list[str], **kw: Any) -> dict[str, Any]:
    """DescribeNetworkInterfaces through the generic client, as there is no ECS SDK package."""
    client = OpenApiClient(config(endpoint, **kw))
    params = rpc("DescribeNetworkInterfaces", "2014-05-26")
    request = openapi.OpenApiRequest(query=Utils.query({"RegionId": REGION, "PrivateIpAddress": ips}))
    answer = await client.call_api_async(params, request, RuntimeOptions())
    return dict(answer["body"])


async def refused(call: Awaitable[Any]) -> ClientException:
    with pytest.raises(ClientException) as info:
        await call
    return info.value


async def test_clb_backends_round_trip(cloud: tuple[AlibabaDouble, str]) -> None:
    double, endpoint = cloud
    client = SlbClient(config(endpoint))
    a, b = eni("10.0.0.1", 8080), eni("10.0.0.2", 8080, weight=50)
    body = await clb_call(client, "add", "rsp-web", [a, b, a])  # a repeat counts once
    assert [(s.server_id, s.port, s.weight, s.type) for s in body.backend_servers.backend_server] == [
        (eni_for("10.0.0.1"), 8080, 100, "eni"),
        (eni_for("10.0.0.2"), 8080, 50, "eni"),
    ]
    assert double.clb_backends("rsp-web") == {"10.0.0.1:8080": 100, "10.0.0.2:8080": 50}
    await clb_call(client, "add", "rsp-web", [eni("10.0.0.1", 8080, weight=7)])  # already there: no change
    assert double.clb_backends("rsp-web") == {"10.0.0.1:8080": 100, "10.0.0.2:8080": 50}

    request = slb.DescribeVServerGroupAttributeRequest(region_id=REGION, vserver_group_id="rsp-web")
    described = (await client.describe_vserver_group_attribute_async(request)).body
    assert (described.vserver_group_id, described.load_balancer_id, described.vserver_group_name) == (
        "rsp-web",
        "lb-web",
        "podgate-rsp-web",
    )
    assert [
        (s.server_id, s.server_ip, s.port, s.weight, s.type) for s in described.backend_servers.backend_server
    ] == [
        (eni_for("10.0.0.1"), "10.0.0.1", 8080, 100, "eni"),
        (eni_for("10.0.0.2"), "10.0.0.2", 8080, 50, "eni"),
    ]
    assert described.request_id

    await clb_call(client, "set", "rsp-web", [eni("10.0.0.1", 8080, weight=0)])
    assert double.clb_backends("rsp-web") == {"10.0.0.1:8080": 0, "10.0.0.2:8080": 50}
    body = await clb_call(client, "remove", "rsp-web", [eni("10.0.0.2", 8080)])
    assert [(s.server_id, s.weight) for s in body.backend_servers.backend_server] == [
        (eni_for("10.0.0.1"), 0)
    ]
    assert double.clb_backends("rsp-web") == {"10.0.0.1:8080": 0}
    assert double.script.calls == [
        "AddVServerGroupBackendServers",
        "AddVServerGroupBackendServers",
        "DescribeVServerGroupAttribute",
        "SetVServerGroupAttribute",
        "RemoveVServerGroupBackendServers",
    ]


async def test_clb_rejects_what_clb_rejects(cloud: tuple[AlibabaDouble, str]) -> None:
    double, endpoint = cloud
    client = SlbClient(config(endpoint))
    too_many = [eni(f"10.0.1.{i}", 80) for i in range(21)]
    e = await refused(clb_call(client, "add", "rsp-web", too_many))
    assert (e.status_code, e.code) == (400, "InvalidParameter")
    assert "BackendServers" in e.message
    assert double.clb_backends("rsp-web") == {}
    await clb_call(client, "add", "rsp-web", too_many[:20])  # exactly the limit is fine
    assert len(double.clb_backends("rsp-web")) == 20

    wrong_eni = {**eni("10.0.2.1", 80), "ServerId": eni_for("10.0.2.2")}
    e = await refused(clb_call(client, "add", "rsp-tls", [eni("10.0.2.3", 80), wrong_eni]))
    assert (e.status_code, e.code) == (404, "ResourceNotFound.vServers")
    assert double.clb_backends("rsp-tls") == {}  # nothing of a refused call is applied
    no_ip = {k: v for k, v in eni("10.0.2.1", 80).items() if k != "ServerIp"}
    assert (await refused(clb_call(client, "add", "rsp-tls", [no_ip]))).code == "InvalidParameter"
    ecs = {"ServerId": "i-abc", "Type": "ecs", "Port": 80}
    assert (await refused(clb_call(client, "add", "rsp-tls", [ecs]))).code == "InvalidServerId.NotExist"
    e = await refused(clb_call(client, "set", "rsp-web", [eni("10.0.1.0", 80, weight=101)]))
    assert (e.code, double.clb_backends("rsp-web")["10.0.1.0:80"]) == ("InvalidParameter", 100)
    e = await refused(clb_call(client, "add", "rsp-nope", [eni("10.0.2.1", 80)]))
    assert (e.code, e.message.split(", ")[1].split(" request id")[0]) == (
        "InvalidParameter",
        "The specified VServerGroupId does not exist.",
    )
    request = slb.DescribeHealthStatusRequest(region_id=REGION, load_balancer_id="lb-nope")
    e = await refused(client.describe_health_status_async(request))
    assert (e.status_code, e.code) == (404, "InvalidLoadBalancerId.NotFound")


async def test_clb_health_counts_down_per_poll_that_includes_the_backend(
    cloud: tuple[AlibabaDouble, str],
) -> None:
    double, endpoint = cloud
    client = SlbClient(config(endpoint))
    double.script.initial_polls = 2
    await clb_call(client, "add", "rsp-web", [eni("10.0.0.1", 8080)])
    await clb_call(client, "add", "rsp-tls", [eni("10.0.0.9", 8443)])
    assert await clb_health(client, 80) == [(80, "10.0.0.1:8080", "unavailable")]
    assert await clb_health(client, 80) == [(80, "10.0.0.1:8080", "unavailable")]
    assert await clb_health(client, 80) == [(80, "10.0.0.1:8080", "normal")]
    # the 443 backend was in none of those polls: its countdown has not moved
    assert await clb_health(client) == [
        (80, "10.0.0.1:8080", "normal"),
        (443, "10.0.0.9:8443", "unavailable"),
    ]

    double.script.unhealthy.add("10.0.0.1:8080")
    double.script.new_targets_unhealthy = True
    double.script.initial_polls = 0
    await clb_call(client, "add", "rsp-web", [eni("10.0.0.2", 8080)])
    assert await clb_health(client) == [
        (80, "10.0.0.1:8080", "abnormal"),
        (80, "10.0.0.2:8080", "abnormal"),
        (443, "10.0.0.9:8443", "unavailable"),
    ]
    assert double.script.unhealthy == {"10.0.0.1:8080", "10.0.0.2:8080"}
    assert double.script.health_polls == 5


async def test_nlb_discovery_and_servers_round_trip(cloud: tuple[AlibabaDouble, str]) -> None:
    double, endpoint = cloud
    client = NlbClient(config(endpoint))
    request = nlb.ListServerGroupsRequest(region_id=REGION, server_group_ids=["sgp-web"])
    groups = (await client.list_server_groups_async(request)).body
    assert groups.total_count == 1
    [group] = groups.server_groups
    assert (group.server_group_id, group.server_group_type, group.related_load_balancer_ids) == (
        "sgp-web",
        "Ip",
        ["nlb-web"],
    )
    request = nlb.ListListenersRequest(region_id=REGION, load_balancer_ids=["nlb-inst"])
    [listener] = (await client.list_listeners_async(request)).body.listeners
    assert (
        listener.listener_id,
        listener.listener_port,
        listener.server_group_id,
        listener.load_balancer_id,
    ) == (
        "lsn-inst",
        90,
        "sgp-inst",
        "nlb-inst",
    )

    added = await nlb_add(
        client, "sgp-web", ip_servers(nlb.AddServersToServerGroupRequestServers, ("10.1.0.1", 80))
    )
    assert added.server_group_id == "sgp-web"
    assert added.job_id
    assert double.nlb_servers("sgp-web") == {"10.1.0.1:80": ("Adding", 100)}  # an async job: Adding first
    [server] = (await nlb_list(client)).servers
    assert (server.server_id, server.server_ip, server.server_type, server.port, server.status) == (
        "10.1.0.1",
        "10.1.0.1",
        "Ip",
        80,
        "Adding",
    )
    assert [s.status for s in (await nlb_list(client)).servers] == ["Available"]

    servers = ip_servers(nlb.UpdateServerGroupServersAttributeRequestServers, ("10.1.0.1", 80), weight=0)
    request = nlb.UpdateServerGroupServersAttributeRequest(
        region_id=REGION, server_group_id="sgp-web", servers=servers
    )
    assert (await client.update_server_group_servers_attribute_async(request)).body.job_id
    assert double.nlb_servers("sgp-web") == {"10.1.0.1:80": ("Available", 0)}

    servers = ip_servers(nlb.RemoveServersFromServerGroupRequestServers, ("10.1.0.1", 80))
    request = nlb.RemoveServersFromServerGroupRequest(
        region_id=REGION, server_group_id="sgp-web", servers=servers
    )
    await client.remove_servers_from_server_group_async(request)
    assert double.nlb_servers("sgp-web") == {}
    e = await refused(client.remove_servers_from_server_group_async(request))
    assert (e.status_code, e.code) == (404, "ResourceNotFound.BackendServer")


async def test_nlb_lists_page_with_next_token(cloud: tuple[AlibabaDouble, str]) -> None:
    double, endpoint = cloud
    client = NlbClient(config(endpoint))
    keys = [(f"10.2.0.{i}", 80) for i in range(45)]
    await nlb_add(client, "sgp-web", ip_servers(nlb.AddServersToServerGroupRequestServers, *keys))
    pages, token = [], None
    while True:
        page = await nlb_list(client, max_results=20, next_token=token)
        assert page.total_count == 45
        pages.append([s.server_ip for s in page.servers])
        token = page.next_token
        if not token:
            break
    assert [len(p) for p in pages] == [20, 20, 5]
    assert [ip for page in pages for ip in page] == [ip for ip, _ in keys]
    assert len((await nlb_list(client)).servers) == 20  # the documented default page
    assert (await refused(nlb_list(client, max_results=101))).code == "IllegalParam.MaxResults"
    assert double.nlb_servers("sgp-web")["10.2.0.0:80"] == ("Available", 100)


async def test_nlb_rejects_what_nlb_rejects(cloud: tuple[AlibabaDouble, str]) -> None:
    double, endpoint = cloud
    client = NlbClient(config(endpoint))
    add = nlb.AddServersToServerGroupRequestServers
    too_many = ip_servers(add, *[(f"10.3.{i // 250}.{i % 250}", 80) for i in range(201)])
    e = await refused(nlb_add(client, "sgp-web", too_many))
    assert (e.status_code, e.code) == (400, "IllegalParam.Servers")
    await nlb_add(client, "sgp-web", too_many[:200])
    assert len(double.nlb_servers("sgp-web")) == 200

    ip_into_instance = ip_servers(add, ("10.4.0.1", 80))
    assert (await refused(nlb_add(client, "sgp-inst", ip_into_instance))).code == "Mismatch.ServerType"
    ecs_into_ip = [add(server_id="i-abc", server_type="Ecs", port=80)]
    assert (await refused(nlb_add(client, "sgp-web", ecs_into_ip))).code == "Mismatch.ServerType"
    id_not_ip = [add(server_id="10.4.0.2", server_type="Ip", server_ip="10.4.0.3", port=80)]
    assert (await refused(nlb_add(client, "sgp-web", id_not_ip))).code == "IllegalParam.IP"
    twice = ip_servers(add, ("10.4.0.4", 80), ("10.4.0.4", 80))
    assert (await refused(nlb_add(client, "sgp-web", twice))).code == "DuplicatedParam.Server"
    e = await refused(nlb_add(client, "sgp-nope", ip_servers(add, ("10.4.0.5", 80))))
    assert (e.status_code, e.code) == (404, "ResourceNotFound.serverGroup")
    assert len(double.nlb_servers("sgp-web")) == 200  # none of the refused calls changed anything

    eni_server = add(server_id=eni_for("10.4.0.6"), server_type="Eni", server_ip="10.4.0.6", port=90)
    await nlb_add(client, "sgp-inst", [eni_server])
    assert double.nlb_servers("sgp-inst") == {"10.4.0.6:90": ("Adding", 100)}
    wrong_eni = add(server_id=eni_for("10.4.0.8"), server_type="Eni", server_ip="10.4.0.7", port=90)
    assert (await refused(nlb_add(client, "sgp-inst", [wrong_eni]))).code == "ResourceNotFound.Eni"


async def test_nlb_health_lists_only_servers_not_normal(cloud: tuple[AlibabaDouble, str]) -> None:
    double, endpoint = cloud
    client = NlbClient(config(endpoint))
    double.script.nlb_adding_polls = 1
    await nlb_add(client, "sgp-web", ip_servers(nlb.AddServersToServerGroupRequestServers, ("10.5.0.1", 80)))
    assert await nlb_not_normal(client) == {"10.5.0.1:80": ("Initial", None)}  # still Adding
    await nlb_list(client)
    assert await nlb_not_normal(client) == {}  # healthy servers are not listed

    double.script.initial_polls = 2
    double.script.nlb_adding_polls = 0
    double.script.new_targets_unhealthy = True
    await nlb_add(client, "sgp-web", ip_servers(nlb.AddServersToServerGroupRequestServers, ("10.5.0.2", 80)))
    assert await nlb_not_normal(client) == {"10.5.0.2:80": ("Initial", None)}
    assert await nlb_not_normal(client) == {"10.5.0.2:80": ("Initial", None)}
    assert await nlb_not_normal(client) == {"10.5.0.2:80": ("Unhealthy", "CONNECT_FAILED")}
    double.script.unhealthy.add("10.5.0.1:80")
    assert await nlb_not_normal(client) == {
        "10.5.0.1:80": ("Unhealthy", "CONNECT_FAILED"),
        "10.5.0.2:80": ("Unhealthy", "CONNECT_FAILED"),
    }
    assert double.script.health_polls == 6


async def test_ecs_network_interfaces_by_private_ip(cloud: tuple[AlibabaDouble, str]) -> None:
    _, endpoint = cloud
    credential = CredentialClient(
        CredentialConfig(type="access_key", access_key_id=AK, access_key_secret=SECRET)
    )  # the provider's way: a credentials client, not keys in the Config
    body = await ecs_enis(
        endpoint, ["10.6.0.1", "10.6.0.2"], access_key_id=None, access_key_secret=None, credential=credential
    )
    assert body["TotalCount"] == 2
    sets = body["NetworkInterfaceSets"]["NetworkInterfaceSet"]
    assert [(s["NetworkInterfaceId"], s["PrivateIpAddress"], s["Type"], s["Status"]) for s in sets] == [
        (eni_for("10.6.0.1"), "10.6.0.1", "Secondary", "InUse"),
        (eni_for("10.6.0.2"), "10.6.0.2", "Secondary", "InUse"),
    ]
    assert sets[0]["PrivateIpSets"]["PrivateIpSet"] == [{"PrivateIpAddress": "10.6.0.1", "Primary": True}]
    e = await refused(ecs_enis(endpoint, [f"10.6.1.{i}" for i in range(101)]))
    assert (e.code, e.status_code) == ("InvalidParameter", 400)


async def test_v2_rpc_signature_is_accepted_and_checked(cloud: tuple[AlibabaDouble, str]) -> None:
    double, endpoint = cloud
    clb = SlbClient(config(endpoint, signature_algorithm="v2"))
    await clb_call(clb, "add", "rsp-web", [eni("10.7.0.1", 80)])  # parameters in the query
    nlb_client = NlbClient(config(endpoint, signature_algorithm="v2"))
    servers = ip_servers(nlb.AddServersToServerGroupRequestServers, ("10.7.0.2", 80))
    await nlb_add(nlb_client, "sgp-web", servers)  # parameters in a form body, signed too
    body = await ecs_enis(endpoint, ["10.7.0.3"], signature_algorithm="v2")
    assert body["TotalCount"] == 1
    assert double.clb_backends("rsp-web") == {"10.7.0.1:80": 100}
    assert double.nlb_servers("sgp-web") == {"10.7.0.2:80": ("Adding", 100)}

    wrong = SlbClient(config(endpoint, signature_algorithm="v2", access_key_secret="not-the-secret"))
    e = await refused(clb_call(wrong, "add", "rsp-web", [eni("10.7.0.4", 80)]))
    assert (e.status_code, e.code) == (400, "SignatureDoesNotMatch")
    assert double.clb_backends("rsp-web") == {"10.7.0.1:80": 100}


async def test_wrong_secret_and_unknown_key_are_refused_before_anything_happens(
    cloud: tuple[AlibabaDouble, str],
) -> None:
    double, endpoint = cloud
    wrong = SlbClient(config(endpoint, access_key_secret="not-the-secret"))
    e = await refused(clb_call(wrong, "add", "rsp-web", [eni("10.8.0.1", 80)]))
    assert (e.status_code, e.code) == (400, "SignatureDoesNotMatch")
    unknown = NlbClient(config(endpoint, access_key_id="LTAI-nobody"))
    e = await refused(nlb_list(unknown))
    assert (e.status_code, e.code) == (404, "InvalidAccessKeyId.NotFound")
    assert double.script.calls == []
    assert double.clb_backends("rsp-web") == {}
    other = AlibabaDouble(REGION, credentials={"ak-2": "secret-2"})
    assert other.credentials == {"ak-2": "secret-2"}


async def test_a_request_changed_after_signing_is_refused(
    cloud: tuple[AlibabaDouble, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    double, endpoint = cloud
    send = DaraCore.async_do_action

    async def tamper(request: Any, runtime_option: Any = None) -> Any:
        if "VServerGroupId" in request.query:
            request.query["VServerGroupId"] = "rsp-tls"  # a signed query parameter
        if isinstance(request.body, str):
            request.body = request.body.replace("Port=80", "Port=81")  # the signed form body
        return await send(request, runtime_option)

    monkeypatch.setattr(DaraCore, "async_do_action", staticmethod(tamper))
    clb = SlbClient(config(endpoint))
    assert (
        await refused(clb_call(clb, "add", "rsp-web", [eni("10.9.0.1", 80)]))
    ).code == "SignatureDoesNotMatch"
    servers = ip_servers(nlb.AddServersToServerGroupRequestServers, ("10.9.0.2", 80))
    assert (
        await refused(nlb_add(NlbClient(config(endpoint)), "sgp-web", servers))
    ).code == "SignatureDoesNotMatch"
    v2 = SlbClient(config(endpoint, signature_algorithm="v2"))
    assert (
        await refused(clb_call(v2, "add", "rsp-web", [eni("10.9.0.3", 80)]))
    ).code == "SignatureDoesNotMatch"
    assert (
        double.clb_backends("rsp-web"),
        double.clb_backends("rsp-tls"),
        double.nlb_servers("sgp-web"),
    ) == (
        {},
        {},
        {},
    )


async def test_a_reused_nonce_or_stale_clock_is_refused(
    cloud: tuple[AlibabaDouble, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    double, endpoint = cloud
    monkeypatch.setattr(Utils, "get_nonce", staticmethod(lambda: "the-same-nonce"))
    client = NlbClient(config(endpoint))
    await nlb_list(client)
    assert (await refused(nlb_list(client))).code == "SignatureNonceUsed"
    v2 = NlbClient(config(endpoint, signature_algorithm="v2"))  # SignatureNonce, same store
    assert (await refused(nlb_list(v2))).code == "SignatureNonceUsed"
    monkeypatch.undo()

    monkeypatch.setattr(Utils, "get_timestamp", staticmethod(lambda: "2020-01-01T00:00:00Z"))
    assert (await refused(nlb_list(client))).code == "InvalidTimeStamp.Expired"
    assert (await refused(nlb_list(v2))).code == "InvalidTimeStamp.Expired"
    assert double.script.calls == ["ListServerGroupServers"]


async def test_throttle_next_answers_throttling_user(cloud: tuple[AlibabaDouble, str]) -> None:
    double, endpoint = cloud
    double.script.throttle_next = 2
    client = NlbClient(config(endpoint))
    for _ in range(2):
        e = await refused(nlb_list(client))
        assert (e.status_code, e.code) == (400, "Throttling.User")
    assert (await nlb_list(client)).total_count == 0
    assert (double.script.throttle_next, double.script.throttled) == (0, 2)
    assert double.script.calls == ["ListServerGroupServers"] * 3


async def test_unknown_action_region_and_unsigned_request(cloud: tuple[AlibabaDouble, str]) -> None:
    double, endpoint = cloud
    client = OpenApiClient(config(endpoint))
    params = rpc("DescribeNothing", "2014-05-15")
    request = openapi.OpenApiRequest(query={"RegionId": REGION})
    e = await refused(client.call_api_async(params, request, RuntimeOptions()))
    assert (e.status_code, e.code) == (404, "InvalidAction.NotFound")

    request = slb.DescribeVServerGroupAttributeRequest(region_id="cn-beijing", vserver_group_id="rsp-web")
    e = await refused(SlbClient(config(endpoint)).describe_vserver_group_attribute_async(request))
    assert (e.status_code, e.code) == (404, "InvalidRegionId.NotFound")

    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://{endpoint}/?Action=ListServerGroups&Version=2022-04-30") as response,
    ):
        error = await response.json(content_type=None)
    assert response.status == 400
    assert error["Code"] == "IncompleteSignature"
    assert set(error) == {"RequestId", "HostId", "Code", "Message", "Recommend"}
    assert error["HostId"] == endpoint
    assert double.script.calls == ["DescribeNothing", "DescribeVServerGroupAttribute"]


async def test_stop_then_start_again(cloud: tuple[AlibabaDouble, str]) -> None:
    double, endpoint = cloud
    client = SlbClient(config(endpoint))
    await clb_call(client, "add", "rsp-web", [eni("10.10.0.1", 80)])
    await double.stop()
    with pytest.raises(
        UnretryableException, match="Cannot connect to host"
    ):  # the SDK's wrapper of the refused connection
        await clb_call(client, "add", "rsp-web", [eni("10.10.0.2", 80)])
    assert await double.start("127.0.0.1", PORT) == endpoint
    await clb_call(client, "add", "rsp-web", [eni("10.10.0.3", 80)])
    assert double.clb_backends("rsp-web") == {"10.10.0.1:80": 100, "10.10.0.3:80": 100}


async def test_tags_round_trip_through_both_sdks(cloud: tuple[AlibabaDouble, str]) -> None:
    """TagResources and ListTagResources as each product's SDK models send and read them: by
    resource id, by tag (a key alone matches any value), paged by NextToken, and a type the
    product does not tag refused in its own words."""
    double, endpoint = cloud
    c, n = SlbClient(config(endpoint)), NlbClient(config(endpoint))
    owner = [("podgate.dev/cluster", "sandbox"), ("podgate.dev/service", "shop/web")]
    await c.tag_resources_async(
        slb.TagResourcesRequest(
            region_id=REGION,
            resource_type="vservergroup",
            resource_id=["rsp-web"],
            tag=[slb.TagResourcesRequestTag(key=k, value=v) for k, v in owner],
        )
    )
    await n.tag_resources_async(
        nlb.TagResourcesRequest(
            region_id=REGION,
            resource_type="servergroup",
            resource_id=["sgp-web", "sgp-inst"],
            tag=[nlb.TagResourcesRequestTag(key=k, value=v) for k, v in owner],
        )
    )
    body = (
        await c.list_tag_resources_async(
            slb.ListTagResourcesRequest(
                region_id=REGION, resource_type="vservergroup", resource_id=["rsp-web"]
            )
        )
    ).body
    assert [(r.resource_id, r.tag_key, r.tag_value) for r in body.tag_resources.tag_resource] == [
        ("rsp-web", k, v) for k, v in owner
    ]
    assert body.next_token is None
    rows = (
        await n.list_tag_resources_async(
            nlb.ListTagResourcesRequest(
                region_id=REGION,
                resource_type="servergroup",
                tag=[nlb.ListTagResourcesRequestTag(key="podgate.dev/service")],
                max_results=2,
            )
        )
    ).body
    assert [(r.resource_id, r.tag_key) for r in rows.tag_resources] == [
        ("sgp-web", "podgate.dev/cluster"),
        ("sgp-web", "podgate.dev/service"),
    ]
    rest = (
        await n.list_tag_resources_async(
            nlb.ListTagResourcesRequest(
                region_id=REGION,
                resource_type="servergroup",
                tag=[nlb.ListTagResourcesRequestTag(key="podgate.dev/service")],
                max_results=2,
                next_token=rows.next_token,
            )
        )
    ).body
    assert [r.resource_id for r in rest.tag_resources] == ["sgp-inst", "sgp-inst"] and not rest.next_token
    # ListServerGroups shows the same tags
    groups = (
        await n.list_server_groups_async(
            nlb.ListServerGroupsRequest(region_id=REGION, server_group_ids=["sgp-web"])
        )
    ).body.server_groups
    assert [(t.key, t.value) for t in groups[0].tags] == owner
    assert double.tags_of("rsp-web") == dict(owner)
    with pytest.raises(ClientException) as refused:
        await n.tag_resources_async(
            nlb.TagResourcesRequest(
                region_id=REGION,
                resource_type="vservergroup",
                resource_id=["sgp-web"],
                tag=[nlb.TagResourcesRequestTag(key="a", value="b")],
            )
        )
    assert refused.value.code == "IllegalParam.ResourceType"
    with pytest.raises(ClientException) as missing:
        await c.tag_resources_async(
            slb.TagResourcesRequest(
                region_id=REGION,
                resource_type="vservergroup",
                resource_id=["rsp-nope"],
                tag=[slb.TagResourcesRequestTag(key="a", value="b")],
            )
        )
    assert missing.value.code == "ResourceNotFound"
