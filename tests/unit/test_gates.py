"""Gate naming, condition-type validation and the webhook's injection decision."""

from __future__ import annotations

from typing import Any

import pytest

from podgate.model import gates as g


def svc(
    name: str, selector: dict[str, str] | None, type_: str = "LoadBalancer", **ann: str
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "annotations": ann},
        "spec": {"type": type_, "selector": selector},
    }


def test_names() -> None:
    assert g.service_gate("web") == "service.readiness.podgate.dev/web"
    assert g.service_of_gate("service.readiness.podgate.dev/web") == "web"
    assert g.service_of_gate("check.podgate.dev/warm") is None
    assert g.service_of_gate("service.readiness.podgate.dev/") is None
    alibaba = "service.readiness.alibabacloud.com/"
    assert g.service_of_gate(alibaba + "web") is None  # not adopted: someone else's gate
    assert g.service_of_gate(alibaba + "web", (alibaba,)) == "web"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("service.readiness.podgate.dev/web", True),
        ("Ready", True),
        ("example.com/a_b.c-d", True),
        ("example.com/", False),
        ("/name", False),
        ("Example.com/x", False),
        ("example.com/-x", False),
        ("a/" + "x" * 64, False),
        ("bad name", False),
    ],
)
def test_condition_type_validation(value: str, ok: bool) -> None:
    assert (g.condition_type_errors(value) == []) is ok


@pytest.mark.parametrize(
    ("selector", "labels", "want"),
    [
        ({"app": "web"}, {"app": "web", "x": "y"}, True),
        ({"app": "web"}, {"app": "api"}, False),
        ({"app": "web", "tier": "fe"}, {"app": "web"}, False),
        ({}, {"app": "web"}, False),  # an empty selector matches nothing
        (None, {"app": "web"}, False),
    ],
)
def test_selector(selector: dict[str, str] | None, labels: dict[str, str], want: bool) -> None:
    assert g.selector_matches(selector, labels) is want


def handled(s: dict[str, Any]) -> bool:
    return s["spec"]["type"] == "LoadBalancer"


def test_services_for_pod_keeps_handled_matching_services_sorted() -> None:
    services = [
        svc("web", {"app": "web"}),
        svc("all", {"tier": "fe"}),
        svc("internal", {"app": "web"}, "ClusterIP"),
        svc("other", {"app": "api"}),
    ]
    assert g.services_for_pod({"app": "web", "tier": "fe"}, services, handled) == ["all", "web"]


def test_a_service_being_deleted_gives_new_pods_no_gate() -> None:
    leaving = svc("web", {"app": "web"})
    leaving["metadata"]["deletionTimestamp"] = "2026-11-22T00:00:00Z"
    assert g.services_for_pod({"app": "web"}, [leaving, svc("next", {"app": "web"})], handled) == ["next"]


@pytest.mark.parametrize(
    ("existing", "services", "remove", "want"),
    [
        (
            None,
            ["web"],
            (),
            [
                {
                    "op": "add",
                    "path": "/spec/readinessGates",
                    "value": [{"conditionType": "service.readiness.podgate.dev/web"}],
                }
            ],
        ),
        ([{"conditionType": "service.readiness.podgate.dev/web"}], ["web"], (), []),  # never duplicated
        (
            [{"conditionType": "example.com/x"}],
            ["a", "b"],
            (),
            [
                {
                    "op": "replace",
                    "path": "/spec/readinessGates",
                    "value": [
                        {"conditionType": "example.com/x"},
                        {"conditionType": "service.readiness.podgate.dev/a"},
                        {"conditionType": "service.readiness.podgate.dev/b"},
                    ],
                }
            ],
        ),
        (
            [{"conditionType": "target-health.elbv2.k8s.aws/k8s-web"}],
            [],
            g.VENDOR_PREFIXES,
            [{"op": "replace", "path": "/spec/readinessGates", "value": []}],
        ),
        ([{"conditionType": "target-health.elbv2.k8s.aws/k8s-web"}], [], (), []),
        (None, [], (), []),
    ],
)
def test_injection_patch(
    existing: list[dict[str, str]] | None,
    services: list[str],
    remove: tuple[str, ...],
    want: list[dict[str, Any]],
) -> None:
    spec: dict[str, Any] = {"containers": [{"name": "a"}]}
    if existing is not None:
        spec["readinessGates"] = existing
    assert g.injection_patch({"spec": spec}, [g.service_gate(s) for s in services], remove) == want


def test_prestop_values_and_the_clusters_that_have_the_sleep_action() -> None:
    import pytest

    from podgate.model.gates import NO_PRESTOP, PreStop, native_sleep_supported, parse_prestop

    assert parse_prestop("drain") == PreStop("drain")
    assert parse_prestop(" Sleep 15s ") == parse_prestop("sleep:15") == PreStop("sleep", 15)
    assert parse_prestop("sleep 0") == NO_PRESTOP and str(PreStop("sleep", 2.5)) == "sleep 2.5"
    for bad in ("sleep", "sleep -1", "sleep 3601", "wait", ""):
        with pytest.raises(ValueError, match=bad or "^$"):
            parse_prestop(bad)
    assert native_sleep_supported({"major": "1", "minor": "30"})
    assert native_sleep_supported({"major": "1", "minor": "31+"})  # EKS and GKE say "31+"
    assert not native_sleep_supported({"major": "1", "minor": "29"})
    assert not native_sleep_supported({"major": "1", "minor": "20"})
    assert not native_sleep_supported(None)


def test_the_drain_token_goes_in_a_header_only_where_no_kubelet_ignores_headers() -> None:
    """Kubelets send a hook's httpHeaders from 1.25; a kubelet may be two minor releases older
    than the API server (three from 1.28): from an API server of 1.27 every one sends them."""
    from podgate.model.gates import hook_headers_sent

    assert hook_headers_sent({"major": "1", "minor": "27"})
    assert hook_headers_sent({"major": "1", "minor": "37+"})
    assert not hook_headers_sent({"major": "1", "minor": "26"})
    assert not hook_headers_sent({"major": "1", "minor": "20"})
    assert not hook_headers_sent(None)
