"""AWS ELBv2 provider: a Service port bound to an existing IP-type target group.

podgate registers pod IPs in the target group, reads ``DescribeTargetHealth`` and gates on it,
with ELB's own reason and description in the condition.  Draining is ELB's: ``drain`` is
``DeregisterTargets``, after which the target group reports the target ``draining`` for its
deregistration delay.  Credentials come from the standard chain (environment, shared files, web
identity for IRSA) and ``AWS_ENDPOINT_URL`` is honoured, both by botocore itself.  Every call
takes a token from a bucket per provider and region; throttling errors back off exponentially
with jitter; any other error is a ProviderError, which never opens a gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from typing import Any

from podgate.model.lb import Health, PoolSpec, Target, TargetHealth
from podgate.model.ratelimit import TokenBucket
from podgate.providers.base import AdminState, ProviderError, TargetState

THROTTLING = frozenset(
    {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}
)
BATCH = 200  # targets per Register/DeregisterTargets call, well within the API's limit

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


class AwsElbv2Provider:
    def __init__(
        self,
        name: str = "aws",
        region: str | None = None,
        *,
        rate: float = 10.0,
        burst: int = 20,
        max_retries: int = 6,
        base_delay: float = 0.2,
        poll_interval: float = 1.0,
    ) -> None:
        self.name, self.region = name, region
        #: ELB checks every 5 s at the least: reading target health faster only spends API quota
        self.poll_interval = poll_interval
        self.binds_user_groups = True
        self.bucket = TokenBucket(rate, burst)
        self.max_retries, self.base_delay = max_retries, base_delay
        self._client: Any = None
        self._owners: dict[str, str] = {}  # target group ARN → the Service key that names it
        self._stack = contextlib.AsyncExitStack()
        self.throttled = 0

    async def _elbv2(self) -> Any:
        if self._client is None:
            from aiobotocore.session import get_session

            session = get_session()
            self._client = await self._stack.enter_async_context(
                session.create_client("elbv2", region_name=self.region)
            )
        return self._client

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def _call(self, operation: str, **params: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        client = await self._elbv2()
        for attempt in range(self.max_retries + 1):
            wait = self.bucket.reserve()
            if wait:
                await asyncio.sleep(wait)
            try:
                return await getattr(client, operation)(**params)
            except ClientError as e:
                err = e.response.get("Error") or {}
                code, message = err.get("Code", "Unknown"), err.get("Message", "")
                if code in THROTTLING and attempt < self.max_retries:
                    self.throttled += 1
                    delay = self.base_delay * 2**attempt
                    await asyncio.sleep(delay / 2 + random.random() * delay / 2)
                    continue
                raise ProviderError(
                    f"AWS {operation}: {code}: {message}", permanent="NotFound" in code
                ) from None
            except BotoCoreError as e:
                raise ProviderError(f"AWS {operation}: {e}") from None
        raise ProviderError(f"AWS {operation}: still throttled after {self.max_retries} retries")

    @staticmethod
    def _arn(pool: PoolSpec) -> str:
        if not pool.target_group_arn:
            raise ProviderError(
                f"Service {pool.service_key} needs the annotation "
                "podgate.dev/aws-target-group-arn naming an IP-type target group",
                permanent=True,
            )
        return pool.target_group_arn

    async def provision(self, service_key: str, pools: Sequence[PoolSpec], address: str | None) -> str | None:
        arns = sorted({self._arn(p) for p in pools})
        for arn in arns:
            owner = self._owners.setdefault(arn, service_key)
            if owner != service_key:
                raise ProviderError(
                    f"target group {arn} is already bound to Service {owner}; "
                    "each target group belongs to one Service port",
                    permanent=True,
                )
        answer = await self._call("describe_target_groups", TargetGroupArns=arns)
        for tg in answer.get("TargetGroups") or ():
            if tg.get("TargetType") != "ip":
                raise ProviderError(
                    f"target group {tg.get('TargetGroupArn')} has TargetType "
                    f"{tg.get('TargetType')!r}; podgate registers pod IPs and needs 'ip'",
                    permanent=True,
                )
        return None

    async def release(self, service_key: str) -> None:
        """The Service is gone or no longer podgate's: its pods leave its target groups (the
        groups themselves are the user's and stay), and podgate's claim on them ends."""
        for arn, owner in list(self._owners.items()):
            if owner != service_key:
                continue
            answer = await self._call("describe_target_health", TargetGroupArn=arn)
            present = [
                {"Id": str(t["Id"]), "Port": int(t["Port"])}
                for d in answer.get("TargetHealthDescriptions") or ()
                if "Port" in (t := d.get("Target") or {})
            ]
            for i in range(0, len(present), BATCH):
                await self._call("deregister_targets", TargetGroupArn=arn, Targets=present[i : i + BATCH])
            del self._owners[arn]

    async def provisioned(self) -> set[str]:
        return set()

    async def targets(self, pool: PoolSpec) -> dict[Target, TargetState]:
        arn = self._arn(pool)
        answer = await self._call("describe_target_health", TargetGroupArn=arn)
        out = {}
        for d in answer.get("TargetHealthDescriptions") or ():
            t = d.get("Target") or {}
            if "Port" not in t:
                continue
            admin, health = target_health(d, f"target group {arn.rsplit(':', 1)[-1]}")
            out[Target(str(t["Id"]), int(t["Port"]))] = TargetState(admin, health)
        return out

    async def _batched(self, operation: str, pool: PoolSpec, targets: Sequence[Target]) -> None:
        arn = self._arn(pool)
        for i in range(0, len(targets), BATCH):
            chunk = [{"Id": t.ip, "Port": t.port} for t in targets[i : i + BATCH]]
            await self._call(operation, TargetGroupArn=arn, Targets=chunk)

    async def register(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        await self._batched("register_targets", pool, targets)

    async def drain(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        await self._batched("deregister_targets", pool, targets)

    async def deregister(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        await self._batched("deregister_targets", pool, targets)

    async def generation(self) -> str:
        return self.name  # nothing of podgate's state is lost on AWS's side
