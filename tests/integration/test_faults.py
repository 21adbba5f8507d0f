"""Faults on the upstream leg, between the proxy and the real MariaDB (tests/support/faults.py), and
the upstream itself going away (restart, SIGKILL, a switchover) or stopping to read, and clients
that vanish. In every case: the client gets a clean MySQL error within a bound (never a hang),
nothing acknowledged is lost, only the affected connection suffers (a bystander connection opened
before the fault still works, and so does a new one), and the log has no traceback."""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import pymysql
import pytest

from tests.conftest import NATIVE, PLAIN, TEST_DATABASE
from tests.support.faults import TO_CLIENT, TO_SERVER, Fault, FaultRelay
from tests.support.pki import TestPki
from tests.support.proxy import ProxyThread, make_route
from tlsproxy.config import Route, SslMode
from tlsproxy.localdb import MariaDBServer, start_mariadb

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


def rst_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


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
