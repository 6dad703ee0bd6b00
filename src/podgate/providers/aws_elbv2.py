"""AWS ELBv2 provider: a Service port bound to an existing IP-type target group.

podgate registers pod IPs in the target group, reads ``DescribeTargetHealth`` and gates on it,
with ELB's own reason and description in the condition.  A target group is bound only when its
tags give it to this cluster and Service (:mod:`podgate.model.ownership`, ``DescribeTags``), and
podgate touches only the targets it registered (its records).  Draining is ELB's: ``drain`` is
``DeregisterTargets``, after which the target group reports the target ``draining`` for its
deregistration delay; the drain hook counts it drained :data:`DRAIN_PROPAGATION` seconds into
that, once no new request reaches it.  Credentials come from the standard chain (environment,
shared files, web identity for IRSA) and ``AWS_ENDPOINT_URL`` is honoured, both by botocore
itself.  Every call goes through podgate's retry loop (:mod:`podgate.providers.retry`: a token per
attempt, throttling backed off with jitter), with botocore's own retries off so they do not nest
inside it; any other error is a ProviderError, which never opens a gate.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from podgate.model import lb
from podgate.model.lb import Health, PoolSpec, Target, TargetHealth
from podgate.model.ownership import stale
from podgate.model.ratelimit import BucketRegistry, TokenBucket
from podgate.providers.base import AdminState, Provider, ProviderError, TargetRecords, TargetState
from podgate.providers.ownership import Ownership
from podgate.providers.retry import Retry

THROTTLING = frozenset(
    {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}
)
BATCH = 200  # targets per Register/DeregisterTargets call, well within the API's limit
#: Seconds after a target turns ``draining`` before podgate counts it as out of rotation on every
#: load-balancer node.  AWS documents that ELB "stops sending requests to targets that are
#: deregistering" once they are ``draining`` and states no propagation time; this is podgate's
#: allowance for it (Application Load Balancers stop within seconds).  Network Load Balancers
#: were measured by users to keep opening connections to a draining target for 30-120 s
#: (kubernetes-sigs/aws-load-balancer-controller#2366, aws/containers-roadmap#470): no drain
#: budget of a 30 s grace period covers that; README says how to size the grace period then.
#: The drain hook does not wait for the end of ``draining``: that is the target group's
#: deregistration delay (300 s by default), for in-flight requests, which the pod serves anyway
#: until its grace period ends.
DRAIN_PROPAGATION = 10.0

_STATES: dict[str, tuple[Health, AdminState]] = {
    "initial": (Health.INITIAL, "ready"),
    "healthy": (Health.HEALTHY, "ready"),
    "unhealthy": (Health.UNHEALTHY, "ready"),
    "unhealthy.draining": (Health.DRAINING, "drain"),
    "draining": (Health.DRAINING, "drain"),
    "unused": (Health.UNREGISTERED, "ready"),
    "unavailable": (Health.UNKNOWN, "ready"),
}


def target_health(description: dict[str, Any], where: str) -> tuple[AdminState, TargetHealth]:
    """One ``TargetHealthDescription`` → admin state and health, ELB's reason and words kept."""
    th = description.get("TargetHealth") or {}
    state = str(th.get("State") or "unavailable")
    health, admin = _STATES.get(state, (Health.UNKNOWN, "ready"))
    reason = th.get("Reason")
    words = th.get("Description") or f"target is {state}"
    return admin, TargetHealth(health, f"{state}: {words}" if reason else words, where, reason)


def account_of(env: Mapping[str, str]) -> str:
    """Which AWS account the default credential chain will use, as far as the environment says
    without a call (the key of the shared token bucket): access key id, else the web-identity
    role (IRSA), else the profile.  Never a secret."""
    if env.get("AWS_ACCESS_KEY_ID"):
        return f"access key {env['AWS_ACCESS_KEY_ID']}"
    if env.get("AWS_ROLE_ARN"):
        return f"role {env['AWS_ROLE_ARN']}"
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE")
    return f"profile {profile}" if profile else "the default credentials"


def region_of(region: str | None, env: Mapping[str, str]) -> str:
    """The region botocore will use: the configured one, else the environment's."""
    return region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "the default region"


def is_throttling(e: Exception) -> bool:
    """Whether an error is ELB saying "slow down" (retried after a back-off)."""
    from botocore.exceptions import ClientError

    return isinstance(e, ClientError) and (e.response.get("Error") or {}).get("Code") in THROTTLING


def retry_after(e: Exception) -> float | None:
    """An HTTP ``Retry-After`` in seconds, if the answer carried one."""
    from botocore.exceptions import ClientError

    if not isinstance(e, ClientError):
        return None
    headers = (e.response.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
    try:
        return float(headers["retry-after"])
    except (KeyError, ValueError):
        return None


class AwsElbv2Provider:
    """The target seam and group binding (:class:`~podgate.providers.base.GroupBinding`) for
    ELBv2 target groups the user owns."""

    GROUP_ANNOTATIONS = (lb.AWS_TARGET_GROUP,)

    def __init__(
        self,
        name: str = "aws",
        region: str | None = None,
        *,
        records: TargetRecords,
        rate: float = 10.0,
        burst: int = 20,
        max_retries: int = 6,
        base_delay: float = 0.2,
        poll_interval: float = 1.0,
        buckets: BucketRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        cluster: str | None = None,
    ) -> None:
        """``records``: where the targets podgate registered are kept (ELBv2 targets carry no
        mark of who registered them).  ``cluster``: ``--cluster-name``, which the target groups'
        ownership tags must name.
        ``buckets``: the process's shared buckets (one per account and region, see
        :class:`~podgate.model.ratelimit.BucketRegistry`); None: a bucket of this provider's own."""
        self.name, self.region = name, region
        self.clock = clock
        #: target group ARN → target → when this replica first knew it draining (its own
        #: DeregisterTargets, else the first read that showed it): the drain hook's clock
        self._draining_since: dict[str, dict[Target, float]] = {}
        #: ELB checks every 5 s at the least: reading target health faster only spends API quota
        self.poll_interval = poll_interval
        bucket = (
            buckets.bucket("aws", account_of(os.environ), region_of(region, os.environ), rate, burst, name)
            if buckets is not None
            else TokenBucket(rate, burst)
        )
        # a throttled call is tried again within a poll interval (the bucket keeps the rate)
        self.retry = Retry(bucket, max_retries=max_retries, base_delay=base_delay, max_delay=poll_interval)
        self._client: Any = None
        self.ownership = Ownership(cluster)
        self.records = records
        #: (target group, Service) → when the last read of the group started and what it held:
        #: which records are stale (podgate.model.ownership.stale)
        self._last_read: dict[tuple[str, str], tuple[float, frozenset[Target]]] = {}
        self.epoch = time.time  # the records' clock: seconds since the epoch
        self._stack = contextlib.AsyncExitStack()

    def provider(self) -> Provider:
        """The controller's record: pods go into the user's target groups (a finalizer holds the
        Service until they are out again)."""
        return Provider(self, self.GROUP_ANNOTATIONS, binding=self, throttling=self.retry)

    async def _elbv2(self) -> Any:
        if self._client is None:
            from aiobotocore.session import get_session
            from botocore.config import Config

            session = get_session()
            # one attempt per call: podgate's loop retries (botocore's own retries would nest in
            # it); an explicit total_max_attempts also wins over AWS_MAX_ATTEMPTS and config files
            config = Config(retries={"total_max_attempts": 1})
            self._client = await self._stack.enter_async_context(
                session.create_client("elbv2", region_name=self.region, config=config)
            )
        return self._client

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def _call(self, operation: str, **params: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        client = await self._elbv2()
        try:
            return await self.retry.call(
                lambda: getattr(client, operation)(**params), is_throttling, retry_after
            )
        except ClientError as e:
            err = e.response.get("Error") or {}
            code, message = err.get("Code", "Unknown"), err.get("Message", "")
            raise ProviderError(f"AWS {operation}: {code}: {message}", permanent="NotFound" in code) from None
        except BotoCoreError as e:
            raise ProviderError(f"AWS {operation}: {e}") from None

    @staticmethod
    def _arn(pool: PoolSpec) -> str:
        if pool.group is None or pool.group.annotation != lb.AWS_TARGET_GROUP:
            raise ProviderError(
                f"Service {pool.service_key} needs the annotation "
                f"{lb.AWS_TARGET_GROUP} naming an IP-type target group",
                permanent=True,
            )
        return pool.group.id

    async def bind(self, service_key: str, pools: Sequence[PoolSpec]) -> None:
        """Each target group must exist, be of type ``ip`` and carry the ownership tags for this
        cluster and Service (``DescribeTags``); read again at most every
        :data:`~podgate.providers.ownership.ACCEPT_TTL` seconds once accepted."""
        for arn in sorted({self._arn(p) for p in pools}):
            if self.ownership.fresh(arn, service_key):
                continue
            answer = await self._call("describe_target_groups", TargetGroupArns=[arn])
            for tg in answer.get("TargetGroups") or ():
                if tg.get("TargetType") != "ip":
                    raise ProviderError(
                        f"target group {tg.get('TargetGroupArn')} has TargetType "
                        f"{tg.get('TargetType')!r}; podgate registers pod IPs and needs 'ip'",
                        permanent=True,
                    )
            await self.ownership.check(f"target group {arn}", arn, service_key, partial(self._tags, arn))

    async def _tags(self, arn: str) -> dict[str, str]:
        answer = await self._call("describe_tags", ResourceArns=[arn])
        return {
            str(t.get("Key")): str(t.get("Value") or "")
            for d in answer.get("TagDescriptions") or ()
            if d.get("ResourceArn") == arn
            for t in d.get("Tags") or ()
        }

    async def unbind(self, service_key: str) -> None:
        """The Service is gone or no longer podgate's: the targets podgate registered for it
        leave its target groups (found from the records, so also after a restart), and nothing
        else does; the groups themselves are the user's and stay."""
        for arn in await self.records.groups(service_key):
            recorded = await self.records.read(arn, service_key)
            answer = await self._call("describe_target_health", TargetGroupArn=arn)
            present = [
                t
                for d in answer.get("TargetHealthDescriptions") or ()
                if "Port" in (raw := d.get("Target") or {})
                and (t := Target(str(raw["Id"]), int(raw["Port"]))) in recorded
            ]
            await self._batched_arn("deregister_targets", arn, present)
            await self.records.remove(arn, service_key, list(recorded))
            self._last_read.pop((arn, service_key), None)
            self._draining_since.pop(arn, None)
        self.ownership.forget(service_key)

    async def targets(self, pool: PoolSpec) -> dict[Target, TargetState]:
        """The target group's targets podgate registered for this Service (by its record):
        another's target in the group is neither listed nor ever drained or removed.  A
        ``draining`` one is ``drained`` once it has been draining for :data:`DRAIN_PROPAGATION`
        (the load balancer has stopped sending it new requests), not at the end of the
        deregistration delay."""
        arn = self._arn(pool)
        read_at = self.epoch()
        answer = await self._call("describe_target_health", TargetGroupArn=arn)
        recorded = await self.records.read(arn, pool.service_key)
        now = self.clock()
        known = self._draining_since.pop(arn, {})
        draining: dict[Target, float] = {}
        out, present = {}, set()
        for d in answer.get("TargetHealthDescriptions") or ():
            t = d.get("Target") or {}
            if "Port" not in t:
                continue
            target = Target(str(t["Id"]), int(t["Port"]))
            present.add(target)
            if target not in recorded:
                continue
            admin, health = target_health(d, f"target group {arn.rsplit(':', 1)[-1]}")
            drained = False
            if admin == "drain":
                since = draining[target] = known.get(target, now)
                drained = now - since >= DRAIN_PROPAGATION
            out[target] = TargetState(admin, health, drained=drained)
        if draining:  # only targets still draining are remembered
            self._draining_since[arn] = draining
        self._last_read[(arn, pool.service_key)] = (read_at, frozenset(present))
        return out

    async def _batched(self, operation: str, pool: PoolSpec, targets: Sequence[Target]) -> None:
        await self._batched_arn(operation, self._arn(pool), targets)

    async def _batched_arn(self, operation: str, arn: str, targets: Sequence[Target]) -> None:
        for i in range(0, len(targets), BATCH):
            chunk = [{"Id": t.ip, "Port": t.port} for t in targets[i : i + BATCH]]
            await self._call(operation, TargetGroupArn=arn, Targets=chunk)

    async def _own(self, pool: PoolSpec, targets: Sequence[Target]) -> list[Target]:
        """Of these targets, the ones podgate registered for the pool's Service."""
        recorded = await self.records.read(self._arn(pool), pool.service_key)
        return [t for t in targets if t in recorded]

    async def register(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        """Recorded first, then registered: a crash in between leaves a record of a target that
        is not in the group (dropped once stale), never a target podgate would not take out."""
        arn, key = self._arn(pool), pool.service_key
        await self.records.add(arn, key, targets)
        await self._batched("register_targets", pool, targets)
        read_at, present = self._last_read.get((arn, key), (0.0, frozenset()))
        gone = stale(await self.records.read(arn, key), present | set(targets), read_at)
        if gone:
            await self.records.remove(arn, key, sorted(gone, key=str))

    async def drain(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        started = self.clock()
        own = await self._own(pool, targets)
        await self._batched("deregister_targets", pool, own)
        since = self._draining_since.setdefault(self._arn(pool), {})
        for t in own:
            since.setdefault(t, started)

    async def deregister(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        own = await self._own(pool, targets)
        await self._batched("deregister_targets", pool, own)
        await self.records.remove(self._arn(pool), pool.service_key, own)
