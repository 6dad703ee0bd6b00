"""The webhook's CA and serving certificate, shared by every replica through one Secret.

Each replica generating its own (an emptyDir per pod) would make them overwrite one another's
``caBundle``, and the API server would then fail TLS with every replica but the last: with
failurePolicy Ignore those pods start ungated.  So the Secret is created if absent (the replica
that loses the race reads the winner's), every replica serves its certificate, and rotation is
one step at a time on the Secret's resourceVersion (``podgate.model.certs`` says which step).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from podgate.kube import pki
from podgate.kube.api import SECRETS, Conflict, Kube, NotFound, Obj, PatchType
from podgate.model.certs import CertState, RotationPolicy, Served, Step, next_step, should_report

log = logging.getLogger(__name__)

CA, CA_KEY, CERT, KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"
NEXT_CA, NEXT_CA_KEY, PREVIOUS_CA = "ca-next.crt", "ca-next.key", "ca-previous.crt"
NEXT_CA_SINCE = "podgate.dev/next-ca-since"
PREVIOUS_CA_SINCE = "podgate.dev/previous-ca-since"
#: + a replica's hash: "FINGERPRINT UNIX-TIME IDENTITY", what that replica serves
SERVED = "served.podgate.dev/"
#: attempts at one change when other replicas keep changing the Secret first
ATTEMPTS = 8


class CertificateError(RuntimeError):
    """The Secret could not be read or written; the message says why."""


@dataclass(frozen=True)
class Material:
    """What a replica serves, and the CAs the API server must trust for it (and for any other
    replica's): the current CA, a next one being introduced, a previous one being retired."""

    cert: bytes
    key: bytes
    bundle: bytes
    #: the serving certificate's, and what each replica last said it serves
    fingerprint: str
    served: Mapping[str, Served]


def replica_key(identity: str) -> str:
    """The annotation one replica reports under (its identity may be longer than a key allows)."""
    return SERVED + hashlib.sha256(identity.encode()).hexdigest()[:16]


class CertificateSecret:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        dns_names: list[str],
        ips: list[str],
        policy: RotationPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.dns_names, self.ips, self.policy, self.clock = dns_names, ips, policy, clock

    async def sync(self) -> Material:
        """Read the Secret (creating it if absent), take the rotation step that is due, and return
        what to serve.  Another replica's write in between is read again, never overwritten."""
        for _ in range(ATTEMPTS):
            try:
                secret = await self.kube.get(SECRETS, self.name, self.namespace)
            except NotFound:
                try:
                    secret = await self.kube.create(SECRETS, self._fresh(), self.namespace)
                    log.info("webhook certificates: created Secret %s/%s", self.namespace, self.name)
                except Conflict:
                    continue  # another replica created it first: serve the winner's
            try:
                step = next_step(state_of(secret, self.dns_names + self.ips), self.clock(), self.policy)
                body = self._stepped(secret, step)
            except (KeyError, ValueError) as e:
                step, body = Step.RENEW_SERVING, self._fresh(secret)  # unusable: start again
                log.warning(
                    "webhook certificates: Secret %s/%s unusable (%s); replacing it",
                    self.namespace,
                    self.name,
                    e,
                )
            if body is None:
                return material(secret)
            try:
                secret = await self.kube.replace(SECRETS, self.name, body, self.namespace)
            except Conflict:
                continue
            log.info("webhook certificates: %s", step)
            return material(secret)
        raise CertificateError(f"Secret {self.namespace}/{self.name} kept changing under {ATTEMPTS} attempts")

    async def report(self, serving: Material) -> bool:
        """Say which certificate this replica serves (after loading ``serving``), when that changed
        or is due, so a CA it replaced is retired only once every replica has moved; returns
        whether it wrote."""
        now = self.clock()
        key = replica_key(self.identity)
        if not should_report(serving.served.get(key), serving.fingerprint, now, self.policy):
            return False
        annotations = {key: f"{serving.fingerprint} {now:.3f} {self.identity}"}
        await self.kube.patch(
            SECRETS,
            self.name,
            {"metadata": {"annotations": annotations}},
            self.namespace,
            patch_type=PatchType.STRATEGIC,
        )
        return True

    # -- bodies -------------------------------------------------------------------------------
    def _fresh(self, current: Obj | None = None) -> dict[str, Any]:
        ca = _new_ca(self.policy)
        cert, key = self._serving(ca)
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": self.name, "labels": {"app.kubernetes.io/name": "podgate"}},
            "type": "Opaque",
            "data": _encoded({CA: ca[0], CA_KEY: ca[1], CERT: cert, KEY: key}),
        }
        if current is not None:
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return body

    def _serving(self, ca: tuple[bytes, bytes], current: bytes | None = None) -> tuple[bytes, bytes]:
        """A serving certificate for this replica's names and every name the ``current`` one
        covers: replicas reached in different ways (a Service, a URL) then converge on one
        certificate valid for all of them, instead of taking turns replacing it."""
        dns, ips = list(self.dns_names), list(self.ips)
        if current is not None:
            old_dns, old_ips = pki.subject_names(current)
            dns += [d for d in old_dns if d not in dns]
            ips += [i for i in old_ips if i not in ips]
        return pki.new_serving_cert(
            "podgate-webhook", dns, ips, ca, dt.timedelta(seconds=self.policy.validity)
        )

    def _stepped(self, secret: Obj, step: Step) -> dict[str, Any] | None:
        """The Secret after ``step`` (None: nothing to change); reports of replicas gone silent are
        dropped with any change, so they do not pile up."""
        if step is Step.NOTHING:
            return None
        data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
        annotations = dict(secret["metadata"].get("annotations") or {})
        now = self.clock()
        if step is Step.ADD_NEXT_CA:
            data[NEXT_CA], data[NEXT_CA_KEY] = _new_ca(self.policy)
            annotations[NEXT_CA_SINCE] = f"{now:.3f}"
        elif step is Step.PROMOTE_NEXT_CA:
            data[PREVIOUS_CA] = data[CA]
            data[CA], data[CA_KEY] = data.pop(NEXT_CA), data.pop(NEXT_CA_KEY)
            data[CERT], data[KEY] = self._serving((data[CA], data[CA_KEY]), data[CERT])
            del annotations[NEXT_CA_SINCE]
            annotations[PREVIOUS_CA_SINCE] = f"{now:.3f}"
        elif step is Step.RENEW_SERVING:
            data[CERT], data[KEY] = self._serving((data[CA], data[CA_KEY]), data[CERT])
        elif step is Step.DROP_PREVIOUS_CA:
            del data[PREVIOUS_CA]
            del annotations[PREVIOUS_CA_SINCE]
        live = {k for k, s in _served(annotations).items() if now - s.at < self.policy.settle}
        annotations = {k: v for k, v in annotations.items() if not k.startswith(SERVED) or k in live}
        return {
            **secret,
            "metadata": {**secret["metadata"], "annotations": annotations},
            "data": _encoded(data),
        }


def _new_ca(policy: RotationPolicy) -> tuple[bytes, bytes]:
    """A CA with a name of its own, so a caller trusting two during a rotation tells them apart."""
    return pki.new_ca(f"podgate-webhook-ca-{secrets.token_hex(4)}", dt.timedelta(seconds=policy.ca_validity))


def state_of(secret: Obj, names: list[str] | None = None) -> CertState:
    """What rotation needs to know of the Secret, for a replica that needs ``names`` (DNS names
    and IP addresses) served; KeyError or ValueError when it is unusable."""
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    annotations = secret["metadata"].get("annotations") or {}
    for required in (CA_KEY, KEY):
        if not data[required]:
            raise ValueError(f"{required} is empty")
    dns, ips = pki.subject_names(data[CERT])
    return CertState(
        ca=pki.validity(data[CA]),
        serving=pki.validity(data[CERT]),
        serving_fingerprint=pki.fingerprint(data[CERT]),
        next_ca_since=float(annotations[NEXT_CA_SINCE]) if NEXT_CA in data else None,
        previous_ca_since=float(annotations[PREVIOUS_CA_SINCE]) if PREVIOUS_CA in data else None,
        served=_served(annotations),
        missing_names=frozenset(names or ()) - frozenset([*dns, *ips]),
    )


def material(secret: Obj) -> Material:
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    bundle = b"".join(data[k] for k in (CA, NEXT_CA, PREVIOUS_CA) if k in data)
    served = _served(secret["metadata"].get("annotations") or {})
    return Material(data[CERT], data[KEY], bundle, pki.fingerprint(data[CERT]), served)


def _served(annotations: Mapping[str, str]) -> dict[str, Served]:
    out = {}
    for k, v in annotations.items():
        parts = v.split(" ")
        if k.startswith(SERVED) and len(parts) >= 2:
            try:
                out[k] = Served(parts[0], float(parts[1]))
            except ValueError:
                continue  # not ours to read: it counts as silent
    return out


def _encoded(data: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in sorted(data.items())}
