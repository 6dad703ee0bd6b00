"""The webhook's HTTPS listener, every replica's: admission (pods) and the eviction guard, with
the certificate that keeps it trusted and the registration that points the API server at it
(the drain hook has a port of its own: :mod:`podgate.app.drain_server`).

By default (``--admission thread``) the server runs on a thread and event loop of its own
(:mod:`podgate.webhook.isolated`), so admission never waits for a reconcile; with
``--admission process`` a process of the controller's own serves it (:mod:`podgate.app.admission`),
out of reach of the controller's interpreter lock and garbage collections too.  Either way
eviction reviews are answered on the controller's loop, where the caches and the load balancers
are.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from podgate.app.admission import AdmissionProcess, ChildConfig, no_setup
from podgate.controller.checks import parsed_checks
from podgate.controller.settings import ControllerSettings
from podgate.kube.api import MUTATING_WEBHOOK_CONFIGURATIONS, VALIDATING_WEBHOOK_CONFIGURATIONS, Kube, Obj
from podgate.kube.client import user_agent
from podgate.kube.informer import Informer
from podgate.kube.webhookcerts import CertificateSecret
from podgate.model import gates
from podgate.model.certs import RotationPolicy
from podgate.model.types import Service
from podgate.resolutions import ServiceResolutions
from podgate.webhook import eviction, isolated
from podgate.webhook import server as webhook
from podgate.webhook.admission import InjectionPolicy

log = logging.getLogger(__name__)


class WebhookServer:
    def __init__(
        self,
        settings: ControllerSettings,
        kube: Kube,
        services: Informer[Service],
        checks: Informer[Obj],
        resolutions: ServiceResolutions,
        guard: eviction.EvictionGuard,
        *,
        observe: Callable[[str, float], None] = lambda result, seconds: None,
        on_tls_failure: Callable[[str], None] = lambda reason: None,
        child_setup: Callable[[], None] = no_setup,
    ) -> None:
        """``child_setup``: what the admission process calls first (its logging, as the
        controller's); picklable, as the process is started with it."""
        self.settings, self.kube = settings, kube
        self.services, self.checks, self.resolutions = services, checks, resolutions
        self.guard = guard
        self.observe, self.on_tls_failure = observe, on_tls_failure
        self.child_setup = child_setup
        #: set once the server listens with a certificate (and, when registering, its CA bundle
        #: is registered): /readyz waits for it
        self.up = asyncio.Event()

    async def run(self) -> None:
        """Serve until cancelled, once the first certificate is in place; then stop the server
        and, after it, the certificate keeper."""
        s = self.settings
        tls = webhook.ServingTLS(s.webhook_cert_dir, self.on_tls_failure)
        registration = await self._registration()
        first = asyncio.Event()
        keeper = asyncio.create_task(
            webhook.keep_serving(tls, self._source(), registration, s.webhook_cert_check_period, first),
            name="webhook certificates",
        )
        try:
            await first.wait()
            policy = await self.injection_policy()
            if s.admission == "process":
                child = AdmissionProcess(
                    self._child_config(policy), self.guard.answer, self.observe, self.on_tls_failure, self.up
                )
                await child.run()
            else:
                await self._serve_on_thread(tls, policy)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def _serve_on_thread(self, tls: webhook.ServingTLS, policy: InjectionPolicy) -> None:
        s = self.settings
        app = webhook.make_app(
            self.services,
            lambda service: self.resolutions.of(service).handled,
            policy,
            self.observe,
            lambda: parsed_checks(self.checks),
        )
        loop = asyncio.get_running_loop()
        app.router.add_post(
            eviction.PATH, isolated.on_loop(loop, self.guard.answer, eviction.MAX_REVIEW_BYTES)
        )
        # An admission call the API server has given up on (after its timeoutSeconds) need not
        # hold up a stop: aiohttp would otherwise wait 60 s for in-flight requests.
        server = isolated.ServerThread(
            app, s.webhook_bind, s.webhook_port, tls.context, shutdown_timeout=webhook.TIMEOUT_SECONDS
        )
        await server.start()
        try:
            self.up.set()
            await asyncio.Event().wait()
        finally:
            await server.cleanup()

    def _child_config(self, policy: InjectionPolicy) -> ChildConfig:
        """The admission process's start: what it serves and where, the certificate files this
        replica keeps, and what it cannot compute alone (the providers' group annotations, the
        API server's version, the drain URL from the webhook Service)."""
        s = self.settings
        cert_dir = s.webhook_cert_dir
        return ChildConfig(
            kubeconfig=s.kubeconfig,
            user_agent=user_agent(f"{s.identity}; admission"),
            bind=s.webhook_bind,
            port=s.webhook_port,
            cert_file=s.webhook_cert_file or cert_dir / "tls.crt",
            key_file=s.webhook_key_file or cert_dir / "tls.key",
            cert_check_period=s.webhook_cert_check_period,
            resolution=self.resolutions.settings,
            policy=policy,
            shutdown_timeout=float(webhook.TIMEOUT_SECONDS),
            setup=self.child_setup,
        )

    async def injection_policy(self) -> InjectionPolicy:
        s = self.settings
        drain_url = s.drain_url or derived_drain_url(s, self.services.cache)
        if s.prestop_default().mode == "drain" and not drain_url:
            log.warning(
                "the drain hook is the default preStop but podgate does not know where the kubelet can "
                "reach it: give --drain-url (or --webhook-service); pods get no preStop hook meanwhile"
            )
        version = await self.server_version()
        return InjectionPolicy(
            s.inject,
            s.remove_gate_prefixes,
            s.skip_label_value,
            s.prestop_default(),
            drain_url,
            gates.native_sleep_supported(version),
            gates.hook_headers_sent(version),
        )

    async def server_version(self) -> Mapping[str, Any] | None:
        """The API server's ``/version`` (the lifecycle ``sleep`` action, 1.30+; the drain token
        in a header, 1.27+); None when it cannot be read, which means ``exec sleep`` and the
        token in the path (both work on every release)."""
        try:
            async with asyncio.timeout(5.0):
                return await self.kube.version()
        except Exception as e:
            log.warning("cannot read the API server's version (%s): sleep hooks are exec sleep", e)
            return None

    def _source(self) -> webhook.CertificateSource:
        s = self.settings
        if s.webhook_cert_file and s.webhook_key_file:
            return webhook.FileSource(s.webhook_cert_file, s.webhook_key_file)
        dns, ips = webhook.certificate_names(s.webhook_url, s.webhook_service, s.webhook_bind)
        rotation = RotationPolicy(
            validity=s.webhook_cert_validity,
            ca_validity=s.webhook_ca_validity,
            renew_at=s.webhook_cert_renew_at,
            settle=6 * s.webhook_cert_check_period,
        )
        return webhook.SharedSecretSource(
            CertificateSecret(self.kube, s.namespace, s.webhook_cert_secret, s.identity, dns, ips, rotation)
        )

    async def _registration(self) -> Callable[[bytes], Any] | None:
        """What keeps the CA bundle of podgate's webhook configurations current (None: nothing
        does).  The configurations themselves are the installer's (deploy/base/webhooks.yaml, or
        the sandbox's): podgate patches their ``caBundle`` by name and nothing else
        (:func:`podgate.webhook.server.patch_ca_bundle`).  The mutating one must exist while
        injecting (the replica is not ready until it does: pods would start ungated); with
        ``--no-inject`` podgate leaves it alone (remove it, or do not apply it).  The eviction
        guard's may be left out: evictions then go unguarded, said once in the log.

        Certificate files (``--webhook-cert-file``, cert-manager's Secret) mean someone else owns
        the trust: a serving certificate is not a trust anchor (cert-manager issues it from a CA
        whose certificate its CA injector writes into the static configurations), so podgate
        writes nothing then, even with ``--webhook-service`` (given there for the drain URL)."""
        s = self.settings
        if s.webhook_cert_file is not None or not (s.webhook_url or s.webhook_service):
            return None
        warned = False

        async def register(bundle: bytes) -> None:
            nonlocal warned
            if s.inject:
                await webhook.patch_ca_bundle(
                    self.kube, MUTATING_WEBHOOK_CONFIGURATIONS, s.webhook_config_name, bundle
                )
            try:
                await webhook.patch_ca_bundle(
                    self.kube, VALIDATING_WEBHOOK_CONFIGURATIONS, s.webhook_config_name, bundle
                )
            except webhook.ConfigurationMissing as e:
                if not warned:
                    log.warning("%s; evictions are not guarded", e)
                    warned = True

        return register


def derived_drain_url(settings: ControllerSettings, services: Mapping[str, Service]) -> str | None:
    """Where the kubelet reaches the drain endpoint when no --drain-url is given: the ClusterIP of
    the --webhook-service, at its port named ``drain`` or targeting the drain listener (plain
    HTTP: the kubelet's httpGet hook is before Kubernetes 1.25).  None: not known; never the
    health port, which no longer serves the hook."""
    if not settings.webhook_service:
        return None
    svc = services.get(settings.webhook_service)
    spec = (svc or {}).get("spec") or {}
    ip = spec.get("clusterIP")
    if not ip or ip == "None":
        return None
    for port in spec.get("ports") or ():
        if port.get("targetPort") in ("drain", settings.drain_port) or port.get("name") == "drain":
            return f"http://{ip}:{port['port']}"
    return None
