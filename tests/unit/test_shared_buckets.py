"""One token bucket per cloud account and region (podgate.model.ratelimit.BucketRegistry), shared
by every provider of the controller and so by every Service they serve."""

from __future__ import annotations

import pytest

from podgate.app.build import build_providers
from podgate.controller.settings import AlibabaSettings, AwsSettings, ControllerSettings, SettingsError
from podgate.kube.fake import FakeKube
from podgate.kube.records import MemoryRecords
from podgate.model.ratelimit import BucketRegistry, RateConflict
from podgate.providers import aws_elbv2
from podgate.providers.alibaba import AlibabaProvider
from podgate.providers.alibaba import provider as alibaba
from podgate.providers.aws_elbv2 import AwsElbv2Provider
from podgate.providers.retry import Retry


def test_one_bucket_per_cloud_account_and_region() -> None:
    reg = BucketRegistry(clock=lambda: 0.0)
    a = reg.bucket("aws", "access key AK1", "eu-west-1", 10, 20, "aws-a")
    assert reg.bucket("aws", "access key AK1", "eu-west-1", 10, 20, "aws-b") is a
    others = [
        reg.bucket("aws", "access key AK2", "eu-west-1", 10, 20, "x"),
        reg.bucket("aws", "access key AK1", "us-east-1", 10, 20, "x"),
        reg.bucket("alibaba", "access key AK1", "eu-west-1", 10, 20, "x"),
    ]
    assert all(b is not a for b in others) and len({id(b) for b in others}) == 3


def test_providers_on_one_account_draw_from_one_rate() -> None:
    """30 calls from two providers (say, 10 Services each) with a burst of 20 at 10/s: the last
    token is a second away, as if one provider had made them all."""
    reg = BucketRegistry(clock=lambda: 0.0)
    one = reg.bucket("alibaba", "access key AK1", "cn-hangzhou", 10, 20, "a")
    two = reg.bucket("alibaba", "access key AK1", "cn-hangzhou", 10, 20, "b")
    waits = [(one if i % 2 else two).reserve() for i in range(30)]
    assert waits[19] == 0.0 and waits[-1] == pytest.approx(1.0)


def test_different_rates_on_one_account_are_a_one_line_error() -> None:
    reg = BucketRegistry()
    reg.bucket("aws", "profile prod", "eu-west-1", 10, 20, "aws-a")
    with pytest.raises(RateConflict) as e:
        reg.bucket("aws", "profile prod", "eu-west-1", 5, 20, "aws-b")
    message = str(e.value)
    assert "\n" not in message and "aws-a" in message and "aws-b" in message and "eu-west-1" in message


@pytest.mark.parametrize(
    ("env", "account"),
    [
        ({"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_PROFILE": "p"}, "access key AKIA1"),
        ({"AWS_ROLE_ARN": "arn:aws:iam::1:role/r", "AWS_PROFILE": "p"}, "role arn:aws:iam::1:role/r"),
        ({"AWS_PROFILE": "p"}, "profile p"),
        ({"AWS_DEFAULT_PROFILE": "d"}, "profile d"),
        ({}, "the default credentials"),
    ],
)
def test_aws_account_from_the_environment(env: dict[str, str], account: str) -> None:
    assert aws_elbv2.account_of(env) == account


def test_aws_region_from_the_setting_or_the_environment() -> None:
    assert aws_elbv2.region_of("eu-west-1", {"AWS_REGION": "us-east-1"}) == "eu-west-1"
    assert aws_elbv2.region_of(None, {"AWS_REGION": "us-east-1"}) == "us-east-1"
    assert aws_elbv2.region_of(None, {"AWS_DEFAULT_REGION": "us-west-2"}) == "us-west-2"


@pytest.mark.parametrize(
    ("env", "account"),
    [
        ({"ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAI1", "ALIBABA_CLOUD_PROFILE": "p"}, "access key LTAI1"),
        ({"ALIBABA_CLOUD_ROLE_ARN": "acs:ram::1:role/r"}, "role acs:ram::1:role/r"),
        ({"ALIBABA_CLOUD_PROFILE": "p"}, "profile p"),
        ({}, "the default credentials"),
    ],
)
def test_alibaba_account_from_the_environment(env: dict[str, str], account: str) -> None:
    assert alibaba.account_of(env) == account


def test_provider_instances_share_the_bucket_of_their_account(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-TEST")
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-TEST")
    reg = BucketRegistry()
    aws = [AwsElbv2Provider(n, "eu-west-1", records=MemoryRecords(), buckets=reg) for n in ("aws-a", "aws-b")]
    assert aws[0].retry.bucket is aws[1].retry.bucket
    other = AwsElbv2Provider("aws-c", "us-east-1", records=MemoryRecords(), buckets=reg)
    assert other.retry.bucket is not aws[0].retry.bucket
    ali = [AlibabaProvider(n, "cn-hangzhou", buckets=reg) for n in ("ali-a", "ali-b")]
    assert ali[0].retry.bucket is ali[1].retry.bucket is not aws[0].retry.bucket
    # without a registry (tests, one-off tools) a provider keeps a bucket of its own
    assert AwsElbv2Provider("x", "eu-west-1", records=MemoryRecords()).retry.bucket is not aws[0].retry.bucket


def test_the_controllers_providers_share_buckets_and_refuse_two_rates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-TEST")
    settings = ControllerSettings(
        aws=(AwsSettings("aws-a", "eu-west-1"), AwsSettings("aws-b", "eu-west-1")),
        alibaba=(AlibabaSettings("ali", "cn-hangzhou"),),
    )
    providers = build_providers(settings, kube=FakeKube())
    a, b = (providers[n].throttling for n in ("aws-a", "aws-b"))
    assert isinstance(a, Retry) and isinstance(b, Retry) and a.bucket is b.bucket
    clash = ControllerSettings(
        aws=(AwsSettings("aws-a", "eu-west-1"), AwsSettings("aws-b", "eu-west-1", rate=20.0))
    )
    with pytest.raises(SettingsError, match=r"aws-a and aws-b .* different API rates"):
        build_providers(clash, kube=FakeKube())
