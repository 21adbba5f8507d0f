"""The upstream TLS leg (tlsproxy.tls_leg) against a real TLS server on loopback, under uvloop and asyncio:
the relay both ways, what OpenSSL holds that the socket does not announce, backpressure both ways,
close_notify, EOF, and failures mapped to the proxy's errors as `loop.start_tls`'s were."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tests.support.pki import TestPki
from tlsproxy import tls_leg
from tlsproxy.config import Route, TcpAddress, TlsSettings
from tlsproxy.errors import CertificateVerifyError, OutOfDescriptorsError, TlsInjectionError, UpstreamTlsError
from tlsproxy.outcome import Outcome
from tlsproxy.tls import MeteredSSLSocket, UpstreamTls, build_upstream_tls

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture(params=list(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[None]]], None]:
    def runner(test: Callable[[], Awaitable[None]]) -> None:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as loop_runner:
            loop_runner.run(asyncio.wait_for(test(), 20))
    return runner


class Recorder(asyncio.BufferedProtocol):
    """What the session's UpstreamSide does, recorded: a reused buffer of `size` bytes."""

    def __init__(self, size: int = 256 * 1024) -> None:
        self.buffer = memoryview(bytearray(size))
        self.data = bytearray()
        self.events: list[str] = []
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.arrived = asyncio.Event()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]
        self.arrived.set()

    def eof_received(self) -> bool:
        self.events.append("eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")

    async def wait_for(self, count: int) -> bytes:
        while len(self.data) < count:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 5)
        return bytes(self.data)


def upstream_tls(pki: TestPki, **settings: Any) -> UpstreamTls:
    tls = build_upstream_tls(Route("t", TcpAddress("127.0.0.1", 0), TcpAddress("localhost", 3306),
                                   tls=TlsSettings(ca_file=pki.ca, **settings)))
    assert tls is not None
    return tls


@dataclass
class Server:
    """The peer: a TLS server on a blocking socket, run from a thread where the test needs it to."""

    listener: socket.socket
    context: ssl.SSLContext
    connection: Any = None

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def accept(self, tls: bool = True) -> Any:
        plain, _ = self.listener.accept()
        plain.settimeout(10)
        self.connection = self.context.wrap_socket(plain, server_side=True, suppress_ragged_eofs=False) if tls else plain
        return self.connection

    def read_exactly(self, count: int) -> bytes:
        data = bytearray()
        while len(data) < count:
            chunk = self.connection.recv(min(count - len(data), 1 << 20))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return bytes(data)


@contextmanager
def server(cert: Path, key: Path) -> Iterator[Server]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    peer = Server(listener, context)
    try:
        yield peer
    finally:
        if peer.connection is not None:
            peer.connection.close()
        listener.close()


async def connect(peer: Server, tls: UpstreamTls, protocol: asyncio.BaseProtocol, *,
                  server_tls: bool = True) -> tls_leg.TlsLeg:
    """TCP to the peer, then the leg's handshake while the peer accepts (and does its side) in a thread."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", peer.port)
    transport.pause_reading()
    accepted = loop.run_in_executor(None, peer.accept, server_tls)
    try:
        return await tls_leg.start_tls(transport, protocol, tls, 10)
    finally:
        await asyncio.gather(accepted, return_exceptions=True)  # the server's side fails too when ours does


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


@asynccontextmanager
async def tls_pair(pki: TestPki, buffer_size: int = 256 * 1024) -> AsyncIterator[tuple[Server, tls_leg.TlsLeg, Recorder]]:
    """A leg on a handshaken connection to the peer; at the end the leg is gone (aborted if still open)."""
    with server(pki.server_cert, pki.server_key) as peer:
        protocol = Recorder(buffer_size)
        leg = await connect(peer, upstream_tls(pki), protocol)
        yield peer, leg, protocol
        leg.abort()
        await protocol.lost


@asynccontextmanager
async def plain_peer() -> AsyncIterator[tuple[asyncio.Transport, socket.socket]]:
    """A read-paused plaintext transport (as the session hands it over) and the peer's socket of it."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", listener.getsockname()[1])
        transport.pause_reading()
        accepted, _ = listener.accept()
        with accepted:
            yield transport, accepted


# ---- the relay ---------------------------------------------------------------------------------------


def test_both_ways_and_what_a_transport_tells(pki: TestPki, run: Callable[..., None]) -> None:
    async def test() -> None:
        async with tls_pair(pki) as (peer, leg, protocol):
            leg.write(b"query")
            assert await in_thread(peer.read_exactly, 5) == b"query"
            peer.connection.sendall(b"answer")
            assert await protocol.wait_for(6) == b"answer"
            ssl_object = leg.get_extra_info("ssl_object")
            assert isinstance(ssl_object, MeteredSSLSocket)
            assert ssl_object.handshake_cpu_seconds > 0
            assert leg.get_extra_info("socket") is ssl_object
            assert leg.get_extra_info("peername")[1] == peer.port
            assert leg.get_extra_info("cipher") == ssl_object.cipher()
            assert not leg.can_write_eof() and leg.is_reading() and leg.get_protocol() is protocol
            leg.close()
            assert await protocol.lost is None
    run(test)


def test_what_openssl_holds_is_read_without_the_socket_saying_so(pki: TestPki, run: Callable[..., None]) -> None:
    """A 16-byte buffer takes a 1,000-byte record in pieces: the rest is decrypted inside OpenSSL
    (`pending()`), and with read-ahead whole records can wait there too, undecrypted; the socket is
    empty either way, so only reading on delivers them."""
    async def test() -> None:
        async with tls_pair(pki, buffer_size=16) as (peer, leg, protocol):
            leg.pause_reading()
            payload = bytes(range(256)) * 4
            peer.connection.sendall(payload[:1000])
            for start in range(1000, 1024, 8):  # small records in one TCP segment: one read takes them all
                peer.connection.sendall(payload[start:start + 8])
            await asyncio.sleep(0.1)
            leg.resume_reading()
            assert await protocol.wait_for(1024) == payload
    run(test)


def test_a_stream_of_full_records_is_handed_on_in_buffers_not_records(pki: TestPki, run: Callable[..., None]) -> None:
    async def test() -> None:
        async with tls_pair(pki) as (peer, leg, protocol):
            calls = []
            original = protocol.buffer_updated
            protocol.buffer_updated = lambda n: (calls.append(n), original(n))  # type: ignore[method-assign]
            leg.pause_reading()
            payload = bytes(range(256)) * 1024  # 256 KiB: 16 full records
            await in_thread(peer.connection.sendall, payload)
            await asyncio.sleep(0.1)
            leg.resume_reading()
            assert await protocol.wait_for(len(payload)) == payload
            assert len(calls) < 8, calls
    run(test)


# ---- backpressure ------------------------------------------------------------------------------------


def test_a_slow_server_pauses_the_writer_and_nothing_is_lost(pki: TestPki, run: Callable[..., None]) -> None:
    async def test() -> None:
        async with tls_pair(pki) as (peer, leg, protocol):
            leg.set_write_buffer_limits(high=64 * 1024)
            sent = hashlib.sha256()
            total = 0
            chunk = bytes(range(256)) * 256  # 64 KiB
            while "pause_writing" not in protocol.events:  # the server reads nothing yet
                leg.write(chunk)
                sent.update(chunk)
                total += len(chunk)
                assert total < 64 << 20, "never paused"
            assert leg.get_write_buffer_size() > 64 * 1024
            received = await in_thread(peer.read_exactly, total)
            assert hashlib.sha256(received).digest() == sent.digest()
            assert protocol.events == ["pause_writing", "resume_writing"]
            assert leg.get_write_buffer_size() == 0
    run(test)


def test_pause_reading_holds_the_server_and_resume_delivers(pki: TestPki, run: Callable[..., None]) -> None:
    async def test() -> None:
        async with tls_pair(pki) as (peer, leg, protocol):
            leg.pause_reading()
            assert not leg.is_reading()
            peer.connection.sendall(b"held back")
            await asyncio.sleep(0.2)
            assert protocol.data == b""
            leg.resume_reading()
            assert await protocol.wait_for(9) == b"held back"
    run(test)


# ---- the end -----------------------------------------------------------------------------------------


def test_close_sends_what_is_queued_then_close_notify(pki: TestPki, run: Callable[..., None]) -> None:
    async def test() -> None:
        async with tls_pair(pki) as (peer, leg, protocol):
            payload = b"x" * (4 << 20)  # more than the socket takes at once: queued behind a blocked write
            leg.write(payload)
            assert leg.get_write_buffer_size()
            leg.close()
            assert leg.is_closing()
            assert await in_thread(peer.read_exactly, len(payload)) == payload
            assert await in_thread(peer.connection.recv, 1) == b""  # close_notify, not a bare TCP close
            assert await protocol.lost is None
            assert protocol.events[-1] == "lost" and "eof" not in protocol.events
    run(test)


def test_abort_sends_close_notify_when_nothing_is_half_written(pki: TestPki, run: Callable[..., None]) -> None:
    async def test() -> None:
        async with tls_pair(pki) as (peer, leg, protocol):
            leg.abort()
            assert await in_thread(peer.connection.recv, 1) == b""
            assert await protocol.lost is None
    run(test)


@pytest.mark.parametrize("notify", [True, False], ids=["close_notify", "bare TCP close"])
def test_the_server_closing_is_eof_then_the_leg_closes(pki: TestPki, run: Callable[..., None], notify: bool) -> None:
    async def test() -> None:
        async with tls_pair(pki) as (peer, leg, protocol):
            peer.connection.sendall(b"last words")
            if notify:  # the server's close_notify, and the leg's in answer (its close)
                peer.connection = await in_thread(peer.connection.unwrap)
            else:
                peer.connection.shutdown(socket.SHUT_WR)
            assert await protocol.lost is None
            assert bytes(protocol.data) == b"last words"
            assert protocol.events == ["eof", "lost"]
            assert leg.is_closing()
    run(test)


def test_garbage_from_the_server_after_the_handshake_is_a_lost_connection(pki: TestPki,
                                                                          run: Callable[..., None]) -> None:
    async def test() -> None:
        async with tls_pair(pki) as (peer, leg, protocol):
            raw = socket.socket(fileno=peer.connection.detach())
            peer.connection = raw
            raw.sendall(b"\x00" * 64)  # not a TLS record
            assert isinstance(await protocol.lost, ssl.SSLError)
    run(test)


# ---- handshake failures: the same proxy errors as `loop.start_tls` gave ---------------------------------


def test_an_untrusted_certificate_is_the_same_error(pki: TestPki, run: Callable[..., None]) -> None:
    async def test() -> None:
        with server(pki.other_server_cert, pki.other_server_key) as peer:
            with pytest.raises(CertificateVerifyError) as caught:
                await connect(peer, upstream_tls(pki), Recorder())
            assert caught.value.metric_label is Outcome.CERTIFICATE_UNTRUSTED
    run(test)


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
def test_the_server_closing_during_the_handshake_is_upstream_lost(pki: TestPki, run: Callable[..., None],
                                                                  reset: bool) -> None:
    async def test() -> None:
        async with plain_peer() as (transport, accepted):
            if reset:  # RST: the socket is no longer connected when the leg takes it (ENOTCONN)
                accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            accepted.close()
            await asyncio.sleep(0.05)
            with pytest.raises(UpstreamTlsError) as caught:
                await tls_leg.start_tls(transport, Recorder(), upstream_tls(pki), 10)
            assert caught.value.metric_label is Outcome.UPSTREAM_LOST
    run(test)


def test_plaintext_where_tls_should_start_is_refused_as_injection(pki: TestPki, run: Callable[..., None]) -> None:
    async def test() -> None:
        async with plain_peer() as (transport, accepted):
            accepted.sendall(b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00")  # an OK packet, no TLS
            with pytest.raises(TlsInjectionError):
                await tls_leg.start_tls(transport, Recorder(), upstream_tls(pki), 10)
    run(test)


def test_a_handshake_that_never_ends_times_out_as_upstream_lost(pki: TestPki, run: Callable[..., None]) -> None:
    async def test() -> None:
        async with plain_peer() as (transport, _):
            with pytest.raises(UpstreamTlsError) as caught:
                await tls_leg.start_tls(transport, Recorder(), upstream_tls(pki), 0.2)
            assert caught.value.metric_label is Outcome.UPSTREAM_LOST
    run(test)


def test_the_plaintext_transport_is_dropped_without_telling_its_protocol(pki: TestPki,
                                                                        run: Callable[..., None]) -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        told: list[str] = []

        class Plain(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                told.append("lost")

        with server(pki.server_cert, pki.server_key) as peer:
            transport, _ = await loop.create_connection(Plain, "127.0.0.1", peer.port)
            transport.pause_reading()
            accepted = loop.run_in_executor(None, peer.accept)
            protocol = Recorder()
            leg = await tls_leg.start_tls(transport, protocol, upstream_tls(pki), 10)
            await accepted
            await asyncio.sleep(0.05)
            assert transport.is_closing() and told == []
            leg.write(b"still up")
            assert await in_thread(peer.read_exactly, 8) == b"still up"
    run(test)



def test_no_descriptor_for_the_duplicate_is_the_proxys_own_failure(pki: TestPki, run: Callable[..., None],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(fd: int) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    async def test() -> None:
        async with plain_peer() as (transport, _):
            monkeypatch.setattr(tls_leg.os, "dup", exhausted)
            with pytest.raises(OutOfDescriptorsError):
                await tls_leg.start_tls(transport, Recorder(), upstream_tls(pki), 10)
            transport.abort()
    run(test)


def test_a_socket_no_longer_connected_is_upstream_lost(pki: TestPki, run: Callable[..., None],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A reset that lands between the greeting and the first handshake step: `ssl` finds the socket not
    connected (ENOTCONN), which is the upstream gone, not a TLS failure of its own."""
    async def not_connected(loop: asyncio.AbstractEventLoop, tls_socket: ssl.SSLSocket) -> None:
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    async def test() -> None:
        async with plain_peer() as (transport, _):
            monkeypatch.setattr(tls_leg, "handshake", not_connected)
            with pytest.raises(UpstreamTlsError) as caught:
                await tls_leg.start_tls(transport, Recorder(), upstream_tls(pki), 10)
            assert caught.value.metric_label is Outcome.UPSTREAM_LOST
    run(test)


def test_a_cached_session_is_resumed_without_ssls_copy(pki: TestPki, run: Callable[..., None],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The second connection resumes the first one's session, offered by SSL_set_session directly:
    `SSLSocket.session`'s setter (which copies the session, parsing its certificates again) is not used."""
    original = ssl.SSLSocket.session

    def no_copy(self: ssl.SSLSocket, value: ssl.SSLSession) -> None:
        raise AssertionError("the session was set through ssl's copying setter")

    async def test() -> None:
        tls = upstream_tls(pki)
        with server(pki.server_cert, pki.server_key) as peer:
            protocol = Recorder()
            first = await connect(peer, tls, protocol)
            peer.connection.sendall(b"x")  # TLS 1.3: the tickets come after the handshake, read with this
            await protocol.wait_for(1)
            ssl_object = first.get_extra_info("ssl_object")
            assert tls.sessions is not None and tls.sessions.put("localhost", ssl_object.session, ssl_object.version())
            first.close()
            await protocol.lost
            peer.connection.close()
            monkeypatch.setattr(MeteredSSLSocket, "session", property(original.fget, no_copy))
            second = await connect(peer, tls, Recorder())
            assert second.get_extra_info("ssl_object").session_reused
            second.abort()
    run(test)
