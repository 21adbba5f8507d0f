"""Shared fixtures: the test PKI and real MariaDB servers with TLS, started by the tests themselves.

A server that cannot start fails the tests loudly (never a skip): CI installs mariadb-server.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.pki import TestPki, make_pki
from tlsproxy.demo.localdb import start_mariadb
from tlsproxy.demo.mariadb import MariaDBServer

os.environ.setdefault("HYPOTHESIS_PROFILE", "fast")


@dataclass(frozen=True)
class Account:
    user: str
    password: str


NATIVE = Account("native", "native-pw")  # mysql_native_password, REQUIRE SSL
SECOND = Account("second", "second-pw")  # for COM_CHANGE_USER, REQUIRE SSL
X509 = Account("x509user", "x509-pw")  # REQUIRE X509
ED25519 = Account("eduser", "ed-pw")  # client_ed25519, REQUIRE SSL
PLAIN = Account("plainuser", "plain-pw")  # no TLS requirement
TEST_DATABASE = "tlsproxy_test"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _create_accounts(server: MariaDBServer) -> None:
    server.sql(f"CREATE DATABASE {TEST_DATABASE}")
    server.sql("INSTALL SONAME 'auth_ed25519'")
    statements = [
        f"CREATE USER '{NATIVE.user}'@'%' IDENTIFIED BY '{NATIVE.password}' REQUIRE SSL",
        f"CREATE USER '{SECOND.user}'@'%' IDENTIFIED BY '{SECOND.password}' REQUIRE SSL",
        f"CREATE USER '{X509.user}'@'%' IDENTIFIED BY '{X509.password}' REQUIRE X509",
        f"CREATE USER '{ED25519.user}'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{ED25519.password}') REQUIRE SSL",
        f"CREATE USER '{PLAIN.user}'@'%' IDENTIFIED BY '{PLAIN.password}'",
    ]
    for statement in statements:
        server.sql(statement)
    for account in (NATIVE, SECOND, X509, ED25519, PLAIN):
        server.sql(f"GRANT ALL ON {TEST_DATABASE}.* TO '{account.user}'@'%'")


@contextmanager
def mariadb_with_accounts(workdir: Path, pki: TestPki) -> Iterator[MariaDBServer]:
    """A server with TLS (the test CA's certificate for localhost/127.0.0.1) and the accounts above,
    stopped at the end."""
    server = start_mariadb(workdir, ssl_ca=pki.ca, ssl_cert=pki.server_cert, ssl_key=pki.server_key)
    try:
        _create_accounts(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mariadb(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """The main server."""
    with mariadb_with_accounts(tmp_path_factory.mktemp("mariadb"), pki) as server:
        yield server


@pytest.fixture(scope="session")
def plain_mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """A server without TLS: the proxy must refuse it."""
    server = start_mariadb(tmp_path_factory.mktemp("mariadb-plain"), ssl_ca=None, ssl_cert=None, ssl_key=None)
    try:
        server.sql(f"CREATE USER '{PLAIN.user}'@'%' IDENTIFIED BY '{PLAIN.password}'")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def alt_mariadb(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """A server the negative tests restart with other certificates (see `serve_certificate`)."""
    server = start_mariadb(tmp_path_factory.mktemp("mariadb-alt"), ssl_ca=pki.ca, ssl_cert=pki.server_cert,
                           ssl_key=pki.server_key)
    try:
        server.sql(f"CREATE USER '{PLAIN.user}'@'%' IDENTIFIED BY '{PLAIN.password}'")
        yield server
    finally:
        server.stop()


def serve_certificate(server: MariaDBServer, cert: Path, key: Path, tls_version: str | None = None) -> None:
    """Restart `server` with this certificate (no-op if it already serves it)."""
    wanted_version = tls_version or "TLSv1.2,TLSv1.3"
    if server.ssl_cert == cert and server.tls_version == wanted_version:
        return
    server.restart(ssl_cert=cert, ssl_key=key, tls_version=wanted_version)


@pytest.fixture(scope="module")
def alt(alt_mariadb: MariaDBServer, pki: TestPki) -> Iterator[MariaDBServer]:
    """alt_mariadb for one test module; whatever its tests make it serve, it serves pki.server_cert with the
    default settings again afterwards."""
    yield alt_mariadb
    alt_mariadb.extra_options = {}
    serve_certificate(alt_mariadb, pki.server_cert, pki.server_key)


@pytest.fixture(params=["uvloop", "asyncio"])
def event_loop_name(request: pytest.FixtureRequest) -> str:
    return request.param
