"""The drain endpoint (podgate.webhook.drain) on FakeKube and FakeProvider: a preStop hook is
answered once the load balancer has drained the pod, or when the pod's drain budget passes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from podgate.kube.api import PODS, SERVICES
from podgate.model import gates
from podgate.model.lb import Health, PoolSpec, Target, pools_for
from podgate.providers.base import ProviderError, TargetState
from podgate.providers.fake import FakeProvider
from podgate.providers.haproxy import HAProxyProvider, combine
from podgate.webhook.drain import ROUTE, DrainEndpoint
from tests.unit.haproxy_cli import SERVERS_STATE_HEADER, STAT_HEADER, cli, one_server
from tests.unit.world import NS, World, pod, service

TARGET = Target("10.0.0.1", 8080)


def draining_pod(name: str = "p1", ip: str = "10.0.0.1", token: str = "tok-p1", grace: int = 30) -> Any:
    p = pod(name, ip=ip, terminating=True)
    p["metadata"]["annotations"] = {gates.DRAIN_TOKEN_ANNOTATION: token}
    p["metadata"]["deletionGracePeriodSeconds"] = grace
    return p


async def world_with(
    *pods: Any, provider: FakeProvider | None = None
) -> tuple[World, DrainEndpoint, list[str]]:
    """A Service whose pods are registered (and healthy), then the given pods as they are now."""
    world = World(provider)
    world.add(SERVICES, service())
    for p in pods:
        live = {**p, "metadata": {k: v for k, v in p["metadata"].items() if k != "deletionTimestamp"}}
        world.add(PODS, live)
    await world.reconcile()  # registers the targets
    for p in pods:
        world.kube.add(PODS, p)
    await world.sync()
    seen: list[str] = []
    endpoint = DrainEndpoint(
        world.kube,
        world.pods,
        world.services,
        world.reconciler.providers,
        "fake",
        world.recorder,
        observe=lambda result, seconds: seen.append(result),
        poll=0.02,
    )
    return world, endpoint, seen


async def test_a_target_in_rotation_is_drained_by_the_call_and_answered_once_idle() -> None:
    world, endpoint, _ = await world_with(draining_pod())
    outcome = await endpoint.drain_token(NS, "tok-p1")
    assert outcome.result == "drained" and outcome.targets == [str(TARGET)]
    assert ("drain", f"{NS}/web", (str(TARGET),)) in world.provider.calls
    assert world.provider.pools[(f"{NS}/web", 80)][TARGET].admin == "drain"


async def test_the_answer_waits_for_connections_in_flight() -> None:
    world, endpoint, _ = await world_with(draining_pod())
    world.provider.sessions[TARGET] = 2

    async def finish() -> None:
        await asyncio.sleep(0.3)
        world.provider.sessions[TARGET] = 0

    started = time.monotonic()
    finishing = asyncio.create_task(finish())
    outcome = await endpoint.drain_token(NS, "tok-p1")
    await finishing
    assert outcome.result == "drained"
    assert 0.3 <= time.monotonic() - started < 1.0


async def test_a_provider_that_counts_no_connections_is_drained_when_the_target_has_left() -> None:
    """ELB drops a target when its draining ends; podgate removes Alibaba's weight-0 backends."""
    world, endpoint, _ = await world_with(draining_pod(), provider=FakeProvider(drained_when_removed=True))
    pool = pools_for(world.services.cache[f"{NS}/web"])[0]

    async def leave() -> None:
        await asyncio.sleep(0.3)
        await world.provider.deregister(pool, [TARGET])

    leaving = asyncio.create_task(leave())
    outcome = await endpoint.drain_token(NS, "tok-p1")
    await leaving
    assert outcome.result == "drained" and outcome.waited >= 0.3


async def test_the_budget_passing_answers_anyway_with_a_warning_event() -> None:
    world, endpoint, _ = await world_with(draining_pod(grace=3))  # budget: 3 - 2 = 1 s
    world.provider.sessions[TARGET] = 1  # never finishes
    started = time.monotonic()
    outcome = await endpoint.drain_token(NS, "tok-p1")
    assert outcome.result == "timeout"
    assert 1.0 <= time.monotonic() - started < 1.5
    assert "1 connection(s)" in outcome.message and "3s grace period" in outcome.message
    assert ("Pod", "p1", "DrainTimedOut", "Warning") in world.recorder.events


async def test_a_pod_with_no_targets_is_answered_at_once() -> None:
    lonely = draining_pod()
    lonely["metadata"]["labels"] = {"app": "batch"}
    _, endpoint, _ = await world_with(lonely)
    outcome = await endpoint.drain_token(NS, "tok-p1")
    assert outcome.result == "no_targets"


async def test_a_pod_the_cache_does_not_show_terminating_yet_is_read_from_the_api() -> None:
    """The kubelet saw the deletion before this replica's watch did."""
    p = draining_pod()
    world, endpoint, _ = await world_with(p)
    stale = {**p, "metadata": {k: v for k, v in p["metadata"].items() if k != "deletionTimestamp"}}
    world.pods.cache[f"{NS}/p1"] = stale
    assert (await endpoint.drain_token(NS, "tok-p1")).result == "drained"


async def test_a_container_restart_drains_nothing() -> None:
    """preStop also runs before a liveness restart: the pod stays, and so does its target."""
    p = draining_pod()
    del p["metadata"]["deletionTimestamp"]
    world, endpoint, _ = await world_with(p)
    outcome = await endpoint.drain_token(NS, "tok-p1")
    assert outcome.result == "not_terminating"
    assert not any(call[0] == "drain" for call in world.provider.calls)


async def test_load_balancer_errors_are_retried_until_the_budget() -> None:
    world, endpoint, _ = await world_with(draining_pod())
    world.provider.fail("targets", ProviderError("socket busy"), times=3)
    outcome = await endpoint.drain_token(NS, "tok-p1")
    assert outcome.result == "drained"


async def test_many_hooks_of_one_service_share_their_reads() -> None:
    pods = [draining_pod(f"p{i}", f"10.0.0.{i}", f"tok-p{i}") for i in range(1, 5)]
    world, endpoint, _ = await world_with(*pods)
    for i in range(1, 5):
        world.provider.sessions[Target(f"10.0.0.{i}", 8080)] = 1
    before = sum(1 for c in world.provider.calls if c[0] == "targets")

    async def finish() -> None:
        await asyncio.sleep(0.5)
        world.provider.sessions.clear()

    finishing = asyncio.create_task(finish())
    outcomes = await asyncio.gather(*(endpoint.drain_token(NS, f"tok-p{i}") for i in range(1, 5)))
    await finishing
    assert {o.result for o in outcomes} == {"drained"}
    reads = sum(1 for c in world.provider.calls if c[0] == "targets") - before
    # four hooks polling every 0.02 s for 0.5 s would make about 100 reads alone
    assert reads < 60, reads


async def test_the_route_answers_the_kubelets_double_slash_and_unknown_tokens() -> None:
    _, endpoint, seen = await world_with(draining_pod())
    app = web.Application()
    app.router.add_get(ROUTE, endpoint.handle)
    async with TestClient(TestServer(app)) as client:
        # what kubelets before 1.25 send: "http://HOST:PORT/" + path (no client library sends it)
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(f"GET //drain/{NS}/tok-p1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = (await reader.read()).decode()
        writer.close()
        assert answer.startswith("HTTP/1.1 200") and "drained: " in answer
        async with client.get(f"/drain/{NS}/nobody") as r:
            assert r.status == 404
    assert seen == ["drained", "unknown_pod"]


async def test_podgate_down_means_the_hook_fails_and_the_pod_goes_on() -> None:
    """What the kubelet meets when no replica answers: a refused connection, no wait at all (it
    records FailedPreStopHook and sends SIGTERM).  Shown against a port nothing listens on."""
    import aiohttp

    with socket_nobody_listens_on() as port:
        started = time.monotonic()
        try:
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/drain/x/y"):
                raise AssertionError("something answered")
        except aiohttp.ClientConnectorError:
            pass
        assert time.monotonic() - started < 1.0


class socket_nobody_listens_on:
    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_the_budget_stays_below_the_grace_period() -> None:
    assert gates.drain_budget(30) == 25
    assert gates.drain_budget(10) == 7.5
    assert gates.drain_budget(4) == 2
    assert gates.drain_budget(1) == 0
    assert all(gates.drain_budget(g) <= g - 2 or gates.drain_budget(g) == 0 for g in range(0, 600))


def test_an_haproxy_pair_is_drained_only_when_both_are() -> None:
    from podgate.model.lb import TargetHealth

    h = TargetHealth(Health.DRAINING, "DRAIN")
    assert combine([TargetState("drain", h, 0, True), TargetState("drain", h, 0, True)]).drained
    assert not combine([TargetState("drain", h, 0, True), TargetState("drain", h, 3, False)]).drained


async def test_a_replica_that_did_not_provision_drains_through_the_runtime_api_only(tmp_path: Path) -> None:
    """A non-leader's provider never rendered the structure: the drain it makes for a hook must
    not rewrite the configuration file (it would drop every Service) nor the state files."""
    backend = "podgate.shop.web.80"
    state = {"status": "UP"}
    commands: list[str] = []

    def answer(line: str) -> str:
        if line.startswith("show stat"):
            row = f"{backend},podgate-10.0.0.1-8080,0,{state['status']},L7OK,,,10.0.0.1:8080\n"
            return STAT_HEADER + row
        if line.startswith("show servers state"):
            admin = 8 if state["status"] == "DRAIN" else 0  # SRV_ADMF_FDRAIN
            return SERVERS_STATE_HEADER + f"3 {backend} 1 podgate-10.0.0.1-8080 10.0.0.1 2 {admin}\n"
        if line.endswith("state drain"):
            state["status"] = "DRAIN"
        return ""

    sock = tmp_path / "runtime.sock"
    server = await asyncio.start_unix_server(cli(answer, commands), str(sock))
    config = tmp_path / "haproxy.cfg"
    config.write_text("# the leader's configuration\n")
    provider = HAProxyProvider([str(sock)], master_address=str(tmp_path / "master.sock"), config_path=config)
    pool = PoolSpec(NS, "web", 80, "", 8080, "TCP", pools_for(service())[0].health)
    try:
        await provider.drain(pool, [TARGET])
        states = await provider.targets(pool)
    finally:
        server.close()
    assert states[TARGET].admin == "drain" and states[TARGET].drained
    assert config.read_text() == "# the leader's configuration\n"
    assert not (tmp_path / "server-state").exists()
    assert commands[0].startswith("show ")  # only reads and the drain itself
    assert not any(c.startswith(("add server", "del server", "reload")) for c in commands)


def test_the_default_drain_url_is_the_webhook_services_health_port() -> None:
    from podgate.controller.manager import derived_drain_url
    from podgate.controller.settings import ControllerSettings

    svc = {
        "metadata": {"name": "podgate", "namespace": "podgate-system"},
        "spec": {
            "clusterIP": "10.96.0.12",
            "ports": [
                {"name": "webhook", "port": 443, "targetPort": "webhook"},
                {"name": "metrics", "port": 8081, "targetPort": "health"},
            ],
        },
    }
    settings = ControllerSettings(webhook_service="podgate-system/podgate")
    assert derived_drain_url(settings, {"podgate-system/podgate": svc}) == "http://10.96.0.12:8081"  # type: ignore[dict-item]
    assert derived_drain_url(settings, {}) is None
    assert derived_drain_url(ControllerSettings(), {"podgate-system/podgate": svc}) is None  # type: ignore[dict-item]


async def test_a_burst_of_drains_saves_each_backend_a_few_times_not_once_per_drain(tmp_path: Path) -> None:
    """The leader saves a backend's state after each change (a reload must restore it).  40
    drains at once, as a scale-down's preStop hooks make them, are taken together by a few
    saves instead of queueing 40 saves of the backend behind the provider's lock.  A drain
    does not wait for its save (hooks missed their budget queued behind saves): the saves
    follow within a moment, and the last holds every drain."""
    backend = "podgate.shop.web.80"
    targets = [Target(f"10.0.0.{i}", 8080) for i in range(1, 41)]
    drained: set[str] = set()
    commands: list[str] = []

    def answer(line: str) -> str:
        names = [f"podgate-{t.ip}-{t.port}" for t in targets]
        if line.startswith("show stat"):
            return STAT_HEADER + "".join(
                f"{backend},{n},0,{'DRAIN' if n in drained else 'UP'},L7OK,,,{t.ip}:{t.port}\n"
                for n, t in zip(names, targets, strict=True)
            )
        if line.startswith("show servers state"):
            return SERVERS_STATE_HEADER + "".join(
                f"3 {backend} {i} {n} {t.ip} 2 {8 if n in drained else 0}\n"
                for i, (n, t) in enumerate(zip(names, targets, strict=True))
            )
        if line.endswith("state drain"):
            drained.add(line.split("/")[1].split()[0])
        return ""

    handle = cli(answer, commands)

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.005)  # a loaded HAProxy's round trip
        await handle(reader, writer)

    sock = tmp_path / "runtime.sock"
    server = await asyncio.start_unix_server(slow, str(sock))
    config = tmp_path / "haproxy.cfg"
    provider = HAProxyProvider([str(sock)], master_address=str(tmp_path / "master.sock"), config_path=config)
    provider._initialised = True  # as after the leader's first structure (no master to reload here)
    pool = PoolSpec(NS, "web", 80, "", 8080, "TCP", pools_for(service())[0].health)
    try:
        await provider.runtimes[0].servers(backend)  # the backend's proxy id, looked up once
        commands.clear()
        async with asyncio.timeout(2):
            await asyncio.gather(*(provider.drain(pool, [t]) for t in targets))
        state = tmp_path / "server-state" / backend
        for _ in range(100):  # the saves follow
            if state.exists() and state.read_text().count(" 8\n") == 40 and provider._next_save is None:
                break
            await asyncio.sleep(0.02)
    finally:
        server.close()
    saves = [c for c in commands if c.startswith("show servers state")]
    assert len(drained) == 40
    assert 1 <= len(saves) <= 4, f"{len(saves)} saves for 40 drains"
    assert state.read_text().count(" 8\n") == 40, "the saves left a drain out"


async def test_a_target_left_without_health_checks_is_registered_again(tmp_path: Path) -> None:
    """Seen at 5,000 pods: HAProxy dropped "enable health" unanswered, then took "enable
    server", and the target served unchecked ("no check") while its gate waited forever.  It
    reads as not registered, so the plan registers it again: checks back on, held down until
    they pass."""
    backend = "podgate.shop.web.80"
    commands: list[str] = []

    sock = tmp_path / "runtime.sock"
    server = await asyncio.start_unix_server(
        cli(one_server(backend, {"status": "no check", "check": ""}), commands), str(sock)
    )
    provider = HAProxyProvider([str(sock)])
    pool = PoolSpec(NS, "web", 80, "", 8080, "TCP", pools_for(service())[0].health)
    try:
        (state,) = (await provider.targets(pool)).values()
        assert (state.admin, state.health.health) == ("maint", Health.UNREGISTERED)
        assert "registration incomplete" in state.health.detail
        commands.clear()
        await provider.register(pool, [TARGET])
    finally:
        server.close()
    ref = f"{backend}/podgate-10.0.0.1-8080"
    changes = [c for c in commands if not c.startswith("show ")]
    assert changes == [f"enable health {ref}", f"enable server {ref}", f"set server {ref} health down"]


async def test_a_load_balancer_slower_than_the_budget_is_a_timeout_not_a_late_drained() -> None:
    """At 5,000 pods the load balancer's answers came late and hooks answered "drained" 6 s
    into a 3 s budget, after the kubelet would have stopped the container: the answers count
    against the budget, and a drain not seen within it is a timeout, with its Warning event."""
    world, endpoint, _ = await world_with(draining_pod(grace=3))  # budget: 1 s
    fast = world.provider.targets

    async def slow(pool: PoolSpec) -> dict[Target, TargetState]:
        await asyncio.sleep(2.0)
        return await fast(pool)

    world.provider.targets = slow  # type: ignore[method-assign]
    started = time.monotonic()
    outcome = await endpoint.drain_token(NS, "tok-p1")
    assert outcome.result == "timeout"
    assert 1.0 <= time.monotonic() - started < 1.5
    assert "did not answer within the budget" in outcome.message
    assert ("Pod", "p1", "DrainTimedOut", "Warning") in world.recorder.events


async def test_reads_save_the_backend_when_a_server_changes_state_not_at_each_check(tmp_path: Path) -> None:
    """The leader saves a backend's state after a read that saw a server change state (UP,
    DOWN, DRAIN...), so a reload restores what gates were decided on.  A check's progress
    ("DOWN 1/3" → "DOWN 2/3") is no such change: saving it made every read of a backend in
    health checking a save, 50 Services' worth at 5,000 pods."""
    backend = "podgate.shop.web.80"
    state = {"status": "DOWN", "check": "L4CON"}
    commands: list[str] = []

    sock = tmp_path / "runtime.sock"
    server = await asyncio.start_unix_server(cli(one_server(backend, state), commands), str(sock))
    provider = HAProxyProvider(
        [str(sock)], master_address=str(tmp_path / "master.sock"), config_path=tmp_path / "haproxy.cfg"
    )
    provider._initialised = True  # the leader, after its first structure
    pool = PoolSpec(NS, "web", 80, "", 8080, "TCP", pools_for(service())[0].health)
    saves = []
    try:
        for status, check in [
            ("DOWN", "L4CON"),  # first read: saved
            ("DOWN", "L4OK"),
            ("DOWN 1/3", "L4OK"),
            ("DOWN 2/3", "L4OK"),
            ("UP", "L4OK"),  # saved: a gate opens on this
            ("UP", "L4OK"),
            ("UP 1/3", "L4CON"),
            ("DOWN", "L4CON"),  # saved
        ]:
            state.update(status=status, check=check)
            commands.clear()
            await provider.targets(pool)
            await asyncio.sleep(0.05)  # a save not waited for is done by now
            saves.append(sum(c.startswith("show servers state") for c in commands) > 1)
    finally:
        server.close()
    assert saves == [True, False, False, False, True, False, False, True]


async def test_registering_and_draining_many_targets_takes_a_connection_or_two_not_one_per_command(
    tmp_path: Path,
) -> None:
    """A connection per command was 100 connections to register 25 targets, queued behind the
    10 CLI slots while drain hooks waited for theirs (5,000 pods): changes go in one batch."""
    backend = "podgate.shop.web.80"
    targets = [Target(f"10.0.0.{i}", 8080) for i in range(1, 26)]
    servers: dict[str, str] = {}  # name → status
    commands: list[str] = []
    connections = 0

    def answer(line: str) -> str:
        verb, ref = " ".join(line.split()[:2]), line.split()[2] if len(line.split()) > 2 else ""
        name = ref.split("/")[-1]
        if line.startswith("show stat"):
            rows = "".join(
                f"{backend},{n},0,{st},L4OK,,,{n.split('-')[1]}:8080\n" for n, st in servers.items()
            )
            return STAT_HEADER + rows
        if line.startswith("show servers state"):
            rows = "".join(f"3 {backend} {i} {n} x 2 0\n" for i, n in enumerate(servers))
            return SERVERS_STATE_HEADER + rows
        if verb == "add server":
            servers[name] = "MAINT"
            return "New server registered."
        if name not in servers:
            return "No such server."
        if line.endswith("state drain"):
            servers[name] = "DRAIN"
        elif line.endswith("health down"):
            servers[name] = "DOWN"
        return ""

    handle = cli(answer, commands)

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await handle(reader, writer)

    sock = tmp_path / "runtime.sock"
    server = await asyncio.start_unix_server(counted, str(sock))
    provider = HAProxyProvider([str(sock)])  # attach-like: no files kept
    pool = PoolSpec(NS, "web", 80, "", 8080, "TCP", pools_for(service())[0].health)
    try:
        await provider.register(pool, targets)
        registered = connections
        await provider.targets(pool)  # the backend's proxy id, looked up once
        connections = 0
        await provider.drain(pool, [*targets[:10], Target("10.9.9.9", 8080)])  # one gone already
        drained, connections = connections, 0
        states = await provider.targets(pool)
        read = connections
    finally:
        server.close()
    assert len(servers) == 25 and registered <= 3, f"{registered} connections to register 25"
    assert drained <= 2, f"{drained} connections to drain 11"
    assert read == 1
    for t in targets:
        ref = f"{backend}/podgate-{t.ip}-8080"
        mine = [c for c in commands if c.endswith((ref, ref + " health down")) or f" {ref} " in c]
        assert [c.split()[0] + " " + c.split()[1] for c in mine[:4]] == [
            "add server",
            "enable health",
            "enable server",
            "set server",
        ], mine
    assert [t for t, st in states.items() if st.admin == "drain"] == targets[:10]


async def test_a_read_waits_for_the_save_only_when_a_gate_may_open_on_it(tmp_path: Path) -> None:
    """A server newly UP is saved before the read returns (a gate opens only on a state a
    reload restores); a drain seen by a read is saved in the background: drain hooks waited
    for two saves each at 5,000 pods and missed their budget."""
    backend = "podgate.shop.web.80"
    state = {"status": "DOWN", "admin": 0}

    sock = tmp_path / "runtime.sock"
    server = await asyncio.start_unix_server(cli(one_server(backend, state)), str(sock))
    provider = HAProxyProvider(
        [str(sock)], master_address=str(tmp_path / "master.sock"), config_path=tmp_path / "haproxy.cfg"
    )
    provider._initialised = True  # the leader, after its first structure
    pool = PoolSpec(NS, "web", 80, "", 8080, "TCP", pools_for(service())[0].health)
    release = asyncio.Event()
    saves: list[str] = []
    real_save = provider._save_state

    async def held_save(be: str) -> None:
        await release.wait()
        await real_save(be)
        saves.append(state["status"])

    provider._save_state = held_save  # type: ignore[method-assign]
    try:
        release.set()
        await provider.targets(pool)  # the first view: saved (nothing UP: in the background)
        await asyncio.sleep(0.05)
        release.clear()
        state.update(status="UP")
        read = asyncio.ensure_future(provider.targets(pool))
        await asyncio.sleep(0.1)
        assert not read.done()  # newly UP: the read waits for its save
        release.set()
        await read
        assert saves == ["DOWN", "UP"]
        release.clear()
        state.update(status="DRAIN", admin=8)
        async with asyncio.timeout(1):
            states = await provider.targets(pool)  # a drain: not waited for
        assert states[TARGET].admin == "drain" and saves == ["DOWN", "UP"]
        release.set()
        for _ in range(50):
            if len(saves) == 3:
                break
            await asyncio.sleep(0.01)
        assert saves == ["DOWN", "UP", "DRAIN"]  # saved soon after
        await provider.targets(pool)
        await asyncio.sleep(0.05)
        assert len(saves) == 3  # and not again: the view is known saved
    finally:
        server.close()


async def test_a_backend_released_before_its_save_is_dropped_not_retried_for_ever(tmp_path: Path) -> None:
    """A save not waited for may find its backend gone (the Service released, HAProxy
    reloaded): kept dirty, it would fail every later save, and every register waiting on one."""

    def answer(line: str) -> str:
        if line == "show servers state podgate.shop.gone.80":
            return "Can't find backend."
        return one_server("podgate.shop.web.80", {"status": "UP"})(line)

    sock = tmp_path / "runtime.sock"
    server = await asyncio.start_unix_server(cli(answer), str(sock))
    provider = HAProxyProvider(
        [str(sock)], master_address=str(tmp_path / "master.sock"), config_path=tmp_path / "haproxy.cfg"
    )
    provider._initialised = True
    try:
        provider._schedule_save("podgate.shop.gone.80", relist=False)
        await provider._persist("podgate.shop.web.80", relist=False)  # no error from the other
        await provider._persist("podgate.shop.web.80", relist=False)
    finally:
        server.close()
    assert provider._dirty == {}
    assert (tmp_path / "server-state" / "podgate.shop.web.80").exists()
