"""Prewarmed upstream connections (route key `prewarm: N`).

Legacy applications connect once per request. The expensive part of each connection is upstream:
TCP, the server's greeting, the SSLRequest and the TLS handshake. A route with `prewarm: N` keeps N
upstream connections that have done all of that, and hands one to the next client: the client sees
that connection's greeting (its nonce fresh and unused), answers it, and its HandshakeResponse goes
straight up the TLS connection.

Rules:
- The SSLRequest fixes the capabilities and charset the server uses (PROTOCOL.md §3.2), and it must be
  sent before TLS, so a prewarmed connection sends the SSLRequest that the route's last successful
  client needed (`learn`). Legacy apps send the same one every time. Until a client has logged in,
  nothing is prewarmed. A client whose SSLRequest differs still logs in: the handshake machine asks
  for a fresh connection and has the client answer its nonce (`ReplaceUpstream`).
- A prewarmed connection is handed out only while younger than `prewarm_max_age` (default 5 s, well
  inside the server's connect_timeout, 10 s by default, which counts from the server's accept); older
  ones are closed and replaced.
- CPU: what is warmed and handed out is work the client needed anyway; what expires unused is the
  waste, at most N per `prewarm_max_age`, and nothing at all after IDLE_STOP_SECONDS without a client
  (the next client connects cold and wakes the pool up). Failures back off exponentially to 5 s.
- The connections are verified exactly like any other (the route's TLS context, with resumption),
  and a TLS reload closes the pool of the old context.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from tlsproxy import descriptors, tls_leg
from tlsproxy.config import Route
from tlsproxy.errors import TlsProxyError
from tlsproxy.metrics import ProxyMetrics
from tlsproxy.mysql.greeting import UpstreamGreeting, ssl_request_frame
from tlsproxy.tls import UpstreamTls

log = logging.getLogger(__name__)

IDLE_STOP_SECONDS = 60.0
"""Stop refreshing expired connections when no client took one for this long."""
MAX_BACKOFF_SECONDS = 5.0


class _WarmingProtocol(asyncio.BufferedProtocol):
    """The upstream leg while it warms up and waits: the greeting, then nothing (anything the server
    sends while the connection waits, such as its connect-timeout ERR, means the connection is dead)."""

    def __init__(self) -> None:
        self.greeting: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._reader = UpstreamGreeting(require_tls=True)
        self._buffer = memoryview(bytearray(4096))
        self.ready = False
        self.dead = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.greeting.done():
            self._die()  # after the greeting the server must wait for us
            return
        try:
            if self._reader.receive_data(self._buffer[:nbytes].tobytes()) is not None:
                self.greeting.set_result(self._reader.payload)
        except TlsProxyError as exc:
            self.greeting.set_exception(ConnectionError(exc.message))

    def eof_received(self) -> bool:
        self._die()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        if not self.greeting.done():
            self.greeting.set_exception(ConnectionError("upstream closed the connection"))

    def _die(self) -> None:
        self.dead = True
        if self.transport is not None:
            self.transport.abort()


@dataclass
class WarmUpstream:
    transport: asyncio.Transport
    protocol: _WarmingProtocol
    greeting_payload: bytes
    ssl_request: bytes
    connected_at: float
    """monotonic time of the TCP connect: the server's connect_timeout runs from about then."""
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)

    def close(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
        if not self.transport.is_closing():
            self.transport.set_protocol(asyncio.Protocol())  # no callbacks into the pool any more
            self.transport.abort()


class PrewarmPool:
    def __init__(self, route: Route, upstream_tls: UpstreamTls, metrics: ProxyMetrics | None = None) -> None:
        self.route = route
        self.size = route.prewarm
        self.max_age = route.prewarm_max_age
        self._upstream_tls = upstream_tls
        self._metrics = metrics
        self._ready: deque[WarmUpstream] = deque()
        self._warming: set[asyncio.Task[None]] = set()
        self._ssl_request: bytes | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._retry_timer: asyncio.TimerHandle | None = None
        self._last_taken = time.monotonic()
        self._closed = False

    def __len__(self) -> int:
        return len(self._ready)

    @property
    def learned_ssl_request(self) -> bytes | None:
        return self._ssl_request

    # ---- what sessions call ------------------------------------------------------------------

    def learn(self, ssl_request: bytes) -> None:
        """A client logged in with this SSLRequest: prewarm with it from now on."""
        if self._closed or ssl_request == self._ssl_request:
            return
        self._ssl_request = ssl_request
        for warm in [w for w in self._ready if w.ssl_request != ssl_request]:
            self._ready.remove(warm)
            warm.close()
        self._fill()

    def take(self) -> WarmUpstream | None:
        """A ready connection younger than max_age, or None."""
        now = time.monotonic()
        self._last_taken = now
        found = None
        while self._ready:
            warm = self._ready.popleft()
            if warm.protocol.dead or warm.transport.is_closing():
                self._count("closed_by_server")
                warm.close()
            elif now - warm.connected_at >= self.max_age:
                self._count("expired")
                warm.close()
            else:
                if warm.expiry is not None:
                    warm.expiry.cancel()
                found = warm
                self._count("handed_out")
                break
        self._fill()
        return found

    def count_mismatch(self) -> None:
        self._count("mismatch")

    def close(self) -> None:
        self._closed = True
        for task in list(self._warming):
            task.cancel()
        while self._ready:
            self._ready.popleft().close()
        if self._retry_timer is not None:
            self._retry_timer.cancel()

    # ---- warming ---------------------------------------------------------------------------------

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.prewarm_connections.labels(self.route.name, outcome).inc()

    def _fill(self) -> None:
        if self._closed or self._ssl_request is None:
            return
        now = time.monotonic()
        if now < self._retry_at:
            if self._retry_timer is None:
                self._retry_timer = asyncio.get_running_loop().call_at(
                    asyncio.get_running_loop().time() + (self._retry_at - now), self._retry)
            return
        if now - self._last_taken > IDLE_STOP_SECONDS:
            return  # nobody came for a while: stop spending CPU until the next client
        loop = asyncio.get_running_loop()
        while len(self._ready) + len(self._warming) < self.size:
            task = loop.create_task(self._warm_one(self._ssl_request))
            self._warming.add(task)
            task.add_done_callback(self._warming.discard)

    def _retry(self) -> None:
        self._retry_timer = None
        self._fill()

    async def _warm_one(self, ssl_request: bytes) -> None:
        route, tls = self.route, self._upstream_tls
        loop = asyncio.get_running_loop()
        transport: asyncio.Transport | None = None
        started = time.monotonic()
        try:
            async with asyncio.timeout(route.connect_timeout + route.handshake_timeout):
                transport, protocol = await loop.create_connection(
                    _WarmingProtocol, route.upstream.host, route.upstream.port)
                greeting = await protocol.greeting  # judged like any other (TLS offered, seq 0, nothing more)
                transport.pause_reading()  # nothing may be read in plaintext before TLS
                transport.write(ssl_request_frame(ssl_request))
                transport = protocol.transport = await tls_leg.start_tls(transport, protocol, tls,
                                                                         route.handshake_timeout)
        except asyncio.CancelledError:
            if transport is not None:
                transport.abort()
            raise
        except Exception as exc:  # OS, TLS, timeout and protocol errors: back off, try again later
            if transport is not None:
                transport.abort()
            if descriptors.is_exhaustion(exc):
                descriptors.note_exhausted()
            self._failures += 1
            backoff = min(0.05 * 2 ** self._failures, MAX_BACKOFF_SECONDS)
            self._retry_at = time.monotonic() + backoff
            self._count("failed")
            log.debug("route %s: prewarming an upstream connection failed (%s: %s); next try in %.2fs",
                      route.name, exc.__class__.__name__, exc, backoff)
            self._fill()
            return
        if self._closed or ssl_request != self._ssl_request:
            transport.abort()
            return
        self._failures = 0
        warm = WarmUpstream(transport, protocol, greeting, ssl_request, started)
        protocol.ready = True
        warm.expiry = loop.call_later(max(self.max_age - (time.monotonic() - started), 0), self._expire, warm)
        self._ready.append(warm)

    def _expire(self, warm: WarmUpstream) -> None:
        warm.expiry = None
        if warm in self._ready:
            self._ready.remove(warm)
            self._count("expired")
            warm.close()
            self._fill()
