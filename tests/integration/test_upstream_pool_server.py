"""The upstream pool and what the server does to parked connections: wait_timeout, KILL, a restart; the
MySQL 8 peer's logins on parked connections (caching_sha2 fast and full, sha256_password); and a pool in
each of two worker processes.

The wait_timeout, KILL and restart tests run against a MariaDB of their own (started once for this
module): they change its global settings, kill its threads and restart it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections import Counter
from typing import Any, Callable, Iterator

import pymysql
import pytest

from tests.conftest import NATIVE, PLAIN, SECOND, mariadb_with_accounts
from tests.integration.test_mysql8_auth import (
    ALL,
    SHA2,
    SHA256,
    server_context,
    check_session,
    peer_rsa_pem,  # noqa: F401 - a fixture
)
from tests.integration.test_mysql8_auth import connect as peer_client
from tests.integration.test_upstream_pool import connect, one, pooled_proxy
from tests.integration.test_workers import running, scrape, served_by_worker
from tests.integration.test_workers import metric as sample
from tests.support.mysql8_peer import PeerAccount, PeerThread
from tests.support.faults import TO_SERVER, Fault, FaultRelay
from tests.support.pki import TestPki
from tests.support.rawclient import RawClient, frame
from tests.support.proxy import ProxyThread, make_route, metric_value, shared_auth_key, wait_for
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def own_mariadb(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """A server for this module only: its global settings change, its threads are killed, it restarts."""
    with mariadb_with_accounts(tmp_path_factory.mktemp("mariadb-pool"), pki) as server:
        yield server


@pytest.fixture
def proxy(own_mariadb: MariaDBServer, pki: TestPki, event_loop_name: str) -> Iterator[ProxyThread]:
    with pooled_proxy(own_mariadb, pki, event_loop=event_loop_name, size=3) as running_proxy:
        yield running_proxy


def event(proxy: ProxyThread, outcome: str, route: str = "pool") -> float:
    return metric_value(proxy, "tlsproxy_upstream_pool_events_total", route=route, outcome=outcome)


def idle_gauge(proxy: ProxyThread, route: str = "pool") -> float:
    return metric_value(proxy, "tlsproxy_upstream_pool_idle", route=route)


def quit_and_park(proxy: ProxyThread, parked_before: float) -> int:
    """A NATIVE client that quits; once its connection is parked, its id."""
    with connect(proxy.port) as client:
        connection_id = int(one(client, "SELECT CONNECTION_ID()"))
    assert wait_for(lambda: event(proxy, "parked") == parked_before + 1, 5)
    return connection_id


@pytest.fixture
def pool_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="tlsproxy.upstream_pool")
    return caplog


def drop_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [re.sub(r"^route \S+: pooled upstream connection closed: ", "", record.getMessage())
            for record in caplog.records if record.name == "tlsproxy.upstream_pool"]


def dropped_and_replaced(proxy: ProxyThread, caplog: pytest.LogCaptureFixture, parked_id: int) -> None:
    """The parked connection is gone, seen as the server's close; the next client logs in on a fresh one."""
    assert idle_gauge(proxy) == 0
    assert drop_reasons(caplog) == ["closed_by_server (the server closed the connection)"]
    with connect(proxy.port, SECOND) as next_client:
        assert one(next_client, "SELECT CURRENT_USER()") == f"{SECOND.user}@%"
        assert one(next_client, "SELECT CONNECTION_ID()") != parked_id
    assert event(proxy, "reused") == 0


# ---- wait_timeout ----------------------------------------------------------------------------------------


def test_parked_connections_dropped_for_wait_timeout_go_without_a_client_error(
        proxy: ProxyThread, own_mariadb: MariaDBServer, pool_log: pytest.LogCaptureFixture) -> None:
    """The client connects while wait_timeout is the default; it is lowered to 1 s before the client
    quits: the reset at park sets the session's wait_timeout from the global one again (PROTOCOL.md §6.1),
    so the parked connection times out 1 s later, and the server closes it."""
    (original,), = own_mariadb.sql("SELECT @@global.wait_timeout")
    client = connect(proxy.port)
    try:
        parked_id = int(one(client, "SELECT CONNECTION_ID()"))
        own_mariadb.sql("SET GLOBAL wait_timeout = 1")
        assert one(client, "SELECT @@session.wait_timeout") == int(original)
        client.close()
        assert wait_for(lambda: event(proxy, "parked") == 1, 5)
        parked = time.monotonic()
        assert wait_for(lambda: event(proxy, "closed_by_server") == 1, 10)
        waited = time.monotonic() - parked
    finally:
        own_mariadb.sql(f"SET GLOBAL wait_timeout = {int(original)}")
    assert 0.8 < waited < 3.0, waited
    # MariaDB 10.11 sends no packet first (MySQL 8.0.24+ would: ERR 4031): the connection just closes.
    dropped_and_replaced(proxy, pool_log, parked_id)


# ---- KILL ------------------------------------------------------------------------------------------------


def test_kill_of_a_parked_connection_drops_it_at_once(
        proxy: ProxyThread, own_mariadb: MariaDBServer, pool_log: pytest.LogCaptureFixture) -> None:
    parked_id = quit_and_park(proxy, 0)
    assert idle_gauge(proxy) == 1
    killed = time.monotonic()
    own_mariadb.sql(f"KILL {parked_id}")
    assert wait_for(lambda: event(proxy, "closed_by_server") == 1, 5)
    assert time.monotonic() - killed < 1.0
    dropped_and_replaced(proxy, pool_log, parked_id)


def test_kill_of_a_parked_connection_while_a_client_logs_in_on_it_costs_the_client_nothing(
        own_mariadb: MariaDBServer, pki: TestPki, event_loop_name: str) -> None:
    """The client has the parked connection's greeting and has answered it; the proxy's COM_CHANGE_USER
    is held up on the way (a relay delays it 1 s) while the server kills the connection: the proxy sees
    the close before any answer and logs the client in on a fresh connection (an AuthSwitchRequest with
    that connection's nonce), the client none the wiser."""
    with FaultRelay(own_mariadb.port) as relay:
        route = make_route(relay.port, ca_file=pki.ca, name="pool")
        with ProxyThread(dataclasses.replace(route, upstream_pool=2), event_loop=event_loop_name) as proxy:
            parked_id = quit_and_park(proxy, 0)
            relay.links[-1].apply(Fault("delay", direction=TO_SERVER, delay=1.0))
            with RawClient(proxy.port) as client:
                assert client.greeting.connection_id == parked_id
                client.send(frame(1, client.handshake_response(NATIVE.user, NATIVE.password)))
                own_mariadb.sql(f"KILL {parked_id}")
                seq, switch = client.read_frame()
                assert seq == 2 and switch.startswith(b"\xfemysql_native_password\0"), switch
                assert switch[len(b"\xfemysql_native_password\0"):].rstrip(b"\0") != client.greeting.nonce
                client.send(frame(3, client.auth_switch_answer(switch, NATIVE.password)))
                seq, ok = client.read_frame()
                assert (seq, ok[:1]) == (4, b"\x00"), ok
                client.send(frame(0, b"\x03SELECT CONNECTION_ID()"))
                assert client.read_frame()[1] == b"\x01"  # one column
                client.read_frame()  # its definition
                client.read_frame()  # EOF
                row = client.read_frame()[1]
                assert int(row[1:1 + row[0]]) != parked_id
            assert relay.links[0].triggered.is_set()
            assert event(proxy, "closed_by_server") == 1 and event(proxy, "reused") == 0


def test_kill_of_a_parked_connection_after_a_client_got_its_greeting_costs_the_client_nothing(
        proxy: ProxyThread, own_mariadb: MariaDBServer) -> None:
    """The server closes the connection between its greeting reaching the client and the client's answer:
    the answer asks for another upstream, and the client logs in there."""
    parked_id = quit_and_park(proxy, 0)
    with RawClient(proxy.port) as client:
        assert client.greeting.connection_id == parked_id
        own_mariadb.sql(f"KILL {parked_id}")
        assert wait_for(lambda: gone(own_mariadb, parked_id), 5)
        client.send(frame(1, client.handshake_response(SECOND.user, SECOND.password)))
        seq, switch = client.read_frame()
        assert seq == 2 and switch.startswith(b"\xfemysql_native_password\0"), switch  # the fresh nonce
        client.send(frame(3, client.auth_switch_answer(switch, SECOND.password)))
        seq, ok = client.read_frame()
        assert (seq, ok[:1]) == (4, b"\x00"), ok
    assert event(proxy, "closed_by_server") == 1 and event(proxy, "reused") == 0


def test_kill_of_a_reused_connection_under_a_client_is_an_error_for_that_client_only(
        proxy: ProxyThread, own_mariadb: MariaDBServer) -> None:
    parked_id = quit_and_park(proxy, 0)
    client = connect(proxy.port, SECOND)
    try:
        assert one(client, "SELECT CONNECTION_ID()") == parked_id
        own_mariadb.sql(f"KILL {parked_id}")
        with pytest.raises(pymysql.err.OperationalError) as lost:
            one(client, "SELECT 1")
        # as without a pool (the same straight to the server): MariaDB closes a killed connection without
        # a packet, and the client's next query finds it gone
        assert lost.value.args == (2013, "Lost connection to MySQL server during query")
    finally:
        client.close()
    assert wait_for(lambda: proxy.active_connections() == 0, 5)
    assert event(proxy, "parked") == 1 and idle_gauge(proxy) == 0  # not parked again
    with connect(proxy.port) as next_client:
        assert one(next_client, "SELECT CURRENT_USER()") == f"{NATIVE.user}@%"
        assert one(next_client, "SELECT CONNECTION_ID()") != parked_id


# ---- the pool's own closes: COM_QUIT first ---------------------------------------------------------------


def aborted(server: MariaDBServer, connection_id: int) -> bool:
    """Whether the server logged this connection as aborted: ended without COM_QUIT (log_warnings 2,
    10.11's default, logs each one with its id; the global Aborted_clients counter would also count
    other tests' connections)."""
    log = server.error_log.read_text(encoding="utf-8", errors="replace")
    return f"Aborted connection {connection_id} to db" in log


def gone(server: MariaDBServer, connection_id: int) -> bool:
    return not server.sql(f"SELECT ID FROM information_schema.PROCESSLIST WHERE ID = {connection_id}")


def test_the_control_a_client_gone_without_com_quit_is_an_aborted_client(own_mariadb: MariaDBServer) -> None:
    with RawClient(own_mariadb.port) as client:  # PLAIN needs no TLS
        client.send(frame(1, client.handshake_response(PLAIN.user, PLAIN.password)))
        assert client.read_frame()[1][:1] == b"\x00"
        connection_id = client.greeting.connection_id
    assert wait_for(lambda: gone(own_mariadb, connection_id), 5)
    assert wait_for(lambda: aborted(own_mariadb, connection_id), 5)


def test_an_expired_parked_connection_quits_politely(own_mariadb: MariaDBServer, pki: TestPki,
                                                     event_loop_name: str) -> None:
    with pooled_proxy(own_mariadb, pki, event_loop=event_loop_name, idle_timeout=0.3) as proxy:
        parked_id = quit_and_park(proxy, 0)
        assert wait_for(lambda: event(proxy, "expired") == 1, 5) and idle_gauge(proxy) == 0
        assert wait_for(lambda: gone(own_mariadb, parked_id), 5)
        assert not aborted(own_mariadb, parked_id)  # COM_QUIT, then the TLS close


def test_a_proxy_shutdown_lets_its_parked_connections_quit(own_mariadb: MariaDBServer, pki: TestPki,
                                                          event_loop_name: str) -> None:
    with pooled_proxy(own_mariadb, pki, event_loop=event_loop_name) as proxy:
        parked = [quit_and_park(proxy, count) for count in range(2)]
    assert all(wait_for(lambda: gone(own_mariadb, connection_id), 5) for connection_id in parked)
    assert not any(aborted(own_mariadb, connection_id) for connection_id in parked)


def test_a_full_pool_closes_the_connections_it_has_no_room_for(proxy: ProxyThread, own_mariadb: MariaDBServer) -> None:
    clients = [connect(proxy.port) for _ in range(5)]  # at the same time: five server connections
    ids = [one(client, "SELECT CONNECTION_ID()") for client in clients]
    for client in clients:
        client.close()
    assert wait_for(lambda: event(proxy, "parked") == 3 and event(proxy, "full") == 2, 5)
    assert idle_gauge(proxy) == 3
    assert wait_for(lambda: sum(gone(own_mariadb, connection_id) for connection_id in ids) == 2, 5)
    assert not any(aborted(own_mariadb, connection_id) for connection_id in ids)  # the client's COM_QUIT went up


def test_a_tls_reload_closes_the_parked_connections_and_parks_nothing_of_the_old_settings(
        proxy: ProxyThread, own_mariadb: MariaDBServer) -> None:
    held = connect(proxy.port)  # logged in under the old TLS context, still there at the reload
    held_id = one(held, "SELECT CONNECTION_ID()")
    parked_id = quit_and_park(proxy, 0)
    assert proxy.call(lambda: proxy.proxy.reload_tls("test"))  # type: ignore[union-attr]
    assert wait_for(lambda: gone(own_mariadb, parked_id), 5) and idle_gauge(proxy) == 0
    held.close()  # its upstream was verified under the old settings: not parked in the new pool
    assert wait_for(lambda: gone(own_mariadb, held_id), 5)
    assert idle_gauge(proxy) == 0 and event(proxy, "parked") == 1
    assert not aborted(own_mariadb, parked_id) and not aborted(own_mariadb, held_id)  # COM_QUIT, both
    fresh_id = quit_and_park(proxy, 1)  # the new pool parks
    assert fresh_id not in (held_id, parked_id)


# ---- a restart -------------------------------------------------------------------------------------------


def test_a_server_restart_with_a_full_pool_costs_the_next_clients_nothing(
        proxy: ProxyThread, own_mariadb: MariaDBServer) -> None:
    clients = [connect(proxy.port) for _ in range(3)]
    for client in clients:
        client.close()
    assert wait_for(lambda: idle_gauge(proxy) == 3, 5) and event(proxy, "parked") == 3
    own_mariadb.restart()
    assert wait_for(lambda: event(proxy, "closed_by_server") == 3, 5)  # gone during the shutdown already
    assert idle_gauge(proxy) == 0
    for count, account in enumerate((NATIVE, SECOND, NATIVE), start=1):
        with connect(proxy.port, account) as client:
            assert one(client, "SELECT CURRENT_USER()") == f"{account.user}@%"
        assert wait_for(lambda: event(proxy, "parked") == 3 + count, 5)
    assert event(proxy, "reused") == 2  # the first after the restart connected afresh, the others reused it
    assert event(proxy, "closed_by_server") == 3 and idle_gauge(proxy) == 1


# ---- the MySQL 8 peer ------------------------------------------------------------------------------------


@pytest.fixture
def peer_stack(pki: TestPki, peer_rsa_pem: bytes, event_loop_name: str  # noqa: F811 - the fixture
               ) -> Iterator[tuple[PeerThread, ProxyThread]]:
    peer = PeerThread(accounts=[PeerAccount(a.user, a.password, a.plugin, a.require_ssl)  # type: ignore[arg-type]
                                for a in ALL], ssl_context=server_context(pki), rsa_private_key_pem=peer_rsa_pem)
    peer.start()
    try:
        route = make_route(peer.port, ca_file=pki.ca, name="pool")
        with ProxyThread(dataclasses.replace(route, upstream_pool=2), event_loop=event_loop_name) as proxy:
            yield peer, proxy
    finally:
        peer.stop()
    assert peer.peer.errors == [], f"the peer raised: {peer.peer.errors!r}"
    # behind the proxy the upstream leg is TLS: the peer never runs its RSA branch
    assert not {"public_key_request", "full_auth_rsa", "sha256_rsa", "rsa_bad_packet"} & set(peer.events)


def peer_session(kind: str, proxy: ProxyThread, account: Any, **extra: Any) -> tuple[int, Any]:
    """Log in with `kind`, check the user and TLS, read the connection id, quit; (id, the connection)."""
    connection = peer_client(kind, proxy.port, account, **extra)
    try:
        check_session(connection, account)
        cursor = connection.cursor()
        cursor.execute("SELECT CONNECTION_ID()")
        connection_id = int(cursor.fetchone()[0])
        cursor.close()
        return connection_id, connection
    finally:
        connection.close()


def on_parked(peer: PeerThread, proxy: ProxyThread, kind: str, account: Any, *, flush: bool,
              parked_before: int) -> tuple[list[str], Any]:
    """A `kind` client leaves a parked connection; (optionally with the peer's caching_sha2 cache emptied)
    a second one logs in on it as `account`. The peer's events of the second login, and its connection."""
    first_id, _ = peer_session(kind, proxy, account)
    assert wait_for(lambda: event(proxy, "parked") == parked_before + 1, 5)
    assert peer.events[-2:] == ["authenticated", "reset_connection"]  # the reset at park
    if flush:
        peer.flush_cache()
    mark = len(peer.events)
    second_id, connection = peer_session(kind, proxy, account)
    assert second_id == first_id
    assert event(proxy, "reused") >= 1
    assert wait_for(lambda: event(proxy, "parked") == parked_before + 2, 5)
    return peer.events[mark:], connection


@pytest.mark.parametrize("kind", ["pymysql", "connector-pure", "connector-cext"])
def test_peer_caching_sha2_fast_auth_on_a_parked_connection(
        peer_stack: tuple[PeerThread, ProxyThread], kind: str) -> None:
    peer, proxy = peer_stack
    peer_session("pymysql", proxy, SHA2)  # a full authentication fills the peer's cache
    assert wait_for(lambda: event(proxy, "parked") == 1, 5)
    events, _ = on_parked(peer, proxy, kind, SHA2, flush=False, parked_before=1)
    assert events == ["change_user", "auth_switch", "fast_auth", "authenticated", "reset_connection"]


def test_peer_caching_sha2_full_auth_on_a_parked_connection_pymysql_gets_the_proxys_key(
        peer_stack: tuple[PeerThread, ProxyThread]) -> None:
    peer, proxy = peer_stack
    events, connection = on_parked(peer, proxy, "pymysql", SHA2, flush=True, parked_before=0)
    assert events == ["change_user", "auth_switch", "full_auth_tls_cleartext", "authenticated", "reset_connection"]
    assert connection.server_public_key == shared_auth_key().public_pem  # the proxy's RSA role, as at connect


def test_peer_caching_sha2_full_auth_on_a_parked_connection_connector_pure_cleartext(
        peer_stack: tuple[PeerThread, ProxyThread]) -> None:
    peer, proxy = peer_stack
    events, _ = on_parked(peer, proxy, "connector-pure", SHA2, flush=True, parked_before=0)
    assert events == ["change_user", "auth_switch", "full_auth_tls_cleartext", "authenticated", "reset_connection"]


@pytest.mark.parametrize("kind", ["pymysql", "connector-cext"])
def test_peer_sha256_password_on_a_parked_connection(peer_stack: tuple[PeerThread, ProxyThread], kind: str) -> None:
    """sha256_password: PyMySQL and libmysqlclient ask for the public key (0x01) and get the proxy's."""
    peer, proxy = peer_stack
    events, connection = on_parked(peer, proxy, kind, SHA256, flush=False, parked_before=0)
    assert events == ["change_user", "auth_switch", "sha256_tls_cleartext", "authenticated", "reset_connection"]
    if kind == "pymysql":
        assert connection.server_public_key == shared_auth_key().public_pem


def test_peer_wrong_password_on_a_parked_connection_is_1045_and_the_connection_is_closed(
        peer_stack: tuple[PeerThread, ProxyThread]) -> None:
    """MySQL 8 closes the connection after a failed COM_CHANGE_USER (thd->killed = KILL_CONNECTION), as
    the peer does; the proxy counts it denied and parks nothing."""
    peer, proxy = peer_stack
    first_id, _ = peer_session("pymysql", proxy, SHA2)
    assert wait_for(lambda: event(proxy, "parked") == 1, 5)
    mark = len(peer.events)
    with pytest.raises(pymysql.err.OperationalError) as denied:
        peer_client("pymysql", proxy.port, SHA2, password="Wrong-pw-0000")
    assert denied.value.args[0] == 1045
    assert peer.events[mark:] == ["change_user", "auth_switch", "full_auth_tls_cleartext", "denied"]
    assert event(proxy, "denied") == 1 and idle_gauge(proxy) == 0
    second_id, _ = peer_session("pymysql", proxy, SHA2)
    assert second_id != first_id


# ---- workers ---------------------------------------------------------------------------------------------


_ENDED = re.compile(r"\[worker (\d+) pid \d+\]: conn=\d+ .*outcome=(\S+) .*reused=(\S+) parked=(\S+)")


def parked_total(body: str) -> float:
    """0 until the first reset's OK (the counter has no sample before its first event)."""
    line = 'tlsproxy_upstream_pool_events_total{outcome="parked",route="default"}'
    return sample(body, line) if line in body else 0.0


def test_each_worker_parks_its_own_connections(mariadb: MariaDBServer, pki: TestPki) -> None:
    args = ["--workers", "2", "--listen", "127.0.0.1:0", "--upstream", f"localhost:{mariadb.port}",
            "--ssl-ca", str(pki.ca), "--upstream-pool", "2", "--shutdown-grace", "3"]
    clients = 16
    with running(args) as cli:
        ids: list[int] = []
        for count in range(1, clients + 1):
            with connect(cli.port(), NATIVE if count % 2 else SECOND) as client:
                ids.append(int(one(client, "SELECT CONNECTION_ID()")))
            parked: Callable[[], bool] = lambda: parked_total(scrape(cli)) == count  # noqa: E731
            assert wait_for(parked, 10), parked_total(scrape(cli))
        served_by_worker(cli, clients)
        ends = [match.groups() for line in list(cli.output) if (match := _ENDED.search(line))]
        assert len(ends) == clients and {outcome for _, outcome, _, _ in ends} == {"ok"}
        per_worker = Counter(worker for worker, _, _, _ in ends)
        reused = Counter(worker for worker, _, was_reused, _ in ends if was_reused == "yes")
        assert set(per_worker) == {"0", "1"}, per_worker  # both served
        # each worker connected once, and every later client of that worker reused its parked connection
        assert reused == {worker: served - 1 for worker, served in per_worker.items()}
        assert all(was_parked == "yes" for _, _, _, was_parked in ends)
        assert len(set(ids)) == 2  # one server connection per worker, all along
        body = scrape(cli)
        assert sample(body, 'tlsproxy_upstream_pool_events_total{outcome="parked",route="default"}') == clients
        assert sample(body, 'tlsproxy_upstream_pool_events_total{outcome="reused",route="default"}') == clients - 2
        assert sample(body, 'tlsproxy_upstream_pool_idle{route="default"}') == 2  # one in each worker

