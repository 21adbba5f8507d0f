"""One proxied connection: the asyncio driver around `HandshakeMachine`.

It wires the two legs (asyncio Protocols on both) to the machine: the machine's effects are carried out
in order, with no `await` between feeding it and acting on what it returns; it also owns the timers,
backpressure, half-close, and turning errors into the ERR packet the client expects. Connecting and
upgrading the upstream leg is `upstream.py`'s; the record of what the connection did, its outcome,
metrics and log line, `connection_record.py`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Coroutine

from tlsproxy import upstream
from tlsproxy.connection_record import ConnectionRecord, ConnectionStats
from tlsproxy.errors import HandshakeTimeoutError, TlsProxyError, UpstreamLostError
from tlsproxy.mysql.handshake import (
    ClientQuit,
    CloseConnection,
    Effect,
    HandshakeMachine,
    ReplaceUpstream,
    SendToClient,
    SendToServer,
    StartRelay,
    StartUpstreamTls,
)
from tlsproxy.outcome import Outcome
from tlsproxy.session_upstream import RouteRuntime, SessionUpstream

log = logging.getLogger(__name__)

HALF_CLOSE_LINGER_SECONDS = 30.0
"""After a client half-close, how long the server may take to answer and close before the proxy does."""

__all__ = ["ClientSide", "ConnectionStats", "RouteRuntime", "Session"]


class Session(SessionUpstream):
    """Created for each accepted client; `on_closed` is called exactly once, when both legs are gone."""

    def __init__(self, runtime: RouteRuntime, conn_id: int, on_closed: Callable[["Session"], None], *,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        """`loop`: the running loop, when the caller has it at hand (asking for it costs a system call)."""
        self.runtime = runtime
        self.route = runtime.route
        self.conn_id = conn_id
        self.record = ConnectionRecord(runtime.route, conn_id, tls=runtime.upstream_tls is not None,
                                       metrics=runtime.metrics)
        self.stats = self.record.stats
        self._on_closed = on_closed
        self._loop = loop or asyncio.get_running_loop()
        self.machine = HandshakeMachine(upstream_tls=runtime.upstream_tls is not None, auth_key=runtime.auth_key,
                                        upstream_pool=runtime.upstream_pool is not None)
        self._init_upstream()
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self._upstream_protocol: upstream.UpstreamSide | None = upstream.UpstreamSide(self)
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshake_deadline: asyncio.TimerHandle | None = None
        self._closed = False
        self._client_eof = False
        self._server_eof = False
        self._last_activity = time.monotonic()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None

    @property
    def client_address(self) -> str:
        return self.record.client_address

    # ---- lifecycle ------------------------------------------------------------------------------

    def client_connected(self, transport: asyncio.Transport) -> None:
        # No Nagle delay on either TCP leg: both event loops set TCP_NODELAY on the transports they make
        # (test_acceptor.test_both_legs_get_tcp_nodelay_from_the_event_loop).
        self.client = transport
        self.record.note_client(transport)
        self._handshake_deadline = self._loop.call_later(self.route.handshake_timeout, self._handshake_timed_out)
        try:
            adopted = self._adopt_parked_upstream()  # the pool's connection is had at once; else a task gets one
        except Exception:  # a bug: log it whole, keep serving others
            log.exception("conn=%d internal error adopting a parked upstream", self.conn_id)
            self.close("internal error", outcome=Outcome.INTERNAL_ERROR)
            return
        if not adopted:
            self._spawn(self._handshake())

    def refuse(self, transport: asyncio.Transport, error: TlsProxyError) -> None:
        """Answer a client the proxy will not serve (max connections, draining) with a first-packet ERR."""
        self.record.refused = True
        self.client = transport
        self.record.note_client(transport)
        self.fail(error)

    def _spawn(self, coroutine: Coroutine[None, None, None]) -> None:
        """Run a task of this session's: kept until it ends, cancelled by `close`, never started after it."""
        if self._closed:
            coroutine.close()
            return
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _handshake_timed_out(self) -> None:
        """`handshake_timeout` after the client came, it is not logged in: whatever phase it is in ends."""
        self._handshake_deadline = None
        if not self._closed and not self.machine.logged_in:
            self.fail(HandshakeTimeoutError(f"handshake timed out after {self.route.handshake_timeout:g}s "
                                            f"(phase: {self.machine.state.value})"))

    async def _handshake(self) -> None:
        """A prewarmed or a fresh upstream (`_acquire_upstream`); the login goes on in the protocol callbacks."""
        try:
            await self._acquire_upstream()
        except TlsProxyError as error:
            self.fail(error)
        except asyncio.CancelledError:
            self.close("cancelled", outcome=Outcome.ABORTED)
            raise
        except Exception:  # a bug: log it whole, keep serving others
            log.exception("conn=%d internal error during the handshake", self.conn_id)
            self.close("internal error", outcome=Outcome.INTERNAL_ERROR)

    # ---- effects ---------------------------------------------------------------------------------

    def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, SendToServer):
                if self.upstream is not None and effect.data:
                    self.upstream.write(effect.data)
            elif isinstance(effect, SendToClient):
                if self.client is not None and effect.data:
                    self.record.first_packet_to_client()
                    self.client.write(effect.data)
            elif isinstance(effect, StartUpstreamTls):
                # Read nothing more in plaintext: start_tls resumes reading under TLS (STYLE.md: asyncpg).
                if self.upstream is not None:
                    self.upstream.pause_reading()
                self._spawn(self._start_tls())
            elif isinstance(effect, StartRelay):
                self._start_relay()
            elif isinstance(effect, ReplaceUpstream):
                self._replace_upstream()
            elif isinstance(effect, ClientQuit):
                if not self._park("client quit") and self.upstream is not None:
                    self.upstream.write(effect.quit)  # as if relayed: the server closes
            elif isinstance(effect, CloseConnection):
                self.close(effect.reason, outcome=effect.outcome)

    def _start_relay(self) -> None:
        if not self._upstream_logged_in():  # a fresh upstream (not a pooled one): its TLS session is news
            upstream.keep_tls_session(self.runtime.upstream_tls, self.upstream, self.stats.certificate_not_after)
        if self.runtime.prewarm is not None and self.machine.ssl_request:
            self.runtime.prewarm.learn(self.machine.ssl_request)
        if self._handshake_deadline is not None:
            self._handshake_deadline.cancel()
            self._handshake_deadline = None
        self.record.relay_started(self.machine.auth_plugin)
        if self.route.idle_timeout:
            self._idle_timer = self._loop.call_later(self.route.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        timeout = self.route.idle_timeout
        assert timeout
        idle = time.monotonic() - self._last_activity
        if idle >= timeout:
            self.close(f"idle for {idle:.0f}s (idle_timeout {timeout:g}s)", outcome=Outcome.IDLE_TIMEOUT)
        else:
            self._idle_timer = self._loop.call_later(timeout - idle, self._check_idle)

    def _run_machine(self, step: Callable[[], list[Effect]]) -> None:
        try:
            self._apply(step())
        except TlsProxyError as error:
            self.fail(error)
        except Exception:
            log.exception("conn=%d internal error in the handshake machine", self.conn_id)
            self.close("internal error", outcome=Outcome.INTERNAL_ERROR)

    # ---- data from the peers ---------------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        if self._closed:
            return
        machine = self.machine
        if machine.logged_in:
            self._last_activity = time.monotonic()
            self.stats.bytes_client_to_server += len(data)
            passing = machine.relay_client_prefix(data)
            if passing:
                if self.upstream is not None:
                    self.upstream.write(data if passing == len(data) else data[:passing])
                if passing == len(data):
                    return
                data = data[passing:]
        self._run_machine(lambda: machine.receive_client_data(data))

    def server_data(self, data: bytes) -> None:
        if self._closed:
            return
        if self.machine.logged_in:
            self._last_activity = time.monotonic()
            self.stats.bytes_server_to_client += len(data)
            if not self.machine.inspecting_server_data:
                assert self.client is not None
                if self.machine.upstream_pool:
                    self.machine.note_server_data(data)
                self.client.write(data)
                return
        self._run_machine(lambda: self.machine.receive_server_data(data))

    def client_eof(self) -> bool:
        """True keeps the client transport open (half-closed) while the server may still answer."""
        self._client_eof = True
        if not self.machine.logged_in:
            self.close("client closed during the handshake", outcome=Outcome.CLIENT_GONE, closed_by="client")
            return False
        if self._server_eof or self.upstream is None:
            self.close("both sides closed", closed_by="client")
            return False
        if self.machine.upstream_pool and self._park("client closed"):
            return False
        if self.upstream.can_write_eof():
            self.upstream.write_eof()
            return True
        # A TLS upstream cannot half-close: the machine ends the session with COM_QUIT after the
        # client's last complete command, and the server's answer still reaches the client.
        quit_effects = self.machine.receive_client_eof()
        if not quit_effects:
            self.close("client closed", closed_by="client")
            return False
        self._apply(quit_effects)
        self._linger_timer = self._loop.call_later(
            HALF_CLOSE_LINGER_SECONDS,
            lambda: self.close("upstream did not close after COM_QUIT", outcome=Outcome.ABORTED, closed_by="client"))
        return True

    def server_eof(self) -> bool:
        if self._pooled_upstream_gone():
            return False
        self._server_eof = True
        if not self.machine.logged_in:
            self.fail(UpstreamLostError("upstream closed the connection during the handshake"))
            return False
        if self._client_eof or self.client is None or not self.client.can_write_eof():
            self.close("both sides closed", closed_by="server")
            return False
        self.client.write_eof()
        # A TLS transport closes itself on EOF whatever this returns (asyncio warns if it is True).
        return self.runtime.upstream_tls is None

    def client_lost(self, exc: Exception | None) -> None:
        if not self._closed and self.machine.logged_in and self.machine.upstream_pool and not self._client_eof:
            if self._park("client closed" if exc is None else f"client connection lost ({exc})"):
                return
        if not self._closed:
            self.close(f"client connection lost ({exc.__class__.__name__}: {exc})" if exc else "client closed",
                       outcome=None if self.machine.logged_in else Outcome.CLIENT_GONE, closed_by="client")

    def server_lost(self, exc: Exception | None) -> None:
        if self._closed or self._pooled_upstream_gone():
            return
        if not self.machine.logged_in:
            self.fail(UpstreamLostError("lost the upstream connection during the handshake"))
        else:
            self.close(f"upstream connection lost ({exc.__class__.__name__}: {exc})" if exc else "upstream closed",
                       closed_by="server")

    # ---- backpressure ------------------------------------------------------------------------------

    def pause_client_reading(self) -> None:
        if self.client is not None and not self._closed:
            self.client.pause_reading()

    def resume_client_reading(self) -> None:
        if self.client is not None and not self._closed:
            self.client.resume_reading()

    def pause_server_reading(self) -> None:
        if self.upstream is not None and not self._closed:
            self.upstream.pause_reading()

    def resume_server_reading(self) -> None:
        if self.upstream is not None and not self._closed:
            self.upstream.resume_reading()

    # ---- ending --------------------------------------------------------------------------------------

    def fail(self, error: TlsProxyError) -> None:
        """Tell the client why (if the relay has not started) and close both legs."""
        if self._closed:
            return
        packet = self.machine.error_packet(error)
        if packet is not None and self.client is not None and not self.client.is_closing():
            self.client.write(packet)
        self.close(error.message, outcome=error.metric_label)

    def close(self, reason: str, *, outcome: Outcome | None = None, closed_by: str = "proxy") -> None:
        if self._closed:
            return
        self._closed = True
        for timer in (self._idle_timer, self._linger_timer, self._handshake_deadline):
            if timer is not None:
                timer.cancel()
        upstream_leg = self.upstream
        if upstream_leg is not None and not upstream_leg.is_closing() and not upstream_leg.get_write_buffer_size():
            # Nothing left to send: drop the leg at once (a TLS leg still sends close_notify). A close()
            # that waited for the server's close_notify while reading (and discarding) whatever the
            # server still streams, as uvloop's TLS transport did, would keep a server sending a whole
            # result to a client gone mid-result.
            upstream_leg.abort()
        for transport in (self.client, upstream_leg):
            if transport is not None and not transport.is_closing():
                transport.close()
        for task in self._tasks:
            if not task.done() and asyncio.current_task() is not task:
                task.cancel()
        self._upstream_login_ended(outcome, closed_by)
        self.record.end(reason, outcome, closed_by, relayed=self.machine.logged_in)
        self._on_closed(self)
        self._release()

    def _release(self) -> None:
        """Drop this session's links to its transports and tasks. The protocols still point at the
        session (a late callback finds it closed), but nothing points back, so reference counting frees
        the connection's TLS objects and uvloop's 256 KiB read buffer as soon as the loop lets go of the
        transports, instead of whenever a full garbage collection finds the cycle: GC is triggered by
        counts of Python objects, and a session is few of them but holds ~100 KiB of native memory."""
        self.client = None
        self.upstream = None
        self._upstream_protocol = None  # it keeps pointing here, for its late callbacks
        self.machine.discard()
        self._tasks.clear()
        self._idle_timer = self._linger_timer = self._handshake_deadline = None

    def abort(self, reason: str) -> None:
        """Close now without flushing (shutdown after the drain period)."""
        for transport in (self.client, self.upstream):
            if transport is not None:
                transport.abort()
        self.close(reason, outcome=Outcome.ABORTED)


class ClientSide(asyncio.Protocol):
    """The client leg. The server module creates one per accepted connection."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session.client_connected(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.session.client_data(data)

    def eof_received(self) -> bool:
        return self.session.client_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.client_lost(exc)

    def pause_writing(self) -> None:
        self.session.pause_server_reading()

    def resume_writing(self) -> None:
        self.session.resume_server_reading()
