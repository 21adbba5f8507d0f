"""Real clients against the proxy (TLS off on their side): the error each one reports, and helpers
that check a refusal and what crossed the upstream leg."""

from __future__ import annotations

import re
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable

import pymysql
import pytest

from tests.conftest import NATIVE, Account
from tests.support.proxy import ProxyThread
from tests.support.wire import RecordingRelay
from tlsproxy.config import Route

CLIENTS = ("mariadb", "pymysql", "connector")


@dataclass
class ClientError:
    code: int
    message: str
    seconds: float


def client_error(client: str, port: int, account: Account) -> ClientError:
    """Connect with `client` (TLS off on its side) and return the error it reports."""
    started = time.monotonic()
    if client == "mariadb":
        result = subprocess.run(
            ["mariadb", "--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", "-P", str(port), "--skip-ssl",
             f"-u{account.user}", f"-p{account.password}", "-e", "SELECT 1"],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode != 0, result.stdout
        match = re.match(r"ERROR (\d+) \(\w+\)(?: at line \d+)?: (.*)", result.stderr.strip())
        assert match, result.stderr
        return ClientError(int(match.group(1)), match.group(2), time.monotonic() - started)
    if client == "pymysql":
        with pytest.raises(pymysql.err.MySQLError) as raised:
            pymysql.connect(host="127.0.0.1", port=port, user=account.user, password=account.password,
                            ssl_disabled=True, connect_timeout=30)
        code, message = raised.value.args[0], raised.value.args[1]
        return ClientError(code, message, time.monotonic() - started)
    import mysql.connector

    with pytest.raises(mysql.connector.Error) as raised:
        mysql.connector.connect(host="127.0.0.1", port=port, user=account.user, password=account.password,
                                ssl_disabled=True, use_pure=True, connection_timeout=30)
    return ClientError(raised.value.errno, raised.value.msg, time.monotonic() - started)


def assert_refused(port: int, expected: str, *, code: int = 1043, account: Account = NATIVE,
                   within: float = 5.0, exact: bool = False) -> None:
    """Every client is refused with `code` and a message holding `expected` (or equal to it, `exact`)."""
    for client in CLIENTS:
        error = client_error(client, port, account)
        assert error.code == code, (client, error)
        assert error.message.startswith("tlsproxy: "), (client, error)
        if exact:
            assert error.message == expected, (client, error)
        assert expected in error.message, (client, error)
        assert error.seconds < within, (client, error)


def through_recording_relay(upstream_port: int, route_for: Callable[[int], Route],
                            check: Callable[[int], None], event_loop: str = "uvloop") -> RecordingRelay:
    """Run `check(proxy_port)` with a recording relay between the proxy and the upstream."""
    with ExitStack() as stack:
        relay = stack.enter_context(RecordingRelay(upstream_port))
        proxy = stack.enter_context(ProxyThread(route_for(relay.port), event_loop=event_loop))
        check(proxy.port)
    return relay


def assert_no_credentials_in_plaintext(relay: RecordingRelay, account: Account) -> None:
    assert account.user.encode() not in relay.to_server
    assert account.password.encode() not in relay.to_server
