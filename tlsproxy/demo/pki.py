"""A throw-away PKI for tests, benchmarks and ``tlsproxy demo``: a CA that issues server and client
certificates and CRLs (:class:`CertificateAuthority`).

Not part of the product: the product reads certificates (tlsproxy/certs.py) but never makes them.
Besides tlsproxy/certs.py, this is the only module of tlsproxy that imports ``cryptography``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tlsproxy.certs import as_utc, certificate_pem, private_key_pem, utcnow, write_file, write_private_file

__all__ = [
    "CertificateAuthority",
    "IssuedCertificate",
    "KeyType",
]

KeyType = Literal["rsa2048", "rsa4096", "ec256"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

DEFAULT_BACKDATE = timedelta(hours=1)
DEFAULT_LEAF_LIFETIME = timedelta(days=365)
DEFAULT_CA_LIFETIME = timedelta(days=3650)
CRL_LIFETIME = timedelta(days=7)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _validity(
    not_before: datetime | None, not_after: datetime | None, lifetime: timedelta
) -> tuple[datetime, datetime]:
    now = utcnow()
    start = as_utc(not_before) if not_before is not None else now - DEFAULT_BACKDATE
    end = as_utc(not_after) if not_after is not None else now + lifetime
    if end <= start:
        raise ValueError(f"not_after ({end.isoformat()}) must be later than not_before ({start.isoformat()})")
    return start, end


def _generate_key(key_type: KeyType) -> PrivateKey:
    if key_type == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "rsa4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    if key_type == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unknown key type {key_type!r}; expected rsa2048, rsa4096 or ec256")


def _common_name(value: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, value)])


def _leaf_key_usage(key: PrivateKey) -> x509.KeyUsage:
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=is_rsa,
        data_encipherment=False,
        key_agreement=not is_rsa,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


_SPKI_DER = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _public_key_der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(*_SPKI_DER)


def _write_public_file(path: Path, data: bytes) -> None:
    write_file(path, data, 0o644)


# --------------------------------------------------------------------------------------------
# The CA and what it issues
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedCertificate:
    """A leaf certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)  # PKCS#8, unencrypted
    serial_number: int

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write the certificate (mode 0644) and the key (mode 0600)."""
        _write_public_file(Path(cert_path), self.cert_pem)
        write_private_file(Path(key_path), self.key_pem)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA that issues server and client certificates and CRLs, for tests and demos.

    Build one with :meth:`create`, or from existing PEM with ``CertificateAuthority(cert_pem, key_pem)``.
    """

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    _certificate: x509.Certificate = field(init=False, repr=False, compare=False)
    _key: PrivateKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        certificate = x509.load_pem_x509_certificate(self.cert_pem)
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise ValueError("the CA key must be an RSA or EC key")
        if _public_key_der(key) != certificate.public_key().public_bytes(*_SPKI_DER):
            raise ValueError("the CA key does not match the CA certificate")
        object.__setattr__(self, "_certificate", certificate)
        object.__setattr__(self, "_key", key)

    @classmethod
    def create(
        cls,
        common_name: str = "tlsproxy test CA",
        *,
        key_type: KeyType = "rsa2048",
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> CertificateAuthority:
        """Create a self-signed CA (default validity: now-1h .. now+10y)."""
        key = _generate_key(key_type)
        start, end = _validity(not_before, not_after, DEFAULT_CA_LIFETIME)
        name = _common_name(common_name)
        public_key = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate_pem(certificate), private_key_pem(key))

    @property
    def subject(self) -> str:
        return self._certificate.subject.rfc4514_string()

    def issue_server(
        self,
        dns_names: Sequence[str] = ("localhost",),
        ip_addresses: Sequence[str] = ("127.0.0.1", "::1"),
        *,
        common_name: str | None = None,
        key_type: KeyType = "rsa2048",
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> IssuedCertificate:
        """Issue a serverAuth certificate whose SAN lists ``dns_names`` and ``ip_addresses``."""
        if isinstance(dns_names, str) or isinstance(ip_addresses, str):
            raise TypeError("dns_names and ip_addresses must be sequences of strings, not a string")
        san: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        san += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
        if common_name is None:
            common_name = next(iter([*dns_names, *ip_addresses]), "tlsproxy test server")
        extensions: list[x509.ExtensionType] = [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])]
        if san:
            extensions.append(x509.SubjectAlternativeName(san))
        return self._issue(common_name, key_type, not_before, not_after, extensions)

    def issue_client(
        self,
        common_name: str,
        *,
        key_type: KeyType = "rsa2048",
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> IssuedCertificate:
        """Issue a clientAuth certificate with subject CN=``common_name``."""
        extensions: list[x509.ExtensionType] = [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])]
        return self._issue(common_name, key_type, not_before, not_after, extensions)

    def _issue(
        self,
        common_name: str,
        key_type: KeyType,
        not_before: datetime | None,
        not_after: datetime | None,
        extensions: Sequence[x509.ExtensionType],
    ) -> IssuedCertificate:
        key = _generate_key(key_type)
        start, end = _validity(not_before, not_after, DEFAULT_LEAF_LIFETIME)
        serial_number = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_common_name(common_name))
            .issuer_name(self._certificate.subject)
            .public_key(key.public_key())
            .serial_number(serial_number)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_key_usage(key), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(self._authority_key_identifier(), critical=False)
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        return IssuedCertificate(certificate_pem(certificate), private_key_pem(key), serial_number)

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        ski = self._certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)

    def crl_pem(self, revoked_serials: Sequence[int] = ()) -> bytes:
        """A CRL signed by this CA listing ``revoked_serials``; next update in 7 days."""
        now = utcnow()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._certificate.subject)
            .last_update(now - timedelta(minutes=1))
            .next_update(now + CRL_LIFETIME)
            .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
            .add_extension(self._authority_key_identifier(), critical=False)
        )
        for serial_number in revoked_serials:
            revoked = (
                x509.RevokedCertificateBuilder()
                .serial_number(serial_number)
                .revocation_date(now - timedelta(minutes=1))
                .build()
            )
            builder = builder.add_revoked_certificate(revoked)
        crl = builder.sign(self._key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)

    def write(self, cert_path: Path) -> None:
        """Write the CA certificate (not its key) as PEM."""
        _write_public_file(Path(cert_path), self.cert_pem)
