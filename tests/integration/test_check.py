"""`tlsproxy check` as the real CLI subprocess against real MariaDB servers: what an operator sees when a
route works, when the CA is wrong, when the name does not match, when the server has no TLS and when
nothing listens."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import serve_certificate
from tests.support.pki import TestPki
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = pytest.mark.integration


def check(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tlsproxy", "check", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def alt(alt_mariadb: MariaDBServer, pki: TestPki) -> Iterator[MariaDBServer]:
    """alt_mariadb; whatever the tests below make it serve, it serves pki.server_cert again afterwards."""
    yield alt_mariadb
    serve_certificate(alt_mariadb, pki.server_cert, pki.server_key)


@pytest.fixture
def wrong_host_server(alt: MariaDBServer, pki: TestPki) -> MariaDBServer:
    """A certificate from the right CA, for db.example.test only."""
    serve_certificate(alt, pki.wrong_host_cert, pki.wrong_host_key)
    return alt


@pytest.fixture
def expired_server(alt: MariaDBServer, pki: TestPki) -> MariaDBServer:
    serve_certificate(alt, pki.expired_cert, pki.expired_key)
    return alt


def test_check_ok(mariadb: MariaDBServer, pki: TestPki) -> None:
    result = check("--upstream", f"localhost:{mariadb.port}", "--ssl-ca", str(pki.ca))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(rf"^route default: 127\.0\.0\.1:3306 -> localhost:{mariadb.port}  \[OK\]", out, re.M), out
    assert "ssl_mode:      VERIFY_IDENTITY" in out
    assert "server:        " in out and "MariaDB" in out
    assert re.search(r"tls:\s+TLSv1\.3, cipher TLS_\w+", out), out
    assert "verification:  chain and host name verified (name localhost)" in out
    assert "certificate 0: CN=localhost" in out
    assert "issuer:      CN=tlsproxy test CA" in out
    assert "SANs:        localhost, 127.0.0.1, ::1" in out
    assert re.search(r"notAfter:\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, \d+ days left", out), out
    assert "error:" not in out
    assert result.stderr == ""


def test_check_tls12_and_cipher(mariadb: MariaDBServer, pki: TestPki) -> None:
    result = check("--upstream", f"127.0.0.1:{mariadb.port}", "--ssl-ca", str(pki.ca_p7b_der), "--tls-version", "TLSv1.2",
                   "--ssl-cipher", "ECDHE-RSA-AES256-GCM-SHA384")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tls:           TLSv1.2, cipher ECDHE-RSA-AES256-GCM-SHA384" in result.stdout
    assert "verified (name 127.0.0.1)" in result.stdout


def test_check_wrong_ca_shows_the_chain_it_saw(mariadb: MariaDBServer, pki: TestPki) -> None:
    result = check("--upstream", f"localhost:{mariadb.port}", "--ssl-ca", str(pki.other_ca))
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "[FAILED]" in out
    assert "verification:  FAILED" in out
    assert re.search(r"error:\s+upstream certificate verify failed: .*not trusted", out), out
    # The chain is still shown, from a second, unverified connection.
    assert "certificate 0: CN=localhost" in out
    assert "issuer:      CN=tlsproxy test CA" in out
    assert "days left" in out
    assert "Traceback" not in out + result.stderr


def test_check_revoked_certificate(mariadb: MariaDBServer, pki: TestPki) -> None:
    result = check("--upstream", f"localhost:{mariadb.port}", "--ssl-ca", str(pki.ca), "--ssl-crl",
                   str(pki.crl_revoking_server))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error:         upstream certificate verify failed: certificate revoked" in result.stdout
    assert "certificate 0: CN=localhost" in result.stdout


def test_check_required_says_not_verified(mariadb: MariaDBServer) -> None:
    result = check("--upstream", f"localhost:{mariadb.port}", "--ssl-mode", "REQUIRED")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verification:  NOT verified (ssl_mode REQUIRED)" in result.stdout


def test_check_host_name_mismatch(wrong_host_server: MariaDBServer) -> None:
    result = check("--upstream", f"localhost:{wrong_host_server.port}", "--ssl-ca", str(_pki_ca(wrong_host_server)))
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "upstream certificate verify failed: host name mismatch (expected localhost)" in out
    assert "certificate 0: CN=db.example.test" in out
    assert "SANs:        db.example.test" in out


def test_check_verify_ca_accepts_the_other_name(wrong_host_server: MariaDBServer) -> None:
    result = check("--upstream", f"localhost:{wrong_host_server.port}", "--ssl-ca", str(_pki_ca(wrong_host_server)),
                   "--ssl-mode", "VERIFY_CA")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verification:  chain verified; host name NOT checked (VERIFY_CA)" in result.stdout


def test_check_tls_server_name(wrong_host_server: MariaDBServer) -> None:
    result = check("--upstream", f"127.0.0.1:{wrong_host_server.port}", "--ssl-ca", str(_pki_ca(wrong_host_server)),
                   "--tls-server-name", "db.example.test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified (name db.example.test)" in result.stdout


def test_check_expired_certificate(expired_server: MariaDBServer, pki: TestPki) -> None:
    result = check("--upstream", f"localhost:{expired_server.port}", "--ssl-ca", str(pki.ca))
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "error:         upstream certificate verify failed: certificate has expired" in out
    assert re.search(r"notAfter:\s+.* UTC, -\d+ days left  \(EXPIRED\)", out), out


def _pki_ca(server: MariaDBServer) -> Path:
    assert server.ssl_ca is not None
    return server.ssl_ca


def test_check_server_without_tls(plain_mariadb: MariaDBServer, pki: TestPki) -> None:
    result = check("--upstream", f"localhost:{plain_mariadb.port}", "--ssl-ca", str(pki.ca))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error:         upstream does not offer TLS" in result.stdout
    assert "[FAILED]" in result.stdout


def test_check_disabled_against_a_server_without_tls(plain_mariadb: MariaDBServer) -> None:
    result = check("--upstream", f"localhost:{plain_mariadb.port}", "--ssl-mode", "DISABLED")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verification:  no TLS (ssl_mode DISABLED)" in result.stdout


def test_check_nothing_listening(pki: TestPki) -> None:
    port = free_port()
    result = check("--upstream", f"127.0.0.1:{port}", "--ssl-ca", str(pki.ca), "--connect-timeout", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error:         cannot connect to upstream 127.0.0.1:{port}: Connection refused" in result.stdout


def test_check_config_error_exit_2(pki: TestPki, tmp_path: Path) -> None:
    result = check("--upstream", "localhost:3306", "--ssl-ca", str(tmp_path / "missing.pem"))
    assert result.returncode == 2
    assert result.stderr.startswith("tlsproxy: config error at 'routes[0].ssl_ca': ")
    assert result.stdout == ""


def test_check_two_routes_from_a_file(mariadb: MariaDBServer, plain_mariadb: MariaDBServer, pki: TestPki,
                                      tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_bytes(pki.ca.read_bytes())
    config = tmp_path / "tlsproxy.yaml"
    config.write_text(f"""\
routes:
  - name: main
    listen: 127.0.0.1:3307
    upstream: localhost:{mariadb.port}
    ssl_ca: certs/ca.pem          # relative to this file
  - name: legacy-plain
    listen: /tmp/tlsproxy-check-test.sock
    upstream: 127.0.0.1:{plain_mariadb.port}
    ssl_ca: certs/ca.pem
""")
    result = check("--config", "tlsproxy.yaml", cwd=tmp_path)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr  # one route failed
    assert re.search(rf"^route main: 127\.0\.0\.1:3307 -> localhost:{mariadb.port}  \[OK\]", out, re.M), out
    assert re.search(rf"^route legacy-plain: unix:/tmp/tlsproxy-check-test.sock -> 127\.0\.0\.1:{plain_mariadb.port}"
                     r"  \[FAILED\]", out, re.M), out
    assert out.index("route main") < out.index("route legacy-plain")
    assert "upstream does not offer TLS" in out


def test_check_two_good_routes_exit_0(mariadb: MariaDBServer, pki: TestPki, tmp_path: Path) -> None:
    config = tmp_path / "tlsproxy.yaml"
    config.write_text(f"""\
routes:
  - name: by-name
    listen: 127.0.0.1:3307
    upstream: localhost:{mariadb.port}
    ssl_ca: {pki.ca}
  - name: by-ip
    listen: 127.0.0.1:3308
    upstream: 127.0.0.1:{mariadb.port}
    ssl_mode: VERIFY_CA
    ssl_ca: {pki.ca_p7b_der}
""")
    result = check("--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("[OK]") == 2
    assert "route by-name:" in result.stdout and "route by-ip:" in result.stdout


# ---- bugs ------------------------------------------------------------------------------------------


def test_check_shows_the_servers_error_greeting() -> None:
    """A server that refuses at once (here: MariaDB's 1130 for a host without any account), faked by a socket."""
    message = b"Host '127.0.0.1' is not allowed to connect to this MariaDB server"
    payload = b"\xff" + (1130).to_bytes(2, "little") + message
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def answer() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(len(payload).to_bytes(3, "little") + b"\x00" + payload)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        result = check("--upstream", f"127.0.0.1:{listener.getsockname()[1]}", "--ssl-mode", "REQUIRED")
        thread.join(5)
    assert result.returncode == 1
    assert "1130" in result.stdout and message.decode() in result.stdout, result.stdout
