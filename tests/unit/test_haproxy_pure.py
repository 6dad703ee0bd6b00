"""HAProxy: reading its status words, and the configuration podgate renders (checked by haproxy -c)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from podgate.model import lb
from podgate.model.lb import Health, HealthCheck, PoolSpec, Target
from podgate.providers import haproxy_config as cfg
from podgate.providers.haproxy_events import changed_service, stopping
from podgate.providers.haproxy_runtime import ServerStat, parse_stat
from podgate.providers.haproxy_targets import server_health

STAT = """# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie
be,podgate-127.100.0.4-80,0,0,2,0,,0,0,0,,0,,0,0,0,0,UP,1,1,0,0,1,1,1,,1,3,1,,0,,2,0,,0,L7OK,200,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Layer7 check passed,,3,3,0,,,,127.100.0.4:80,
be,podgate-127.100.0.9-80,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,0,1,0,0,,1,3,2,,0,,2,0,,0,L4CON,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,Connection refused,,0,0,0,0,,,,Layer4 connection problem,,3,3,0,,,,127.100.0.9:80,
be,BACKEND,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1,1,0,0,1,0,0,,1,3,0,,0,,1,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,,
"""


def test_parse_stat() -> None:
    rows = parse_stat(STAT)
    assert [r.name for r in rows] == ["podgate-127.100.0.4-80", "podgate-127.100.0.9-80"]
    assert rows[0].status == "UP" and rows[0].check_status == "L7OK" and rows[0].sessions == 2
    assert rows[1].address == "127.100.0.9:80" and rows[1].last_check == "Connection refused"


def stat(status: str, check: str, desc: str = "", last: str = "") -> ServerStat:
    return ServerStat("be", "podgate-127.0.0.2-80", "127.0.0.2:80", status, check, desc, last, 0)


@pytest.mark.parametrize(
    ("row", "admin", "health"),
    [
        (stat("UP", "L7OK"), "ready", Health.HEALTHY),
        (stat("UP 2/3", "L7STS"), "ready", Health.HEALTHY),  # going down, still in rotation
        (stat("UP 1/3", "INI"), "ready", Health.INITIAL),  # read from a configuration, not checked yet
        (stat("DOWN", "INI"), "ready", Health.INITIAL),
        (stat("DOWN 1/3", "L4OK"), "ready", Health.INITIAL),  # rising
        (
            stat("DOWN", "L7STS", "Layer7 wrong status", "HTTP status check returned code <503>"),
            "ready",
            Health.UNHEALTHY,
        ),
        (stat("DOWN", "L4CON", "Layer4 connection problem", "Connection refused"), "ready", Health.UNHEALTHY),
        (stat("MAINT", "L4OK"), "maint", Health.UNREGISTERED),
        (stat("DRAIN", "L7OK"), "drain", Health.DRAINING),
        # in rotation without checks: an "enable health" lost on the way (registered again)
        (stat("no check", ""), "maint", Health.UNREGISTERED),
    ],
)
def test_server_health(row: ServerStat, admin: str, health: Health) -> None:
    got_admin, got = server_health(row, "haproxy backend be")
    assert (got_admin, got.health) == (admin, health)
    assert row.status in got.detail and got.where == "haproxy backend be"


def test_failing_detail_quotes_haproxy() -> None:
    _, h = server_health(
        stat("DOWN", "L7STS", "Layer7 wrong status", "HTTP status check returned code <503>"), "w"
    )
    assert h.detail == (
        "server podgate-127.0.0.2-80 is DOWN, check L7STS (Layer7 wrong status: HTTP status check returned code <503>)"
    )


def test_names_round_trip() -> None:
    pool = PoolSpec("shop", "web", 443, "https", 8443, "TCP", HealthCheck())
    assert cfg.backend_name(pool) == "podgate.shop.web.443"
    attached = PoolSpec(
        "shop", "web", 443, "https", 8443, "TCP", HealthCheck(), lb.GroupRef(lb.HAPROXY_BACKEND, "app")
    )
    assert cfg.backend_name(attached) == "app"
    t = Target("127.100.0.7", 8443)
    assert cfg.target_of_server(cfg.server_name(t), "127.100.0.7:8443") == t
    assert cfg.target_of_server("web1", "10.0.0.1:80") is None  # the user's own server: not ours


def test_rendered_config_is_valid_for_haproxy(tmp_path: Path) -> None:
    base = (
        f"global\n    stats socket {tmp_path}/rt.sock mode 600 level admin\ndefaults\n    timeout connect 2s\n"
        "    timeout client 30s\n    timeout server 30s\n"
    )
    http = PoolSpec("shop", "web", 80, "http", "http", "TCP", HealthCheck("/healthz", 1.0, 2, 3))
    tcp = PoolSpec("shop", "db", 5432, "", 5432, "TCP", HealthCheck(), retries=False)
    text = cfg.render(
        base,
        {"shop/web": cfg.ServiceLB("127.200.0.1", [http]), "shop/db": cfg.ServiceLB("127.200.0.2", [tcp])},
    )
    assert "bind 127.200.0.1:80" in text and "option httpchk GET /healthz" in text
    web_part = text.split("\nbackend podgate.shop.web.80")[1]
    db_part = text.split("\nbackend podgate.shop.db.5432")[1]
    assert "retry-on conn-failure" in web_part and "option redispatch 1" in web_part
    # podgate.dev/load-balancer-retries: "false": as a cloud load balancer, no retry anywhere
    assert "retries 0" in db_part.split("# service")[0] and "retry-on" not in db_part.split("# service")[0]
    assert text.index("service shop/db") < text.index("service shop/web")  # stable order
    path = tmp_path / "h.cfg"
    path.write_text(text)
    check = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    with_state = cfg.render(
        base,
        {"shop/web": cfg.ServiceLB("127.200.0.1", [http])},
        {"podgate.shop.web.80": [("podgate-127.100.0.9-8080", "127.100.0.9:8080")]},
        str(tmp_path / "state"),
    )
    assert "server-state-base" in with_state and "load-server-state-from-file local" in with_state
    assert "    server podgate-127.100.0.9-8080 127.100.0.9:8080 check inter 1000" in with_state
    path.write_text(with_state)
    check = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # Targets do not count as structure: only Service changes call for a reload.
    one = {"shop/web": cfg.ServiceLB("127.200.0.1", [http])}
    assert cfg.structure_id(base, one) == cfg.structure_id(base, dict(one))
    assert cfg.structure_id(base, one) != cfg.structure_id(
        base, {**one, "shop/db": cfg.ServiceLB("127.200.0.2", [tcp])}
    )
    assert cfg.server_options(HealthCheck(None, 1.0, 2, 3)) == (
        "check inter 1000 fastinter 1000 downinter 1000 rise 2 fall 3"
    )


def test_blocks_kept_between_renders_give_the_same_file_and_follow_every_change() -> None:
    """The file is rendered again at every target added or removed: pools whose servers did
    not change reuse their block, and the text is the same as a render from nothing."""
    pools = {
        f"shop/s{i}": cfg.ServiceLB(
            f"127.200.0.{i}",
            [PoolSpec("shop", f"s{i}", 80, "", 8080, "TCP", HealthCheck(), retries=i % 2 == 0)],
        )
        for i in range(3)
    }
    servers = {
        f"podgate.shop.s{i}.80": [
            (f"podgate-127.100.{i}.{n}-8080", f"127.100.{i}.{n}:8080") for n in range(3)
        ]
        for i in range(3)
    }
    blocks: cfg.Blocks = {}

    def both() -> str:
        kept = cfg.render("", pools, servers, "/state", blocks)
        assert kept == cfg.render("", pools, servers, "/state")
        return kept

    first = both()
    servers["podgate.shop.s1.80"] = servers["podgate.shop.s1.80"][1:]  # a target removed
    assert "podgate-127.100.1.0-8080" not in both() and "podgate-127.100.1.0-8080" in first
    servers["podgate.shop.s2.80"].append(("podgate-127.100.2.9-8080", "127.100.2.9:8080"))  # added
    assert "    server podgate-127.100.2.9-8080 127.100.2.9:8080 check" in both()
    pools["shop/s0"] = cfg.ServiceLB("127.200.0.7", pools["shop/s0"].pools)  # a new address
    assert "bind 127.200.0.7:80" in both()
    del pools["shop/s2"]  # released: its block goes from the file and from what is kept
    assert "podgate.shop.s2.80" not in both()
    assert set(blocks) == {"podgate.shop.s0.80", "podgate.shop.s1.80"}
    assert "load-server-state-from-file" not in cfg.render("", pools, servers, None, blocks)


@pytest.mark.parametrize(
    ("name", "address", "target", "free"),
    [
        ("podgate-127.0.0.2-80", "127.0.0.2:80", Target("127.0.0.2", 80), False),  # podgate's dynamic server
        ("podgate-3", "127.0.0.2:80", Target("127.0.0.2", 80), False),  # a filled server-template slot
        ("podgate-4", "0.0.0.0:0", None, True),  # an empty slot
        ("users-own", "127.0.0.9:80", None, False),  # the user's: left alone
        ("users-own", "0.0.0.0:0", None, False),
    ],
)
def test_slots_of_the_users_server_template(
    name: str, address: str, target: Target | None, free: bool
) -> None:
    assert cfg.target_of_server(name, address) == target
    assert cfg.is_free_slot(name, address) is free


SERVERS_STATE = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
    "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
    "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port "
    "srv_check_addr srv_agent_addr srv_agent_port\n"
    "2 be 1 s1 127.0.0.1 0 8 1 1 0 8 2 0 6 0 0 0 - 1 - 0 0 - - 0\n\n"
)  # HAProxy 2.6, a server set to drain whose checks fail


def test_a_drained_server_whose_checks_fail_is_draining_not_down() -> None:
    """``show stat`` says DOWN for it: only the admin flags tell the drain (seen on 2.6)."""
    from podgate.providers.haproxy_runtime import parse_admin_states

    assert parse_admin_states(SERVERS_STATE) == {"s1": 8}
    assert parse_admin_states("No such backend.\n") == {}
    down = stat("DOWN", "L4CON", "Layer4 connection problem", "Connection refused")
    admin, health = server_health(down, "w", parse_admin_states(SERVERS_STATE)["s1"])
    assert (admin, health.health) == ("drain", Health.DRAINING) and "set to drain" in health.detail
    assert server_health(down, "w", 0)[0] == "ready"


def test_batched_answers_split_as_haproxy_ends_them() -> None:
    """What HAProxy 2.6 answered to ``add server be/a …; add server be/b …; add server be/a …;
    enable health be/a; set server be/b state drain; set server be/zz state drain``."""
    from podgate.providers.haproxy_runtime import split_answers

    text = (
        "New server registered.\n\nNew server registered.\n\n"
        "Already exists a server with the same name in backend.\n\n\n\nNo such server.\n\n"
    )
    assert split_answers(text) == [
        "New server registered.",
        "New server registered.",
        "Already exists a server with the same name in backend.",
        "",
        "",
        "No such server.",
    ]


def test_batches_are_cut_below_the_line_limit() -> None:
    from podgate.providers.haproxy_runtime import BATCH_CHARS, chunks

    lines = [f"set server be/podgate-10.0.{i // 250}.{i % 250}-8080 state drain" for i in range(1000)]
    cut = chunks(lines, BATCH_CHARS)
    assert [line for chunk in cut for line in chunk] == lines
    assert all(len("; ".join(chunk)) <= BATCH_CHARS for chunk in cut)
    longest = max(len(line) + 2 for line in lines)
    assert len(cut) <= -(-sum(len(line) + 2 for line in lines) // (BATCH_CHARS - longest))


def test_one_servers_commands_stay_on_one_connection() -> None:
    """``enable server`` on one connection and ``health down`` on the next would leave the
    server in rotation unchecked between them."""
    from podgate.providers.haproxy_runtime import chunks

    lines = [f"{verb} be/podgate-10.0.{i // 250}.{i % 250}-8080" for i in range(300) for verb in "abcd"]
    for limit in (150, 333, 1000, 8000):  # each above one group's length
        cut = chunks(lines, limit, group=4)
        assert [line for chunk in cut for line in chunk] == lines
        assert all(len(chunk) % 4 == 0 for chunk in cut)
        assert all(len("; ".join(chunk)) <= limit for chunk in cut)


@pytest.mark.parametrize(
    ("line", "service"),
    [
        # HAProxy 2.6's words in the ring (``format iso``), as the contract test sees them
        (
            "2026-12-05T14:13:18.909406+00:00 Server podgate.shop.web.80/podgate-10.0.0.1-8080 is UP, "
            "reason: Layer4 check passed, check duration: 0ms. 1 active and 0 backup servers online.",
            "shop/web",
        ),
        (
            "2026-12-05T14:13:19.1+00:00 Server podgate.shop.web.80/podgate-10.0.0.1-8080 is DOWN, "
            'reason: Layer4 connection problem, info: "Connection refused", check duration: 0ms.',
            "shop/web",
        ),
        # podgate's own commands wake nothing: the pass that made them reads the pool after them
        (
            "2026-12-05T14:13:18.5+00:00 Server podgate.shop.web.80/podgate-10.0.0.1-8080 is "
            "UP/READY (leaving forced maintenance).",
            None,
        ),
        (
            "2026-12-05T14:13:18.5+00:00 Server podgate.shop.web.80/podgate-10.0.0.1-8080 is DOWN, "
            "changed from CLI. 0 active and 0 backup servers left.",
            None,
        ),
        ("2026-12-05T14:13:18.5+00:00 backend podgate.shop.web.80 has no server available!", None),
        # a user's backend (attach mode) is no Service podgate provisioned
        ("2026-12-05T14:13:18.9+00:00 Server web/s1 is UP, reason: Layer4 check passed.", None),
    ],
)
def test_ring_lines_name_the_service_whose_server_turned_up_or_down(line: str, service: str | None) -> None:
    assert changed_service(line) == service


def test_a_stopping_worker_is_told_by_its_proxies_stopping() -> None:
    assert stopping(
        "2026-12-05T14:15:22.9+00:00 Proxy podgate.shop.web.80 stopped (cumulated conns: FE: 0, BE: 0)."
    )
    assert not stopping("2026-12-05T14:13:18.9+00:00 Server podgate.shop.web.80/podgate-10.0.0.1-8080 is UP")


def test_rendered_backends_log_their_state_changes_to_the_ring() -> None:
    pool = PoolSpec("shop", "web", 80, "http", "http", "TCP", HealthCheck("/healthz", 1.0, 2, 3))
    text = cfg.render("", {"shop/web": cfg.ServiceLB("127.200.0.1", [pool])})
    backend = text.split("\nbackend podgate.shop.web.80")[1].split("\nring ")[0]
    assert f"    log ring@{cfg.EVENTS_RING} local0 notice" in backend
    assert f"\nring {cfg.EVENTS_RING}\n" in cfg.render("", {})  # there before any Service
    assert cfg.service_of_backend("podgate.shop.web.80") == "shop/web"
    assert cfg.service_of_backend("web") is None and cfg.service_of_backend("podgate.a.b.c") is None
