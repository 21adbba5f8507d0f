"""The upstream pool leaves no reference cycle behind: with the garbage collector off, only reference
counting frees what a connection used, and after many clients (some of them finding the pool full) no
more pooled connections, sessions or upstream TLS transports are alive than the pool holds. A cycle
(a pooled connection and its parked protocol pointing at each other) would keep each upstream
transport, and through its last protocol the whole session, until a full collection (bench soak
--upstream-pool: 44 MiB more RSS after the run, and growing)."""

from __future__ import annotations

import collections
import dataclasses
import gc
from typing import Iterator

import pymysql
import pytest

from tests.conftest import NATIVE
from tests.support.pki import TestPki
from tests.support.proxy import ProxyThread, make_route, metric_value, wait_for
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = pytest.mark.integration

POOL = 2
CLIENTS, ROUNDS = 3, 6


def alive() -> dict[str, int]:
    """Live objects of the pool's, the proxy's and the event loop's classes for a connection's legs."""
    watched = {"tlsproxy.upstream_pool.PooledUpstream", "tlsproxy.upstream_pool._ParkedProtocol",
               "tlsproxy.session.Session", "tlsproxy.upstream.UpstreamSide", "uvloop.loop.SSLProtocol",
               "asyncio.sslproto.SSLProtocol"}
    counts = collections.Counter(f"{type(item).__module__}.{type(item).__qualname__}" for item in gc.get_objects())
    return {name: counts[name] for name in sorted(watched)}


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_no_cycle_keeps_a_used_upstream_alive(mariadb: MariaDBServer, pki: TestPki, event_loop_name: str,
                                              no_gc: None) -> None:
    route = dataclasses.replace(make_route(mariadb.port, ca_file=pki.ca, name="pool"), upstream_pool=POOL)
    with ProxyThread(route, event_loop=event_loop_name) as proxy:
        for _ in range(ROUNDS):  # three clients at once, then all quit: two parked, one finds the pool full
            clients = [pymysql.connect(host="127.0.0.1", port=proxy.port, user=NATIVE.user, password=NATIVE.password,
                                       ssl_disabled=True, connect_timeout=10) for _ in range(CLIENTS)]
            for client in clients:
                client.cursor().execute("SELECT 1")
            for client in clients:
                client.close()
            assert wait_for(lambda: len(proxy.proxy.listeners[0].runtime.upstream_pool) == POOL, 5)  # type: ignore[union-attr]

        def events(outcome: str) -> float:
            return metric_value(proxy, "tlsproxy_upstream_pool_events_total", route="pool", outcome=outcome)

        assert events("reused") == POOL * (ROUNDS - 1) and events("full") == ROUNDS
        # the session that found the pool full may still be waiting for the server to close after COM_QUIT
        assert wait_for(lambda: max(alive().values()) <= POOL, 5), alive()
