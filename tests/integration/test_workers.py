"""`--workers 2`: the real CLI as a supervisor with two worker processes, against the real MariaDB.

Load sharing is proved from the end-of-connection lines, which name the worker that served each
connection; the supervisor's /metrics must add up to the connections made; a drain must let an open
transaction commit, refuse new connections and leave no process behind.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import stat
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pymysql
import pytest

from tests.conftest import NATIVE, TEST_DATABASE
from tests.integration.test_metrics import http
from tests.support.mysql8_peer import PeerAccount, PeerThread
from tests.support.pki import TestPki
from tests.support.proxy import CliProxy, wait_for
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

_SERVED = re.compile(r"\[worker (\d+) pid (\d+)\]: conn=\d+ .*outcome=(\S+)")
_SERVING = re.compile(r"worker (\d+) \(pid (\d+)\) serving")


def _args(mariadb: MariaDBServer, pki: TestPki, *extra: str) -> list[str]:
    return ["--workers", "2", "--listen", "127.0.0.1:0", "--upstream", f"localhost:{mariadb.port}",
            "--ssl-ca", str(pki.ca), *(extra or ("--shutdown-grace", "3"))]


def connect(port: int | None = None, *, unix_socket: str | None = None, **extra) -> pymysql.Connection:
    where = {"unix_socket": unix_socket} if unix_socket else {"host": "127.0.0.1", "port": port}
    return pymysql.connect(user=NATIVE.user, password=NATIVE.password, ssl_disabled=True, connect_timeout=10,
                           **where, **extra)


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def served_by_worker(cli: CliProxy, expected: int, timeout: float = 10.0) -> Counter[int]:
    """Connections per worker index, from the end-of-connection lines, once `expected` have ended."""
    deadline = time.monotonic() + timeout
    while True:
        ends = [match for line in list(cli.output) if (match := _SERVED.search(line))]
        if len(ends) >= expected or time.monotonic() > deadline:
            assert all(match.group(3) == "ok" for match in ends), [m.group(0) for m in ends]
            return Counter(int(match.group(1)) for match in ends)
        time.sleep(0.05)


def worker_pids(cli: CliProxy) -> dict[int, int]:
    """Worker index -> pid of its latest start."""
    return {int(m.group(1)): int(m.group(2)) for line in list(cli.output) if (m := _SERVING.search(line))}


def metric(body: str, sample: str) -> float:
    """The value of one exact sample line, e.g. 'tlsproxy_connections_accepted_total{route="default"}'."""
    values = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(sample + " ")]
    assert len(values) == 1, f"{sample}: {values}\n{body}"
    return values[0]


def scrape(cli: CliProxy) -> str:
    assert cli.admin_address is not None
    status, body = http(cli.admin_address, "/metrics")
    assert status == 200
    return body


@contextmanager
def running(args: list[str]) -> Iterator[CliProxy]:
    """The CLI with its workers; at the end (also on failure) no worker may be left running."""
    cli = CliProxy(args)
    with cli:
        assert cli.process is not None
        pids = set(worker_pids(cli).values())
        assert len(pids) == 2 and children(cli.process.pid) == pids
        try:
            yield cli
        finally:
            cli.stop()
            pids |= set(worker_pids(cli).values())
            for pid in pids:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
                    pytest.fail(f"worker pid {pid} outlived the supervisor")


def test_two_workers_share_the_connections_and_the_metrics_add_up(mariadb: MariaDBServer, pki: TestPki) -> None:
    with running(_args(mariadb, pki)) as cli:
        port = cli.port()
        held = [connect(port) for _ in range(10)]
        body = scrape(cli)
        assert metric(body, 'tlsproxy_connections_active{route="default"}') == 10  # summed over both workers
        assert metric(body, "tlsproxy_workers_running") == 2
        for connection in held:
            connection.close()
        for _ in range(30):
            with connect(port) as connection, connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        per_worker = served_by_worker(cli, 40)
        assert sum(per_worker.values()) == 40
        assert set(per_worker) == {0, 1} and min(per_worker.values()) > 0, per_worker
        body = scrape(cli)
        assert metric(body, 'tlsproxy_connections_accepted_total{route="default"}') == 40
        assert metric(body, 'tlsproxy_connections_closed_total{outcome="ok",route="default"}') == 40
        assert metric(body, 'tlsproxy_connections_active{route="default"}') == 0
        assert metric(body, 'tlsproxy_handshake_duration_seconds_count{phase="total",route="default"}') == 40
        assert metric(body, 'tlsproxy_handshake_duration_seconds_bucket{le="+Inf",phase="total",route="default"}') == 40
        assert metric(body, 'tlsproxy_authentications_total{plugin="mysql_native_password",route="default"}') == 40
        assert [line for line in body.splitlines() if line.startswith("tlsproxy_build_info{")][0].endswith(" 1.0")
        assert http(cli.admin_address, "/readiness") == (200, "ready\n")  # type: ignore[arg-type]

        assert cli.process is not None
        cli.process.send_signal(signal.SIGHUP)  # passed on to every worker
        assert wait_for(lambda: 'tlsproxy_config_reloads_total{result="ok"} 2.0' in scrape(cli), 10)


def test_sigterm_drains_every_worker_while_a_transaction_is_open(mariadb: MariaDBServer, pki: TestPki) -> None:
    with running(_args(mariadb, pki, "--shutdown-grace", "20")) as cli:
        assert cli.process is not None and cli.admin_address is not None
        port, pids = cli.port(), set(worker_pids(cli).values())
        connection = connect(port, database=TEST_DATABASE, autocommit=False)
        with connection.cursor() as cursor:
            cursor.execute("CREATE TABLE IF NOT EXISTS workers_drain (id INT PRIMARY KEY)")
            cursor.execute("DELETE FROM workers_drain")
            connection.commit()
            cursor.execute("INSERT INTO workers_drain VALUES (1)")
            started = time.monotonic()
            cli.process.send_signal(signal.SIGTERM)
            assert wait_for(lambda: http(cli.admin_address, "/readiness")[1].startswith("not ready: draining"), 5)
            time.sleep(0.3)
            for _ in range(10):  # whichever worker the kernel would pick: nobody accepts
                with pytest.raises(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
            # the idle worker is gone; the one serving the transaction, and the supervisor, wait for it
            assert cli.process.poll() is None and sum(alive(pid) for pid in pids) == 1
            cursor.execute("INSERT INTO workers_drain VALUES (2)")
            connection.commit()
        connection.close()
        assert cli.process.wait(15) == 0
        assert time.monotonic() - started < 10, "exited once the connection closed, not after the grace period"
        assert wait_for(lambda: not any(alive(pid) for pid in pids), 5)
    direct = pymysql.connect(host="127.0.0.1", port=mariadb.port, user=NATIVE.user, password=NATIVE.password,
                             database=TEST_DATABASE, ssl={"ca": str(pki.ca)})
    with direct, direct.cursor() as cursor:
        cursor.execute("SELECT id FROM workers_drain ORDER BY id")
        assert cursor.fetchall() == ((1,), (2,))


def test_a_second_sigterm_closes_the_open_connections_at_once(mariadb: MariaDBServer, pki: TestPki) -> None:
    with running(_args(mariadb, pki, "--shutdown-grace", "30")) as cli:
        assert cli.process is not None
        held = connect(cli.port())
        cli.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        started = time.monotonic()
        cli.process.send_signal(signal.SIGTERM)
        assert cli.process.wait(10) == 0
        assert time.monotonic() - started < 5
        with pytest.raises(pymysql.err.OperationalError), held.cursor() as cursor:
            cursor.execute("SELECT 1")


def test_a_killed_worker_is_restarted_and_its_counts_are_kept(mariadb: MariaDBServer, pki: TestPki) -> None:
    with running(_args(mariadb, pki)) as cli:
        assert cli.process is not None and cli.admin_address is not None
        port = cli.port()
        for _ in range(6):
            connect(port).close()
        served_by_worker(cli, 6)
        assert metric(scrape(cli), 'tlsproxy_connections_accepted_total{route="default"}') == 6
        old = worker_pids(cli)[0]
        os.kill(old, signal.SIGKILL)
        assert wait_for(lambda: not alive(old), 5)
        status, body = http(cli.admin_address, "/readiness")
        # restarting: depending on how far the supervisor got, the dead worker did not answer its
        # readiness check, is known dead, or is starting again; never ready
        assert status == 503 and any(f"worker 0: {state}" in body
                                     for state in ("not running", "starting", "no answer")), body
        assert wait_for(lambda: worker_pids(cli)[0] != old, 15)
        assert wait_for(lambda: http(cli.admin_address, "/readiness")[0] == 200, 10)
        assert children(cli.process.pid) == set(worker_pids(cli).values())
        body = scrape(cli)
        assert metric(body, "tlsproxy_worker_restarts_total") == 1
        assert metric(body, 'tlsproxy_connections_accepted_total{route="default"}') == 6  # the dead worker's too
        for _ in range(10):
            connect(port).close()
        assert wait_for(lambda: metric(scrape(cli), 'tlsproxy_connections_accepted_total{route="default"}') == 16, 10)


def test_workers_share_one_unix_socket(mariadb: MariaDBServer, pki: TestPki, tmp_path: Path) -> None:
    path = tmp_path / "proxy.sock"
    args = ["--workers", "2", "--listen", str(path), "--unix-socket-mode", "0600",
            "--upstream", f"localhost:{mariadb.port}", "--ssl-ca", str(pki.ca), "--shutdown-grace", "5"]
    with running(args) as cli:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        held = [connect(unix_socket=str(path)) for _ in range(6)]  # both workers wait on the socket
        for connection in held:
            connection.close()
        for _ in range(24):
            with connect(unix_socket=str(path)) as connection, connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        per_worker = served_by_worker(cli, 30)
        assert sum(per_worker.values()) == 30 and set(per_worker) == {0, 1}, per_worker
        assert metric(scrape(cli), 'tlsproxy_connections_accepted_total{route="default"}') == 30
        held = connect(unix_socket=str(path), autocommit=False)
        assert cli.process is not None
        cli.process.send_signal(signal.SIGTERM)
        assert wait_for(lambda: not path.exists(), 5), "the socket file goes as the drain begins"
        with pytest.raises(OSError):
            with socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(2)
                probe.connect(str(path))
        with held.cursor() as cursor:
            cursor.execute("SELECT 2")
            assert cursor.fetchone() == (2,)
        held.close()
        assert cli.process.wait(15) == 0


def test_one_worker_spawns_nothing(mariadb: MariaDBServer, pki: TestPki) -> None:
    args = ["--workers", "1", "--listen", "127.0.0.1:0", "--upstream", f"localhost:{mariadb.port}",
            "--ssl-ca", str(pki.ca)]
    with CliProxy(args) as cli:
        assert cli.process is not None
        connect(cli.port()).close()
        assert children(cli.process.pid) == set()
        assert "tlsproxy_workers" not in scrape(cli)
        assert not any("[worker" in line for line in cli.output)


# ---- the auth RSA key: one for every worker ------------------------------------------------------

SHA256 = PeerAccount("sha256user", "Sha256-pw-b92e11", "sha256_password")


def test_every_worker_decrypts_with_the_key_a_client_fetched_from_another(pki: TestPki) -> None:
    """sha256_password without TLS: the client encrypts the password with the proxy's public key. It
    fetches the key once and reuses it (PyMySQL's server_public_key) on connections that any worker
    may serve; with a key per worker about half of them would fail with auth_rsa_failed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    with PeerThread(accounts=[SHA256], ssl_context=context) as peer:
        args = ["--workers", "2", "--listen", "127.0.0.1:0", "--upstream", f"localhost:{peer.port}",
                "--ssl-ca", str(pki.ca)]
        with running(args) as cli:
            login = {"host": "127.0.0.1", "port": cli.port(), "user": SHA256.user, "password": SHA256.password,
                     "ssl_disabled": True, "connect_timeout": 10}
            first = pymysql.connect(**login)
            key = first.server_public_key
            first.close()
            assert key and key.startswith(b"-----BEGIN PUBLIC KEY-----")
            assert key != peer.peer.public_key_pem
            for _ in range(16):
                connection = pymysql.connect(**login, server_public_key=key)
                assert connection.server_public_key == key
                connection.close()
            per_worker = served_by_worker(cli, 17)
            assert sum(per_worker.values()) == 17 and set(per_worker) == {0, 1}, per_worker
