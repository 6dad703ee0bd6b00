"""The scale benchmark's decomposition of a gated pod's time, from HAProxy's ring of server
state changes (lines as HAProxy 2.6 writes them in the ``iso`` format) and the watch's times."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime

import pytest

from podgate_sandbox.decompose import (
    DOWN,
    DRAIN,
    MAINT,
    REGISTERED,
    UP,
    PodTimes,
    by_target,
    gate_writes,
    histogram_quantile,
    parts,
    server_events,
)

pytestmark = pytest.mark.unit


def approx(expected: object) -> object:
    """Times since the epoch (about 1.8e9 s) hold microseconds, not nanoseconds."""
    return pytest.approx(expected, abs=1e-5)


BE = "podgate.scale.svc-0.80"
T0 = 1796457142.0  # 2026-12-05T07:52:22+00:00


def line(offset: float, target: str, what: str) -> str:
    at = datetime.fromtimestamp(T0 + offset, UTC).isoformat(timespec="microseconds")
    ip, port = target.split(":")
    return f"{at} Server {BE}/podgate-{ip}-{port} {what}"


REGISTER = [
    "is UP/READY (leaving forced maintenance).",
    "is DOWN, changed from CLI. 1 active and 0 backup servers left. 0 sessions active, 0 requeued, "
    "0 remaining in queue.",
]
CHECKED = (
    "is UP, reason: Layer4 check passed, check duration: 0ms. 2 active and 0 backup servers online. "
    "0 sessions requeued, 0 total in queue."
)


def test_haproxys_lines_are_read_as_the_server_state_changes_they_are() -> None:
    lines = [
        "",
        line(0.0, "127.113.0.5:8080", REGISTER[0]),
        line(0.000024, "127.113.0.5:8080", REGISTER[1]),
        "2026-12-05T07:52:22.000000+00:00 Server podgate-webhook/replica-1 is DOWN, reason: Layer4 "
        "connection problem",  # not one of podgate's servers
        line(1.5, "127.113.0.5:8080", CHECKED),
        line(3.0, "127.113.0.5:8080", "enters drain state. 1 active and 0 backup servers online."),
        line(3.5, "127.113.0.5:8080", "is going DOWN for maintenance. 1 active and 0 backup servers left."),
    ]
    events = server_events(lines)
    assert [e.kind for e in events] == [REGISTERED, DOWN, UP, DRAIN, MAINT]
    assert {e.target for e in events} == {"127.113.0.5:8080"} and {e.backend for e in events} == {BE}
    assert events[0].at == approx(T0) and events[2].at == approx(T0 + 1.5)


def test_a_pods_parts_add_up_and_podgates_share_is_its_two_parts() -> None:
    target = "127.113.0.5:8080"
    events = server_events(
        [line(0.3, target, REGISTER[0]), line(0.3, target, REGISTER[1]), line(4.3, target, CHECKED)]
    )
    pod = PodTimes(seen=T0 - 2, target=target, containers_ready=T0, gate_true=T0 + 4.5, ready=T0 + 4.6)
    got = parts(pod, by_target(events)[target])
    assert got == approx(
        {
            "registered": 0.3,
            "checked": 4.0,
            "gated": 0.2,
            "seen": 0.0,
            "ready": 0.1,
            "podgate": 0.5,
            "total": 4.6,
        }
    )
    # with the API server's times of the gate's PATCH, (d) is its completion and the watch's lag
    # after it a part of its own
    audited = dataclasses.replace(pod, gate_write=(T0 + 4.35, T0 + 4.4))
    got = parts(audited, by_target(events)[target])
    assert got is not None
    assert got["gated"] == approx(0.1) and got["seen"] == approx(0.1)
    assert got["gate_sent"] == approx(0.05) and got["gate_api"] == approx(0.05)
    assert got["podgate"] == approx(0.4)
    whole = got["registered"] + got["checked"] + got["gated"] + got["seen"] + got["ready"]
    assert whole == approx(got["total"])


def test_the_gate_write_is_the_first_accepted_patch_setting_a_gate_true() -> None:
    def event(name: str, status: str, code: int, received: str, completed: str) -> str:
        return json.dumps(
            {
                "objectRef": {
                    "resource": "pods",
                    "namespace": "scale",
                    "name": name,
                    "subresource": "status",
                },
                "responseStatus": {"code": code},
                "requestObject": {
                    "status": {
                        "conditions": [{"type": "service.readiness.podgate.dev/svc-0", "status": status}]
                    }
                },
                "requestReceivedTimestamp": received,
                "stageTimestamp": completed,
            }
        )

    lines = [
        event("p", "False", 200, "2026-12-05T07:52:20.000000Z", "2026-12-05T07:52:20.010000Z"),
        event("p", "True", 409, "2026-12-05T07:52:22.000000Z", "2026-12-05T07:52:22.010000Z"),
        event("p", "True", 200, "2026-12-05T07:52:23.000000Z", "2026-12-05T07:52:23.250000Z"),
        event("p", "True", 200, "2026-12-05T07:52:24.000000Z", "2026-12-05T07:52:24.010000Z"),
        "not json",
    ]
    assert gate_writes(lines, "service.readiness.podgate.dev/") == {"p": (approx(T0 + 1), approx(T0 + 1.25))}


def test_an_earlier_pods_events_at_the_same_address_are_not_the_new_pods() -> None:
    """Addresses come back: a restarted pod may get one an old pod had, whose registration and
    UP came before the new pod existed."""
    target = "127.113.0.9:8080"
    events = server_events(
        [
            line(-60, target, REGISTER[0]),
            line(-55, target, CHECKED),
            line(-1, target, "is going DOWN for maintenance."),
            line(1, target, REGISTER[0]),
            line(7, target, CHECKED),
        ]
    )
    pod = PodTimes(seen=T0 - 0.5, target=target, containers_ready=T0, gate_true=T0 + 7.2, ready=T0 + 7.3)
    got = parts(pod, events)
    assert got is not None
    assert got["registered"] == approx(1) and got["checked"] == approx(6)


def test_a_pod_missing_a_time_or_an_event_is_not_decomposed() -> None:
    target = "127.113.0.7:8080"
    registered_only = server_events([line(0.1, target, REGISTER[0])])
    whole = PodTimes(T0 - 1, target, T0, T0 + 7, T0 + 7.1)
    assert parts(whole, registered_only) is None  # never UP in HAProxy's record
    assert parts(PodTimes(T0 - 1, target, T0, None, None), registered_only) is None
    assert parts(PodTimes(T0 - 1, None, T0, T0 + 7, T0 + 7.1), []) is None


def test_histogram_quantiles_interpolate_in_their_bucket_as_prometheus_does() -> None:
    # 100 calls: 10 within 5 ms, 60 within 25 ms, 95 within 100 ms, all within 500 ms
    buckets = {0.005: 10.0, 0.025: 60.0, 0.1: 95.0, 0.5: 100.0, 1.0: 100.0, math.inf: 100.0}
    assert histogram_quantile(0.5, buckets) == approx(0.005 + 0.02 * 40 / 50)
    assert histogram_quantile(0.99, buckets) == approx(0.1 + 0.4 * 4 / 5)
    assert histogram_quantile(0.05, buckets) == approx(0.0025)
    # beyond the highest finite bound: that bound (as histogram_quantile answers)
    assert histogram_quantile(0.99, {0.1: 50.0, math.inf: 100.0}) == approx(0.1)
    assert histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
