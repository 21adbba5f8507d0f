"""The upstream pool with every client of the matrix, against the real MariaDB: who logs in on whose
parked connection, what each library's capabilities allow, a client's own COM_CHANGE_USER on a reused
connection, and a wrong password (also from a raw client that keeps sending).

Reuse is proved from the server's side: the same CONNECTION_ID() for clients one after the other.

What the clients send (their HandshakeResponse capabilities as the proxy passes them; charset id; max
packet size):
    PyMySQL 2.2                     0x003aa205, 45 (utf8mb4_general_ci), 16 MiB - 1; no DEPRECATE_EOF
    mysql-connector-python 9, pure  0x003ba20d, 45, 1 GiB (PyMySQL's + MULTI_STATEMENTS + CONNECT_WITH_DB)
    mysql-connector-python 9, C     0x09bfa285, 255; DEPRECATE_EOF, QUERY_ATTRIBUTES, SESSION_TRACK
    mariadb CLI 10.11 (libmariadb)  0x00bfa284, 33; SESSION_TRACK, no DEPRECATE_EOF
So no two libraries fit each other's parked connections as they come: each client logs in on one its
own library left. PyMySQL with MULTI_STATEMENTS and connector's max packet size (its module constant
patched) fits connector's pure mode (CONNECT_WITH_DB does not count: `greeting.pool_key`).
"""

from __future__ import annotations

import dataclasses
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Iterator

import mysql.connector
import pymysql
import pymysql._auth
import pytest
from pymysql.constants import CLIENT

from tests.conftest import NATIVE, PLAIN, SECOND, TEST_DATABASE, Account
from tests.integration.test_clients import mariadb_cli
from tests.integration.test_upstream_pool import direct, idle, pool_event, pooled_proxy
from tests.support.pki import TestPki
from tests.support.proxy import ProxyThread, make_route, metric_value, wait_for
from tests.support.rawclient import DEFAULT_FLAGS, RawClient, com_query, frame, native_scramble
from tlsproxy.mysql.constants import Capability
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

KINDS = ("mariadb", "pymysql", "connector-pure", "connector-cext")
ROWS_SQL = f"SELECT seq, CONCAT('row ', seq) FROM {TEST_DATABASE}.seq_1_to_40"
ROWS = [(i, f"row {i}") for i in range(1, 41)]


@pytest.fixture
def proxy(mariadb: MariaDBServer, pki: TestPki, event_loop_name: str) -> Iterator[ProxyThread]:
    with pooled_proxy(mariadb, pki, event_loop=event_loop_name) as running:
        yield running


@dataclass
class Seen:
    connection_id: int
    user: str
    rows: list[tuple[Any, ...]]


def open_client(kind: str, port: int, account: Account = NATIVE, **options: Any) -> Any:
    """A PyMySQL or mysql-connector-python connection through the proxy, TLS off on the client's side."""
    if kind == "pymysql":
        return pymysql.connect(host="127.0.0.1", port=port, user=account.user, password=account.password,
                               ssl_disabled=True, connect_timeout=10, **options)
    assert kind in ("connector-pure", "connector-cext"), kind
    connection = mysql.connector.connect(host="127.0.0.1", port=port, user=account.user, password=account.password,
                                         ssl_disabled=True, use_pure=kind == "connector-pure", connection_timeout=10,
                                         **options)
    assert type(connection).__name__ == ("MySQLConnection" if kind == "connector-pure" else "CMySQLConnection")
    return connection


def rows(connection: Any, sql: str) -> list[tuple[Any, ...]]:
    cursor = connection.cursor()
    try:
        cursor.execute(sql)
        return [tuple(row) for row in cursor.fetchall()]
    finally:
        cursor.close()


def text(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def session(kind: str, port: int, account: Account = NATIVE, **options: Any) -> Seen:
    """Log in with `kind`, read the connection id, the user and a 40-row result set, and quit."""
    if kind == "mariadb":
        result = mariadb_cli(port, account.user, account.password,
                             f"SELECT CONNECTION_ID(), CURRENT_USER(); {ROWS_SQL}")
        assert result.returncode == 0, result.stderr
        lines = [line.split("\t") for line in result.stdout.splitlines()]
        return Seen(int(lines[0][0]), lines[0][1], [(int(a), b) for a, b in lines[1:]])
    connection = open_client(kind, port, account, **options)
    try:
        (connection_id, user), = rows(connection, "SELECT CONNECTION_ID(), CURRENT_USER()")
        return Seen(int(connection_id), text(user), [(int(a), text(b)) for a, b in rows(connection, ROWS_SQL)])
    finally:
        connection.close()


def parked_after(proxy: ProxyThread, count: int) -> None:
    """Wait until `count` connections were parked in all (the reset's OK comes after the client left)."""
    assert wait_for(lambda: pool_event(proxy, "parked") == count, 5), pool_event(proxy, "parked")


# ---- every client of the matrix ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_client_logs_in_on_the_connection_its_library_left(proxy: ProxyThread, kind: str) -> None:
    first = session(kind, proxy.port, NATIVE)
    assert (first.user, first.rows) == (f"{NATIVE.user}@%", ROWS)
    parked_after(proxy, 1)
    second = session(kind, proxy.port, SECOND)
    assert second.connection_id == first.connection_id  # the same server connection
    assert (second.user, second.rows) == (f"{SECOND.user}@%", ROWS)
    assert pool_event(proxy, "reused") == 1 and pool_event(proxy, "mismatch") == 0
    parked_after(proxy, 2)
    assert idle(proxy) == 1


def test_pymysql_and_connector_pure_log_in_on_each_others_connections(
        proxy: ProxyThread, monkeypatch: pytest.MonkeyPatch) -> None:
    """The only two libraries whose SSLRequests can agree: PyMySQL with MULTI_STATEMENTS and connector's
    1 GiB max packet size, and connector's pure mode (which also sends CONNECT_WITH_DB, not compared)."""
    monkeypatch.setattr(pymysql.connections, "MAX_PACKET_LEN", 1 << 30)
    flags = {"client_flag": CLIENT.MULTI_STATEMENTS}
    seen = [session("connector-pure", proxy.port, NATIVE)]
    for count, (kind, account) in enumerate([("pymysql", SECOND), ("connector-pure", NATIVE), ("pymysql", NATIVE)],
                                            start=1):
        parked_after(proxy, count)
        seen.append(session(kind, proxy.port, account, **(flags if kind == "pymysql" else {})))
        assert seen[-1].user == f"{account.user}@%" and seen[-1].rows == ROWS
    assert {s.connection_id for s in seen} == {seen[0].connection_id}
    assert pool_event(proxy, "reused") == 3 and pool_event(proxy, "mismatch") == 0


def test_a_client_that_closes_its_socket_between_commands_leaves_its_connection_parked(proxy: ProxyThread) -> None:
    client = open_client("pymysql", proxy.port, NATIVE)
    first_id = rows(client, "SELECT CONNECTION_ID()")[0][0]
    assert [(int(a), b) for a, b in rows(client, ROWS_SQL)] == ROWS
    client._sock.shutdown(socket.SHUT_RDWR)  # no COM_QUIT; PyMySQL's reader file keeps the descriptor open
    client._sock.close()
    parked_after(proxy, 1)
    assert session("pymysql", proxy.port, SECOND).connection_id == first_id


def test_a_clients_own_reset_connection_then_quit_leaves_its_connection_parked(proxy: ProxyThread) -> None:
    first = session("connector-pure", proxy.port, NATIVE)
    parked_after(proxy, 1)
    connection = open_client("connector-pure", proxy.port, NATIVE)
    try:
        rows(connection, "SELECT CONNECTION_ID()")
        connection.cmd_reset_connection()
        assert rows(connection, "SELECT CONNECTION_ID(), CURRENT_USER()") == [(first.connection_id, f"{NATIVE.user}@%")]
    finally:
        connection.close()
    parked_after(proxy, 2)
    assert session("connector-pure", proxy.port, SECOND).connection_id == first.connection_id


def test_pool_then_prewarm_then_a_fresh_connection(mariadb: MariaDBServer, pki: TestPki, event_loop_name: str) -> None:
    route = dataclasses.replace(make_route(mariadb.port, ca_file=pki.ca, name="pool"), upstream_pool=2, prewarm=1)
    with ProxyThread(route, event_loop=event_loop_name) as proxy:
        first = session("pymysql", proxy.port, NATIVE)  # fresh: nothing parked, nothing prewarmed yet
        parked_after(proxy, 1)
        assert wait_for(lambda: metric_value(proxy, "tlsproxy_prewarm_ready", route="pool") == 1, 10)
        on_parked = open_client("pymysql", proxy.port, NATIVE)
        on_warm = open_client("pymysql", proxy.port, SECOND)
        try:
            assert rows(on_parked, "SELECT CONNECTION_ID()")[0][0] == first.connection_id
            assert rows(on_warm, "SELECT CURRENT_USER()") == [(f"{SECOND.user}@%",)]
            assert metric_value(proxy, "tlsproxy_prewarm_connections_total", route="pool", outcome="handed_out") == 1
        finally:
            on_parked.close()
            on_warm.close()
        parked_after(proxy, 3)
        assert pool_event(proxy, "reused") == 1
        # the reused login's phase in the handshake histogram is COM_CHANGE_USER's
        assert metric_value(proxy, "tlsproxy_handshake_duration_seconds_count", route="pool", phase="change_user") == 1


# ---- a client's own COM_CHANGE_USER on a reused connection --------------------------------------------


def change_user(kind: str, connection: Any, account: Account) -> None:
    """The client library's own COM_CHANGE_USER (PyMySQL has no API: built as its `connect` would)."""
    if kind != "pymysql":
        connection.cmd_change_user(username=account.user, password=account.password)
        return
    from pymysql.charset import charset_by_name

    connection.user, connection.password = account.user, account.password.encode()
    scramble = pymysql._auth.scramble_native_password(connection.password, connection.salt)
    body = (account.user.encode() + b"\0" + bytes([len(scramble)]) + scramble + b"\0"
            + struct.pack("<H", charset_by_name(connection.charset).id) + b"mysql_native_password\0"
            + b"\0")  # no connection attributes: MariaDB answers 1047 when CONNECT_ATTRS is on and the length missing
    connection._execute_command(0x11, body)
    packet = connection._read_packet()  # raises on ERR
    if packet.is_auth_switch_request():  # MariaDB: always, with the connection's own nonce (PROTOCOL.md §6)
        packet.read_uint8()
        packet = connection._process_auth(packet.read_string(), packet)
    assert packet.is_ok_packet()


def error_code(exc: BaseException) -> int:
    return exc.errno if isinstance(exc, mysql.connector.Error) else exc.args[0]  # type: ignore[no-any-return]


CHANGE_USER_KINDS = ("pymysql", "connector-pure", "connector-cext")


def on_a_reused_connection(proxy: ProxyThread, kind: str) -> tuple[int, Any]:
    """A `kind` client logged in as NATIVE on the connection an earlier one left parked; that id."""
    first = session(kind, proxy.port, NATIVE)
    parked_after(proxy, 1)
    connection = open_client(kind, proxy.port, NATIVE)
    assert rows(connection, "SELECT CONNECTION_ID()")[0][0] == first.connection_id
    return first.connection_id, connection


@pytest.mark.parametrize("kind", CHANGE_USER_KINDS)
def test_a_clients_own_change_user_on_a_reused_connection_then_it_is_parked_again(
        proxy: ProxyThread, kind: str) -> None:
    first_id, connection = on_a_reused_connection(proxy, kind)
    try:
        change_user(kind, connection, SECOND)
        assert [(int(a), text(b)) for a, b in rows(connection, "SELECT CONNECTION_ID(), CURRENT_USER()")] == [
            (first_id, f"{SECOND.user}@%")]
        assert [(int(a), text(b)) for a, b in rows(connection, ROWS_SQL)] == ROWS
    finally:
        connection.close()
    parked_after(proxy, 2)
    third = session(kind, proxy.port, NATIVE)
    assert (third.connection_id, third.user) == (first_id, f"{NATIVE.user}@%")
    assert pool_event(proxy, "reused") == 2 and pool_event(proxy, "in_flight") == 0


@pytest.mark.parametrize("kind", CHANGE_USER_KINDS)
def test_a_clients_own_failed_change_user_keeps_the_connection_out_of_the_pool(
        proxy: ProxyThread, kind: str) -> None:
    first_id, connection = on_a_reused_connection(proxy, kind)
    try:
        started = time.monotonic()
        with pytest.raises((pymysql.err.MySQLError, mysql.connector.Error)) as denied:
            change_user(kind, connection, Account(SECOND.user, "wrong"))
        assert error_code(denied.value) == 1045
        assert time.monotonic() - started >= 0.9  # MariaDB sleeps 1 s before a failed change-user's ERR
        if kind == "connector-pure":  # the others' state is the server's: still logged in as NATIVE
            assert [text(v) for v, in rows(connection, "SELECT CURRENT_USER()")] == [f"{NATIVE.user}@%"]
    finally:
        connection.close()
    assert wait_for(lambda: pool_event(proxy, "in_flight") == 1, 5)  # not parked: the reason is logged
    assert idle(proxy) == 0 and pool_event(proxy, "parked") == 1
    after = session(kind, proxy.port, NATIVE)
    assert after.connection_id != first_id and after.user == f"{NATIVE.user}@%"


# ---- capabilities that change what the server sends ---------------------------------------------------


def test_found_rows_and_plain_clients_each_see_their_own_affected_rows(
        proxy: ProxyThread, mariadb: MariaDBServer) -> None:
    """CLIENT_FOUND_ROWS makes an UPDATE report the rows it matched, not the rows it changed: a client
    with it must never be logged in on a connection opened without it, nor the other way round."""
    with direct(mariadb) as watcher, watcher.cursor() as watch:
        watch.execute("CREATE TABLE IF NOT EXISTS pool_found_rows (id INT PRIMARY KEY, v INT)")
        watch.execute("REPLACE INTO pool_found_rows VALUES (1, 7)")
    ids: dict[str, set[int]] = {"found_rows": set(), "plain": set()}
    for round_ in range(3):
        for name, flags in (("found_rows", CLIENT.FOUND_ROWS), ("plain", 0)):
            connection = open_client("pymysql", proxy.port, NATIVE, database=TEST_DATABASE, client_flag=flags,
                                     autocommit=True)
            with connection, connection.cursor() as cursor:
                cursor.execute("SELECT CONNECTION_ID()")
                ids[name].add(cursor.fetchone()[0])
                affected = cursor.execute("UPDATE pool_found_rows SET v = 7 WHERE id = 1")  # matches, changes nothing
                assert affected == (1 if name == "found_rows" else 0), (round_, name)
            parked_after(proxy, 2 * round_ + (1 if name == "found_rows" else 2))
    assert len(ids["found_rows"]) == len(ids["plain"]) == 1 and ids["found_rows"] != ids["plain"]
    # Each client after the first two took the newest parked connection (the other kind's), gave it back
    # (mismatch) and logged in on the one that fits.
    assert pool_event(proxy, "mismatch") == 5 and pool_event(proxy, "reused") == 4
    assert idle(proxy) == 2


def test_deprecate_eof_and_plain_clients_each_parse_their_results(proxy: ProxyThread) -> None:
    """connector's C extension asks for CLIENT_DEPRECATE_EOF (result sets end with an OK packet), PyMySQL
    does not (EOF packets): each must get its own kind of connection, and its multi-row results."""
    ids: dict[str, set[int]] = {"connector-cext": set(), "pymysql": set()}
    for round_ in range(3):
        for kind in ids:
            seen = session(kind, proxy.port, NATIVE)
            assert seen.rows == ROWS and seen.user == f"{NATIVE.user}@%"
            ids[kind].add(seen.connection_id)
            parked_after(proxy, 2 * round_ + (1 if kind == "connector-cext" else 2))
    assert len(ids["connector-cext"]) == len(ids["pymysql"]) == 1 and ids["connector-cext"] != ids["pymysql"]
    assert pool_event(proxy, "mismatch") == 5 and pool_event(proxy, "reused") == 4


def test_a_misfit_client_gets_a_fresh_connection_when_no_parked_one_fits(proxy: ProxyThread) -> None:
    plain = session("pymysql", proxy.port, NATIVE)
    parked_after(proxy, 1)
    other = session("mariadb", proxy.port, NATIVE)
    assert other.connection_id != plain.connection_id and other.rows == ROWS
    assert pool_event(proxy, "mismatch") == 1 and pool_event(proxy, "reused") == 0
    parked_after(proxy, 2)
    assert idle(proxy) == 2  # the one given back, and the CLI's own
    again = session("pymysql", proxy.port, NATIVE)  # the newest is the CLI's: mismatch, then its own
    assert again.connection_id == plain.connection_id
    assert pool_event(proxy, "mismatch") == 2 and pool_event(proxy, "reused") == 1


# ---- a wrong password ------------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["mysql", "tlsproxy_no_such_db"])
def test_a_login_to_a_database_it_may_not_use_is_the_servers_error_and_closes_the_connection(
        proxy: ProxyThread, database: str) -> None:
    """The COM_CHANGE_USER fails on the database: 1044 for both (an account without global rights is not
    told that a database does not exist), as at connect; the connection is closed like after a wrong
    password."""
    parked_id = session("pymysql", proxy.port, NATIVE).connection_id
    parked_after(proxy, 1)
    with pytest.raises(pymysql.err.OperationalError) as refused:
        open_client("pymysql", proxy.port, SECOND, database=database)
    assert refused.value.args[0] == 1044
    assert pool_event(proxy, "denied") == 1 and idle(proxy) == 0
    good = session("pymysql", proxy.port, SECOND)
    assert good.user == f"{SECOND.user}@%" and good.connection_id != parked_id


def insert_target(mariadb: MariaDBServer) -> None:
    with direct(mariadb) as watcher, watcher.cursor() as watch:
        watch.execute("CREATE TABLE IF NOT EXISTS pool_after_denied (v INT)")
        watch.execute("DELETE FROM pool_after_denied")


def inserted(mariadb: MariaDBServer) -> int:
    with direct(mariadb) as watcher, watcher.cursor() as watch:
        watch.execute("SELECT COUNT(*) FROM pool_after_denied")
        return int(watch.fetchone()[0])


INSERT = com_query(f"INSERT INTO {TEST_DATABASE}.pool_after_denied VALUES (1)")
PIPELINED_LOGIN = b"tlsproxy: client sent data before the server answered its handshake response"


def park_native(proxy: ProxyThread) -> int:
    """A NATIVE client (rights on the table) leaves its connection parked; its id."""
    seen = session("pymysql", proxy.port, NATIVE)
    parked_after(proxy, 1)
    return seen.connection_id


@pytest.mark.parametrize("kind", ["pymysql", "connector-pure", "mariadb"])
def test_a_wrong_password_through_the_pool_is_the_servers_1045(proxy: ProxyThread, kind: str) -> None:
    if kind == "mariadb":
        seen_id = session("mariadb", proxy.port, NATIVE).connection_id
    else:
        seen_id = session(kind, proxy.port, NATIVE).connection_id
    parked_after(proxy, 1)
    if kind == "mariadb":
        result = mariadb_cli(proxy.port, NATIVE.user, "wrong", "SELECT 1")
        assert result.returncode != 0 and result.stderr.startswith("ERROR 1045 (28000)"), result.stderr
    else:
        with pytest.raises((pymysql.err.MySQLError, mysql.connector.Error)) as denied:
            open_client(kind, proxy.port, Account(NATIVE.user, "wrong"))
        assert error_code(denied.value) == 1045
    assert pool_event(proxy, "denied") == 1 and idle(proxy) == 0
    good = session(kind, proxy.port, SECOND)
    assert good.user == f"{SECOND.user}@%" and good.connection_id != seen_id


def gone(mariadb: MariaDBServer, connection_id: int) -> bool:
    """The server connection has ended: whatever was sent on it has been run or never will be."""
    return not mariadb.sql(f"SELECT ID FROM information_schema.PROCESSLIST WHERE ID = {connection_id}")


def wrong_login_on_parked(client: RawClient, parked_id: int) -> bytes:
    """Log in with a wrong password on the parked connection, up to the AuthSwitchRequest; its answer. The
    client names another plugin in its response, so the switch to native password reaches it (for a client
    that used native password already, the proxy answers the switch from its response itself)."""
    assert client.greeting.connection_id == parked_id  # the parked connection's own greeting
    client.send(frame(1, client.handshake_response(NATIVE.user, "wrong", plugin="client_ed25519")))
    seq, switch = client.read_frame()
    assert seq == 2 and switch.startswith(b"\xfemysql_native_password\0")
    # MariaDB's COM_CHANGE_USER: the connection's scramble again, the nonce of the greeting the client saw
    assert switch[len(b"\xfemysql_native_password\0"):].rstrip(b"\0") == client.greeting.nonce
    return frame(3, client.auth_switch_answer(switch, "wrong"))


def test_a_raw_client_that_keeps_sending_after_the_err_gets_nothing_run(
        proxy: ProxyThread, mariadb: MariaDBServer) -> None:
    """The connection is still logged in as the parked connection's previous user (who may insert) after
    the failed COM_CHANGE_USER: an INSERT relayed after the ERR would run."""
    insert_target(mariadb)
    parked_id = park_native(proxy)
    with RawClient(proxy.port) as client:
        client.send(wrong_login_on_parked(client, parked_id))
        seq, answer = client.read_frame()
        assert seq == 4 and answer[:3] == b"\xff" + (1045).to_bytes(2, "little"), answer
        assert b"Access denied for user 'native'" in answer
        try:
            client.send(INSERT)
            client.send(INSERT)
        except OSError:
            pass  # already closed: fine too
        assert client.closed_by_peer()
    assert pool_event(proxy, "denied") == 1 and idle(proxy) == 0
    assert wait_for(lambda: gone(mariadb, parked_id), 5)
    assert inserted(mariadb) == 0
    with open_client("pymysql", proxy.port, SECOND) as good:
        assert rows(good, "SELECT CURRENT_USER()") == [(f"{SECOND.user}@%",)]
        assert rows(good, "SELECT CONNECTION_ID()")[0][0] != parked_id


@pytest.mark.parametrize("behind", ["login", "auth_answer"])
def test_a_raw_client_that_pipelines_a_query_before_the_verdict_gets_nothing_run(
        proxy: ProxyThread, mariadb: MariaDBServer, behind: str) -> None:
    """The INSERT in the same write as the HandshakeResponse, or as the answer to the AuthSwitchRequest,
    before the server's verdict: the proxy refuses it at once, and the connection is closed, not parked."""
    insert_target(mariadb)
    parked_id = park_native(proxy)
    with RawClient(proxy.port) as client:
        if behind == "login":
            assert client.greeting.connection_id == parked_id
            client.send(frame(1, client.handshake_response(NATIVE.user, "wrong")) + INSERT)
            expected = 2, PIPELINED_LOGIN
        else:
            client.send(wrong_login_on_parked(client, parked_id) + INSERT)
            expected = 4, b"tlsproxy: client packet out of order: sequence id 0, expected 4"
        seq, answer = client.read_frame()
        assert (seq, answer) == (expected[0], b"\xff" + (1043).to_bytes(2, "little") + b"#08S01" + expected[1])
        assert client.closed_by_peer()
    assert idle(proxy) == 0 and pool_event(proxy, "parked") == 1
    assert wait_for(lambda: gone(mariadb, parked_id), 5)
    assert inserted(mariadb) == 0
    with open_client("pymysql", proxy.port, NATIVE) as good:
        assert rows(good, "SELECT CURRENT_USER()") == [(f"{NATIVE.user}@%",)]


def test_mariadb_answers_a_change_user_without_plugin_auth_with_an_auth_switch(mariadb: MariaDBServer) -> None:
    """The server fact behind the next test, straight to the server (PLAIN needs no TLS): on a connection
    opened without CLIENT_PLUGIN_AUTH, COM_CHANGE_USER (no plugin name) is answered with an
    AuthSwitchRequest for mysql_native_password carrying the greeting's nonce, not with OK or ERR."""
    flags = DEFAULT_FLAGS & ~Capability.PLUGIN_AUTH & ~Capability.CONNECT_ATTRS
    with RawClient(mariadb.port) as client:
        client.send(frame(1, client.handshake_response(PLAIN.user, PLAIN.password, flags=flags)))
        assert client.read_frame() == (2, b"\x00\x00\x00\x02\x00\x00\x00")
        auth = native_scramble(PLAIN.password, client.greeting.nonce)
        client.send(frame(0, b"\x11" + PLAIN.user.encode() + b"\0" + bytes([len(auth)]) + auth + b"\0"
                          + struct.pack("<H", 45)))
        seq, switch = client.read_frame()
        assert (seq, switch) == (1, b"\xfemysql_native_password\0" + client.greeting.nonce + b"\0")
        client.send(frame(2, native_scramble(PLAIN.password, client.greeting.nonce)))
        assert client.read_frame() == (3, b"\x00\x00\x00\x02\x00\x00\x00")


def test_a_client_without_plugin_auth_logs_in_on_a_parked_connection_as_at_connect(proxy: ProxyThread) -> None:
    flags = DEFAULT_FLAGS & ~Capability.PLUGIN_AUTH
    with RawClient(proxy.port) as client:
        client.send(frame(1, client.handshake_response(NATIVE.user, NATIVE.password, flags=flags)))
        seq, ok = client.read_frame()
        assert (seq, ok[:1]) == (2, b"\x00"), ok  # a fresh connection: OK at once
        first_id = client.greeting.connection_id
        client.send(frame(0, b"\x01"))  # COM_QUIT
        assert client.closed_by_peer()
    parked_after(proxy, 1)
    with RawClient(proxy.port) as client:
        assert client.greeting.connection_id == first_id
        client.send(frame(1, client.handshake_response(SECOND.user, SECOND.password, flags=flags)))
        seq, answer = client.read_frame()
        assert (seq, answer[:1]) == (2, b"\x00"), answer  # what a client without CLIENT_PLUGIN_AUTH can read
        client.send(frame(0, b"\x03SELECT CURRENT_USER()"))
        result = b"".join(client.read_frame()[1] for _ in range(5))  # count, column, EOF, row, EOF
        assert f"{SECOND.user}@%".encode() in result
        client.send(frame(0, b"\x01"))
        assert client.closed_by_peer()
    parked_after(proxy, 2)
    with RawClient(proxy.port) as client:  # a wrong password: the server's ERR, as at connect
        assert client.greeting.connection_id == first_id
        client.send(frame(1, client.handshake_response(SECOND.user, "wrong", flags=flags)))
        seq, answer = client.read_frame()
        assert (seq, answer[:3]) == (2, b"\xff\x15\x04"), answer  # 1045
        assert client.closed_by_peer()
