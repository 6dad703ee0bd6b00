"""Certificates and keys with ``cryptography``: in memory (PEM bytes) for the webhook's shared
certificates, and as files generated once per directory for the sandbox (its CA, the API server's
serving certificate, the service-account signing key)."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from podgate.model.certs import Validity

#: how far back a certificate's validity starts, at most: clocks in a cluster differ a little
BACKDATE = dt.timedelta(hours=1)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _serving_key() -> ec.EllipticCurvePrivateKey:
    """A serving certificate's key: ECDSA P-256.  Every new TLS connection costs the server one
    signature, about 20 times cheaper than RSA 2048's; the API server opens many at once to a
    webhook during a burst of pod creations, one per concurrent review."""
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def new_ca(name: str, validity: dt.timedelta) -> tuple[bytes, bytes]:
    """A self-signed CA: its certificate and key, PEM."""
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - min(BACKDATE, validity / 10))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def new_serving_cert(
    name: str, dns_names: list[str], ips: list[str], ca: tuple[bytes, bytes], validity: dt.timedelta
) -> tuple[bytes, bytes]:
    """A server certificate signed by ``ca`` (PEM certificate and key), valid for the given names
    and addresses, and never beyond its CA."""
    ca_cert = x509.load_pem_x509_certificate(ca[0])
    ca_key = serialization.load_pem_private_key(ca[1], None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    key = _serving_key()
    now = dt.datetime.now(dt.UTC)
    san: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    san += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - min(BACKDATE, validity / 10), ca_cert.not_valid_before_utc))
        .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # which CA signed it, when two of the same name are trusted during a CA rotation
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def validity(cert_pem: bytes) -> Validity:
    """The first certificate's lifetime in ``cert_pem``, in seconds since the epoch."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return Validity(cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp())


def subject_names(cert_pem: bytes) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses the first certificate in ``cert_pem`` is valid for."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return san.get_values_for_type(x509.DNSName), [str(a) for a in san.get_values_for_type(x509.IPAddress)]


def fingerprint(cert_pem: bytes) -> str:
    """A short SHA-256 fingerprint of the first certificate in ``cert_pem``: which one a replica serves."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()[:16]


def ensure_ca(pki: Path, name: str = "podgate-sandbox-ca") -> tuple[Path, Path]:
    crt, key_path = pki / "ca.crt", pki / "ca.key"
    if crt.exists() and key_path.exists():
        return crt, key_path
    pki.mkdir(parents=True, exist_ok=True)
    cert, key = new_ca(name, dt.timedelta(days=3650))
    _write(key_path, key, private=True)
    _write(crt, cert)
    return crt, key_path


def ensure_serving_cert(
    pki: Path, name: str, dns_names: list[str], ips: list[str], ca: tuple[Path, Path]
) -> tuple[Path, Path]:
    """A server certificate signed by the sandbox CA, valid for the given names and addresses."""
    crt, key_path = pki / f"{name}.crt", pki / f"{name}.key"
    if crt.exists() and key_path.exists():
        return crt, key_path
    cert, key = new_serving_cert(
        name, dns_names, ips, (ca[0].read_bytes(), ca[1].read_bytes()), dt.timedelta(days=825)
    )
    _write(key_path, key, private=True)
    _write(crt, cert)
    return crt, key_path


def ensure_keypair(pki: Path, name: str) -> tuple[Path, Path]:
    """An RSA key pair (``NAME.key`` private, ``NAME.pub`` public), e.g. for service accounts."""
    priv, pub = pki / f"{name}.key", pki / f"{name}.pub"
    if priv.exists() and pub.exists():
        return priv, pub
    pki.mkdir(parents=True, exist_ok=True)
    key = _key()
    _write(priv, _pem_key(key), private=True)
    _write(
        pub,
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return priv, pub
