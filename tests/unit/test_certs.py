"""Tests for tlsproxy.certs and tlsproxy.demo.pki: the test PKI, CA bundle loading, summaries and the auth RSA key."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID

from tlsproxy.certs import AuthRsaKey, CertificateFileError, load_ca_certificates, summarize_certificate
from tlsproxy.demo.pki import CertificateAuthority, IssuedCertificate

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("unit test CA")


@pytest.fixture(scope="module")
def server_cert(ca: CertificateAuthority) -> IssuedCertificate:
    return ca.issue_server()


def _server_context(
    tmp_path: Path, issued: IssuedCertificate, client_ca: CertificateAuthority | None = None
) -> ssl.SSLContext:
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    issued.write(cert_path, key_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=client_ca.cert_pem.decode())
    return context


def _client_context(ca: CertificateAuthority, crl_path: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname on
    context.load_verify_locations(cadata=ca.cert_pem.decode())
    if crl_path is not None:
        context.load_verify_locations(cafile=crl_path)  # cadata= takes certificates only
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    return context


def _handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext, server_hostname: str) -> str:
    """Run a TLS handshake over a socketpair; return the negotiated version or raise the client's error."""
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(10)
    client_sock.settimeout(10)

    def serve() -> None:
        try:
            with server_context.wrap_socket(server_sock, server_side=True) as tls:
                tls.recv(1)  # wait until the client hangs up
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with client_context.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
            version = tls.version()
            assert version is not None
            return version
    finally:
        client_sock.close()
        thread.join(timeout=10)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------
# Issuing and verifying
# --------------------------------------------------------------------------------------------


def test_server_certificate_verifies_for_localhost(
    tmp_path: Path, ca: CertificateAuthority, server_cert: IssuedCertificate
) -> None:
    version = _handshake(_server_context(tmp_path, server_cert), _client_context(ca), "localhost")
    assert version in {"TLSv1.2", "TLSv1.3"}


def test_server_certificate_verifies_for_ip_san(
    tmp_path: Path, ca: CertificateAuthority, server_cert: IssuedCertificate
) -> None:
    assert _handshake(_server_context(tmp_path, server_cert), _client_context(ca), "127.0.0.1")


def test_wrong_hostname_fails(tmp_path: Path, ca: CertificateAuthority, server_cert: IssuedCertificate) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match=r"[Hh]ostname mismatch"):
        _handshake(_server_context(tmp_path, server_cert), _client_context(ca), "db.example.com")


def test_other_ca_fails(tmp_path: Path, server_cert: IssuedCertificate) -> None:
    other = CertificateAuthority.create("other CA", key_type="ec256")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(_server_context(tmp_path, server_cert), _client_context(other), "localhost")


def test_expired_certificate_fails(tmp_path: Path, ca: CertificateAuthority) -> None:
    now = datetime.now(UTC)
    expired = ca.issue_server(not_before=now - timedelta(days=30), not_after=now - timedelta(days=1))
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        _handshake(_server_context(tmp_path, expired), _client_context(ca), "localhost")


@pytest.mark.parametrize("key_type", ["ec256", "rsa4096"])
def test_other_key_types_work(tmp_path: Path, key_type: str) -> None:
    authority = CertificateAuthority.create(key_type=key_type)  # type: ignore[arg-type]
    issued = authority.issue_server(["db.internal"], [], key_type=key_type)  # type: ignore[arg-type]
    assert _handshake(_server_context(tmp_path, issued), _client_context(authority), "db.internal")


def test_server_certificate_extensions(server_cert: IssuedCertificate) -> None:
    certificate = x509.load_pem_x509_certificate(server_cert.cert_pem)
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert certificate.serial_number == server_cert.serial_number
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert timedelta(days=365) <= lifetime <= timedelta(days=365, hours=2)


def test_client_certificate_has_client_auth_eku_and_passes_mutual_tls(
    tmp_path: Path, ca: CertificateAuthority, server_cert: IssuedCertificate
) -> None:
    client = ca.issue_client("app-user")
    certificate = x509.load_pem_x509_certificate(client.cert_pem)
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert certificate.subject.rfc4514_string() == "CN=app-user"

    client_context = _client_context(ca)
    client.write(tmp_path / "client.pem", tmp_path / "client.key")
    client_context.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    assert _handshake(_server_context(tmp_path, server_cert, client_ca=ca), client_context, "localhost")


def test_issued_key_file_is_private(tmp_path: Path, server_cert: IssuedCertificate) -> None:
    key_path = tmp_path / "k.pem"
    key_path.write_bytes(b"old")
    key_path.chmod(0o644)
    server_cert.write(tmp_path / "c.pem", key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "c.pem").read_bytes() == server_cert.cert_pem


def test_ca_roundtrips_through_pem(tmp_path: Path, ca: CertificateAuthority) -> None:
    again = CertificateAuthority(ca.cert_pem, ca.key_pem)
    issued = again.issue_server()
    assert _handshake(_server_context(tmp_path, issued), _client_context(ca), "localhost")
    ca.write(tmp_path / "ca.pem")
    assert (tmp_path / "ca.pem").read_bytes() == ca.cert_pem
    assert "PRIVATE KEY" not in repr(ca)


def test_ca_rejects_mismatched_key(ca: CertificateAuthority) -> None:
    other = CertificateAuthority.create()
    with pytest.raises(ValueError, match="does not match"):
        CertificateAuthority(ca.cert_pem, other.key_pem)


def test_validity_must_be_ordered(ca: CertificateAuthority) -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="later than"):
        ca.issue_server(not_before=now, not_after=now - timedelta(days=1))


def test_crl_lists_revoked_serial(tmp_path: Path, ca: CertificateAuthority) -> None:
    revoked, good = ca.issue_server(), ca.issue_server()
    crl_pem = ca.crl_pem([revoked.serial_number])
    crl = x509.load_pem_x509_crl(crl_pem)
    ca_certificate = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_public_key = ca_certificate.public_key()
    assert isinstance(ca_public_key, rsa.RSAPublicKey)
    assert crl.is_signature_valid(ca_public_key)
    assert crl.issuer == ca_certificate.subject
    assert crl.get_revoked_certificate_by_serial_number(revoked.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(good.serial_number) is None
    assert crl.next_update_utc is not None
    assert timedelta(days=6) < crl.next_update_utc - datetime.now(UTC) <= timedelta(days=7)

    crl_path = _write(tmp_path / "ca.crl", crl_pem)
    assert _handshake(_server_context(tmp_path, good), _client_context(ca, crl_path), "localhost")
    with pytest.raises(ssl.SSLCertVerificationError, match="revoked"):
        _handshake(_server_context(tmp_path, revoked), _client_context(ca, crl_path), "localhost")


def test_empty_crl(ca: CertificateAuthority) -> None:
    assert len(list(x509.load_pem_x509_crl(ca.crl_pem()))) == 0


# --------------------------------------------------------------------------------------------
# load_ca_certificates
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_cas() -> tuple[CertificateAuthority, CertificateAuthority]:
    return CertificateAuthority.create("first CA"), CertificateAuthority.create("second CA", key_type="ec256")


def _x509(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _subjects(pems: list[bytes]) -> list[str]:
    return [_x509(pem).subject.rfc4514_string() for pem in pems]


def test_load_pem_bundle_with_text_between(
    tmp_path: Path, two_cas: tuple[CertificateAuthority, CertificateAuthority]
) -> None:
    first, second = two_cas
    text = (
        b"# Amazon RDS bundle\nSubject: first\n"
        + first.cert_pem
        + b"\nsome comment\r\n"
        + second.cert_pem
        + b"trailing"
    )
    pems = load_ca_certificates(_write(tmp_path / "bundle.pem", text))
    assert _subjects(pems) == ["CN=first CA", "CN=second CA"]
    assert all(pem.startswith(b"-----BEGIN CERTIFICATE-----\n") for pem in pems)
    ssl.create_default_context(cadata=b"".join(pems).decode())  # usable as an ssl trust store


def test_load_pem_ignores_other_blocks(
    tmp_path: Path, two_cas: tuple[CertificateAuthority, CertificateAuthority]
) -> None:
    first, _ = two_cas
    pems = load_ca_certificates(_write(tmp_path / "mixed.pem", first.key_pem + first.cert_pem + first.crl_pem()))
    assert _subjects(pems) == ["CN=first CA"]


def test_load_pkcs7_pem(tmp_path: Path, two_cas: tuple[CertificateAuthority, CertificateAuthority]) -> None:
    bundle = pkcs7.serialize_certificates([_x509(ca.cert_pem) for ca in two_cas], serialization.Encoding.PEM)
    assert bundle.startswith(b"-----BEGIN PKCS7-----")
    pems = load_ca_certificates(_write(tmp_path / "bundle.p7b", bundle))
    assert sorted(_subjects(pems)) == ["CN=first CA", "CN=second CA"]


def test_load_pkcs7_der(tmp_path: Path, two_cas: tuple[CertificateAuthority, CertificateAuthority]) -> None:
    bundle = pkcs7.serialize_certificates([_x509(ca.cert_pem) for ca in two_cas], serialization.Encoding.DER)
    pems = load_ca_certificates(_write(tmp_path / "bundle.p7b", bundle))
    assert sorted(_subjects(pems)) == ["CN=first CA", "CN=second CA"]


def test_load_single_der_certificate(
    tmp_path: Path, two_cas: tuple[CertificateAuthority, CertificateAuthority]
) -> None:
    first, _ = two_cas
    der = _x509(first.cert_pem).public_bytes(serialization.Encoding.DER)
    pems = load_ca_certificates(_write(tmp_path / "ca.cer", der))
    assert pems == [first.cert_pem]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"  \n\n", "empty"),
        (b"\x00\x01garbage\xff" * 20, "not a certificate file"),
        (b"hello, this is not a certificate\n", "not a certificate file"),
        (b"-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n", "not valid base64"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a valid X.509 certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n", "no CERTIFICATE or PKCS7 PEM block"),
        (b"-----BEGIN PKCS7-----\nAAAA\n-----END PKCS7-----\n", "not a valid PKCS#7"),
    ],
)
def test_load_errors_name_file_and_problem(tmp_path: Path, content: bytes, reason: str) -> None:
    path = _write(tmp_path / "bad.pem", content)
    with pytest.raises(CertificateFileError, match=reason) as caught:
        load_ca_certificates(path)
    assert str(path) in str(caught.value)
    assert caught.value.path == path


def test_load_key_only_pem_is_an_error(tmp_path: Path, ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateFileError, match="found: PRIVATE KEY"):
        load_ca_certificates(_write(tmp_path / "key.pem", ca.key_pem))


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.pem"
    with pytest.raises(CertificateFileError, match="cannot read") as caught:
        load_ca_certificates(path)
    assert str(path) in str(caught.value)


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(CertificateFileError, match="cannot read"):
        load_ca_certificates(tmp_path)


# --------------------------------------------------------------------------------------------
# summarize_certificate
# --------------------------------------------------------------------------------------------


def test_summarize_certificate(ca: CertificateAuthority) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    issued = ca.issue_server(
        ["db.example.com", "localhost"],
        ["10.0.0.5"],
        common_name="db",
        not_before=now - timedelta(days=1),
        not_after=now + timedelta(days=30, hours=1),
    )
    certificate = x509.load_pem_x509_certificate(issued.cert_pem)
    der = certificate.public_bytes(serialization.Encoding.DER)

    summary = summarize_certificate(der)
    assert summarize_certificate(issued.cert_pem) == summary
    assert summary.subject == "CN=db"
    assert summary.issuer == "CN=unit test CA"
    assert summary.san_dns == ("db.example.com", "localhost")
    assert summary.san_ip == ("10.0.0.5",)
    assert summary.not_before == now - timedelta(days=1)
    assert summary.not_after == now + timedelta(days=30, hours=1)
    assert summary.not_after.tzinfo is not None
    assert summary.serial_number == issued.serial_number
    expected = certificate.fingerprint(hashes.SHA256()).hex().upper()
    assert summary.sha256_fingerprint.replace(":", "") == expected
    assert len(summary.sha256_fingerprint) == 32 * 3 - 1
    assert summary.days_left(now) == 30
    assert summary.days_left() in (29, 30)
    assert summary.days_left(now + timedelta(days=31)) == -1
    assert summary.days_left((now + timedelta(days=1)).replace(tzinfo=None)) == 29


def test_summarize_without_san(ca: CertificateAuthority) -> None:
    summary = summarize_certificate(ca.cert_pem)
    assert summary.san_dns == () and summary.san_ip == ()
    assert summary.subject == summary.issuer == "CN=unit test CA"


def test_summarize_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        summarize_certificate(b"\x30\x03\x02\x01\x01")


# --------------------------------------------------------------------------------------------
# AuthRsaKey
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_key() -> AuthRsaKey:
    return AuthRsaKey.generate()


def _public_key(key: AuthRsaKey) -> rsa.RSAPublicKey:
    public = serialization.load_pem_public_key(key.public_pem)
    assert isinstance(public, rsa.RSAPublicKey)
    return public


_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


def test_public_pem_is_subject_public_key_info(auth_key: AuthRsaKey) -> None:
    assert auth_key.public_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert auth_key.public_pem.endswith(b"-----END PUBLIC KEY-----\n")
    assert auth_key.modulus_bytes == 256
    assert _public_key(auth_key).key_size == 2048
    assert "PRIVATE" not in repr(auth_key)


def test_oaep_roundtrip(auth_key: AuthRsaKey) -> None:
    # What a MySQL client sends: password + NUL, XORed with the nonce, then OAEP/SHA-1.
    message = b"s3cret-p\xc3\xa4ssword\x00"
    ciphertext = _public_key(auth_key).encrypt(message, _OAEP)
    assert len(ciphertext) == auth_key.modulus_bytes
    assert auth_key.decrypt(ciphertext) == message


def test_oaep_failures_return_none(auth_key: AuthRsaKey) -> None:
    ciphertext = _public_key(auth_key).encrypt(b"pw\x00", _OAEP)
    assert auth_key.decrypt(b"") is None
    assert auth_key.decrypt(b"\x02") is None
    assert auth_key.decrypt(ciphertext[:-1]) is None
    assert auth_key.decrypt(ciphertext + b"\x00") is None
    tampered = bytes([ciphertext[0] ^ 0x01]) + ciphertext[1:]
    assert auth_key.decrypt(tampered) is None
    assert auth_key.decrypt(b"\xff" * auth_key.modulus_bytes) is None  # larger than the modulus
    assert auth_key.decrypt(os.urandom(auth_key.modulus_bytes)) is None
    pkcs1 = _public_key(auth_key).encrypt(b"pw\x00", padding.PKCS1v15())
    assert auth_key.decrypt(pkcs1) is None  # OAEP decrypt rejects PKCS#1 v1.5 padding


def test_oaep_with_sha256_is_rejected(auth_key: AuthRsaKey) -> None:
    sha256 = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    assert auth_key.decrypt(_public_key(auth_key).encrypt(b"pw\x00", sha256)) is None


def test_pkcs1v15_fallback(auth_key: AuthRsaKey) -> None:
    ciphertext = _public_key(auth_key).encrypt(b"legacy\x00", padding.PKCS1v15())
    assert auth_key.decrypt_pkcs1v15(ciphertext) == b"legacy\x00"
    assert auth_key.decrypt_pkcs1v15(ciphertext[:-1]) is None
    assert auth_key.decrypt_pkcs1v15(b"") is None
    assert auth_key.decrypt_pkcs1v15(b"\xff" * auth_key.modulus_bytes) is None
    # A forged ciphertext must never raise (OpenSSL's implicit rejection may return random bytes).
    result = auth_key.decrypt_pkcs1v15(os.urandom(auth_key.modulus_bytes))
    assert result is None or isinstance(result, bytes)


def test_generate_write_load(tmp_path: Path, auth_key: AuthRsaKey) -> None:
    path = tmp_path / "auth.key"
    auth_key.write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = AuthRsaKey.load(path)
    assert loaded.public_pem == auth_key.public_pem
    ciphertext = _public_key(auth_key).encrypt(b"pw\x00", _OAEP)
    assert loaded.decrypt(ciphertext) == b"pw\x00"


def test_load_pkcs1_key(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    loaded = AuthRsaKey.load(_write(tmp_path / "pkcs1.pem", pem))
    assert loaded.modulus_bytes == 384


def _pkcs8(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, encryption: serialization.KeySerializationEncryption
) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


@pytest.mark.parametrize(
    ("make_content", "reason"),
    [
        (lambda: _pkcs8(ec.generate_private_key(ec.SECP256R1()), serialization.NoEncryption()), "not an RSA key"),
        (
            lambda: _pkcs8(rsa.generate_private_key(65537, 1024), serialization.NoEncryption()),
            "1024 bits; at least 2048",
        ),
        (
            lambda: _pkcs8(rsa.generate_private_key(65537, 2048), serialization.BestAvailableEncryption(b"x")),
            "encrypted",
        ),
        (lambda: b"", "empty"),
        (lambda: b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a PEM private key"),
        (lambda: b"garbage", "not a PEM private key"),
    ],
)
def test_load_rejects_bad_keys(tmp_path: Path, make_content: object, reason: str) -> None:
    assert callable(make_content)
    path = _write(tmp_path / "bad.key", make_content())
    with pytest.raises(CertificateFileError, match=reason) as caught:
        AuthRsaKey.load(path)
    assert str(path) in str(caught.value)


def test_load_missing_key(tmp_path: Path) -> None:
    with pytest.raises(CertificateFileError, match="cannot read"):
        AuthRsaKey.load(tmp_path / "nope.key")


def test_generate_rejects_small_keys() -> None:
    with pytest.raises(ValueError, match="at least 2048"):
        AuthRsaKey.generate(1024)


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert threading.active_count() <= before
