"""The cert-manager overlay's static webhook configurations say what the self-managed controller
would register: the same webhooks, rules, selectors and policies, only the CA comes from
cert-manager's injection.  Written by hand once, they must not drift from the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from podgate.webhook import eviction
from podgate.webhook import server as webhook

OVERLAY = Path(__file__).parents[2] / "deploy" / "overlays" / "cert-manager" / "webhook.yaml"
SERVICE = ("podgate-system", "podgate", 443)


def _without_ca(config: dict[str, Any]) -> list[dict[str, Any]]:
    hooks = [dict(h) for h in config["webhooks"]]
    for h in hooks:
        h["clientConfig"] = {k: v for k, v in h["clientConfig"].items() if k != "caBundle"}
    return hooks


def _static(kind: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(OVERLAY.read_text()) if d]
    (found,) = [d for d in docs if d["kind"] == kind]
    injected = found["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert injected == "podgate-system/podgate-webhook"
    return found


def test_the_mutating_webhook_is_the_one_the_controller_registers() -> None:
    registered = webhook.webhook_configuration("podgate", b"", url=None, service=SERVICE)
    assert _static("MutatingWebhookConfiguration")["webhooks"] == _without_ca(registered)


def test_the_eviction_guard_is_there_too() -> None:
    registered = eviction.webhook_configuration("podgate", b"", url=None, service=SERVICE)
    assert _static("ValidatingWebhookConfiguration")["webhooks"] == _without_ca(registered)
