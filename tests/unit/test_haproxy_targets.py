"""HAProxy's targets (``haproxy_targets``): the TargetPool over the runtime API of one HAProxy or a
pair.  Batching and the commands sent are checked on the stand-in socket (``haproxy_cli``), the
pair policy and attach mode's slots on the in-memory HAProxy (``haproxy_fake``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from podgate.model.lb import HAPROXY_BACKEND, GroupRef, Health, HealthCheck, PoolSpec, Target, TargetHealth
from podgate.providers.base import ProviderError, TargetState
from podgate.providers.haproxy import HAProxyProvider
from podgate.providers.haproxy_fake import FakeRuntime, FakeServer
from podgate.providers.haproxy_runtime import Unreachable
from podgate.providers.haproxy_targets import HAPair, HAProxyTargets, combine
from tests.unit.haproxy_cli import SERVERS_STATE_HEADER, STAT_HEADER, cli, one_server

BACKEND = "podgate.shop.web.80"
POOL = PoolSpec("shop", "web", 80, "", 8080, "TCP", HealthCheck(None, 1.0, 3, 3))
TARGET = Target("10.0.0.1", 8080)


def test_an_haproxy_pair_is_drained_only_when_both_are() -> None:
    h = TargetHealth(Health.DRAINING, "DRAIN")
    assert combine([TargetState("drain", h, 0, True), TargetState("drain", h, 0, True)]).drained
    assert not combine([TargetState("drain", h, 0, True), TargetState("drain", h, 3, False)]).drained


async def test_a_replica_that_did_not_provision_drains_through_the_runtime_api_only(tmp_path: Path) -> None:
    """A non-leader's provider never rendered the structure: the drain it makes for a hook must
    not rewrite the configuration file (it would drop every Service) nor the state files."""
    state = {"status": "UP"}
    commands: list[str] = []

    def answer(line: str) -> str:
        if line.startswith("show stat"):
            row = f"{BACKEND},podgate-10.0.0.1-8080,0,{state['status']},L7OK,,,10.0.0.1:8080\n"
            return STAT_HEADER + row
        if line.startswith("show servers state"):
            admin = 8 if state["status"] == "DRAIN" else 0  # SRV_ADMF_FDRAIN
            return SERVERS_STATE_HEADER + f"3 {BACKEND} 1 podgate-10.0.0.1-8080 10.0.0.1 2 {admin}\n"
        if line.endswith("state drain"):
            state["status"] = "DRAIN"
        return ""

    sock = tmp_path / "runtime.sock"
    server = await asyncio.start_unix_server(cli(answer, commands), str(sock))
    config = tmp_path / "haproxy.cfg"
    config.write_text("# the leader's configuration\n")
    pool = HAProxyProvider([str(sock)], master_address=str(tmp_path / "master.sock"), config_path=config).pool
    try:
        await pool.drain(POOL, [TARGET])
        states = await pool.targets(POOL)
    finally:
        server.close()
    assert states[TARGET].admin == "drain" and states[TARGET].drained
    assert config.read_text() == "# the leader's configuration\n"
    assert not (tmp_path / "server-state").exists()
    assert commands[0].startswith("show ")  # only reads and the drain itself
    assert not any(c.startswith(("add server", "del server", "reload")) for c in commands)


async def test_a_target_left_without_health_checks_is_registered_again(tmp_path: Path) -> None:
    """HAProxy under load dropped "enable health" unanswered, then took "enable server", and
    the target served unchecked ("no check") while its gate waited forever.  It reads as not
    registered, so the plan registers it again: checks back on, held down until they pass."""
    commands: list[str] = []
    sock = tmp_path / "runtime.sock"
    server = await asyncio.start_unix_server(
        cli(one_server(BACKEND, {"status": "no check", "check": ""}), commands), str(sock)
    )
    pool = HAProxyProvider([str(sock)]).pool
    try:
        (state,) = (await pool.targets(POOL)).values()
        assert (state.admin, state.health.health) == ("maint", Health.UNREGISTERED)
        assert "registration incomplete" in state.health.detail
        commands.clear()
        await pool.register(POOL, [TARGET])
    finally:
        server.close()
    ref = f"{BACKEND}/podgate-10.0.0.1-8080"
    changes = [c for c in commands if not c.startswith("show ")]
    assert changes == [f"enable health {ref}", f"enable server {ref}", f"set server {ref} health down"]


async def test_registering_and_draining_many_targets_takes_a_connection_or_two_not_one_per_command(
    tmp_path: Path,
) -> None:
    """A connection per command was 100 connections to register 25 targets, queued behind the
    10 CLI slots while drain hooks waited for theirs: changes go in one batch."""
    targets = [Target(f"10.0.0.{i}", 8080) for i in range(1, 26)]
    servers: dict[str, str] = {}  # name → status
    commands: list[str] = []
    connections = 0

    def answer(line: str) -> str:
        verb, ref = " ".join(line.split()[:2]), line.split()[2] if len(line.split()) > 2 else ""
        name = ref.split("/")[-1]
        if line.startswith("show stat"):
            rows = "".join(
                f"{BACKEND},{n},0,{st},L4OK,,,{n.split('-')[1]}:8080\n" for n, st in servers.items()
            )
            return STAT_HEADER + rows
        if line.startswith("show servers state"):
            rows = "".join(f"3 {BACKEND} {i} {n} x 2 0\n" for i, n in enumerate(servers))
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
    pool = HAProxyProvider([str(sock)]).pool  # attach-like: no files kept
    try:
        await pool.register(POOL, targets)
        registered = connections
        await pool.targets(POOL)  # the backend's proxy id, looked up once
        connections = 0
        await pool.drain(POOL, [*targets[:10], Target("10.9.9.9", 8080)])  # one gone already
        drained, connections = connections, 0
        states = await pool.targets(POOL)
        read = connections
    finally:
        server.close()
    assert len(servers) == 25 and registered <= 3, f"{registered} connections to register 25"
    assert drained <= 2, f"{drained} connections to drain 11"
    assert read == 1
    for t in targets:
        ref = f"{BACKEND}/podgate-{t.ip}-8080"
        mine = [c for c in commands if c.endswith((ref, ref + " health down")) or f" {ref} " in c]
        assert [c.split()[0] + " " + c.split()[1] for c in mine[:4]] == [
            "add server",
            "enable health",
            "enable server",
            "set server",
        ], mine
    assert [t for t, st in states.items() if st.admin == "drain"] == targets[:10]


def pair(require_all: bool = True) -> tuple[HAProxyTargets, list[FakeRuntime]]:
    runtimes = [FakeRuntime(f"rt{i}") for i in range(2)]
    for rt in runtimes:
        rt.add_backend(BACKEND)
    return HAProxyTargets(HAPair(runtimes, require_all)), runtimes


async def test_a_pair_calls_a_target_healthy_only_when_both_do() -> None:
    pool, (a, b) = pair()
    await pool.register(POOL, [TARGET])
    assert [s.name for rt in (a, b) for s in await rt.servers(BACKEND)] == ["podgate-10.0.0.1-8080"] * 2
    a.set_health(BACKEND, "podgate-10.0.0.1-8080", "UP")
    (state,) = (await pool.targets(POOL)).values()
    assert state.health.health is Health.INITIAL and "haproxy rt1 backend" in state.health.where
    b.set_health(BACKEND, "podgate-10.0.0.1-8080", "UP")
    (state,) = (await pool.targets(POOL)).values()
    assert state.health.health is Health.HEALTHY
    await b.remove(BACKEND, "podgate-10.0.0.1-8080")  # gone from one of the pair
    (state,) = (await pool.targets(POOL)).values()
    assert state.health.health is Health.UNREGISTERED and "every HAProxy" in state.health.detail


async def test_an_unreachable_member_fails_reads_under_all_and_is_left_out_under_reachable() -> None:
    strict, (_, down) = pair(require_all=True)
    down.down = True
    with pytest.raises(Unreachable):
        await strict.targets(POOL)
    await strict.drain(POOL, [TARGET])  # a leaving target leaves whichever HAProxy can be told
    lenient, (up, down) = pair(require_all=False)
    down.down = True
    await lenient.register(POOL, [TARGET])
    up.set_health(BACKEND, "podgate-10.0.0.1-8080", "UP")
    (state,) = (await lenient.targets(POOL)).values()
    assert state.health.health is Health.HEALTHY
    up.down = True  # none left to decide on
    with pytest.raises(Unreachable):
        await lenient.targets(POOL)
    up.down = down.down = False
    up.fail("servers_and_admin", ProviderError("refused"))  # an answer, not a lost connection
    with pytest.raises(ProviderError, match="refused"):
        await lenient.targets(POOL)


async def test_attach_mode_fills_the_users_template_slots_first_and_empties_them_on_removal() -> None:
    """Slots of ``server-template podgate- …`` survive the user's reloads, dynamic servers do not."""
    rt = FakeRuntime()
    rt.add_backend(
        "app", {"users-own": FakeServer("10.9.0.1:80", "UP", "L7OK"), "podgate-1": FakeServer("0.0.0.0:0")}
    )
    pool = HAProxyTargets(HAPair([rt]))
    attached = PoolSpec("shop", "web", 80, "", 8080, "TCP", HealthCheck(), GroupRef(HAPROXY_BACKEND, "app"))
    second = Target("10.0.0.2", 8080)
    await pool.register(attached, [TARGET, second])
    assert {n: s.address for n, s in rt.table["app"].items()} == {
        "users-own": "10.9.0.1:80",
        "podgate-1": "10.0.0.1:8080",
        "podgate-10.0.0.2-8080": "10.0.0.2:8080",
    }
    assert set(await pool.targets(attached)) == {TARGET, second}  # the user's server is not ours
    rt.set_health("app", "podgate-1", "UP")
    await pool.drain(attached, [TARGET])
    assert rt.server("app", "podgate-1").status == "DRAIN"
    await pool.register(attached, [TARGET])  # back into rotation, not added again
    assert rt.server("app", "podgate-1").admin == 0 and len(rt.table["app"]) == 3
    await pool.deregister(attached, [TARGET, second])
    assert list(rt.table["app"]) == ["users-own", "podgate-1"]
    assert rt.server("app", "podgate-1").status == "MAINT" and await pool.targets(attached) == {}
