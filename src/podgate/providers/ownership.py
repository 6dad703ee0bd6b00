"""The cloud providers' ownership check (:mod:`podgate.model.ownership`), read from the cloud on
every bind.

A group accepted is remembered for :data:`ACCEPT_TTL` seconds, so a Service reconciled every poll
period does not read its group's tags each time; a refusal is never remembered, and nothing
here decides anything a restart could lose: the tags are the truth, read again at the latest
:data:`ACCEPT_TTL` after an administrator changes them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

from podgate.model.ownership import ownership_problem
from podgate.providers.base import NotOwned

#: seconds an accepted group is not read again for the same Service
ACCEPT_TTL = 30.0


class Ownership:
    """One provider's check: ``cluster`` is ``--cluster-name`` (None: every group is refused,
    with a message saying what is missing)."""

    def __init__(
        self, cluster: str | None, ttl: float = ACCEPT_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cluster, self.ttl, self.clock = cluster, ttl, clock
        self._accepted: dict[tuple[str, str], float] = {}  # (group id, Service key) → when

    def fresh(self, group_id: str, service_key: str) -> bool:
        """Whether the group was accepted for the Service less than ``ttl`` seconds ago."""
        at = self._accepted.get((group_id, service_key))
        return at is not None and self.clock() - at < self.ttl

    async def check(
        self,
        group: str,
        group_id: str,
        service_key: str,
        read_tags: Callable[[], Awaitable[Mapping[str, str]]],
    ) -> None:
        """Raise :class:`NotOwned` unless the group's tags (``read_tags``, unless accepted within
        ``ttl``) give it to this cluster and ``service_key``.  ``group`` names it in messages."""
        if self.fresh(group_id, service_key):
            return
        self._accepted.pop((group_id, service_key), None)
        if self.cluster is None:
            raise NotOwned(f"{group}: podgate has no --cluster-name, so it can tell no group it may bind")
        problem = ownership_problem(group, await read_tags(), self.cluster, service_key)
        if problem is not None:
            raise NotOwned(problem)
        now = self.clock()
        for key in [k for k, at in self._accepted.items() if now - at >= self.ttl]:
            del self._accepted[key]  # bounded by the groups bound within the last ttl
        self._accepted[(group_id, service_key)] = now

    def forget(self, service_key: str) -> None:
        """The Service let go of its groups: the next bind reads their tags again."""
        for key in [k for k in self._accepted if k[1] == service_key]:
            del self._accepted[key]
