"""HAProxy's targets (``haproxy_targets``): the TargetPool over the runtime API of one HAProxy or a
pair.  Batching and the commands sent are checked on the stand-in socket (``haproxy_cli``), the
pair policy and attach mode's slots on the in-memory HAProxy (``haproxy_fake``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from podgate.model.lb import HAPROXY_BACKEND, GroupRef, Health, HealthCheck, PoolSpec, Target, TargetHealth
from podgate.providers.base import ProviderError, ServiceLB, TargetState
from podgate.providers.haproxy import HAProxyProvider
from podgate.providers.haproxy_fake import FakeMaster, FakeRuntime, FakeServer
from podgate.providers.haproxy_runtime import Unreachable, parse_frontend_sessions, parse_old_workers
from podgate.providers.haproxy_targets import HAPair, HAProxyTargets, combine
from tests.unit.haproxy_cli import SERVERS_STATE_HEADER, STAT_HEADER, cli, one_server

BACKEND = "podgate.shop.web.80"
POOL = PoolSpec("shop", "web", 80, "", 8080, "TCP", HealthCheck(None, 1.0, 3, 3))
TARGET = Target("10.0.0.1", 8080)


#: the master CLI's ``show proc`` on 2.6 after one reload (its worker left with connections)
SHOW_PROC = """\
#<PID>          <type>          <reloads>       <uptime>        <version>
12216           master          1 [failed: 0]   0d00h00m02s     2.6.12-1+deb12u4
# workers
12312           worker          0               0d00h00m01s     2.6.12-1+deb12u4
# old workers
12218           worker          1               0d00h00m02s     2.6.12-1+deb12u4
# programs

"""


def test_the_old_workers_are_read_from_show_proc() -> None:
    assert parse_old_workers(SHOW_PROC) == [12218]
    assert parse_old_workers(SHOW_PROC.replace("# old workers\n12218", "# old workers\n")) == []


async def provisioned(tmp_path: Path) -> tuple[HAProxyProvider, FakeMaster, FakeRuntime]:
    """A provisioning provider with one Service and its target registered."""
    rt = FakeRuntime()
    config = tmp_path / "haproxy.cfg"
    master = FakeMaster(config, [rt])
    provider = HAProxyProvider([rt], master=master, config_path=config, validate=False)
    await provider.provisioning.sync_all({"shop/web": ServiceLB("127.200.0.1", [POOL])})
    await provider.pool.register(POOL, [TARGET])
    return provider, master, rt


async def drained_after_a_reload(tmp_path: Path) -> tuple[HAProxyProvider, FakeMaster]:
    """A provisioned target UP when HAProxy reloads, drained by podgate after the reload."""
    provider, master, rt = await provisioned(tmp_path)
    rt.set_health(BACKEND, "podgate-10.0.0.1-8080", "UP")
    assert provider.files is not None
    await provider.files.persist(BACKEND, relist=True)
    master.old.clear()  # the worker before the structure's reload has exited
    await master.reload()
    rt.set_health(BACKEND, "podgate-10.0.0.1-8080", "UP")
    await provider.pool.drain(POOL, [TARGET])
    return provider, master


async def test_a_drain_waits_for_an_old_worker_that_still_routes_to_the_target(tmp_path: Path) -> None:
    """The worker a reload left serving its idle connections' last requests keeps the target
    UP (it runs no checks and takes no changes): the target is not drained until that worker
    has exited, and the drain says why."""
    provider, master = await drained_after_a_reload(tmp_path)
    (old,) = master.old
    state = (await provider.pool.targets(POOL))[TARGET]
    assert state.admin == "drain" and not state.drained
    assert f"HAProxy worker {old}" in state.held and "in rotation" in state.held
    master.old.clear()  # its last connection closed: the worker exited
    state = (await provider.pool.targets(POOL))[TARGET]
    assert state.drained and state.held == ""


async def test_an_old_worker_that_had_the_target_drained_already_holds_nothing(tmp_path: Path) -> None:
    provider, master = await drained_after_a_reload(tmp_path)
    assert provider.files is not None
    await provider.files.persist(BACKEND, relist=True)  # the drain is saved
    master.old.clear()  # the first old worker exited
    await master.reload()  # this old worker has it in DRAIN, with no session
    assert [row.status for rows in master.old.values() for row in rows] == ["DRAIN"]
    assert (await provider.pool.targets(POOL))[TARGET].drained
    # ... unless it still has a request in flight to it
    (rows,) = master.old.values()
    rows[0] = rows[0]._replace(sessions=2)
    state = (await provider.pool.targets(POOL))[TARGET]
    assert not state.drained and "2 session(s) in HAProxy worker" in state.held


async def test_an_old_worker_without_a_client_on_the_pools_frontend_holds_nothing(tmp_path: Path) -> None:
    """An old worker kept alive by other frontends' connections (the webhook's TCP ones, say)
    has stopped listening: it cannot route another request to this pool's targets."""
    provider, master = await drained_after_a_reload(tmp_path)
    (old,) = master.old
    master.connections[old] = 0
    assert (await provider.pool.targets(POOL))[TARGET].drained


def test_a_frontends_sessions_are_read_from_its_row() -> None:
    text = "# pxname,svname,qcur,qmax,scur,smax\nfe.shop.web.80,FRONTEND,,,3,7\n"
    assert parse_frontend_sessions(text, "fe.shop.web.80") == 3
    assert parse_frontend_sessions(text, "fe.shop.api.80") == 0
    assert parse_frontend_sessions("", "fe.shop.web.80") == 0


async def test_old_workers_that_cannot_be_read_leave_the_target_not_drained(tmp_path: Path) -> None:
    """Unknown is not drained: stopping the pod might drop an old worker's requests; the drain
    budget bounds the wait."""
    provider, master = await drained_after_a_reload(tmp_path)

    async def refused() -> list[int]:
        raise Unreachable("HAProxy at master.sock unreachable: connection refused")

    master.old_workers = refused  # type: ignore[method-assign]
    state = (await provider.pool.targets(POOL))[TARGET]
    assert not state.drained and state.held.startswith("old HAProxy workers unknown: HAProxy at master.sock")


async def test_a_pool_with_nothing_drained_costs_no_master_call(tmp_path: Path) -> None:
    provider, master, _ = await provisioned(tmp_path)
    calls: list[str] = []

    async def counted() -> list[int]:
        calls.append("show proc")
        return []

    master.old_workers = counted  # type: ignore[method-assign]
    assert not (await provider.pool.targets(POOL))[TARGET].drained
    assert calls == []


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

    sock, master_sock = tmp_path / "runtime.sock", tmp_path / "master.sock"
    server = await asyncio.start_unix_server(cli(answer, commands), str(sock))

    def master_answer(line: str) -> str:
        """One old worker, with no client on the pool's frontend."""
        if line == "show proc":
            return SHOW_PROC
        assert line == "@!12218 show stat fe.shop.web.80 1 -1", line
        return "# pxname,svname,qcur,qmax,scur\nfe.shop.web.80,FRONTEND,,,0\n"

    master = await asyncio.start_unix_server(cli(master_answer, []), str(master_sock))
    config = tmp_path / "haproxy.cfg"
    config.write_text("# the leader's configuration\n")
    pool = HAProxyProvider([str(sock)], master_address=str(master_sock), config_path=config).pool
    try:
        await pool.drain(POOL, [TARGET])
        states = await pool.targets(POOL)
    finally:
        server.close()
        master.close()
    assert states[TARGET].admin == "drain" and states[TARGET].drained
    assert config.read_text() == "# the leader's configuration\n"
    assert not (tmp_path / "server-state").exists()
    # only reads and the drain itself (by the server's name: no read before it)
    assert commands[0] == f"set server {BACKEND}/podgate-10.0.0.1-8080 state drain"
    assert all(c.startswith("show ") for c in commands[1:])


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
    await b.remove_servers(BACKEND, ["podgate-10.0.0.1-8080"])  # gone from one of the pair
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
