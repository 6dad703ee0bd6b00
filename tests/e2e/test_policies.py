"""Per-Service gate policies on the sandbox: a readiness timeout that fails open or closed, and
continuous gates that notice a target HAProxy marks DOWN (and UP again) within 2 check intervals."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime
from typing import Any

import pytest

from .conftest import (
    STAND_IN_HEALTH_PORT,
    SandboxHandle,
    condition,
    controller_replaced,
    metric,
    samples,
    scrape,
    wait_for,
    wide_row,
)
from .test_cli_gates import run
from .test_controller import INJECT, all_ready, deployment, events, gate, lb_service, pods, servers
from .test_webhook_replicas import front_door_up

pytestmark = pytest.mark.sandbox
METRICS_PORT = 8081 + 10000


def _time(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def test_a_readiness_timeout_fails_open_or_closed_as_the_service_says(
    sandbox: SandboxHandle, namespace: str
) -> None:
    """A check that can never pass (the Service targets a port nothing listens on): after 3 s the
    'open' Service's pod turns Ready with reason ReadinessTimedOut, the 'closed' one's stays 0/1
    with that reason; both get a Warning, and the open one stays a target in HAProxy."""
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    before = scrape(METRICS_PORT)[1]
    for policy in ("open", "closed"):
        sandbox.apply(
            lb_service(
                policy,
                policy,
                target=9999,  # the app listens on 8080: HAProxy's check never passes
                **{"podgate.dev/readiness-timeout": "3s", "podgate.dev/on-timeout": policy},
            ),
            namespace,
        )
        sandbox.apply(deployment(policy, 1), namespace)

    def decided(app: str) -> dict[str, Any] | None:
        ps = pods(sandbox, namespace, app)
        c = condition(ps[0], gate(app)) if len(ps) == 1 else None
        return ps[0] if c and c.get("reason") == "ReadinessTimedOut" else None

    opened = wait_for("the open Service's gate timed out", lambda: decided("open"), 30)
    closed = wait_for("the closed Service's gate timed out", lambda: decided("closed"), 30)

    open_gate = condition(opened, gate("open")) or {}
    assert open_gate["status"] == "True"
    assert "podgate.dev/on-timeout=open" in open_gate["message"]
    waited = _time(open_gate["lastTransitionTime"]) - _time(
        (condition(opened, "ContainersReady") or {})["lastTransitionTime"]
    )
    assert waited >= 2, "not before the timeout (timestamps have whole seconds)"
    name = opened["metadata"]["name"]
    wait_for("the open pod Ready", lambda: wide_row(sandbox, namespace, name)["READINESS GATES"] == "1/1")
    wait_for(
        "the open pod Ready",
        lambda: (condition(pods(sandbox, namespace, "open")[0], "Ready") or {}).get("status") == "True",
    )
    backend = f"podgate.{namespace}.open.80"
    assert [s.address for s in servers(sandbox, backend)] == [f"{opened['status']['podIP']}:9999"]
    assert not servers(sandbox, backend)[0].status.startswith("UP"), "HAProxy still says not healthy"

    closed_gate = condition(closed, gate("closed")) or {}
    assert closed_gate["status"] == "False"
    assert "podgate.dev/on-timeout=closed" in closed_gate["message"]
    row = wide_row(sandbox, namespace, closed["metadata"]["name"])
    assert row["READINESS GATES"] == "0/1"

    for pod in (opened, closed):
        warned = wait_for(
            "a ReadinessTimedOut Warning",
            lambda pod=pod: [
                e
                for e in events(sandbox, namespace, pod["metadata"]["name"])
                if e["reason"] == "ReadinessTimedOut" and e["type"] == "Warning"
            ],
        )
        assert "ReadinessTimedOut" in warned[0]["reason"]
    after = scrape(METRICS_PORT)[1]
    for policy in ("open", "closed"):
        assert (
            metric(after, "podgate_gate_timeouts_total", on_timeout=policy)
            >= metric(before, "podgate_gate_timeouts_total", on_timeout=policy) + 1
        )


def _set_health(ip: str, status: int) -> None:
    req = urllib.request.Request(f"http://{ip}:8080/control/health?status={status}", method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200


def test_a_continuous_gate_follows_haproxy_down_and_up_within_two_check_intervals(
    sandbox: SandboxHandle, namespace: str
) -> None:
    """gate-mode continuous on one Service (the sandbox's controller default is startup): the
    app's /healthz answers 503, HAProxy marks the target DOWN, the gate goes False (READINESS
    GATES 0/1) within 2 x the check interval of that; back to 200, UP, True again as fast."""
    interval = 1.0
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    sandbox.apply(
        lb_service(
            "cont",
            "cont",
            **{
                "podgate.dev/gate-mode": "continuous",
                "podgate.dev/health-check-interval": str(interval),
                "podgate.dev/healthy-threshold": "2",
                "podgate.dev/unhealthy-threshold": "2",
            },
        ),
        namespace,
    )
    sandbox.apply(deployment("cont", 1), namespace)
    pod = wait_for(
        "the pod Ready",
        lambda: (
            (ps := pods(sandbox, namespace, "cont"))
            and (condition(ps[0], "Ready") or {}).get("status") == "True"
            and ps[0]
        ),
        30,
    )
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    backend = f"podgate.{namespace}.cont.80"

    def flip(status: int, lb_state: str, gate_status: str) -> float:
        """At most how long after HAProxy showed ``lb_state`` the gate showed ``gate_status``:
        from the last look at HAProxy that did not see it yet (an over-estimate, never under)."""
        _set_health(ip, status)
        not_yet = time.monotonic()
        deadline = not_yet + 30
        while time.monotonic() < deadline:
            looked = time.monotonic()
            if not any(s.status == lb_state for s in servers(sandbox, backend)):
                not_yet = looked
            c = condition(sandbox.get("pod", name, "-n", namespace), gate("cont")) or {}
            if c.get("status") == gate_status:
                return time.monotonic() - not_yet
            time.sleep(0.02)
        raise AssertionError(f"gate never {gate_status} after /healthz answered {status}")

    down = flip(503, "DOWN", "False")
    assert down <= 2 * interval, f"gate False {down:.2f}s after HAProxy's DOWN"
    c = condition(sandbox.get("pod", name, "-n", namespace), gate("cont")) or {}
    assert c["reason"] == "HealthCheckFailing" and "DOWN" in c["message"]
    wait_for("READINESS GATES 0/1", lambda: wide_row(sandbox, namespace, name)["READINESS GATES"] == "0/1")
    assert any(s.status == "DOWN" for s in servers(sandbox, backend)), "still a target while down"

    up = flip(200, "UP", "True")
    assert up <= 2 * interval, f"gate True {up:.2f}s after HAProxy's UP"
    wait_for("READINESS GATES 1/1", lambda: wide_row(sandbox, namespace, name)["READINESS GATES"] == "1/1")
    print(f"continuous gate: False {down:.2f}s after DOWN, True {up:.2f}s after UP (interval {interval}s)")


def _evict(sandbox: SandboxHandle, namespace: str, pod: str) -> tuple[bool, str]:
    """POST an Eviction as ``kubectl drain`` does: policy/v1 (since 1.22; v1beta1 went in 1.25)."""
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": namespace},
    }
    out = sandbox.kubectl(
        "create",
        "--raw",
        f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction",
        "-f",
        "-",
        input=json.dumps(body),
        check=False,
    )
    return "Error from server" not in out, out


@pytest.mark.compat
def test_the_eviction_guard_keeps_the_minimum_of_targets_haproxy_calls_healthy(
    sandbox: SandboxHandle, namespace: str
) -> None:
    """min-healthy-targets 2: with 2 replicas an eviction is refused (429); scaled to 3 and the
    third UP in HAProxy, one eviction goes and the next is refused, before any replacement is UP."""
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    # slow checks (3 passes 1 s apart), so a replacement pod is not UP within the test's steps
    sandbox.apply(
        lb_service(
            "guarded",
            "guarded",
            **{
                "podgate.dev/min-healthy-targets": "2",
                "podgate.dev/health-check-interval": "1",
                "podgate.dev/healthy-threshold": "3",
            },
        ),
        namespace,
    )
    sandbox.apply(deployment("guarded", 2), namespace)
    backend = f"podgate.{namespace}.guarded.80"

    def up_in_haproxy(n: int) -> list[dict[str, Any]] | None:
        ready = all_ready(sandbox, namespace, "guarded", n)
        ups = [s for s in servers(sandbox, backend) if s.status == "UP"]
        return ready if ready and len(ups) == n else None

    two = wait_for("2 pods Ready and UP in HAProxy", lambda: up_in_haproxy(2), 40)
    allowed, out = _evict(sandbox, namespace, two[0]["metadata"]["name"])
    assert not allowed, out
    assert "TooManyRequests" in out or "429" in out, out
    assert f"Service {namespace}/guarded" in out and "(2 healthy now)" in out, out
    assert "podgate.dev/min-healthy-targets=2" in out, out
    # 2 of 2 pods: no eviction can ever pass, as a PDB allowing no disruption; the Service says so
    assert f"is at or above the 2 pod(s) Service {namespace}/guarded selects" in out, out
    wait_for(
        "the MinHealthyTargetsUnreachable Warning on the Service",
        lambda: any(
            e["reason"] == "MinHealthyTargetsUnreachable" and e["type"] == "Warning"
            for e in events(sandbox, namespace, "guarded")
        ),
    )

    sandbox.kubectl("scale", "deployment", "guarded", "-n", namespace, "--replicas=3")
    three = wait_for("3 pods Ready and UP in HAProxy", lambda: up_in_haproxy(3), 40)
    first, second = three[0]["metadata"]["name"], three[1]["metadata"]["name"]
    allowed, out = _evict(sandbox, namespace, first)
    assert allowed, out
    allowed, out = _evict(sandbox, namespace, second)
    assert not allowed, out
    assert "(2 healthy now)" in out and "at or above" not in out, out  # 3 pods now, or their replacement
    assert any(s.status == "UP" for s in servers(sandbox, backend))
    assert metric(scrape(METRICS_PORT)[1], "podgate_eviction_reviews_total", result="refused") >= 2


def test_a_pdb_that_always_allows_unhealthy_evictions_does_not_take_the_last_healthy_targets(
    sandbox: SandboxHandle, namespace: str
) -> None:
    """Two pods serve Service ``budget`` (healthy in HAProxy) but are not Ready to Kubernetes: a
    second Service, ``cold``, selects them on a port nothing listens on, so its gate stays False.
    Their PodDisruptionBudget (policy/v1, minAvailable 1) therefore has no budget left, yet with
    ``unhealthyPodEvictionPolicy: AlwaysAllow`` it lets any of them go, since to Kubernetes they
    are unhealthy. podgate's guard (min-healthy-targets 2 on ``budget``) still refuses with 429:
    they are the load balancer's last healthy targets. With the guard's annotation removed the
    same eviction passes: the PDB alone would have let it go."""
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    sandbox.apply(lb_service("budget", "budget", **{"podgate.dev/min-healthy-targets": "2"}), namespace)
    sandbox.apply(lb_service("cold", "budget", target=9999), namespace)
    sandbox.apply(deployment("budget", 2), namespace)
    sandbox.apply(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "budget"},
            "spec": {
                "minAvailable": 1,
                "selector": {"matchLabels": {"app": "budget"}},
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        },
        namespace,
    )
    backend = f"podgate.{namespace}.budget.80"

    def healthy_in_haproxy_not_ready() -> list[dict[str, Any]] | None:
        ps = pods(sandbox, namespace, "budget")
        ups = [s for s in servers(sandbox, backend) if s.status == "UP"]
        kinds = (gate("budget"), gate("cold"), "Ready")
        seen = [[(condition(p, kind) or {}).get("status") for p in ps] for kind in kinds]
        wanted = len(ps) == 2 and len(ups) == 2 and seen == [["True"] * 2, ["False"] * 2, ["False"] * 2]
        return ps if wanted else None

    two = wait_for(
        "2 pods UP in HAProxy, gate budget True, gate cold False, not Ready", healthy_in_haproxy_not_ready, 40
    )
    wait_for(
        "the PDB seeing 2 pods, none healthy, no disruption allowed",
        lambda: (
            (st := sandbox.get("pdb", "budget", "-n", namespace).get("status") or {}).get("expectedPods") == 2
            and st.get("currentHealthy") == 0
            and st.get("disruptionsAllowed") == 0
        ),
        30,
    )
    victim = two[0]["metadata"]["name"]
    allowed, out = _evict(sandbox, namespace, victim)
    assert not allowed, out
    assert "TooManyRequests" in out or "429" in out, out
    assert f"Service {namespace}/budget" in out and "podgate.dev/min-healthy-targets=2" in out, out
    assert len(pods(sandbox, namespace, "budget")) == 2
    assert [s.status for s in servers(sandbox, backend)] == ["UP", "UP"]

    sandbox.kubectl("annotate", "service", "budget", "-n", namespace, "podgate.dev/min-healthy-targets-")

    def evicted() -> str | None:
        allowed, out = _evict(sandbox, namespace, victim)
        return out if allowed else None

    # the PDB allows no disruption, so only AlwaysAllow (the pod is not Ready) lets this through
    wait_for("the eviction of a not-Ready pod allowed by the PDB once podgate's guard is off", evicted, 30)


def test_status_explains_every_pod_that_is_not_ready_and_pods_without_a_gate(
    sandbox: SandboxHandle, namespace: str
) -> None:
    """A pod whose probe never passes, a pod gated on a Service that does not exist, and a pod
    created before its load-balanced Service: ``podgate status`` names the reason of each, and
    the stuck gate shows up in podgate_pending_gates_older_than once it is 30 s old."""
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    sandbox.apply(deployment("early", 1), namespace)  # no Service yet: no gate
    wait_for("the early pod Ready", lambda: all_ready(sandbox, namespace, "early", 1), 30)
    sandbox.apply(lb_service("early", "early"), namespace)
    container = {"name": "app", "image": "nginx", "ports": [{"containerPort": 8080}]}
    sandbox.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sick"},
            "spec": {
                "containers": [
                    {**container, "readinessProbe": {"tcpSocket": {"port": 9999}, "periodSeconds": 1}}
                ]
            },
        },
        namespace,
    )
    sandbox.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "orphan"},
            "spec": {"readinessGates": [{"conditionType": gate("ghost")}], "containers": [container]},
        },
        namespace,
    )
    early = pods(sandbox, namespace, "early")[0]["metadata"]["name"]

    def rows() -> dict[tuple[str, str], dict[str, Any]] | None:
        # the sandbox's controller serves class-less LoadBalancer Services (--default-provider)
        out = run(sandbox, "status", "-n", namespace, "-o", "json", "--default-provider", "haproxy")
        assert out.returncode == 0, out.stderr
        got = {(r["pod"], r["gate"]): r for r in json.loads(out.stdout)}
        want = {("sick", "container/app"), ("orphan", gate("ghost")), (early, gate("early"))}
        return (
            got
            if want <= set(got) and got[("orphan", gate("ghost"))]["reason"] == "ServiceNotFound"
            else None
        )

    got = wait_for("status explaining the three pods", rows, 30)
    assert got[("sick", "container/app")]["reason"] == "ReadinessProbeFailing"
    assert got[(early, gate("early"))]["reason"] == "NoReadinessGate"
    assert "restart" in got[(early, gate("early"))]["message"]
    # told nothing of the controller's settings, status counts only Services that name podgate
    plain = json.loads(run(sandbox, "status", "-n", namespace, "-o", "json").stdout)
    assert (early, gate("early")) not in {(r["pod"], r["gate"]) for r in plain}
    table = run(sandbox, "status", "-n", namespace).stdout
    assert any(
        line.split()[:4] == ["sick", "container/app", "False", "ReadinessProbeFailing"]
        for line in table.splitlines()
    ), table

    wait_for(
        "the orphan's gate pending for 30 s in the metrics",
        lambda: (
            sum(
                samples(
                    scrape(METRICS_PORT)[1],
                    "podgate_pending_gates_older_than",
                    reason="ServiceNotFound",
                    older_than="30s",
                )
            )
            >= 1
        ),
        45,
        1.0,
    )


def test_an_eviction_refused_for_the_longest_refusal_goes_through_with_a_warning(
    sandbox: SandboxHandle, namespace: str
) -> None:
    """A floor no eviction can pass (min-healthy-targets 2 over 2 pods) holds a drain at most
    --max-eviction-refusal (here 4 s; 10 minutes by default): retried as ``kubectl drain``
    retries, the eviction goes through once that has passed since the first refusal, with a
    warning kubectl prints, an EvictionForced Warning on the pod and the metric."""
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    with controller_replaced(sandbox, "--max-eviction-refusal", "4s", env={}, log=f"forced-{namespace}.log"):
        wait_for("the webhook front door to reach the replica", front_door_up, 30)
        sandbox.apply(
            lb_service("held", "held", **{"podgate.dev/min-healthy-targets": "2"}),
            namespace,
        )
        sandbox.apply(deployment("held", 2), namespace)
        backend = f"podgate.{namespace}.held.80"
        pods_up = wait_for(
            "2 pods Ready and UP in HAProxy",
            lambda: (
                (ready := all_ready(sandbox, namespace, "held", 2))
                and len([s for s in servers(sandbox, backend) if s.status == "UP"]) == 2
                and ready
            ),
            40,
        )
        name = pods_up[0]["metadata"]["name"]
        first_refused = time.monotonic()  # no later than the guard's first refusal
        allowed, out = _evict(sandbox, namespace, name)
        assert not allowed and ("429" in out or "TooManyRequests" in out), out
        outcomes: list[tuple[float, bool, str]] = []

        def retried() -> str | None:
            ok, text = _evict(sandbox, namespace, name)
            outcomes.append((time.monotonic() - first_refused, ok, text))
            return text if ok else None

        out = wait_for("the eviction to go through", retried, 30, 0.5)
        refused_for = [t for t, ok, _ in outcomes if not ok]
        assert refused_for and max(refused_for) < 5.0, outcomes  # refused until then
        assert outcomes[-1][0] >= 4.0, outcomes  # not before the 4 s
        assert "podgate let this eviction through after refusing it for" in out, out
        wait_for(
            "the EvictionForced Warning on the pod",
            lambda: any(
                e["reason"] == "EvictionForced" and e["type"] == "Warning"
                for e in events(sandbox, namespace, name)
            ),
        )
        assert metric(scrape(STAND_IN_HEALTH_PORT)[1], "podgate_evictions_forced_total") == 1
