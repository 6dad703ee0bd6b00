"""The kubelet's Ready rule, case by case, in the kubelet's own words."""

from __future__ import annotations

from typing import Any

import pytest

from podgate.model import conditions as c
from podgate_sandbox import podstatus as kubelet

GATE = "service.readiness.podgate.dev/web"
OTHER = "check.podgate.dev/warm"


@pytest.mark.parametrize(
    ("names", "ready", "phase", "want"),
    [
        (["a"], {"a": True}, "Running", {"type": "ContainersReady", "status": "True"}),
        (
            ["a", "b"],
            {"a": True, "b": False},
            "Running",
            {
                "type": "ContainersReady",
                "status": "False",
                "reason": "ContainersNotReady",
                "message": "containers with unready status: [b]",
            },
        ),
        (
            ["a", "b", "c"],
            {"a": False},
            "Pending",
            {
                "type": "ContainersReady",
                "status": "False",
                "reason": "ContainersNotReady",
                "message": "containers with unknown status: [b c], containers with unready status: [a]",
            },
        ),
        (
            ["a"],
            {"a": False},
            "Succeeded",
            {"type": "ContainersReady", "status": "False", "reason": "PodCompleted"},
        ),
    ],
)
def test_containers_ready(names: list[str], ready: dict[str, bool], phase: str, want: dict[str, str]) -> None:
    assert kubelet.containers_ready(names, ready, phase) == want


CR_TRUE = kubelet.containers_ready(["a"], {"a": True}, "Running")
CR_FALSE = kubelet.containers_ready(["a"], {"a": False}, "Running")


@pytest.mark.parametrize(
    ("cr", "gates", "conds", "status", "reason", "message"),
    [
        (CR_TRUE, [], [], "True", None, None),
        (
            CR_FALSE,
            [GATE],
            [{"type": GATE, "status": "True"}],
            "False",
            "ContainersNotReady",
            "containers with unready status: [a]",
        ),
        (
            CR_TRUE,
            [GATE],
            [],
            "False",
            "ReadinessGatesNotReady",
            f'corresponding condition of pod readiness gate "{GATE}" does not exist.',
        ),
        (
            CR_TRUE,
            [GATE],
            [{"type": GATE, "status": "False"}],
            "False",
            "ReadinessGatesNotReady",
            f'the status of pod readiness gate "{GATE}" is not "True", but False',
        ),
        # kube-conditioner's bug: "true" is not "True", and the kubelet keeps the pod NotReady.
        (
            CR_TRUE,
            [GATE],
            [{"type": GATE, "status": "true"}],
            "False",
            "ReadinessGatesNotReady",
            f'the status of pod readiness gate "{GATE}" is not "True", but true',
        ),
        (CR_TRUE, [GATE], [{"type": GATE, "status": "True"}], "True", None, None),
        (
            CR_TRUE,
            [GATE, OTHER],
            [{"type": GATE, "status": "True"}],
            "False",
            "ReadinessGatesNotReady",
            f'corresponding condition of pod readiness gate "{OTHER}" does not exist.',
        ),
        (
            CR_TRUE,
            [GATE, OTHER],
            [{"type": GATE, "status": "Unknown"}, {"type": OTHER, "status": "False"}],
            "False",
            "ReadinessGatesNotReady",
            f'the status of pod readiness gate "{GATE}" is not "True", but Unknown, '
            f'the status of pod readiness gate "{OTHER}" is not "True", but False',
        ),
        (
            CR_TRUE,
            [GATE, OTHER],
            [{"type": GATE, "status": "True"}, {"type": OTHER, "status": "True"}],
            "True",
            None,
            None,
        ),
    ],
)
def test_pod_ready(
    cr: Any,
    gates: list[str],
    conds: list[dict[str, str]],
    status: str,
    reason: str | None,
    message: str | None,
) -> None:
    got = kubelet.pod_ready(cr, gates, conds)
    assert got["type"] == "Ready"
    assert got["status"] == status
    assert got.get("reason") == reason
    assert got.get("message") == message


def test_transition_time_kept_while_status_unchanged() -> None:
    current = [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    same = c.with_transition_times([{"type": "Ready", "status": "False", "reason": "X"}], current, "NOW")
    flipped = c.with_transition_times([{"type": "Ready", "status": "True"}], current, "NOW")
    new = c.with_transition_times([{"type": "Initialized", "status": "True"}], current, "NOW")
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert flipped[0]["lastTransitionTime"] == "NOW"
    assert new[0]["lastTransitionTime"] == "NOW"


def test_readiness_gates_from_spec() -> None:
    spec = {"readinessGates": [{"conditionType": GATE}, {"conditionType": OTHER}, {}]}
    assert c.readiness_gates(spec) == [GATE, OTHER]
    assert c.readiness_gates({}) == []
