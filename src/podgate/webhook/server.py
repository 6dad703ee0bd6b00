"""The webhook's HTTPS server (aiohttp) and its registration with the API server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from podgate.kube import pki
from podgate.kube.api import MUTATING_WEBHOOK_CONFIGURATIONS, Kube, NotFound
from podgate.kube.informer import Informer
from podgate.model import gates
from podgate.model.checks import CheckSpec
from podgate.model.types import Service
from podgate.webhook.admission import BadReview, InjectionPolicy, parse_review, review_response

log = logging.getLogger(__name__)
PATH = "/mutate-pods"


def make_app(
    services: Informer[Service],
    handled: Callable[[Mapping[str, Any]], bool],
    policy: InjectionPolicy,
    observe: Callable[[str, float], None] = lambda result, seconds: None,
    checks: Callable[[], Iterable[CheckSpec]] = lambda: (),
) -> web.Application:
    """The webhook app; ``observe(result, seconds)`` is told about every request (metrics)."""

    async def mutate(request: web.Request) -> web.Response:
        t0 = time.monotonic()
        raw = await request.read()
        try:
            review = parse_review(raw)
        except BadReview as e:
            log.warning("webhook: bad AdmissionReview from %s: %s", request.remote, e)
            observe("bad_request", time.monotonic() - t0)
            return web.Response(status=400, text=f"bad AdmissionReview: {e}\n")
        if not services.synced.is_set():
            # Answering from an empty cache would admit pods ungated: wait a moment for it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(services.synced.wait(), 3.0)
        answer = review_response(review, services.cache.values(), handled, policy, checks())
        observe("patched" if "patch" in answer["response"] else "unchanged", time.monotonic() - t0)
        return web.json_response(answer)

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post(PATH, mutate)
    return app


def serving_context(
    cert_dir: Path | None, cert_file: Path | None, key_file: Path | None, hosts: list[str], ips: list[str]
) -> tuple[ssl.SSLContext, bytes]:
    """TLS for the webhook: given files (cert-manager), or a generated CA and certificate.
    Returns the context and the CA bundle to register."""
    if cert_file and key_file:
        ca = cert_file.read_bytes()
        crt, key = cert_file, key_file
    else:
        assert cert_dir is not None
        ca_pair = pki.ensure_ca(cert_dir, "podgate-webhook-ca")
        crt, key = pki.ensure_serving_cert(cert_dir, "webhook", hosts, ips, ca_pair)
        ca = ca_pair[0].read_bytes()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(crt), str(key))
    return ctx, ca


def webhook_configuration(
    name: str,
    ca_bundle: bytes,
    *,
    url: str | None,
    service: tuple[str, str, int] | None,
    skip_label_value: str = "disabled",
    timeout_seconds: int = 5,
    migration_labels: bool = False,
) -> dict[str, Any]:
    """MutatingWebhookConfiguration for pod CREATE in opted-in namespaces (pure): one webhook
    per opt-in label (``gates.namespace_selectors``), the first under the historical name."""
    client_config: dict[str, Any] = {"caBundle": base64.b64encode(ca_bundle).decode()}
    if url:
        client_config["url"] = url
    elif service:
        client_config["service"] = {
            "namespace": service[0],
            "name": service[1],
            "port": service[2],
            "path": PATH,
        }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "podgate"}},
        "webhooks": [
            {
                "name": "readiness-gates.podgate.dev" if i == 0 else f"readiness-gates-{i}.podgate.dev",
                "admissionReviewVersions": ["v1"],
                "clientConfig": client_config,
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": selector,
                "objectSelector": {
                    "matchExpressions": [
                        {"key": gates.INJECT_LABEL, "operator": "NotIn", "values": [skip_label_value]}
                    ]
                },
                # An outage of podgate must never block pod creation: pods then start ungated.
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "timeoutSeconds": timeout_seconds,
                "reinvocationPolicy": "IfNeeded",
            }
            for i, selector in enumerate(gates.namespace_selectors(migration_labels))
        ],
    }


async def register(kube: Kube, body: dict[str, Any]) -> None:
    """Create the webhook configuration, or replace it (a new CA bundle, say) if it exists."""
    name = body["metadata"]["name"]
    try:
        current = await kube.get(MUTATING_WEBHOOK_CONFIGURATIONS, name)
    except NotFound:
        await kube.create(MUTATING_WEBHOOK_CONFIGURATIONS, body)
        log.info("registered MutatingWebhookConfiguration %s", name)
        return
    body = {
        **body,
        "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
    }
    await kube.replace(MUTATING_WEBHOOK_CONFIGURATIONS, name, body)
