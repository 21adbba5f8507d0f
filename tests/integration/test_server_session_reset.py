"""What MariaDB does with COM_RESET_CONNECTION and COM_CHANGE_USER: the facts an upstream connection
pool relies on (docs/PROTOCOL.md §6.1, read in the server's sql_parse.cc and sql_class.cc), pinned here on
the test server (10.11) through the proxy, so a server upgrade that changes them fails a test."""

from __future__ import annotations

import socket
import time
from typing import Any, Iterator

import mysql.connector
import pytest

from bench.myclient import native_password_scramble
from tests.conftest import NATIVE, SECOND, TEST_DATABASE
from tests.fixtures import responses as R
from tests.fixtures.responses import build_response
from tests.support.pki import TestPki
from tests.support.proxy import ProxyThread, make_route
from tlsproxy.demo.mariadb import MariaDBServer
from tlsproxy.mysql.codec import encode_frame, parse_header
from tlsproxy.mysql.constants import MASKED_CAPABILITIES, Capability
from tlsproxy.mysql.messages import (
    change_user_from_response,
    parse_auth_switch,
    parse_handshake_response,
    parse_initial_handshake,
)

pytestmark = pytest.mark.integration

TABLE = f"{TEST_DATABASE}.reset_probe"


@pytest.fixture(scope="module")
def proxy(mariadb: MariaDBServer, pki: TestPki) -> Iterator[ProxyThread]:
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (i INT)")
    with ProxyThread(make_route(mariadb.port, ca_file=pki.ca)) as running:
        yield running


@pytest.fixture
def connection(proxy: ProxyThread) -> Iterator[Any]:
    opened = mysql.connector.connect(host="127.0.0.1", port=proxy.port, user=NATIVE.user, password=NATIVE.password,
                                     database=TEST_DATABASE, ssl_disabled=True, use_pure=True, autocommit=True)
    try:
        yield opened
    finally:
        opened.close()


def value(connection: Any, sql: str) -> Any:
    cursor = connection.cursor()
    try:
        cursor.execute(sql)
        return cursor.fetchone()[0]
    finally:
        cursor.close()


def error_of(connection: Any, sql: str) -> int:
    with pytest.raises(mysql.connector.Error) as caught:
        value(connection, sql)
    return caught.value.errno


def test_reset_connection_leaves_nothing_of_the_session_but_its_login(connection: Any, mariadb: MariaDBServer) -> None:
    before = {name: value(connection, f"SELECT {name}") for name in
              ("CONNECTION_ID()", "CURRENT_USER()", "DATABASE()", "@@character_set_client")}
    for statement in ("SET @left_behind = 1", "CREATE TEMPORARY TABLE temp_probe (i INT)", "PREPARE probe FROM 'SELECT 1'",
                      "SET SESSION sql_mode = 'ANSI', time_zone = '+05:00', autocommit = 0",
                      "SET NAMES latin1", "SELECT GET_LOCK('pool_probe', 0)", f"INSERT INTO {TABLE} VALUES (42)"):
        value(connection, statement) if statement.startswith("SELECT") else connection.cmd_query(statement)
    assert value(connection, "SELECT @@in_transaction") == 1
    assert mariadb.sql("SELECT IS_FREE_LOCK('pool_probe')") == [["0"]]

    connection.cmd_reset_connection()

    assert value(connection, "SELECT @left_behind") is None
    assert error_of(connection, "SELECT * FROM temp_probe") == 1146  # no such table
    assert error_of(connection, "EXECUTE probe") == 1243  # unknown prepared statement
    assert value(connection, "SELECT @@in_transaction") == 0
    assert mariadb.sql(f"SELECT COUNT(*) FROM {TABLE} WHERE i = 42") == [["0"]]  # rolled back
    assert mariadb.sql("SELECT IS_FREE_LOCK('pool_probe')") == [["1"]]  # released at once
    for name in ("sql_mode", "time_zone", "autocommit"):
        assert value(connection, f"SELECT @@session.{name} = @@global.{name}") == 1, name
    # what stays: the connection, the login, the current database, the charset of the handshake
    after = {name: value(connection, f"SELECT {name}") for name in before}
    assert after == before


def test_reset_connection_releases_lock_tables(connection: Any, mariadb: MariaDBServer) -> None:
    connection.cmd_query(f"LOCK TABLES {TABLE} WRITE")
    connection.cmd_reset_connection()
    # another session writes at once (it would wait lock_wait_timeout if the lock were still held)
    mariadb.sql(f"SET SESSION lock_wait_timeout = 2; INSERT INTO {TABLE} VALUES (7); DELETE FROM {TABLE} WHERE i = 7")


def test_init_connect_does_not_run_again(proxy: ProxyThread, mariadb: MariaDBServer) -> None:
    mariadb.sql("SET GLOBAL init_connect = 'SET @init_connect_ran = 1'")
    try:
        opened = mysql.connector.connect(host="127.0.0.1", port=proxy.port, user=NATIVE.user,
                                         password=NATIVE.password, ssl_disabled=True, use_pure=True)
        try:
            assert value(opened, "SELECT @init_connect_ran") == 1
            opened.cmd_reset_connection()
            assert value(opened, "SELECT @init_connect_ran") is None
            opened.cmd_change_user(username=SECOND.user, password=SECOND.password)
            assert value(opened, "SELECT @init_connect_ran") is None
        finally:
            opened.close()
    finally:
        mariadb.sql("SET GLOBAL init_connect = ''")


def test_a_failed_change_user_keeps_the_connection_as_the_previous_user(connection: Any) -> None:
    """MariaDB resets the session before it authenticates, answers a wrong password after sleeping 1 s,
    stays connected as the previous user, and after three failures on a connection refuses every
    COM_CHANGE_USER (1047 Unknown command), even a right one. (MySQL 8 disconnects instead.) A pool must close such a connection."""
    connection_id = value(connection, "SELECT CONNECTION_ID()")
    connection.cmd_query("SET @left_behind = 1")
    errors, seconds = [], []
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(mysql.connector.Error) as denied:
            connection.cmd_change_user(username=SECOND.user, password="wrong", database=TEST_DATABASE)
        seconds.append(time.monotonic() - started)
        errors.append(denied.value.errno)
    assert errors == [1045, 1045, 1045]
    assert all(elapsed >= 0.9 for elapsed in seconds), seconds
    assert value(connection, "SELECT CURRENT_USER()") == f"{NATIVE.user}@%"
    assert value(connection, "SELECT CONNECTION_ID()") == connection_id
    assert value(connection, "SELECT @left_behind") is None
    with pytest.raises(mysql.connector.Error) as refused:
        connection.cmd_change_user(username=SECOND.user, password=SECOND.password, database=TEST_DATABASE)
    assert refused.value.errno == 1047


# ---- a client's HandshakeResponse as COM_CHANGE_USER (how a pooled connection would take a new client) --


def _read_packet(sock: socket.socket) -> tuple[int, bytes]:
    header = _read_exactly(sock, 4)
    length, sequence_id = parse_header(header)
    return sequence_id, _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _response(flags: int, user: str, password: str, nonce: bytes) -> bytes:
    return build_response(capability_flags=flags, username=user.encode(),
                          auth_response=native_password_scramble(password, nonce), database=TEST_DATABASE.encode(),
                          auth_plugin_name="mysql_native_password", attributes={b"_client_name": b"probe"},
                          character_set=45)


def _current_user(sock: socket.socket, flags: int) -> bytes:
    """SELECT CURRENT_USER(): one column, one row (a column count, its definition, an EOF unless
    DEPRECATE_EOF, the row, the terminator)."""
    sock.sendall(encode_frame(0, b"\x03SELECT CURRENT_USER()"))
    assert _read_packet(sock)[1] == b"\x01"
    _read_packet(sock)  # the column definition
    if not flags & Capability.DEPRECATE_EOF:
        assert _read_packet(sock)[1][:1] == b"\xfe"
    row = _read_packet(sock)[1]
    assert _read_packet(sock)[1][:1] == b"\xfe"
    return row[1 : 1 + row[0]]


@pytest.mark.parametrize("client", R.CAPTURED, ids=lambda fx: fx.name)
def test_a_handshake_response_as_change_user_logs_in_over_the_greetings_nonce(proxy: ProxyThread, client) -> None:
    """Each captured client's capability layout: log in as one user, then send COM_CHANGE_USER made from a
    HandshakeResponse for another user, its native-password scramble computed over the connection's own
    greeting nonce, as a client handed a pooled connection computes it. MariaDB drops the auth data of a
    CLIENT_PLUGIN_AUTH client (`server_mpvio_write_packet`) and asks again with an AuthSwitchRequest carrying
    the connection's original scramble, so the client's answer over the nonce it already has logs it in."""
    flags = client.capability_flags & ~MASKED_CAPABILITIES & ~Capability.ZSTD_COMPRESSION_ALGORITHM
    assert flags & Capability.PLUGIN_AUTH
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        _, greeting_payload = _read_packet(sock)
        nonce = parse_initial_handshake(greeting_payload).nonce
        sock.sendall(encode_frame(1, _response(flags, NATIVE.user, NATIVE.password, nonce)))
        assert _read_packet(sock)[1][:1] == b"\x00"
        second = _response(flags, SECOND.user, SECOND.password, nonce)
        sock.sendall(encode_frame(0, change_user_from_response(second, parse_handshake_response(second))))
        sequence_id, answer = _read_packet(sock)
        switch = parse_auth_switch(answer)
        assert (sequence_id, switch.plugin_name, switch.nonce) == (1, "mysql_native_password", nonce)
        sock.sendall(encode_frame(2, native_password_scramble(SECOND.password, switch.nonce)))
        assert _read_packet(sock)[1][:1] == b"\x00"
        assert _current_user(sock, flags) == f"{SECOND.user}@%".encode()
