"""HAProxy's structure (``haproxy_provisioning``): rendered from the Services, checked, reloaded
through the master only when it changed, the registered targets carried across; attach mode only
checks the user's backends; the generation tells the controller a worker lost its dynamic state.
On the in-memory HAProxy (``haproxy_fake``), whose reload starts a worker from the files alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from podgate.model.lb import HAPROXY_BACKEND, GroupRef, Health, HealthCheck, PoolSpec, Target
from podgate.providers.base import ProviderError, ServiceLB
from podgate.providers.haproxy import HAProxyProvider
from podgate.providers.haproxy_fake import FakeMaster, FakeRuntime
from podgate.providers.haproxy_provisioning import HAProxyProvisioning
from podgate.providers.haproxy_state import StateFiles
from podgate.providers.haproxy_targets import HAPair

WEB = PoolSpec("shop", "web", 80, "", 8080, "TCP", HealthCheck(None, 1.0, 3, 3))
DB = PoolSpec("shop", "db", 5432, "", 5432, "TCP", HealthCheck())
BASE = (
    "global\n    maxconn 100\n"
    "defaults\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n"
)


def provisioned(tmp_path: Path, validate: bool = False) -> tuple[HAProxyProvider, FakeRuntime, FakeMaster]:
    rt = FakeRuntime()
    master = FakeMaster(tmp_path / "haproxy.cfg", [rt])
    provider = HAProxyProvider(
        [rt], master=master, config_path=tmp_path / "haproxy.cfg", base_config=BASE, validate=validate
    )
    return provider, rt, master


async def test_the_structure_reloads_only_when_services_change(tmp_path: Path) -> None:
    provider, rt, master = provisioned(tmp_path)
    p = provider.provisioning
    await p.sync_all({"shop/web": ServiceLB("127.200.0.1", [WEB])})
    assert master.reloads == p.reloads == 1 and list(rt.table) == ["podgate.shop.web.80"]
    assert await p.provision("shop/web", [WEB], "127.200.0.1") == "127.200.0.1"
    await p.sync_all({"shop/web": ServiceLB("127.200.0.1", [WEB])})
    assert master.reloads == 1  # the same structure: the file says so, no reload
    await p.provision("shop/db", [DB], "127.200.0.2")
    assert master.reloads == 2 and sorted(rt.table) == ["podgate.shop.db.5432", "podgate.shop.web.80"]
    await p.release("shop/db")
    await p.release("shop/db")  # released already: nothing to do
    assert master.reloads == 3 and list(rt.table) == ["podgate.shop.web.80"]
    text = (tmp_path / "haproxy.cfg").read_text()
    assert text.startswith("# podgate structure ") and "bind 127.200.0.1:80" in text and "shop/db" not in text


async def test_a_reload_keeps_registered_targets_and_their_state(tmp_path: Path) -> None:
    """A new worker starts from the file alone: every target is in it, UP ones come back UP,
    drained ones drained (a reload by anyone, not only podgate's)."""
    provider, rt, master = provisioned(tmp_path)
    await provider.provisioning.sync_all({"shop/web": ServiceLB("127.200.0.1", [WEB])})
    up, leaving = Target("10.0.0.1", 8080), Target("10.0.0.2", 8080)
    await provider.pool.register(WEB, [up, leaving])
    for name in rt.table["podgate.shop.web.80"]:
        rt.set_health("podgate.shop.web.80", name, "UP")
    assert {t: s.health.health for t, s in (await provider.pool.targets(WEB)).items()} == {
        up: Health.HEALTHY,
        leaving: Health.HEALTHY,
    }
    await provider.pool.drain(WEB, [leaving])
    await provider.pool.targets(WEB)  # the leader's read saves the drain
    before = await provider.provisioning.generation()
    await master.reload()  # someone else's reload
    assert await provider.provisioning.generation() != before
    states = await provider.pool.targets(WEB)
    assert (states[up].admin, states[up].health.health) == ("ready", Health.HEALTHY)
    assert (states[leaving].admin, states[leaving].health.health) == ("drain", Health.DRAINING)
    # podgate's own reload (a new Service) carries them the same way
    await provider.provisioning.provision("shop/db", [DB], "127.200.0.2")
    states = await provider.pool.targets(WEB)
    assert states[up].health.health is Health.HEALTHY and states[leaving].admin == "drain"


async def test_a_configuration_haproxy_refuses_is_never_reloaded(tmp_path: Path) -> None:
    rt = FakeRuntime()
    master = FakeMaster(tmp_path / "haproxy.cfg", [rt])
    provider = HAProxyProvider(
        [rt], master=master, config_path=tmp_path / "haproxy.cfg", base_config="nonsense\n"
    )
    with pytest.raises(ProviderError, match="configuration is invalid"):
        await provider.provisioning.sync_all({"shop/web": ServiceLB("127.200.0.1", [WEB])})
    assert master.reloads == 0 and not (tmp_path / "haproxy.cfg").exists()
    good, _, master = provisioned(tmp_path, validate=True)
    await good.provisioning.sync_all({"shop/web": ServiceLB("127.200.0.1", [WEB])})
    assert master.reloads == 1


async def test_a_reload_without_a_new_worker_is_an_error(tmp_path: Path) -> None:
    class Deaf:
        async def reload(self) -> None:
            pass  # the master took it, no worker came

    rt = FakeRuntime()
    files = StateFiles(rt, tmp_path / "haproxy.cfg")
    provisioning = HAProxyProvisioning(HAPair([rt]), Deaf(), files, validate=False, reload_timeout=0.2)
    with pytest.raises(ProviderError, match="did not start a new worker"):
        await provisioning.sync_all({"shop/web": ServiceLB("127.200.0.1", [WEB])})


async def test_attach_mode_checks_the_users_backends_and_provisions_nothing() -> None:
    rt = FakeRuntime()
    rt.add_backend("app")
    provider = HAProxyProvider([rt])
    p = provider.provisioning
    attached = PoolSpec("shop", "web", 80, "", 8080, "TCP", HealthCheck(), GroupRef(HAPROXY_BACKEND, "app"))
    assert await p.provision("shop/web", [attached], None) is None
    missing = PoolSpec("shop", "web", 80, "", 8080, "TCP", HealthCheck(), GroupRef(HAPROXY_BACKEND, "nope"))
    with pytest.raises(ProviderError, match="no backend 'nope' to attach to") as no_backend:
        await p.provision("shop/web", [missing], None)
    with pytest.raises(ProviderError, match="attach mode") as not_named:
        await p.provision("shop/web", [WEB], "127.200.0.1")
    # configuration errors: the controller backs off on them instead of polling every 0.1 s
    assert no_backend.value.permanent and not_named.value.permanent
    await p.sync_all({"shop/web": ServiceLB("127.200.0.1", [WEB])})  # nothing of podgate's to render
    await p.release("shop/web")
    assert not p.owns_config and provider.files is None and list(rt.table) == ["app"]


async def test_the_generation_of_a_pair_follows_its_policy() -> None:
    a, b = FakeRuntime("rt0"), FakeRuntime("rt1")
    strict = HAProxyProvisioning(HAPair([a, b], require_all=True))
    lenient = HAProxyProvisioning(HAPair([a, b], require_all=False))
    first = await strict.generation()
    assert first == await lenient.generation()
    b.down = True
    with pytest.raises(ProviderError):
        await strict.generation()
    gone = await lenient.generation()  # one member unreachable: one more state
    assert gone != first and gone.endswith(",unreachable")
    b.down = False
    b.restart()  # back with a fresh worker, no dynamic servers
    assert await lenient.generation() not in (first, gone)


def test_provisioning_takes_both_master_and_files_or_neither(tmp_path: Path) -> None:
    rt = FakeRuntime()
    with pytest.raises(ValueError, match="both its master CLI and its files"):
        HAProxyProvisioning(HAPair([rt]), master=FakeMaster(tmp_path / "h.cfg", [rt]))
    with pytest.raises(ValueError, match="at least one runtime API address"):
        HAProxyProvider([])
