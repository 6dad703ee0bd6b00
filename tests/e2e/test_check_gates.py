"""Check gates on the sandbox: HTTP from outside the pod, continuous mode, a real Prometheus,
and specs the API server rejects."""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from .conftest import SandboxHandle, checked_after, condition, controller_replaced, wait_for, wide_row
from .test_webhook_replicas import front_door_up

pytestmark = pytest.mark.sandbox
INJECT = "podgate.dev/pod-readiness-gate-inject"
PROM_PORT = 19191
METRICS_PORT = 19192
TCP_PORT = 15641  # no container declares it: only the test listens there
OTHER_REQUESTS = "requests other than Prometheus's scrapes"  # metrics_target's count


def check(name: str, app: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "podgate.dev/v1alpha1",
        "kind": "ReadinessCheck",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": app}}, "periodSeconds": 1, **spec},
    }


def deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {"name": "app", "image": "nginx", "ports": [{"name": "http", "containerPort": 8080}]}
                    ]
                },
            },
        },
    }


def the_pod(sandbox: SandboxHandle, ns: str, app: str) -> dict[str, Any] | None:
    items = [
        p
        for p in sandbox.get("pods", "-n", ns, "-l", f"app={app}")["items"]
        if not p["metadata"].get("deletionTimestamp")
    ]
    return items[0] if len(items) == 1 else None


def gate_state(sandbox: SandboxHandle, ns: str, app: str, gate: str) -> tuple[str, str, str] | None:
    pod = the_pod(sandbox, ns, app)
    c = condition(pod, gate) if pod else None
    return (c["status"], c.get("reason", ""), c.get("message", "")) if c else None


def test_http_check_passes_and_fails(sandbox: SandboxHandle, namespace: str) -> None:
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    sandbox.apply(
        check("warm", "good", httpGet={"path": "/healthz", "port": "http"}, successThreshold=2), namespace
    )
    sandbox.apply(
        check("strict", "bad", httpGet={"path": "/healthz", "port": 8080, "expectedStatuses": [204]}),
        namespace,
    )
    sandbox.apply(deployment("good"), namespace)
    sandbox.apply(deployment("bad"), namespace)
    # first the pod: on 1.37 the ReplicaSet controller may retry its first sync ("read version
    # ... is not as new as written version", logged in a clean-clone run in which the good pod
    # had no gate condition 20 s after its Deployment); the check's clock starts with the pod
    wait_for("the good pod", lambda: the_pod(sandbox, namespace, "good"), 30)
    good = wait_for(
        "the passing check",
        lambda: (
            (s := gate_state(sandbox, namespace, "good", "check.podgate.dev/warm")) and s[0] == "True" and s
        ),
        20,
    )
    assert good[1] == "CheckPassed" and good[2].endswith("/healthz returned 200")
    pod = wait_for(
        "Ready",
        lambda: (
            (p := the_pod(sandbox, namespace, "good"))
            and (condition(p, "Ready") or {}).get("status") == "True"
            and p
        ),
    )
    assert [g["conditionType"] for g in pod["spec"]["readinessGates"]] == ["check.podgate.dev/warm"]

    bad = wait_for(
        "the failing check", lambda: gate_state(sandbox, namespace, "bad", "check.podgate.dev/strict"), 20
    )
    assert bad[:2] == ("False", "CheckFailing")
    assert "returned 200, expected 204" in bad[2]
    # two more runs of the check since: still failing, the gate still False, the pod not Ready
    checked_after(f"{namespace}/strict")
    assert (gate_state(sandbox, namespace, "bad", "check.podgate.dev/strict") or ("",))[0] == "False"
    assert (condition(the_pod(sandbox, namespace, "bad") or {}, "Ready") or {}).get("status") == "False"
    status = wait_for(
        "the check's status counting the pod",
        lambda: (
            (s := sandbox.get("readinesscheck", "strict", "-n", namespace).get("status") or {})
            and s.get("passing", 0) + s.get("pending", 0) == 1
            and s
        ),
        10,
    )
    assert (status["passing"], status["pending"]) == (0, 1)
    assert status["conditions"][0]["type"] == "Usable" and status["conditions"][0]["status"] == "True"


def test_continuous_mode_follows_the_check(sandbox: SandboxHandle, namespace: str) -> None:
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    sandbox.apply(
        check(
            "live",
            "flip",
            mode="continuous",
            failureThreshold=2,
            httpGet={"path": "/healthz", "port": "http"},
        ),
        namespace,
    )
    sandbox.apply(deployment("flip"), namespace)
    wait_for(
        "True",
        lambda: (gate_state(sandbox, namespace, "flip", "check.podgate.dev/live") or ("",))[0] == "True",
        20,
    )
    ip = (the_pod(sandbox, namespace, "flip") or {})["status"]["podIP"]
    urllib.request.urlopen(
        urllib.request.Request(f"http://{ip}:8080/control/health?status=503", method="POST"), timeout=2
    ).read()
    state = wait_for(
        "back to False",
        lambda: (
            (s := gate_state(sandbox, namespace, "flip", "check.podgate.dev/live")) and s[0] == "False" and s
        ),
        15,
    )
    assert state[1] == "CheckFailing" and "returned 503" in state[2]
    wait_for(
        "NotReady",
        lambda: (
            (condition(the_pod(sandbox, namespace, "flip") or {}, "Ready") or {}).get("status") == "False"
        ),
    )


def test_tcp_check_waits_for_the_port(sandbox: SandboxHandle, namespace: str) -> None:
    """A tcpSocket check holds the pod while nothing accepts on the port and lets it go once
    something does: here the test itself starts listening on the pod's address."""
    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    sandbox.apply(check("port", "tcp", tcpSocket={"port": TCP_PORT}), namespace)
    sandbox.apply(deployment("tcp"), namespace)
    gate = "check.podgate.dev/port"

    def gate_is(status: str) -> tuple[str, str, str] | None:
        s = gate_state(sandbox, namespace, "tcp", gate)
        return s if s and s[0] == status else None

    failing = wait_for("the check failing", lambda: gate_is("False"), 20)
    pod = the_pod(sandbox, namespace, "tcp")
    assert pod is not None
    ip, name = pod["status"]["podIP"], pod["metadata"]["name"]
    assert [g["conditionType"] for g in pod["spec"]["readinessGates"]] == [gate]
    assert failing[1] == "CheckFailing"
    assert failing[2].startswith("ConnectionRefusedError") and f"'{ip}', {TCP_PORT}" in failing[2], failing
    checked_after(f"{namespace}/port")  # two more runs since: still refused, still held
    assert gate_is("False"), gate_state(sandbox, namespace, "tcp", gate)
    row = wide_row(sandbox, namespace, name)
    assert (row["READY"], row["READINESS GATES"]) == ("1/1", "0/1"), row
    assert (condition(the_pod(sandbox, namespace, "tcp") or {}, "Ready") or {}).get("status") == "False"

    with socket.create_server((ip, TCP_PORT)):  # the kernel accepts: enough for a connect
        passed = wait_for("the check passing once the port accepts", lambda: gate_is("True"), 15)
        assert passed[1:] == ("CheckPassed", f"TCP connect to {ip}:{TCP_PORT} succeeded")
        wait_for(
            "Ready",
            lambda: (
                (condition(the_pod(sandbox, namespace, "tcp") or {}, "Ready") or {}).get("status") == "True"
            ),
        )
        assert wide_row(sandbox, namespace, name)["READINESS GATES"] == "1/1"


def test_gate_naming_a_missing_check(sandbox: SandboxHandle, namespace: str) -> None:
    dep = deployment("orphan")
    dep["spec"]["template"]["spec"]["readinessGates"] = [{"conditionType": "check.podgate.dev/ghost"}]
    sandbox.apply(dep, namespace)
    state = wait_for(
        "the condition", lambda: gate_state(sandbox, namespace, "orphan", "check.podgate.dev/ghost"), 20
    )
    assert state == ("False", "CheckNotFound", f"ReadinessCheck {namespace}/ghost does not exist")


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (
            {"selector": {"matchLabels": {"app": "x"}}},
            "must validate one and only one schema (oneOf). Found none",
        ),
        (
            {"selector": {"matchLabels": {"app": "x"}}, "tcpSocket": {"port": 80}, "httpGet": {"port": 80}},
            "must validate one and only one schema (oneOf). Found 2 valid alternatives",
        ),
        ({"selector": {}, "tcpSocket": {"port": 80}, "periodSeconds": 0}, "spec.periodSeconds"),
        (
            {
                "selector": {},
                "prometheus": {"url": "http://p:9090", "query": "up", "value": 1, "operator": "~"},
            },
            "spec.prometheus.operator",
        ),
        ({"selector": {}, "httpGet": {"port": 80, "path": "healthz"}}, "spec.httpGet.path"),
        ({"tcpSocket": {"port": 80}}, "spec.selector: Required value"),
    ],
)
def test_invalid_specs_are_rejected_by_the_api_server(
    sandbox: SandboxHandle, namespace: str, spec: dict[str, Any], error: str
) -> None:
    body = {
        "apiVersion": "podgate.dev/v1alpha1",
        "kind": "ReadinessCheck",
        "metadata": {"name": "nope"},
        "spec": spec,
    }
    import json

    # --validate=false: the API server itself must refuse it, not only kubectl's client-side check
    out = sandbox.kubectl(
        "apply", "--validate=false", "-n", namespace, "-f", "-", input=json.dumps(body), check=False
    )
    assert "is invalid" in out and error in out, out


@pytest.fixture
async def metrics_target() -> AsyncIterator[dict[str, float]]:
    """A scrape target the test controls: ``warm{pod="..."}`` gauges."""
    values: dict[str, float] = {}

    async def metrics(_: web.Request) -> web.Response:
        lines = [f'warm{{pod="{pod}"}} {value}' for pod, value in values.items() if pod != OTHER_REQUESTS]
        return web.Response(text="# TYPE warm gauge\n" + "\n".join(lines) + "\n")

    async def other(_: web.Request) -> web.Response:
        values[OTHER_REQUESTS] = values.get(OTHER_REQUESTS, 0) + 1
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", other)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", METRICS_PORT).start()
    yield values
    await runner.cleanup()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    """Debian's Prometheus on loopback, scraping the test's target every second."""
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n  - job_name: test\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{METRICS_PORT}']}}]\n"
    )
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{PROM_PORT}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{PROM_PORT}"
    try:
        wait_for("Prometheus ready", lambda: _ok(f"{url}/-/ready"), 30)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


async def test_prometheus_check(
    sandbox: SandboxHandle, namespace: str, prometheus: str, metrics_target: dict[str, float]
) -> None:
    """The administrator allows this Prometheus (``--prometheus-allow``); a check naming another
    server on the same host is refused with its reason, and that server gets no request."""
    import asyncio

    sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
    log = f"prometheus-allow-{namespace}.log"
    with controller_replaced(sandbox, "--prometheus-allow", prometheus, env={}, log=log):
        await asyncio.to_thread(wait_for, "the webhook front door", front_door_up, 30)
        await _prometheus_check(sandbox, namespace, prometheus, metrics_target)


async def _prometheus_check(
    sandbox: SandboxHandle, namespace: str, prometheus: str, metrics_target: dict[str, float]
) -> None:
    import asyncio

    sandbox.apply(
        check(
            "metric",
            "prom",
            mode="continuous",
            failureThreshold=1,
            prometheus={"url": prometheus, "query": 'warm{pod="{{pod}}"}', "operator": ">", "value": 0.5},
        ),
        namespace,
    )
    # the test's metrics target speaks HTTP on loopback too, but is not on the allowlist
    elsewhere = f"http://127.0.0.1:{METRICS_PORT}"
    sandbox.apply(
        check("elsewhere", "prom", prometheus={"url": elsewhere, "query": "up", "operator": ">", "value": 0}),
        namespace,
    )
    sandbox.apply(deployment("prom"), namespace)
    pod = await asyncio.to_thread(wait_for, "the pod", lambda: the_pod(sandbox, namespace, "prom"), 20)
    name = pod["metadata"]["name"]
    # A gate is written when its status or reason changes (not for new words alone), so each
    # verdict is read at a transition: passing on 0.9, then failing on 0.2.
    metrics_target[name] = 0.9
    state = await asyncio.to_thread(
        wait_for,
        "the check passing on 0.9",
        lambda: (
            (s := gate_state(sandbox, namespace, "prom", "check.podgate.dev/metric")) and s[0] == "True" and s
        ),
        30,
    )
    assert state[1] == "CheckPassed" and "returned 0.9" in state[2]
    metrics_target[name] = 0.2
    state = await asyncio.to_thread(
        wait_for,
        "the check failing on 0.2",
        lambda: (
            (s := gate_state(sandbox, namespace, "prom", "check.podgate.dev/metric"))
            and s[0] == "False"
            and s
        ),
        30,
    )
    assert state[:2] == ("False", "CheckFailing")
    assert f'query `warm{{pod="{name}"}}` returned 0.2, needs > 0.5' == state[2]
    refused = gate_state(sandbox, namespace, "prom", "check.podgate.dev/elsewhere")
    assert refused is not None and refused[:2] == ("False", "URLNotAllowed"), refused
    assert (
        f"spec.prometheus.url '{elsewhere}' is not allowed by the controller's --prometheus-allow"
        in refused[2]
    )
    assert metrics_target.get(OTHER_REQUESTS, 0) == 0, "no request to a URL the allowlist refuses"
    events = sandbox.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=elsewhere", "-o", "name"
    )
    assert events.strip(), "a Warning Event on the refused ReadinessCheck"
