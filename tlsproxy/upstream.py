"""The upstream leg's plumbing: its Protocol (`UpstreamSide`, reporting to the session), TCP with retry,
the TLS upgrade, and what the TLS handshake tells us.

`connect` takes a `Connector`, the seam between a session and the network (a route's `RouteRuntime`
carries it): the default opens TCP with the running loop's `create_connection`; a test passes a fake
that hands the protocol a fake transport, as cloud-sql-proxy's tests inject a dialer.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from typing import Awaitable, Callable, Protocol

from tlsproxy import descriptors, tls_leg
from tlsproxy.config import Route
from tlsproxy.connection_record import ConnectionStats
from tlsproxy.errors import OutOfDescriptorsError, UpstreamConnectError, UpstreamTimeoutError
from tlsproxy.tls import UpstreamTls

log = logging.getLogger("tlsproxy.session")  # the retries stay under the session's logger name

ProtocolFactory = Callable[[], asyncio.BaseProtocol]
Connector = Callable[[ProtocolFactory, str, int], Awaitable[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]]
"""Opens one TCP connection to (host, port) for the protocol the factory makes, or raises OSError."""


async def create_connection(protocol_factory: ProtocolFactory, host: str, port: int,
                            ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    """The default `Connector`: the name is resolved again on every call and each address tried."""
    return await asyncio.get_running_loop().create_connection(protocol_factory, host, port)


async def connect(route: Route, protocol_factory: ProtocolFactory, *, conn_id: int,
                  connector: Connector = create_connection) -> asyncio.Transport:
    """TCP to the upstream. A refused or unreachable upstream is retried with backoff for
    `connect_retry_window` (a primary/secondary switchover takes seconds), each attempt bounded by
    `connect_timeout`; the caller bounds the whole by the handshake timeout. Running out of file
    descriptors (EMFILE/ENFILE) is the proxy's own failure: not retried, not the upstream's fault."""
    started = time.monotonic()
    retry_until = started + route.connect_retry_window
    delay, attempts = 0.05, 0
    while True:
        attempts += 1
        try:
            async with asyncio.timeout(route.connect_timeout):
                transport, _ = await connector(protocol_factory, route.upstream.host, route.upstream.port)
            return transport  # type: ignore[return-value]
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"cannot connect to upstream {route.upstream}: no answer within {route.connect_timeout:g}s",
            ) from None
        except OSError as exc:
            if descriptors.is_exhaustion(exc):
                descriptors.note_exhausted()
                raise OutOfDescriptorsError(descriptors.exhausted_message()) from None
            if time.monotonic() + delay > retry_until:
                reason = exc.strerror or str(exc)
                tried = f" ({attempts} attempts in {time.monotonic() - started:.1f}s)" if attempts > 1 else ""
                raise UpstreamConnectError(f"cannot connect to upstream {route.upstream}: {reason}{tried}") from None
            log.debug("conn=%d upstream %s: %s; retrying in %.2fs", conn_id, route.upstream, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def start_tls(transport: asyncio.Transport, protocol: asyncio.BaseProtocol, upstream_tls: UpstreamTls,
                    handshake_timeout: float) -> asyncio.Transport | None:
    """Upgrade the (read-paused) plaintext leg: a `tls_leg.TlsLeg`, OpenSSL on the socket itself, shaped
    like an asyncio transport (never a StreamWriter: STYLE.md, uvloop #707 / CPython #142352). A failed
    handshake raises the proxy error that names its cause."""
    return await tls_leg.start_tls(transport, protocol, upstream_tls, handshake_timeout)


def note_tls(stats: ConnectionStats, transport: asyncio.BaseTransport, *, handshake: bool = True) -> None:
    """Copy what the TLS handshake settled (version, cipher, resumption, its CPU, the certificate's
    expiry) into the connection's stats; nothing for a plaintext leg. `handshake` False: the connection
    is a pooled one whose handshake an earlier client's record counted; only version and cipher."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is not None:
        stats.tls_version = ssl_object.version()
        cipher = ssl_object.cipher()
        stats.tls_cipher = cipher[0] if cipher else None
        if not handshake:
            return
        stats.tls_resumed = ssl_object.session_reused
        stats.tls_handshake_cpu_seconds = getattr(ssl_object, "handshake_cpu_seconds", None)
        peer = ssl_object.getpeercert()  # empty unless verified (REQUIRED mode)
        if peer and "notAfter" in peer:
            stats.certificate_not_after = ssl.cert_time_to_seconds(peer["notAfter"])


def keep_tls_session(upstream_tls: UpstreamTls | None, transport: asyncio.BaseTransport | None,
                     certificate_not_after: float | None) -> None:
    """Offer this connection's TLS session to the next ones. Taken once authentication is done: by
    then a TLS 1.3 server's tickets (sent after its handshake) have been read. A resumed connection
    offers nothing: the session it resumed stays cached (and each `.session` read leaks on older
    CPythons, tls_sessions.py)."""
    if upstream_tls is None or upstream_tls.sessions is None or transport is None:
        return
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is not None and not ssl_object.session_reused:
        upstream_tls.sessions.put(upstream_tls.server_hostname, ssl_object.session, ssl_object.version(),
                                  certificate_not_after)


class UpstreamEvents(Protocol):
    """What the upstream leg reports to its session."""

    def upstream_connected(self, transport: asyncio.Transport) -> None: ...
    def server_data(self, data: bytes) -> None: ...
    def server_eof(self) -> bool: ...
    def server_lost(self, exc: Exception | None) -> None: ...
    def pause_client_reading(self) -> None: ...
    def resume_client_reading(self) -> None: ...


class _ReadBuffer:
    """One read buffer per event loop thread, shared by every upstream leg: the loop runs one callback
    at a time, and each chunk is copied out (to exactly its size) before the callback returns."""

    SIZE = 112 * 1024
    """7 TLS records, one client write for a bulk result. Each chunk is copied to a bytes object of its
    own, and glibc serves an allocation of 128 KiB or more with mmap and frees it with munmap (the
    threshold is fixed: allocator.py): two system calls and page faults per chunk."""
    _local = threading.local()

    @classmethod
    def view(cls) -> memoryview:
        view = getattr(cls._local, "view", None)
        if view is None:
            view = cls._local.view = memoryview(bytearray(cls.SIZE))
        return view


class UpstreamSide(asyncio.BufferedProtocol):
    """The upstream leg's protocol. A BufferedProtocol, so that the TLS leg (tls_leg.TlsLeg) decrypts
    into a reused buffer, and a plaintext transport reads into it: with a plain Protocol a 256 KiB bytes
    object would be allocated (and, for a short answer, shrunk and freed) per read, three system calls
    (mmap, mremap, munmap) on every server answer."""

    def __init__(self, session: UpstreamEvents) -> None:
        self.session = session
        self._view = _ReadBuffer.view()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session.upstream_connected(transport)  # type: ignore[arg-type]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.session.server_data(self._view[:nbytes].tobytes())

    def eof_received(self) -> bool:
        return self.session.server_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.server_lost(exc)

    def pause_writing(self) -> None:
        self.session.pause_client_reading()

    def resume_writing(self) -> None:
        self.session.resume_client_reading()
