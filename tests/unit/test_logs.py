"""No secret in a log line: what the redaction blanks, in the shapes SDKs print them."""

from __future__ import annotations

import io
import logging

import pytest

from podgate.cli.logs import CAPPED, REDACTED, redact, setup_logging

CANARY = "CANARYsecret0123456789"


@pytest.mark.parametrize(
    "line",
    [
        f"{{'X-Amz-Security-Token': b'{CANARY}', 'Host': 'elb'}}",
        f"headers={{'x-acs-security-token': '{CANARY}'}}",
        f"Authorization: Bearer {CANARY}",
        f"'Authorization': b'AWS4-HMAC-SHA256 Credential={CANARY}/20261204/us-east-1, Signature={CANARY}'",
        f"Action=AssumeRoleWithWebIdentity&WebIdentityToken={CANARY}&RoleArn=arn",
        f'{{"SecretAccessKey": "{CANARY}", "SessionToken": "{CANARY}"}}',
        f"access_key_secret={CANARY}",
        f"hook failed: drain_token={CANARY}",
    ],
)
def test_credentials_are_blanked_wherever_they_appear(line: str) -> None:
    out = redact(line)
    assert CANARY not in out and REDACTED in out


@pytest.mark.parametrize(
    "line",
    [
        "reconcile shop/web failed: Throttling: Rate exceeded",
        "shop/web port 80: register 10.0.0.1:8080, drain -, remove -",
        "informer pods: list continue token expired, listing again",
    ],
)
def test_ordinary_lines_pass_unchanged(line: str) -> None:
    assert redact(line) == line


def test_debug_logging_keeps_sdk_loggers_quiet_and_redacts_podgates_own_lines() -> None:
    out = io.StringIO()
    setup_logging(verbose=True, fmt="text", stream=out)
    try:
        logging.getLogger("botocore.endpoint").debug(
            "Sending http request: %s", {"X-Amz-Security-Token": CANARY}
        )
        logging.getLogger("podgate.test").debug("request failed: %s", f"Authorization: Bearer {CANARY}")
        assert all(logging.getLogger(name).getEffectiveLevel() >= logging.WARNING for name in CAPPED)
    finally:
        setup_logging(verbose=False, fmt="text")
    text = out.getvalue()
    assert CANARY not in text and "request failed: Authorization: Bearer ***" in text
