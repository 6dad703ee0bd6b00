"""The static webhook configurations in deploy/base are what podgate renders: the same webhooks,
rules, selectors and policies (podgate only writes their caBundle, or cert-manager's injector
does in its overlay).  Written by hand once, they must not drift from the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from podgate.webhook import eviction
from podgate.webhook import server as webhook

DEPLOY = Path(__file__).parents[2] / "deploy"
STATIC = DEPLOY / "base" / "webhooks.yaml"
CERTIFICATES = DEPLOY / "overlays" / "cert-manager" / "certificate.yaml"
PATCH = CERTIFICATES.with_name("deployment-patch.yaml")
INJECTION = CERTIFICATES.with_name("ca-injection.yaml")
SERVICE = ("podgate-system", "podgate", 443)


def _without_ca(config: dict[str, Any]) -> list[dict[str, Any]]:
    hooks = [dict(h) for h in config["webhooks"]]
    for h in hooks:
        h["clientConfig"] = {k: v for k, v in h["clientConfig"].items() if k != "caBundle"}
    return hooks


def _static(kind: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(STATIC.read_text()) if d]
    (found,) = [d for d in docs if d["kind"] == kind]
    assert "caBundle" not in str(found), "the CA is written at run time, never shipped"
    return found


def test_the_mutating_webhook_is_the_one_the_controller_registers() -> None:
    registered = webhook.webhook_configuration("podgate", b"", url=None, service=SERVICE)
    assert _static("MutatingWebhookConfiguration")["webhooks"] == _without_ca(registered)


def test_the_eviction_guard_is_there_too() -> None:
    registered = eviction.webhook_configuration("podgate", b"", url=None, service=SERVICE)
    assert _static("ValidatingWebhookConfiguration")["webhooks"] == _without_ca(registered)


def test_cert_manager_injects_the_ca_into_both_from_the_ca_certificate() -> None:
    """From the CA, not the serving certificate: a leaf renewal leaves the trust anchor alone."""
    docs = [d for d in yaml.safe_load_all(INJECTION.read_text()) if d]
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == {
        ("MutatingWebhookConfiguration", "podgate"),
        ("ValidatingWebhookConfiguration", "podgate"),
    }
    for d in docs:
        assert d["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": "podgate-system/podgate-ca"}


def test_the_chain_is_root_then_ca_issuer_then_leaf() -> None:
    """A self-signed root issues the CA Certificate; a CA Issuer signs from its Secret; the
    webhook's leaf comes from that Issuer and is what the Deployment mounts.  The CA keeps its
    key when renewed, so leaves signed before still verify."""
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(CERTIFICATES.read_text()) if d}
    root = docs["Issuer", "podgate-selfsigned"]["spec"]
    assert root == {"selfSigned": {}}
    ca = docs["Certificate", "podgate-ca"]["spec"]
    assert ca["isCA"] is True and ca["issuerRef"] == {"name": "podgate-selfsigned", "kind": "Issuer"}
    assert ca["privateKey"]["rotationPolicy"] == "Never"
    ca_issuer = docs["Issuer", "podgate-ca"]["spec"]
    assert ca_issuer == {"ca": {"secretName": ca["secretName"]}}
    leaf = docs["Certificate", "podgate-webhook"]["spec"]
    assert leaf["issuerRef"] == {"name": "podgate-ca", "kind": "Issuer"} and not leaf.get("isCA")
    assert set(leaf["dnsNames"]) >= {"podgate.podgate-system.svc"}
    (deployment,) = [d for d in yaml.safe_load_all(PATCH.read_text()) if d]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in volumes if v["name"] == "certs")["secret"] == {"secretName": leaf["secretName"]}


def test_the_overlay_names_its_service_so_pods_get_the_drain_hook() -> None:
    """Without --webhook-service podgate does not know the ClusterIP the kubelet reaches the
    drain endpoint at, and injects no drain hook at all."""
    from podgate.cli import controller_cmd

    (deployment,) = [d for d in yaml.safe_load_all(PATCH.read_text()) if d]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    settings = controller_cmd.controller_settings(
        [*args[1:], "--haproxy-runtime-socket", "127.0.0.1:9999"], {}
    )
    assert settings.webhook_service == "podgate-system/podgate"
    assert settings.webhook_cert_file is not None and settings.prestop_default().mode == "drain"


def test_a_leaf_signed_before_a_ca_renewal_verifies_against_the_renewed_ca() -> None:
    """Why the CA keeps its key (``rotationPolicy: Never``): the API server trusts the CA's
    certificate from the caBundle; after cert-manager renews the CA, the serving certificate
    still in use (signed before) must verify against the new CA certificate until the leaf
    is reissued — as it does with the same name and key, and does not with a new key."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "podgate-webhook-ca")])

    def ca(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    dns = "podgate.podgate-system.svc"
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def verifies(anchor: x509.Certificate) -> bool:
        verifier = PolicyBuilder().store(Store([anchor])).build_server_verifier(x509.DNSName(dns))
        try:
            verifier.verify(leaf, [])
        except VerificationError:
            return False
        return True

    assert verifies(ca(ca_key))  # the CA renewed, same key: the old leaf still verifies
    assert not verifies(ca(ec.generate_private_key(ec.SECP256R1())))  # a new key would break it
