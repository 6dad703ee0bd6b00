"""HAProxy reloads lose nothing: SIGUSR2 to the master (what ``systemctl reload haproxy`` does)
in the middle of a gated rollout under keep-alive load, with no retries or redispatch to hide
a failure, fails no request, keeps every UP server UP, and opens no gate for a target the new
worker has not checked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from podgate.kube.client import api_client
from podgate.providers.base import ProviderError
from podgate.providers.haproxy_runtime import Master, Runtime
from podgate_sandbox.controlplane import Sandbox
from podgate_sandbox.loadgen import LoadGenerator
from podgate_sandbox.rollout import RolloutLab

from .conftest import CONTROLLER_HEALTH_PORT, SandboxHandle, condition, grant, scrape, wait_for
from .test_controller import INJECT, all_ready, deployment, lb_service
from .test_haproxy_pair import attach_to

pytestmark = pytest.mark.sandbox
GATE = "service.readiness.podgate.dev/web"


async def test_sigusr2_in_the_middle_of_a_gated_rollout(sandbox: SandboxHandle) -> None:
    api = await api_client(str(sandbox.kubeconfig))
    runtime = Runtime(str(sandbox.state_dir / "haproxy" / "runtime.sock"))
    lab = RolloutLab(
        api, runtime.address, replicas=4, interval=0.5, rise=3, prefix="reload", retries=False, keepalive=True
    )
    master = json.loads((sandbox.state_dir / "pids.json").read_text())["haproxy"]
    workers: list[str] = []
    went_down: list[str] = []

    async def statuses() -> dict[str, str]:
        return {
            s.address: s.status for s in await runtime.servers(f"podgate.{lab.namespace('podgate')}.web.80")
        }

    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened: list[str] = []
    late: list[str] = []
    seen: list[str] = []

    async def reload_twice() -> None:
        # a client's spare keep-alive connections, idle across the reloads: the old worker
        # answers their last requests with its servers as they were at the reload
        for _ in range(8):
            idle.append(await asyncio.open_connection(ip, 80))
            opened.append(await _get(*idle[-1]))
        # while the first new targets are health-checked, then while old ones drain
        for delay in (1.0, 2.0):
            await asyncio.sleep(delay)
            before, up = await _identity(runtime), await statuses()
            os.kill(master, signal.SIGUSR2)
            deadline = time.monotonic() + 10
            while (now := await _identity(runtime)) == before and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            workers.append(now)
            # the new worker starts from the saved state: an UP server is UP at once, not after
            # rise checks (one podgate drained or removed meanwhile is no loss)
            after = await statuses()
            went_down.extend(
                f"{address}: {status} → {after[address]}"
                for address, status in up.items()
                if status.startswith("UP")
                and address in after
                and not after[address].startswith(("UP", "DRAIN", "MAINT"))
            )
        # once the old pods are drained in the new worker: each spare connection's last request
        await asyncio.sleep(3.0)
        seen.append(await _routing(sandbox, lab))  # to explain a failed late request
        late.extend([await _get(*connection) for connection in idle])
        for _, writer in idle:
            writer.close()

    try:
        ip = await lab.prepare("podgate")
        first = await _identity(runtime)
        result = await lab.round("podgate", ip, 0, during=reload_twice)
    finally:
        await lab.close()
        await api.close()
    assert len(set([first, *workers])) == 3, f"two reloads, each a new worker: {first}, {workers}"
    assert result.requests >= 200, "steady load through the EXTERNAL-IP"
    assert result.failed == 0, result.failures
    # the old worker routed them to pods still serving: their drains waited for it
    assert opened == ["200"] * 8, opened
    if late != ["200; close"] * 8:
        print("\n".join(seen))  # shown in full with the failure (an assertion message is cut)
    assert late == ["200; close"] * 8, late
    assert went_down == [], f"UP servers not UP in the new worker: {went_down}"
    pods = sandbox.get("pods", "-n", lab.namespace("podgate"))["items"]
    assert len(pods) == 4
    for p in pods:
        c = condition(p, GATE) or {}
        assert c.get("status") == "True", (p["metadata"]["name"], c)
        assert "is UP, check L7OK" in c.get("message", ""), c  # HAProxy's own passed check
    # rise passing checks at the least: (rise - 1) intervals after registration
    assert len(result.gate_latency_s) == 4, result.gate_latency_s
    assert min(result.gate_latency_s) >= (lab.rise - 1) * lab.interval, result.gate_latency_s
    # every target is in the file a reload starts from, with its saved state
    be = f"podgate.{lab.namespace('podgate')}.web.80"
    listed = (sandbox.state_dir / "haproxy" / "haproxy.cfg").read_text()
    for p in pods:
        assert f"{p['status']['podIP']}:8080" in listed
    assert (sandbox.state_dir / "haproxy" / "server-state" / be).exists()


async def _routing(sandbox: SandboxHandle, lab: RolloutLab) -> str:
    """Which pods each old worker routes ``web`` to, and which pods are alive: when a late
    request fails, the dead pod an old worker still routed to."""
    master = Master(str(sandbox.state_dir / "haproxy" / "master.sock"))
    be = f"podgate.{lab.namespace('podgate')}.web.80"
    lines = []
    for pid in await master.old_workers():
        rows = [f"{r.address} {r.status} ({r.sessions})" for r in await master.worker_servers(pid, be)]
        lines.append(f"old worker {pid}: " + ", ".join(rows))
    for p in sandbox.get("pods", "-n", lab.namespace("podgate"))["items"]:
        gone = " terminating" if p["metadata"].get("deletionTimestamp") else ""
        status = p["status"]
        lines.append(f"pod {p['metadata']['name']} {status.get('podIP')} {status.get('phase')}{gone}")
    events = sandbox.get("events", "-n", lab.namespace("podgate"))["items"]
    lines += [
        f"{e['involvedObject']['name']}: {e['reason']}: {e['message']}"
        for e in events
        if e["type"] == "Warning"
    ]
    _, text = scrape(CONTROLLER_HEALTH_PORT)
    lines += [line for line in text.splitlines() if line.startswith("podgate_drain_duration_seconds_count")]
    return "\n".join(lines)


async def _identity(runtime: Runtime) -> str:
    """The worker answering; a read HAProxy drops mid-reload (an error, not an answer) is asked
    again."""
    for _ in range(20):
        with contextlib.suppress(ProviderError):
            return await runtime.identity()
        await asyncio.sleep(0.05)
    return await runtime.identity()


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    """One GET on a kept connection: the status line, and "; close" when the answer closes it."""
    writer.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    try:
        async with asyncio.timeout(10):
            head = (await reader.readuntil(b"\r\n\r\n")).decode(errors="replace")
            lines = head.split("\r\n")
            fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            await reader.readexactly(int(fields.get("content-length", "0")))
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as e:
        return f"no answer: {type(e).__name__}"
    status = lines[0].split(" ", 2)[1]  # the pod's own version word is passed through
    return status + ("; close" if fields.get("connection", "").lower() == "close" else "")


#: the user's own HAProxy, set up as the README says so that its reloads lose nothing: a
#: server-template of podgate slots (placeholder name, addresses from the state file), and a
#: reload command that saves the servers' state first
USERS_CONFIG = """\
global
    stats socket {sock} mode 600 level admin expose-fd listeners
    server-state-file {state}
defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
frontend fe
    bind {ip}:{port}
    default_backend app
backend app
    balance roundrobin
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
    load-server-state-from-file global
    server-template podgate- 1-16 podgate.invalid:1 disabled init-addr last,0.0.0.0 check inter 500 rise 3
"""
USERS_IP, USERS_PORT = "127.78.0.5", 18095


async def test_the_users_reload_in_attach_mode_loses_nothing(
    sandbox: SandboxHandle, namespace: str, tmp_path: Path
) -> None:
    sock, state, cfg = tmp_path / "rt.sock", tmp_path / "server-state", tmp_path / "haproxy.cfg"
    cfg.write_text(USERS_CONFIG.format(sock=sock, state=state, ip=USERS_IP, port=USERS_PORT))
    master = subprocess.Popen(
        ["haproxy", "-W", "-S", str(tmp_path / "master.sock"), "-f", str(cfg)], stderr=subprocess.DEVNULL
    )
    runtime = Runtime(str(sock))

    async def users_reload() -> str:
        """``show servers state`` into the state file, then SIGUSR2: the user's reload command."""
        state.write_text(await runtime.command("show servers state"))
        before = await _identity(runtime)
        master.send_signal(signal.SIGUSR2)
        for _ in range(200):
            now = await _identity(runtime)
            if now != before:
                return now
            await asyncio.sleep(0.05)
        raise AssertionError("no new worker after the reload")

    try:
        await asyncio.to_thread(wait_for, "the user's HAProxy", sock.exists, 10, 0.05)
        with Sandbox(sandbox.state_dir).controller_replaced(env={}, log=f"attach-{namespace}.log") as swap:
            attach_to(swap, [str(sock)], "all")
            grant(sandbox, "haproxy", namespace, "app")
            sandbox.kubectl("label", "namespace", namespace, f"{INJECT}=enabled")
            annotations = {
                "podgate.dev/load-balancer-provider": "haproxy",
                "podgate.dev/haproxy-backend": "app",
            }
            sandbox.apply(lb_service("web", "web", "ClusterIP", **annotations), namespace)
            sandbox.apply(deployment("web", 3), namespace)
            await asyncio.to_thread(
                wait_for, "3 pods Ready", lambda: all_ready(sandbox, namespace, "web", 3), 60
            )
            load = LoadGenerator(f"http://{USERS_IP}:{USERS_PORT}/", rate=200, max_seconds=120)
            running = asyncio.create_task(load.run())
            await asyncio.sleep(1.0)
            sandbox.kubectl("rollout", "restart", "deployment/web", "-n", namespace)
            await asyncio.sleep(1.5)  # new targets in their health checks, old ones draining
            workers = [await users_reload()]
            await asyncio.sleep(1.5)
            workers.append(await users_reload())
            await asyncio.to_thread(
                sandbox.kubectl, "rollout", "status", "deployment/web", "-n", namespace, "--timeout=90s"
            )
            await asyncio.to_thread(
                wait_for,
                "the old pods gone",
                lambda: len(sandbox.get("pods", "-n", namespace)["items"]) == 3,
                60,
            )
            await asyncio.sleep(1.0)
            load.stop()
            result = await running
            ready = all_ready(sandbox, namespace, "web", 3) or []
            rows = await runtime.servers("app")
    finally:
        master.terminate()
        master.wait(10)
    assert len(set(workers)) == 2
    assert result.total >= 200, "steady load through the user's HAProxy"
    assert result.failed == 0, result.by_kind()
    # every pod is in a slot of the user's template, UP, in the worker the last reload started
    up = {r.address for r in rows if r.status.startswith("UP")}
    assert up == {f"{p['status']['podIP']}:8080" for p in ready}, rows
    assert all(r.name.startswith("podgate-") and r.name.count("-") == 1 for r in rows), rows
