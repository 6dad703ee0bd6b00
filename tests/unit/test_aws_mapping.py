"""ELB target health → podgate: ELB's own reason and description pass through verbatim."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from podgate.model import lb
from podgate.model.lb import Health
from podgate.providers.aws_elbv2 import is_throttling, retry_after, target_health

GATE = "service.readiness.podgate.dev/web"


@pytest.mark.parametrize(
    ("state", "reason", "description", "admin", "health", "cond_status", "cond_reason"),
    [
        (
            "initial",
            "Elb.RegistrationInProgress",
            "Target registration is in progress",
            "ready",
            Health.INITIAL,
            "False",
            "Elb.RegistrationInProgress",
        ),
        (
            "initial",
            "Elb.InitialHealthChecking",
            "Initial health checks in progress",
            "ready",
            Health.INITIAL,
            "False",
            "Elb.InitialHealthChecking",
        ),
        ("healthy", None, None, "ready", Health.HEALTHY, "True", "TargetHealthy"),
        (
            "unhealthy",
            "Target.ResponseCodeMismatch",
            "Health checks failed with these codes: [503]",
            "ready",
            Health.UNHEALTHY,
            "False",
            "Target.ResponseCodeMismatch",
        ),
        (
            "unhealthy",
            "Target.Timeout",
            "Request timed out",
            "ready",
            Health.UNHEALTHY,
            "False",
            "Target.Timeout",
        ),
        (
            "draining",
            "Target.DeregistrationInProgress",
            "Target deregistration is in progress",
            "drain",
            Health.DRAINING,
            "False",
            "Target.DeregistrationInProgress",
        ),
        (
            "unused",
            "Target.NotRegistered",
            "Target is not registered to the target group",
            "ready",
            Health.UNREGISTERED,
            "False",
            "Target.NotRegistered",
        ),
        (
            "unavailable",
            "Target.HealthCheckDisabled",
            "Health checks are disabled",
            "ready",
            Health.UNKNOWN,
            "False",
            "Target.HealthCheckDisabled",
        ),
    ],
)
def test_reason_mapping(
    state: str,
    reason: str | None,
    description: str | None,
    admin: str,
    health: Health,
    cond_status: str,
    cond_reason: str,
) -> None:
    th = {
        "State": state,
        **({"Reason": reason} if reason else {}),
        **({"Description": description} if description else {}),
    }
    got_admin, got = target_health({"Target": {"Id": "10.0.0.5", "Port": 8080}, "TargetHealth": th}, "tg web")
    assert (got_admin, got.health) == (admin, health)
    cond = lb.gate_condition(GATE, [got])
    assert (cond["status"], cond["reason"]) == (cond_status, cond_reason)
    if description:
        assert description in cond["message"]


def client_error(code: str, headers: dict[str, str] | None = None) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPHeaders": headers or {}}},
        "RegisterTargets",
    )


def test_throttling_is_retried_and_its_retry_after_honoured() -> None:
    assert is_throttling(client_error("Throttling")) and is_throttling(client_error("RequestLimitExceeded"))
    assert not is_throttling(client_error("TargetGroupNotFound")) and not is_throttling(ValueError("x"))
    assert retry_after(client_error("Throttling", {"retry-after": "2"})) == 2.0
    assert retry_after(client_error("Throttling")) is None
    assert retry_after(client_error("Throttling", {"retry-after": "Wed, 21 Oct 2015"})) is None
