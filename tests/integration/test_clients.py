"""Real clients with TLS off on their side, through the proxy, to a real MariaDB that sees TLS."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pymysql
import pytest

from tests.conftest import ED25519, NATIVE, PLAIN, SECOND, TEST_DATABASE, X509
from tests.support.pki import TestPki
from tests.support.proxy import CliProxy, ProxyThread, make_route
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(mariadb: MariaDBServer, pki: TestPki, event_loop_name: str):
    with ProxyThread(make_route(mariadb.port, ca_file=pki.ca), event_loop=event_loop_name) as running:
        yield running


def session_status(cursor, name: str) -> str:
    cursor.execute(f"SHOW SESSION STATUS LIKE '{name}'")
    row = cursor.fetchone()
    return row[1] if row else ""


def mariadb_cli(port: int, user: str, password: str, sql: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mariadb", "--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-P", str(port), "--skip-ssl",
         f"-u{user}", f"-p{password}", "-N", "-B", *extra, "-e", sql],
        capture_output=True, text=True, timeout=30,
    )


def test_pymysql_sees_tls_upstream(proxy: ProxyThread) -> None:
    connection = pymysql.connect(ssl_disabled=True, host="127.0.0.1", port=proxy.port, user=NATIVE.user, password=NATIVE.password,
                                 database=TEST_DATABASE)
    with connection, connection.cursor() as cursor:
        assert session_status(cursor, "Ssl_cipher")
        assert session_status(cursor, "Ssl_version") in ("TLSv1.2", "TLSv1.3")
        cursor.execute("SELECT CURRENT_USER()")
        assert cursor.fetchone()[0] == f"{NATIVE.user}@%"


def test_require_ssl_account_needs_the_proxy(mariadb: MariaDBServer, proxy: ProxyThread) -> None:
    with pytest.raises(pymysql.err.OperationalError) as refused:
        pymysql.connect(ssl_disabled=True, host="127.0.0.1", port=mariadb.port, user=NATIVE.user, password=NATIVE.password)
    assert refused.value.args[0] == 1045
    pymysql.connect(ssl_disabled=True, host="127.0.0.1", port=proxy.port, user=NATIVE.user, password=NATIVE.password).close()


def test_mariadb_cli(proxy: ProxyThread) -> None:
    result = mariadb_cli(proxy.port, NATIVE.user, NATIVE.password, "SHOW SESSION STATUS LIKE 'Ssl_version'")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() in (["Ssl_version", "TLSv1.3"], ["Ssl_version", "TLSv1.2"])


def test_mariadb_cli_ed25519(proxy: ProxyThread) -> None:
    result = mariadb_cli(proxy.port, ED25519.user, ED25519.password, "SELECT CURRENT_USER()")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{ED25519.user}@%"
    wrong = mariadb_cli(proxy.port, ED25519.user, "wrong", "SELECT 1")
    assert "1045" in wrong.stderr


def test_pymysql_ed25519(proxy: ProxyThread) -> None:
    import nacl  # noqa: F401  - PyMySQL needs PyNaCl for ed25519; the test extra installs it
    connection = pymysql.connect(ssl_disabled=True, host="127.0.0.1", port=proxy.port, user=ED25519.user, password=ED25519.password)
    with connection, connection.cursor() as cursor:
        assert session_status(cursor, "Ssl_cipher")


def test_mysql_connector_pure(proxy: ProxyThread) -> None:
    import mysql.connector

    connection = mysql.connector.connect(host="127.0.0.1", port=proxy.port, user=NATIVE.user,
                                         password=NATIVE.password, ssl_disabled=True, use_pure=True)
    try:
        cursor = connection.cursor()
        assert session_status(cursor, "Ssl_cipher")
    finally:
        connection.close()


def test_mysql_connector_c_extension(proxy: ProxyThread) -> None:
    import mysql.connector

    import _mysql_connector  # noqa: F401  - the C extension must import (version pinned in pyproject)
    connection = mysql.connector.connect(host="127.0.0.1", port=proxy.port, user=NATIVE.user,
                                         password=NATIVE.password, ssl_disabled=True, use_pure=False)
    try:
        cursor = connection.cursor()
        assert session_status(cursor, "Ssl_cipher")
        assert type(connection).__name__ == "CMySQLConnection"
    finally:
        connection.close()


def test_require_x509_needs_client_certificate(mariadb: MariaDBServer, pki: TestPki, event_loop_name: str) -> None:
    with ProxyThread(make_route(mariadb.port, ca_file=pki.ca), event_loop=event_loop_name) as without_cert:
        with pytest.raises(pymysql.err.OperationalError) as refused:
            pymysql.connect(ssl_disabled=True, host="127.0.0.1", port=without_cert.port, user=X509.user, password=X509.password)
        assert refused.value.args[0] == 1045
    route = make_route(mariadb.port, ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    with ProxyThread(route, event_loop=event_loop_name) as with_cert:
        connection = pymysql.connect(ssl_disabled=True, host="127.0.0.1", port=with_cert.port, user=X509.user, password=X509.password)
        with connection, connection.cursor() as cursor:
            assert session_status(cursor, "Ssl_cipher")


def test_change_user(proxy: ProxyThread) -> None:
    import mysql.connector

    connection = mysql.connector.connect(host="127.0.0.1", port=proxy.port, user=NATIVE.user,
                                         password=NATIVE.password, ssl_disabled=True, use_pure=True)
    try:
        connection.cmd_change_user(username=SECOND.user, password=SECOND.password)
        cursor = connection.cursor()
        cursor.execute("SELECT CURRENT_USER()")
        assert cursor.fetchone()[0] == f"{SECOND.user}@%"
        assert session_status(cursor, "Ssl_cipher")
        with pytest.raises(mysql.connector.Error) as denied:
            connection.cmd_change_user(username=SECOND.user, password="wrong")
        assert denied.value.errno == 1045
    finally:
        connection.close()


def test_blobs_round_trip_64_mib(proxy: ProxyThread) -> None:
    """64 MiB of random blobs, two of them single values over 16 MiB (continuation frames both ways)."""
    sizes = [17 * 1024 * 1024, 20 * 1024 * 1024 + 3] + [3 * 1024 * 1024 + i for i in range(9)]
    assert sum(sizes) >= 64 * 1024 * 1024
    connection = pymysql.connect(ssl_disabled=True, host="127.0.0.1", port=proxy.port, user=NATIVE.user, password=NATIVE.password,
                                 database=TEST_DATABASE, autocommit=True)
    table = f"blobs_{os.getpid()}_{id(proxy)}"
    with connection, connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, data LONGBLOB, digest CHAR(64))")
        try:
            sent = {}
            for index, size in enumerate(sizes):
                data = os.urandom(size)
                sent[index] = hashlib.sha256(data).hexdigest()
                cursor.execute(f"INSERT INTO {table} VALUES (%s, %s, SHA2(data, 256))", (index, data))
            cursor.execute(f"SELECT id, data, digest FROM {table} ORDER BY id")
            for index, data, server_digest in cursor.fetchall():
                assert hashlib.sha256(data).hexdigest() == sent[index]
                assert server_digest == sent[index]
        finally:
            cursor.execute(f"DROP TABLE {table}")


def test_cli_subprocess(mariadb: MariaDBServer, pki: TestPki) -> None:
    args = ["--listen", "127.0.0.1:0", "--upstream", f"localhost:{mariadb.port}", "--ssl-ca", str(pki.ca)]
    with CliProxy(args) as cli:
        result = mariadb_cli(cli.port(), NATIVE.user, NATIVE.password, "SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        assert result.returncode == 0, result.stderr + "".join(cli.output)
        assert result.stdout.split()[0] == "Ssl_cipher" and len(result.stdout.split()) == 2
    assert cli.process is not None and cli.process.returncode == 0


def test_plain_account_also_gets_tls(proxy: ProxyThread) -> None:
    connection = pymysql.connect(ssl_disabled=True, host="127.0.0.1", port=proxy.port, user=PLAIN.user, password=PLAIN.password)
    with connection, connection.cursor() as cursor:
        assert session_status(cursor, "Ssl_cipher")
