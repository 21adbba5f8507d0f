"""mysql_clear_password through the proxy against a real MariaDB (PROTOCOL.md §5.5).

MariaDB's PAM plugin with ``pam_use_cleartext_plugin=ON`` answers every login with an AuthSwitchRequest to
``mysql_clear_password``; the client replies ``password\\0``. The client leg is plaintext, so the password crosses
it in clear by design; the proxy must relay it only inside its upstream TLS. PAM checks the password with
pam_exec and a script (tests/support/pam.py): no system account, no network.

The server here is this module's own (the session ``mariadb`` fixture has no PAM). Writing /etc/pam.d needs root:
as root (CI) a missing piece fails the tests, as an ordinary user they are skipped.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pymysql
import pytest

from tests.support.pam import PamService, PamUnavailable, mariadb_plugin_dir, pam_service, server_plugin
from tests.support.pki import TestPki
from tests.support.proxy import ProxyThread, make_route
from tests.support.wire import RecordingRelay
from tlsproxy.demo.localdb import find_mariadb_binaries, start_mariadb
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = pytest.mark.integration

PAM_USER = "pamuser"
CLEAR_PASSWORD_SWITCH = b"\xfemysql_clear_password\x00"  # AuthSwitchRequest: 0xFE, plugin name, (empty) data


@dataclass(frozen=True)
class PamServer:
    server: MariaDBServer
    pam: PamService
    plugin: str  # auth_pam (v2, helper process) or auth_pam_v1 (in-process)

    @property
    def password(self) -> str:
        return self.pam.password


@pytest.fixture(scope="module")
def pam_server(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PamServer]:
    """A MariaDB with the PAM plugin in cleartext mode and `pamuser` (REQUIRE SSL) checked by a test PAM service."""
    workdir = tmp_path_factory.mktemp("clear_password")
    password = "clear-" + secrets.token_hex(8)  # random: its absence from a recording means something
    with ExitStack() as stack:
        try:
            plugin = server_plugin(mariadb_plugin_dir(find_mariadb_binaries().server))
            pam = stack.enter_context(pam_service(workdir / "pam", PAM_USER, password))
        except PamUnavailable as error:
            if error.skippable:
                pytest.skip(f"mysql_clear_password needs a PAM service: {error}")
            pytest.fail(f"cannot set up PAM for the mysql_clear_password tests: {error}")
        server = start_mariadb(workdir / "db", ssl_ca=pki.ca, ssl_cert=pki.server_cert, ssl_key=pki.server_key,
                               extra_options={"plugin_load_add": plugin, "pam_use_cleartext_plugin": "ON"})
        stack.callback(server.stop)
        status = server.sql("SELECT plugin_status, @@pam_use_cleartext_plugin FROM information_schema.plugins "
                            "WHERE plugin_name = 'pam'")
        assert status == [["ACTIVE", "1"]], f"PAM plugin {plugin} not active in cleartext mode: {status}"
        server.sql(f"CREATE USER '{PAM_USER}'@'%' IDENTIFIED VIA pam USING '{pam.name}' REQUIRE SSL")
        yield PamServer(server, pam, plugin)


@pytest.fixture(scope="module")
def proxy(pam_server: PamServer, pki: TestPki) -> Iterator[ProxyThread]:
    with ProxyThread(make_route(pam_server.server.port, ca_file=pki.ca)) as running:
        yield running


def judged_since(pam: PamService, before: int) -> list[tuple[str, str]]:
    return pam.attempts()[before:]


def mariadb_cli(port: int, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mariadb", "--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-P", str(port), "--skip-ssl",
         f"-u{PAM_USER}", f"-p{password}", "-N", "-B", "--connect-timeout=10",
         "-e", "SELECT CURRENT_USER(); SHOW SESSION STATUS LIKE 'Ssl_cipher'"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )


def pymysql_connect(port: int, password: str) -> pymysql.connections.Connection:
    return pymysql.connect(host="127.0.0.1", port=port, user=PAM_USER, password=password, ssl_disabled=True,
                           connect_timeout=10)


def assert_tls_session(cursor) -> None:  # type: ignore[no-untyped-def]
    cursor.execute("SELECT CURRENT_USER()")
    assert cursor.fetchone()[0] == f"{PAM_USER}@%"
    cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    row = cursor.fetchone()
    assert row is not None and row[1], "the server did not see TLS"


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


def test_mariadb_cli(pam_server: PamServer, proxy: ProxyThread) -> None:
    """Connector/C (the mariadb CLI) always allows mysql_clear_password, even with --skip-ssl."""
    before = len(pam_server.pam.attempts())
    result = mariadb_cli(proxy.port, pam_server.password)
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert lines[0] == [f"{PAM_USER}@%"]
    assert lines[1][0] == "Ssl_cipher" and len(lines[1]) == 2 and lines[1][1], result.stdout

    wrong = mariadb_cli(proxy.port, "wrong-" + pam_server.password)
    assert wrong.returncode != 0
    assert "ERROR 1045" in wrong.stderr, wrong.stderr
    assert judged_since(pam_server.pam, before) == [(PAM_USER, "ok"), (PAM_USER, "denied")]


def test_pymysql(pam_server: PamServer, proxy: ProxyThread) -> None:
    """PyMySQL always answers mysql_clear_password, TLS or not."""
    before = len(pam_server.pam.attempts())
    connection = pymysql_connect(proxy.port, pam_server.password)
    with connection, connection.cursor() as cursor:
        assert_tls_session(cursor)
    with pytest.raises(pymysql.err.OperationalError) as denied:
        pymysql_connect(proxy.port, "wrong-" + pam_server.password)
    assert denied.value.args[0] == 1045
    assert judged_since(pam_server.pam, before) == [(PAM_USER, "ok"), (PAM_USER, "denied")]


def test_mysql_connector_pure_refuses_cleartext_without_tls(pam_server: PamServer, proxy: ProxyThread) -> None:
    """mysql-connector-python (pure) never sends a cleartext password on a link it did not encrypt itself.

    Without auth_plugin it gets the proxy-relayed AuthSwitchRequest and refuses it ("mysql_clear_password requires
    SSL"); with auth_plugin='mysql_clear_password' it refuses before connecting. No option overrides either check,
    so with ssl_disabled=True this client cannot use mysql_clear_password through the proxy.
    """
    import mysql.connector

    with RecordingRelay(proxy.port) as client_leg:
        with pytest.raises(mysql.connector.errors.InterfaceError, match="mysql_clear_password requires SSL"):
            mysql.connector.connect(host="127.0.0.1", port=client_leg.port, user=PAM_USER,
                                    password=pam_server.password, ssl_disabled=True, use_pure=True,
                                    connection_timeout=10)
    assert CLEAR_PASSWORD_SWITCH in client_leg.to_client, "the server's AuthSwitchRequest did not reach the client"
    assert pam_server.password.encode() not in client_leg.to_server

    with pytest.raises(mysql.connector.errors.InterfaceError, match="not supported over insecure channels"):
        mysql.connector.connect(host="127.0.0.1", port=proxy.port, user=PAM_USER, password=pam_server.password,
                                ssl_disabled=True, use_pure=True, auth_plugin="mysql_clear_password",
                                connection_timeout=10)


_CEXT_SCRIPT = textwrap.dedent("""
    import sys
    import mysql.connector
    port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    for attempt in (password, "wrong-" + password):
        try:
            connection = mysql.connector.connect(host="127.0.0.1", port=port, user=user, password=attempt,
                                                 ssl_disabled=True, use_pure=False, connection_timeout=10)
        except mysql.connector.Error as error:
            print("error", error.errno)
            continue
        cursor = connection.cursor()
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        print("ok", type(connection).__name__, bool(cursor.fetchone()[1]))
        connection.close()
""")


@pytest.mark.parametrize("enabled", [False, True], ids=["default", "LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN"])
def test_mysql_connector_c_extension(pam_server: PamServer, proxy: ProxyThread, enabled: bool) -> None:
    """The C extension is libmysqlclient: cleartext only with LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN (read once per
    process, hence a subprocess); then it works without TLS on the client leg."""
    pytest.importorskip("_mysql_connector", reason="the C extension must import (pinned version in pyproject)")
    env = {key: value for key, value in os.environ.items() if key != "LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN"}
    if enabled:
        env["LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN"] = "1"
    result = subprocess.run([sys.executable, "-c", _CEXT_SCRIPT, str(proxy.port), PAM_USER, pam_server.password],
                            capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    expected = ["ok CMySQLConnection True", "error 1045"] if enabled else ["error 2059", "error 2059"]
    assert result.stdout.splitlines() == expected, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# The wire
# --------------------------------------------------------------------------------------------


def test_password_only_inside_tls_upstream(pam_server: PamServer, pki: TestPki, event_loop_name: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """client -> relay -> proxy -> relay -> server: the cleartext password is on the client leg (by design) and
    nowhere on the upstream leg, whose bytes after the SSLRequest are TLS records; nor in the proxy's logs."""
    password = pam_server.password.encode()
    with ExitStack() as stack:
        stack.enter_context(caplog.at_level(logging.DEBUG))
        upstream_leg = stack.enter_context(RecordingRelay(pam_server.server.port))
        proxy = stack.enter_context(ProxyThread(make_route(upstream_leg.port, ca_file=pki.ca),
                                                event_loop=event_loop_name))
        client_leg = stack.enter_context(RecordingRelay(proxy.port))
        connection = pymysql_connect(client_leg.port, pam_server.password)
        with connection, connection.cursor() as cursor:
            assert_tls_session(cursor)
        with pytest.raises(pymysql.err.OperationalError) as denied:
            pymysql_connect(client_leg.port, "wrong-" + pam_server.password)
        assert denied.value.args[0] == 1045

    # The client leg shows the exchange in clear: the switch to mysql_clear_password, then password + NUL.
    assert client_leg.to_client.count(CLEAR_PASSWORD_SWITCH) == 2
    assert password + b"\x00" in client_leg.to_server
    assert b"wrong-" + password + b"\x00" in client_leg.to_server

    # The upstream leg: two connections, each an SSLRequest (32-byte payload) and then TLS records only.
    assert upstream_leg.to_server, "the proxy never reached the server"
    assert password not in upstream_leg.to_server and password not in upstream_leg.to_client
    assert b"mysql_clear_password" not in upstream_leg.to_server + upstream_leg.to_client
    assert PAM_USER.encode() not in upstream_leg.to_server
    first_frame_length = int.from_bytes(upstream_leg.to_server[:3], "little")
    assert first_frame_length == 32, "the proxy's first upstream frame is not an SSLRequest"
    assert upstream_leg.to_server[36:37] == b"\x16", "no TLS handshake record right after the SSLRequest"

    assert pam_server.password not in caplog.text
