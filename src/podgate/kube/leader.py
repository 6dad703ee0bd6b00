"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

The leader renews the Lease every ``retry_period``; a candidate takes it over once it has
seen the Lease's record unchanged for ``leaseDurationSeconds`` of its own clock (client-go's
observed-time rule: the holder's ``renewTime`` is another machine's wall clock, never compared
with ours).  Updates carry the Lease's resourceVersion, so two candidates can never both win the
same round.  A leader that cannot renew within ``renew_deadline`` of a renewal's start steps
down.

Fencing (:meth:`LeaderElector.fence`), before every write: a write is sent only while the last
renewal is younger than ``renew_deadline``, and it must end (answer or give up) before that
renewal is ``renew_deadline + retry_period`` old, when this leader would step down anyway: less
than a lease duration by the margin client-go's own step-down relies on, so no other replica can
have taken the lease over (it waits a whole lease duration after it last saw the record
change).  A deposed leader, or one whose renewals or writes hang, never keeps writing.  What no
client can prevent: an API server that stalls with a request already in its socket (a frozen
process, a stalled network) may still act on it after the client gave up; the request's
``Audit-ID`` says when it was sent (:func:`podgate.kube.client.audit_id`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import cast

from podgate.kube.api import LEASES, Kube, NotFound
from podgate.model.types import Lease, LeaseSpec

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Fenced(RuntimeError):
    """A write refused because this replica's lease is not fresh."""


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        self.kube = kube
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration, self.renew_deadline, self.retry_period = (
            lease_duration,
            renew_deadline,
            retry_period,
        )
        self.is_leader = False
        self.transitions = 0
        self.clock = clock
        #: the Lease's record as last read, and when (our clock) it was first seen so
        self._observed: tuple[Hashable, float] | None = None
        #: when (our clock) the last renewal that succeeded was sent
        self._renewed_at = -float("inf")

    async def run(self, on_started: Callable[[], None], on_stopped: Callable[[], None]) -> None:
        """Campaign forever; calls ``on_started`` on winning and ``on_stopped`` on losing."""
        while True:
            if await self.try_acquire_or_renew():
                if not self.is_leader:
                    self.is_leader = True
                    log.info("became leader (%s/%s as %s)", self.namespace, self.name, self.identity)
                    on_started()
                await self._renew_loop()
                self.is_leader = False
                log.warning("lost leadership (%s/%s)", self.namespace, self.name)
                on_stopped()
            await asyncio.sleep(self.retry_period)

    async def _renew_loop(self) -> None:
        """Every ``retry_period``, renew: attempts (each bounded by what is left) until one
        succeeds within ``renew_deadline`` of the renewal's start, as client-go's renew does;
        none in time and the lease is given up."""
        while True:
            await asyncio.sleep(self.retry_period)
            deadline = self.clock() + self.renew_deadline
            while not await self._attempt(deadline - self.clock()):
                if self.clock() + self.retry_period >= deadline:
                    return
                await asyncio.sleep(self.retry_period)

    async def _attempt(self, seconds: float) -> bool:
        """One round, at most ``seconds`` long (a hung request cannot outlast the deadline)."""
        try:
            async with asyncio.timeout(max(seconds, 0.0)):
                return await self.try_acquire_or_renew()
        except TimeoutError:
            log.warning("renewing lease %s/%s took longer than the renew deadline", self.namespace, self.name)
            return False

    def fresh(self) -> bool:
        """Whether this replica holds the lease by a renewal younger than ``renew_deadline``: a
        write may be sent."""
        return self.is_leader and self.clock() - self._renewed_at < self.renew_deadline

    def write_budget(self) -> float:
        """Seconds a write sent now may take: until the last renewal is ``renew_deadline +
        retry_period`` old (when this leader steps down unless it renewed; still less than a
        lease duration, so no other replica can lead before it)."""
        return self._renewed_at + self.renew_deadline + self.retry_period - self.clock()

    def fence(self) -> float:
        """Raise :class:`Fenced` unless the lease is :meth:`fresh`; else the seconds the write
        may take (:meth:`write_budget`), which the writer bounds it by.  Called before every
        write to a load balancer or a gate."""
        if not self.fresh():
            raise Fenced(f"the leader lease {self.namespace}/{self.name} is not fresh: not writing")
        return self.write_budget()

    async def try_acquire_or_renew(self) -> bool:
        """One round of the election: take the Lease if it is free or expired, renew it if it
        is ours; whether this replica holds it now."""
        try:
            lease = cast(Lease, await self.kube.get(LEASES, self.name, self.namespace))
        except NotFound:
            return await self._create()
        except Exception as e:
            log.warning("reading lease %s/%s: %s", self.namespace, self.name, e)
            return False
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        started = self.clock()
        record = (holder, spec.get("renewTime"), spec.get("acquireTime"), spec.get("leaseTransitions"))
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, started)
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and started - self._observed[1] < duration:
            return False
        now = _now()
        new_spec: LeaseSpec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration),
            "renewTime": now,
            "acquireTime": spec.get("acquireTime") if holder == self.identity else now,
            "leaseTransitions": int(spec.get("leaseTransitions") or 0)
            + (0 if holder == self.identity else 1),
        }
        body: Lease = {
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": lease["metadata"]["resourceVersion"],
            },
            "spec": new_spec,
        }
        try:
            await self.kube.replace(LEASES, self.name, body, self.namespace)
        except Exception as e:  # Conflict: someone else won this round
            log.debug("lease update lost: %s", e)
            return False
        if holder != self.identity:
            self.transitions += 1
        self._renewed_at = started
        return True

    async def release(self) -> None:
        """Give the Lease up at shutdown, so a successor need not wait for it to expire."""
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            lease = cast(Lease, await self.kube.get(LEASES, self.name, self.namespace))
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"].update({"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _now()})
            await self.kube.replace(LEASES, self.name, lease, self.namespace)
            log.info("released the leader lease")
        except Exception as e:
            log.warning("could not release the leader lease: %s", e)

    async def _create(self) -> bool:
        now = _now()
        body: Lease = {
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        started = self.clock()
        try:
            await self.kube.create(LEASES, body, self.namespace)
        except Exception as e:
            log.debug("lease create lost: %s", e)
            return False
        self._renewed_at = started
        return True
