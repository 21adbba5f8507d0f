"""The upstream pool against the real MariaDB: a client that quits leaves its upstream connection reset
and parked, the next client logs in on it with its own credentials (COM_CHANGE_USER), and nothing of
one client's session reaches the next.

Reuse is proved from the server's side: the same CONNECTION_ID() for two clients one after the other.
A third connection, straight to the server (not through the pool), watches locks and transactions.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from typing import Any, Iterator

import pymysql
import pytest

from tests.conftest import NATIVE, PLAIN, SECOND, TEST_DATABASE, Account
from tests.support.faults import TO_SERVER, Fault, FaultRelay
from tests.support.pki import TestPki
from tests.support.proxy import ProxyThread, make_route, metric_value, wait_for
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = pytest.mark.integration


def pool_event(proxy: ProxyThread, outcome: str) -> float:
    return metric_value(proxy, "tlsproxy_upstream_pool_events_total", route="pool", outcome=outcome)


def idle(proxy: ProxyThread) -> int:
    return proxy.call(lambda: len(proxy.proxy.listeners[0].runtime.upstream_pool))  # type: ignore[union-attr]


def resetting(proxy: ProxyThread) -> int:
    return proxy.call(lambda: proxy.proxy.listeners[0].runtime.upstream_pool.resetting)  # type: ignore[union-attr]


def pooled_proxy(mariadb: MariaDBServer, pki: TestPki, *, event_loop: str = "uvloop", size: int = 2,
                 idle_timeout: float = 30.0) -> ProxyThread:
    route = make_route(mariadb.port, ca_file=pki.ca, name="pool")
    return ProxyThread(dataclasses.replace(route, upstream_pool=size, upstream_pool_idle_timeout=idle_timeout),
                       event_loop=event_loop)


def connect(port: int, account: Account = NATIVE, **options: Any) -> pymysql.connections.Connection:
    return pymysql.connect(host="127.0.0.1", port=port, user=account.user, password=account.password,
                           ssl_disabled=True, connect_timeout=10, **options)


def one(connection: pymysql.connections.Connection, sql: str) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        row = cursor.fetchone()
        return None if row is None else row[0]


@pytest.fixture
def proxy(mariadb: MariaDBServer, pki: TestPki, event_loop_name: str) -> Iterator[ProxyThread]:
    with pooled_proxy(mariadb, pki, event_loop=event_loop_name) as running:
        yield running


def test_the_next_client_logs_in_on_the_parked_connection(proxy: ProxyThread) -> None:
    with connect(proxy.port) as first:
        first_id = one(first, "SELECT CONNECTION_ID()")
    assert wait_for(lambda: idle(proxy) == 1, 5)
    assert pool_event(proxy, "parked") == 1
    with connect(proxy.port, SECOND) as second:
        assert one(second, "SELECT CONNECTION_ID()") == first_id
        assert one(second, "SELECT CURRENT_USER()") == f"{SECOND.user}@%"
        assert one(second, "SELECT @@ssl_cipher IS NOT NULL OR 1") == 1
        with second.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
            assert cursor.fetchone()[1].startswith("TLSv1.")
    assert pool_event(proxy, "reused") == 1
    assert wait_for(lambda: pool_event(proxy, "parked") == 2, 5)


def direct(mariadb: MariaDBServer) -> pymysql.connections.Connection:
    """A watcher straight to the server, past the proxy and its pool (PLAIN needs no TLS)."""
    return pymysql.connect(host="127.0.0.1", port=mariadb.port, user=PLAIN.user, password=PLAIN.password,
                           database=TEST_DATABASE, connect_timeout=10, autocommit=True)


def test_a_quitting_clients_locks_and_transaction_are_gone_before_the_next_client(
        proxy: ProxyThread, mariadb: MariaDBServer) -> None:
    lock_name = "tlsproxy_pool_lock"
    with direct(mariadb) as watcher, watcher.cursor() as watch:
        watch.execute("CREATE TABLE IF NOT EXISTS pool_isolation (v INT)")
        watch.execute("DELETE FROM pool_isolation")
        watch.execute("CREATE TABLE IF NOT EXISTS pool_locked (v INT)")
        watch.execute("SET SESSION lock_wait_timeout = 2")
        with connect(proxy.port, database=TEST_DATABASE) as a:
            a_id = one(a, "SELECT CONNECTION_ID()")
            with a.cursor() as cursor:
                cursor.execute("SELECT GET_LOCK(%s, 0)", (lock_name,))
                assert cursor.fetchone()[0] == 1
                cursor.execute("START TRANSACTION")
                cursor.execute("INSERT INTO pool_isolation VALUES (1)")
            watch.execute("SELECT IS_FREE_LOCK(%s)", (lock_name,))
            assert watch.fetchone()[0] == 0  # held while A is there
        assert wait_for(lambda: idle(proxy) == 1, 5)  # A quit; the reset's OK came; nobody else connected
        watch.execute("SELECT IS_FREE_LOCK(%s)", (lock_name,))
        assert watch.fetchone()[0] == 1
        watch.execute("SELECT COUNT(*) FROM pool_isolation")
        assert watch.fetchone()[0] == 0  # A's open transaction was rolled back
        with connect(proxy.port, database=TEST_DATABASE) as a2:
            assert one(a2, "SELECT CONNECTION_ID()") == a_id
            with a2.cursor() as cursor:
                cursor.execute("LOCK TABLES pool_locked WRITE")
        assert wait_for(lambda: idle(proxy) == 1, 5)
        watch.execute("INSERT INTO pool_locked VALUES (1)")  # would wait 2 s and fail if still locked


def test_nothing_of_a_session_reaches_the_next_client(proxy: ProxyThread) -> None:
    with connect(proxy.port, database=TEST_DATABASE, autocommit=True) as a:
        a_id = one(a, "SELECT CONNECTION_ID()")
        with a.cursor() as cursor:
            cursor.execute("SET @secret = 'from A'")
            cursor.execute("CREATE TEMPORARY TABLE a_temp (v INT)")
            cursor.execute("PREPARE a_stmt FROM 'SELECT 1'")
            cursor.execute("SET SESSION sql_mode = 'ANSI_QUOTES', SESSION time_zone = '+05:00'")
            cursor.execute("SET NAMES latin1")
            cursor.execute("SET autocommit = 0")
    assert wait_for(lambda: idle(proxy) == 1, 5)
    # B: another user (REQUIRE SSL), no database; PyMySQL's autocommit=None leaves the session's own.
    with connect(proxy.port, SECOND, autocommit=None) as b:
        assert one(b, "SELECT CONNECTION_ID()") == a_id
        assert one(b, "SELECT CURRENT_USER()") == f"{SECOND.user}@%"
        assert one(b, "SELECT @secret") is None
        assert one(b, "SELECT @@session.sql_mode") != "ANSI_QUOTES"
        assert one(b, "SELECT @@session.time_zone") == "SYSTEM"
        assert one(b, "SELECT @@session.autocommit") == 1
        assert one(b, "SELECT @@character_set_client") == "utf8mb4"
        assert one(b, "SELECT @@collation_connection") == "utf8mb4_general_ci"
        assert one(b, "SELECT DATABASE()") is None
        with b.cursor() as cursor:
            with pytest.raises(pymysql.err.OperationalError, match="Unknown prepared statement"):
                cursor.execute("EXECUTE a_stmt")
            with pytest.raises(pymysql.err.ProgrammingError, match="doesn't exist"):
                cursor.execute(f"SELECT * FROM {TEST_DATABASE}.a_temp")


def test_a_wrong_password_gets_the_servers_error_and_the_connection_is_not_parked(proxy: ProxyThread) -> None:
    with connect(proxy.port) as first:
        first_id = one(first, "SELECT CONNECTION_ID()")
    assert wait_for(lambda: idle(proxy) == 1, 5)
    with pytest.raises(pymysql.err.OperationalError) as refused:
        connect(proxy.port, Account(NATIVE.user, "wrong"))
    assert refused.value.args[0] == 1045
    assert pool_event(proxy, "denied") == 1
    assert wait_for(lambda: resetting(proxy) == 0, 5)  # no reset under way either...
    assert idle(proxy) == 0 and pool_event(proxy, "parked") == 1  # ... closed, never parked again
    with connect(proxy.port, SECOND) as good:
        assert one(good, "SELECT CURRENT_USER()") == f"{SECOND.user}@%"
        assert one(good, "SELECT CONNECTION_ID()") != first_id


def test_a_client_that_leaves_mid_result_is_not_parked(proxy: ProxyThread) -> None:
    client = connect(proxy.port)
    with client.cursor() as cursor:
        cursor.execute("SELECT 1")
    query = b"\x03SELECT SLEEP(0.3), REPEAT('x', 10)"
    client._write_bytes(len(query).to_bytes(3, "little") + b"\x00" + query)  # sent, never read
    client._sock.shutdown(socket.SHUT_RDWR)  # PyMySQL's reader file keeps the descriptor open past close()
    client._sock.close()
    time.sleep(0.5)
    assert idle(proxy) == 0
    assert pool_event(proxy, "in_flight") == 1


def test_a_parked_connection_dropped_on_the_way_is_replaced_without_an_error(
        mariadb: MariaDBServer, pki: TestPki, event_loop_name: str) -> None:
    """A firewall or NAT that forgot the parked connection: it answers the proxy's next write with an RST.
    The client that got that connection's greeting still logs in, on a fresh upstream."""
    with FaultRelay(mariadb.port) as relay:
        route = make_route(relay.port, ca_file=pki.ca, name="pool")
        with ProxyThread(dataclasses.replace(route, upstream_pool=2), event_loop=event_loop_name) as proxy:
            with connect(proxy.port) as first:
                first_id = one(first, "SELECT CONNECTION_ID()")
            assert wait_for(lambda: idle(proxy) == 1, 5)
            relay.links[-1].apply(Fault("reset", direction=TO_SERVER))  # RST at the proxy's next write
            with connect(proxy.port, SECOND) as second:
                assert one(second, "SELECT CURRENT_USER()") == f"{SECOND.user}@%"
                assert one(second, "SELECT CONNECTION_ID()") != first_id
            assert relay.links[0].triggered.is_set()
            assert pool_event(proxy, "closed_by_server") == 1
            assert pool_event(proxy, "reused") == 0


def status(mariadb: MariaDBServer, name: str) -> int:
    return int(mariadb.sql(f"SHOW GLOBAL STATUS LIKE '{name}'")[0][1])


def process(mariadb: MariaDBServer, connection_id: int) -> list[str]:
    return mariadb.sql(f"SELECT USER, COMMAND FROM information_schema.PROCESSLIST WHERE ID = {connection_id}")[0]


def test_what_the_server_sees_of_the_pool(proxy: ProxyThread, mariadb: MariaDBServer) -> None:
    """For README's "Upstream pool": a reuse is a COM_CHANGE_USER, not a connection; a parked connection
    is still logged in as its last client's user (it counts toward that user's max_user_connections)."""
    with connect(proxy.port) as first:
        parked_id = one(first, "SELECT CONNECTION_ID()")
    assert wait_for(lambda: idle(proxy) == 1, 5)
    assert process(mariadb, parked_id) == [NATIVE.user, "Sleep"]
    before = status(mariadb, "Connections")
    with connect(proxy.port, SECOND) as second:
        assert one(second, "SELECT CONNECTION_ID()") == parked_id
    assert wait_for(lambda: idle(proxy) == 1, 5)
    # MariaDB 10.11 has no Com_change_user or Com_reset_connection counter; a reuse is not a connection
    # (the one more is the admin client of the next mariadb.sql call).
    assert status(mariadb, "Connections") == before + 1
    assert process(mariadb, parked_id) == [SECOND.user, "Sleep"]
