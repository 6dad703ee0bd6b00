"""Alibaba Cloud answers → podgate: the cloud's own health words become the gate's reason, and a
Service's group annotation binds each port to exactly one group."""

from __future__ import annotations

import re
from typing import Any

import pytest

from podgate.model import lb
from podgate.model.lb import GroupRef, Health, ServiceConfigError, pool_groups
from podgate.providers.alibaba.mapping import ListenerReport, clb_target, nlb_target, retryable
from podgate.providers.alibaba.provider import AlibabaProvider
from podgate.providers.alibaba.transport import endpoint

GATE = "service.readiness.podgate.dev/web"
WHERE = "CLB lb-1 vServer group rsp-1"


def check(status: str, listener: int = 80) -> dict[str, Any]:
    return {"ServerIp": "10.0.0.5", "Port": 8080, "ListenerPort": listener, "ServerHealthStatus": status}


GROUPS = AlibabaProvider.GROUP_ANNOTATIONS


@pytest.mark.parametrize(
    ("weight", "checks", "ports", "admin", "health", "cond_status", "cond_reason", "words"),
    [
        (
            100,
            [check("normal")],
            [80],
            "ready",
            Health.HEALTHY,
            "True",
            "TargetHealthy",
            "normal on listener 80",
        ),
        (
            100,
            [check("normal", 80), check("normal", 443)],
            [80, 443],
            "ready",
            Health.HEALTHY,
            "True",
            "TargetHealthy",
            "listener 80, 443",
        ),
        (
            100,
            [check("abnormal")],
            [80],
            "ready",
            Health.UNHEALTHY,
            "False",
            "abnormal",
            "abnormal on listener 80",
        ),
        (
            100,
            [check("normal", 80), check("abnormal", 443)],
            [80, 443],
            "ready",
            Health.UNHEALTHY,
            "False",
            "abnormal",
            "listener 443",
        ),
        (
            100,
            [check("unavailable")],
            [80],
            "ready",
            Health.UNKNOWN,
            "False",
            "unavailable",
            "ServerHealthStatus unavailable",
        ),
        # a listener of this group that has not reported the backend yet: not healthy
        (
            100,
            [check("normal", 80)],
            [80, 443],
            "ready",
            Health.INITIAL,
            "False",
            "NoHealthStatus",
            "listener 443 reports no health",
        ),
        # another group's listener saying normal does not count
        (
            100,
            [check("normal", 8080)],
            [80],
            "ready",
            Health.INITIAL,
            "False",
            "NoHealthStatus",
            "listener 80",
        ),
        (100, [check("normal")], [], "ready", Health.UNKNOWN, "False", "NoListener", "no listener forwards"),
        (0, [check("normal")], [80], "drain", Health.DRAINING, "False", "TargetDraining", "weight 0"),
    ],
)
def test_clb_health_mapping(
    weight: int,
    checks: list[dict[str, Any]],
    ports: list[int],
    admin: str,
    health: Health,
    cond_status: str,
    cond_reason: str,
    words: str,
) -> None:
    backend = {"ServerId": "eni-1", "ServerIp": "10.0.0.5", "Port": 8080, "Type": "eni", "Weight": weight}
    st = clb_target(backend, checks, ports, WHERE)
    assert (st.admin, st.health.health) == (admin, health)
    cond = lb.gate_condition(GATE, [st.health])
    assert (cond["status"], cond["reason"]) == (cond_status, cond_reason)
    assert words in cond["message"] and WHERE in cond["message"]


def bad(status: str, code: str | None = None) -> dict[str, Any]:
    reason = {"Reason": {"ReasonCode": code}} if code else {}
    return {"ServerIp": "10.0.0.5", "Port": 8080, "Status": status, **reason, "_listener": "lsn-1"}


REPORT = ListenerReport(("lsn-1",), floor=2.0)


@pytest.mark.parametrize(
    (
        "status",
        "weight",
        "report",
        "non_normal",
        "available_for",
        "admin",
        "health",
        "cond_status",
        "cond_reason",
    ),
    [
        ("Available", 100, REPORT, None, 5.0, "ready", Health.HEALTHY, "True", "TargetHealthy"),
        # absent from the list, but not yet long enough for the first checks to have passed
        ("Available", 100, REPORT, None, 1.0, "ready", Health.INITIAL, "False", "Initial"),
        ("Adding", 100, REPORT, None, 0.0, "ready", Health.INITIAL, "False", "Adding"),
        ("Configuring", 100, REPORT, None, 5.0, "ready", Health.INITIAL, "False", "Configuring"),
        ("Available", 100, REPORT, bad("Initial"), 5.0, "ready", Health.INITIAL, "False", "Initial"),
        (
            "Available",
            100,
            REPORT,
            bad("Unhealthy", "CONNECT_FAILED"),
            5.0,
            "ready",
            Health.UNHEALTHY,
            "False",
            "CONNECT_FAILED",
        ),
        (
            "Available",
            100,
            REPORT,
            bad("Unhealthy", "HTTP_CODE_NOT_MATCH"),
            5.0,
            "ready",
            Health.UNHEALTHY,
            "False",
            "HTTP_CODE_NOT_MATCH",
        ),
        ("Available", 100, REPORT, bad("Unhealthy"), 5.0, "ready", Health.UNHEALTHY, "False", "Unhealthy"),
        ("Available", 100, REPORT, bad("Unavailable"), 5.0, "ready", Health.UNKNOWN, "False", "Unavailable"),
        ("Available", 100, ListenerReport(), None, 5.0, "ready", Health.UNKNOWN, "False", "NoListener"),
        # a listener answered without this group (re-pointed, stopped): nothing says healthy
        (
            "Available",
            100,
            ListenerReport(("lsn-1", "lsn-2"), silent=("lsn-2",)),
            None,
            5.0,
            "ready",
            Health.UNKNOWN,
            "False",
            "NoHealthStatus",
        ),
        ("Available", 0, REPORT, None, 5.0, "drain", Health.DRAINING, "False", "TargetDraining"),
    ],
)
def test_nlb_health_mapping(
    status: str,
    weight: int,
    report: ListenerReport,
    non_normal: dict[str, Any] | None,
    available_for: float,
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
    if non_normal:
        report = ListenerReport(report.listeners, report.silent, {"10.0.0.5:8080": non_normal}, report.floor)
    st = nlb_target(server, report, available_for, "NLB sgp-1")
    assert (st.admin, st.health.health) == (admin, health)
    cond = lb.gate_condition(GATE, [st.health])
    assert (cond["status"], cond["reason"]) == (cond_status, cond_reason)
    assert cond["message"].startswith("NLB sgp-1: ")


def test_nlb_reason_code_is_quoted_with_the_listener() -> None:
    server = {"ServerIp": "10.0.0.5", "Port": 8080, "Status": "Available", "Weight": 100}
    report = ListenerReport(("lsn-1",), non_normal={"10.0.0.5:8080": bad("Unhealthy", "CONNECT_TIMEOUT")})
    assert (
        nlb_target(server, report, 9.0, "NLB sgp-1").health.detail
        == "Unhealthy: CONNECT_TIMEOUT on listener lsn-1"
    )


def test_waiting_words_do_not_change_between_reads() -> None:
    """A condition message that changed at every read would be rewritten at every read (and each
    write is a pod event that triggers the next read)."""
    server = {"ServerIp": "10.0.0.5", "Port": 8080, "Status": "Available", "Weight": 100}
    early, later = (nlb_target(server, REPORT, t, "NLB sgp-1") for t in (0.3, 1.7))
    assert early == later and early.health.health is Health.INITIAL


def test_retryable_codes() -> None:
    assert retryable("Throttling.User") and retryable("Throttling") and retryable("Rejected.Throttling")
    assert retryable("IncorrectStatus.serverGroup") and retryable("Conflict.Lock")
    assert not retryable("SignatureDoesNotMatch") and not retryable("ResourceNotFound.serverGroup")


def test_server_group_annotations() -> None:
    clb, nlb = lb.ALIBABA_CLB_GROUP, lb.ALIBABA_NLB_GROUP
    assert pool_groups({}, [80], GROUPS) == {}
    assert pool_groups({nlb: " sgp-abc "}, [80], GROUPS) == {80: GroupRef(nlb, "sgp-abc")}
    assert pool_groups({clb: "rsp-a:80,rsp-b:443"}, [80, 443], GROUPS) == {
        80: GroupRef(clb, "rsp-a"),
        443: GroupRef(clb, "rsp-b"),
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
        pool_groups(annotations, ports, GROUPS)


def test_pools_carry_their_group() -> None:
    service = {
        "metadata": {"namespace": "ns", "name": "web", "annotations": {lb.ALIBABA_NLB_GROUP: "sgp-1"}},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 53, "protocol": "UDP"}]},
    }
    (pool,) = lb.pools_for(service, GROUPS)
    assert pool.group == GroupRef(lb.ALIBABA_NLB_GROUP, "sgp-1")
    assert lb.pools_for(service)[0].group is None  # another provider's annotation: not its group


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


def test_finalizer_patch_adds_and_removes_only_podgates() -> None:
    """Strategic merge: the list is merged item by item, so other finalizers are never named."""
    svc = {"metadata": {"resourceVersion": "7", "finalizers": ["example.com/other"]}}
    assert lb.finalizers_patch(svc, True) == {"metadata": {"finalizers": [lb.TARGETS_FINALIZER]}}
    assert lb.finalizers_patch(svc, False) is None  # not there: nothing to remove
    held = {"metadata": {"finalizers": [lb.TARGETS_FINALIZER, "example.com/other"]}}
    assert lb.finalizers_patch(held, True) is None
    assert lb.finalizers_patch(held, False) == {
        "metadata": {"$deleteFromPrimitiveList/finalizers": [lb.TARGETS_FINALIZER]}
    }
