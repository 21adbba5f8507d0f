"""PrewarmPool.take without sockets: only live connections younger than prewarm_max_age are handed out,
whatever the expiry timers did (a busy loop can run them late)."""

from __future__ import annotations

import dataclasses
import time

from tlsproxy.config import Route, TcpAddress
from tlsproxy.prewarm import PrewarmPool, WarmUpstream


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def is_closing(self) -> bool:
        return self.aborted

    def set_protocol(self, protocol: object) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


class FakeProtocol:
    dead = False


def warm(age: float, *, dead: bool = False) -> WarmUpstream:
    protocol = FakeProtocol()
    protocol.dead = dead
    return WarmUpstream(FakeTransport(), protocol, b"greeting", b"ssl-request",  # type: ignore[arg-type]
                        connected_at=time.monotonic() - age)


def pool(max_age: float = 1.0) -> PrewarmPool:
    route = Route(name="p", listen=TcpAddress("127.0.0.1", 0), upstream=TcpAddress("localhost", 3306))
    return PrewarmPool(dataclasses.replace(route, prewarm=3, prewarm_max_age=max_age), None)  # type: ignore[arg-type]


def test_old_and_dead_connections_are_closed_not_handed_out() -> None:
    p = pool(max_age=1.0)
    old, dead, young = warm(1.5), warm(0.1, dead=True), warm(0.2)
    p._ready.extend([old, dead, young])
    assert p.take() is young
    assert old.transport.aborted and dead.transport.aborted  # type: ignore[attr-defined]
    assert not young.transport.aborted  # type: ignore[attr-defined]
    assert p.take() is None and len(p) == 0


def test_a_connection_exactly_at_its_age_is_not_handed_out() -> None:
    p = pool(max_age=0.5)
    p._ready.append(warm(0.5))
    assert p.take() is None


def test_nothing_is_prewarmed_before_a_client_taught_the_ssl_request() -> None:
    p = pool()
    assert p.learned_ssl_request is None
    assert p.take() is None and not p._warming
