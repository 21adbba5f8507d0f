"""Metrics move as they should, against the real MariaDB with TLS; the admin endpoints answer."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pymysql
import pytest

from tests.conftest import NATIVE, PLAIN, serve_certificate
from tests.support.pki import TestPki
from tests.support.proxy import CliProxy, ProxyThread, make_route, metric_value as value
from tlsproxy import certs
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = pytest.mark.integration


def connect(port: int, account=NATIVE, **extra) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=port, user=account.user, password=account.password,
                           ssl_disabled=True, **extra)


def http(address: str, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://{address}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_a_relayed_connection_moves_every_success_metric(mariadb: MariaDBServer, pki: TestPki,
                                                         event_loop_name: str) -> None:
    with ProxyThread(make_route(mariadb.port, ca_file=pki.ca, name="main"), event_loop=event_loop_name) as proxy:
        connection = connect(proxy.port)
        with connection.cursor() as cursor:
            cursor.execute("SELECT REPEAT('x', 100000)")
            assert len(cursor.fetchone()[0]) == 100000
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
            version = cursor.fetchone()[1]
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            cipher = cursor.fetchone()[1]
        # live connection: active gauge and relayed bytes (summed at scrape time)
        assert value(proxy, "tlsproxy_connections_active", route="main") == 1
        assert value(proxy, "tlsproxy_relayed_bytes_total", route="main", direction="server_to_client") > 100000
        assert value(proxy, "tlsproxy_relayed_bytes_total", route="main", direction="client_to_server") > 20
        connection.close()
        deadline = time.monotonic() + 5
        while value(proxy, "tlsproxy_connections_active", route="main") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert value(proxy, "tlsproxy_connections_accepted_total", route="main") == 1
        assert value(proxy, "tlsproxy_connections_closed_total", route="main", outcome="ok") == 1
        assert value(proxy, "tlsproxy_relayed_bytes_total", route="main", direction="server_to_client") > 100000
        for phase in ("connect", "greeting", "tls", "auth", "total"):
            assert value(proxy, "tlsproxy_handshake_duration_seconds_count", route="main", phase=phase) == 1, phase
            assert value(proxy, "tlsproxy_handshake_duration_seconds_sum", route="main", phase=phase) > 0, phase
        assert value(proxy, "tlsproxy_tls_handshakes_total", route="main", version=version, cipher=cipher,
                     resumed="no") == 1
        cpu = value(proxy, "tlsproxy_tls_handshake_cpu_seconds_sum", route="main", resumed="no")
        assert 0 < cpu < value(proxy, "tlsproxy_handshake_duration_seconds_sum", route="main", phase="total")
        assert value(proxy, "tlsproxy_authentications_total", route="main", plugin="mysql_native_password") == 1
        not_after = certs.summarize_certificate(pki.server_cert.read_bytes()).not_after.timestamp()
        assert value(proxy, "tlsproxy_upstream_certificate_not_after_timestamp_seconds", route="main") == not_after
        assert value(proxy, "tlsproxy_handshake_failures_total", route="main", reason="ok") == 0


def _failure_reason(proxy: ProxyThread, attempt) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(pymysql.err.MySQLError):
        attempt()


def test_failure_reasons_are_counted(mariadb: MariaDBServer, alt_mariadb: MariaDBServer,
                                     plain_mariadb: MariaDBServer, pki: TestPki) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    cases = {
        "upstream_refused": (make_route(closed_port, upstream_host="127.0.0.1", ca_file=pki.ca, name="refused"),
                             NATIVE),
        "no_tls_offered": (make_route(plain_mariadb.port, ca_file=pki.ca, name="notls"), PLAIN),
        "certificate_untrusted": (make_route(mariadb.port, ca_file=pki.other_ca, name="untrusted"), NATIVE),
        "host_name_mismatch": (make_route(mariadb.port, ca_file=pki.ca, server_name="db.example.test",
                                          name="mismatch"), NATIVE),
        "auth_denied": (make_route(mariadb.port, ca_file=pki.ca, name="denied"), type(NATIVE)("native", "wrong")),
    }
    for reason, (route, account) in cases.items():
        with ProxyThread(route) as proxy:
            with pytest.raises(pymysql.err.MySQLError):
                connect(proxy.port, account)
            deadline = time.monotonic() + 5
            while value(proxy, "tlsproxy_connections_active", route=route.name) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert value(proxy, "tlsproxy_handshake_failures_total", route=route.name, reason=reason) == 1, reason
            assert value(proxy, "tlsproxy_connections_closed_total", route=route.name, outcome=reason) == 1, reason
    serve_certificate(alt_mariadb, pki.expired_cert, pki.expired_key)
    try:
        with ProxyThread(make_route(alt_mariadb.port, ca_file=pki.ca, name="expired")) as proxy:
            with pytest.raises(pymysql.err.MySQLError):
                connect(proxy.port, PLAIN)
            time.sleep(0.1)
            assert value(proxy, "tlsproxy_handshake_failures_total", route="expired", reason="expired") == 1
        serve_certificate(alt_mariadb, pki.server_cert, pki.server_key, tls_version="TLSv1.2")
        route = make_route(alt_mariadb.port, ca_file=pki.ca, name="version", tls_versions=("TLSv1.3",))
        with ProxyThread(route) as proxy:
            with pytest.raises(pymysql.err.MySQLError):
                connect(proxy.port, PLAIN)
            time.sleep(0.1)
            assert value(proxy, "tlsproxy_handshake_failures_total", route="version", reason="protocol_version") == 1
    finally:
        serve_certificate(alt_mariadb, pki.server_cert, pki.server_key)


def test_timeout_and_client_gone_are_counted(mariadb: MariaDBServer, pki: TestPki) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts TCP (the kernel does), never speaks
    try:
        route = make_route(silent.getsockname()[1], upstream_host="127.0.0.1", ca_file=pki.ca, name="silent")
        route = type(route)(**{**route.__dict__, "handshake_timeout": 0.5})
        with ProxyThread(route) as proxy:
            with pytest.raises(pymysql.err.MySQLError):
                connect(proxy.port)
            time.sleep(0.1)
            assert value(proxy, "tlsproxy_handshake_failures_total", route="silent", reason="handshake_timeout") == 1
    finally:
        silent.close()
    with ProxyThread(make_route(mariadb.port, ca_file=pki.ca, name="gone")) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port)) as client:
            assert client.recv(65536)[4] == 0x0A  # the greeting; then the client goes away
        deadline = time.monotonic() + 5
        while not value(proxy, "tlsproxy_handshake_failures_total", route="gone", reason="client_gone"):
            assert time.monotonic() < deadline, "client_gone was not counted"
            time.sleep(0.05)


def test_readiness_follows_max_connections_and_draining(mariadb: MariaDBServer, pki: TestPki) -> None:
    args = ["--listen", "127.0.0.1:0", "--upstream", f"localhost:{mariadb.port}", "--ssl-ca", str(pki.ca),
            "--max-connections", "1", "--shutdown-grace", "20"]
    with CliProxy(args) as cli:
        assert cli.admin_address is not None and cli.process is not None
        assert http(cli.admin_address, "/readiness")[0] == 200
        held = connect(cli.port())
        status, body = http(cli.admin_address, "/readiness")
        assert status == 503 and "max_connections" in body
        cli.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        status, body = http(cli.admin_address, "/readiness")
        assert status == 503 and "draining" in body
        assert http(cli.admin_address, "/liveness")[0] == 200
        held.close()
        assert cli.process.wait(15) == 0


def test_max_connections_counts_refusals(mariadb: MariaDBServer, pki: TestPki) -> None:
    route = make_route(mariadb.port, ca_file=pki.ca, name="small")
    route = type(route)(**{**route.__dict__, "max_connections": 1})
    with ProxyThread(route) as proxy:
        held = connect(proxy.port)
        with pytest.raises(pymysql.err.OperationalError):
            connect(proxy.port)
        held.close()
        assert value(proxy, "tlsproxy_connections_refused_total", route="small", reason="max_connections") == 1
        assert value(proxy, "tlsproxy_connections_accepted_total", route="small") == 1


def test_admin_endpoints_and_quitquitquit(mariadb: MariaDBServer, pki: TestPki) -> None:
    args = ["--listen", "127.0.0.1:0", "--upstream", f"localhost:{mariadb.port}", "--ssl-ca", str(pki.ca)]
    with CliProxy(args) as cli:
        address = cli.admin_address
        assert address is not None
        assert http(address, "/startup") == (200, "started\n")
        assert http(address, "/liveness") == (200, "alive\n")
        assert http(address, "/readiness") == (200, "ready\n")
        connect(cli.port()).close()
        status, body = http(address, "/metrics")
        assert status == 200
        assert 'tlsproxy_connections_accepted_total{route="default"} 1.0' in body
        assert "tlsproxy_build_info{" in body
        assert http(address, "/nope")[0] == 404
        assert http(address, "/quitquitquit", method="GET")[0] == 405
        assert http(address, "/quitquitquit", method="POST")[0] == 200
        assert cli.process is not None
        assert cli.process.wait(15) == 0


def test_readiness_reports_an_unreachable_upstream(pki: TestPki) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    args = ["--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{closed_port}", "--ssl-ca", str(pki.ca)]
    with CliProxy(args) as cli:
        assert cli.admin_address is not None
        status, body = http(cli.admin_address, "/readiness")
        assert status == 503 and "unreachable" in body
        assert http(cli.admin_address, "/liveness")[0] == 200  # a database outage never restarts the pod


def test_sigterm_drains_an_open_transaction(mariadb: MariaDBServer, pki: TestPki) -> None:
    """SIGTERM: the listener closes at once, the open connection finishes its transaction, then the
    proxy exits 0 without waiting out the grace period."""
    args = ["--listen", "127.0.0.1:0", "--upstream", f"localhost:{mariadb.port}", "--ssl-ca", str(pki.ca),
            "--shutdown-grace", "20"]
    with CliProxy(args) as cli:
        port = cli.port()
        connection = connect(port, database="tlsproxy_test", autocommit=False)
        with connection.cursor() as cursor:
            cursor.execute("CREATE TABLE IF NOT EXISTS drain_test (id INT PRIMARY KEY)")
            cursor.execute("DELETE FROM drain_test")
            connection.commit()
            cursor.execute("INSERT INTO drain_test VALUES (1)")
            assert cli.process is not None
            started = time.monotonic()
            cli.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            cursor.execute("INSERT INTO drain_test VALUES (2)")
            connection.commit()
        connection.close()
        assert cli.process.wait(15) == 0
        assert time.monotonic() - started < 10
    rows = mariadb.sql("SELECT COUNT(*) FROM tlsproxy_test.drain_test")
    assert rows == [["2"]]


def test_handshake_cpu_matches_an_independent_measurement(mariadb: MariaDBServer, pki: TestPki) -> None:
    """The metric's CPU per handshake agrees with getrusage of a process doing only handshakes (minus
    the same process making and freeing the same connections' TLS objects without a handshake), with
    the same TLS settings."""
    import sys

    count = 150

    def process_cpu(mode: str) -> float:
        result = subprocess.run([sys.executable, "-m", "bench.handshake_process", str(mariadb.port), str(pki.ca),
                                 str(count), mode], capture_output=True, text=True, timeout=120, check=True,
                                cwd=Path(__file__).resolve().parents[2])
        return float(result.stdout)

    independent = (process_cpu("tls") - process_cpu("wrap")) / count
    # resumption off: the independent process does full handshakes, so must the proxy
    with ProxyThread(make_route(mariadb.port, ca_file=pki.ca, name="cpu", session_resumption=False)) as proxy:
        for _ in range(count):
            connect(proxy.port).close()
        time.sleep(0.1)
        assert value(proxy, "tlsproxy_tls_handshake_cpu_seconds_count", route="cpu", resumed="no") == count
        metric = value(proxy, "tlsproxy_tls_handshake_cpu_seconds_sum", route="cpu", resumed="no") / count
    print(f"handshake CPU: metric {metric * 1e6:.0f} us, independent {independent * 1e6:.0f} us "
          f"({(metric / independent - 1) * 100:+.1f}%)")
    # The two agree within ~20% on this shared machine (see the issue note), but single runs swing
    # further; this bound catches a metric off by a factor (zero, per-process averages, wrong units).
    # That it is CPU and not wall time is checked by the next test.
    assert 0.4 < metric / independent < 2.5, (metric, independent)


def test_handshake_cpu_is_cpu_not_wall_time(mariadb: MariaDBServer, pki: TestPki) -> None:
    """With every server-to-proxy chunk delayed by 50 ms, the TLS phase takes far longer on the wall
    clock while the CPU spent in the handshake stays the same."""
    from tests.support.wire import RecordingRelay

    with RecordingRelay(mariadb.port, delay_to_client=0.05) as slow:
        route = make_route(slow.port, upstream_host="127.0.0.1", server_name="localhost", ca_file=pki.ca,
                           name="slow", session_resumption=False)
        with ProxyThread(route) as proxy:
            for _ in range(3):
                connect(proxy.port).close()
            time.sleep(0.1)
            count = value(proxy, "tlsproxy_tls_handshake_cpu_seconds_count", route="slow", resumed="no")
            cpu = value(proxy, "tlsproxy_tls_handshake_cpu_seconds_sum", route="slow", resumed="no") / count
            wall = value(proxy, "tlsproxy_handshake_duration_seconds_sum", route="slow", phase="tls") / count
    assert count == 3
    assert wall > 0.05, wall  # at least one delayed round trip
    assert cpu < 0.02, cpu  # a handshake's CPU is about 1 ms, whatever the network does


def test_json_log_has_one_structured_line_per_connection(mariadb: MariaDBServer, pki: TestPki) -> None:
    import json

    args = ["--listen", "127.0.0.1:0", "--upstream", f"localhost:{mariadb.port}", "--ssl-ca", str(pki.ca),
            "--log-format", "json"]
    with CliProxy(args) as cli:
        connect(cli.port()).close()
        deadline = time.monotonic() + 5
        ends: list[dict] = []
        while not ends and time.monotonic() < deadline:
            time.sleep(0.05)
            ends = [json.loads(line) for line in list(cli.output) if '"connection_end"' in line]
    (end,) = ends
    assert end["outcome"] == "ok" and end["route"] == "default" and end["tls"] in ("TLSv1.2", "TLSv1.3")
    assert end["cipher"] and end["resumed"] is False and end["auth"] == "mysql_native_password"
    for key in ("connect_ms", "greeting_ms", "tls_ms", "auth_ms", "duration_ms", "bytes_up", "bytes_down"):
        assert isinstance(end[key], (int, float)) and end[key] > 0, key
    assert NATIVE.password not in json.dumps(ends)
