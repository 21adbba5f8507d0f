"""A closed connection is freed by reference counting, not left in a reference cycle for a full garbage
collection to find: Python triggers collections by counts of Python objects, and a connection is few of
them but holds about 100 KiB of native memory (TLS objects, the event loop's 256 KiB read buffer). The
2026-12-01 soak showed what a cycle costs: 182 MB growing to 526 MB at a steady 2,000 connections."""

from __future__ import annotations

import gc
from collections import Counter

import pymysql
import pytest

from tests.conftest import NATIVE
from tests.support.pki import TestPki
from tests.support.proxy import ProxyThread, make_route
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = pytest.mark.integration

WATCHED = ("tlsproxy", "uvloop", "ssl", "_ssl", "asyncio.sslproto")


def connect_query_close(port: int) -> None:
    connection = pymysql.connect(host="127.0.0.1", port=port, user=NATIVE.user, password=NATIVE.password,
                                 ssl_disabled=True, connect_timeout=10)
    with connection.cursor() as cursor:
        cursor.execute("SELECT REPEAT('x', 100000)")
        assert len(cursor.fetchone()[0]) == 100000
    connection.close()


def test_closed_connections_leave_no_reference_cycles(mariadb: MariaDBServer, pki: TestPki,
                                                      event_loop_name: str) -> None:
    with ProxyThread(make_route(mariadb.port, ca_file=pki.ca), event_loop=event_loop_name) as proxy:
        connect_query_close(proxy.port)  # warm up: imports, caches, the loop's own objects
        gc.collect()
        gc.disable()
        try:
            for _ in range(20):
                connect_query_close(proxy.port)
            deadline_checks = 0
            while proxy.active_connections() and deadline_checks < 250:
                deadline_checks += 1
                proxy.call(lambda: None)
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            cyclic = Counter(type(obj).__module__ + "." + type(obj).__qualname__ for obj in gc.garbage
                             if type(obj).__module__.startswith(WATCHED))
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert not cyclic, cyclic.most_common(10)
