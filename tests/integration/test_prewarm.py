"""Prewarmed upstream connections against the real MariaDB: handed out while young, never past their age,
a client with other capabilities still logs in, dead and unverifiable ones are never used.

Which upstream connection a client got is read from the server: `CONNECTION_ID()` through the proxy
against the connection ids in the prewarmed connections' greetings.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import pymysql
import pytest

from tests.conftest import ED25519, NATIVE, Account
from tests.integration.test_clients import mariadb_cli
from tests.support.pki import TestPki
from tests.support.proxy import ProxyThread, make_route, metric_value as value, wait_for
from tlsproxy.demo.mariadb import MariaDBServer
from tlsproxy.mysql.messages import parse_initial_handshake

pytestmark = pytest.mark.integration


def handed(proxy: ProxyThread, outcome: str) -> float:
    return value(proxy, "tlsproxy_prewarm_connections_total", route="p", outcome=outcome)


def connection_id(port: int, account: Account = NATIVE) -> int:
    connection = pymysql.connect(host="127.0.0.1", port=port, user=account.user, password=account.password,
                                 ssl_disabled=True, connect_timeout=10)
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID(), @@ssl_cipher IS NOT NULL")
        row = cursor.fetchone()
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        assert cursor.fetchone()[1].startswith("TLSv1."), "the upstream session is TLS"
        return int(row[0])


def ready_ids(proxy: ProxyThread) -> list[int]:
    """Connection ids of the prewarmed connections ready now."""
    def read() -> list[int]:
        pool = proxy.proxy.listeners[0].runtime.prewarm  # type: ignore[union-attr]
        return [parse_initial_handshake(warm.greeting_payload).connection_id for warm in pool._ready]
    return proxy.call(read)


def prewarmed_proxy(mariadb: MariaDBServer, pki: TestPki, *, event_loop: str = "uvloop", size: int = 2,
                    max_age: float = 5.0, **tls: object) -> ProxyThread:
    route = make_route(mariadb.port, ca_file=tls.pop("ca_file", pki.ca), name="p", **tls)
    return ProxyThread(dataclasses.replace(route, prewarm=size, prewarm_max_age=max_age), event_loop=event_loop)


def test_the_next_client_gets_a_prewarmed_connection(mariadb: MariaDBServer, pki: TestPki,
                                                     event_loop_name: str) -> None:
    with prewarmed_proxy(mariadb, pki, event_loop=event_loop_name) as proxy:
        assert ready_ids(proxy) == []  # nothing before a client taught the pool its SSLRequest
        first = connection_id(proxy.port)
        assert wait_for(lambda: len(ready_ids(proxy)) == 2, 10)
        warm = ready_ids(proxy)
        assert first not in warm
        second = connection_id(proxy.port)
        assert second == warm[0], (second, warm)
        assert handed(proxy, "handed_out") == 1
        assert wait_for(lambda: len(ready_ids(proxy)) == 2, 10)  # refilled
        warm = ready_ids(proxy)
        assert connection_id(proxy.port) == warm[0]
        assert handed(proxy, "handed_out") == 2
        assert value(proxy, "tlsproxy_authentications_total", route="p", plugin="mysql_native_password") == 3


def test_a_connection_past_its_age_is_never_handed_out(mariadb: MariaDBServer, pki: TestPki) -> None:
    with prewarmed_proxy(mariadb, pki, max_age=0.4) as proxy:
        connection_id(proxy.port)
        assert wait_for(lambda: len(ready_ids(proxy)) == 2, 10)
        old = set(ready_ids(proxy))
        time.sleep(0.6)
        assert wait_for(lambda: handed(proxy, "expired") >= 2, 10)
        used = {connection_id(proxy.port) for _ in range(3)}
        assert not used & old, (used, old)
        assert handed(proxy, "expired") >= 2


def test_a_client_with_other_capabilities_still_logs_in(mariadb: MariaDBServer, pki: TestPki) -> None:
    """PyMySQL taught the pool its SSLRequest; the mariadb CLI sends another one. It gets a fresh upstream
    and answers that one's nonce (AuthSwitchRequest): logged in, right or wrong password as usual."""
    with prewarmed_proxy(mariadb, pki, size=1) as proxy:
        connection_id(proxy.port)
        assert wait_for(lambda: len(ready_ids(proxy)) == 1, 10)
        warm = ready_ids(proxy)
        result = mariadb_cli(proxy.port, NATIVE.user, NATIVE.password, "SELECT CONNECTION_ID()")
        assert result.returncode == 0, result.stderr
        assert int(result.stdout.strip()) not in warm
        assert handed(proxy, "mismatch") == 1
        wrong = mariadb_cli(proxy.port, NATIVE.user, "wrong", "SELECT 1")
        assert wrong.returncode == 1 and "Access denied" in wrong.stderr, wrong.stderr
        # the pool now prewarms with the CLI's SSLRequest: the CLI's next connection takes it
        assert wait_for(lambda: len(ready_ids(proxy)) == 1, 10)
        warm = ready_ids(proxy)
        again = mariadb_cli(proxy.port, NATIVE.user, NATIVE.password, "SELECT CONNECTION_ID()")
        assert again.returncode == 0 and int(again.stdout.strip()) == warm[0], (again.stdout, warm)


def test_ed25519_through_a_replaced_connection(mariadb: MariaDBServer, pki: TestPki) -> None:
    with prewarmed_proxy(mariadb, pki, size=1) as proxy:
        connection_id(proxy.port)
        assert wait_for(lambda: len(ready_ids(proxy)) == 1, 10)
        result = mariadb_cli(proxy.port, ED25519.user, ED25519.password, "SELECT CURRENT_USER()")
        assert result.returncode == 0 and result.stdout.strip() == f"{ED25519.user}@%", result.stderr
        assert handed(proxy, "mismatch") == 1


def test_a_connection_the_server_closed_is_not_handed_out(mariadb: MariaDBServer, pki: TestPki) -> None:
    with prewarmed_proxy(mariadb, pki, size=1) as proxy:
        connection_id(proxy.port)
        assert wait_for(lambda: len(ready_ids(proxy)) == 1, 10)
        (victim,) = ready_ids(proxy)
        mariadb.sql(f"KILL {victim}")
        assert wait_for(lambda: victim not in ready_ids(proxy) or handed(proxy, "closed_by_server") > 0, timeout=5)
        assert connection_id(proxy.port) != victim


def test_prewarming_verifies_like_any_connection(mariadb: MariaDBServer, pki: TestPki, tmp_path: Path) -> None:
    """After a CA rotation to a CA that did not sign the server, the pool of the old context is gone,
    nothing new is prewarmed, and clients get the usual verification error."""
    ca = tmp_path / "ca.pem"
    shutil.copy(pki.ca, ca)
    with prewarmed_proxy(mariadb, pki, size=2, ca_file=ca) as proxy:
        connection_id(proxy.port)
        assert wait_for(lambda: len(ready_ids(proxy)) == 2, 10)
        shutil.copy(pki.other_ca, ca)
        assert proxy.call(lambda: proxy.proxy.reload_tls("test"))  # type: ignore[union-attr]
        assert wait_for(lambda: handed(proxy, "failed") >= 1, 10)
        assert ready_ids(proxy) == []
        with pytest.raises(pymysql.err.OperationalError) as error:
            connection_id(proxy.port)
        assert "certificate verify failed" in error.value.args[1]


def test_a_reload_closes_the_pool_and_warms_again(mariadb: MariaDBServer, pki: TestPki) -> None:
    with prewarmed_proxy(mariadb, pki, size=2) as proxy:
        connection_id(proxy.port)
        assert wait_for(lambda: len(ready_ids(proxy)) == 2, 10)
        before = set(ready_ids(proxy))
        assert proxy.call(lambda: proxy.proxy.reload_tls("test"))  # type: ignore[union-attr]
        assert wait_for(lambda: len(ready_ids(proxy)) == 2, 10)
        after = ready_ids(proxy)
        assert not before & set(after)
        assert connection_id(proxy.port) == after[0]
