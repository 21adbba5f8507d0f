"""Every refusal ends in the client's own error output, within seconds, with the proxy's message as
written, and nothing the client sent crosses the upstream leg in plaintext."""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import ExitStack

import pymysql
import pytest

from tests.conftest import NATIVE, PLAIN, serve_certificate
from tests.support.clients import (assert_no_credentials_in_plaintext, assert_refused, client_error,
                                   through_recording_relay)
from tests.support.pki import TestPki
from tests.support.proxy import ProxyThread, make_route
from tests.support.wire import RecordingRelay, ScriptedUpstream, capture_greeting, read_available
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = pytest.mark.integration

def test_ca_that_did_not_sign_the_server(mariadb: MariaDBServer, pki: TestPki, event_loop_name: str) -> None:
    relay = through_recording_relay(
        mariadb.port, lambda port: make_route(port, ca_file=pki.other_ca),
        lambda proxy_port: assert_refused(proxy_port, "upstream certificate verify failed: the chain's root CA is not trusted"),
        event_loop_name,
    )
    assert relay.to_server, "the proxy never reached the server"
    assert_no_credentials_in_plaintext(relay, NATIVE)


def test_host_name_mismatch(alt_mariadb: MariaDBServer, pki: TestPki) -> None:
    serve_certificate(alt_mariadb, pki.wrong_host_cert, pki.wrong_host_key)
    try:
        relay = through_recording_relay(
            alt_mariadb.port, lambda port: make_route(port, ca_file=pki.ca),
            lambda proxy_port: assert_refused(
                proxy_port, "upstream certificate verify failed: host name mismatch (expected localhost)",
                account=PLAIN),
        )
        assert_no_credentials_in_plaintext(relay, PLAIN)
    finally:
        serve_certificate(alt_mariadb, pki.server_cert, pki.server_key)


def test_expired_server_certificate(alt_mariadb: MariaDBServer, pki: TestPki) -> None:
    serve_certificate(alt_mariadb, pki.expired_cert, pki.expired_key)
    try:
        relay = through_recording_relay(
            alt_mariadb.port, lambda port: make_route(port, ca_file=pki.ca),
            lambda proxy_port: assert_refused(proxy_port, "upstream certificate verify failed: certificate has expired",
                                              account=PLAIN),
        )
        assert_no_credentials_in_plaintext(relay, PLAIN)
    finally:
        serve_certificate(alt_mariadb, pki.server_cert, pki.server_key)


def test_server_without_tls(plain_mariadb: MariaDBServer, pki: TestPki, event_loop_name: str) -> None:
    relay = through_recording_relay(
        plain_mariadb.port, lambda port: make_route(port, ca_file=pki.ca),
        lambda proxy_port: assert_refused(
            proxy_port, "upstream does not offer TLS; refusing to send credentials in plaintext", account=PLAIN),
        event_loop_name,
    )
    assert relay.to_client, "the server's greeting should have arrived"
    assert relay.to_server == b"", "the proxy must not send anything to a server without TLS"


def test_tls_version_below_the_configured_minimum(alt_mariadb: MariaDBServer, pki: TestPki) -> None:
    serve_certificate(alt_mariadb, pki.server_cert, pki.server_key, tls_version="TLSv1.2")
    try:
        route = make_route(alt_mariadb.port, ca_file=pki.ca, tls_versions=("TLSv1.3",))
        with ProxyThread(route) as proxy:
            assert_refused(proxy.port, "no TLS version in common", account=PLAIN)
    finally:
        serve_certificate(alt_mariadb, pki.server_cert, pki.server_key)


def test_upstream_refusing_tcp(pki: TestPki, event_loop_name: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with ProxyThread(make_route(closed_port, upstream_host="127.0.0.1", ca_file=pki.ca),
                     event_loop=event_loop_name) as proxy:
        assert_refused(proxy.port, f"cannot connect to upstream 127.0.0.1:{closed_port}")


def test_upstream_that_never_speaks(pki: TestPki, event_loop_name: str) -> None:
    def silent(conn: socket.socket, received: bytearray) -> None:
        read_available(conn, received, timeout=8)

    with ScriptedUpstream(silent) as upstream:
        route = make_route(upstream.port, upstream_host="127.0.0.1", ca_file=pki.ca)
        route = type(route)(**{**route.__dict__, "handshake_timeout": 1.0})
        with ProxyThread(route, event_loop=event_loop_name) as proxy:
            assert_refused(proxy.port, "handshake timed out after 1s (phase: greeting)", code=1159)


def test_upstream_gone_right_after_its_greeting(pki: TestPki, event_loop_name: str) -> None:
    """The server greets and closes before the client's response is read: every client still gets the
    proxy's error, stamped with the id it expects after sending its response (PyMySQL checks it)."""
    from tests.fixtures.greetings import MARIADB_10_11_CAPTURED_FRAME

    def greet_and_close(conn: socket.socket, received: bytearray) -> None:
        conn.sendall(MARIADB_10_11_CAPTURED_FRAME)
        conn.close()

    with ScriptedUpstream(greet_and_close) as upstream:
        route = make_route(upstream.port, upstream_host="127.0.0.1", ca_file=pki.ca)
        with ProxyThread(route, event_loop=event_loop_name) as proxy:
            for _ in range(3):  # the close may land before or after the client's response: both ways
                assert_refused(proxy.port, "upstream closed the connection during the")


def test_server_bytes_after_ssl_request_are_refused(mariadb: MariaDBServer, pki: TestPki) -> None:
    """A server that answers the SSLRequest with plaintext (an injection attempt) is cut off."""
    greeting = capture_greeting(mariadb.port)

    def injector(conn: socket.socket, received: bytearray) -> None:
        conn.sendall(greeting)
        conn.settimeout(5)
        ssl_request = conn.recv(36)
        received += ssl_request
        conn.sendall(b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00")  # a forged OK
        read_available(conn, received, timeout=2)

    with ScriptedUpstream(injector) as upstream:
        with ProxyThread(make_route(upstream.port, upstream_host="127.0.0.1", ca_file=pki.ca)) as proxy:
            assert_refused(proxy.port, "upstream sent non-TLS data after the SSLRequest")
        assert len(upstream.received) >= 36 and upstream.received[3] == 1  # the SSLRequest, seq 1
        assert NATIVE.user.encode() not in upstream.received


def test_max_connections(mariadb: MariaDBServer, pki: TestPki) -> None:
    route = make_route(mariadb.port, ca_file=pki.ca)
    route = type(route)(**{**route.__dict__, "max_connections": 2})
    with ProxyThread(route) as proxy:
        held = [pymysql.connect(host="127.0.0.1", port=proxy.port, user=NATIVE.user, password=NATIVE.password,
                                ssl_disabled=True) for _ in range(2)]
        try:
            assert_refused(proxy.port, "too many connections (max_connections 2", code=1040)
        finally:
            for connection in held:
                connection.close()
        deadline = time.monotonic() + 5
        while proxy.active_connections() and time.monotonic() < deadline:
            time.sleep(0.05)
        pymysql.connect(host="127.0.0.1", port=proxy.port, user=NATIVE.user, password=NATIVE.password,
                        ssl_disabled=True).close()


def test_client_asking_for_tls_gets_a_clear_error(mariadb: MariaDBServer, pki: TestPki) -> None:
    """The greeting offers no TLS; a client that insists is told so by its own library."""
    with ProxyThread(make_route(mariadb.port, ca_file=pki.ca)) as proxy:
        result = subprocess.run(
            ["mariadb", "--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-P", str(proxy.port),
             "--ssl-verify-server-cert", f"-u{NATIVE.user}", f"-p{NATIVE.password}", "-e", "SELECT 1"],
            capture_output=True, text=True, timeout=30,
        )
        assert result.returncode != 0
        assert "SSL is required, but the server does not support it" in result.stderr
        with pytest.raises(pymysql.err.OperationalError) as raised:
            pymysql.connect(host="127.0.0.1", port=proxy.port, user=NATIVE.user, password=NATIVE.password,
                            ssl_verify_cert=True, ssl_ca=str(pki.ca))
        assert raised.value.args[0] == 2026


def test_garbage_closes_only_that_connection(mariadb: MariaDBServer, pki: TestPki, caplog) -> None:
    """A client that sends garbage instead of a handshake response is cut off with a log line; the
    proxy keeps serving the others (one of which is already connected)."""
    with ProxyThread(make_route(mariadb.port, ca_file=pki.ca)) as proxy:
        bystander = pymysql.connect(host="127.0.0.1", port=proxy.port, user=NATIVE.user, password=NATIVE.password,
                                    ssl_disabled=True)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            greeting = sock.recv(65536)
            assert greeting[4] == 0x0A
            sock.sendall(b"\x05\x00\x00\x07garbage-that-is-not-mysql" * 3)
            answer = bytearray()
            read_available(sock, answer, timeout=5)
        assert answer[4] == 0xFF and b"tlsproxy: " in answer, bytes(answer)
        with bystander.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone()[0] == 1
        bystander.close()
        pymysql.connect(host="127.0.0.1", port=proxy.port, user=NATIVE.user, password=NATIVE.password,
                        ssl_disabled=True).close()
    assert any("out of order" in record.getMessage() for record in caplog.records)


def test_upstream_connect_timeout(pki: TestPki, event_loop_name: str) -> None:
    """An upstream whose accept queue is full never answers the SYN: the connect timeout fires."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", port), timeout=2)  # fills the queue; never accepted
        try:
            route = make_route(port, upstream_host="127.0.0.1", ca_file=pki.ca)
            route = type(route)(**{**route.__dict__, "connect_timeout": 0.5})
            with ProxyThread(route, event_loop=event_loop_name) as proxy:
                assert_refused(proxy.port, f"cannot connect to upstream 127.0.0.1:{port}: no answer within 0.5s",
                               within=3.0)
        finally:
            filler.close()


def test_upstream_that_comes_back_within_the_retry_window(mariadb: MariaDBServer, pki: TestPki,
                                                          event_loop_name: str) -> None:
    """A switchover: the upstream refuses for a second, then answers; the client only waits."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    route = make_route(port, upstream_host="127.0.0.1", ca_file=pki.ca, server_name="localhost",
                       connect_retry_window=5.0)
    with ProxyThread(route, event_loop=event_loop_name) as proxy, ExitStack() as stack:
        import threading

        def come_back() -> None:
            time.sleep(1.0)
            stack.enter_context(RecordingRelay(mariadb.port, listen_port=port))

        thread = threading.Thread(target=come_back)
        thread.start()
        started = time.monotonic()
        connection = pymysql.connect(host="127.0.0.1", port=proxy.port, user=NATIVE.user,
                                     password=NATIVE.password, ssl_disabled=True)
        waited = time.monotonic() - started
        thread.join()
        with connection.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            assert cursor.fetchone()[1]
        connection.close()
        assert 0.9 < waited < 4.0, waited


def test_refused_upstream_is_reported_after_the_retry_window(pki: TestPki) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    route = make_route(port, upstream_host="127.0.0.1", ca_file=pki.ca, connect_retry_window=1.0)
    with ProxyThread(route) as proxy:
        error = client_error("pymysql", proxy.port, NATIVE)
        assert "Connection refused (" in error.message and "attempts in" in error.message, error
        assert 0.5 < error.seconds < 3.0, error  # the last backoff step that fits in the window
