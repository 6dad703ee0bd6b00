"""The sandbox's cloud-like data plane (podgate_sandbox.dataplane) against a stand-in HAProxy
runtime socket: out-of-rotation commands of a delayed Service are held, answered as HAProxy
would, and applied late and in order; everything else passes through."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from podgate.providers.haproxy_runtime import Runtime, following
from podgate_sandbox.dataplane import (
    PROPAGATION,
    REGISTRATION,
    DataPlane,
    Delays,
    backend_service,
    parse_delays,
)

SLOW = "podgate.shop.web.80"
FAST = "podgate.shop.api.80"


async def stand_in(path: Path, seen: list[tuple[float, str]]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode().strip()
        seen.append((time.monotonic(), line))
        if line.startswith("del server"):
            writer.write(b"Server deleted.\n")
        elif line.startswith("show info"):
            writer.write(b"Pid: 1\nStart_time_sec: 2\n")
        writer.close()

    return await asyncio.start_unix_server(handle, str(path))


async def slow_web_plane(
    tmp_path: Path, seen: list[tuple[float, str]]
) -> tuple[asyncio.Server, asyncio.Server, Runtime]:
    """The stand-in HAProxy, the data plane in front of it (0.3 s for SLOW, nothing for FAST),
    and a runtime client of the plane."""
    server = await stand_in(tmp_path / "haproxy.sock", seen)
    plane = DataPlane(str(tmp_path / "haproxy.sock"), lambda b: Delays(0.3) if b == SLOW else Delays())
    front = await asyncio.start_unix_server(plane.client, str(tmp_path / "plane.sock"))
    return server, front, Runtime(str(tmp_path / "plane.sock"))


async def test_a_drain_is_held_for_the_propagation_delay_and_applied_once(tmp_path: Path) -> None:
    seen: list[tuple[float, str]] = []
    server, front, rt = await slow_web_plane(tmp_path, seen)
    try:
        t0 = time.monotonic()
        assert await rt.drain_servers(SLOW, ["podgate-10.0.0.1-8080"]) == []
        assert (
            await rt.drain_servers(SLOW, ["podgate-10.0.0.1-8080"]) == []
        )  # the leader asks again: held once
        assert await rt.drain_servers(FAST, ["podgate-10.0.0.2-8080"]) == []
        await rt.identity()
        await rt.remove_servers(SLOW, ["podgate-10.0.0.1-8080"])  # answered "deleted" at once
        assert [line for _, line in seen] == [
            "set server podgate.shop.api.80/podgate-10.0.0.2-8080 state drain",
            "show info",
        ]
        await asyncio.sleep(0.5)
    finally:
        front.close()
        server.close()
    held = [(t - t0, line) for t, line in seen if "podgate.shop.web" in line]
    assert [line for _, line in held] == [
        "set server podgate.shop.web.80/podgate-10.0.0.1-8080 state drain",
        "set server podgate.shop.web.80/podgate-10.0.0.1-8080 state maint",
        "del server podgate.shop.web.80/podgate-10.0.0.1-8080",
    ]
    assert all(0.3 <= t < 0.45 for t, _ in held)


async def test_a_new_servers_checks_start_after_the_registration_delay(tmp_path: Path) -> None:
    seen: list[tuple[float, str]] = []
    server = await stand_in(tmp_path / "haproxy.sock", seen)
    plane = DataPlane(str(tmp_path / "haproxy.sock"), lambda b: Delays(registration=(0.2, 0.2)))
    t0 = time.monotonic()
    try:
        await plane.command(f"add server {SLOW}/s1 10.0.0.1:8080 check")
        await plane.command(f"enable health {SLOW}/s1")
        await plane.command(f"enable server {SLOW}/s1")  # queued behind, in order
        assert [line for _, line in seen] == [f"add server {SLOW}/s1 10.0.0.1:8080 check"]
        await asyncio.sleep(0.35)
    finally:
        server.close()
    assert [line for _, line in seen][1:] == [f"enable health {SLOW}/s1", f"enable server {SLOW}/s1"]
    assert seen[1][0] - t0 >= 0.2


def test_annotations_and_backend_names() -> None:
    assert parse_delays({PROPAGATION: "5s", REGISTRATION: "2-10"}) == Delays(5.0, (2.0, 10.0))
    assert parse_delays({PROPAGATION: "soon"}) == Delays()
    assert parse_delays(None) == Delays()
    assert backend_service("podgate.shop.web.80") == "shop/web"
    assert backend_service("users-backend") is None


async def test_a_batch_of_changes_is_held_or_passed_command_by_command(tmp_path: Path) -> None:
    """podgate sends changes as one ``a; b`` line: the slow Service's drain is still held, the
    other's applied at once, and the answer splits into one per command, as HAProxy's does."""
    seen: list[tuple[float, str]] = []
    server, front, rt = await slow_web_plane(tmp_path, seen)
    try:
        answers = await rt.changes(
            [
                f"set server {SLOW}/podgate-10.0.0.1-8080 state drain",
                f"set server {FAST}/podgate-10.0.0.2-8080 state drain",
            ]
        )
        assert answers == ["", ""]
        assert [line for _, line in seen] == [f"set server {FAST}/podgate-10.0.0.2-8080 state drain"]
        await asyncio.sleep(0.45)
    finally:
        front.close()
        server.close()
    assert [line for _, line in seen][1:] == [f"set server {SLOW}/podgate-10.0.0.1-8080 state drain"]


async def test_a_followed_ring_passes_through_line_by_line_as_haproxy_writes_it(tmp_path: Path) -> None:
    """``show events RING -w`` never ends: the plane pipes it (a cloud's API tells health changes
    too), so podgate hears each line when HAProxy writes it, not when the answer would end."""
    written = asyncio.Event()

    async def ring(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"Server podgate.shop.web.80/podgate-10.0.0.1-8080 is UP, reason: Layer4 check passed\n")
        await writer.drain()
        await written.wait()  # the connection stays open, as HAProxy's does

    server = await asyncio.start_unix_server(ring, str(tmp_path / "haproxy.sock"))
    plane = DataPlane(str(tmp_path / "haproxy.sock"), lambda b: Delays())
    front = await asyncio.start_unix_server(plane.client, str(tmp_path / "plane.sock"))
    try:
        async with following(
            str(tmp_path / "plane.sock"), "show events podgate-state-changes -w -n"
        ) as lines:
            async with asyncio.timeout(2):
                first = await anext(aiter(lines))
        assert first.endswith("is UP, reason: Layer4 check passed")
    finally:
        written.set()
        front.close()
        server.close()
