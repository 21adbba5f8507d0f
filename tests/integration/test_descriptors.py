"""File descriptors, through the real CLI with a low RLIMIT_NOFILE, against the real MariaDB, with PyMySQL.

* A soft limit below what the clients need, under a higher hard limit: the proxy raises its soft limit
  at start, says so, and serves every client.
* A hard limit too low for the clients: the ones that cannot be served get ERR 1040 "out of file
  descriptors" at once (none hangs, none is blamed on the upstream), /readiness is 503 while the
  descriptors are gone, and both come back as soon as the held clients leave.
"""

from __future__ import annotations

import re
import resource
import time
from contextlib import ExitStack

import pymysql
import pytest

from tests.conftest import NATIVE
from tests.integration.test_metrics import http
from tests.support.pki import TestPki
from tests.support.proxy import CliProxy
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LOW = 256


def connect(port: int) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=port, user=NATIVE.user, password=NATIVE.password,
                           ssl_disabled=True, connect_timeout=10)


def query_one(connection: pymysql.Connection, sql: str) -> object:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def metric(address: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples on /metrics whose labels include `labels`."""
    _, body = http(address, "/metrics")
    total = 0.0
    for line in body.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def args(mariadb: MariaDBServer, pki: TestPki, *extra: str) -> list[str]:
    return ["--listen", "127.0.0.1:0", "--upstream", f"localhost:{mariadb.port}", "--ssl-ca", str(pki.ca),
            "--connect-retry-window", "5", "--shutdown-grace", "1", *extra]


def wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} (not within {timeout:g}s)"
        time.sleep(0.05)


def test_a_low_soft_limit_is_raised_and_every_client_served(mariadb: MariaDBServer, pki: TestPki,
                                                            event_loop_name: str) -> None:
    """`ulimit -S -n 256` under a higher hard limit, 300 clients held at once: all served."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"needs a hard open files limit of at least 1024 (it is {hard})")
    target = 1024 if hard == resource.RLIM_INFINITY else hard
    with CliProxy(args(mariadb, pki, "--event-loop", event_loop_name), open_files=(LOW, target)) as cli, \
            ExitStack() as held:
        log = "".join(cli.output)
        assert re.search(rf"open files limit {target} \(soft limit raised from {LOW} to the hard limit\)", log), log
        clients = [held.enter_context(connect(cli.port())) for _ in range(300)]
        assert all(query_one(client, "SELECT 7") == 7 for client in clients)
        assert cli.admin_address is not None
        assert metric(cli.admin_address, "tlsproxy_connections_active") == 300
        assert http(cli.admin_address, "/readiness")[0] == 200


def test_out_of_descriptors_clients_get_err_1040_and_service_comes_back(mariadb: MariaDBServer, pki: TestPki,
                                                                         event_loop_name: str) -> None:
    """`ulimit -n 256` (soft = hard): clients are held until the descriptors run out; the next ones get
    ERR 1040 at once, nothing is blamed on the upstream, /readiness is 503; once the held clients
    leave, /readiness is 200 and new clients are served."""
    message = f"tlsproxy: out of file descriptors (limit {LOW})"
    with CliProxy(args(mariadb, pki, "--event-loop", event_loop_name), open_files=(LOW, LOW)) as cli, \
            ExitStack() as held:
        admin = cli.admin_address
        assert admin is not None
        log = "".join(cli.output)
        assert f"open files limit {LOW}\n" in log and f"open files limit {LOW} fits about" in log, log
        served: list[pymysql.Connection] = []
        refused: list[tuple[int, str, float]] = []
        while len(refused) < 12:
            assert len(served) < LOW // 2, "the descriptors never ran out"
            began = time.monotonic()
            try:
                served.append(held.enter_context(connect(cli.port())))
            except pymysql.OperationalError as error:
                refused.append((error.args[0], error.args[1], time.monotonic() - began))
        assert len(served) > LOW // 2 - 40, f"only {len(served)} clients served"
        assert all(code == 1040 and text == message and elapsed < 2.0 for code, text, elapsed in refused), refused
        status, body = http(admin, "/readiness")
        assert status == 503 and "file descriptors" in body, (status, body)
        assert metric(admin, "tlsproxy_connections_closed_total", outcome="upstream_refused") == 0
        assert metric(admin, "tlsproxy_handshake_failures_total", reason="upstream_refused") == 0
        out_of_fds = (metric(admin, "tlsproxy_connections_refused_total", reason="out_of_fds")
                      + metric(admin, "tlsproxy_connections_closed_total", outcome="out_of_fds"))
        assert out_of_fds == len(refused)
        assert all(query_one(client, "SELECT 3") == 3 for client in served)
        held.close()
        wait_until(lambda: http(admin, "/readiness")[0] == 200, 10, "/readiness did not come back")
        with connect(cli.port()) as fresh:
            assert query_one(fresh, "SELECT 5") == 5
        assert "Traceback" not in "".join(cli.output)
