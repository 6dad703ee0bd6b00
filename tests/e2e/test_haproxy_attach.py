"""Attach mode against a real HA pair: two HAProxy processes with the user's own backend."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from podgate.model.lb import HAPROXY_BACKEND, GroupRef, Health, HealthCheck, PoolSpec, Target, gate_condition
from podgate.model.types import Condition
from podgate.providers.base import ProviderError, TargetPool
from podgate.providers.haproxy import HAProxyProvider
from podgate.providers.haproxy_runtime import Runtime

TARGET_IP = "127.77.0.10"
GATE = "service.readiness.podgate.dev/web"


@pytest.fixture(params=["fe", "app"], ids=["frontend-fe", "frontend-named-as-its-backend"])
def pair(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Two HAProxies with the user's backend ``app``; their frontend is named ``fe``, or ``app``
    as users often name it (found on the real node: ``show stat app`` then reads the frontend,
    and podgate saw no servers and added the same ones again and again)."""
    frontend = request.param
    procs, sockets = [], []
    for i in range(2):
        sock = tmp_path / f"rt{i}.sock"
        cfg = tmp_path / f"h{i}.cfg"
        cfg.write_text(
            f"global\n    stats socket {sock} mode 600 level admin\n"
            "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n"
            f"frontend {frontend}\n    bind 127.77.0.{i + 1}:18080\n    default_backend app\n"
            "backend app\n    balance roundrobin\n    option httpchk GET /healthz\n"
            "    server users-own 127.77.0.99:8080 check\n"
        )
        procs.append(
            subprocess.Popen(
                ["haproxy", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        sockets.append(str(sock))
    for sock in sockets:
        for _ in range(100):
            if Path(sock).exists():
                break
            subprocess.run(["sleep", "0.05"], check=True)
    yield sockets
    for p in procs:
        p.terminate()
        p.wait(5)


@pytest.fixture
async def app_server() -> AsyncIterator[None]:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, TARGET_IP, 8080).start()
    yield
    await runner.cleanup()


POOL = PoolSpec(
    "shop",
    "web",
    80,
    "",
    8080,
    "TCP",
    HealthCheck("/healthz", 0.2, 2, 2),
    group=GroupRef(HAPROXY_BACKEND, "app"),
)


async def wait_health(pool: TargetPool, want: Health) -> Health:
    got = None
    for _ in range(60):
        states = await pool.targets(POOL)
        got = states[Target(TARGET_IP, 8080)].health.health if states else None
        if got is want:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"health stayed {got}, wanted {want}")


async def test_ha_pair_attach(pair: list[str], app_server: None) -> None:
    haproxy = HAProxyProvider(pair).provider()  # the controller's record of it
    pool, provisioning = haproxy.pool, haproxy.provisioning
    assert provisioning is not None
    assert await provisioning.provision("shop/web", [POOL], None) is None  # attach: no address of ours
    missing = PoolSpec(
        "shop", "web", 80, "", 8080, "TCP", HealthCheck(), group=GroupRef(HAPROXY_BACKEND, "nope")
    )
    with pytest.raises(ProviderError, match="no backend 'nope'"):
        await provisioning.provision("shop/web", [missing], None)

    target = Target(TARGET_IP, 8080)
    await pool.register(POOL, [target])
    # The pod's gate, read after read, as the controller writes it from the pair's answer: False
    # while both HAProxies hold the new server DOWN (checks not passed `rise` times yet), then True.
    story: list[Condition] = []
    while len(story) < 60 and not (story and story[-1]["status"] == "True"):
        if story:
            await asyncio.sleep(0.05)
        story.append(gate_condition(GATE, [(await pool.targets(POOL))[target].health]))
    first, last = story[0], story[-1]
    assert (first["status"], first["reason"]) == ("False", "InitialHealthChecking"), story
    assert "is DOWN" in (first.get("message") or ""), first
    assert (last["status"], last["reason"]) == ("True", "TargetHealthy"), story
    assert "is UP" in (last.get("message") or ""), last
    assert {c["reason"] for c in story[:-1]} == {"InitialHealthChecking"}, story
    # The user's own server is neither reported as ours nor touched.
    assert set(await pool.targets(POOL)) == {target}

    # One HAProxy of the pair drains it: the pair as a whole no longer calls it healthy.
    assert await Runtime(pair[1]).drain_servers("app", ["podgate-127.77.0.10-8080"]) == []
    assert await wait_health(pool, Health.DRAINING) is Health.DRAINING
    # Registering again takes it back into rotation on both.
    await pool.register(POOL, [target])
    assert await wait_health(pool, Health.HEALTHY) is Health.HEALTHY

    await pool.deregister(POOL, [target])
    for sock in pair:
        names = [s.name for s in await Runtime(sock).servers("app")]
        assert names == ["users-own"]


async def test_a_burst_of_commands_is_answered_every_one(pair: list[str]) -> None:
    """HAProxy's stats socket takes about 20 connections at once and drops the others
    unanswered (79 of 100 lost, measured before podgate limited itself): podgate keeps at most
    ``CONNECTIONS`` open to one HAProxy, and every command of a burst is answered."""
    rt = Runtime(pair[0])
    answers = await asyncio.gather(*(rt.servers("app") for _ in range(100)), return_exceptions=True)
    assert [a for a in answers if isinstance(a, BaseException)] == []
    assert all([s.name for s in a] == ["users-own"] for a in answers if not isinstance(a, BaseException))
