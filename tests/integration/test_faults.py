"""Faults on the upstream leg, between the proxy and the real MariaDB (tests/support/faults.py), and
the upstream itself going away (restart, SIGKILL, a switchover) or stopping to read, and clients
that vanish. In every case: the client gets a clean MySQL error within a bound (never a hang),
nothing acknowledged is lost, only the affected connection suffers (a bystander connection opened
before the fault still works, and so does a new one), and the log has no traceback."""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import pymysql
import pytest

from tests.conftest import NATIVE, PLAIN, TEST_DATABASE
from tests.support.faults import TO_CLIENT, TO_SERVER, Fault, FaultRelay
from tests.support.pki import TestPki
from tests.support.proxy import CliProxy, ProxyThread, make_route
from tlsproxy.config import Route, SslMode
from tlsproxy.demo.localdb import start_mariadb
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = pytest.mark.integration

BIG_RESULT = "SELECT seq, REPEAT('x', 1024) FROM seq_1_to_2048"  # about 2 MiB, many TLS records


def connect(port: int, account=NATIVE, **extra) -> pymysql.Connection:
    extra.setdefault("connect_timeout", 10)
    return pymysql.connect(host="127.0.0.1", port=port, user=account.user, password=account.password,
                           ssl_disabled=True, **extra)


def query_one(connection: pymysql.Connection, sql: str):  # type: ignore[no-untyped-def]
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def with_fields(route: Route, **changes) -> Route:
    return type(route)(**{**route.__dict__, **changes})


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition`; return how long it took, fail with `what` after `timeout`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} (not within {timeout:g}s)"
        time.sleep(0.05)
    return time.monotonic() - started


def send_query(sock: socket.socket, sql: bytes) -> None:
    """A COM_QUERY written straight to the socket (the client library then knows nothing of it)."""
    payload = b"\x03" + sql
    sock.sendall(len(payload).to_bytes(3, "little") + b"\x00" + payload)


def vanish(sock: socket.socket, *, rst: bool) -> None:
    """Close the client's socket for real (PyMySQL's reader holds a reference that would keep the
    descriptor open), with an RST if asked."""
    if rst:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    os.close(sock.detach())


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    bad = [record for record in caplog.records
           if record.exc_info or record.levelno >= logging.ERROR or "Traceback" in record.getMessage()]
    assert not bad, [f"{record.name}: {record.getMessage()}" for record in bad]


class Bystander:
    """A connection opened before the fault that keeps querying (every 0.1 s, in a thread) while it
    happens: it must never see an error, and never wait long for an answer."""

    def __init__(self, port: int) -> None:
        self.connection = connect(port, read_timeout=5)
        self.queries = 0
        self.slowest = 0.0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.1):
                started = time.monotonic()
                assert query_one(self.connection, f"SELECT {self.queries}") == self.queries
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.queries += 1
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def __enter__(self) -> "Bystander":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.connection.close()

    def check(self) -> None:
        """No error so far, no slow answer, and one more query answered from now on."""
        seen = self.queries
        wait_until(lambda: self.queries > seen or self.error is not None, 5, "the bystander stopped")
        assert self.error is None, f"the bystander suffered: {self.error!r}"
        assert self.slowest < 1.0, f"the bystander waited {self.slowest:.2f}s for an answer"


def assert_still_serving(proxy: ProxyThread, bystander: Bystander) -> None:
    """The bystander never saw a problem, a new connection works, and the proxy's session set
    drains to just the bystander."""
    bystander.check()
    with connect(proxy.port) as fresh:
        assert query_one(fresh, "SHOW SESSION STATUS LIKE 'Ssl_cipher'") == "Ssl_cipher"
        assert query_one(fresh, "SELECT 8") == 8
    wait_until(lambda: proxy.active_connections() == 1, 5, "the proxy kept a dead session")
    bystander.check()


def session_of(proxy: ProxyThread, connection: pymysql.Connection):  # type: ignore[no-untyped-def]
    """The proxy's Session serving this client connection."""
    host, port = connection._sock.getsockname()[:2]  # type: ignore[attr-defined]
    sessions = proxy.call(lambda: list(proxy.proxy.listeners[0].sessions))  # type: ignore[union-attr]
    (session,) = [s for s in sessions if s.client_address == f"{host}:{port}"]
    return session


def expect_client_error(action: Callable[[], object], within: float) -> tuple[pymysql.MySQLError, float]:
    started = time.monotonic()
    with pytest.raises(pymysql.MySQLError) as raised:
        action()
    elapsed = time.monotonic() - started
    assert elapsed < within, f"the client waited {elapsed:.1f}s for {raised.value!r}"
    return raised.value, elapsed


# ---- the fault relay ---------------------------------------------------------------------------------


@pytest.fixture
def relayed(mariadb: MariaDBServer, pki: TestPki,
            caplog: pytest.LogCaptureFixture) -> Iterator[tuple[FaultRelay, ProxyThread, Bystander]]:
    """proxy -> FaultRelay -> the real MariaDB (short handshake and idle timeouts), and a bystander."""
    caplog.set_level(logging.INFO)
    with FaultRelay(mariadb.port) as relay:
        route = make_route(relay.port, upstream_host="127.0.0.1", ca_file=pki.ca, server_name="localhost")
        route = with_fields(route, handshake_timeout=2.0, idle_timeout=1.5)
        with ProxyThread(route) as proxy, Bystander(proxy.port) as bystander:
            yield relay, proxy, bystander
    assert_no_traceback(caplog)


def test_delay_per_chunk_is_only_slow(relayed: tuple[FaultRelay, ProxyThread, Bystander]) -> None:
    """A slow link (50 ms per chunk, both ways) delays the answers but changes nothing in them."""
    relay, proxy, bystander = relayed
    relay.arm(Fault("delay", TO_CLIENT, delay=0.05))
    started = time.monotonic()
    with connect(proxy.port, database=TEST_DATABASE) as slow:
        relay.links[-1].apply(Fault("delay", TO_SERVER, delay=0.05))
        with slow.cursor() as cursor:
            cursor.execute(BIG_RESULT)
            rows = cursor.fetchall()
        assert len(rows) == 2048 and rows[-1] == (2048, "x" * 1024)
    assert relay.links[-1].triggered.is_set()
    assert time.monotonic() - started > 0.3
    assert_still_serving(proxy, bystander)


def test_delay_beyond_the_handshake_timeout_is_an_err(relayed: tuple[FaultRelay, ProxyThread, Bystander]) -> None:
    relay, proxy, bystander = relayed
    relay.arm(Fault("delay", TO_CLIENT, delay=3.0))  # the greeting arrives after the 2 s timeout
    error, _ = expect_client_error(lambda: connect(proxy.port), within=4.0)
    assert error.args[0] == 1159 and "handshake timed out after 2s (phase: greeting)" in error.args[1], error
    assert_still_serving(proxy, bystander)


@pytest.mark.parametrize("direction, after_bytes, phase", [
    (TO_CLIENT, 0, "greeting"),  # the greeting never arrives
    (TO_SERVER, 36, "tls_pending"),  # the SSLRequest passes, the ClientHello does not
])
def test_stall_during_the_handshake_is_an_err(relayed: tuple[FaultRelay, ProxyThread, Bystander], direction: str,
                                              after_bytes: int, phase: str) -> None:
    relay, proxy, bystander = relayed
    relay.arm(Fault("stall", direction, after_bytes=after_bytes))  # type: ignore[arg-type]
    error, _ = expect_client_error(lambda: connect(proxy.port), within=4.0)
    assert relay.links[-1].triggered.is_set()
    assert error.args == (1159, f"tlsproxy: handshake timed out after 2s (phase: {phase})"), error
    assert_still_serving(proxy, bystander)


def test_stall_while_relaying_ends_at_the_idle_timeout(relayed: tuple[FaultRelay, ProxyThread, Bystander]) -> None:
    """A server that goes silent mid-query (idle_timeout 1.5 s on this route): the client's query ends
    with an error once the proxy gives up, not never."""
    relay, proxy, bystander = relayed
    victim = connect(proxy.port, database=TEST_DATABASE)
    relay.links[-1].apply(Fault("stall", TO_CLIENT))
    error, _ = expect_client_error(lambda: query_one(victim, "SELECT 1"), within=5.0)
    assert error.args[0] == 2013, error
    assert_still_serving(proxy, bystander)


@pytest.mark.parametrize("during", ["handshake", "result"])
def test_reset_from_the_upstream(relayed: tuple[FaultRelay, ProxyThread, Bystander], during: str) -> None:
    relay, proxy, bystander = relayed
    if during == "handshake":
        relay.arm(Fault("reset", TO_SERVER, after_bytes=0))  # RST when the proxy sends its SSLRequest
        error, _ = expect_client_error(lambda: connect(proxy.port), within=2.0)
        # the RST lands before or during the TLS handshake, depending on timing
        assert error.args[0] == 1043 and error.args[1] in (
            "tlsproxy: lost the upstream connection during the handshake",
            "tlsproxy: upstream closed the connection during the TLS handshake"), error
    else:
        victim = connect(proxy.port, database=TEST_DATABASE)
        relay.links[-1].apply(Fault("reset", TO_CLIENT, after_bytes=256 * 1024))
        error, _ = expect_client_error(lambda: victim.cursor().execute(BIG_RESULT), within=2.0)
        assert error.args[0] == 2013, error
    assert relay.links[-1].triggered.is_set()
    assert_still_serving(proxy, bystander)


@pytest.mark.parametrize("during", ["handshake", "result"])
def test_truncated_tls_record(relayed: tuple[FaultRelay, ProxyThread, Bystander], during: str) -> None:
    """Half a TLS record, then EOF: an error naming TLS during the handshake, a lost connection while
    relaying (the partial record's bytes are never passed on as data)."""
    relay, proxy, bystander = relayed
    if during == "handshake":
        relay.arm(Fault("truncate", TO_CLIENT, after_bytes=0))  # half the ServerHello
        error, _ = expect_client_error(lambda: connect(proxy.port), within=2.0)
        assert error.args[0] == 1043 and "during the TLS handshake" in error.args[1], error
    else:
        relay.arm(Fault("truncate", TO_CLIENT, after_bytes=512 * 1024))
        victim = connect(proxy.port, database=TEST_DATABASE)
        error, _ = expect_client_error(lambda: victim.cursor().execute(BIG_RESULT), within=2.0)
        assert error.args[0] == 2013, error
    assert relay.links[-1].triggered.is_set()
    assert_still_serving(proxy, bystander)


def test_upstream_that_stops_reading_bounds_the_proxy_buffers(relayed: tuple[FaultRelay, ProxyThread, Bystander]) -> None:
    """Backpressure towards the client: the server side stops reading while the client keeps
    sending a 32 MiB query; the proxy pauses the client instead of buffering, and the client's
    write times out (its own clean error) after what the socket buffers hold."""
    relay, proxy, bystander = relayed
    victim = connect(proxy.port, database=TEST_DATABASE, write_timeout=1)
    link = relay.links[-1]
    before = link.forwarded[TO_SERVER]
    link.apply(Fault("stall", TO_SERVER))
    session = session_of(proxy, victim)
    held: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            held.append(proxy.call(lambda: session.upstream.get_write_buffer_size()
                                   + (session.client.get_write_buffer_size() if session.client else 0)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        error, _ = expect_client_error(
            lambda: victim.cursor().execute("SELECT LENGTH('" + "x" * (32 << 20) + "')"), within=8.0)
    finally:
        stop.set()
        watcher.join()
    assert error.args[0] in (2006, 2013), error
    assert link.triggered.is_set() and link.forwarded[TO_SERVER] == before
    assert held and max(held) < 4 << 20, f"the proxy buffered up to {max(held)} bytes"
    assert session.stats.bytes_client_to_server < 16 << 20, session.stats.bytes_client_to_server
    assert_still_serving(proxy, bystander)


# ---- clients that vanish, sockets half closed ---------------------------------------------------------


@pytest.fixture
def direct(mariadb: MariaDBServer, pki: TestPki,
           caplog: pytest.LogCaptureFixture) -> Iterator[tuple[ProxyThread, Bystander]]:
    """The proxy straight to the real MariaDB, and a bystander."""
    caplog.set_level(logging.INFO)
    with ProxyThread(make_route(mariadb.port, ca_file=pki.ca)) as proxy, Bystander(proxy.port) as bystander:
        yield proxy, bystander
    assert_no_traceback(caplog)


def server_has_connection(server: MariaDBServer, connection_id: int) -> bool:
    return bool(server.sql(f"SELECT ID FROM information_schema.PROCESSLIST WHERE ID = {connection_id}"))


@pytest.mark.parametrize("how", ["close", "rst"])
def test_client_vanishing_mid_result_frees_the_server_connection(
        mariadb: MariaDBServer, direct: tuple[ProxyThread, Bystander], how: str) -> None:
    """A client that goes away while a 1 GiB result streams: the proxy drops the upstream leg, so the
    server's connection ends at once (it is not left streaming the rest into the void), and the
    session leaves the proxy's set."""
    proxy, bystander = direct
    victim = connect(proxy.port, database=TEST_DATABASE)
    connection_id = query_one(victim, "SELECT CONNECTION_ID()")
    session = session_of(proxy, victim)
    sock: socket.socket = victim._sock  # type: ignore[attr-defined]
    send_query(sock, b"SELECT seq, REPEAT('x', 1048576) FROM seq_1_to_1024")
    received = 0
    while received < 4 << 20:  # the result is streaming
        received += len(sock.recv(1 << 20))
    vanish(sock, rst=how == "rst")
    wait_until(lambda: session.stats.outcome != "relayed", 5, "the proxy did not notice the client left")
    assert session.stats.closed_by == "client", session.stats
    assert session.stats.bytes_server_to_client < 256 << 20, "the proxy relayed on after the client left"
    wait_until(lambda: not server_has_connection(mariadb, connection_id), 2.0,
               "the server's connection outlived the client")
    assert_still_serving(proxy, bystander)


def test_server_closing_reaches_the_client_at_once(mariadb: MariaDBServer,
                                                   direct: tuple[ProxyThread, Bystander]) -> None:
    """The server ends a connection (KILL, as on a failover or wait_timeout): the idle client sees
    EOF within a second, its next query fails cleanly, and the session is gone."""
    proxy, bystander = direct
    victim = connect(proxy.port)
    connection_id = query_one(victim, "SELECT CONNECTION_ID()")
    sock: socket.socket = victim._sock  # type: ignore[attr-defined]
    mariadb.sql(f"KILL CONNECTION {connection_id}")
    sock.settimeout(2)
    started = time.monotonic()
    tail = bytearray()
    while chunk := sock.recv(65536):
        tail += chunk
    assert time.monotonic() - started < 1.5
    assert not tail or tail[4] == 0xFF, bytes(tail)  # at most the server's own ERR packet
    expect_client_error(lambda: query_one(victim, "SELECT 1"), within=1.0)
    assert_still_serving(proxy, bystander)


def test_half_close_with_a_plaintext_upstream(mariadb: MariaDBServer, caplog: pytest.LogCaptureFixture) -> None:
    """DISABLED mode can pass the client's half-close on as a TCP half-close: the answer to the
    last query still arrives, then the server closes and so does the proxy."""
    caplog.set_level(logging.INFO)
    with ProxyThread(make_route(mariadb.port, mode=SslMode.DISABLED)) as proxy:
        victim = connect(proxy.port, account=PLAIN)
        sock: socket.socket = victim._sock  # type: ignore[attr-defined]
        send_query(sock, b"SELECT SLEEP(0.3), 4242424242")
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        answer = bytearray()
        while chunk := sock.recv(65536):
            answer += chunk
        sock.close()
        assert b"4242424242" in answer
        wait_until(lambda: proxy.active_connections() == 0, 5, "the half-closed session stayed")
    assert_no_traceback(caplog)


# ---- the upstream restarts (a switchover), or is killed -----------------------------------------------


@pytest.fixture(scope="module")
def own_mariadb(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """A server of this module's own, so restarting it, killing it and filling it with connections
    disturbs no other test."""
    server = start_mariadb(tmp_path_factory.mktemp("mariadb-faults"), ssl_ca=pki.ca, ssl_cert=pki.server_cert,
                           ssl_key=pki.server_key,
                           # room for the 2,000 silent clients of the bounds test, which must outlast
                           # the server's own 10 s limit on an unauthenticated connection
                           extra_options={"max_connections": "2100", "connect_timeout": "60"})
    try:
        server.sql(f"CREATE DATABASE {TEST_DATABASE}")
        server.sql(f"CREATE TABLE {TEST_DATABASE}.acknowledged (id INT PRIMARY KEY) ENGINE=InnoDB")
        server.sql(f"CREATE USER '{NATIVE.user}'@'%' IDENTIFIED BY '{NATIVE.password}' REQUIRE SSL")
        server.sql(f"GRANT ALL ON {TEST_DATABASE}.* TO '{NATIVE.user}'@'%'")
        yield server
    finally:
        server.stop()


def port_refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("how", ["restart", "sigkill"])
def test_upstream_restart_mid_query_and_mid_transaction(own_mariadb: MariaDBServer, pki: TestPki,
                                                        caplog: pytest.LogCaptureFixture, how: str) -> None:
    """The primary goes away under a running SELECT SLEEP(5) and an open transaction, and comes back:
    both clients get a clean error within seconds (not after the sleep), the committed row is there
    and the uncommitted one is not, a client that connects while the server is down simply waits
    (connect_retry_window) and gets in as soon as it is back, all without restarting the proxy."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="tlsproxy.session")  # the connect retries
    server = own_mariadb
    route = with_fields(make_route(server.port, ca_file=pki.ca, connect_retry_window=30.0), handshake_timeout=40.0)
    server.sql(f"DELETE FROM {TEST_DATABASE}.acknowledged")
    with ProxyThread(route) as proxy, ThreadPoolExecutor(2) as pool:
        sleeper = connect(proxy.port)
        in_transaction = connect(proxy.port, database=TEST_DATABASE)
        with in_transaction.cursor() as cursor:
            cursor.execute("INSERT INTO acknowledged VALUES (1)")
            in_transaction.commit()  # acknowledged: must survive
            cursor.execute("BEGIN")
            cursor.execute("INSERT INTO acknowledged VALUES (2)")  # never committed
        sleeping = pool.submit(query_one, sleeper, "SELECT SLEEP(5)")
        time.sleep(0.3)
        fault_at = time.monotonic()
        if how == "sigkill":
            assert server.pid is not None
            os.kill(server.pid, signal.SIGKILL)
        restarting = pool.submit(server.restart)
        with pytest.raises(pymysql.MySQLError) as raised:
            sleeping.result(timeout=15)
        assert time.monotonic() - fault_at < 4.0, "the sleeping client waited out the restart"
        assert raised.value.args[0] in (1053, 1927, 2013), raised.value  # shutdown, killed, lost
        wait_until(lambda: port_refuses(server.port), 20, "the server never went down")
        waiting = pool.submit(connect, proxy.port, database=TEST_DATABASE, connect_timeout=40)
        restarting.result(timeout=90)
        back_at = time.monotonic()
        newcomer = waiting.result(timeout=10)
        assert time.monotonic() - back_at < 2.0, "the waiting client got in late"
        assert any("retrying in" in record.getMessage() for record in caplog.records), "it never had to wait"
        error, _ = expect_client_error(lambda: in_transaction.commit(), within=1.0)
        assert error.args[0] in (2006, 2013), error
        with newcomer.cursor() as cursor:
            cursor.execute("SELECT id FROM acknowledged")
            assert cursor.fetchall() == ((1,),)
        newcomer.close()
        with connect(proxy.port) as fresh:
            assert query_one(fresh, "SHOW SESSION STATUS LIKE 'Ssl_cipher'") == "Ssl_cipher"
        wait_until(lambda: proxy.active_connections() == 0, 5, "the proxy kept a dead session")
    assert_no_traceback(caplog)


# ---- bounds -----------------------------------------------------------------------------------------------


def read_frame(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:3], "little"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("dribble", [False, True])
def test_slowloris_is_cut_off_at_the_handshake_timeout(direct: tuple[ProxyThread, Bystander], mariadb: MariaDBServer,
                                                       pki: TestPki, dribble: bool) -> None:
    """A client that never sends its HandshakeResponse, or sends it a byte at a time, gets the
    proxy's ERR when the handshake timeout (1 s here: a deadline for the whole handshake, not per
    read) runs out, and both of its legs are closed."""
    _, bystander = direct
    route = with_fields(make_route(mariadb.port, ca_file=pki.ca), handshake_timeout=1.0)
    with ProxyThread(route) as proxy, socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        started = time.monotonic()
        assert read_frame(sock)[4] == 0x0A  # the greeting
        answer = b""
        if dribble:
            header = (200).to_bytes(3, "little") + b"\x01"  # announces a 200-byte response
            sock.settimeout(0.25)
            for byte in header + b"\x00" * 30:
                try:
                    sock.sendall(bytes((byte,)))
                    answer = read_frame(sock)
                    break
                except (TimeoutError, socket.timeout):
                    continue
            sock.settimeout(5)
        answer = answer or read_frame(sock)
        elapsed = time.monotonic() - started
        assert 0.9 < elapsed < 2.5, elapsed
        assert answer[4] == 0xFF and int.from_bytes(answer[5:7], "little") == 1159, answer
        assert b"handshake timed out after 1s (phase: client_response)" in answer, answer
        assert sock.recv(65536) == b""  # and closed
        wait_until(lambda: proxy.active_connections() == 0, 2, "the slow client's session stayed")
    bystander.check()


def raise_open_files_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    assert hard == resource.RLIM_INFINITY or hard >= needed, \
        f"this test needs {needed} open files; the hard limit is {hard} (raise it: ulimit -Hn)"
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def test_thousands_of_silent_connections(own_mariadb: MariaDBServer, pki: TestPki) -> None:
    """2,000 clients connect at once and say nothing (each holds an upstream connection that waits
    for its HandshakeResponse): none waits for the accept queue, the limit holds (the next client
    gets ERR 1040 at once), the admin endpoints still answer quickly, and once they leave
    everything is free again."""
    count = 2000
    raise_open_files_limit(3 * count + 1000)  # the proxy subprocess inherits it
    args = ["--listen", "127.0.0.1:0", "--upstream", f"localhost:{own_mariadb.port}", "--ssl-ca", str(pki.ca),
            "--max-connections", str(count), "--handshake-timeout", "60", "--connect-retry-window", "0"]
    silent: list[socket.socket] = []
    with CliProxy(args) as cli:
        assert cli.admin_address is not None
        try:
            slow = []
            for _ in range(count):
                began = time.monotonic()
                silent.append(socket.create_connection(("127.0.0.1", cli.port()), timeout=10))
                if time.monotonic() - began > 0.5:
                    slow.append(round(time.monotonic() - began, 2))
            # a full accept queue drops SYNs: the client retries after 1 s
            assert not slow, f"{len(slow)} connects waited for a SYN retransmit: {slow}"
            wait_until(lambda: metric(cli.admin_address, "tlsproxy_connections_active") == count, 30,
                       "the proxy did not hold every connection")
            error, _ = expect_client_error(lambda: connect(cli.port()), within=2.0)
            assert error.args[0] == 1040 and f"max_connections {count}" in error.args[1], error
            for path, want in (("/readiness", 503), ("/metrics", 200), ("/liveness", 200)):
                began = time.monotonic()
                status, body = http(cli.admin_address, path)
                assert status == want and time.monotonic() - began < 1.0, (path, status, body[:200])
            assert "at max_connections" in http(cli.admin_address, "/readiness")[1]
            assert metric(cli.admin_address, "tlsproxy_connections_refused_total") == 1
        finally:
            for sock in silent:
                sock.close()
        wait_until(lambda: metric(cli.admin_address, "tlsproxy_connections_active") == 0, 30,
                   "the sessions were not freed")
        with connect(cli.port()) as fresh:
            assert query_one(fresh, "SELECT 9") == 9
        assert "Traceback" not in "".join(cli.output)


def http(address: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric(address: str, name: str) -> float:
    """The sum of a metric's samples on /metrics."""
    _, body = http(address, "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))
