"""A stand-in for HAProxy's runtime API socket, answering as HAProxy 2.6 does (verified on the
real one): ``a; b; c`` runs each command in order; each answer ends with an empty line, an empty
answer is the empty line alone, and ``del server``'s answer has no empty line after it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

#: a command → its answer's text ("" for a change made without a word); None: the connection is
#: dropped unanswered (HAProxy under load)
Answer = Callable[[str], str | None]


def terminated(command: str, text: str) -> str:
    if command.startswith("del server"):
        return text.rstrip("\n") + "\n"
    return text.rstrip("\n") + "\n\n" if text.strip() else "\n"


def cli(
    answer: Answer, seen: list[str] | None = None
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A connection handler for ``asyncio.start_unix_server``; ``seen`` gets every command."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode().strip()
        out = []
        for command in (c.strip() for c in line.split(";")):
            if not command:
                continue
            if seen is not None:
                seen.append(command)
            text = answer(command)
            if text is None:
                writer.transport.abort()
                return
            out.append(terminated(command, text))
        writer.write("".join(out).encode())
        writer.close()

    return handle


STAT_HEADER = "# pxname,svname,scur,status,check_status,check_desc,last_chk,addr\n"
SERVERS_STATE_HEADER = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n"


def one_server(backend: str, state: dict[str, Any]) -> Callable[[str], str]:
    """An HAProxy with one server, podgate-10.0.0.1-8080, as ``state`` says (``status``, and
    optionally ``check`` and ``admin``), for :func:`cli`."""

    def answer(line: str) -> str:
        if line.startswith("show stat"):
            row = f"{backend},podgate-10.0.0.1-8080,0,{state['status']},{state.get('check', 'L4OK')},,,"
            return STAT_HEADER + row + "10.0.0.1:8080\n"
        if line.startswith("show servers state"):
            admin = state.get("admin", 0)
            return SERVERS_STATE_HEADER + f"3 {backend} 1 podgate-10.0.0.1-8080 10.0.0.1 2 {admin}\n"
        return ""

    return answer
