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
from podgate.kube.api import Kube, KubeError, NotFound, PatchType, Resource
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
    synced: Callable[[], bool] | None = None,
) -> web.Application:
    """The webhook app; ``observe(result, seconds)`` is told about every request (metrics);
    ``synced()`` says whether the caches a review reads are filled (by default: the Services')."""
    is_synced = synced or services.synced.is_set

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
        while not is_synced() and time.monotonic() < deadline:  # noqa: ASYNC110
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
                # pods no review could change never reach podgate (gates.MATCH_CONDITIONS)
                "matchConditions": [dict(c) for c in gates.MATCH_CONDITIONS],
                # An outage of podgate must never block pod creation: pods then start ungated.
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "timeoutSeconds": timeout_seconds,
                "reinvocationPolicy": "IfNeeded",
            }
            for i, selector in enumerate(gates.namespace_selectors(migration_labels))
        ],
    }


class ConfigurationMissing(KubeError):
    """podgate's webhook configuration does not exist: an installer writes it (deploy/), podgate
    only keeps its ``caBundle`` current."""


async def patch_ca_bundle(kube: Kube, resource: Resource, name: str, ca_bundle: bytes) -> bool:
    """Write ``ca_bundle`` into every webhook of podgate's own configuration ``name``, and
    nothing else; returns whether it wrote.

    The configurations are static, applied by the installer (deploy/base/webhooks.yaml, or the
    sandbox): podgate's rights on them are ``get`` and ``patch`` by name, so a compromised
    controller cannot create a configuration, and the ValidatingAdmissionPolicy in deploy/policy
    refuses any patch of it that changes more than a ``caBundle``.  Every replica patches at start
    and after each rotation; only stale webhooks are written, so replicas agreeing write nothing.
    A strategic merge by webhook name (the list's merge key) touches no other field."""
    try:
        current = await kube.get(resource, name)
    except NotFound:
        raise ConfigurationMissing(
            f"{resource.kind} {name} does not exist: podgate only keeps its caBundle current; "
            "apply it with the rest of podgate (deploy/base/webhooks.yaml)"
        ) from None
    encoded = base64.b64encode(ca_bundle).decode()
    stale = [
        hook["name"]
        for hook in current.get("webhooks") or ()
        if (hook.get("clientConfig") or {}).get("caBundle") != encoded
    ]
    if not stale:
        return False
    patch = {"webhooks": [{"name": n, "clientConfig": {"caBundle": encoded}} for n in stale]}
    await kube.patch(resource, name, patch, patch_type=PatchType.STRATEGIC)
    log.info("wrote the CA bundle into %s %s (%s)", resource.kind, name, ", ".join(stale))
    return True
