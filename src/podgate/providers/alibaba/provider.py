"""The Alibaba Cloud provider: a Service port bound to an existing CLB vServer group
(:mod:`.clb`, pods as ENI backends found through :mod:`.ecs`) or NLB server group (:mod:`.nlb`,
pod IPs), through the official SDK (:mod:`.transport`).

The cloud's own words are the gate's reason: NLB's ``ReasonCode`` or status, CLB's
``ServerHealthStatus`` (:mod:`.mapping`).  Draining is weight 0 (no new connections, existing
ones run on) until the pool's drain delay has passed; then the backend is removed.  Like the AWS
provider's target groups, a group is bound only when its tags give it to this cluster and the
Service naming it (:mod:`podgate.model.ownership`, ``ListTagResources``).  The backends podgate adds carry the
description ``podgate/<namespace>/<name>``: those are the only ones it lists, drains and removes;
anything else in the group (ECS instances, another's servers) is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from podgate.model import lb
from podgate.model.lb import PoolSpec, Target
from podgate.model.ownership import own_description
from podgate.model.ratelimit import BucketRegistry, TokenBucket
from podgate.providers.alibaba.clb import Clb
from podgate.providers.alibaba.ecs import Enis
from podgate.providers.alibaba.nlb import Nlb
from podgate.providers.alibaba.transport import Transport
from podgate.providers.base import Provider, ProviderError, TargetState
from podgate.providers.ownership import Ownership
from podgate.providers.retry import Retry


@dataclass(frozen=True)
class ServerGroup:
    """The existing server group a Service port is bound to: ``clb`` vServer group or ``nlb``
    server group."""

    product: str
    group_id: str


class _Product(Protocol):
    """What the provider asks of CLB and NLB alike, by group id."""

    async def discover(self, gid: str) -> object: ...

    def forget(self, gid: str) -> None: ...

    async def targets(self, gid: str, owner: str) -> dict[Target, TargetState]: ...

    async def register(self, gid: str, targets: Sequence[Target], description: str) -> None: ...

    async def set_weight(self, gid: str, targets: Sequence[Target], weight: int) -> None: ...

    async def remove(self, gid: str, targets: Sequence[Target]) -> None: ...


def account_of(env: Mapping[str, str], credential: object = None) -> str:
    """Which Alibaba Cloud account the SDK's default chain will use, as far as the environment
    says without a call (the key of the shared token bucket): access key id, else the RRSA
    role, else the CLI profile; an explicit credential client is an account of its own.  Never
    a secret."""
    if credential is not None:
        return f"credential client {id(credential):x}"
    if env.get("ALIBABA_CLOUD_ACCESS_KEY_ID"):
        return f"access key {env['ALIBABA_CLOUD_ACCESS_KEY_ID']}"
    if env.get("ALIBABA_CLOUD_ROLE_ARN"):
        return f"role {env['ALIBABA_CLOUD_ROLE_ARN']}"
    profile = env.get("ALIBABA_CLOUD_PROFILE")
    return f"profile {profile}" if profile else "the default credentials"


class AlibabaProvider:
    """One Alibaba Cloud account and region: the target seam and group binding
    (:class:`~podgate.providers.base.GroupBinding`).  All it keeps is derived from the cloud's
    answers and the Services, so a restart loses nothing the next reads do not rebuild (a new
    NLB server's first-check floor only starts again, which errs on the closed side)."""

    GROUP_ANNOTATIONS = (lb.ALIBABA_CLB_GROUP, lb.ALIBABA_NLB_GROUP)

    def __init__(
        self,
        name: str = "alibaba",
        region: str = "cn-hangzhou",
        *,
        clb_endpoint: str | None = None,
        nlb_endpoint: str | None = None,
        ecs_endpoint: str | None = None,
        rate: float = 10.0,
        burst: int = 20,
        max_retries: int = 6,
        base_delay: float = 0.2,
        timeout: float = 10.0,
        poll_interval: float = 1.0,
        credential: Any = None,
        buckets: BucketRegistry | None = None,
        cluster: str | None = None,
    ) -> None:
        """``cluster``: ``--cluster-name``, which the groups' ownership tags must name.
        ``credential``: an ``alibabacloud_credentials`` client; None is the SDK's default
        chain (which reads its environment variables once, when first imported).  ``buckets``:
        the process's shared buckets (one per account and region, see
        :class:`~podgate.model.ratelimit.BucketRegistry`); None: a bucket of this provider's own."""
        self.name, self.region = name, region
        #: cloud health checks run every few seconds: reading them faster only spends API quota
        self.poll_interval = poll_interval
        bucket = (
            buckets.bucket("alibaba", account_of(os.environ, credential), region, rate, burst, name)
            if buckets is not None
            else TokenBucket(rate, burst)
        )
        # a throttled call is tried again within a poll interval (the bucket keeps the rate)
        self.retry = Retry(bucket, max_retries=max_retries, base_delay=base_delay, max_delay=poll_interval)
        self.transport = Transport(
            region,
            {"clb": clb_endpoint, "nlb": nlb_endpoint, "ecs": ecs_endpoint},
            self.retry,
            timeout=timeout,
            credential=credential,
        )
        self._products: dict[str, _Product] = {
            # the groups of one CLB share its health answer for half a poll interval
            "clb": Clb(self.transport, Enis(self.transport), health_age=poll_interval / 2),
            "nlb": Nlb(self.transport),
        }
        self.ownership = Ownership(cluster)
        #: Service key → the groups it bound, to clean up when it goes (a bind after a restart
        #: fills it again: the ownership itself is the groups' tags, never this)
        self._bound: dict[str, dict[str, ServerGroup]] = {}

    def provider(self) -> Provider:
        """The controller's record: pods go into the user's groups (a finalizer holds the
        Service until they are out again)."""
        return Provider(self, self.GROUP_ANNOTATIONS, binding=self, throttling=self.retry)

    async def close(self) -> None:
        self.transport.close()

    @staticmethod
    def _group(pool: PoolSpec) -> ServerGroup:
        if pool.group is None or pool.group.annotation not in AlibabaProvider.GROUP_ANNOTATIONS:
            raise ProviderError(
                f"Service {pool.service_key} port {pool.port} needs the annotation "
                f"{lb.ALIBABA_NLB_GROUP} or {lb.ALIBABA_CLB_GROUP}",
                permanent=True,
            )
        return ServerGroup("clb" if pool.group.annotation == lb.ALIBABA_CLB_GROUP else "nlb", pool.group.id)

    async def bind(self, service_key: str, pools: Sequence[PoolSpec]) -> None:
        """Check each group exists, suits podgate and carries the ownership tags for this
        cluster and Service (``ListTagResources``); find what it is attached to.  Nothing is
        created or changed: the groups and load balancers are the user's."""
        for pool in pools:
            group = self._group(pool)
            words = f"{'CLB vServer' if group.product == 'clb' else 'NLB server'} group {group.group_id}"
            await self._products[group.product].discover(group.group_id)
            await self.ownership.check(words, group.group_id, service_key, partial(self._tags, group))
            self._bound.setdefault(service_key, {})[group.group_id] = group

    async def _tags(self, group: ServerGroup) -> dict[str, str]:
        """The group's tags, every page (CLB's list call takes no page size; NLB's does)."""
        kind = "vservergroup" if group.product == "clb" else "servergroup"
        params: dict[str, Any] = {"ResourceType": kind, "ResourceId": [group.group_id]}
        tags: dict[str, str] = {}
        token: str | None = None
        while True:
            page = await self.transport.call(
                group.product, "ListTagResources", {**params, **({"NextToken": token} if token else {})}
            )
            rows = page.get("TagResources") or ()
            if isinstance(rows, dict):  # CLB wraps the list: {"TagResource": [...]}
                rows = rows.get("TagResource") or ()
            for row in rows:
                if row.get("ResourceId") == group.group_id and row.get("TagKey") is not None:
                    tags[str(row["TagKey"])] = str(row.get("TagValue") or "")
            token = page.get("NextToken")
            if not token:
                return tags

    async def unbind(self, service_key: str) -> None:
        """The Service is gone or no longer podgate's: its pods leave its groups (the groups
        themselves are the user's and stay)."""
        for gid, group in list(self._bound.get(service_key, {}).items()):
            product = self._products[group.product]
            present = await product.targets(gid, own_description(service_key))
            await product.remove(gid, list(present))
            del self._bound[service_key][gid]
            product.forget(gid)
        self._bound.pop(service_key, None)
        self.ownership.forget(service_key)

    async def targets(self, pool: PoolSpec) -> dict[Target, TargetState]:
        group = self._group(pool)
        return await self._products[group.product].targets(group.group_id, own_description(pool.service_key))

    async def register(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        """Absent targets are added at full weight; draining ones (weight 0) get it back."""
        group = self._group(pool)
        await self._products[group.product].register(
            group.group_id, targets, own_description(pool.service_key)
        )

    async def drain(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        group = self._group(pool)
        await self._products[group.product].set_weight(group.group_id, targets, 0)

    async def deregister(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        group = self._group(pool)
        await self._products[group.product].remove(group.group_id, targets)
