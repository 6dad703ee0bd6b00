"""A stopping controller stops: cancelling a task that is talking to HAProxy ends it.

CI once saw a SIGTERM'd controller keep reconciling for 20 s: on Python 3.11 ``asyncio.wait_for``
drops a cancellation that arrives just as its inner call completes, and the controller's loops
call HAProxy's CLI many times a second.  This drives ``haproxy_runtime.send`` in a loop against a
local socket that answers at once (the shape of HAProxy's CLI) and cancels it at random moments:
every cancellation must end the task.  With ``wait_for`` inside ``send``, about half did not.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from podgate.providers import haproxy_runtime


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()
    writer.write(b"ok\n")
    writer.close()


async def test_a_loop_of_cli_calls_is_cancelled_every_time(tmp_path: Path) -> None:
    path = str(tmp_path / "cli.sock")
    server = await asyncio.start_unix_server(_answer, path)
    rng = random.Random(7)

    async def poll_forever() -> None:
        while True:
            await haproxy_runtime.send(path, "show info")

    lost = 0
    async with server:
        for _ in range(150):
            task = asyncio.create_task(poll_forever())
            await asyncio.sleep(rng.random() * 0.01)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=1.0)
            if not done:
                lost += 1
                while not task.done():  # cancel again until it goes, for the next round
                    task.cancel()
                    await asyncio.wait([task], timeout=0.1)
            assert task.cancelled()
    assert lost == 0, f"{lost} of 150 cancellations were lost: the task kept running"
