"""The webhook's HTTPS server (aiohttp), its certificates (shared, rotated, reloaded without a
restart) and its registration with the API server."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web

from podgate.kube import pki
from podgate.kube.api import MUTATING_WEBHOOK_CONFIGURATIONS, Conflict, Kube, KubeError, NotFound, Resource
from podgate.kube.informer import Informer
from podgate.kube.webhookcerts import CertificateError, CertificateSecret
from podgate.model import gates
from podgate.model.checks import CheckSpec
from podgate.model.types import Service
from podgate.webhook.admission import BadReview, InjectionPolicy, parse_review, review_response

log = logging.getLogger(__name__)
PATH = "/mutate-pods"
#: the largest AdmissionReview read (aiohttp answers 413 beyond, before parsing it): a pod's
#: review is a few KiB, and every byte is parsed on a thread that shares the interpreter lock
#: with the controller; a larger one fails open (failurePolicy Ignore: the pod goes ungated)
MAX_REVIEW_BYTES = 1024 * 1024


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
        # Answering from an empty cache would admit pods ungated: wait a moment for it (by
        # looking, not awaiting its Event: this may be another thread's loop).
        deadline = t0 + 3.0
        while not services.synced.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        # an immutable snapshot: the server may run on its own thread (webhook.isolated)
        answer = review_response(review, services.snapshot().values(), handled, policy, checks())
        observe("patched" if "patch" in answer["response"] else "unchanged", time.monotonic() - t0)
        return web.json_response(answer)

    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    app.router.add_post(PATH, mutate)
    return app


class ServingTLS:
    """The webhook's TLS: one SSLContext for the server's life.  A new certificate is loaded into
    it, so the next handshake uses it: a rotation or a cert-manager renewal needs no restart, and
    connections in flight keep theirs.  ``on_failure(reason)`` hears of every handshake that
    failed here (the API server refusing the certificate says so in an alert), which the API
    server itself only logs."""

    def __init__(self, cert_dir: Path, on_failure: Callable[[str], None] = lambda reason: None) -> None:
        self.cert_dir = cert_dir
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.sslobject_class = _counting_handshakes(on_failure)
        #: of the certificate served now; None before the first
        self.fingerprint: str | None = None

    def load(self, cert: bytes, key: bytes, bundle: bytes) -> bool:
        """Serve this certificate from the next handshake on; returns whether it changed.  It is
        written to the certificate directory (OpenSSL loads from files) with the CA bundle
        (``ca.crt``) that verifies it, for whoever calls this replica directly."""
        fingerprint = pki.fingerprint(cert)
        if fingerprint == self.fingerprint:
            return False
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        crt, key_path = self.cert_dir / "tls.crt", self.cert_dir / "tls.key"
        _replace_file(key_path, key, 0o600)
        _replace_file(crt, cert, 0o644)
        _replace_file(self.cert_dir / "ca.crt", bundle, 0o644)
        self.context.load_cert_chain(str(crt), str(key_path))
        self.fingerprint = fingerprint
        return True

    def load_files(self, cert_file: Path, key_file: Path) -> bool:
        """Serve mounted files (cert-manager's Secret volume, updated in place by the kubelet);
        returns whether they changed.  A certificate and key caught mid-update do not match:
        OpenSSL refuses them and the one served stays until the next look."""
        cert = cert_file.read_bytes()
        fingerprint = pki.fingerprint(cert)
        if fingerprint == self.fingerprint:
            return False
        self.context.load_cert_chain(str(cert_file), str(key_file))
        self.fingerprint = fingerprint
        return True


def _counting_handshakes(on_failure: Callable[[str], None]) -> type[ssl.SSLObject]:
    class CountingSSLObject(ssl.SSLObject):
        """asyncio drops a failed server-side handshake without a word (an SSLError is an
        OSError): this is the public hook (``SSLContext.sslobject_class``) that sees it."""

        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as e:
                on_failure(e.reason or type(e).__name__)
                raise

    return CountingSSLObject


def _replace_file(path: Path, data: bytes, mode: int) -> None:
    """Write beside, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)


class CertificateSource(Protocol):
    """Where the served certificate comes from, read again every check period."""

    async def refresh(self, tls: ServingTLS) -> bytes:
        """Load the current certificate into ``tls``; returns the CA bundle to register."""
        ...


@dataclass
class SharedSecretSource:
    """The CA and serving certificate every replica shares (``podgate.kube.webhookcerts``),
    rotated here when due."""

    secret: CertificateSecret

    async def refresh(self, tls: ServingTLS) -> bytes:
        material = await self.secret.sync()
        if tls.load(material.cert, material.key, material.bundle):
            log.info("webhook: serving certificate %s", material.fingerprint)
        await self.secret.report(material)
        return material.bundle


@dataclass
class FileSource:
    """Certificate files someone else renews and whose CA someone else registers (cert-manager
    and its CA injector): podgate only serves them."""

    cert_file: Path
    key_file: Path

    async def refresh(self, tls: ServingTLS) -> bytes:
        if tls.load_files(self.cert_file, self.key_file):
            log.info("webhook: serving certificate %s from %s", tls.fingerprint, self.cert_file)
        return self.cert_file.read_bytes()


async def keep_serving(
    tls: ServingTLS,
    source: CertificateSource,
    registration: Callable[[bytes], Awaitable[object]] | None,
    period: float,
    first: asyncio.Event,
) -> None:
    """Every ``period``: the current certificate into ``tls`` and its CA bundle registered (a
    write only when it differs).  ``first`` is set once a certificate is loaded and its bundle
    registered: the server starts then, and the replica is ready (before, the API server would
    not trust it, and pods admitted meanwhile would start ungated).  A failure (API server away,
    a Secret mid-change) is retried on the next round; the certificate served meanwhile stays."""
    while True:
        try:
            bundle = await source.refresh(tls)
            if registration is not None:
                await registration(bundle)
            first.set()
        except (KubeError, CertificateError, OSError, ValueError) as e:
            # ssl.SSLError is an OSError; an unreadable PEM a ValueError
            log.warning("webhook certificates: %s; trying again in %gs", e, period)
        await asyncio.sleep(period)


TIMEOUT_SECONDS = 5
"""How long the API server waits for the webhook (its configuration's ``timeoutSeconds``)."""


def certificate_names(url: str | None, service: str | None, bind: str) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses the serving certificate is for (pure): the Service's names
    when registered by Service, the URL's host when by URL, and loopback for local callers."""
    dns, ips = ["localhost"], ["127.0.0.1"]
    if service:
        ns, name = service.split("/", 1)
        dns += [f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
    hosts = [bind] if bind not in ("0.0.0.0", "::") else []
    if url:
        hosts.append(urlsplit(url).hostname or "")
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host and host not in dns:
                dns.append(host)
        else:
            if host not in ips:
                ips.append(host)
    return dns, ips


def client_config(
    ca_bundle: bytes, url: str | None, service: tuple[str, str, int] | None, path: str
) -> dict[str, Any]:
    """How the API server reaches a webhook of podgate's (pure): by URL (the sandbox, out of
    cluster) or by Service reference with ``path``, trusting ``ca_bundle`` either way."""
    config: dict[str, Any] = {"caBundle": base64.b64encode(ca_bundle).decode()}
    if url:
        config["url"] = url
    elif service:
        config["service"] = {"namespace": service[0], "name": service[1], "port": service[2], "path": path}
    return config


def webhook_configuration(
    name: str,
    ca_bundle: bytes,
    *,
    url: str | None,
    service: tuple[str, str, int] | None,
    skip_label_value: str = "disabled",
    timeout_seconds: int = TIMEOUT_SECONDS,
    migration_labels: bool = False,
) -> dict[str, Any]:
    """MutatingWebhookConfiguration for pod CREATE in opted-in namespaces (pure): one webhook
    per opt-in label (``gates.namespace_selectors``), the first under the historical name."""
    config = client_config(ca_bundle, url, service, PATH)
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "podgate"}},
        "webhooks": [
            {
                "name": "readiness-gates.podgate.dev" if i == 0 else f"readiness-gates-{i}.podgate.dev",
                "admissionReviewVersions": ["v1"],
                "clientConfig": config,
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


async def register(
    kube: Kube,
    body: dict[str, Any],
    attempts: int = 3,
    resource: Resource = MUTATING_WEBHOOK_CONFIGURATIONS,
) -> bool:
    """Create the webhook configuration (mutating, or the eviction guard's validating one), or
    replace it when it differs from ``body`` (a new CA bundle, say); returns whether it wrote.
    Every replica registers at start and after each rotation: writing only on change, and
    reading again when another replica wrote first (it most likely wrote the same), keeps them
    from rewriting the same object in turn."""
    name = body["metadata"]["name"]
    for attempt in range(attempts):
        try:
            current = await kube.get(resource, name)
        except NotFound:
            try:
                await kube.create(resource, body)
            except Conflict:
                continue
            log.info("registered %s %s", resource.kind, name)
            return True
        if covers(current, body):
            return False
        rv = current["metadata"]["resourceVersion"]
        try:
            await kube.replace(
                resource,
                name,
                {**body, "metadata": {**body["metadata"], "resourceVersion": rv}},
            )
        except Conflict:
            if attempt == attempts - 1:
                raise
            continue
        log.info("updated %s %s", resource.kind, name)
        return True
    raise Conflict(f"{resource.kind} {name} kept changing under {attempts} attempts")


async def unregister(kube: Kube, name: str) -> bool:
    """Delete the webhook configuration podgate registers (``--no-inject``): a webhook that passes
    every pod unchanged would only add a call, and its latency, to every pod creation.  Returns
    whether there was one."""
    try:
        await kube.delete(MUTATING_WEBHOOK_CONFIGURATIONS, name)
    except NotFound:
        return False
    log.info("removed MutatingWebhookConfiguration %s: injection is off", name)
    return True


def covers(actual: Any, wanted: Any) -> bool:
    """Whether ``actual`` holds everything ``wanted`` says (pure): the API server adds defaults
    (matchPolicy, a Service port, ...) that a body podgate sends never mentions."""
    if isinstance(wanted, Mapping):
        return isinstance(actual, Mapping) and all(covers(actual.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(covers(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return bool(actual == wanted)
