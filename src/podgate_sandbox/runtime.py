"""Container runtimes of the node agent: the built-in app, or a real local process.

Both present the same small surface (``start``, ``listening``, ``exited``, ``terminate``,
``kill``) so the pod lifecycle code never cares which one it drives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Protocol

from podgate_sandbox.app import AppSettings, ContainerApp


class Runtime(Protocol):
    listening: asyncio.Event
    exited: asyncio.Future[int]

    def start(self) -> None: ...

    async def terminate(self, grace: float) -> int: ...

    def kill(self) -> None: ...


def builtin(
    pod: str, namespace: str, container: str, ip: str, ports: list[int], env: dict[str, str]
) -> Runtime:
    return ContainerApp(pod, namespace, container, ip, ports, AppSettings.from_env(env))


class ProcessContainer:
    """A container's ``command`` run as a local process in its own process group.

    It runs as the node agent's user with the host's filesystem and network: no isolation at
    all. That is why the agent runs commands only when started with ``--run-commands``.
    """

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self._argv, self._env, self._log = argv, env, log
        self.listening = asyncio.Event()
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        self._log.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._log.open("ab") as out:
                self._proc = await asyncio.create_subprocess_exec(
                    *self._argv,
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self._env},
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    stdin=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                )
        except OSError as e:
            self.exited.set_exception(e)
            return
        self.listening.set()  # a process counts as started once it runs (kubelet: no probe = ready)
        code = await self._proc.wait()
        if not self.exited.done():
            self.exited.set_result(128 - code if code < 0 else code)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)

    async def terminate(self, grace: float) -> int:
        if self._proc is None:
            if self._task is not None:
                self._task.cancel()
            if not self.exited.done():
                self.exited.set_result(0)
            return 0
        self._signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(max(grace, 0.0)):
                return await asyncio.shield(self.exited)
        except TimeoutError:
            self._signal(signal.SIGKILL)
            return await self.exited

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        if self._task is not None and self._proc is None:
            self._task.cancel()
