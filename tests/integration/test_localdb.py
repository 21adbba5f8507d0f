"""Integration tests for tlsproxy.demo.localdb and tlsproxy.demo.mariadb: a real MariaDB with TLS, started from a fresh datadir."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pymysql
import pytest

from tlsproxy.demo import localdb
from tlsproxy.demo.localdb import find_mariadb_binaries, start_mariadb
from tlsproxy.demo.mariadb import LocalDatabaseError, MariaDBServer
from tlsproxy.demo.pki import CertificateAuthority

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    cert: Path
    key: Path
    cert2: Path  # same CA, different not_after, so a restart can be observed
    key2: Path
    cert2_not_after: datetime


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create("localdb test CA")
    ca.write(directory / "ca.pem")
    CertificateAuthority.create("unrelated CA").write(directory / "other-ca.pem")
    ca.issue_server(["localhost"], ["127.0.0.1"]).write(directory / "server.pem", directory / "server.key")
    not_after = (datetime.now(UTC) + timedelta(days=42)).replace(microsecond=0)
    ca.issue_server(["localhost"], ["127.0.0.1"], not_after=not_after).write(
        directory / "server2.pem", directory / "server2.key"
    )
    return Pki(
        ca=directory / "ca.pem",
        other_ca=directory / "other-ca.pem",
        cert=directory / "server.pem",
        key=directory / "server.key",
        cert2=directory / "server2.pem",
        key2=directory / "server2.key",
        cert2_not_after=not_after,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[MariaDBServer]:
    with start_mariadb(tmp_path_factory.mktemp("db"), ssl_ca=pki.ca, ssl_cert=pki.cert, ssl_key=pki.key) as running:
        running.sql("CREATE USER IF NOT EXISTS t@'%' IDENTIFIED BY 'pw'")
        running.sql("GRANT ALL PRIVILEGES ON *.* TO t@'%'")
        yield running


def _tls_client(server: MariaDBServer, ca: Path, statement: str) -> subprocess.CompletedProcess[str]:
    argv = server.client_command(
        "--user=t", "--password=pw", "--ssl", f"--ssl-ca={ca}", "--ssl-verify-server-cert", "-N", "-B", "-e", statement
    )
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; check its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# --------------------------------------------------------------------------------------------


def test_tls_is_enabled(server: MariaDBServer) -> None:
    assert server.sql("SHOW VARIABLES LIKE 'have_ssl'") == [["have_ssl", "YES"]]
    assert server.sql("SELECT @@port, @@bind_address") == [[str(server.port), "127.0.0.1"]]
    assert int(server.sql("SELECT @@max_connections")[0][0]) >= 2000


def test_cli_over_tcp_with_verified_tls(server: MariaDBServer, pki: Pki) -> None:
    result = _tls_client(server, pki.ca, "SHOW STATUS LIKE 'Ssl_version'")
    assert result.returncode == 0, result.stderr
    name, version = result.stdout.strip().split("\t")
    assert name == "Ssl_version" and version.startswith("TLSv1.")


def test_cli_rejects_server_from_unknown_ca(server: MariaDBServer, pki: Pki) -> None:
    result = _tls_client(server, pki.other_ca, "SELECT 1")
    assert result.returncode != 0
    assert "certificate" in result.stderr.lower() or "ssl" in result.stderr.lower()


def test_python_ssl_verification_with_pymysql(server: MariaDBServer, pki: Pki) -> None:
    connection = pymysql.connect(
        host="localhost",
        port=server.port,
        user="t",
        password="pw",
        ssl={"ca": str(pki.ca), "check_hostname": True},
        connect_timeout=10,
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW STATUS LIKE 'Ssl_cipher'")
            row = cursor.fetchone()
        assert row is not None and row[1]
    finally:
        connection.close()


def test_sql_rows_database_and_errors(server: MariaDBServer) -> None:
    server.sql("CREATE DATABASE IF NOT EXISTS app")
    server.sql("CREATE TABLE IF NOT EXISTS app.kv (k VARCHAR(10) PRIMARY KEY, v TEXT NULL)")
    server.sql("REPLACE INTO kv VALUES ('a', 'x\\ty\\nz\\\\'), ('b', NULL)", database="app")
    assert server.sql("SELECT k, v FROM kv ORDER BY k", database="app") == [["a", "x\ty\nz\\"], ["b", "NULL"]]
    assert server.sql("DO 1") == []
    with pytest.raises(LocalDatabaseError, match="SELEC"):
        server.sql("SELEC 1")


def test_restart_with_another_certificate(server: MariaDBServer, pki: Pki) -> None:
    port, pid = server.port, server.pid
    server.sql("CREATE DATABASE IF NOT EXISTS kept")
    server.restart(ssl_cert=pki.cert2, ssl_key=pki.key2)
    try:
        assert server.port == port and server.pid != pid and server.running
        assert server.sql("SHOW DATABASES LIKE 'kept'") == [["kept"]]
        not_after = server.sql("SHOW GLOBAL STATUS LIKE 'Ssl_server_not_after'")[0][1]
        assert str(pki.cert2_not_after.year) in not_after and pki.cert2_not_after.strftime("%b") in not_after
        result = _tls_client(server, pki.ca, "SHOW STATUS LIKE 'Ssl_version'")
        assert result.returncode == 0, result.stderr
    finally:
        server.restart(ssl_cert=pki.cert, ssl_key=pki.key)


def test_secure_transport_long_workdir_and_idempotent_stop(tmp_path: Path, pki: Pki) -> None:
    workdir = tmp_path / ("w" * 60) / ("x" * 60)
    running = start_mariadb(workdir, ssl_ca=pki.ca, ssl_cert=pki.cert, ssl_key=pki.key, require_secure_transport=True)
    pid = running.pid
    assert pid is not None
    try:
        assert len(os.fsencode(running.socket_path)) <= 100  # moved out of the long work directory
        assert running.sql("SELECT @@require_secure_transport") == [["1"]]
        plain = subprocess.run(
            running.client_command("--user=root", "--skip-ssl", "-e", "SELECT 1"),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert plain.returncode != 0
    finally:
        running.stop()
    assert not running.running
    assert not _process_exists(pid)
    assert not running.socket_path.parent.exists()
    running.stop()  # idempotent
    with pytest.raises(LocalDatabaseError):
        running.sql("SELECT 1", timeout=10)


def test_mismatched_tls_files_fail_clearly(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(LocalDatabaseError, match="exited with status") as caught:
        start_mariadb(tmp_path / "db", ssl_ca=pki.ca, ssl_cert=pki.cert, ssl_key=pki.key2)
    message = str(caught.value)
    assert "error.log" in message and "Unable to get private key" in message


def test_explicit_busy_port_fails_with_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(LocalDatabaseError, match="exited") as caught:
            start_mariadb(tmp_path / "db", ssl_ca=None, ssl_cert=None, ssl_key=None, port=port, startup_timeout=30)
    assert "in use" in str(caught.value)


def test_busy_picked_port_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        real_pick = localdb.pick_free_port
        ports = iter([busy_port])
        monkeypatch.setattr(localdb, "pick_free_port", lambda host: next(ports, None) or real_pick(host))
        with start_mariadb(tmp_path / "db", ssl_ca=None, ssl_cert=None, ssl_key=None) as running:
            assert running.port != busy_port
            assert running.sql("SELECT @@port") == [[str(running.port)]]
            assert running.sql("SELECT @@have_ssl") == [["DISABLED"]]


def test_missing_binaries_explain_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(localdb, "EXTRA_DIRS", ())
    with pytest.raises(LocalDatabaseError, match="apt-get install mariadb-server mariadb-client"):
        find_mariadb_binaries()
