"""When the webhook's shared certificates rotate (pure: times in, one step out).

Every replica serves the one serving certificate kept in a Secret, and the API server trusts the
CA bundle registered with the webhook configuration.  A serving certificate can be replaced at any
time (its CA is unchanged, every replica picks it up); a CA cannot: the API server would reject
every replica still serving a certificate of the old CA.  So a CA rotates in three steps, each
taken by whichever replica sees it due first (the Secret's resourceVersion makes it one):

1. ``ADD_NEXT_CA``: a new CA is put beside the current one, in the bundle only;
2. ``PROMOTE_NEXT_CA`` (once the bundle with both has had ``settle`` seconds to reach the API
   server): the new CA signs a new serving certificate; the old CA stays in the bundle;
3. ``DROP_PREVIOUS_CA``: once every live replica says it serves that certificate (each writes
   what it serves, at least every ``settle / 3`` seconds; one silent for ``settle`` is gone).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Step(StrEnum):
    NOTHING = "nothing"
    ADD_NEXT_CA = "add-next-ca"
    PROMOTE_NEXT_CA = "promote-next-ca"
    RENEW_SERVING = "renew-serving"
    DROP_PREVIOUS_CA = "drop-previous-ca"


@dataclass(frozen=True)
class Validity:
    """A certificate's lifetime, in seconds since the epoch."""

    not_before: float
    not_after: float

    def renewal_due(self, renew_at: float) -> float:
        """The moment a fraction ``renew_at`` of the lifetime has passed."""
        return self.not_before + (self.not_after - self.not_before) * renew_at


@dataclass(frozen=True)
class RotationPolicy:
    #: lifetime of a serving certificate and of a CA, in seconds
    validity: float = 365 * 86400.0
    ca_validity: float = 10 * 365 * 86400.0
    #: the fraction of a lifetime after which a certificate is replaced
    renew_at: float = 2 / 3
    #: seconds for a change to reach every replica and the API server; replicas report what they
    #: serve at least every third of it
    settle: float = 60.0

    @property
    def report_every(self) -> float:
        return self.settle / 3


@dataclass(frozen=True)
class Served:
    """What one replica last said it serves: the certificate's fingerprint, and when it said so."""

    fingerprint: str
    at: float


@dataclass(frozen=True)
class CertState:
    """The Secret, as far as rotation is concerned."""

    ca: Validity
    serving: Validity
    serving_fingerprint: str
    #: when a next CA was added (step 1), if one is waiting
    next_ca_since: float | None = None
    #: when the current CA took over (step 2), while the previous one is still trusted
    previous_ca_since: float | None = None
    served: Mapping[str, Served] = field(default_factory=dict)
    #: names (DNS and IP) the replica looking needs and the serving certificate lacks: a Secret
    #: made by a replica reached another way (by URL, another Service) must not be served as is
    missing_names: frozenset[str] = frozenset()


def live_replicas(served: Mapping[str, Served], now: float, policy: RotationPolicy) -> dict[str, Served]:
    """The replicas that reported within ``settle``: the others are gone (or cut off, and then
    the API server does not reach them either)."""
    return {r: s for r, s in served.items() if now - s.at < policy.settle}


def next_step(state: CertState, now: float, policy: RotationPolicy) -> Step:
    """The one change the Secret needs now, if any."""
    if state.next_ca_since is not None:
        return Step.PROMOTE_NEXT_CA if now - state.next_ca_since >= policy.settle else Step.NOTHING
    if state.previous_ca_since is not None:
        live = live_replicas(state.served, now, policy)
        if now - state.previous_ca_since >= policy.settle and all(
            s.fingerprint == state.serving_fingerprint for s in live.values()
        ):
            return Step.DROP_PREVIOUS_CA
    elif now >= state.ca.renewal_due(policy.renew_at):
        return Step.ADD_NEXT_CA
    if now >= state.serving.renewal_due(policy.renew_at) or state.missing_names:
        return Step.RENEW_SERVING
    return Step.NOTHING


def should_report(mine: Served | None, fingerprint: str, now: float, policy: RotationPolicy) -> bool:
    """Whether a replica writes what it serves: on a change, and often enough to count as live."""
    return mine is None or mine.fingerprint != fingerprint or now - mine.at >= policy.report_every
