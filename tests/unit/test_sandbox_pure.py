"""Pure pieces of the sandbox: addresses, app settings, preStop sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path

import pytest

from podgate.model import addresses
from podgate_sandbox import podnet
from podgate_sandbox.app import AppConfigError, AppSettings
from podgate_sandbox.nodeagent import probe_user_agent, sleep_seconds


def test_addresses_stay_in_loopback_and_do_not_collide() -> None:
    net = addresses.loopback_network("127.100.0.0/30")
    assert addresses.allocate(net, []) == "127.100.0.1"
    assert addresses.allocate(net, ["127.100.0.1"]) == "127.100.0.2"
    assert addresses.allocate(net, [], hint=1) == "127.100.0.2"
    with pytest.raises(addresses.AddressPoolError, match="no free address"):
        addresses.allocate(net, ["127.100.0.1", "127.100.0.2"])
    with pytest.raises(addresses.AddressPoolError, match=r"not inside 127\.0\.0\.0/8"):
        addresses.loopback_network("10.0.0.0/16")
    with pytest.raises(addresses.AddressPoolError, match="not an IPv4 CIDR"):
        addresses.loopback_network("banana")
    assert addresses.overlaps("127.100.0.0/16", "127.100.5.0/24")
    assert not addresses.overlaps("127.100.0.0/16", "127.200.0.0/16")


def test_addresses_in_use_as_a_set_are_looked_up_not_copied() -> None:
    """The node agent's addresses in use (thousands) are a view: copying it for each new pod
    made a burst quadratic."""

    class LookedUp(AbstractSet[str]):
        def __contains__(self, ip: object) -> bool:
            return ip in ("127.100.0.1", "127.100.0.2")

        def __iter__(self) -> Iterator[str]:
            raise AssertionError("copied")

        def __len__(self) -> int:
            raise AssertionError("copied")

    net = addresses.loopback_network("127.100.0.0/29")
    assert addresses.allocate(net, LookedUp()) == "127.100.0.3"
    assert addresses.offset(net, "127.100.0.2") == 1


def test_app_settings_from_env() -> None:
    s = AppSettings.from_env(
        {"PODGATE_APP_STARTUP_DELAY": "1.5", "PODGATE_APP_EXIT_AFTER": "3", "PODGATE_APP_EXIT_CODE": "2"}
    )
    assert (s.startup_delay, s.shutdown_delay, s.exit_after, s.exit_code) == (1.5, 0.0, 3.0, 2)
    with pytest.raises(AppConfigError, match="PODGATE_APP_STARTUP_DELAY='soon' is not a number"):
        AppSettings.from_env({"PODGATE_APP_STARTUP_DELAY": "soon"})
    with pytest.raises(AppConfigError, match="must not be negative"):
        AppSettings.from_env({"PODGATE_APP_SHUTDOWN_DELAY": "-1"})


@pytest.mark.parametrize(
    ("command", "want"),
    [
        (["sleep", "5"], 5.0),
        (["/bin/sleep", "2.5"], 2.5),
        (["sh", "-c", "sleep 10"], 10.0),
        (["/bin/sh", "-c", "exec sleep 3"], 3.0),
        (["sh", "-c", "nginx -s quit; sleep 3"], None),
        (["curl", "localhost"], None),
    ],
)
def test_prestop_sleep_recognised(command: list[str], want: float | None) -> None:
    assert sleep_seconds(command) == want


def test_app_on_sigterm_and_response_delay_ranges() -> None:
    s = AppSettings.from_env({"PODGATE_APP_ON_SIGTERM": "abort", "PODGATE_APP_RESPONSE_DELAY": "0.5-1"})
    assert s.on_sigterm == "abort" and (s.response_delay, s.response_delay_max) == (0.5, 1.0)
    assert all(0.5 <= s.response_wait() <= 1.0 for _ in range(100))
    assert AppSettings.from_env({}).on_sigterm == "graceful"
    assert AppSettings.from_env({"PODGATE_APP_RESPONSE_DELAY": "0.25"}).response_wait() == 0.25
    for bad in ({"PODGATE_APP_ON_SIGTERM": "kill"}, {"PODGATE_APP_RESPONSE_DELAY": "1-0.5"}):
        with pytest.raises(AppConfigError):
            AppSettings.from_env(bad)


def test_the_workaround_covers_a_registration_delay() -> None:
    from podgate_sandbox.rollout import scenarios

    assert scenarios(1.0, 3)["workaround"].min_ready_seconds == 4
    assert scenarios(1.0, 3, (2.0, 10.0))["workaround"].min_ready_seconds == 14
    assert scenarios(1.0, 3, (2.0, 10.0), min_ready=20)["workaround"].min_ready_seconds == 20


def test_without_the_data_plane_controllers_talk_to_haproxy_directly(tmp_path: Path) -> None:
    """The cloud-like data plane is the sandbox's own hop in front of HAProxy; a benchmark of
    podgate at scale leaves it out and the controller dials HAProxy's runtime API, as beside a
    user's HAProxy."""
    from podgate_sandbox.controlplane import Sandbox, SandboxConfig

    for data_plane in (True, False):
        sb = Sandbox(tmp_path / str(data_plane), SandboxConfig(port_offset=12000, data_plane=data_plane))
        names = [c.name for c in sb.components()]
        controller = next(c for c in sb.components() if c.name == "podgate-controller")
        socket = controller.argv[controller.argv.index("--haproxy-runtime-socket") + 1]
        assert ("lb-data-plane" in names) is data_plane
        assert socket == str(sb.data_plane_socket if data_plane else sb.haproxy_runtime_socket)
        assert ("lb-data-plane" in controller.needs) is data_plane


def test_probes_name_the_release_the_agent_plays_the_kubelet_of() -> None:
    assert probe_user_agent("v1.37.2") == "kube-probe/1.37"
    assert probe_user_agent("v1.34.4") == "kube-probe/1.34"


def test_pod_ranges_are_the_benchmarking_range_or_loopback() -> None:
    assert podnet.needs_route(podnet.pod_network("198.18.0.0/16"))
    assert not podnet.needs_route(podnet.pod_network("127.100.0.0/16"))
    for bad, why in (
        ("10.0.0.0/16", "must be inside 198.18.0.0/15"),
        ("198.20.0.0/16", "must be inside 198.18.0.0/15"),
        ("198.18.0.0/31", "too small"),
        ("nope", "not an IPv4 CIDR"),
    ):
        with pytest.raises(addresses.AddressPoolError, match=why):
            podnet.pod_network(bad)


def test_a_pod_range_the_machine_routes_is_refused_but_its_own_route_is_not() -> None:
    net = podnet.pod_network("198.18.0.0/16")
    assert podnet.route_args(net) == ["local", "198.18.0.0/16", "dev", "lo", "table", "local"]
    routes: list[dict[str, object]] = [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
        {"dst": "192.0.2.0/24", "dev": "eth0"},
        {"type": "local", "dst": "127.0.0.0/8", "dev": "lo", "table": "local"},
        {"type": "local", "dst": "198.18.0.0/16", "dev": "lo", "table": "local"},  # ours, from a previous up
        {"dst": "fd00::/64", "dev": "eth0"},
    ]
    assert podnet.conflicts(net, routes) == []
    routes.append({"dst": "198.18.7.0/24", "dev": "tun0"})
    assert podnet.conflicts(net, routes) == ["198.18.7.0/24 dev tun0 table main"]
    assert podnet.conflicts(podnet.pod_network("198.19.0.0/20"), routes) == []


def test_down_with_nothing_recorded_stops_nothing_and_writes_nothing(tmp_path: Path) -> None:
    """A state directory gone (pytest's, say, removed under a `sandbox up` that failed): `down`
    has nothing to stop and writes nothing; never a traceback (it wrote pids.json there)."""
    import shutil

    from podgate_sandbox.controlplane import Sandbox, SandboxConfig

    state = tmp_path / "state"
    sb = Sandbox(state, SandboxConfig(port_offset=12000, data_plane=False))
    shutil.rmtree(state, ignore_errors=True)
    assert sb.down() == []
    assert not state.exists()
