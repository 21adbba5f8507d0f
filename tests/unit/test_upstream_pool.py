"""UpstreamPool without sockets: fake transports stand for parked upstream connections.

Each test drives the pool as a session and the server would: `park` a transport, feed the server's
answer to the parked protocol, `take` it for a client. Expected bytes are spelled out from the MySQL
layouts (COM_RESET_CONNECTION is the 1-byte command 0x1F at seq 0, COM_QUIT 0x01), never taken from
the module under test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from typing import Any, Awaitable, Callable

import pytest

from tlsproxy import upstream_pool
from tlsproxy.config import Route, TcpAddress
from tlsproxy.metrics import ProxyMetrics
from tlsproxy.upstream_pool import PooledUpstream, UpstreamPool

RESET = bytes.fromhex("010000001f")  # length 1, seq 0, COM_RESET_CONNECTION
QUIT = bytes.fromhex("0100000001")  # length 1, seq 0, COM_QUIT
OK_AT_1 = bytes.fromhex("0700000100000002000000")  # OK: 0 rows, id 0, status AUTOCOMMIT, 0 warnings
OK_AT_2 = bytes.fromhex("0700000200000002000000")
ERR_PAYLOAD = b"\xff" + (1047).to_bytes(2, "little") + b"#08S01Unknown command"  # a server without the command
ERR_AT_1 = len(ERR_PAYLOAD).to_bytes(3, "little") + b"\x01" + ERR_PAYLOAD

CONNECT_WITH_DB = 0x08
FOUND_ROWS = 0x02


def ssl_request(flags: int = 0x01AAA20D) -> bytes:
    """A 32-byte SSLRequest: capabilities, max packet size, charset 45, 23 zero bytes."""
    return flags.to_bytes(4, "little") + (16 << 20).to_bytes(4, "little") + bytes([45]) + bytes(23)


class FakeTransport(asyncio.Transport):
    """Records what the pool does to one upstream leg."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.protocol: Any = None
        self.resumed = 0

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def resume_reading(self) -> None:
        self.resumed += 1

    def take(self) -> bytes:
        data, self.written = bytes(self.written), bytearray()
        return data

    def server_sends(self, data: bytes) -> None:
        view = self.protocol.get_buffer(len(data))
        view[: len(data)] = data
        self.protocol.buffer_updated(len(data))

    def connection_lost(self) -> None:
        """The transport is gone (after close, or the peer vanished)."""
        self.closed = True
        self.protocol.connection_lost(None)


def in_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (the pool's timers take the running loop)."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))
    return run


class Pool:
    def __init__(self, size: int = 2, idle_timeout: float = 30.0) -> None:
        route = Route(name="p", listen=TcpAddress("127.0.0.1", 0), upstream=TcpAddress("db.internal", 3306))
        self.metrics = ProxyMetrics()
        self.pool = UpstreamPool(dataclasses.replace(route, upstream_pool=size,
                                                     upstream_pool_idle_timeout=idle_timeout), self.metrics)

    def events(self, outcome: str) -> float:
        found = self.metrics.registry.get_sample_value(
            "tlsproxy_upstream_pool_events_total", {"route": "p", "outcome": outcome})
        return 0.0 if found is None else found

    def park(self, request: bytes | None = None, *, greeting: bytes = b"greeting", uses: int = 1) -> FakeTransport:
        transport = FakeTransport()
        assert self.pool.park(transport, greeting, request or ssl_request(), uses=uses)
        return transport

    def parked(self, request: bytes | None = None, *, greeting: bytes = b"greeting") -> FakeTransport:
        transport = self.park(request, greeting=greeting)
        assert transport.take() == RESET
        transport.server_sends(OK_AT_1)
        return transport


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


# ---- park: the reset and its answer ------------------------------------------------------------------


@in_loop
async def test_park_sends_exactly_com_reset_connection_and_keeps_the_connection_after_an_ok_at_seq_1() -> None:
    p = Pool()
    transport = p.park(uses=3)
    assert transport.take() == RESET
    assert transport.resumed == 1  # reading resumed: the client's backpressure may have paused it
    assert (len(p.pool), p.pool.resetting) == (0, 1)  # not handed out before the OK
    assert p.pool.take() is None
    transport.server_sends(OK_AT_1)
    assert (len(p.pool), p.pool.resetting) == (1, 0)
    assert p.events("parked") == 1
    taken = p.pool.take()
    assert taken is not None and taken.transport is transport and taken.uses == 3
    assert taken.greeting_payload == b"greeting" and not transport.closed and transport.take() == b""


@in_loop
async def test_an_ok_that_arrives_in_pieces_parks_the_connection() -> None:
    p = Pool()
    transport = p.park()
    for byte in OK_AT_1:
        assert len(p.pool) == 0
        transport.server_sends(bytes([byte]))
    assert len(p.pool) == 1 and p.events("parked") == 1


@pytest.mark.parametrize("answer", [
    pytest.param(ERR_AT_1, id="err"),
    pytest.param(OK_AT_2, id="ok-at-seq-2"),
    pytest.param(bytes.fromhex("05000001fe00000200"), id="eof-packet"),
    pytest.param(bytes.fromhex("0100000100"), id="a-1-byte-ok"),  # no OK packet: status flags are missing
    pytest.param(bytes.fromhex("05000001") + b"hello", id="garbage-frame"),
    pytest.param(bytes.fromhex("ffffff01") + b"x", id="oversized-frame"),
    pytest.param(OK_AT_1 + b"\x00", id="a-byte-after-the-ok"),
    pytest.param(OK_AT_1 + OK_AT_2, id="a-packet-after-the-ok"),
])
@in_loop
async def test_any_other_answer_to_the_reset_closes_the_connection_with_com_quit(answer: bytes) -> None:
    p = Pool()
    transport = p.park()
    transport.take()
    transport.server_sends(answer)
    assert transport.closed and transport.written == QUIT
    assert (len(p.pool), p.pool.resetting) == (0, 0)
    assert p.events("reset_failed") == 1 and p.events("parked") == 0
    assert p.pool.take() is None


@in_loop
async def test_no_answer_to_the_reset_within_the_timeout_closes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream_pool, "RESET_TIMEOUT_SECONDS", 0.05)
    p = Pool()
    transport = p.park()
    transport.take()
    await wait_until(lambda: transport.closed)
    assert transport.written == QUIT and p.events("reset_failed") == 1 and p.pool.resetting == 0
    assert len(p.pool) == 0 and p.events("parked") == 0


@pytest.mark.parametrize("how", ["eof", "connection_lost"])
@in_loop
async def test_the_server_closing_during_the_reset_is_reset_failed(how: str) -> None:
    p = Pool()
    transport = p.park()
    transport.take()
    if how == "eof":
        assert transport.protocol.eof_received() is False
    else:
        transport.connection_lost()
    assert transport.closed and p.events("reset_failed") == 1 and p.pool.resetting == 0
    assert p.events("closed_by_server") == 0


@in_loop
async def test_a_full_pool_refuses_and_leaves_the_transport_alone() -> None:
    p = Pool(size=2)
    first = p.parked()
    second = p.park()  # still resetting: it takes room too
    transport = FakeTransport()
    assert not p.pool.park(transport, b"greeting", ssl_request(), uses=1)
    assert transport.written == b"" and not transport.closed and transport.protocol is None
    assert p.events("full") == 1
    second.server_sends(OK_AT_1)
    assert len(p.pool) == 2
    assert not p.pool.park(FakeTransport(), b"greeting", ssl_request(), uses=1)
    assert p.events("full") == 2
    assert not first.closed and not second.closed


@in_loop
async def test_a_closing_transport_is_not_parked() -> None:
    p = Pool()
    transport = FakeTransport()
    transport.closed = True
    assert not p.pool.park(transport, b"greeting", ssl_request(), uses=1)
    assert transport.written == b"" and p.events("full") == 0


# ---- take ---------------------------------------------------------------------------------------------


@in_loop
async def test_take_returns_the_newest_and_never_the_same_connection_twice() -> None:
    p = Pool(size=3)
    transports = [p.parked(greeting=bytes([i])) for i in range(3)]
    taken = [p.pool.take() for _ in range(4)]
    assert [t.transport for t in taken[:3]] == transports[::-1]  # type: ignore[union-attr]
    assert taken[3] is None and len(p.pool) == 0


@in_loop
async def test_take_prefers_the_given_ssl_request_ignoring_connect_with_db() -> None:
    p = Pool(size=3)
    plain = ssl_request(0x01AAA205)
    found_rows = ssl_request(0x01AAA205 | FOUND_ROWS)
    older_fit = p.parked(plain, greeting=b"older")
    newer_fit = p.parked(ssl_request(0x01AAA205 | CONNECT_WITH_DB), greeting=b"newer")
    other = p.parked(found_rows, greeting=b"other")
    # the newest is `other`, but a client with `plain` (and a database this time) fits the two others
    first = p.pool.take(ssl_request(0x01AAA205 | CONNECT_WITH_DB))
    assert first is not None and first.transport is newer_fit
    second = p.pool.take(plain)
    assert second is not None and second.transport is older_fit
    third = p.pool.take(plain)  # nothing fits any more: the newest of the rest
    assert third is not None and third.transport is other
    assert p.pool.take(plain) is None


@in_loop
async def test_take_matching_hands_out_only_a_fitting_connection() -> None:
    p = Pool(size=2)
    p.parked(ssl_request(0x01AAA205))
    assert p.pool.take_matching(ssl_request(0x01AAA205 | FOUND_ROWS)) is None
    assert len(p.pool) == 1  # untouched
    fit = p.pool.take_matching(ssl_request(0x01AAA205 | CONNECT_WITH_DB))
    assert fit is not None and len(p.pool) == 0


@in_loop
async def test_take_skips_a_connection_whose_transport_is_closing() -> None:
    p = Pool(size=2)
    older = p.parked(greeting=b"older")
    newer = p.parked(greeting=b"newer")
    newer.closed = True  # closed under the pool, no callback yet
    taken = p.pool.take()
    assert taken is not None and taken.transport is older
    assert p.events("closed_by_server") == 1 and len(p.pool) == 0


@in_loop
async def test_a_taken_connection_has_no_timer_left() -> None:
    p = Pool(idle_timeout=0.05)
    transport = p.parked()
    taken = p.pool.take()
    assert taken is not None
    await asyncio.sleep(0.15)
    assert not transport.closed and p.events("expired") == 0


# ---- while parked ------------------------------------------------------------------------------------


@in_loop
async def test_data_from_the_server_while_parked_drops_the_connection_at_once() -> None:
    p = Pool()
    transport = p.parked()
    # what MySQL 8.0.24+ sends before closing an idle connection (wait_timeout): an unsolicited ERR 4031
    transport.server_sends(bytes.fromhex("1d000000ff9f0f") + b"#HY000The client was disconnected")
    assert len(p.pool) == 0 and transport.closed and transport.written == QUIT
    assert p.events("closed_by_server") == 1 and p.pool.take() is None


@pytest.mark.parametrize("how", ["eof", "connection_lost"])
@in_loop
async def test_eof_while_parked_is_closed_by_server(how: str) -> None:
    p = Pool()
    transport = p.parked()
    if how == "eof":
        assert transport.protocol.eof_received() is False
    else:
        transport.connection_lost()
    assert len(p.pool) == 0 and transport.closed
    assert p.events("closed_by_server") == 1 and p.events("reset_failed") == 0


@in_loop
async def test_an_idle_connection_expires() -> None:
    p = Pool(idle_timeout=0.05)
    transport = p.parked()
    await wait_until(lambda: transport.closed)
    assert len(p.pool) == 0 and transport.written == QUIT and p.events("expired") == 1


@in_loop
async def test_a_connection_counted_once_even_when_it_is_dropped_twice() -> None:
    p = Pool()
    transport = p.parked()
    transport.server_sends(b"\x00")
    transport.connection_lost()  # the close's own callback
    assert p.events("closed_by_server") == 1


# ---- give_back and close -------------------------------------------------------------------------------


@in_loop
async def test_give_back_parks_a_taken_connection_again_and_watches_it() -> None:
    p = Pool(idle_timeout=0.1)
    transport = p.parked()
    taken = p.pool.take()
    assert taken is not None
    transport.set_protocol(object())  # a session took it over
    p.pool.give_back(taken)
    assert len(p.pool) == 1 and transport.protocol is taken.protocol
    transport.server_sends(b"\x00")  # the pool watches it again
    assert transport.closed and p.events("closed_by_server") == 1

    other = p.parked()
    taken = p.pool.take()
    assert taken is not None
    p.pool.give_back(taken)
    await wait_until(lambda: other.closed)
    assert p.events("expired") == 1


@in_loop
async def test_a_connection_given_back_still_expires_idle_timeout_after_it_was_parked() -> None:
    """Taken by a client whose SSLRequest did not fit, and given back unused: nothing reached the server,
    whose idle clock (wait_timeout) kept running, so the pool's must too."""
    p = Pool(idle_timeout=0.3)
    transport = p.parked()
    parked = asyncio.get_running_loop().time()
    await asyncio.sleep(0.2)
    taken = p.pool.take()
    assert taken is not None
    p.pool.give_back(taken)
    await wait_until(lambda: transport.closed)
    assert asyncio.get_running_loop().time() - parked < 0.45  # not 0.2 + a fresh 0.3
    assert p.events("expired") == 1


@in_loop
async def test_give_back_of_a_closing_connection_or_after_close_quits_it() -> None:
    p = Pool()
    transport = p.parked()
    taken = p.pool.take()
    assert taken is not None
    p.pool.close()
    p.pool.give_back(taken)
    assert transport.closed and transport.written == QUIT and len(p.pool) == 0


@in_loop
async def test_close_quits_every_parked_connection_and_stops_parking() -> None:
    p = Pool(size=3)
    parked = [p.parked(), p.parked()]
    resetting = p.park()
    resetting.take()
    p.pool.close()
    for transport in parked:
        assert transport.closed and transport.written == QUIT
    assert len(p.pool) == 0
    # The one whose reset is under way quits too, behind its reset (the server answers both, then closes).
    assert resetting.closed and resetting.written == QUIT and p.pool.resetting == 0
    late = FakeTransport()
    assert not p.pool.park(late, b"greeting", ssl_request(), uses=1)
    assert late.written == b"" and not late.closed
    waiting = asyncio.ensure_future(p.pool.wait_closed(5))
    await asyncio.sleep(0)
    assert not waiting.done()  # until the connections are gone
    for transport in (*parked, resetting):
        transport.protocol.connection_lost(None)  # the _Closing protocol
    await asyncio.wait_for(waiting, 1)


def test_a_pooled_upstream_closed_twice_quits_once() -> None:
    async def run() -> None:
        transport = FakeTransport()
        connection = PooledUpstream(transport, b"g", ssl_request())  # type: ignore[arg-type]
        assert connection.close() is not None
        assert connection.close() is None
        assert transport.written == QUIT

    asyncio.run(run())
