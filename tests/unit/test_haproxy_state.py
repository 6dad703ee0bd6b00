"""What a reload of a provisioned HAProxy starts from (``haproxy_state``): the state saves the
leader makes after changes and reads, shared and side by side, and the policy for reads
(:class:`SaveOnRead`), on the in-memory HAProxy (``haproxy_fake``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from podgate.model.lb import HAPROXY_BACKEND, GroupRef, HealthCheck, PoolSpec, Target
from podgate.providers.base import ProviderError, ServiceLB
from podgate.providers.haproxy import HAProxyProvider
from podgate.providers.haproxy_fake import FakeMaster, FakeRuntime, FakeServer
from podgate.providers.haproxy_runtime import ServerStat, parse_admin_states
from podgate.providers.haproxy_state import SaveOnRead, StateFiles, View, servers_in_state, view_of

BACKEND = "podgate.shop.web.80"
POOL = PoolSpec("shop", "web", 80, "", 8080, "TCP", HealthCheck(None, 1.0, 3, 3))
TARGET = Target("10.0.0.1", 8080)
NAME = "podgate-10.0.0.1-8080"


async def leader(tmp_path: Path, delay: float = 0.0) -> tuple[HAProxyProvider, StateFiles, FakeRuntime]:
    """A provisioning provider that has set the structure (one Service, one backend), as the
    leader has after its first ``sync_all``."""
    rt = FakeRuntime(delay=delay)
    config = tmp_path / "haproxy.cfg"
    provider = HAProxyProvider([rt], master=FakeMaster(config, [rt]), config_path=config, validate=False)
    await provider.provisioning.sync_all({"shop/web": ServiceLB("127.200.0.1", [POOL])})
    assert provider.files is not None and BACKEND in rt.table
    return provider, provider.files, rt


def saves(rt: FakeRuntime) -> int:
    return sum(method == "server_state" for method, _ in rt.calls)


def saved(files: StateFiles, name: str = NAME) -> tuple[str, int]:
    """The server's operational state (2 up, 0 down) and admin flags as last saved."""
    text = (files.state_dir / BACKEND).read_text()
    op = next(f[5] for f in (ln.split() for ln in text.splitlines()[2:]) if f[3] == name)
    return op, parse_admin_states(text)[name]


async def test_a_burst_of_drains_saves_each_backend_a_few_times_not_once_per_drain(tmp_path: Path) -> None:
    """The leader saves a backend's state after each change (a reload must restore it).  40
    drains at once, as a scale-down's preStop hooks make them, are taken together by a few
    saves instead of queueing 40 saves of the backend behind the files' lock.  A drain does
    not wait for its save (hooks missed their budget queued behind saves): the saves follow
    within a moment, and the last holds every drain."""
    provider, files, rt = await leader(tmp_path, delay=0.005)  # a loaded HAProxy's round trip
    targets = [Target(f"10.0.0.{i}", 8080) for i in range(1, 41)]
    await provider.pool.register(POOL, targets)
    for name in rt.table[BACKEND]:
        rt.set_health(BACKEND, name, "UP")
    rt.calls.clear()
    async with asyncio.timeout(2):
        await asyncio.gather(*(provider.pool.drain(POOL, [t]) for t in targets))
    for _ in range(100):  # the saves follow
        if not files.saving and set(parse_admin_states((files.state_dir / BACKEND).read_text()).values()) == {
            8
        }:
            break
        await asyncio.sleep(0.02)
    assert all(s.status == "DRAIN" for s in rt.table[BACKEND].values())
    assert 1 <= saves(rt) <= 4, f"{saves(rt)} saves for 40 drains"
    admin = parse_admin_states((files.state_dir / BACKEND).read_text())
    assert len(admin) == 40 and set(admin.values()) == {8}, "the saves left a drain out"


async def test_reads_save_the_backend_when_a_server_changes_state_not_at_each_check(tmp_path: Path) -> None:
    """The leader saves a backend's state after a read that saw a server change state (UP,
    DOWN, DRAIN...), so a reload restores what gates were decided on.  A check's progress
    ("DOWN 1/3" → "DOWN 2/3") is no such change: saving it would make every read of a backend
    in health checking a save."""
    provider, _, rt = await leader(tmp_path)
    rt.table[BACKEND][NAME] = FakeServer("10.0.0.1:8080", "DOWN", "L4CON")
    saved_after = []
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
        rt.set_health(BACKEND, NAME, status, check)
        rt.calls.clear()
        await provider.pool.targets(POOL)
        await asyncio.sleep(0.05)  # a save not waited for is done by now
        saved_after.append(saves(rt) > 0)
    assert saved_after == [True, False, False, False, True, False, False, True]


async def test_a_read_waits_for_the_save_only_when_a_gate_may_open_on_it(tmp_path: Path) -> None:
    """A server newly UP is saved before the read returns (a gate opens only on a state a
    reload restores); a drain seen by a read is saved in the background: drain hooks waiting
    for saves missed their budget."""
    provider, files, rt = await leader(tmp_path)
    rt.table[BACKEND][NAME] = FakeServer("10.0.0.1:8080", "DOWN", "L4CON")
    release = asyncio.Event()
    rt.held["server_state"] = release  # every save waits here until the test releases it
    release.set()
    await provider.pool.targets(POOL)  # the first view: saved (nothing UP: in the background)
    await asyncio.sleep(0.05)
    assert saved(files) == ("0", 0)
    release.clear()
    rt.set_health(BACKEND, NAME, "UP")
    read = asyncio.ensure_future(provider.pool.targets(POOL))
    await asyncio.sleep(0.1)
    assert not read.done()  # newly UP: the read waits for its save
    release.set()
    await read
    assert saved(files) == ("2", 0)
    release.clear()
    await rt.drain_servers(BACKEND, [NAME])  # drained by another replica's hook, say
    async with asyncio.timeout(1):
        states = await provider.pool.targets(POOL)  # a drain: not waited for
    assert states[TARGET].admin == "drain" and saved(files) == ("2", 0)
    release.set()
    for _ in range(50):
        if saved(files) == ("2", 8):
            break
        await asyncio.sleep(0.01)
    assert saved(files) == ("2", 8)  # saved soon after
    rt.calls.clear()
    await provider.pool.targets(POOL)
    await asyncio.sleep(0.05)
    assert saves(rt) == 0  # and not again: the view is known saved


async def test_a_backend_released_before_its_save_is_dropped_not_retried_for_ever(tmp_path: Path) -> None:
    """A save not waited for may find its backend gone (the Service released, HAProxy
    reloaded): kept for the next save, it would fail every later save, and every register
    waiting on one."""
    _, files, rt = await leader(tmp_path)
    rt.table[BACKEND][NAME] = FakeServer("10.0.0.1:8080", "UP", "L4OK")
    files.schedule("podgate.shop.gone.80", relist=False)
    await files.persist(BACKEND, relist=False)  # no error from the other
    rt.calls.clear()
    await files.persist(BACKEND, relist=False)
    assert rt.calls == [("server_state", BACKEND)]  # the gone backend is not asked for again
    assert not files.saving and (files.state_dir / BACKEND).exists()


async def test_a_failed_save_keeps_its_backend_for_the_next(tmp_path: Path) -> None:
    _, files, rt = await leader(tmp_path)
    rt.add_backend("podgate.shop.api.80")
    rt.fail("server_state", ProviderError("HAProxy at fake-haproxy: show failed: Connection lost"))
    with pytest.raises(ProviderError, match="Connection lost"):
        await files.persist(BACKEND, relist=False)
    rt.calls.clear()
    await files.persist("podgate.shop.api.80", relist=False)
    assert sorted(rt.calls) == [("server_state", "podgate.shop.api.80"), ("server_state", BACKEND)]


async def test_servers_enter_the_file_after_their_state_and_leave_it_before_haproxy(tmp_path: Path) -> None:
    """Whatever worker a reload starts has every target and its state, and none that is leaving."""
    provider, files, rt = await leader(tmp_path)
    server_line = f"    server {NAME} 10.0.0.1:8080 "
    await provider.pool.register(POOL, [TARGET])
    assert server_line in files.config_path.read_text()
    assert NAME in (files.state_dir / BACKEND).read_text()
    rt.held["remove_servers"] = gate = asyncio.Event()
    leaving = asyncio.ensure_future(provider.pool.deregister(POOL, [TARGET]))
    await asyncio.sleep(0.05)
    assert server_line not in files.config_path.read_text() and NAME in rt.table[BACKEND]
    gate.set()
    await leaving
    assert NAME not in rt.table[BACKEND] and NAME not in (files.state_dir / BACKEND).read_text()


async def test_a_replica_keeps_no_files_until_it_sets_the_structure(tmp_path: Path) -> None:
    rt = FakeRuntime()
    files = StateFiles(rt, tmp_path / "haproxy.cfg")
    attached = PoolSpec("shop", "web", 80, "", 8080, "TCP", HealthCheck(), GroupRef(HAPROXY_BACKEND, "app"))
    assert not files.keeps(POOL)
    assert files.set_structure({"shop/web": ServiceLB("127.200.0.1", [POOL])})  # no file yet: render it
    assert files.keeps(POOL) and not files.keeps(attached)  # the user's backend: the user's files
    files.write()
    assert not files.set_structure({"shop/web": ServiceLB("127.200.0.1", [POOL])})  # the same structure


# -- the read policy on its own ------------------------------------------------------------------


class Recorded:
    """:class:`~podgate.providers.haproxy_state.Saves` that records what it is asked and lets
    the test finish the background save."""

    def __init__(self) -> None:
        self.persisted: list[str] = []
        self.scheduled: list[str] = []
        self.save: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def persist(self, backend: str, relist: bool) -> None:
        assert not relist
        self.persisted.append(backend)

    def schedule(self, backend: str, relist: bool) -> asyncio.Future[None]:
        assert not relist
        self.scheduled.append(backend)
        return self.save


def row(status: str, check: str = "L4OK", name: str = NAME) -> ServerStat:
    return ServerStat(BACKEND, name, "10.0.0.1:8080", status, check, "", "", 0)


def view(*rows: ServerStat, flags: dict[str, int] | None = None) -> View:
    return view_of([("rt0", (list(rows), flags or {}))])


def test_a_view_is_what_a_gate_is_decided_on_not_a_checks_progress() -> None:
    assert view(row("DOWN 1/3", "L4CON")) == view(row("DOWN 2/3", "L4OK")) == view(row("DOWN", "INI"))
    assert view(row("DOWN")) != view(row("UP"))
    assert view(row("DOWN")) != view(row("DOWN"), flags={NAME: 8})  # a drained server whose checks fail


async def test_save_on_read_waits_only_for_a_server_newly_up() -> None:
    files = Recorded()
    policy = SaveOnRead(files)
    await policy.seen(BACKEND, view(row("DOWN")))  # a first view: saved in the background
    assert (files.scheduled, files.persisted) == ([BACKEND], [])
    await policy.seen(BACKEND, view(row("DOWN")))  # not known saved yet: asked again (joins the save)
    assert len(files.scheduled) == 2
    files.save.set_result(None)
    await asyncio.sleep(0)
    await policy.seen(BACKEND, view(row("DOWN 2/3")))  # known saved: nothing
    assert len(files.scheduled) == 2 and files.persisted == []
    await policy.seen(BACKEND, view(row("UP")))  # a gate may open: waited for
    assert files.persisted == [BACKEND] and len(files.scheduled) == 2
    await policy.seen(BACKEND, view(row("UP"), row("UP", name="podgate-10.0.0.2-8080")))  # another newly UP
    assert len(files.persisted) == 2
    await policy.seen(BACKEND, view(row("UP")))  # one gone, none newly UP: the background
    assert len(files.persisted) == 2 and len(files.scheduled) == 3


async def test_save_on_read_asks_again_after_a_failed_save() -> None:
    files = Recorded()
    policy = SaveOnRead(files)
    await policy.seen(BACKEND, view(row("DOWN")))
    files.save.set_exception(ProviderError("lost"))
    files.save.exception()  # retrieved: the files log it
    await asyncio.sleep(0)
    files.save = asyncio.get_running_loop().create_future()
    await policy.seen(BACKEND, view(row("DOWN")))
    assert files.scheduled == [BACKEND, BACKEND]


#: ``show servers state be1`` as HAProxy 2.6 answers it (one server checked UP, one just added)
STATE_2_6 = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
2 be1 1 podgate-127.0.0.5-8080 127.0.0.5 2 0 1 1 0 8 2 0 6 0 0 0 - 8080 - 0 0 - - 0
2 be1 2 podgate-127.0.0.6-9090 127.0.0.6 2 0 1 1 0 1 0 0 2 0 0 0 - 9090 - 0 0 - - 0
"""  # noqa: E501


def test_the_servers_to_list_are_read_from_the_state_saved() -> None:
    """The configuration file lists the servers whose state was just saved, from that state:
    no second read of the backend.  An address the state cannot give whole (IPv6) is None, and
    the caller reads ``show stat`` instead."""
    assert servers_in_state(STATE_2_6) == [
        ("podgate-127.0.0.5-8080", "127.0.0.5:8080"),
        ("podgate-127.0.0.6-9090", "127.0.0.6:9090"),
    ]
    assert servers_in_state(STATE_2_6.split("2 be1 1")[0]) == []  # no server
    assert servers_in_state(STATE_2_6.replace("127.0.0.6 2", "fd00::6 2")) is None
    assert servers_in_state("Can't find backend.\n") is None
