"""ReadinessCheck ``prometheus.url`` limited by the administrator's ``--prometheus-allow``: a
URL outside it, and a link-local or cloud metadata address ever, gets a clear gate reason and
Event and never a request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from podgate.app.build import build
from podgate.cli import controller_cmd
from podgate.controller.checks import READINESS_CHECKS, GuardedResolver
from podgate.controller.settings import ControllerSettings, SettingsError
from podgate.kube.api import NAMESPACES, PODS
from podgate.kube.fake import FakeKube
from podgate.model import checks as chk
from podgate.providers.fake import FakeProvider

from .world import NS, pod

ALLOW = [chk.parse_allowed(a) for a in ("http://prometheus.monitoring:9090", "thanos.example:10902")]


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://prometheus.monitoring:9090", None),
        ("http://prometheus.monitoring:9090/", None),
        ("http://PROMETHEUS.monitoring:9090", None),
        ("http://thanos.example:10902", None),
        ("https://thanos.example:10902/api", None),
        ("https://prometheus.monitoring:9090", "not allowed by the controller's --prometheus-allow"),
        ("http://prometheus.monitoring:9091", "not allowed"),
        ("http://prometheus.monitoring", "not allowed"),
        ("http://prometheus.monitoring.evil:9090", "not allowed"),
        ("http://prometheus.monitoring:9090@evil.example:9090", "carries credentials"),
        ("http://user:secret@prometheus.monitoring:9090", "carries credentials"),
        ("http://prometheus.monitoring:9090/?x=1", "has a query or fragment"),
        ("http://169.254.169.254", "link-local or cloud metadata address"),
        ("http://169.254.169.254:80/latest/meta-data", "link-local or cloud metadata address"),
        ("http://169.254.10.1:9090", "link-local or cloud metadata address"),
        ("http://[fd00:ec2::254]", "link-local or cloud metadata address"),
        ("http://[fe80::1]:9090", "link-local or cloud metadata address"),
        ("http://[::ffff:169.254.169.254]", "link-local or cloud metadata address"),
        ("http://100.100.100.200", "link-local or cloud metadata address"),
        ("http://2852039166", "link-local or cloud metadata address"),
        ("http://0xa9fea9fe", "link-local or cloud metadata address"),
        ("http://0251.0376.0251.0376", "link-local or cloud metadata address"),
        ("http://169.254.43518", "link-local or cloud metadata address"),
        ("http://metadata.google.internal", "link-local or cloud metadata address"),
        ("file:///etc/passwd", "not an http:// or https:// URL"),
        ("http://prometheus.monitoring:99999", "not a valid URL"),
    ],
)
def test_which_urls_a_check_may_query(url: str, refused: str | None) -> None:
    got = chk.prometheus_url_refusal(url, ALLOW)
    assert got is None if refused is None else (got is not None and refused in got), got


def test_a_path_prefix_admits_only_below_it() -> None:
    allow = [chk.parse_allowed("https://obs.example/prom")]
    assert chk.prometheus_url_refusal("https://obs.example/prom", allow) is None
    assert chk.prometheus_url_refusal("https://obs.example:443/prom/tenant-a", allow) is None
    assert chk.prometheus_url_refusal("https://obs.example/prometheus", allow) is not None
    assert "path segments" in (chk.prometheus_url_refusal("https://obs.example/prom/../admin", allow) or "")
    assert "path segments" in (chk.prometheus_url_refusal("https://obs.example/prom/%2e%2e/x", allow) or "")


def test_nothing_is_allowed_by_default() -> None:
    refused = chk.prometheus_url_refusal("http://prometheus.monitoring:9090", ())
    assert refused is not None and "nothing is allowed" in refused


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ("http://169.254.169.254", "never allowed"),
        ("169.254.169.254:80", "never allowed"),
        ("[fd00:ec2::254]:80", "never allowed"),
        ("metadata.google.internal:80", "never allowed"),
        ("prometheus", "give http(s)://HOST[:PORT][/PATH] or HOST:PORT"),
        ("ftp://x:21", "give http(s)://"),
        ("http://u:p@prometheus:9090", "no credentials"),
    ],
)
def test_an_allowlist_entry_is_checked_at_start(entry: str, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        chk.parse_allowed(entry)
    with pytest.raises(SettingsError, match=r"--prometheus-allow.*never a link-local or metadata address"):
        controller_cmd.controller_settings(
            ["--haproxy-runtime-socket", "127.0.0.1:9999", "--prometheus-allow", entry], {}
        )


def test_the_setting_is_a_flag_or_a_variable() -> None:
    settings = controller_cmd.controller_settings(
        ["--haproxy-runtime-socket", "127.0.0.1:9999"],
        {"PODGATE_PROMETHEUS_ALLOW": "http://prometheus.monitoring:9090,thanos:10902"},
    )
    assert settings.prometheus_allow == ("http://prometheus.monitoring:9090", "thanos:10902")


async def test_a_name_resolving_to_a_metadata_address_is_not_dialled() -> None:
    class Answers:
        async def resolve(self, host: str, port: int, family: Any) -> list[dict[str, Any]]:
            return [{"hostname": host, "host": "169.254.169.254", "port": port}]

        async def close(self) -> None:
            pass

    resolver = GuardedResolver()
    resolver._inner = Answers()  # type: ignore[assignment]  # the system resolver's answer, scripted
    with pytest.raises(OSError, match="link-local or cloud metadata"):
        await resolver.resolve("prometheus.monitoring", 9090)
    await resolver.close()


# -- the controller as built -------------------------------------------------------------------
def check(name: str, url: str) -> dict[str, Any]:
    return {
        "apiVersion": "podgate.dev/v1alpha1",
        "kind": "ReadinessCheck",
        "metadata": {"name": name, "namespace": NS, "generation": 1},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "periodSeconds": 1,
            "prometheus": {"url": url, "query": "up", "operator": ">=", "value": 1},
        },
    }


async def until(done: Callable[[], object], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_refused_url_gets_its_reason_and_no_request_an_allowed_one_is_queried(tmp_path: Path) -> None:
    hits: list[str] = []

    async def query(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"status": "success", "data": {"resultType": "scalar", "result": [0, "1"]}})

    app_ = web.Application()
    app_.router.add_get("/{tail:.*}", query)
    runner = web.AppRunner(app_)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    allowed, refused = f"http://127.0.0.1:{port}/allowed", f"http://127.0.0.1:{port}/other"

    kube = FakeKube()
    kube.add(NAMESPACES, {"metadata": {"name": NS}})
    p = pod("p1", gate_for=None)
    p["spec"]["readinessGates"] = [
        {"conditionType": chk.check_gate("ok")},
        {"conditionType": chk.check_gate("no")},
        {"conditionType": chk.check_gate("meta")},
    ]
    kube.add(PODS, p)
    kube.add(READINESS_CHECKS, check("ok", allowed))
    kube.add(READINESS_CHECKS, check("no", refused))
    kube.add(READINESS_CHECKS, check("meta", "http://169.254.169.254"))
    settings = ControllerSettings(
        default_provider="fake",
        health_bind="127.0.0.1",
        health_port=0,
        drain_bind="127.0.0.1",
        drain_port=0,
        webhook_bind="127.0.0.1",
        webhook_port=0,
        webhook_cert_dir=tmp_path,
        poll_period=0.02,
        prometheus_allow=(allowed,),
    )
    app = build(settings, kube, {"fake": FakeProvider().provider()})
    assert app.supervisor is not None
    run = asyncio.create_task(app.supervisor.run())

    def gate(name: str) -> dict[str, Any]:
        conds = (kube.object(PODS, "p1", NS) or {})["status"].get("conditions", ())
        return next((c for c in conds if c["type"] == chk.check_gate(name)), {})

    def usable(name: str) -> dict[str, Any]:
        obj = kube.object(READINESS_CHECKS, name, NS) or {}
        return next(iter((obj.get("status") or {}).get("conditions") or ()), {})

    try:
        await until(
            lambda: gate("ok").get("status") == "True" and gate("no") and gate("meta") and usable("meta")
        )
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await app.close()
        await runner.cleanup()
    assert hits and set(hits) == {"/allowed/api/v1/query"}
    assert gate("no")["status"] == "False" and gate("no")["reason"] == "URLNotAllowed"
    assert f"ReadinessCheck {NS}/no: spec.prometheus.url '{refused}' is not allowed" in gate("no")["message"]
    assert gate("meta")["reason"] == "URLNotAllowed" and "metadata address" in gate("meta")["message"]
    assert usable("no")["reason"] == "URLNotAllowed" and usable("ok")["status"] == "True"
    events = [w.body for w in kube.writes if w.resource == "events"]
    assert any(e.get("reason") == "URLNotAllowed" and e["involvedObject"]["name"] == "meta" for e in events)
