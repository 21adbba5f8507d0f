"""Certificates and keys: the only module of the product that imports ``cryptography`` (the demo's
throw-away PKI, tlsproxy/demo/pki.py, is the other importer in the package).

It covers two needs:

* reading the CA bundle an operator hands us, in whatever shape a cloud console ships it
  (:func:`load_ca_certificates`), and describing a certificate for ``tlsproxy check``
  (:func:`summarize_certificate`);
* the proxy's own RSA key pair for the server side of the caching_sha2_password /
  sha256_password RSA exchange (:class:`AuthRsaKey`, PROTOCOL.md §5.3).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

__all__ = [
    "AuthRsaKey",
    "CertificateFileError",
    "CertificateSummary",
    "check_crl_file",
    "load_ca_certificates",
    "summarize_certificate",
]

logger = logging.getLogger(__name__)

MIN_AUTH_RSA_BITS = 2048

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----",
    re.DOTALL,
)
_PEM_CERTIFICATE_LABELS = frozenset({b"CERTIFICATE", b"X509 CERTIFICATE"})
_PEM_PKCS7_LABELS = frozenset({b"PKCS7", b"PKCS #7 SIGNED DATA", b"CMS"})


class CertificateFileError(Exception):
    """A certificate or key file could not be used; ``str()`` names the file and the problem."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Treat a naive datetime as UTC; convert an aware one to UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def private_key_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_kind(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"EC {key.curve.name}"
    return type(key).__name__


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` and leave the file with exactly ``mode``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)


def write_private_file(path: Path, data: bytes) -> None:
    write_file(path, data, 0o600)


# --------------------------------------------------------------------------------------------
# Reading CA bundles
# --------------------------------------------------------------------------------------------


def load_ca_certificates(path: Path) -> list[bytes]:
    """Read a CA bundle and return PEM certificates. Accepts: PEM (one or many certs, other text between
    blocks ignored), PKCS#7 in PEM ("-----BEGIN PKCS7-----") or DER (.p7b as cloud consoles ship it), and a
    single DER certificate. Raises CertificateFileError(path, reason) with a clear message when the file
    is unreadable, empty or holds no certificate."""
    path = Path(path)
    data = _read_file(path)
    if not data.strip():
        raise CertificateFileError(path, "the file is empty; expected PEM or DER certificates")
    if b"-----BEGIN " in data:
        certificates = _certificates_from_pem(path, data)
    else:
        certificates = _certificates_from_der(path, data)
    if not certificates:
        raise CertificateFileError(path, "no certificate found in the file")
    return [certificate_pem(certificate) for certificate in certificates]


def check_crl_file(path: Path) -> int:
    """Check that a CRL file holds PEM CRLs and nothing else (OpenSSL would take a certificate in it as
    a trusted CA). Returns the number of CRLs; CertificateFileError says what is wrong."""
    path = Path(path)
    data = _read_file(path)
    count = 0
    for number, match in enumerate(_PEM_BLOCK.finditer(data), start=1):
        label = match.group(1)
        if label != b"X509 CRL":
            raise CertificateFileError(path, f"PEM block #{number} is a {label.decode('ascii')}, not an X509 CRL; "
                                             "a CRL file must hold CRLs only")
        try:
            x509.load_pem_x509_crl(match.group(0))
        except ValueError as error:
            raise CertificateFileError(path, f"PEM block #{number} is not a valid CRL") from error
        count += 1
    if not count:
        raise CertificateFileError(path, "no PEM CRL (-----BEGIN X509 CRL-----) found in the file")
    return count


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise CertificateFileError(path, f"cannot read the file: {error.strerror or error}") from error


def _certificates_from_pem(path: Path, data: bytes) -> list[x509.Certificate]:
    certificates: list[x509.Certificate] = []
    labels: list[str] = []
    for number, match in enumerate(_PEM_BLOCK.finditer(data), start=1):
        label, body = match.group(1), match.group(2)
        labels.append(label.decode("ascii"))
        if label not in _PEM_CERTIFICATE_LABELS and label not in _PEM_PKCS7_LABELS:
            continue
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError) as error:
            raise CertificateFileError(path, f"PEM block #{number} ({labels[-1]}) is not valid base64") from error
        if label in _PEM_CERTIFICATE_LABELS:
            certificates.append(_parse_der_certificate(path, der, number))
        else:
            certificates.extend(_parse_der_pkcs7(path, der, f"PEM block #{number} ({labels[-1]})"))
    if not certificates:
        found = ", ".join(labels) if labels else "no complete PEM block"
        raise CertificateFileError(path, f"no CERTIFICATE or PKCS7 PEM block found (found: {found})")
    return certificates


def _parse_der_certificate(path: Path, der: bytes, number: int) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as error:
        raise CertificateFileError(path, f"PEM block #{number} is not a valid X.509 certificate") from error


def _parse_der_pkcs7(path: Path, der: bytes, where: str) -> list[x509.Certificate]:
    try:
        certificates = pkcs7.load_der_pkcs7_certificates(der)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise CertificateFileError(path, f"{where} is not a valid PKCS#7 certificate bundle") from error
    if not certificates:
        raise CertificateFileError(path, f"{where} is a PKCS#7 bundle without certificates")
    return certificates


def _certificates_from_der(path: Path, data: bytes) -> list[x509.Certificate]:
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        pass
    try:
        certificates = pkcs7.load_der_pkcs7_certificates(data)
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateFileError(
            path, "not a certificate file: expected PEM, a DER certificate or a DER PKCS#7 (.p7b) bundle"
        ) from None
    if not certificates:
        raise CertificateFileError(path, "the PKCS#7 bundle holds no certificates")
    return certificates


# --------------------------------------------------------------------------------------------
# Describing a certificate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateSummary:
    """What ``tlsproxy check`` shows about a certificate. Datetimes are timezone-aware UTC."""

    subject: str
    issuer: str
    san_dns: tuple[str, ...]
    san_ip: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    serial_number: int
    sha256_fingerprint: str  # "AB:CD:..." as openssl prints it

    def days_left(self, now: datetime | None = None) -> int:
        """Whole days until ``not_after``; negative once expired (a naive ``now`` is taken as UTC)."""
        moment = utcnow() if now is None else as_utc(now)
        return (self.not_after - moment).days


def _validity_bound(certificate: x509.Certificate, name: str) -> datetime:
    # cryptography >= 42 has the *_utc attributes; older releases return naive UTC datetimes.
    aware = getattr(certificate, f"{name}_utc", None)
    if isinstance(aware, datetime):
        return aware
    return as_utc(getattr(certificate, name))


def summarize_certificate(der_or_pem: bytes) -> CertificateSummary:
    """Describe one certificate given as DER or PEM. Raises ValueError if it is neither."""
    if b"-----BEGIN" in der_or_pem:
        certificate = x509.load_pem_x509_certificate(der_or_pem)
    else:
        certificate = x509.load_der_x509_certificate(der_or_pem)
    san_dns: tuple[str, ...] = ()
    san_ip: tuple[str, ...] = ()
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        san_dns = tuple(san.get_values_for_type(x509.DNSName))
        san_ip = tuple(str(address) for address in san.get_values_for_type(x509.IPAddress))
    fingerprint = certificate.fingerprint(hashes.SHA256()).hex().upper()
    return CertificateSummary(
        subject=certificate.subject.rfc4514_string(),
        issuer=certificate.issuer.rfc4514_string(),
        san_dns=san_dns,
        san_ip=san_ip,
        not_before=_validity_bound(certificate, "not_valid_before"),
        not_after=_validity_bound(certificate, "not_valid_after"),
        serial_number=certificate.serial_number,
        sha256_fingerprint=":".join(fingerprint[i : i + 2] for i in range(0, len(fingerprint), 2)),
    )


# --------------------------------------------------------------------------------------------
# The proxy's RSA key for caching_sha2_password / sha256_password
# --------------------------------------------------------------------------------------------

_OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
_PKCS1V15 = padding.PKCS1v15()


class AuthRsaKey:
    """The proxy's own RSA key pair used to emulate the server side of MySQL's caching_sha2_password /
    sha256_password RSA exchange (see docs/PROTOCOL.md §5.3).

    Build one with :meth:`generate` or :meth:`load`. ``repr()`` never shows key material.
    """

    __slots__ = ("_private_key", "modulus_bytes", "public_pem")

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        self._private_key = private_key
        public_key = private_key.public_key()
        self.public_pem: bytes = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.modulus_bytes: int = (public_key.key_size + 7) // 8

    def __repr__(self) -> str:
        return f"AuthRsaKey(bits={self._private_key.key_size})"

    @classmethod
    def generate(cls, bits: int = 2048) -> AuthRsaKey:
        if bits < MIN_AUTH_RSA_BITS:
            raise ValueError(f"an RSA key of {bits} bits is too small; at least {MIN_AUTH_RSA_BITS} are required")
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=bits))

    @classmethod
    def load(cls, path: Path) -> AuthRsaKey:
        """Load an unencrypted PEM RSA private key (PKCS#1 or PKCS#8) of at least 2048 bits."""
        path = Path(path)
        data = _read_file(path)
        if not data.strip():
            raise CertificateFileError(path, "the key file is empty")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError as error:  # raised for encrypted keys when no password is given
            raise CertificateFileError(path, "the private key is encrypted; provide an unencrypted key") from error
        except (ValueError, UnsupportedAlgorithm) as error:
            raise CertificateFileError(
                path, "not a PEM private key (expected BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)"
            ) from error
        if not isinstance(key, rsa.RSAPrivateKey):
            raise CertificateFileError(path, f"not an RSA key ({_key_kind(key)}); an RSA key is required")
        if key.key_size < MIN_AUTH_RSA_BITS:
            raise CertificateFileError(
                path, f"the RSA key has {key.key_size} bits; at least {MIN_AUTH_RSA_BITS} are required"
            )
        return cls(key)

    def write(self, path: Path) -> None:
        """Write the private key as unencrypted PKCS#8 PEM, mode 0600."""
        write_private_file(Path(path), private_key_pem(self._private_key))

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM: handed to worker processes over a pipe."""
        return private_key_pem(self._private_key)

    @classmethod
    def from_private_pem(cls, data: bytes) -> AuthRsaKey:
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("not an RSA private key")
        return cls(key)

    def decrypt(self, ciphertext: bytes) -> bytes | None:
        """RSA-OAEP (SHA-1, MGF1-SHA-1, empty label). None if the length or padding is wrong."""
        return self._decrypt(ciphertext, _OAEP_SHA1)

    def decrypt_pkcs1v15(self, ciphertext: bytes) -> bytes | None:
        """RSA PKCS#1 v1.5, for old Connector/J. None on a wrong length or detected bad padding.

        OpenSSL >= 3.2 applies implicit rejection (Marvin attack mitigation): a forged ciphertext
        may decrypt to pseudo-random bytes instead of failing. The upstream then simply rejects
        that password, so callers need no special handling.
        """
        return self._decrypt(ciphertext, _PKCS1V15)

    def _decrypt(self, ciphertext: bytes, scheme: padding.AsymmetricPadding) -> bytes | None:
        if len(ciphertext) != self.modulus_bytes:
            return None
        try:
            return self._private_key.decrypt(bytes(ciphertext), scheme)
        except (ValueError, TypeError):
            return None
