"""Listeners and the relay: Unix sockets, several routes in one process, backpressure, half-close,
idle timeout, DISABLED mode."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pymysql
import pytest

from tests.conftest import NATIVE, PLAIN, TEST_DATABASE
from tests.support.pki import TestPki
from tests.support.proxy import CliProxy, ProxyThread, make_route
from tlsproxy.config import ProxyConfig, Route, SslMode, UnixAddress
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = pytest.mark.integration


def connect(port: int | None = None, *, unix_socket: str | None = None, account=NATIVE, **extra) -> pymysql.Connection:
    if unix_socket:
        return pymysql.connect(unix_socket=unix_socket, user=account.user, password=account.password,
                               ssl_disabled=True, **extra)
    return pymysql.connect(host="127.0.0.1", port=port, user=account.user, password=account.password,
                           ssl_disabled=True, **extra)


def ssl_cipher(connection: pymysql.Connection) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        return cursor.fetchone()[1]


def with_fields(route: Route, **changes) -> Route:
    return type(route)(**{**route.__dict__, **changes})


@pytest.fixture
def short_tmp() -> Path:
    """AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path can be longer."""
    with tempfile.TemporaryDirectory(prefix="tlsp-") as directory:
        yield Path(directory)


def test_unix_socket_listener_and_several_routes(mariadb: MariaDBServer, pki: TestPki, short_tmp: Path,
                                                event_loop_name: str) -> None:
    socket_path = short_tmp / "mysql.sock"
    tcp_route = make_route(mariadb.port, name="tcp", ca_file=pki.ca)
    unix_route = make_route(mariadb.port, name="unix", ca_file=pki.ca, listen=UnixAddress(socket_path, 0o600))
    with ProxyThread(ProxyConfig(routes=(tcp_route, unix_route)), event_loop=event_loop_name) as proxy:
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
        with connect(unix_socket=str(socket_path)) as over_unix, connect(proxy.port) as over_tcp:
            assert ssl_cipher(over_unix) and ssl_cipher(over_tcp)
        result = subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={socket_path}", "--protocol=SOCKET", f"-u{NATIVE.user}",
             f"-p{NATIVE.password}", "-N", "-B", "-e", "SHOW SESSION STATUS LIKE 'Ssl_version'"],
            capture_output=True, text=True, timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert "TLSv1" in result.stdout
    assert not socket_path.exists(), "the socket file is removed at shutdown"


def test_cli_config_file_with_two_routes(mariadb: MariaDBServer, pki: TestPki, short_tmp: Path) -> None:
    config = short_tmp / "tlsproxy.yaml"
    config.write_text(
        "routes:\n"
        f"  - name: first\n    listen: 127.0.0.1:0\n    upstream: localhost:{mariadb.port}\n    ssl_ca: {pki.ca}\n"
        f"  - name: second\n    listen: ./second.sock\n    unix_socket_mode: \"0660\"\n"
        f"    upstream: 127.0.0.1:{mariadb.port}\n    ssl_ca: {pki.ca}\n    tls_version: TLSv1.2\n"
    )
    with CliProxy(["--config", str(config)]) as cli:
        with connect(cli.port("first")) as first, connect(unix_socket=str(short_tmp / "second.sock")) as second:
            with first.cursor() as cursor:
                cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
                assert cursor.fetchone()[1] in ("TLSv1.2", "TLSv1.3")
            with second.cursor() as cursor:
                cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
                assert cursor.fetchone()[1] == "TLSv1.2"


def test_backpressure_bounds_proxy_buffers(mariadb: MariaDBServer, pki: TestPki, event_loop_name: str) -> None:
    """A client that stops reading a 256 MiB result must not make the proxy buffer it."""
    with ProxyThread(make_route(mariadb.port, ca_file=pki.ca), event_loop=event_loop_name) as proxy:
        with connect(proxy.port, database=TEST_DATABASE) as connection:
            sock: socket.socket = connection._sock  # type: ignore[attr-defined]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            with connection.cursor(pymysql.cursors.SSCursor) as cursor:
                cursor.execute("SELECT seq, REPEAT('x', 1048576) FROM seq_1_to_256")
                time.sleep(1.0)  # the client reads nothing; the proxy must pause the server side

                def buffered() -> int:
                    (session,) = proxy.proxy.listeners[0].sessions  # type: ignore[union-attr]
                    return session.client.get_write_buffer_size() + session.upstream.get_write_buffer_size()

                held = proxy.call(buffered)
                assert held < 8 * 1024 * 1024, f"proxy buffered {held} bytes for a stalled client"
                rows = 0
                for seq, data in cursor:
                    assert len(data) == 1048576
                    rows += 1
                assert rows == 256


def test_half_close_still_delivers_the_answer(mariadb: MariaDBServer, pki: TestPki, event_loop_name: str) -> None:
    """A client that sends a query and shuts down its write side still gets the whole answer."""
    with ProxyThread(make_route(mariadb.port, ca_file=pki.ca), event_loop=event_loop_name) as proxy:
        connection = connect(proxy.port)
        sock: socket.socket = connection._sock  # type: ignore[attr-defined]
        query = b"\x03SELECT SLEEP(0.3), 4242424242"
        sock.sendall(len(query).to_bytes(3, "little") + b"\x00" + query)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        sock.close()
        assert b"4242424242" in answer
        deadline = time.monotonic() + 5
        while proxy.active_connections() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.active_connections() == 0


def test_idle_timeout_closes_relayed_connection(mariadb: MariaDBServer, pki: TestPki) -> None:
    route = with_fields(make_route(mariadb.port, ca_file=pki.ca), idle_timeout=0.5)
    with ProxyThread(route) as proxy:
        connection = connect(proxy.port)
        assert ssl_cipher(connection)
        time.sleep(1.2)
        with pytest.raises(pymysql.err.OperationalError):
            ssl_cipher(connection)
        assert proxy.active_connections() == 0


def test_disabled_mode_relays_plaintext(mariadb: MariaDBServer, event_loop_name: str, caplog) -> None:
    """DISABLED measures the relay alone: the server sees no TLS (so REQUIRE SSL accounts are refused)."""
    route = make_route(mariadb.port, mode=SslMode.DISABLED)
    with ProxyThread(route, event_loop=event_loop_name) as proxy:
        with connect(proxy.port, account=PLAIN) as connection:
            assert ssl_cipher(connection) == ""
        with pytest.raises(pymysql.err.OperationalError) as denied:
            connect(proxy.port)
        assert denied.value.args[0] == 1045
    assert any("PLAINTEXT" in record.getMessage() for record in caplog.records)


def test_many_queries_and_reconnects(mariadb: MariaDBServer, pki: TestPki, event_loop_name: str) -> None:
    with ProxyThread(make_route(mariadb.port, ca_file=pki.ca), event_loop=event_loop_name) as proxy:
        for _ in range(20):
            with connect(proxy.port) as connection, connection.cursor() as cursor:
                for value in range(25):
                    cursor.execute("SELECT %s", (value,))
                    assert cursor.fetchone()[0] == value
        deadline = time.monotonic() + 5
        while proxy.active_connections() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.active_connections() == 0
