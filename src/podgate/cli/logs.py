"""The controller's logging: text or JSON lines, third-party loggers capped, secrets redacted.

No secret may reach a log line at any level.  Two layers: the SDKs and HTTP clients whose own
DEBUG output prints request headers and bodies (botocore logs ``X-Amz-Security-Token`` and a
web identity token, the Alibaba SDK ``x-acs-security-token``, kubernetes_asyncio its bearer
token) are held at WARNING whatever ``--verbose`` says; and every line podgate writes passes
through :func:`redact`, which blanks the value of any key or header named like a credential,
so an exception that quotes a request is safe too.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import re
from datetime import UTC, datetime
from typing import IO

#: loggers of libraries that print requests (headers, bodies, credentials) at DEBUG or INFO
CAPPED = (
    "kubernetes_asyncio",
    "aiohttp.access",
    "aiohttp.client",
    "asyncio",
    "botocore",
    "aiobotocore",
    "boto3",
    "urllib3",
    "s3transfer",
    "alibabacloud_credentials",
    "alibabacloud_tea_openapi",
    "alibabacloud_tea_util",
    "Tea",
    "darabonba",
    # the Alibaba SDK's cores name their loggers so, and give them handlers of their own that
    # print every request header (x-acs-security-token included) with DEBUG=sdk set
    "alibabacloud-tea",
    "darabonba-core",
    "credentials",
)
#: modules that attach a handler of their own to one of the loggers above when imported
_SELF_HANDLING = ("Tea.core", "darabonba.core", "alibabacloud_credentials.provider.ecs_ram_role")

#: key or header names whose value is a credential (matched case-insensitively, in any of the
#: spellings an SDK uses: X-Amz-Security-Token, SessionToken, access_key_secret …)
_SECRET_NAMES = (
    r"authorization|x-amz-security-token|x-acs-security-token|security[_-]?token|session[_-]?token|"
    r"secret[_-]?access[_-]?key|access[_-]?key[_-]?secret|web[_-]?identity[_-]?token|"
    r"client[_-]?secret|password|passwd|bearer[_-]?token|api[_-]?key|credential|signature|"
    r"drain[_-]?token|token"
)
_KEY_VALUE = re.compile(
    rf"(?i)([\"']?(?:{_SECRET_NAMES})[\"']?\s*[:=]\s*(?:b(?=[\"']))?[\"']?(?:(?:bearer|basic)\s+)?)"
    r"([^\"'\s,;&}\])]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
REDACTED = "***"


def redact(text: str) -> str:
    """The text with every credential-like value blanked."""
    return _KEY_VALUE.sub(rf"\1{REDACTED}", _BEARER.sub(rf"\1{REDACTED}", text))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class Redacting(logging.Formatter):
    """Another formatter's line, redacted (message, arguments and traceback alike)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def setup_logging(verbose: bool, fmt: str, stream: IO[str] | None = None) -> None:
    handler = logging.StreamHandler(stream)
    inner = (
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.setFormatter(Redacting(inner))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    for module in _SELF_HANDLING:  # imported now, so their handlers exist to be taken away
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    for noisy in CAPPED:
        logger = logging.getLogger(noisy)
        logger.setLevel(logging.WARNING)
        for own in list(logger.handlers):  # what they log goes through the redacting handler
            logger.removeHandler(own)
        logger.propagate = True
