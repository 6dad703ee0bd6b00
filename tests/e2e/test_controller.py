"""podgate on the sandbox: webhook injection, HAProxy registration, gates that follow its health."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from podgate.providers.haproxy_runtime import Runtime, ServerStat
from podgate_sandbox import processes

from .conftest import (
    CLOUD_SECRETS,
    SandboxHandle,
    assert_not_logged,
    condition,
    controller_replaced,
    metric,
    podgate,
    reconciled_after,
    samples,
    scrape,
    wait_for,
    wide_row,
)

pytestmark = pytest.mark.sandbox
INJECT = "podgate.dev/pod-readiness-gate-inject"


def gate(svc: str) -> str:
    return f"service.readiness.podgate.dev/{svc}"


def lb_service(
    name: str, app: str, type_: str = "LoadBalancer", port: int = 80, target: Any = "http", **annotations: str
) -> dict[str, Any]:
    ann = {
        "podgate.dev/health-check-path": "/healthz",
        "podgate.dev/health-check-interval": "0.5",
        "podgate.dev/healthy-threshold": "2",
        **annotations,
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "annotations": ann},
        "spec": {"type": type_, "selector": {"app": app}, "ports": [{"port": port, "targetPort": target}]},
    }


def deployment(
    name: str,
    replicas: int,
    gates: list[str] = (),
    labels: dict[str, str] | None = None,  # type: ignore[assignment]
    pre_stop: int | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "app",
        "image": "nginx",
        "ports": [{"name": "http", "containerPort": 8080}],
    }
    if pre_stop:
        container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(pre_stop)]}}}
    spec: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": 30}
    if gates:
        spec["readinessGates"] = [{"conditionType": g} for g in gates]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name, **(labels or {})}}, "spec": spec},
        },
    }


def pods(sandbox: SandboxHandle, ns: str, app: str) -> list[dict[str, Any]]:
    return [
        p
        for p in sandbox.get("pods", "-n", ns, "-l", f"app={app}")["items"]
        if not p["metadata"].get("deletionTimestamp")
    ]


def all_ready(sandbox: SandboxHandle, ns: str, app: str, n: int) -> list[dict[str, Any]] | None:
    ps = pods(sandbox, ns, app)
    ok = len(ps) == n and all((condition(p, "Ready") or {}).get("status") == "True" for p in ps)
    return ps if ok else None


def servers(sandbox: SandboxHandle, backend: str) -> list[ServerStat]:
    rt = Runtime(str(sandbox.state_dir / "haproxy" / "runtime.sock"))
    try:
        return asyncio.run(rt.servers(backend))
    except Exception:
        return []


def external_ip(sandbox: SandboxHandle, ns: str, svc: str) -> str | None:
    ingress = (
        (sandbox.get("service", svc, "-n", ns).get("status") or {}).get("loadBalancer", {}).get("ingress")
    )
    return ingress[0]["ip"] if ingress else None


def events(sandbox: SandboxHandle, ns: str, name: str) -> list[dict[str, Any]]:
    items = sandbox.get("events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]
    return sorted(items, key=lambda e: (e.get("firstTimestamp") or "", e["metadata"]["name"]))


@pytest.mark.compat
def test_automatic_flow(sandbox: SandboxHandle, namespace: str) -> None:
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    sandbox.apply(lb_service("web", "web"), namespace)
    ip = wait_for("an EXTERNAL-IP", lambda: external_ip(sandbox, namespace, "web"))
    assert ip.startswith("127.201."), "from the sandbox's load-balancer range"
    svc_row = sandbox.kubectl("get", "service", "web", "-n", namespace).splitlines()
    assert ip in svc_row[1] and "EXTERNAL-IP" in svc_row[0]

    sandbox.apply(deployment("web", 2), namespace)
    first = wait_for(
        "pods with an IP",
        lambda: (
            (ps := pods(sandbox, namespace, "web"))
            and len(ps) == 2
            and all(p["status"].get("podIP") for p in ps)
            and ps
        ),
    )
    for p in first:
        assert p["spec"]["readinessGates"] == [{"conditionType": gate("web")}], "injected by the webhook"
    # Containers are ready at once; the gate holds the pods back until HAProxy says UP.
    name = first[0]["metadata"]["name"]
    row = wait_for(
        "READY 1/1 with the gate still pending",
        lambda: (
            (r := wide_row(sandbox, namespace, name))
            and r["READY"] == "1/1"
            and r["READINESS GATES"] == "0/1"
            and r
        ),
        15,
        0.05,
    )
    assert row["READINESS GATES"] == "0/1"
    ready = wait_for("both pods Ready", lambda: all_ready(sandbox, namespace, "web", 2), 30)
    for p in ready:
        c = condition(p, gate("web"))
        assert c is not None and c["status"] == "True" and c["reason"] == "TargetHealthy"
        assert "is UP, check L7OK" in c["message"]
        assert wide_row(sandbox, namespace, p["metadata"]["name"])["READINESS GATES"] == "1/1"
    be = f"podgate.{namespace}.web.80"
    ups = {s.address for s in servers(sandbox, be) if s.status.startswith("UP")}
    assert ups == {f"{p['status']['podIP']}:8080" for p in ready}
    # The pod's story in its Events: registered, health checking, then True.
    reasons = [e["reason"] for e in events(sandbox, namespace, name)]
    assert "ReadinessGateTrue" in reasons
    assert reasons.index("ReadinessGateTrue") > min(
        reasons.index(r) for r in ("RegistrationInProgress", "InitialHealthChecking") if r in reasons
    )
    # Traffic through the load balancer's address reaches the pods.
    seen = set()
    for _ in range(6):
        with urllib.request.urlopen(f"http://{ip}/", timeout=3) as r:
            assert r.status == 200
            seen.add(r.headers["X-Pod-Name"])
    assert seen == {p["metadata"]["name"] for p in ready}


def test_reload_for_another_service_keeps_targets_healthy(sandbox: SandboxHandle, namespace: str) -> None:
    sandbox.apply(lb_service("steady", "steady"), namespace)
    sandbox.apply(deployment("steady", 2, gates=[gate("steady")]), namespace)
    wait_for("Ready", lambda: all_ready(sandbox, namespace, "steady", 2), 30)
    be = f"podgate.{namespace}.steady.80"
    wait_for("both UP", lambda: len([s for s in servers(sandbox, be) if s.status == "UP"]) == 2)
    before = (sandbox.state_dir / "haproxy" / "haproxy.cfg").read_text().split("\n", 1)[0]
    # Another Service changes HAProxy's structure: a reload, which must not reset health.
    sandbox.apply(lb_service("other", "other"), namespace)
    wait_for(
        "the reload",
        lambda: (sandbox.state_dir / "haproxy" / "haproxy.cfg").read_text().split("\n", 1)[0] != before,
    )
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        states = [s.status for s in servers(sandbox, be)]
        assert states == ["UP", "UP"], f"targets lost their state across the reload: {states}"
        time.sleep(0.05)


def test_manual_flow_gate_in_template(sandbox: SandboxHandle, namespace: str) -> None:
    # Not labelled: no injection; the gate is written in the template by the user.
    sandbox.apply(lb_service("api", "api"), namespace)
    sandbox.apply(deployment("api", 1, gates=[gate("api")]), namespace)
    ready = wait_for("the pod Ready", lambda: all_ready(sandbox, namespace, "api", 1), 30)
    assert [g["conditionType"] for g in ready[0]["spec"]["readinessGates"]] == [gate("api")]


def test_pod_in_two_services_waits_for_both(sandbox: SandboxHandle, namespace: str) -> None:
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    sandbox.apply(lb_service("fast", "both", port=80), namespace)
    # The second Service checks slowly: the pod must wait for it too.
    sandbox.apply(
        lb_service(
            "slow",
            "both",
            port=8080,
            **{"podgate.dev/health-check-interval": "1.5", "podgate.dev/healthy-threshold": "3"},
        ),
        namespace,
    )
    wait_for(
        "both EXTERNAL-IPs",
        lambda: external_ip(sandbox, namespace, "fast") and external_ip(sandbox, namespace, "slow"),
    )
    sandbox.apply(deployment("both", 1), namespace)

    def fast_true_slow_checking() -> dict[str, Any] | None:
        ps = pods(sandbox, namespace, "both")
        fast = (condition(ps[0], gate("fast")) or {}) if ps else {}
        slow = (condition(ps[0], gate("slow")) or {}) if ps else {}
        ok = fast.get("status") == "True" and slow.get("reason") == "InitialHealthChecking"
        return ps[0] if ok else None

    p = wait_for(
        "the fast gate True while the slow one is health checking", fast_true_slow_checking, 20, 0.05
    )
    assert sorted(g["conditionType"] for g in p["spec"]["readinessGates"]) == [gate("fast"), gate("slow")]
    slow = condition(p, gate("slow"))
    assert slow is not None and slow["status"] == "False", slow
    assert "is DOWN" in slow["message"], "HAProxy's own words: checks not passed yet"
    assert (condition(p, "Ready") or {}).get("status") == "False"
    assert wide_row(sandbox, namespace, p["metadata"]["name"])["READINESS GATES"] == "1/2"
    wait_for("Ready after both", lambda: all_ready(sandbox, namespace, "both", 1), 30)


def test_gate_for_a_missing_service_stays_false(sandbox: SandboxHandle, namespace: str) -> None:
    sandbox.apply(deployment("lost", 1, gates=[gate("nowhere")]), namespace)
    p = wait_for(
        "the gate condition",
        # the node writes Ready on its own schedule: wait for both conditions, then read them
        lambda: (
            (ps := pods(sandbox, namespace, "lost"))
            and condition(ps[0], gate("nowhere"))
            and condition(ps[0], "Ready")
            and ps[0]
        ),
        20,
    )
    c = condition(p, gate("nowhere"))
    assert c is not None and c["status"] == "False" and c["reason"] == "ServiceNotFound"
    assert c["message"] == f"Service {namespace}/nowhere does not exist"
    assert (condition(p, "Ready") or {}).get("status") == "False"
    ev = wait_for(
        "a warning Event",
        lambda: [
            e for e in events(sandbox, namespace, p["metadata"]["name"]) if e["reason"] == "ServiceNotFound"
        ],
    )
    assert ev[0]["type"] == "Warning"


def test_deleted_pod_is_drained_then_removed(sandbox: SandboxHandle, namespace: str) -> None:
    sandbox.apply(lb_service("drain", "drain"), namespace)
    sandbox.apply(deployment("drain", 1, gates=[gate("drain")], pre_stop=4), namespace)
    p = wait_for("Ready", lambda: all_ready(sandbox, namespace, "drain", 1), 30)[0]
    addr = f"{p['status']['podIP']}:8080"
    be = f"podgate.{namespace}.drain.80"
    sandbox.kubectl("scale", "deployment/drain", "-n", namespace, "--replicas=0")
    # During the preStop sleep the pod still serves, and HAProxy already drains it.
    st = wait_for(
        "DRAIN in HAProxy",
        lambda: [s for s in servers(sandbox, be) if s.address == addr and s.status.startswith("DRAIN")],
        5,
        0.05,
    )
    assert st
    wait_for("the server removed", lambda: not any(s.address == addr for s in servers(sandbox, be)), 15)


def test_malformed_admission_review_gets_400_and_webhook_keeps_serving(sandbox: SandboxHandle) -> None:
    url = f"https://127.0.0.1:{9443 + 10000}/mutate-pods"
    ctx = ssl.create_default_context(cafile=str(sandbox.state_dir / "webhook-certs" / "ca.crt"))

    def post(body: bytes) -> tuple[int, str]:
        req = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    status, text = post(b"{not json")
    assert status == 400 and "request body is not JSON" in text
    status, text = post(
        json.dumps({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1"}).encode()
    )
    assert status == 400 and "expected 'admission.k8s.io/v1'" in text
    status, text = post(
        json.dumps(
            {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": "u1"}}
        ).encode()
    )
    assert status == 400 and "request.object is missing" in text
    good = {
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "u2",
            "operation": "CREATE",
            "namespace": "nowhere",
            "object": {"metadata": {"labels": {}}, "spec": {"containers": []}},
        },
    }
    status, text = post(json.dumps(good).encode())
    assert status == 200
    assert json.loads(text)["response"] == {"uid": "u2", "allowed": True}


def admission_processes(controller: int) -> list[int]:
    """The controller's children that answer admission (``python -m podgate.app.admission``)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if ppid == controller and b"podgate.app.admission" in cmdline:
            found.append(int(stat.parent.name))
    return found


def listening_on(port: int) -> set[int]:
    """The pids holding a TCP listener on ``port`` (``ss``)."""
    out = subprocess.run(
        ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def test_admission_is_answered_by_a_process_of_the_controllers_own(
    sandbox: SandboxHandle, namespace: str
) -> None:
    """``--admission process``: a child of the controller answers on the socket the controller
    bound; killed, the replica is not ready until another child serves, a review sent meanwhile
    waits for it (never refused: failurePolicy Ignore would admit the pod ungated), and pods
    created after get their gates from it.  The sandbox's controller swapped for replica 1 with
    the flag (the default is the thread every other test runs)."""
    log = f"admission-process-{namespace}.log"
    with controller_replaced(sandbox, "--admission", "process", env={}, log=log) as swap:
        assert swap.process is not None
        controller = swap.process.pid
        port, health = 9445 + 10000, 8181 + 10000  # replica 1, behind the front door at 9443
        wait_for("the replica ready", lambda: ready_at(health), 60)
        (child,) = wait_for("one admission process", lambda: admission_processes(controller) or None)
        assert listening_on(port) == {controller, child}, "bound by the controller, served by the child"
        review = {
            "kind": "AdmissionReview",
            "apiVersion": "admission.k8s.io/v1",
            "request": {"uid": "gap", "operation": "CREATE", "namespace": "nowhere", "object": {}},
        }
        ctx = ssl.create_default_context(cafile=str(sandbox.state_dir / "webhook-certs-1" / "ca.crt"))
        os.kill(child, signal.SIGKILL)
        wait_for("the replica not ready", lambda: not ready_at(health), 10, 0.02)
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/mutate-pods",
            data=json.dumps(review).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=ctx, timeout=20) as r:  # sent between children
            assert json.loads(r.read())["response"] == {"uid": "gap", "allowed": True}
        (again,) = admission_processes(controller)
        assert again != child and listening_on(port) == {controller, again}
        wait_for("the replica ready again", lambda: ready_at(health), 30)
        sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
        sandbox.apply(lb_service("after", "after"), namespace)
        sandbox.apply(deployment("after", 1), namespace)
        (pod,) = wait_for("the pod", lambda: pods(sandbox, namespace, "after") or None)
        assert pod["spec"]["readinessGates"] == [{"conditionType": gate("after")}]
        wait_for("the pod Ready", lambda: all_ready(sandbox, namespace, "after", 1), 60)
    wait_for("the child gone with its controller", lambda: not Path(f"/proc/{again}").exists(), 15)


def ready_at(port: int) -> bool:
    try:
        return scrape(port, "/readyz")[0] == 200
    except OSError:  # not listening (yet)
        return False


def test_haproxy_and_controller_restarts_resync_without_false_trues(
    sandbox: SandboxHandle, namespace: str
) -> None:
    sandbox.apply(lb_service("resync", "resync"), namespace)
    sandbox.apply(deployment("resync", 2, gates=[gate("resync")]), namespace)
    before = wait_for("Ready", lambda: all_ready(sandbox, namespace, "resync", 2), 30)
    be = f"podgate.{namespace}.resync.80"
    pids = json.loads((sandbox.state_dir / "pids.json").read_text())

    # HAProxy dies and comes back with none of the dynamic servers: podgate re-adds them.
    os.killpg(pids["haproxy"], signal.SIGKILL)
    wait_for("HAProxy gone", lambda: not servers(sandbox, be), 10)
    up = podgate("sandbox", "up", "--state-dir", str(sandbox.state_dir))
    assert up.returncode == 0, up.stderr
    wait_for(
        "targets re-registered and UP",
        lambda: len([s for s in servers(sandbox, be) if s.status.startswith("UP")]) == 2,
        30,
    )

    # The controller restarts: it converges from the cluster and HAProxy alone, writes nothing new.
    versions = {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in before}
    transitions = {
        p["metadata"]["name"]: condition(p, gate("resync"))["lastTransitionTime"]  # type: ignore[index]
        for p in before
    }
    os.killpg(pids["podgate-controller"], signal.SIGTERM)
    wait_for("the controller gone", lambda: not processes.alive(pids["podgate-controller"], "controller"), 20)

    def restart() -> None:
        up = podgate("sandbox", "up", "--state-dir", str(sandbox.state_dir))
        assert up.returncode == 0, up.stderr

    # the new controller has reconciled the Service and sent what it would write
    reconciled_after(sandbox, f"{namespace}/resync", restart)
    after = all_ready(sandbox, namespace, "resync", 2)
    assert after is not None
    assert {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in after} == versions, (
        "no pod was written: nothing had changed"
    )
    assert {
        p["metadata"]["name"]: condition(p, gate("resync"))["lastTransitionTime"]  # type: ignore[index]
        for p in after
    } == transitions
    # A new pod after the restart is still gated on HAProxy's health, never True before UP.
    sandbox.kubectl("scale", "deployment/resync", "-n", namespace, "--replicas=3")
    wait_for("the third pod Ready", lambda: all_ready(sandbox, namespace, "resync", 3), 30)
    new = [
        e
        for p in pods(sandbox, namespace, "resync")
        if p["metadata"]["name"] not in versions
        for e in events(sandbox, namespace, p["metadata"]["name"])
    ]
    assert any(e["reason"] == "ReadinessGateTrue" for e in new)
    assert not any(e["reason"] == "ProviderError" for e in new)


def test_pods_created_before_their_service_are_reported(sandbox: SandboxHandle, namespace: str) -> None:
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    sandbox.apply(deployment("early", 2), namespace)
    wait_for("the early pods Ready", lambda: all_ready(sandbox, namespace, "early", 2), 30)
    sandbox.apply(lb_service("early", "early"), namespace)
    ev = wait_for(
        "the Service's Event",
        lambda: [e for e in events(sandbox, namespace, "early") if e["reason"] == "PodsWithoutReadinessGate"],
        20,
    )
    assert ev[0]["involvedObject"]["kind"] == "Service"
    assert ev[0]["message"].startswith("2 matching pod(s) were created before this Service")
    # Restarting them, as the Event says, gives them the gate.
    sandbox.kubectl("rollout", "restart", "deployment/early", "-n", namespace)
    ready = wait_for(
        "restarted pods Ready with the gate",
        lambda: (
            (ps := all_ready(sandbox, namespace, "early", 2))
            and all(condition(p, gate("early")) for p in ps)
            and ps
        ),
        60,
    )
    assert all(condition(p, gate("early"))["status"] == "True" for p in ready)  # type: ignore[index]


def test_metrics_and_readiness_endpoints(sandbox: SandboxHandle, namespace: str) -> None:
    port = 8081 + 10000
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    # Checks slow enough (4 passes 1 s apart) that the pending gates are seen in a scrape.
    sandbox.apply(
        lb_service(
            "metered",
            "metered",
            port=80,
            **{"podgate.dev/health-check-interval": "1", "podgate.dev/healthy-threshold": "4"},
        ),
        namespace,
    )
    wait_for("an EXTERNAL-IP", lambda: external_ip(sandbox, namespace, "metered"))
    adds_before = metric(scrape(port)[1], "workqueue_adds_total", name="services")
    sandbox.apply(deployment("metered", 2), namespace)

    # While HAProxy checks the new pods, each of their gates is a pending sample, by reason.
    wait_for(
        "both gates False, health checking",
        lambda: (
            len(ps := pods(sandbox, namespace, "metered")) == 2
            and all(
                (condition(p, gate("metered")) or {}).get("reason") == "InitialHealthChecking" for p in ps
            )
        ),
        15,
        0.1,
    )
    pending = wait_for(
        "the two pending gates in a scrape",
        lambda: (
            (n := sum(samples(scrape(port)[1], "podgate_pending_gates", reason="InitialHealthChecking"))) >= 2
            and n
        ),
        3,
        0.1,
    )
    assert pending >= 2
    status, text = scrape(port)
    assert metric(text, "workqueue_adds_total", name="services") > adds_before, "the pods were queued"

    wait_for("Ready", lambda: all_ready(sandbox, namespace, "metered", 2), 30)
    assert scrape(port, "/readyz") == (200, "ready\n")
    assert scrape(port, "/healthz")[0] == 200
    # Done: no gate left pending for that reason (the sample goes away, it does not stay at 0).
    wait_for(
        "no gate pending in initial health checking",
        lambda: not samples(scrape(port)[1], "podgate_pending_gates", reason="InitialHealthChecking"),
        10,
    )
    # Idle: nothing waits in the queue.
    wait_for("an empty queue", lambda: metric(scrape(port)[1], "workqueue_depth", name="services") == 0, 10)
    status, text = scrape(port)
    assert status == 200
    assert metric(text, "podgate_gate_transitions_total", status="True", reason="TargetHealthy") >= 2
    assert metric(text, "podgate_time_to_ready_seconds_count", phase="health_checking") >= 2
    assert metric(text, "podgate_time_to_ready_ratio_count") >= 2
    assert metric(text, "controller_runtime_reconcile_total", controller="service", result="success") > 0
    assert metric(text, "controller_runtime_reconcile_time_seconds_count", controller="service") > 0
    lines = text.splitlines()
    assert "# TYPE workqueue_adds_total counter" in lines
    assert "# TYPE workqueue_retries_total counter" in lines
    assert metric(text, "workqueue_adds_total", name="services") > adds_before
    assert samples(text, "workqueue_retries_total", name="services"), "a series from the start, at 0"
    assert metric(text, "workqueue_queue_duration_seconds_count", name="services") > 0
    assert metric(text, "podgate_provider_calls_total", provider="haproxy", operation="register") >= 2
    assert metric(text, "podgate_provider_call_duration_seconds_count", operation="targets") > 0
    assert metric(text, "podgate_webhook_requests_total", result="patched") >= 2
    assert metric(text, "podgate_leader") == 1


def test_no_credential_in_any_log(sandbox: SandboxHandle) -> None:
    """No Service-account token, private key or cloud secret in any log of the session; the
    cloud tests check their controllers' logs themselves (and these too when they ran first)."""
    tokens = json.loads((sandbox.state_dir / "pki" / "tokens.json").read_text()).values()
    keys = [p.read_text().splitlines()[1] for p in (sandbox.state_dir / "pki").glob("*.key")]
    secrets = [*tokens, *keys, *CLOUD_SECRETS]
    assert tokens and keys
    logs = sorted((sandbox.state_dir / "logs").glob("*.log"))
    assert any(p.name == "podgate-controller.log" for p in logs)
    for log in logs:
        if "controller" in log.name:
            assert_not_logged(log, secrets)  # and not empty
        else:
            text = log.read_text(errors="replace")
            assert not [s for s in secrets if s in text], f"a secret appears in {log.name}"


def test_adopted_vendor_gate(sandbox: SandboxHandle, namespace: str) -> None:
    # A manifest written for Alibaba Cloud's controller: the sandbox's podgate adopts that
    # prefix (--adopt-gate-prefix), so the pod is gated on HAProxy without editing it.
    vendor = "service.readiness.alibabacloud.com/mig"
    sandbox.apply(lb_service("mig", "mig"), namespace)
    sandbox.apply(deployment("mig", 1, gates=[vendor]), namespace)
    pod = wait_for("Ready", lambda: all_ready(sandbox, namespace, "mig", 1), 30)[0]
    cond = condition(pod, vendor)
    assert cond is not None and cond["status"] == "True" and cond["reason"] == "TargetHealthy"
    assert condition(pod, gate("mig")) is None, "only the gate the pod asked for is written"
