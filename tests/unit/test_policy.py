"""Per-Service gate policies (podgate.model.policy): parsing the annotations, and the timeout's
verdict from the pod's own conditions."""

from __future__ import annotations

from typing import Any

import pytest

from podgate.model import lb
from podgate.model import policy as p
from podgate.model.types import Condition

GATE = "service.readiness.podgate.dev/web"
T0 = "2026-01-01T00:00:00Z"
T0_EPOCH = 1767225600.0


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("90s", 90), ("10m", 600), ("1h30m", 5400), ("45", 45), ("1.5s", 1.5), ("2m5s", 125)],
)
def test_durations(raw: str, seconds: float) -> None:
    assert p.parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["", "0", "-5", "10 minutes", "m", "5d", "1m 30s", "nan", "inf"])
def test_bad_durations(raw: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        p.parse_duration(raw)


@pytest.mark.parametrize(
    ("seconds", "text"), [(90, "1m30s"), (600, "10m"), (3600, "1h"), (1.5, "1.5s"), (5, "5s")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert p.format_duration(seconds) == text


@pytest.mark.parametrize(
    ("annotations", "default", "want"),
    [
        ({}, p.GatePolicy(), p.GatePolicy()),
        ({}, p.GatePolicy(60, True, True), p.GatePolicy(60, True, True)),
        ({p.READINESS_TIMEOUT: "90s"}, p.GatePolicy(), p.GatePolicy(timeout=90)),
        (
            {p.READINESS_TIMEOUT: "90s", p.ON_TIMEOUT: "open"},
            p.GatePolicy(),
            p.GatePolicy(90, fail_open=True),
        ),
        ({p.ON_TIMEOUT: "closed"}, p.GatePolicy(60, fail_open=True), p.GatePolicy(60, fail_open=False)),
        ({p.GATE_MODE: "continuous"}, p.GatePolicy(), p.GatePolicy(continuous=True)),
        ({p.GATE_MODE: "startup"}, p.GatePolicy(continuous=True), p.GatePolicy(continuous=False)),
        ({p.MIN_HEALTHY_TARGETS: "2"}, p.GatePolicy(), p.GatePolicy(min_healthy_targets=2)),
    ],
    ids=["none", "defaults", "timeout", "open", "closed-over-default", "continuous", "startup", "min"],
)
def test_annotations_override_the_defaults(
    annotations: dict[str, str], default: p.GatePolicy, want: p.GatePolicy
) -> None:
    assert p.gate_policy(annotations, default) == want


@pytest.mark.parametrize(
    ("annotations", "named"),
    [
        ({p.READINESS_TIMEOUT: "soon"}, p.READINESS_TIMEOUT),
        ({p.ON_TIMEOUT: "ignore"}, p.ON_TIMEOUT),
        ({p.GATE_MODE: "always"}, p.GATE_MODE),
        ({p.MIN_HEALTHY_TARGETS: "-1"}, p.MIN_HEALTHY_TARGETS),
        ({p.MIN_HEALTHY_TARGETS: "half"}, p.MIN_HEALTHY_TARGETS),
    ],
)
def test_a_bad_annotation_is_one_line_naming_it(annotations: dict[str, str], named: str) -> None:
    with pytest.raises(lb.ServiceConfigError, match=named) as e:
        p.gate_policy(annotations, p.GatePolicy())
    assert "\n" not in str(e.value)


def pod(containers_ready: str | None = T0, gate: dict[str, Any] | None = None) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = []
    if containers_ready is not None:
        conditions.append(
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": containers_ready}
        )
    else:
        conditions.append({"type": "ContainersReady", "status": "False", "lastTransitionTime": T0})
    if gate is not None:
        conditions.append({"type": GATE, **gate})
    return {"metadata": {"name": "p1"}, "status": {"conditions": conditions}}


FAILING: Condition = {"type": GATE, "status": "False", "reason": "HealthCheckFailing", "message": "DOWN"}
HEALTHY: Condition = {"type": GATE, "status": "True", "reason": "TargetHealthy", "message": "UP"}
CLOSED = p.GatePolicy(timeout=90)
OPEN = p.GatePolicy(timeout=90, fail_open=True)


@pytest.mark.parametrize(
    ("desired", "the_pod", "policy", "after", "want"),
    [
        (FAILING, pod(), p.GatePolicy(), 10_000, ("False", "HealthCheckFailing")),
        (FAILING, pod(), CLOSED, 89, ("False", "HealthCheckFailing")),
        (FAILING, pod(), CLOSED, 90, ("False", p.TIMED_OUT)),
        (FAILING, pod(), OPEN, 90, ("True", p.TIMED_OUT)),
        (HEALTHY, pod(), OPEN, 1000, ("True", "TargetHealthy")),
        (FAILING, pod(containers_ready=None), OPEN, 1000, ("False", "HealthCheckFailing")),
        # a continuous gate that fell back at T0+100 waits afresh from then
        (
            FAILING,
            pod(gate={"status": "False", "lastTransitionTime": "2026-01-01T00:01:40Z"}),
            OPEN,
            150,
            ("False", "HealthCheckFailing"),
        ),
        (
            FAILING,
            pod(gate={"status": "False", "lastTransitionTime": "2026-01-01T00:01:40Z"}),
            OPEN,
            190,
            ("True", p.TIMED_OUT),
        ),
    ],
    ids=[
        "no-timeout",
        "before",
        "closed",
        "open",
        "healthy-wins",
        "clock-starts-at-containers-ready",
        "fell-back-waits-again",
        "fell-back-times-out",
    ],
)
def test_the_timeout(
    desired: Condition, the_pod: dict[str, Any], policy: p.GatePolicy, after: float, want: tuple[str, str]
) -> None:
    got = p.with_timeout(desired, the_pod, policy, T0_EPOCH + after)
    assert (got["status"], got["reason"]) == want
    if got["reason"] == p.TIMED_OUT:
        assert "1m30s" in got["message"] and "DOWN" in got["message"]  # the load balancer's words


def test_an_opened_gate_keeps_its_words_while_the_load_balancer_stays_negative() -> None:
    """So a re-read that learns only a new 'DOWN 2/3' writes nothing."""
    opened = p.with_timeout(FAILING, pod(), OPEN, T0_EPOCH + 100)
    later = p.with_timeout(
        {**FAILING, "message": "DOWN 2/3"},
        pod(gate={**opened, "lastTransitionTime": T0}),
        OPEN,
        T0_EPOCH + 200,
    )
    assert later == opened


def test_a_closed_gate_stays_timed_out_until_the_load_balancer_says_healthy() -> None:
    decided = {"status": "False", "reason": p.TIMED_OUT, "lastTransitionTime": "2026-01-01T00:05:00Z"}
    got = p.with_timeout(FAILING, pod(gate=decided), CLOSED, T0_EPOCH + 301)
    assert (got["status"], got["reason"]) == ("False", p.TIMED_OUT)
    assert p.with_timeout(HEALTHY, pod(gate=decided), CLOSED, T0_EPOCH + 301) == HEALTHY


@pytest.mark.parametrize(
    ("pod_name", "healthy", "minimum", "refused"),
    [
        ("a", {"a", "b"}, 2, True),
        ("a", {"a", "b", "c"}, 2, False),
        ("a", {"a"}, 1, True),
        ("c", {"a", "b"}, 2, False),  # not healthy: evicting it takes nothing away
        ("a", {"a", "b"}, 0, False),  # no guard
    ],
    ids=["at-minimum", "one-spare", "last-one", "unhealthy-pod", "no-guard"],
)
def test_the_eviction_guard(pod_name: str, healthy: set[str], minimum: int, refused: bool) -> None:
    why = p.eviction_refusal("shop/web", pod_name, healthy, minimum)
    assert (why is not None) == refused
    if why:
        assert "shop/web" in why and f"{p.MIN_HEALTHY_TARGETS}={minimum}" in why
        assert f"({len(healthy)} healthy now)" in why
