"""Alibaba Cloud answers → podgate: the cloud's own health words become the gate's reason, and a
Service's group annotation binds each port to exactly one group."""

from __future__ import annotations

import re
from typing import Any

import pytest

from podgate.model import lb
from podgate.model.lb import Health, ServerGroup, ServiceConfigError, server_groups
from podgate.providers.alibaba import clb_target, endpoint, nlb_target

GATE = "service.readiness.podgate.dev/web"
WHERE = "CLB lb-1 vServer group rsp-1"


def check(status: str, listener: int = 80) -> dict[str, Any]:
    return {"ServerIp": "10.0.0.5", "Port": 8080, "ListenerPort": listener, "ServerHealthStatus": status}


@pytest.mark.parametrize(
    ("weight", "checks", "admin", "health", "cond_status", "cond_reason", "words"),
    [
        (100, [check("normal")], "ready", Health.HEALTHY, "True", "TargetHealthy", "normal on listener 80"),
        (
            100,
            [check("normal", 80), check("normal", 443)],
            "ready",
            Health.HEALTHY,
            "True",
            "TargetHealthy",
            "listener 80, 443",
        ),
        (100, [check("abnormal")], "ready", Health.UNHEALTHY, "False", "abnormal", "abnormal on listener 80"),
        (
            100,
            [check("normal", 80), check("abnormal", 443)],
            "ready",
            Health.UNHEALTHY,
            "False",
            "abnormal",
            "listener 443",
        ),
        (
            100,
            [check("unavailable")],
            "ready",
            Health.UNKNOWN,
            "False",
            "unavailable",
            "ServerHealthStatus unavailable",
        ),
        (100, [], "ready", Health.INITIAL, "False", "NoHealthStatus", "no listener reports"),
        (0, [check("normal")], "drain", Health.DRAINING, "False", "TargetDraining", "weight 0"),
    ],
)
def test_clb_health_mapping(
    weight: int,
    checks: list[dict[str, Any]],
    admin: str,
    health: Health,
    cond_status: str,
    cond_reason: str,
    words: str,
) -> None:
    backend = {"ServerId": "eni-1", "ServerIp": "10.0.0.5", "Port": 8080, "Type": "eni", "Weight": weight}
    st = clb_target(backend, checks, WHERE)
    assert (st.admin, st.health.health) == (admin, health)
    cond = lb.gate_condition(GATE, [st.health])
    assert (cond["status"], cond["reason"]) == (cond_status, cond_reason)
    assert words in cond["message"] and WHERE in cond["message"]


def bad(status: str, code: str | None = None) -> dict[str, Any]:
    reason = {"Reason": {"ReasonCode": code}} if code else {}
    return {"ServerIp": "10.0.0.5", "Port": 8080, "Status": status, **reason, "_listener": "lsn-1"}


@pytest.mark.parametrize(
    ("status", "weight", "listeners", "non_normal", "admin", "health", "cond_status", "cond_reason"),
    [
        ("Available", 100, ["lsn-1"], None, "ready", Health.HEALTHY, "True", "TargetHealthy"),
        ("Adding", 100, ["lsn-1"], None, "ready", Health.INITIAL, "False", "Adding"),
        ("Configuring", 100, ["lsn-1"], None, "ready", Health.INITIAL, "False", "Configuring"),
        ("Available", 100, ["lsn-1"], bad("Initial"), "ready", Health.INITIAL, "False", "Initial"),
        (
            "Available",
            100,
            ["lsn-1"],
            bad("Unhealthy", "CONNECT_FAILED"),
            "ready",
            Health.UNHEALTHY,
            "False",
            "CONNECT_FAILED",
        ),
        (
            "Available",
            100,
            ["lsn-1"],
            bad("Unhealthy", "HTTP_CODE_NOT_MATCH"),
            "ready",
            Health.UNHEALTHY,
            "False",
            "HTTP_CODE_NOT_MATCH",
        ),
        ("Available", 100, ["lsn-1"], bad("Unhealthy"), "ready", Health.UNHEALTHY, "False", "Unhealthy"),
        ("Available", 100, ["lsn-1"], bad("Unavailable"), "ready", Health.UNKNOWN, "False", "Unavailable"),
        ("Available", 100, [], None, "ready", Health.UNKNOWN, "False", "NoListener"),
        ("Available", 0, ["lsn-1"], None, "drain", Health.DRAINING, "False", "TargetDraining"),
    ],
)
def test_nlb_health_mapping(
    status: str,
    weight: int,
    listeners: list[str],
    non_normal: dict[str, Any] | None,
    admin: str,
    health: Health,
    cond_status: str,
    cond_reason: str,
) -> None:
    server = {
        "ServerId": "10.0.0.5",
        "ServerIp": "10.0.0.5",
        "Port": 8080,
        "Status": status,
        "Weight": weight,
    }
    st = nlb_target(server, listeners, {"10.0.0.5:8080": non_normal} if non_normal else {}, "NLB sgp-1")
    assert (st.admin, st.health.health) == (admin, health)
    cond = lb.gate_condition(GATE, [st.health])
    assert (cond["status"], cond["reason"]) == (cond_status, cond_reason)
    assert cond["message"].startswith("NLB sgp-1: ")


def test_nlb_reason_code_is_quoted_with_the_listener() -> None:
    server = {"ServerIp": "10.0.0.5", "Port": 8080, "Status": "Available", "Weight": 100}
    st = nlb_target(server, ["lsn-1"], {"10.0.0.5:8080": bad("Unhealthy", "CONNECT_TIMEOUT")}, "NLB sgp-1")
    assert st.health.detail == "Unhealthy: CONNECT_TIMEOUT on listener lsn-1"


def test_server_group_annotations() -> None:
    clb, nlb = lb.ALIBABA_CLB_GROUP, lb.ALIBABA_NLB_GROUP
    assert server_groups({}, [80]) == {}
    assert server_groups({nlb: " sgp-abc "}, [80]) == {80: ServerGroup("nlb", "sgp-abc")}
    assert server_groups({clb: "rsp-a:80,rsp-b:443"}, [80, 443]) == {
        80: ServerGroup("clb", "rsp-a"),
        443: ServerGroup("clb", "rsp-b"),
    }


@pytest.mark.parametrize(
    ("annotations", "ports", "message"),
    [
        ({lb.ALIBABA_CLB_GROUP: "rsp-a", lb.ALIBABA_NLB_GROUP: "sgp-a"}, [80], "exclude each other"),
        ({lb.ALIBABA_NLB_GROUP: "sgp-a"}, [80, 443], "name a group per port"),
        ({lb.ALIBABA_NLB_GROUP: "sgp-a:80"}, [80, 443], "no group for port(s) [443]"),
        ({lb.ALIBABA_NLB_GROUP: "sgp-a:80,sgp-a:443"}, [80, 443], "its own group"),
        ({lb.ALIBABA_NLB_GROUP: "sgp-a:81"}, [80], "has no port 81"),
        ({lb.ALIBABA_NLB_GROUP: "sgp-a:80,sgp-b:80"}, [80], "named twice"),
        ({lb.ALIBABA_NLB_GROUP: "sgp a"}, [80], "not a server group id"),
        ({lb.ALIBABA_NLB_GROUP: "sgp-a:http"}, [80], "is not ID:PORT"),
    ],
)
def test_bad_server_group_annotations(annotations: dict[str, str], ports: list[int], message: str) -> None:
    with pytest.raises(ServiceConfigError, match=re.escape(message)):
        server_groups(annotations, ports)


def test_pools_carry_their_group() -> None:
    service = {
        "metadata": {"namespace": "ns", "name": "web", "annotations": {lb.ALIBABA_NLB_GROUP: "sgp-1"}},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 53, "protocol": "UDP"}]},
    }
    (pool,) = lb.pools_for(service)
    assert pool.server_group == ServerGroup("nlb", "sgp-1")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (None, (None, None)),
        ("slb-vpc.cn-hangzhou.aliyuncs.com", ("slb-vpc.cn-hangzhou.aliyuncs.com", None)),
        ("http://127.0.0.1:15620", ("127.0.0.1:15620", "http")),
        ("https://nlb.cn-hangzhou.aliyuncs.com", ("nlb.cn-hangzhou.aliyuncs.com", "https")),
    ],
)
def test_endpoint(url: str | None, expected: tuple[str | None, str | None]) -> None:
    assert endpoint(url) == expected


def test_endpoint_rejects_other_schemes() -> None:
    with pytest.raises(ValueError, match="not an http"):
        endpoint("ftp://example")
