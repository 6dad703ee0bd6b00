"""podgate's HAProxy runtime client (``haproxy_runtime.Runtime``) on a stand-in socket that answers
as HAProxy 2.6 does (``tests/unit/haproxy_cli.py``): reads repeated once, changes never, and the
state dump a reload starts from."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from podgate.providers.base import ProviderError
from podgate.providers.haproxy_runtime import Master, NoSuchBackend, Runtime, Unreachable
from tests.unit.haproxy_cli import cli, one_server

BACKEND = "podgate.shop.web.80"


async def test_a_read_whose_connection_is_dropped_is_asked_again_once_a_change_never(tmp_path: Path) -> None:
    """Under load HAProxy drops a CLI connection now and then before answering: a read (``show``,
    which always answers something) is repeated once; a change is not (it may have been made)."""
    seen: list[str] = []

    def answer(line: str) -> str | None:
        if seen.count(line) == 1:  # the first of each: dropped unanswered
            return None
        return "Pid: 42"

    sock = tmp_path / "runtime.sock"
    server = await asyncio.start_unix_server(cli(answer, seen), str(sock))
    rt = Runtime(str(sock))
    try:
        assert "Pid: 42" in await rt.command("show info")
        # a change that succeeded answers nothing, too: it is never sent twice
        with contextlib.suppress(ProviderError):
            await rt.command("set server be/s state drain")
    finally:
        server.close()
    assert seen == ["show info", "show info", "set server be/s state drain"]


async def test_a_read_is_asked_twice_at_most(tmp_path: Path) -> None:
    """Once again only: a read dropped twice is an error for the caller to read afresh later,
    never an empty answer: "no rows" would say every target is gone, and a drain hook would
    stop a pod an old worker still routes to.  A failure of the second try goes to the caller."""
    seen: list[str] = []
    sock = tmp_path / "runtime.sock"
    server = await asyncio.start_unix_server(cli(lambda line: None, seen), str(sock))
    try:
        with pytest.raises(ProviderError, match="show answered nothing"):
            await Runtime(str(sock)).command("show backend")
        with pytest.raises(ProviderError, match="show answered nothing"):
            await Runtime(str(sock)).servers(BACKEND)
    finally:
        server.close()
    assert seen == ["show backend"] * 2 + [f"show servers state {BACKEND}"] * 2  # each asked twice, no more
    with pytest.raises(Unreachable):
        await Runtime(str(tmp_path / "nobody.sock")).command("show info")


async def test_an_haproxy_that_accepts_and_never_answers_is_unreachable(tmp_path: Path) -> None:
    """A stopped HAProxy (SIGSTOP, a wedged worker) still accepts on its socket and answers
    nothing: that is an HAProxy podgate cannot reach (``reachable`` decides without it), for a
    read and a change alike, not a refusal."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    sock = tmp_path / "stopped.sock"
    server = await asyncio.start_unix_server(silent, str(sock))
    rt = Runtime(str(sock), timeout=0.2)
    try:
        with pytest.raises(Unreachable, match=r"did not answer show within 0\.2s"):
            await rt.command("show info")
        with pytest.raises(Unreachable):
            await rt.command("set server be/s state drain")
    finally:
        server.close()
        for w in held:
            w.close()


async def test_the_state_dump_is_a_server_state_file_or_an_error(tmp_path: Path) -> None:
    """What ``load-server-state-from-file`` reads begins with the format's version line; HAProxy's
    complaint instead is an error, and a backend it does not have is one a save can drop."""

    def answer(line: str) -> str:
        if line == "show servers state podgate.shop.gone.80":
            return "Can't find backend."
        if line == "show servers state podgate.shop.busy.80":
            return "Permission denied? no: something else"
        return one_server(BACKEND, {"status": "UP"})(line)

    sock = tmp_path / "runtime.sock"
    server = await asyncio.start_unix_server(cli(answer), str(sock))
    rt = Runtime(str(sock))
    try:
        text = await rt.server_state(BACKEND)
        with pytest.raises(NoSuchBackend, match="Can't find backend"):
            await rt.server_state("podgate.shop.gone.80")
        with pytest.raises(ProviderError) as error:
            await rt.server_state("podgate.shop.busy.80")
        with pytest.raises(NoSuchBackend, match=r"no backend 'podgate\.shop\.gone\.80'"):
            await rt.servers("podgate.shop.gone.80")
    finally:
        server.close()
    assert text.startswith("1\n") and "podgate-10.0.0.1-8080" in text
    assert not isinstance(error.value, NoSuchBackend)


async def test_the_master_reads_no_old_worker_from_silence_only_from_its_words(tmp_path: Path) -> None:
    """The master CLI, through which a drain waits for old workers: a read it drops (as it does
    while it re-executes itself on a reload) is an error, never "no old worker" or "no
    connection"; a worker that exited, or that has no such proxy, is HAProxy's own word for
    none; any other answer is an error too."""
    answers: dict[str, str | None] = {
        "show proc": None,
        "@!7 show stat fe.shop.web.80 1 -1": "Can't find the target PID matching the prefix '@!7'",
        "@!8 show stat podgate.shop.web.80 4 -1": "No such proxy.",
        "@!9 show stat fe.shop.web.80 1 -1": "Unknown command, but this is the master CLI",
    }
    sock = tmp_path / "master.sock"
    server = await asyncio.start_unix_server(cli(answers.__getitem__), str(sock))
    master = Master(str(sock))
    try:
        with pytest.raises(ProviderError, match="show proc answered nothing"):
            await master.old_workers()
        assert await master.worker_connections(7, "fe.shop.web.80") == 0
        assert await master.worker_servers(8, BACKEND) == []
        with pytest.raises(ProviderError, match="HAProxy worker 9: unexpected answer"):
            await master.worker_connections(9, "fe.shop.web.80")
    finally:
        server.close()


async def test_a_delete_still_refused_after_its_sessions_are_cut_is_an_error_the_others_are_done(
    tmp_path: Path,
) -> None:
    """``remove_servers``: maintenance and deletes each in one batch; the refused delete's
    sessions cut and deleted again; a server that stays is named in the error, after the others
    are gone; an answer that does not count one line a delete is an error, not a guess."""
    seen: list[str] = []
    stuck = {"be/a": "Server still has connections attached to it, cannot remove it."}

    def answer(line: str) -> str | None:
        if line.startswith("del server "):
            return stuck.get(line.split()[2], "Server deleted.")
        return "No such server." if line.endswith("be/gone state maint") else ""

    sock = tmp_path / "runtime.sock"
    server = await asyncio.start_unix_server(cli(answer, seen), str(sock))
    rt = Runtime(str(sock))
    try:
        with pytest.raises(ProviderError, match=r"del server be/a: Server still has connections"):
            await rt.remove_servers("be", ["a", "b", "gone"])
        assert seen == [
            "set server be/a state maint",
            "set server be/b state maint",
            "set server be/gone state maint",
            "del server be/a",
            "del server be/b",
            "shutdown sessions server be/a",
            "del server be/a",
        ]
        seen.clear()
        stuck.clear()
        await rt.remove_servers("be", ["a", "b"])
        assert [s for s in seen if s.startswith("del")] == ["del server be/a", "del server be/b"]
        stuck["be/a"] = "Server deleted.\nsomething else"
        with pytest.raises(ProviderError, match="answered 3 of 2 del server"):
            await rt.remove_servers("be", ["a", "b"])
    finally:
        server.close()
