"""HAProxy's structure behind the :class:`~podgate.providers.base.Provisioning` capability.

Provisioning: the controller owns the configuration file.  Structure (frontends, backends,
health checks) is rendered from every handled Service, checked with ``haproxy -c`` and applied
with a seamless reload through the master CLI, and only when it changed; targets never reload
(``haproxy_targets``).  A reload or restart starts a worker with none of the dynamic servers:
:meth:`HAProxyProvisioning.generation` changes and the controller re-syncs every Service.

Attach: the user's own HAProxy (an HA pair, say).  A Service annotation names an existing
backend; :meth:`~HAProxyProvisioning.provision` only checks it exists, and the generation still
tells the controller when the user's HAProxy reloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence

from podgate.model.lb import PoolSpec
from podgate.providers.base import ProviderError, ServiceLB
from podgate.providers.haproxy_runtime import MasterAPI
from podgate.providers.haproxy_state import StateFiles
from podgate.providers.haproxy_targets import HAPair

log = logging.getLogger(__name__)


async def check_config(text: str) -> None:
    """``haproxy -c`` on ``text``: a configuration HAProxy refuses never reaches the master,
    whose reload would keep the old worker and say so only in its log."""
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as f:
        f.write(text)
    try:
        proc = await asyncio.create_subprocess_exec(
            "haproxy",
            "-c",
            "-q",
            "-f",
            f.name,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise ProviderError(
            f"rendered HAProxy configuration is invalid: {out.decode(errors='replace')[-500:]}"
        )


class HAProxyProvisioning:
    """Provisioning with ``master`` and ``files`` (podgate renders and reloads); attach mode
    without either."""

    def __init__(
        self,
        pair: HAPair,
        master: MasterAPI | None = None,
        files: StateFiles | None = None,
        *,
        validate: bool = True,
        reload_timeout: float = 10.0,
    ) -> None:
        if (master is None) != (files is None):
            raise ValueError("provisioning HAProxy takes both its master CLI and its files, attach neither")
        self.pair, self.master, self.files = pair, master, files
        self.validate, self.reload_timeout = validate, reload_timeout
        self._services: dict[str, ServiceLB] = {}
        #: reloads made by this process
        self.reloads = 0

    @property
    def owns_config(self) -> bool:
        """Provisioning mode: podgate renders the configuration and reloads through the master."""
        return self.master is not None and self.files is not None

    async def provision(self, service_key: str, pools: Sequence[PoolSpec], address: str | None) -> str | None:
        if any(p.group for p in pools):
            missing = [p.group.id for p in pools if p.group]
            backends = set((await self.pair.on_each(lambda rt: rt.backends()))[0][1])
            absent = [b for b in missing if b not in backends]
            if absent:
                # the user's configuration, not an outage: retried with a growing back-off (a
                # reload of their HAProxy that adds the backend is found within 30 s)
                raise ProviderError(
                    f"HAProxy has no backend {', '.join(map(repr, absent))} to attach to", permanent=True
                )
            return None
        if self.files is None:
            raise ProviderError(
                "this HAProxy provider is in attach mode: annotate the Service with "
                "podgate.dev/haproxy-backend naming an existing backend",
                permanent=True,  # only the Service's annotation changes the answer (its edit requeues it)
            )
        if address is None:
            raise ProviderError("no load-balancer address for the Service")
        async with self.files.lock:
            self._services[service_key] = ServiceLB(address, list(pools))
            await self._apply()
        return address

    async def release(self, service_key: str) -> None:
        if self.files is None:
            return
        async with self.files.lock:
            if self._services.pop(service_key, None) is not None or not self.files.active:
                await self._apply()

    async def sync_all(self, services: Mapping[str, ServiceLB]) -> None:
        """Set the whole structure at once (controller start): no Service flickers out while
        the others are reconciled one by one."""
        if self.files is None:
            return
        async with self.files.lock:
            self._services = dict(services)
            await self._apply()

    async def _apply(self) -> None:
        """The structure into the file and HAProxy, if it changed: the registered targets and
        their state carried across the reload.  Under the files' lock."""
        assert self.files is not None and self.master is not None
        if not self.files.set_structure(self._services):
            return
        await self.files.carry()
        text = self.files.render()
        if self.validate:
            await check_config(text)
        self.files.write(text)
        before = await self._identity()
        await self.master.reload()
        self.reloads += 1
        await self._await_new_worker(before)
        log.info("HAProxy reloaded with %d Services", len(self._services))

    async def _identity(self) -> str:
        with contextlib.suppress(ProviderError):
            return await self.pair.runtimes[0].identity()
        return ""

    async def _await_new_worker(self, before: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reload_timeout
        while loop.time() < deadline:
            now = await self._identity()
            if now and now != before:
                return
            await asyncio.sleep(0.05)
        raise ProviderError(
            f"HAProxy did not start a new worker within {self.reload_timeout:.0f}s of the reload"
        )

    async def generation(self) -> str:
        """The workers' identities; with the ``reachable`` policy an unreachable member counts
        as one more state, so its return (a fresh worker, no dynamic servers) is a change."""
        answers = await asyncio.gather(*(rt.identity() for rt in self.pair.runtimes), return_exceptions=True)
        self.pair.reachable(answers)
        return ",".join(a if isinstance(a, str) else "unreachable" for a in answers)
