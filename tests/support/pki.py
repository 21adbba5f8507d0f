"""The test PKI: one CA that signs the server, and the certificates the negative tests need."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tlsproxy.demo.pki import CertificateAuthority


@dataclass(frozen=True)
class TestPki:
    __test__ = False  # not a test class

    directory: Path
    ca: Path  # the CA that signed server_cert
    server_cert: Path  # SAN localhost, 127.0.0.1, ::1
    server_key: Path
    other_ca: Path  # an unrelated CA (a man in the middle's)
    other_server_cert: Path  # signed by other_ca, SAN localhost
    other_server_key: Path
    wrong_host_cert: Path  # signed by ca, SAN db.example.test only
    wrong_host_key: Path
    expired_cert: Path  # signed by ca, expired yesterday
    expired_key: Path
    not_yet_valid_cert: Path  # signed by ca, valid from tomorrow
    not_yet_valid_key: Path
    client_cert: Path  # signed by ca, CN tlsproxy-client (REQUIRE X509)
    client_key: Path
    crl_revoking_server: Path  # CRL from ca that revokes server_cert
    crl_empty: Path
    ca_p7b_der: Path  # the CA as a DER PKCS#7 bundle, as cloud consoles ship it


def make_pki(directory: Path) -> TestPki:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    ca = CertificateAuthority.create("tlsproxy test CA")
    ca.write(directory / "ca.pem")
    server = ca.issue_server(("localhost",), ("127.0.0.1", "::1"))
    server.write(directory / "server-cert.pem", directory / "server-key.pem")
    other = CertificateAuthority.create("man-in-the-middle CA")
    other.write(directory / "other-ca.pem")
    other.issue_server(("localhost",), ("127.0.0.1",)).write(directory / "other-cert.pem", directory / "other-key.pem")
    ca.issue_server(("db.example.test",), ()).write(directory / "wrong-host-cert.pem", directory / "wrong-host-key.pem")
    ca.issue_server(("localhost",), ("127.0.0.1",), not_before=now - timedelta(days=30),
                   not_after=now - timedelta(days=1)).write(directory / "expired-cert.pem", directory / "expired-key.pem")
    ca.issue_server(("localhost",), ("127.0.0.1",), not_before=now + timedelta(days=1),
                   not_after=now + timedelta(days=30)).write(directory / "future-cert.pem", directory / "future-key.pem")
    ca.issue_client("tlsproxy-client").write(directory / "client-cert.pem", directory / "client-key.pem")
    (directory / "crl-revoked.pem").write_bytes(ca.crl_pem([server.serial_number]))
    (directory / "crl-empty.pem").write_bytes(ca.crl_pem([]))
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

    bundle = pkcs7.serialize_certificates([x509.load_pem_x509_certificate(ca.cert_pem)], Encoding.DER)
    (directory / "ca.p7b").write_bytes(bundle)
    return TestPki(
        directory=directory,
        ca=directory / "ca.pem",
        server_cert=directory / "server-cert.pem",
        server_key=directory / "server-key.pem",
        other_ca=directory / "other-ca.pem",
        other_server_cert=directory / "other-cert.pem",
        other_server_key=directory / "other-key.pem",
        wrong_host_cert=directory / "wrong-host-cert.pem",
        wrong_host_key=directory / "wrong-host-key.pem",
        expired_cert=directory / "expired-cert.pem",
        expired_key=directory / "expired-key.pem",
        not_yet_valid_cert=directory / "future-cert.pem",
        not_yet_valid_key=directory / "future-key.pem",
        client_cert=directory / "client-cert.pem",
        client_key=directory / "client-key.pem",
        crl_revoking_server=directory / "crl-revoked.pem",
        crl_empty=directory / "crl-empty.pem",
        ca_p7b_der=directory / "ca.p7b",
    )
