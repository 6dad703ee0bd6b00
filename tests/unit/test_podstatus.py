"""Pod phase, the status body the agent writes, and when it writes at all."""

from __future__ import annotations

from typing import Any

import pytest

from podgate_sandbox.podstatus import ContainerView, desired_status, needs_write, phase

RUN = ContainerView("a", "nginx", "running", None, started_at="T0", ready=True)
WAIT = ContainerView("a", "nginx")
DONE = ContainerView("a", "nginx", "terminated", "Completed", exit_code=0)
FAIL = ContainerView("a", "nginx", "terminated", "Error", exit_code=1)
BACKOFF = ContainerView("a", "nginx", "waiting", "CrashLoopBackOff", last_terminated={"exitCode": 1})


@pytest.mark.parametrize(
    ("policy", "views", "current", "want"),
    [
        ("Always", [WAIT], None, "Pending"),
        ("Always", [RUN], None, "Running"),
        ("Always", [RUN, WAIT], None, "Pending"),
        ("Always", [DONE], None, "Running"),
        ("Never", [DONE], None, "Succeeded"),
        ("OnFailure", [DONE], None, "Succeeded"),
        ("Never", [FAIL], None, "Failed"),
        ("OnFailure", [FAIL], None, "Running"),
        ("Always", [BACKOFF], None, "Running"),
        ("Always", [RUN], "Succeeded", "Succeeded"),
    ],
)
def test_phase(policy: str, views: list[ContainerView], current: str | None, want: str) -> None:
    assert phase(policy, views, current) == want


def pod(gates: list[str] = (), conditions: list[dict[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"containers": [{"name": "a"}], "readinessGates": [{"conditionType": g} for g in gates]},
        "status": {"phase": "Pending", "conditions": list(conditions)},
    }


def test_status_has_the_kubelet_conditions_and_leaves_others_alone() -> None:
    gate = "service.readiness.podgate.dev/web"
    theirs = {"type": gate, "status": "True", "reason": "LoadBalancerHealthy", "lastTransitionTime": "T"}
    body = desired_status(
        pod([gate], [theirs]), [RUN], pod_ip="127.100.0.9", host_ip="127.0.0.1", start_time="S", now="N"
    )
    types = [cd["type"] for cd in body["conditions"]]
    assert sorted(types) == ["ContainersReady", "Initialized", "PodScheduled", "Ready"]
    ready = next(cd for cd in body["conditions"] if cd["type"] == "Ready")
    assert ready["status"] == "True"
    assert body["podIP"] == "127.100.0.9"
    assert body["podIPs"] == [{"ip": "127.100.0.9"}]
    assert body["phase"] == "Running"
    assert body["containerStatuses"][0]["state"] == {
        "running": {"startedAt": "T0"},
        "waiting": None,
        "terminated": None,
    }


def test_gate_missing_keeps_ready_false() -> None:
    gate = "service.readiness.podgate.dev/web"
    body = desired_status(
        pod([gate]), [RUN], pod_ip="127.100.0.9", host_ip="127.0.0.1", start_time="S", now="N"
    )
    ready = next(cd for cd in body["conditions"] if cd["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ReadinessGatesNotReady")


def test_no_write_when_nothing_changed() -> None:
    p = pod()
    body = desired_status(p, [RUN], pod_ip="127.100.0.9", host_ip="127.0.0.1", start_time="S", now="N1")
    assert needs_write(p["status"], body)
    # What the API server would hold after our patch: nulls dropped, our conditions stored.
    stored: dict[str, Any] = {
        **{k: v for k, v in body.items() if k != "containerStatuses"},
        "containerStatuses": [
            {**cs, "state": {"running": {"startedAt": "T0"}}, "lastState": {}}
            for cs in body["containerStatuses"]
        ],
        "conditions": [{k: v for k, v in cd.items() if v is not None} for cd in body["conditions"]],
    }
    again = desired_status(
        {**p, "status": stored}, [RUN], pod_ip="127.100.0.9", host_ip="127.0.0.1", start_time="S", now="N2"
    )
    assert not needs_write(stored, again)
    unready = desired_status(
        {**p, "status": stored},
        [ContainerView("a", "nginx", "running", None, "T0")],
        pod_ip="127.100.0.9",
        host_ip="127.0.0.1",
        start_time="S",
        now="N3",
    )
    assert needs_write(stored, unready)
