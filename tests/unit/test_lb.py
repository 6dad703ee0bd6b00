"""Load-balancer policy: provider choice, health-check annotations, targets, the gate condition."""

from __future__ import annotations

from typing import Any

import pytest

from podgate.model import lb

GATE = "service.readiness.podgate.dev/web"


def svc(type_: str = "LoadBalancer", ports: list[dict[str, Any]] | None = None, **ann: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "ns", "annotations": ann},
        "spec": {
            "type": type_,
            "selector": {"app": "web"},
            "ports": ports or [{"port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


@pytest.mark.parametrize(
    ("service", "want"),
    [
        (svc(), "haproxy"),
        (svc("ClusterIP"), None),
        (svc("ClusterIP", **{lb.PROVIDER_ANNOTATION: "haproxy"}), "haproxy"),
        (svc(**{lb.PROVIDER_ANNOTATION: "none"}), None),
        (svc(**{lb.PROVIDER_ANNOTATION: "edge"}), "edge"),
    ],
)
def test_provider_choice(service: dict[str, Any], want: str | None) -> None:
    assert lb.provider_for(service, "haproxy", ["haproxy", "edge"]) == want


def test_unknown_provider_is_a_clear_error() -> None:
    with pytest.raises(lb.ServiceConfigError, match="names no configured provider"):
        lb.provider_for(svc(**{lb.PROVIDER_ANNOTATION: "f5"}), "haproxy", ["haproxy"])


@pytest.mark.parametrize(
    ("ann", "want"),
    [
        ({}, lb.HealthCheck(None, 2.0, 3, 3)),
        ({lb.HC_PATH: "/healthz"}, lb.HealthCheck("/healthz", 2.0, 3, 3)),
        ({lb.HC_PROTOCOL: "http"}, lb.HealthCheck("/", 2.0, 3, 3)),
        ({lb.HC_PROTOCOL: "TCP", lb.HC_PATH: "/x"}, lb.HealthCheck(None, 2.0, 3, 3)),
        ({lb.HC_INTERVAL: "1s", lb.HC_HEALTHY: "2", lb.HC_UNHEALTHY: "5"}, lb.HealthCheck(None, 1.0, 2, 5)),
    ],
)
def test_health_check_annotations(ann: dict[str, str], want: lb.HealthCheck) -> None:
    assert lb.health_check(ann) == want


@pytest.mark.parametrize(
    ("ann", "error"),
    [
        ({lb.HC_INTERVAL: "soon"}, "health-check-interval='soon' is not a number of seconds"),
        ({lb.HC_HEALTHY: "0"}, "healthy-threshold='0' is too small"),
        ({lb.HC_HEALTHY: "2.5"}, "is not an integer"),
        ({lb.HC_PATH: "healthz"}, "must start with '/'"),
        ({lb.HC_PROTOCOL: "UDP"}, "is not TCP or HTTP"),
    ],
)
def test_bad_health_check_annotations(ann: dict[str, str], error: str) -> None:
    with pytest.raises(lb.ServiceConfigError, match=error):
        lb.health_check(ann)


def pod(
    name: str,
    ip: str | None,
    labels: dict[str, str] | None = None,
    cr: str = "True",
    ready: str = "False",
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "labels": labels or {"app": "web"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {
            "podIP": ip,
            "conditions": [{"type": "ContainersReady", "status": cr}, {"type": "Ready", "status": ready}],
        },
    }


def test_plan_targets() -> None:
    pool = lb.pools_for(svc())[0]
    assert pool.target_port == "http"
    pods = [
        pod("a", "127.0.0.2"),  # ContainersReady: a target before it is Ready (that is the point)
        pod("b", "127.0.0.3", cr="False", ready="True"),  # already Ready: kept
        pod("c", "127.0.0.4", cr="False"),  # lost ContainersReady: drained
        pod("d", "127.0.0.5", deleting=True),  # terminating: drained
        pod("e", "127.0.0.6", labels={"app": "other"}),  # left the selector: drained
        pod("f", None),  # no IP yet: nothing
    ]
    plan = lb.plan_targets(pool, {"app": "web"}, pods)
    assert plan.active == {lb.Target("127.0.0.2", 8080): "ns/a", lb.Target("127.0.0.3", 8080): "ns/b"}
    assert set(plan.drain) == {
        lb.Target("127.0.0.4", 8080),
        lb.Target("127.0.0.5", 8080),
        lb.Target("127.0.0.6", 8080),
    }


def test_empty_selector_matches_nothing() -> None:
    pool = lb.pools_for(svc())[0]
    plan = lb.plan_targets(pool, {}, [pod("a", "127.0.0.2")])
    assert plan.active == {}


def test_diff_targets() -> None:
    t = [lb.Target(f"127.0.0.{i}", 80) for i in range(10)]
    plan = lb.TargetPlan(active={t[0]: "a", t[1]: "b", t[6]: "g"}, drain={t[2]: "c", t[3]: "d", t[4]: "e"})
    present = {t[1]: "ready", t[2]: "ready", t[3]: "drain", t[4]: "drain", t[5]: "ready", t[6]: "drain"}
    d = lb.diff_targets(plan, present, drained=[t[4]])
    assert d.add == [t[0], t[6]]  # a new target, and one whose pod is ready again after a drain
    assert d.drain == [t[2]]  # leaving, still taking traffic: drain first
    assert d.remove == [t[4], t[5]]  # drained, and one whose pod is gone entirely


@pytest.mark.parametrize(
    ("healths", "status", "reason"),
    [
        ([], "False", "RegistrationInProgress"),
        ([lb.TargetHealth(lb.Health.INITIAL, "DOWN, check L7OK")], "False", "InitialHealthChecking"),
        ([lb.TargetHealth(lb.Health.UNHEALTHY, "DOWN, check L4CON")], "False", "HealthCheckFailing"),
        ([lb.TargetHealth(lb.Health.HEALTHY, "UP")], "True", "TargetHealthy"),
        (
            [
                lb.TargetHealth(lb.Health.HEALTHY, "UP"),
                lb.TargetHealth(lb.Health.INITIAL, "DOWN", "pool 443"),
            ],
            "False",
            "InitialHealthChecking",
        ),
        ([lb.TargetHealth(lb.Health.UNKNOWN, "socket refused")], "False", "ProviderError"),
    ],
)
def test_gate_condition(healths: list[lb.TargetHealth], status: str, reason: str) -> None:
    cond = lb.gate_condition(GATE, healths)
    assert (cond["type"], cond["status"], cond["reason"]) == (GATE, status, reason)


def test_condition_message_quotes_the_load_balancer() -> None:
    cond = lb.gate_condition(
        GATE, [lb.TargetHealth(lb.Health.UNHEALTHY, "server x is DOWN, check L7STS", "haproxy be")]
    )
    assert cond["message"] == "haproxy be: server x is DOWN, check L7STS"


def test_next_condition_writes_only_changes_and_keeps_true_in_sticky_mode() -> None:
    false = lb.gate_condition(GATE, [])
    true = lb.gate_condition(GATE, [lb.TargetHealth(lb.Health.HEALTHY, "UP")])
    first = lb.next_condition(None, false, sticky=True, now="T1")
    assert first is not None and first["lastTransitionTime"] == "T1"
    assert lb.next_condition(first, false, sticky=True, now="T2") is None  # nothing changed: no write
    flipped = lb.next_condition(first, true, sticky=True, now="T3")
    assert flipped is not None and flipped["status"] == "True" and flipped["lastTransitionTime"] == "T3"
    assert lb.next_condition(flipped, false, sticky=True, now="T4") is None  # sticky: stays True
    back = lb.next_condition(flipped, false, sticky=False, now="T5")
    assert back is not None and back["status"] == "False" and back["lastTransitionTime"] == "T5"
    initial = lb.gate_condition(GATE, [lb.TargetHealth(lb.Health.INITIAL, "DOWN")])
    progressed = lb.next_condition(first, initial, sticky=True, now="T6")
    assert progressed is not None and progressed["lastTransitionTime"] == "T1"  # status unchanged


def test_next_condition_reports_the_generation_it_was_decided_at() -> None:
    """``observedGeneration`` (Kubernetes 1.34+) only when the pod has a generation; a newer
    generation alone is no write (the verdict is the load balancer's), the next write has it."""
    false = lb.gate_condition(GATE, [])
    true = lb.gate_condition(GATE, [lb.TargetHealth(lb.Health.HEALTHY, "UP")])
    assert "observedGeneration" not in (lb.next_condition(None, false, sticky=True, now="T1") or {})
    first = lb.next_condition(None, false, sticky=True, now="T1", generation=1)
    assert first is not None and first["observedGeneration"] == 1
    assert lb.next_condition(first, false, sticky=True, now="T2", generation=2) is None
    flipped = lb.next_condition(first, true, sticky=True, now="T3", generation=2)
    assert flipped is not None and flipped["observedGeneration"] == 2


def test_retries_are_the_load_balancers_unless_the_service_says_false() -> None:
    assert lb.pools_for(svc())[0].retries is True
    assert lb.pools_for(svc(**{lb.RETRIES: "false"}))[0].retries is False
    with pytest.raises(lb.ServiceConfigError, match="load-balancer-retries"):
        lb.pools_for(svc(**{lb.RETRIES: "never"}))


def test_progress_that_only_counts_health_checks_is_not_written() -> None:
    def initial(detail: str) -> Any:
        return lb.gate_condition(GATE, [lb.TargetHealth(lb.Health.INITIAL, detail, "haproxy be")])

    first = lb.next_condition(None, initial("DOWN 1/3"), sticky=True, now="T1")
    assert first is not None and first["message"] == "haproxy be: DOWN 1/3"
    # the same status and reason: no write, whatever the words
    assert lb.next_condition(first, initial("DOWN 2/3"), sticky=True, now="T2") is None
    assert lb.next_condition(first, initial("DOWN 2/3"), sticky=False, now="T2") is None
    # a condition set by hand says what the user wrote
    by_hand = lb.next_condition(first, initial("DOWN 2/3"), sticky=False, now="T3", words=True)
    assert by_hand is not None and by_hand["message"] == "haproxy be: DOWN 2/3"
