"""Each upstream TLS option, end to end: PyMySQL (TLS off on its side) -> the proxy in-process -> a real
MariaDB, which reports what it negotiated (Ssl_version, Ssl_cipher)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pymysql
import pytest

from tests.conftest import NATIVE, PLAIN, X509, Account, serve_certificate
from tests.support.pki import TestPki
from tests.support.proxy import ProxyThread, make_route
from tlsproxy.config import SslMode
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = pytest.mark.integration


def session_tls(port: int, account: Account = NATIVE) -> dict[str, str]:
    """Log in through the proxy and return the server's view of the connection's TLS."""
    connection = pymysql.connect(ssl_disabled=True, host="127.0.0.1", port=port, user=account.user,
                                 password=account.password, connect_timeout=10)
    with connection, connection.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')")
        status = {name: value for name, value in cursor.fetchall()}
        cursor.execute("SELECT CURRENT_USER()")
        status["user"] = cursor.fetchone()[0]
    return status


def through_proxy(server: MariaDBServer, account: Account = NATIVE, *, event_loop: str = "uvloop",
                  upstream_host: str = "localhost", **tls: Any) -> dict[str, str]:
    route = make_route(server.port, upstream_host=upstream_host, **tls)
    with ProxyThread(route, event_loop=event_loop) as proxy:
        return session_tls(proxy.port, account)


def refused(server: MariaDBServer, account: Account = PLAIN, *, upstream_host: str = "localhost", **tls: Any) -> str:
    """Connect through the proxy, expect the login to be refused, return the message the client got."""
    route = make_route(server.port, upstream_host=upstream_host, **tls)
    with ProxyThread(route) as proxy, pytest.raises(pymysql.err.OperationalError) as error:
        session_tls(proxy.port, account)
    message = error.value.args[1]
    assert message.startswith("tlsproxy: "), message
    return message


# ---- versions and ciphers against the main server ------------------------------------------------


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_tls_version(mariadb: MariaDBServer, pki: TestPki, event_loop_name: str, version: str) -> None:
    status = through_proxy(mariadb, ca_file=pki.ca, tls_versions=(version,), event_loop=event_loop_name)
    assert status["Ssl_version"] == version
    assert status["user"] == f"{NATIVE.user}@%"


def test_tls13_ciphersuite(mariadb: MariaDBServer, pki: TestPki) -> None:
    status = through_proxy(mariadb, ca_file=pki.ca, tls_versions=("TLSv1.3",), ciphersuites="TLS_AES_128_GCM_SHA256")
    assert (status["Ssl_version"], status["Ssl_cipher"]) == ("TLSv1.3", "TLS_AES_128_GCM_SHA256")


def test_tls12_cipher(mariadb: MariaDBServer, pki: TestPki) -> None:
    status = through_proxy(mariadb, ca_file=pki.ca, tls_versions=("TLSv1.2",), cipher="ECDHE-RSA-AES128-GCM-SHA256")
    assert (status["Ssl_version"], status["Ssl_cipher"]) == ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")


# ---- trust anchors ----------------------------------------------------------------------------------


def test_ca_as_der_pkcs7(mariadb: MariaDBServer, pki: TestPki) -> None:
    assert not pki.ca_p7b_der.read_bytes().startswith(b"-----")
    assert through_proxy(mariadb, ca_file=pki.ca_p7b_der)["Ssl_version"] in ("TLSv1.2", "TLSv1.3")


def _hashed_directory(ca: Path, directory: Path) -> Path:
    directory.mkdir()
    shutil.copy(ca, directory / "ca.pem")
    for command in (["openssl", "rehash", str(directory)], ["c_rehash", str(directory)]):
        if shutil.which(command[0]) and subprocess.run(command, capture_output=True).returncode == 0:
            if any(path.name.endswith(".0") for path in directory.iterdir()):
                return directory
    subject_hash = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(ca)], check=True,
                                  capture_output=True, text=True).stdout.strip()
    (directory / f"{subject_hash}.0").symlink_to("ca.pem")
    return directory


def test_ca_path(mariadb: MariaDBServer, pki: TestPki, tmp_path: Path) -> None:
    capath = _hashed_directory(pki.ca, tmp_path / "capath")
    assert through_proxy(mariadb, ca_path=capath)["Ssl_version"] in ("TLSv1.2", "TLSv1.3")


def test_server_name_override_for_an_ip_upstream(mariadb: MariaDBServer, pki: TestPki) -> None:
    status = through_proxy(mariadb, upstream_host="127.0.0.1", ca_file=pki.ca, server_name="localhost",
                           mode=SslMode.VERIFY_IDENTITY)
    assert status["user"] == f"{NATIVE.user}@%"


def test_client_certificate_for_require_x509(mariadb: MariaDBServer, pki: TestPki) -> None:
    status = through_proxy(mariadb, X509, ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    assert status["user"] == f"{X509.user}@%"


# ---- revocation -------------------------------------------------------------------------------------


def test_crl_revoking_the_server_certificate(mariadb: MariaDBServer, pki: TestPki) -> None:
    message = refused(mariadb, NATIVE, ca_file=pki.ca, crl_file=pki.crl_revoking_server)
    assert message == "tlsproxy: upstream certificate verify failed: certificate revoked"


def test_empty_crl(mariadb: MariaDBServer, pki: TestPki) -> None:
    assert through_proxy(mariadb, ca_file=pki.ca, crl_file=pki.crl_empty)["user"] == f"{NATIVE.user}@%"


# ---- alt_mariadb with other certificates -----------------------------------------------------------------


@pytest.fixture
def alt_wrong_host(alt: MariaDBServer, pki: TestPki) -> MariaDBServer:
    serve_certificate(alt, pki.wrong_host_cert, pki.wrong_host_key)  # right CA, SAN db.example.test only
    return alt


@pytest.fixture
def alt_other_ca_tls12(alt: MariaDBServer, pki: TestPki) -> MariaDBServer:
    serve_certificate(alt, pki.other_server_cert, pki.other_server_key, tls_version="TLSv1.2")  # another CA
    return alt


def test_verify_ca_accepts_a_certificate_for_another_name(alt_wrong_host: MariaDBServer, pki: TestPki) -> None:
    assert through_proxy(alt_wrong_host, PLAIN, ca_file=pki.ca, mode=SslMode.VERIFY_CA)["user"] == f"{PLAIN.user}@%"


def test_verify_identity_refuses_it(alt_wrong_host: MariaDBServer, pki: TestPki) -> None:
    message = refused(alt_wrong_host, ca_file=pki.ca, mode=SslMode.VERIFY_IDENTITY)
    assert message == "tlsproxy: upstream certificate verify failed: host name mismatch (expected localhost)"


def test_verify_identity_with_the_certificates_name(alt_wrong_host: MariaDBServer, pki: TestPki) -> None:
    status = through_proxy(alt_wrong_host, PLAIN, upstream_host="127.0.0.1", ca_file=pki.ca, server_name="db.example.test")
    assert status["user"] == f"{PLAIN.user}@%"


def test_required_accepts_another_ca_and_warns(alt_other_ca_tls12: MariaDBServer, pki: TestPki,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    status = through_proxy(alt_other_ca_tls12, PLAIN, ca_file=pki.ca, mode=SslMode.REQUIRED)
    assert status["Ssl_version"] == "TLSv1.2" and status["Ssl_cipher"]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("does NOT verify the upstream certificate" in message for message in warnings), warnings  # at start
    assert any("NOT verified" in message and "ssl_mode=REQUIRED" in message for message in warnings), warnings  # per connection


def test_verify_ca_refuses_another_ca(alt_other_ca_tls12: MariaDBServer, pki: TestPki) -> None:
    message = refused(alt_other_ca_tls12, ca_file=pki.ca, mode=SslMode.VERIFY_CA)
    assert message.startswith("tlsproxy: upstream certificate verify failed: ")
    assert "not trusted" in message


def test_no_tls_version_in_common(alt_other_ca_tls12: MariaDBServer) -> None:
    message = refused(alt_other_ca_tls12, mode=SslMode.REQUIRED, tls_versions=("TLSv1.3",))
    assert message.startswith("tlsproxy: upstream TLS handshake failed: no TLS version in common")
