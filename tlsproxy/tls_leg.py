"""The upstream leg under TLS: a non-blocking `ssl.SSLSocket` on the upstream socket, driven by the event
loop's reader and writer callbacks, shaped like the asyncio transport the rest of the proxy knows.

Why not `loop.start_tls`: asyncio's and uvloop's TLS transports run OpenSSL over two MemoryBIOs, so
every record is copied into a BIO, out of it, and through a Python-level SSL protocol object on its way
(bench/results/2026-12-01-full/targets.md: about 12 µs per point-select query). Here OpenSSL reads and
writes the socket itself, and the leg adds one Python call per readiness event.

What it keeps of a transport (the seam the session, prewarm and a connection pool use): `write`,
`pause_reading`/`resume_reading`/`is_reading`, `close`/`abort`/`is_closing`, the write buffer size and
limits, `can_write_eof` (False: TLS has no half-close), `get_extra_info` (`ssl_object` is the
SSLSocket: version, cipher, session, the handshake's CPU), `set_protocol`/`get_protocol`; and the
protocol callbacks: `get_buffer`/`buffer_updated` (or `data_received`), `eof_received`,
`connection_lost`, `pause_writing`/`resume_writing`. Like asyncio's TLS transport after `start_tls`,
it does not call `connection_made`.

The rules of the relay:
- Reads go into the protocol's buffer (one reused buffer, `upstream._ReadBuffer`); after each read what
  OpenSSL already holds decrypted (`pending()`) is read too, since the socket will not signal it. A
  full record (a stream of them, as a bulk result) is followed by another read into the same buffer, so
  the client gets one write per buffer rather than one per 16 KiB record; a shorter one (a query's
  answer) is handed on at once, with no extra read (and no extra system call) to find the socket empty.
- A write goes straight to OpenSSL and the socket. When the socket is full (`SSLWantWriteError`) the
  blocked bytes are kept exactly as they were offered (OpenSSL needs the same write repeated), later
  ones queue behind, the loop's writer callback retries, and the protocol is told `pause_writing` above
  the high-water mark (the session stops reading the client) and `resume_writing` once drained.
- EOF (the server's close_notify or a bare TCP close) is `eof_received`, then the leg closes: TLS has
  no half-close. `close` sends what is queued, then close_notify without waiting for the server's;
  `abort` drops what is queued and sends close_notify only when no record is half-written.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

from tlsproxy import descriptors
from tlsproxy.errors import OutOfDescriptorsError
from tlsproxy.tls import UpstreamTls, describe_tls_failure, tune_reads

log = logging.getLogger("tlsproxy.session")

MAX_RECORD = 16384
"""The largest TLS plaintext record (RFC 8446 §5.1, RFC 5246 §6.2.1)."""
STREAMING_READ = MAX_RECORD // 2
"""A read at least this long suggests more records are on the way: read again before handing on."""
DEFAULT_HIGH_WATER = 64 * 1024
_PLAIN_READ_SIZE = 256 * 1024
_NO_DATA = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
_EOF = (ssl.SSLZeroReturnError, ssl.SSLEOFError)


async def start_tls(transport: asyncio.Transport, protocol: asyncio.BaseProtocol, upstream_tls: UpstreamTls,
                    handshake_timeout: float) -> "TlsLeg":
    """Take the (read-paused) plaintext leg's socket over and do the TLS handshake on it with the route's
    context: SNI and host name from `upstream_tls`, a cached session offered for resumption (the context's
    `wrap_socket`). A failed handshake raises the proxy error that names its cause (`describe_tls_failure`),
    as with `loop.start_tls`."""
    loop = asyncio.get_running_loop()
    while transport.get_write_buffer_size() and not transport.is_closing():
        await asyncio.sleep(0.001)  # the SSLRequest must be on the wire before the ClientHello
    try:
        tls_socket: socket.socket = take_socket(transport)
    except OSError as exc:
        if descriptors.is_exhaustion(exc):  # the duplicate descriptor: the proxy's own failure, as in connect
            descriptors.note_exhausted()
            raise OutOfDescriptorsError(descriptors.exhausted_message()) from None
        raise describe_tls_failure(exc, upstream_tls) from None
    try:
        tls_socket = upstream_tls.context.wrap_socket(tls_socket, server_hostname=upstream_tls.server_hostname,
                                                      do_handshake_on_connect=False)
        has_pending = tune_reads(tls_socket)  # type: ignore[arg-type]  # read-ahead: fewer reads in the handshake too
        async with asyncio.timeout(max(handshake_timeout, 0.1)):
            await handshake(loop, tls_socket)  # type: ignore[arg-type]
    except asyncio.CancelledError:
        tls_socket.close()
        raise
    except TimeoutError:
        tls_socket.close()
        raise describe_tls_failure(ConnectionAbortedError("the TLS handshake timed out"), upstream_tls) from None
    except Exception as exc:  # ssl, OS and EOF errors
        tls_socket.close()
        if (isinstance(exc, _EOF) or (isinstance(exc, ssl.SSLSyscallError) and not exc.errno)
                or (type(exc) is OSError and exc.errno == errno.ENOTCONN)):  # a reset before the first step
            exc = ConnectionResetError("the upstream closed the connection")  # as asyncio reports it
        raise describe_tls_failure(exc, upstream_tls) from None
    return TlsLeg(loop, tls_socket, protocol, has_pending)  # type: ignore[arg-type]


def take_socket(transport: asyncio.Transport) -> socket.socket:
    """A socket of its own on the transport's connection (a duplicate descriptor, non-blocking); the
    transport is then dropped without telling its protocol. The duplicate costs a descriptor for as long
    as the loop takes to close the transport's (its next iteration)."""
    raw = transport.get_extra_info("socket")
    if raw is None:
        raise ConnectionResetError("the upstream connection is gone")
    fd = os.dup(raw.fileno())
    try:
        sock = socket.socket(fileno=fd)
    except BaseException:
        os.close(fd)
        raise
    sock.setblocking(False)
    transport.set_protocol(asyncio.Protocol())
    transport.abort()
    return sock


async def handshake(loop: asyncio.AbstractEventLoop, tls_socket: ssl.SSLSocket) -> None:
    """`do_handshake` steps until done, waiting for the socket between them. The steps are the only work
    timed by the handshake CPU metric (tls.MeteredSSLSocket). Once done, the socket's reader callback
    stays registered: the leg replaces it with its own (one registration for the connection's life)."""
    fd = tls_socket.fileno()
    waiting: list[asyncio.Future[None]] = []

    def wake() -> None:
        if waiting and not waiting[-1].done():
            waiting[-1].set_result(None)

    reading = False
    try:
        while True:
            writing = False
            try:
                tls_socket.do_handshake()
                return
            except ssl.SSLWantReadError:
                if not reading:
                    loop.add_reader(fd, wake)
                    reading = True
            except ssl.SSLWantWriteError:
                loop.add_writer(fd, wake)
                writing = True
            waiting[:] = [loop.create_future()]
            try:
                await waiting[-1]
            finally:
                if writing:
                    loop.remove_writer(fd)
    except BaseException:
        if reading:
            loop.remove_reader(fd)
        raise


class TlsLeg(asyncio.Transport):
    """The upstream connection after the TLS handshake (see the module's docstring)."""

    __slots__ = ("_loop", "_socket", "_ssl", "_fd", "_protocol", "_buffered", "_reading", "_closing",
                 "_lost", "_has_pending", "_retry", "_queue", "_writing", "_high_water", "_low_water", "_protocol_paused")

    def __init__(self, loop: asyncio.AbstractEventLoop, tls_socket: ssl.SSLSocket, protocol: asyncio.BaseProtocol,
                 has_pending: Callable[[], int] | None = None) -> None:
        """`has_pending`: `tls.tune_reads`'s, when it set the connection up (else `pending()` is all there is)."""
        super().__init__({"peername": _address(tls_socket.getpeername),
                          "sockname": _address(tls_socket.getsockname)})
        self._loop = loop
        self._socket: ssl.SSLSocket | None = tls_socket
        self._ssl = tls_socket._sslobj  # the C object: SSLSocket's Python wrappers cost a call each  # type: ignore[attr-defined]
        self._fd = tls_socket.fileno()
        self._has_pending: Callable[[], int] = has_pending or self._ssl.pending
        """Whether OpenSSL holds bytes the socket's readiness will not announce (read-ahead: undecrypted ones too)."""
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._reading = False
        self._closing = False
        self._lost = False
        self._retry: bytes | None = None
        """A write OpenSSL could not finish: offered again as it is, before anything else."""
        self._queue = bytearray()
        """Writes behind `_retry`, not yet offered to OpenSSL."""
        self._writing = False
        self._high_water = DEFAULT_HIGH_WATER
        self._low_water = DEFAULT_HIGH_WATER // 4
        self._protocol_paused = False
        self.resume_reading()

    # ---- what the session sees of a transport ---------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        tls_socket = self._socket
        if name in ("ssl_object", "socket"):
            return tls_socket if tls_socket is not None else default
        if tls_socket is not None:
            if name == "cipher":
                return tls_socket.cipher()
            if name == "peercert":
                return tls_socket.getpeercert()
            if name == "compression":
                return tls_socket.compression()
            if name == "sslcontext":
                return tls_socket.context
        return super().get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:  # type: ignore[override]
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if self._reading or self._closing:
            return
        self._reading = True
        self._loop.add_reader(self._fd, self._on_readable)  # the first time, in place of the handshake's
        if self._has_pending():  # read before a pause and not yet handed on: the socket will not say so
            self._loop.call_soon(self._on_readable)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def get_write_buffer_size(self) -> int:
        return len(self._queue) + (len(self._retry) if self._retry is not None else 0)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low_water, self._high_water

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water, self._low_water = high, low
        self._check_high_water()

    # ---- reading -------------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            while self._reading and not self._closing:
                if not (self._read_buffered() if self._buffered else self._read_bytes()):
                    break
        except _NO_DATA:
            pass
        except _EOF:
            self._eof()
        except (OSError, ssl.SSLError) as exc:
            self._fatal(exc)
        except BaseException as exc:  # the protocol's own failure, as asyncio reports it
            self._fatal(exc, "upstream protocol failed")
            if not isinstance(exc, Exception):
                raise

    def _read_buffered(self) -> bool:
        """Fill the protocol's buffer and hand it on: with one read for a short answer, on to the end of a
        stream of full records. True when OpenSSL still holds more than the buffer took."""
        protocol: asyncio.BufferedProtocol = self._protocol  # type: ignore[assignment]
        buffer = protocol.get_buffer(-1)
        size = len(buffer)
        read, has_pending = self._ssl.read, self._has_pending
        total = 0
        more = ended = False
        try:
            while True:
                count = read(size - total, memoryview(buffer)[total:] if total else buffer)
                if not count:
                    ended = True
                    break
                total += count
                if count < STREAMING_READ and not has_pending():
                    break
                if total >= size:
                    more = bool(has_pending())
                    break
        except _NO_DATA:
            if not total:
                raise
        except _EOF:
            ended = True
        if total:
            protocol.buffer_updated(total)
        if ended:
            self._eof()
            return False
        return more

    def _read_bytes(self) -> bool:
        """For a plain Protocol (`data_received`): one read, bytes of their own."""
        data = self._ssl.read(_PLAIN_READ_SIZE)
        if not data:
            self._eof()
            return False
        self._protocol.data_received(data)  # type: ignore[attr-defined]
        return bool(self._has_pending())

    def _eof(self) -> None:
        if self._closing:
            return
        self.pause_reading()
        keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        if keep_open:
            log.debug("the upstream protocol asked to keep a TLS leg open after EOF; TLS cannot half-close")
        self.close()

    # ---- writing -------------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if self._retry is None and not self._queue:
            try:
                self._ssl.write(data)
                return
            except _NO_DATA:
                self._retry = bytes(data)
                self._start_writing()
            except (OSError, ssl.SSLError) as exc:
                self._fatal(exc)
                return
        else:
            self._queue += data
        self._check_high_water()

    def _start_writing(self) -> None:
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        write = self._ssl.write
        try:
            if self._retry is not None:
                write(self._retry)
                self._retry = None
            while self._queue:
                self._retry = bytes(self._queue)
                self._queue.clear()
                write(self._retry)
                self._retry = None
        except _NO_DATA:
            self._check_low_water()
            return
        except (OSError, ssl.SSLError) as exc:
            self._fatal(exc)
            return
        self._writing = False
        self._loop.remove_writer(self._fd)
        self._check_low_water()
        if self._closing and not self._lost:
            self._finish(None, notify_peer=True)

    def _check_high_water(self) -> None:
        if not self._protocol_paused and self.get_write_buffer_size() > self._high_water:
            self._protocol_paused = True
            self._call_protocol("pause_writing")

    def _check_low_water(self) -> None:
        if self._protocol_paused and self.get_write_buffer_size() <= self._low_water:
            self._protocol_paused = False
            self._call_protocol("resume_writing")

    def _call_protocol(self, name: str) -> None:
        try:
            getattr(self._protocol, name)()
        except Exception:
            log.exception("upstream protocol %s() failed", name)

    # ---- ending --------------------------------------------------------------------------------------

    def close(self) -> None:
        """Send what is queued, then close_notify, then close (the server's close_notify is not awaited)."""
        if self._closing:
            return
        self.pause_reading()
        self._closing = True
        if self._retry is None and not self._queue:
            self._finish(None, notify_peer=True)

    def abort(self) -> None:
        """Close now: what is queued is dropped; close_notify only if no record is half-written."""
        if self._lost:
            return
        self.pause_reading()
        self._closing = True
        self._finish(None, notify_peer=self._retry is None)

    def _fatal(self, exc: BaseException, message: str = "upstream TLS connection failed") -> None:
        log.debug("%s: %s: %s", message, exc.__class__.__name__, exc)
        self.pause_reading()
        self._closing = True
        self._finish(exc if isinstance(exc, Exception) else None, notify_peer=False)

    def _finish(self, exc: Exception | None, *, notify_peer: bool) -> None:
        if self._lost:
            return
        self._lost = True
        self._retry = None
        self._queue.clear()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        tls_socket, self._socket = self._socket, None
        if tls_socket is not None:
            if notify_peer:
                try:
                    self._ssl.shutdown()  # sends close_notify; the second step (the peer's) would block
                except (OSError, ssl.SSLError, ValueError):
                    pass
            tls_socket.close()
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        protocol = self._protocol
        self._protocol = asyncio.Protocol()  # no link back to the session once it is told
        try:
            protocol.connection_lost(exc)
        except Exception:
            log.exception("upstream protocol connection_lost() failed")


def _address(getter: Callable[[], Any]) -> Any:
    try:
        return getter()
    except OSError:
        return None
