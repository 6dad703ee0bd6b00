"""The provider records the controller gets (seam plus capabilities), their instrumentation, and
the SDK retries that must stay off under podgate's own retry loop."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from alibabacloud_credentials.client import Client as CredentialClient
from alibabacloud_credentials.models import Config

from podgate.controller import metrics
from podgate.kube.records import MemoryRecords
from podgate.model import lb
from podgate.model.lb import HealthCheck, PoolSpec, Target
from podgate.providers.alibaba import AlibabaProvider
from podgate.providers.aws_elbv2 import AwsElbv2Provider
from podgate.providers.base import Provider, ProviderError, TargetState
from podgate.providers.haproxy import HAProxyProvider

POOL = PoolSpec("ns", "web", 80, "", 8080, "TCP", HealthCheck())


def test_each_provider_says_what_it_can() -> None:
    haproxy = HAProxyProvider(["/run/haproxy.sock"]).provider()
    assert haproxy.provisioning is not None and haproxy.binding is None and haproxy.throttling is None
    assert haproxy.group_annotations == (lb.HAPROXY_BACKEND,)
    for cloud, keys in (
        (AwsElbv2Provider("aws", records=MemoryRecords()).provider(), (lb.AWS_TARGET_GROUP,)),
        (AlibabaProvider("ali").provider(), (lb.ALIBABA_CLB_GROUP, lb.ALIBABA_NLB_GROUP)),
    ):
        assert cloud.binding is not None and cloud.provisioning is None and cloud.throttling is not None
        assert cloud.group_annotations == keys
        assert cloud.throttling.throttled == 0


class FakePool:
    name = "fake"
    poll_interval = 0.5

    def __init__(self) -> None:
        self.closed = False

    async def targets(self, pool: PoolSpec) -> dict[Target, TargetState]:
        raise ProviderError("unreachable")

    async def register(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        pass

    async def drain(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        pass

    async def deregister(self, pool: PoolSpec, targets: Sequence[Target]) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


class FakeBinding:
    def __init__(self) -> None:
        self.bound: list[str] = []

    async def bind(self, service_key: str, pools: Sequence[PoolSpec]) -> None:
        self.bound.append(service_key)

    async def unbind(self, service_key: str) -> None:
        self.bound.remove(service_key)


def sample(metric: str, operation: str) -> float:
    return metrics.REGISTRY.get_sample_value(metric, {"provider": "fake", "operation": operation}) or 0.0


async def test_instrumented_counts_every_call_and_keeps_capabilities() -> None:
    inner, binding = FakePool(), FakeBinding()
    wrapped = metrics.instrumented(Provider(inner, ("a",), binding=binding))
    assert (wrapped.name, wrapped.pool.poll_interval, wrapped.group_annotations) == ("fake", 0.5, ("a",))
    assert wrapped.provisioning is None and wrapped.binding is not None
    before = {
        (m, op): sample(m, op)
        for m in ("podgate_provider_calls_total", "podgate_provider_errors_total")
        for op in ("register", "targets", "bind")
    }
    await wrapped.pool.register(POOL, [Target("10.0.0.1", 8080)])
    await wrapped.binding.bind("ns/web", [POOL])
    with pytest.raises(ProviderError):
        await wrapped.pool.targets(POOL)
    await wrapped.pool.close()
    assert binding.bound == ["ns/web"] and inner.closed

    def delta(metric: str, op: str) -> float:
        return sample(metric, op) - before[(metric, op)]

    assert delta("podgate_provider_calls_total", "register") == 1
    assert delta("podgate_provider_calls_total", "bind") == 1
    assert delta("podgate_provider_calls_total", "targets") == 1
    assert delta("podgate_provider_errors_total", "targets") == 1
    assert delta("podgate_provider_errors_total", "register") == 0


async def test_botocore_makes_one_attempt_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """podgate's loop retries; botocore's own retries would multiply its attempts.  Credentials
    are given so that making the client walks no credential chain (it would end at the instance
    metadata service, which no test may ask)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDPODGATEUNITTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "podgate-unit-test-not-a-secret")
    provider = AwsElbv2Provider("aws", "eu-west-1", records=MemoryRecords())
    try:
        # the SDK client's own configuration: no seam shows it, and it is what this test is about
        client = await provider._elbv2()
        assert client.meta.config.retries["total_max_attempts"] == 1
    finally:
        await provider.close()


def test_tea_runtime_does_not_retry() -> None:
    """Likewise the Alibaba SDK's runtime: its retry loop runs only with retryable options."""
    credential = CredentialClient(Config(type="access_key", access_key_id="ak", access_key_secret="sk"))
    provider = AlibabaProvider("ali", credential=credential)
    for product in ("clb", "nlb", "ecs"):
        # the SDK client's own retry options: no seam shows them, and they are what this is about
        options = provider.transport._client(product)._retry_options
        assert options is not None and options.retryable is False
