"""Which cloud load-balancer groups a Service may bind: only one an administrator tagged for this
cluster and that Service.

A Service names its group in an annotation, and anyone who can edit a Service can write any
group id there; podgate's cloud credentials reach every group of the account.  So the group
itself must say who may use it, where only someone with cloud rights can write: two tags, as the
AWS Load Balancer Controller's ``elbv2.k8s.aws/cluster`` tags do for its own resources.
:data:`CLUSTER_TAG` is this cluster's name (``--cluster-name``), :data:`SERVICE_TAG` the
Service's ``namespace/name``.  The tags live on the group, so the answer survives a restart and
is the same on every replica; a cloud policy can scope the controller's credentials by the same
tag (README: the IAM and RAM policies).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping

from podgate.model.lb import Target

CLUSTER_TAG = "podgate.dev/cluster"
SERVICE_TAG = "podgate.dev/service"
#: the Event and gate-condition reason of a group refused for its tags
GROUP_NOT_OWNED = "GroupNotOwned"


def owner_tags(cluster: str, service_key: str) -> dict[str, str]:
    """The tags a group needs before the Service ``namespace/name`` of ``cluster`` may bind it."""
    return {CLUSTER_TAG: cluster, SERVICE_TAG: service_key}


def ownership_problem(group: str, tags: Mapping[str, str], cluster: str, service_key: str) -> str | None:
    """Why ``group`` (as a message names it) may not be bound by ``service_key``, or None when its
    tags say it is that Service's in this cluster.  Names the tag that is missing or says
    otherwise, and how an administrator tags the group."""
    wanted = owner_tags(cluster, service_key)
    how = "; an administrator tags it " + " and ".join(f"{k}={v}" for k, v in wanted.items())
    for key, value in wanted.items():
        have = tags.get(key)
        if have is None:
            return f"{group} has no tag {key}, so podgate may not bind it to Service {service_key}{how}"
        if have != value:
            whose = "cluster" if key == CLUSTER_TAG else "Service"
            return (
                f"{group} is tagged {key}={have}: it is another {whose}'s, not {value}'s; "
                f"podgate leaves it alone{how} if it is meant for Service {service_key}"
            )
    return None


# -- which targets in a group are podgate's -------------------------------------------------------
#
# A group may hold targets podgate did not put there (an administrator's instance, another
# tool's, a Service's targets from before the group changed hands): podgate lists, drains and
# removes only its own.  Alibaba's backends carry a description (:func:`own_description`); ELBv2
# targets carry nothing, so podgate keeps a record of what it registered in each target group,
# written before it registers (a crash in between leaves a recorded target that is not in the
# group, never one in the group that is not recorded).

#: seconds a recorded target absent from the group is kept before it is taken off the record: a
#: registration in flight when the group was read must not lose its record
RECORD_GRACE = 300.0


def own_description(service_key: str) -> str:
    """What podgate writes as an Alibaba backend's description, and so how it knows its own
    (CLB allows 80 characters)."""
    return f"podgate/{service_key}"[:80]


def record_name(group: str, service_key: str) -> str:
    """The name of the record (a ConfigMap in podgate's namespace) of the targets podgate
    registered in ``group`` for the Service: a hash, as a group id (an ARN) is no object name."""
    return "podgate-targets-" + hashlib.sha256(f"{group}\n{service_key}".encode()).hexdigest()[:24]


def service_hash(service_key: str) -> str:
    """A label value naming the Service (a ``namespace/name`` is no label value)."""
    return hashlib.sha256(service_key.encode()).hexdigest()[:24]


def encode_record(targets: Mapping[Target, float]) -> str:
    """``ip:port recorded-at`` lines, sorted: the record's text."""
    return "".join(
        f"{t} {at:.0f}\n" for t, at in sorted(targets.items(), key=lambda kv: (kv[0].ip, kv[0].port))
    )


def decode_record(text: str) -> dict[Target, float]:
    """The record's targets and when each was recorded; a line that does not parse is dropped
    (a record is podgate's own writing: nothing else is expected there)."""
    out: dict[Target, float] = {}
    for line in text.splitlines():
        where, _, at = line.partition(" ")
        ip, _, port = where.rpartition(":")
        try:
            out[Target(ip, int(port))] = float(at)
        except ValueError:
            continue
    return out


def stale(recorded: Mapping[Target, float], present: Collection[Target], read_at: float) -> set[Target]:
    """Recorded targets that are no longer in the group (drained away, or a registration that
    never happened): absent from a read of the group that started ``RECORD_GRACE`` seconds or
    more after they were recorded."""
    return {t for t, at in recorded.items() if t not in present and read_at - at >= RECORD_GRACE}
