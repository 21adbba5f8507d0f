"""Certificate rotation: new TLS contexts from changed files (on disk or SIGHUP) for new handshakes,
open connections untouched, a bad new file keeps the old contexts."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pymysql
import pytest

from tests.conftest import NATIVE
from tests.support.pki import TestPki
from tests.support.proxy import CliProxy, ProxyThread, make_route, wait_for
from tlsproxy.config import ProxyConfig
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = pytest.mark.integration


def connect(port: int) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=port, user=NATIVE.user, password=NATIVE.password,
                           ssl_disabled=True, connect_timeout=10)


def ssl_cipher(connection: pymysql.Connection) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        return cursor.fetchone()[1]


def replace_file(path: Path, data: bytes) -> None:
    """As a Secret update does: a new file moved into place (new inode)."""
    staged = path.with_suffix(".new")
    staged.write_bytes(data)
    staged.replace(path)


def reloads(proxy: ProxyThread, result: str) -> float:
    registry = proxy.proxy.metrics.registry  # type: ignore[union-attr]
    return proxy.call(lambda: registry.get_sample_value("tlsproxy_config_reloads_total", {"result": result})) or 0.0


def test_ca_rotation_on_disk_with_a_connection_held_open(mariadb: MariaDBServer, pki: TestPki, tmp_path: Path,
                                                         event_loop_name: str) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki.ca.read_bytes())
    route = make_route(mariadb.port, ca_file=ca_file)
    config = ProxyConfig(routes=(route,), tls_files_check_interval=0.1, admin_listen=None)
    with ProxyThread(config, event_loop=event_loop_name) as proxy:
        held = connect(proxy.port)
        assert ssl_cipher(held)

        replace_file(ca_file, pki.other_ca.read_bytes())  # a CA that does not sign the server
        assert wait_for(lambda: reloads(proxy, "ok") == 1)
        with pytest.raises(pymysql.err.OperationalError) as refused:
            connect(proxy.port)
        assert "certificate verify failed" in refused.value.args[1]
        assert ssl_cipher(held), "the open connection keeps its TLS session"

        replace_file(ca_file, pki.other_ca.read_bytes() + pki.ca.read_bytes())  # the new bundle: both CAs
        assert wait_for(lambda: reloads(proxy, "ok") == 2)
        fresh = connect(proxy.port)
        assert ssl_cipher(fresh) and ssl_cipher(held)
        fresh.close()
        held.close()


def test_a_bad_new_file_keeps_the_old_context(mariadb: MariaDBServer, pki: TestPki, tmp_path: Path, caplog) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki.ca.read_bytes())
    config = ProxyConfig(routes=(make_route(mariadb.port, ca_file=ca_file),), tls_files_check_interval=0.1,
                         admin_listen=None)
    with ProxyThread(config) as proxy:
        replace_file(ca_file, b"this is not a certificate\n")
        assert wait_for(lambda: reloads(proxy, "error") == 1)
        assert ssl_cipher(connect(proxy.port)), "still served with the previous CA"
    assert any("TLS reload" in r.getMessage() and "keeping the previous" in r.getMessage() for r in caplog.records)


def test_sighup_reloads(mariadb: MariaDBServer, pki: TestPki, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki.other_ca.read_bytes())
    args = ["--listen", "127.0.0.1:0", "--upstream", f"localhost:{mariadb.port}", "--ssl-ca", str(ca_file),
            "--tls-files-check-interval", "0"]
    with CliProxy(args) as cli:
        with pytest.raises(pymysql.err.OperationalError):
            connect(cli.port())
        ca_file.write_bytes(pki.ca.read_bytes())
        time.sleep(0.3)
        with pytest.raises(pymysql.err.OperationalError):
            connect(cli.port())  # no watcher: nothing changes until SIGHUP
        assert cli.process is not None
        cli.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: any("TLS reload (SIGHUP)" in line for line in cli.output))
        assert ssl_cipher(connect(cli.port()))
