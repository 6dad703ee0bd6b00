"""On AWS the drain hook waits until the target is ``draining`` (the load balancer has stopped
sending it new requests) plus the propagation allowance, never for the end of ``draining``,
which lasts the target group's deregistration delay (300 s by default) against a budget of 25 s."""

from __future__ import annotations

from typing import Any

from podgate.kube.records import MemoryRecords
from podgate.model import lb
from podgate.providers.aws_elbv2 import DRAIN_PROPAGATION, AwsElbv2Provider

ARN = "arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/web/0123456789abcdef"
POOL = lb.PoolSpec(
    "default",
    "web",
    80,
    "http",
    8080,
    "TCP",
    lb.HealthCheck(),
    group=lb.GroupRef(lb.AWS_TARGET_GROUP, ARN),
)
A, B = lb.Target("10.0.0.1", 8080), lb.Target("10.0.0.2", 8080)


class TargetGroup:
    """ELB's side as DescribeTargetHealth and DeregisterTargets show it: a deregistered target
    stays ``draining`` (for the deregistration delay, longer than any test)."""

    def __init__(self) -> None:
        self.states = {A: "healthy", B: "healthy"}

    async def describe_target_health(self, TargetGroupArn: str) -> dict[str, Any]:
        assert TargetGroupArn == ARN
        return {
            "TargetHealthDescriptions": [
                {"Target": {"Id": t.ip, "Port": t.port}, "TargetHealth": {"State": state}}
                for t, state in self.states.items()
            ]
        }

    async def deregister_targets(self, TargetGroupArn: str, Targets: list[dict[str, Any]]) -> dict[str, Any]:
        for t in Targets:
            self.states[lb.Target(t["Id"], t["Port"])] = "draining"
        return {}


def provider() -> tuple[AwsElbv2Provider, TargetGroup, list[float]]:
    now = [1000.0]
    records = MemoryRecords()
    records.records[(ARN, POOL.service_key)] = {A: 0.0, B: 0.0}  # both registered by podgate
    aws = AwsElbv2Provider("aws", "eu-west-1", records=records, clock=lambda: now[0])
    group = TargetGroup()
    aws._client = group  # the SDK client's place: the seam below podgate's calls
    return aws, group, now


async def test_a_draining_target_is_drained_after_the_propagation_time_not_the_delay() -> None:
    aws, _, now = provider()
    await aws.drain(POOL, [A])
    state = (await aws.targets(POOL))[A]
    assert state.admin == "drain" and not state.drained
    now[0] += DRAIN_PROPAGATION - 0.5
    assert not (await aws.targets(POOL))[A].drained
    now[0] += 0.5
    after = await aws.targets(POOL)
    assert after[A].drained and after[A].admin == "drain"  # still draining at ELB: in-flight requests
    assert after[B].admin == "ready" and not after[B].drained


async def test_a_target_another_replica_drained_counts_from_when_this_one_first_saw_it() -> None:
    aws, group, now = provider()
    group.states[A] = "draining"  # the leader's DeregisterTargets, or another replica's hook
    assert not (await aws.targets(POOL))[A].drained
    now[0] += DRAIN_PROPAGATION
    assert (await aws.targets(POOL))[A].drained


async def test_a_target_back_in_rotation_starts_afresh_and_nothing_is_kept_for_it() -> None:
    aws, group, now = provider()
    await aws.drain(POOL, [A])
    now[0] += DRAIN_PROPAGATION
    group.states[A] = "healthy"  # registered again (its pod got readiness back)
    assert not (await aws.targets(POOL))[A].drained
    assert aws._draining_since == {}
    group.states[A] = "draining"
    assert not (await aws.targets(POOL))[A].drained
