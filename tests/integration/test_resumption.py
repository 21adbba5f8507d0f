"""Upstream TLS session resumption against the real MariaDB, seen on both sides: the proxy's metrics
and the server's own first flight as recorded on the wire between them (tests/support/tlswire.py).

MariaDB 10.11 reports `Ssl_sessions_reused` and its session-cache counters as 0 for ticket-based
resumption (they count its stateful cache only), so the server's side is read off the wire: a resumed
TLS 1.2 server sends no Certificate, a resumed TLS 1.3 server's ServerHello accepts the ticket
(pre_shared_key).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pymysql
import pytest

from tests.conftest import NATIVE
from tests.support.pki import TestPki
from tests.support.proxy import ProxyThread, make_route, metric_value as value
from tests.support.tlswire import server_flight
from tests.support.wire import RecordingRelay
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = pytest.mark.integration


def query(port: int) -> str:
    connection = pymysql.connect(host="127.0.0.1", port=port, user=NATIVE.user, password=NATIVE.password,
                                 ssl_disabled=True, connect_timeout=10)
    with connection, connection.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        return cursor.fetchone()[1]


def wait_idle(proxy: ProxyThread) -> None:
    deadline = time.monotonic() + 5
    while proxy.call(lambda: proxy.proxy.active_connections) and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.01)


def connections_on_the_wire(proxy: ProxyThread, relay: RecordingRelay, count: int) -> list[tuple[str, bool]]:
    """Make `count` connections one after another; for each, what the server's first flight says."""
    flights = []
    for _ in range(count):
        with relay._lock:
            relay.to_client.clear()
        version = query(proxy.port)
        wait_idle(proxy)
        # The relay's threads of this connection see the close and end: what the server sends last (its
        # close_notify in answer to the proxy's) is recorded before the next connection clears the record.
        deadline = time.monotonic() + 5
        while any(thread.is_alive() for thread in relay._threads[1:]) and time.monotonic() < deadline:
            time.sleep(0.01)
        with relay._lock:
            flight = server_flight(bytes(relay.to_client))
        assert flight.version == version
        flights.append((flight.version, flight.resumed))
    return flights


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_later_connections_resume_and_the_server_agrees(mariadb: MariaDBServer, pki: TestPki, event_loop_name: str,
                                                       version: str) -> None:
    with RecordingRelay(mariadb.port) as relay, \
            ProxyThread(make_route(relay.port, ca_file=pki.ca, tls_versions=(version,), name="r"),
                        event_loop=event_loop_name) as proxy:
        flights = connections_on_the_wire(proxy, relay, 4)
        assert flights == [(version, False)] + [(version, True)] * 3
        assert value(proxy, "tlsproxy_tls_handshakes_total", route="r", version=version,
                     cipher=_cipher(version), resumed="no") == 1
        assert value(proxy, "tlsproxy_tls_handshakes_total", route="r", version=version,
                     cipher=_cipher(version), resumed="yes") == 3
        full = value(proxy, "tlsproxy_tls_handshake_cpu_seconds_sum", route="r", resumed="no")
        resumed = value(proxy, "tlsproxy_tls_handshake_cpu_seconds_sum", route="r", resumed="yes") / 3
        assert 0 < resumed < full, (resumed, full)
        assert value(proxy, "tlsproxy_tls_sessions_cached", route="r") == 1


def _cipher(version: str) -> str:
    return "TLS_AES_256_GCM_SHA384" if version == "TLSv1.3" else "ECDHE-RSA-AES256-GCM-SHA384"


def test_resumption_can_be_turned_off(mariadb: MariaDBServer, pki: TestPki) -> None:
    with RecordingRelay(mariadb.port) as relay, \
            ProxyThread(make_route(relay.port, ca_file=pki.ca, session_resumption=False, name="r")) as proxy:
        assert [resumed for _, resumed in connections_on_the_wire(proxy, relay, 3)] == [False] * 3
        assert value(proxy, "tlsproxy_tls_sessions_cached", route="r") == 0
        assert value(proxy, "tlsproxy_tls_handshake_cpu_seconds_count", route="r", resumed="yes") == 0


def test_a_reload_starts_over_and_verifies_in_full(mariadb: MariaDBServer, pki: TestPki, tmp_path: Path) -> None:
    """After a TLS reload nothing verified under the old settings is resumed: a CA that no longer
    trusts the server refuses the next connection, although a session for it was cached."""
    ca = tmp_path / "ca.pem"
    shutil.copy(pki.ca, ca)
    with RecordingRelay(mariadb.port) as relay, ProxyThread(make_route(relay.port, ca_file=ca, name="r")) as proxy:
        assert [resumed for _, resumed in connections_on_the_wire(proxy, relay, 2)] == [False, True]
        assert proxy.call(lambda: proxy.proxy.reload_tls("test"))  # type: ignore[union-attr]
        assert [resumed for _, resumed in connections_on_the_wire(proxy, relay, 2)] == [False, True]
        shutil.copy(pki.other_ca, ca)
        assert proxy.call(lambda: proxy.proxy.reload_tls("test"))  # type: ignore[union-attr]
        with pytest.raises(pymysql.err.OperationalError) as error:
            query(proxy.port)
        assert "certificate verify failed" in error.value.args[1]
        assert value(proxy, "tlsproxy_tls_sessions_cached", route="r") == 0


def test_concurrent_connections_share_the_cached_ticket(mariadb: MariaDBServer, pki: TestPki) -> None:
    """A burst of simultaneous connections all resume the one cached TLS 1.3 ticket, and log in."""
    with ProxyThread(make_route(mariadb.port, ca_file=pki.ca, tls_versions=("TLSv1.3",), name="r")) as proxy:
        for _ in range(3):
            query(proxy.port)
        results: list[str] = []
        errors: list[BaseException] = []

        def one() -> None:
            try:
                results.append(query(proxy.port))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors and results == ["TLSv1.3"] * 8
        handshakes = sum(value(proxy, "tlsproxy_tls_handshakes_total", route="r", version="TLSv1.3",
                               cipher="TLS_AES_256_GCM_SHA384", resumed=resumed) for resumed in ("yes", "no"))
        assert handshakes == 11
        assert value(proxy, "tlsproxy_tls_handshakes_total", route="r", version="TLSv1.3",
                     cipher="TLS_AES_256_GCM_SHA384", resumed="yes") == 10
        assert value(proxy, "tlsproxy_tls_sessions_cached", route="r") == 1


def test_a_resumed_connection_does_not_read_its_session(mariadb: MariaDBServer, pki: TestPki,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPython before 3.12.7 every `SSLObject.session` read leaks about 5.5 KiB (gh-116810), so the
    proxy reads it only after a full handshake: once per session, not once per connection."""
    import ssl

    from tlsproxy.tls import MeteredSSLSocket

    reads = []
    original = ssl.SSLSocket.session

    def counted(self: ssl.SSLSocket) -> ssl.SSLSession | None:
        reads.append(1)
        return original.fget(self)  # type: ignore[attr-defined]

    monkeypatch.setattr(MeteredSSLSocket, "session", property(counted, original.fset), raising=False)
    with ProxyThread(make_route(mariadb.port, ca_file=pki.ca, name="r")) as proxy:
        for _ in range(5):
            query(proxy.port)
        assert value(proxy, "tlsproxy_tls_handshakes_total", route="r", version="TLSv1.3",
                     cipher="TLS_AES_256_GCM_SHA384", resumed="yes") == 4
    assert len(reads) == 1
