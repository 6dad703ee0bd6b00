"""The HAProxy provider: provisioned load balancers (the sandbox's "cloud") or attach mode.

Three parts, each in its own module: the targets through the runtime API (``haproxy_targets``,
the :class:`~podgate.providers.base.TargetPool`), the structure by rendering and reloading
(``haproxy_provisioning``, the :class:`~podgate.providers.base.Provisioning` capability), and
the files a reload starts from (``haproxy_state``).  :class:`HAProxyProvider` puts them together
from the settings: provisioning mode with a master CLI and a configuration file, attach mode
(the user's own HAProxy, an HA pair say) without; in provisioning mode the servers' state
changes are followed as they happen (``haproxy_events``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from podgate.model import lb
from podgate.providers.base import Provider
from podgate.providers.haproxy_events import HAProxyStateChanges
from podgate.providers.haproxy_provisioning import HAProxyProvisioning
from podgate.providers.haproxy_runtime import Master, MasterAPI, Runtime, RuntimeAPI
from podgate.providers.haproxy_state import SaveOnRead, StateFiles
from podgate.providers.haproxy_targets import HAPair, HAProxyTargets


class HAProxyProvider:
    """One configured HAProxy (or HA pair), its parts built once.  ``runtimes``: each HAProxy's
    runtime API address, or the API itself (a fake in tests); ``master`` likewise stands in for
    ``master_address``.  Provisioning mode needs a master and ``config_path``."""

    #: attach mode: the Service names a backend of the user's own HAProxy
    GROUP_ANNOTATIONS = (lb.HAPROXY_BACKEND,)

    def __init__(
        self,
        runtimes: Sequence[str | RuntimeAPI],
        *,
        name: str = "haproxy",
        master_address: str | None = None,
        master: MasterAPI | None = None,
        config_path: Path | None = None,
        base_config: str = "",
        validate: bool = True,
        require_all: bool = True,
    ) -> None:
        self.name = name
        #: an HA pair with one HAProxy unreachable: True, pending gates wait (False, naming it);
        #: False, podgate decides on the reachable ones (and registers there)
        self.pair = HAPair([Runtime(rt) if isinstance(rt, str) else rt for rt in runtimes], require_all)
        if master is None and master_address:
            master = Master(master_address)
        self.files = None
        if master is not None and config_path is not None:
            self.files = StateFiles(self.pair.runtimes[0], config_path, base_config)
        self.pool = HAProxyTargets(
            self.pair,
            name=name,
            files=self.files,
            on_read=SaveOnRead(self.files) if self.files is not None else None,
            master=master if self.files is not None else None,
        )
        self.provisioning = HAProxyProvisioning(
            self.pair, master if self.files is not None else None, self.files, validate=validate
        )
        #: provisioning mode renders the ring of state changes (``haproxy_config.EVENTS_RING``),
        #: followed on the real sockets; attach mode (the user's configuration) is polled
        real = [rt for rt in self.pair.runtimes if isinstance(rt, Runtime)]
        self.changes = (
            HAProxyStateChanges(real)
            if self.files is not None and real and len(real) == len(self.pair.runtimes)
            else None
        )

    def provider(self) -> Provider:
        """The controller's record: no group binding, hence no finalizer (provisioned backends
        are podgate's own and rendered again at start; attached ones keep the user's servers)."""
        return Provider(
            self.pool, self.GROUP_ANNOTATIONS, provisioning=self.provisioning, changes=self.changes
        )
