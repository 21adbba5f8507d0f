"""Authenticated upstream connections kept for the next clients (route key `upstream_pool: N`).

Connect-per-request applications pay, for every connection, a TCP connect, a TLS handshake and a server
login upstream. With a pool, a client that leaves at a command boundary with nothing in flight does not
end its upstream connection: the session hands it here (`park`), the pool sends COM_RESET_CONNECTION
and keeps the connection only after the server's OK, so the departed client's locks, transaction,
temporary tables, prepared statements and variables are gone at once (PROTOCOL.md §6.1). The next
client gets that connection's own greeting, and its HandshakeResponse goes up as COM_CHANGE_USER: the
server still authenticates every client with its own credentials, and the proxy stores no password.

Rules:
- A connection is parked only after the server's OK to the reset; an ERR (a server without the
  command), anything else, or no answer within RESET_TIMEOUT_SECONDS closes it (`reset_failed`).
- While parked, any byte or EOF from the server (wait_timeout, KILL, a restart) drops it at once
  (`closed_by_server`); after `upstream_pool_idle_timeout` it is closed (`expired`). A closed parked
  connection gets COM_QUIT first, so the server logs a quit, not an aborted connection.
- `take` hands a connection to exactly one session and forgets it; the newest parked connection goes
  first (so a pool larger than the load shrinks by expiry), one opened with the SSLRequest the caller
  prefers if there is one (PROTOCOL.md §3.2: the capabilities are fixed at the first handshake).
- `park` refuses (`full`) when `upstream_pool` connections are parked or being reset already.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from tlsproxy.config import Route
from tlsproxy.metrics import ProxyMetrics
from tlsproxy.mysql.codec import DecodeError, FrameBuffer, encode_frame
from tlsproxy.mysql.constants import Command, PacketHeader
from tlsproxy.mysql.greeting import pool_key
from tlsproxy.mysql.messages import InitialHandshake

log = logging.getLogger(__name__)

RESET_TIMEOUT_SECONDS = 5.0
"""How long the server may take to answer COM_RESET_CONNECTION before the connection is closed."""

MIN_OK_SIZE = 7
"""0x00, affected rows and insert id (one byte each at least), status flags and warnings (two bytes each)."""
RESET_FRAME = encode_frame(0, bytes((Command.RESET_CONNECTION,)))
QUIT_FRAME = encode_frame(0, bytes((Command.QUIT,)))


class PoolEvent:
    """The values of the `outcome` label of `tlsproxy_upstream_pool_events_total`."""

    PARKED = "parked"  # the reset's OK came: the connection waits for a client
    REUSED = "reused"  # a client logged in on a parked connection (COM_CHANGE_USER OK)
    RESET_FAILED = "reset_failed"  # ERR, garbage or no answer to COM_RESET_CONNECTION
    EXPIRED = "expired"  # parked for upstream_pool_idle_timeout without a client
    CLOSED_BY_SERVER = "closed_by_server"  # the server sent bytes or closed while the connection was parked
    DENIED = "denied"  # the client's login (COM_CHANGE_USER) failed: the connection is closed
    MISMATCH = "mismatch"  # the client's SSLRequest differed from the connection's
    FULL = "full"  # a client left, but the pool had no room: closed as without a pool
    IN_FLIGHT = "in_flight"  # a client left with a command unanswered (or one the proxy cannot follow)


@dataclass(eq=False)
class PooledUpstream:
    """An authenticated, reset upstream connection and what a new client needs from it."""

    transport: asyncio.Transport
    greeting_payload: bytes
    """The server's greeting to this connection as it sent it (thread id, nonce, capabilities)."""
    ssl_request: bytes
    """The SSLRequest the connection was opened with: it fixed the capabilities and the charset."""
    greeting: InitialHandshake | None = field(repr=False, default=None)
    """`greeting_payload` parsed, when the connection was opened: a greeting never changes, so the clients
    that log in on the connection later need not parse it again (None: they do)."""
    protocol: "_ParkedProtocol" = field(repr=False, default=None)  # type: ignore[assignment]
    parked_at: float = 0.0
    uses: int = 1
    """Clients this connection has served (the first login included)."""

    def close(self) -> "asyncio.Future[None] | None":
        """Quit politely (the server logs a quit, not an aborted connection) and close; the future is done
        once the connection is gone (None: it was closing already)."""
        transport = self.transport
        if self.protocol is not None:
            self.protocol.cancel_timer()
            self.protocol = None  # type: ignore[assignment]  # no cycle with it: refcounting frees both
        if transport.is_closing():
            return None
        closing = _Closing()
        transport.set_protocol(closing)  # no callbacks into the pool any more
        try:
            transport.write(QUIT_FRAME)
        except Exception:  # pragma: no cover - a transport that broke under us
            pass
        transport.close()
        return closing.gone


class _Closing(asyncio.Protocol):
    """A pooled connection on its way out: COM_QUIT sent, the TLS close under way."""

    def __init__(self) -> None:
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gone.done():
            self.gone.set_result(None)


class _ParkedProtocol(asyncio.BufferedProtocol):
    """The upstream leg while the pool owns it: the reset's OK, then silence."""

    def __init__(self, pool: "UpstreamPool", connection: PooledUpstream) -> None:
        self._pool = pool
        self._connection = connection
        self._frames = FrameBuffer(1 << 16)
        self._buffer = memoryview(bytearray(4096))
        self.resetting = True
        self._timer: asyncio.TimerHandle | None = None

    def start_timer(self, seconds: float, callback: Callable[[], None]) -> None:
        self.cancel_timer()
        self._timer = self._pool.loop.call_later(seconds, callback)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        if not self.resetting:
            self._pool.drop(self._connection, PoolEvent.CLOSED_BY_SERVER, "the server sent data while parked")
            return
        try:
            self._frames.feed(self._buffer[:nbytes].tobytes())
            frame = self._frames.next_frame()
        except DecodeError as exc:
            self._pool.drop(self._connection, PoolEvent.RESET_FAILED, f"malformed answer to the reset: {exc}")
            return
        if frame is None:
            return
        if (frame.sequence_id == 1 and frame.payload[:1] == bytes((PacketHeader.OK,))
                and len(frame.payload) >= MIN_OK_SIZE and not len(self._frames)):
            self.resetting = False
            self._pool.reset_done(self._connection)
            return
        what = "ERR" if frame.payload[:1] == bytes((PacketHeader.ERR,)) else "an unexpected packet"
        self._pool.drop(self._connection, PoolEvent.RESET_FAILED, f"the server answered the reset with {what}")

    def eof_received(self) -> bool:
        self._gone()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    def _gone(self) -> None:
        event = PoolEvent.RESET_FAILED if self.resetting else PoolEvent.CLOSED_BY_SERVER
        self._pool.drop(self._connection, event, "the server closed the connection")


class UpstreamPool:
    def __init__(self, route: Route, metrics: ProxyMetrics | None = None) -> None:
        self.route = route
        self.size = route.upstream_pool
        self.idle_timeout = route.upstream_pool_idle_timeout
        self._metrics = metrics
        self._idle: list[PooledUpstream] = []
        """Parked connections, the newest last."""
        self._closing: set[asyncio.Future[None]] = set()
        self._resetting: set[PooledUpstream] = set()
        """Connections whose reset is under way."""
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the pool's connections live on, asked for once (each asking costs a system call)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def __len__(self) -> int:
        """Parked connections ready for a client."""
        return len(self._idle)

    @property
    def resetting(self) -> int:
        return len(self._resetting)

    # ---- what sessions call ------------------------------------------------------------------

    def park(self, transport: asyncio.Transport, greeting_payload: bytes, ssl_request: bytes, *, uses: int,
             greeting: InitialHandshake | None = None) -> bool:
        """Take over an authenticated upstream whose client left with nothing in flight: reset it, then
        keep it. False (the caller closes the connection as usual) when the pool is closed or full.
        `greeting`: `greeting_payload` parsed (`PooledUpstream.greeting`)."""
        if self._closed or transport.is_closing():
            return False
        if len(self._idle) + len(self._resetting) >= self.size:
            self.count(PoolEvent.FULL)
            return False
        connection = PooledUpstream(transport, greeting_payload, ssl_request, greeting, uses=uses)
        protocol = _ParkedProtocol(self, connection)
        connection.protocol = protocol
        transport.set_protocol(protocol)
        self._resetting.add(connection)
        transport.resume_reading()  # the client's backpressure may have paused it
        transport.write(RESET_FRAME)
        protocol.start_timer(RESET_TIMEOUT_SECONDS, lambda: self.drop(
            connection, PoolEvent.RESET_FAILED, f"no answer to the reset within {RESET_TIMEOUT_SECONDS:g}s"))
        return True

    def take(self, prefer_ssl_request: bytes | None = None) -> PooledUpstream | None:
        """A parked connection for a new client (never the same one twice), or None. The newest one
        opened with `prefer_ssl_request` if any, else the newest."""
        while self._idle:
            index = len(self._idle) - 1
            if prefer_ssl_request is not None:
                wanted = pool_key(prefer_ssl_request)
                for i in range(len(self._idle) - 1, -1, -1):
                    if pool_key(self._idle[i].ssl_request) == wanted:
                        index = i
                        break
            connection = self._idle.pop(index)
            if connection.transport.is_closing():
                self.count(PoolEvent.CLOSED_BY_SERVER)
                connection.close()
                continue
            connection.protocol.cancel_timer()
            # The session's for good: break the cycle with the parked protocol, or the transport (and,
            # through its next protocol, the whole session) would wait for a full garbage collection.
            connection.protocol = None  # type: ignore[assignment]
            return connection
        return None

    def take_matching(self, ssl_request: bytes) -> PooledUpstream | None:
        """A parked connection a client with this SSLRequest can log in on (`pool_key`), or None."""
        wanted = pool_key(ssl_request)
        if not any(pool_key(connection.ssl_request) == wanted for connection in self._idle):
            return None
        connection = self.take(ssl_request)
        if connection is not None and pool_key(connection.ssl_request) != wanted:  # pragma: no cover - just checked
            self.give_back(connection)
            return None
        return connection

    def give_back(self, connection: PooledUpstream) -> None:
        """A connection taken but not used (the client's SSLRequest did not fit): still reset, still clean."""
        if self._closed or connection.transport.is_closing():
            connection.close()
            return
        connection.protocol = _ParkedProtocol(self, connection)
        connection.protocol.resetting = False
        connection.transport.set_protocol(connection.protocol)
        self._idle.append(connection)
        # Idle since it was parked: nothing reached the server meanwhile, whose wait_timeout kept counting.
        remaining = max(0.0, self.idle_timeout - (time.monotonic() - connection.parked_at))
        connection.protocol.start_timer(remaining, lambda: self.drop(connection, PoolEvent.EXPIRED, "idle timeout"))

    def count(self, event: str) -> None:
        if self._metrics is not None:
            self._metrics.route(self.route.name).child(self._metrics.upstream_pool_events, event).inc()

    def close(self) -> None:
        """Stop parking, and close every parked connection (shutdown, or a TLS reload)."""
        self._closed = True
        closing = [*self._idle, *self._resetting]  # a reset under way: COM_QUIT goes up behind it
        self._idle.clear()
        self._resetting.clear()
        for connection in closing:
            gone = connection.close()
            if gone is not None:
                self._closing.add(gone)
                gone.add_done_callback(self._closing.discard)

    async def wait_closed(self, timeout: float) -> None:
        """Until the connections `close` quit are gone (at most `timeout`): a shutdown lets the server
        see COM_QUIT and the TLS close instead of a vanished peer."""
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=timeout)

    # ---- what the parked connections report ----------------------------------------------------

    def reset_done(self, connection: PooledUpstream) -> None:
        self._resetting.discard(connection)
        connection.protocol.cancel_timer()
        if self._closed:
            connection.close()
            return
        connection.parked_at = time.monotonic()
        self._idle.append(connection)
        self.count(PoolEvent.PARKED)
        connection.protocol.start_timer(self.idle_timeout, lambda: self.drop(
            connection, PoolEvent.EXPIRED, "idle timeout"))

    def drop(self, connection: PooledUpstream, event: str, why: str) -> None:
        """Forget and close a connection the pool holds (reset failed, expired, the server closed it)."""
        known = connection in self._resetting or connection in self._idle
        self._resetting.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)
        connection.close()
        if known:
            self.count(event)
            log.debug("route %s: pooled upstream connection closed: %s (%s)", self.route.name, event, why)
