"""What ``podgate status`` explains for a pod, and the pending-gate ages the metrics report
(podgate.model.report)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from podgate.model import report

NOW = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
GATE = "service.readiness.podgate.dev/web"
PODGATE = {"podgate.dev/load-balancer-provider": "haproxy"}


def pod(
    *,
    ready: bool = False,
    containers_ready: bool = True,
    gate: dict[str, Any] | None = None,
    gated: bool = True,
    container: dict[str, Any] | None = None,
    probe: bool = False,
    scheduled: bool = True,
) -> dict[str, Any]:
    conds: list[dict[str, Any]] = [
        {
            "type": "PodScheduled",
            "status": "True" if scheduled else "False",
            "reason": None if scheduled else "Unschedulable",
        },
        {
            "type": "ContainersReady",
            "status": "True" if containers_ready else "False",
            "lastTransitionTime": "2026-01-01T00:05:00Z",
        },
        {"type": "Ready", "status": "True" if ready else "False"},
    ]
    if gate is not None:
        conds.append({"type": GATE, **gate})
    c: dict[str, Any] = {"name": "app"}
    if probe:
        c["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": 8080}}
    return {
        "metadata": {
            "name": "p1",
            "namespace": "shop",
            "labels": {"app": "web"},
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"containers": [c], **({"readinessGates": [{"conditionType": GATE}]} if gated else {})},
        "status": {
            "conditions": conds,
            "containerStatuses": [
                {"name": "app", "ready": containers_ready, "state": container or {"running": {}}}
            ],
        },
    }


def service(type_: str = "LoadBalancer", **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
        "spec": {"type": type_, "selector": {"app": "web"}},
    }


def explained(
    p: dict[str, Any],
    services: list[dict[str, Any]] = (),  # type: ignore[assignment]
    serving: report.Serving | None = None,
) -> list[tuple[str, str, str]]:
    return [(r["gate"], r["status"], r["reason"]) for r in report.explain(p, services, NOW, serving)]


PENDING = {"status": "False", "reason": "InitialHealthChecking", "lastTransitionTime": "2026-01-01T00:09:00Z"}


@pytest.mark.parametrize(
    ("the_pod", "services", "want"),
    [
        (pod(gate=PENDING), [], [(GATE, "False", "InitialHealthChecking")]),
        (
            pod(gate=PENDING, containers_ready=False, probe=True),
            [],
            [(GATE, "False", "InitialHealthChecking"), ("container/app", "False", "ReadinessProbeFailing")],
        ),
        (
            pod(gated=False, containers_ready=False, container={"waiting": {"reason": "CrashLoopBackOff"}}),
            [],
            [("container/app", "False", "CrashLoopBackOff")],
        ),
        (pod(gated=False, containers_ready=False), [], [("container/app", "False", "ContainerNotReady")]),
        (pod(gated=False, scheduled=False), [], [("PodScheduled", "False", "Unschedulable")]),
        (pod(gated=False, ready=True), [service(**PODGATE)], [(GATE, "NoGate", "NoReadinessGate")]),
        (pod(gated=False, ready=True), [service("ClusterIP")], []),
        (pod(gated=False, ready=True), [service(**{"podgate.dev/load-balancer-provider": "none"})], []),
        (
            pod(gated=False, ready=True),
            [service("ClusterIP", **{"podgate.dev/load-balancer-provider": "aws"})],
            [(GATE, "NoGate", "NoReadinessGate")],
        ),
        (pod(gate={"status": "True"}, ready=True), [service(**PODGATE)], [(GATE, "True", "")]),
    ],
    ids=[
        "gate-pending",
        "probe-failing-too",
        "crash-loop",
        "not-ready-yet",
        "unscheduled",
        "created-before-its-service",
        "not-load-balanced",
        "opted-out",
        "provider-annotation",
        "all-good",
    ],
)
def test_explain(
    the_pod: dict[str, Any], services: list[dict[str, Any]], want: list[tuple[str, str, str]]
) -> None:
    assert explained(the_pod, services) == want


def test_a_missing_gate_says_what_to_do() -> None:
    [row] = report.explain(pod(gated=False, ready=True), [service(**PODGATE)], NOW)
    assert "restart" in row["message"] and "web" in row["message"]


def test_pending_by_age_is_cumulative_by_reason() -> None:
    young = pod(gate=PENDING)  # pending 60 s
    old = pod(gate={**PENDING, "lastTransitionTime": "2026-01-01T00:04:00Z"})  # 6 min
    done = pod(gate={"status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"})
    gone = pod(gate=PENDING)
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:09:30Z"
    assert report.pending_by_age([young, old, done, gone], NOW) == {
        ("InitialHealthChecking", "30s"): 2,
        ("InitialHealthChecking", "1m"): 2,
        ("InitialHealthChecking", "5m"): 1,
    }


def classed(lb_class: str | None) -> dict[str, Any]:
    svc = service()
    if lb_class:
        svc["spec"]["loadBalancerClass"] = lb_class
    return svc


ALIBABA_GATE = "service.readiness.alibabacloud.com/web"


@pytest.mark.parametrize(
    ("svc", "serving", "gate", "counted"),
    [
        # beside a cloud controller (deploy/'s cloud overlays: no default provider)
        (classed(None), report.Serving(), None, False),
        (classed("service.k8s.aws/nlb"), report.Serving(), None, False),
        (classed("alibabacloud.com/nlb"), report.Serving(), None, False),
        (classed("podgate.dev/aws"), report.Serving(), None, True),
        # the controller's own settings, given to status as to the controller
        (classed(None), report.Serving(default_provider="haproxy"), None, True),
        (classed("service.k8s.aws/nlb"), report.Serving(classes={"service.k8s.aws/nlb": "aws"}), None, True),
        (classed("podgate.dev/aws"), report.Serving(classes={"service.k8s.aws/nlb": "aws"}), None, False),
        # the pod carries the vendor's gate, which podgate adopts: it is gated
        (
            classed("podgate.dev/alibaba"),
            report.Serving(adopted_prefixes=("service.readiness.alibabacloud.com/",)),
            ALIBABA_GATE,
            False,
        ),
        # ... and without adopting it, the vendor's gate is no gate of podgate's
        (classed("podgate.dev/alibaba"), report.Serving(), ALIBABA_GATE, True),
    ],
    ids=[
        "class-less-is-the-cloud-controllers",
        "aws-class",
        "alibaba-class",
        "podgate-class",
        "class-less-with-default-provider",
        "aws-class-taken-over",
        "podgate-class-not-listed",
        "adopted-vendor-gate",
        "vendor-gate-not-adopted",
    ],
)
def test_only_services_podgate_serves_say_restart(
    svc: dict[str, Any], serving: report.Serving, gate: str | None, counted: bool
) -> None:
    """``podgate status`` beside a cloud controller: pods behind the AWS or Alibaba controller's
    Service are never told to restart for a gate podgate would not give them."""
    p = pod(gated=False, ready=True)
    if gate:
        p["spec"]["readinessGates"] = [{"conditionType": gate}]
        p["status"]["conditions"].append({"type": gate, "status": "True"})
    rows = [r for r in explained(p, [svc], serving) if r[1] == "NoGate"]
    assert rows == ([(GATE, "NoGate", "NoReadinessGate")] if counted else [])
