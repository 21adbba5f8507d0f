"""Session driven with fake transports: no socket, no database (as cloud-sql-proxy tests its dialer).

The route's `connector` (upstream.py's seam) hands the session's upstream protocol a fake transport;
the client leg is a fake transport given to `ClientSide`. Each test feeds bytes in as a peer would and
checks the exact bytes written to each side, then the connection's outcome, metrics and log line.
Expected bytes come from the fixtures and the MySQL layouts, never from the code under test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import ssl
from typing import Any, Awaitable, Callable

import pytest

from tests.fixtures import greetings as G
from tests.fixtures import responses as R
from tests.support.playbook import frame
from tlsproxy import upstream
from tlsproxy.config import Route, SslMode, TcpAddress, TlsSettings
from tlsproxy.metrics import ProxyMetrics
from tlsproxy.outcome import Outcome
from tlsproxy.session import ClientSide, RouteRuntime, Session
from tlsproxy.tls import UpstreamTls
from tlsproxy.upstream_pool import UpstreamPool

MASKED_CAPS = 0x00000800 | 0x40000000 | 0x00000020 | 0x04000000 | 0x10000000  # SSL, verify cert, compress, zstd, MFA
OK_PACKET = b"\x00\x00\x00\x02\x00\x00\x00"
DENIED = b"\xff" + (1045).to_bytes(2, "little") + b"#28000" + b"Access denied for user 'app'@'10.0.0.5'"
SELECT_1 = frame(0, b"\x03SELECT 1")
RESULT = frame(1, b"\x01") + frame(2, b"\x03def\x00\x00\x00\x011\x00\x0c?\x00\x01\x00\x00\x00\x08\x81\x00\x00\x00\x00")


def with_caps(payload: bytes, caps: int) -> bytes:
    return caps.to_bytes(4, "little") + payload[4:]


def masked_greeting(fx: G.GreetingFixture) -> bytes:
    return G.variant(fx, capability_flags=fx.capability_flags & ~MASKED_CAPS)


def masked_response(payload: bytes) -> bytes:
    return with_caps(payload, int.from_bytes(payload[:4], "little") & ~MASKED_CAPS)


def err_frame(sequence_id: int, errno: int, sqlstate: str | None, message: str) -> bytes:
    body = b"\xff" + errno.to_bytes(2, "little") + (b"#" + sqlstate.encode() if sqlstate else b"") + message.encode()
    return frame(sequence_id, body)


# ---- fakes ----------------------------------------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    """Records what the session does to one leg."""

    def __init__(self, peer: object = ("192.0.2.7", 50123), extra: dict[str, object] | None = None) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = self.aborted = self.eof_written = self.reading_paused = False
        self.protocol: asyncio.BaseProtocol | None = None
        self._extra = {"peername": peer, **(extra or {})}

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def take(self) -> bytes:
        """What was written since the last take."""
        data, self.written = bytes(self.written), bytearray()
        return data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)


class FakeSslObject:
    """What `upstream.note_tls` reads from an upgraded leg."""

    session_reused = False
    handshake_cpu_seconds = 0.0004

    def version(self) -> str:
        return "TLSv1.3"

    def cipher(self) -> tuple[str, str, int]:
        return ("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256)

    def getpeercert(self) -> dict[str, str]:
        return {"notAfter": "Jan  1 00:00:00 2030 GMT"}


class Harness:
    """One session, its fake client leg, and a connector that gives it fake upstream legs."""

    def __init__(self, route: Route, *, upstream_tls: UpstreamTls | None = None,
                 refuse_connects: int = 0) -> None:
        self.metrics = ProxyMetrics()
        self.route = route
        self.closed: list[Session] = []
        self.dialed: list[tuple[str, int]] = []
        self.refuse_connects = refuse_connects
        self.upstream: FakeTransport | None = None
        self.upstream_protocol: asyncio.BufferedProtocol | None = None
        runtime = RouteRuntime(route, upstream_tls, None, self.metrics, None, self.connect)
        self.session = Session(runtime, 7, self.closed.append)
        self.client = FakeTransport()
        self.client_side = ClientSide(self.session)

    async def connect(self, factory: upstream.ProtocolFactory, host: str, port: int,
                      ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        self.dialed.append((host, port))
        if len(self.dialed) <= self.refuse_connects:
            raise ConnectionRefusedError(111, "Connection refused")
        protocol = factory()
        assert isinstance(protocol, asyncio.BufferedProtocol)
        transport = FakeTransport(peer=("10.0.0.9", port))
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        self.upstream, self.upstream_protocol = transport, protocol
        return transport, protocol

    async def accept(self) -> None:
        self.client_side.connection_made(self.client)
        await settle()

    def server_sends(self, data: bytes) -> None:
        assert self.upstream_protocol is not None
        view = self.upstream_protocol.get_buffer(len(data))
        view[: len(data)] = data
        self.upstream_protocol.buffer_updated(len(data))

    def client_sends(self, data: bytes) -> None:
        self.client_side.data_received(data)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"route": self.route.name, **labels})

    def assert_ended_before_relay(self, caplog: pytest.LogCaptureFixture, outcome: Outcome) -> dict[str, object]:
        """Both legs closed, `on_closed` called once, and the outcome in the log line and the metrics."""
        assert self.closed == [self.session] and self.client.closed
        assert self.upstream is None or self.upstream.closed
        assert self.session.stats.outcome is outcome
        fields = end_line(caplog)
        assert fields["outcome"] == outcome
        assert self.sample("tlsproxy_connections_closed_total", outcome=outcome) == 1
        assert self.sample("tlsproxy_handshake_failures_total", reason=outcome) == 1
        return fields

    async def login(self, fx: G.GreetingFixture = G.MARIADB_10_11_CAPTURED,
                    response: bytes = R.CONNECTORC_MARIADB_DB.payload) -> None:
        """Plaintext upstream: greeting, HandshakeResponse, OK, each checked on the wire."""
        await self.accept()
        assert self.upstream is not None and self.dialed == [("db.internal", 3306)]
        self.server_sends(frame(0, fx.payload))
        assert self.client.take() == frame(0, masked_greeting(fx))
        self.client_sends(frame(1, response))
        assert self.upstream.take() == frame(1, masked_response(response))
        self.server_sends(frame(2, OK_PACKET))
        assert self.client.take() == frame(2, OK_PACKET)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def route(**fields: Any) -> Route:
    fields.setdefault("tls", TlsSettings(mode=SslMode.DISABLED))
    return Route(name="r", listen=TcpAddress("127.0.0.1", 0), upstream=TcpAddress("db.internal", 3306), **fields)


def in_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (the session takes the running loop)."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))
    return run


def end_line(caplog: pytest.LogCaptureFixture) -> dict[str, object]:
    """The fields of the one end-of-connection line."""
    lines = [record for record in caplog.records if hasattr(record, "connection")]
    assert len(lines) == 1, [record.getMessage() for record in lines]
    assert lines[0].name == "tlsproxy.session"
    return lines[0].connection  # type: ignore[attr-defined,no-any-return]


@pytest.fixture(autouse=True)
def _log_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tlsproxy.session")


# ---- plaintext upstream (ssl_mode DISABLED) ------------------------------------------------------------


@in_loop
async def test_plaintext_login_then_a_query_both_ways_then_half_close(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(route())
    await h.login()
    assert h.session.stats.outcome is Outcome.RELAYED
    assert h.session.stats.auth_plugin == "mysql_native_password"
    assert h.sample("tlsproxy_authentications_total", plugin="mysql_native_password") == 1
    assert h.sample("tlsproxy_handshake_duration_seconds_count", phase="auth") == 1
    assert h.sample("tlsproxy_handshake_duration_seconds_count", phase="tls") is None  # no TLS phase

    h.client_sends(SELECT_1)
    assert h.upstream is not None and h.upstream.take() == SELECT_1
    h.server_sends(RESULT)
    assert h.client.take() == RESULT
    assert (h.session.stats.bytes_client_to_server, h.session.stats.bytes_server_to_client) == (len(SELECT_1), len(RESULT))

    assert h.client_side.eof_received() is True  # half-close: passed on, the client leg stays open
    assert h.upstream.eof_written and not h.closed
    assert h.upstream_protocol is not None and h.upstream_protocol.eof_received() is False
    assert h.closed == [h.session] and h.client.closed and h.upstream.closed

    fields = end_line(caplog)
    assert {key: fields[key] for key in ("conn", "route", "client", "upstream", "outcome", "closed_by", "tls",
                                         "auth", "bytes_up", "bytes_down", "reason", "warning")} == {
        "conn": 7, "route": "r", "client": "192.0.2.7:50123", "upstream": "db.internal:3306", "outcome": "ok",
        "closed_by": "server", "tls": "off", "auth": "mysql_native_password", "bytes_up": len(SELECT_1),
        "bytes_down": len(RESULT), "reason": "both sides closed",
        "warning": "upstream NOT encrypted (ssl_mode=DISABLED)",
    }
    assert caplog.records[-1].levelno == logging.WARNING  # DISABLED is always said loudly
    assert h.sample("tlsproxy_connections_closed_total", outcome="ok") == 1
    assert h.sample("tlsproxy_handshake_failures_total", reason="ok") is None


CHANGE_USER = frame(0, b"\x11second\x00" + b"\x14" + bytes(range(20)) + b"shop\x00" + b"\x21\x00"
                   + b"mysql_native_password\x00")


@in_loop
async def test_one_read_with_a_query_then_com_change_user_goes_up_whole_and_in_order(
        caplog: pytest.LogCaptureFixture) -> None:
    """The relay's hot path sends the query as it came; the machine takes the COM_CHANGE_USER behind it."""
    h = Harness(route())
    await h.login()
    h.client_sends(SELECT_1 + SELECT_1)
    assert h.upstream is not None and h.upstream.take() == SELECT_1 + SELECT_1
    h.client_sends(SELECT_1 + CHANGE_USER)
    assert h.upstream.take() == SELECT_1 + CHANGE_USER
    assert h.session.machine.state.name == "CHANGE_USER_SENT"
    h.client_sends(SELECT_1)  # pipelined behind COM_CHANGE_USER: held until the server has answered it
    assert h.upstream.take() == b""
    assert h.session.stats.bytes_client_to_server == 4 * len(SELECT_1) + len(CHANGE_USER)


@in_loop
async def test_a_login_the_server_denies_reaches_the_client_as_auth_denied(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(route())
    await h.accept()
    h.server_sends(frame(0, G.MYSQL_57.payload))
    assert h.client.take() == frame(0, masked_greeting(G.MYSQL_57))
    h.client_sends(frame(1, R.LIBMYSQLCLIENT_MYSQL57_NODB.payload))
    h.server_sends(frame(2, DENIED))
    assert h.client.take() == frame(2, DENIED)
    assert h.upstream is not None
    h.assert_ended_before_relay(caplog, Outcome.AUTH_DENIED)


@in_loop
async def test_an_upstream_that_refuses_gets_the_client_an_err_packet(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(route(connect_retry_window=0.0), refuse_connects=1)
    await h.accept()
    # Before any greeting the client reads a pre-4.1 ERR (no SQLSTATE marker) as the first packet.
    expected = err_frame(0, 1043, None, "tlsproxy: cannot connect to upstream db.internal:3306: Connection refused")
    assert h.client.take() == expected
    assert h.upstream is None
    h.assert_ended_before_relay(caplog, Outcome.UPSTREAM_REFUSED)


@in_loop
async def test_a_refused_connect_is_retried_within_the_window(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(route(connect_retry_window=5.0), refuse_connects=2)
    h.client_side.connection_made(h.client)
    for _ in range(500):  # 0.05 s and 0.1 s of backoff, however loaded the machine
        if h.upstream is not None:
            break
        await asyncio.sleep(0.01)
    assert h.dialed == [("db.internal", 3306)] * 3 and h.upstream is not None and not h.closed
    retries = [record.getMessage() for record in caplog.records if "retrying in" in record.getMessage()]
    assert retries == ["conn=7 upstream db.internal:3306: [Errno 111] Connection refused; retrying in 0.05s",
                       "conn=7 upstream db.internal:3306: [Errno 111] Connection refused; retrying in 0.10s"]
    assert h.session.stats.connect_seconds is not None and h.session.stats.connect_seconds >= 0.14
    h.session.close("test over")


@in_loop
async def test_a_client_that_leaves_during_the_handshake_is_client_gone(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(route())
    await h.accept()
    h.server_sends(frame(0, G.MARIADB_10_11_CAPTURED.payload))
    assert h.client_side.eof_received() is False
    assert h.upstream is not None and h.upstream.aborted  # nothing left to send: dropped at once
    assert h.assert_ended_before_relay(caplog, Outcome.CLIENT_GONE)["closed_by"] == "client"


@in_loop
async def test_an_upstream_that_closes_during_the_handshake_is_upstream_lost(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(route())
    await h.accept()
    h.server_sends(frame(0, G.MYSQL_80.payload))
    h.client.take()
    h.client_sends(frame(1, R.PYMYSQL_MYSQL80_DB.payload))
    assert h.upstream_protocol is not None and h.upstream_protocol.eof_received() is False
    assert h.client.take() == err_frame(
        2, 1043, "08S01", "tlsproxy: upstream closed the connection during the handshake")
    h.assert_ended_before_relay(caplog, Outcome.UPSTREAM_LOST)


@in_loop
async def test_a_handshake_that_times_out_tells_the_client(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(route(handshake_timeout=0.05))
    await h.accept()
    h.server_sends(frame(0, G.MARIADB_10_11_CAPTURED.payload))
    h.client.take()
    await asyncio.sleep(0.1)
    # The client got the greeting and owes its response (seq 1): it reads this ERR as the answer (seq 2).
    assert h.client.take() == err_frame(
        2, 1159, "08S01", "tlsproxy: handshake timed out after 0.05s (phase: client_response)")
    h.assert_ended_before_relay(caplog, Outcome.HANDSHAKE_TIMEOUT)


@in_loop
async def test_backpressure_pauses_the_other_side(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(route())
    await h.login()
    assert h.upstream is not None and h.upstream_protocol is not None
    h.client_side.pause_writing()  # the client reads slowly: stop reading the server
    assert h.upstream.reading_paused and not h.client.reading_paused
    h.client_side.resume_writing()
    assert not h.upstream.reading_paused
    h.upstream_protocol.pause_writing()  # the server reads slowly: stop reading the client
    assert h.client.reading_paused
    h.upstream_protocol.resume_writing()
    assert not h.client.reading_paused
    h.session.close("test over")
    assert end_line(caplog)["outcome"] == "ok"


# ---- TLS upstream, `start_tls` faked ----------------------------------------------------------------------


def tls_runtime() -> UpstreamTls:
    return UpstreamTls(ssl.create_default_context(), "db.internal", "db.internal", SslMode.VERIFY_IDENTITY)


@in_loop
async def test_tls_upstream_login_on_a_faked_upgrade(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    upgraded = FakeTransport(extra={"ssl_object": FakeSslObject()})
    calls: list[tuple[object, ...]] = []

    async def fake_start_tls(transport: asyncio.Transport, protocol: asyncio.BaseProtocol, upstream_tls: UpstreamTls,
                             handshake_timeout: float) -> asyncio.Transport:
        calls.append((transport, protocol, upstream_tls, handshake_timeout))
        return upgraded

    monkeypatch.setattr(upstream, "start_tls", fake_start_tls)
    tls = tls_runtime()
    h = Harness(route(tls=TlsSettings()), upstream_tls=tls)
    await h.accept()
    assert h.upstream is not None
    h.server_sends(frame(0, G.MYSQL_80.payload))
    assert h.client.take() == frame(0, masked_greeting(G.MYSQL_80))
    response = R.LIBMYSQLCLIENT_MYSQL80_DB.payload
    h.client_sends(frame(1, response))
    ssl_request = with_caps(response[:32], (int.from_bytes(response[:4], "little") & ~MASKED_CAPS) | 0x800)
    assert h.upstream.take() == frame(1, ssl_request)
    assert h.upstream.reading_paused  # nothing more is read in plaintext
    await settle()
    assert calls == [(h.upstream, h.upstream_protocol, tls, 30.0)]
    assert upgraded.take() == frame(2, masked_response(response))  # the login goes over TLS only
    h.server_sends(frame(3, OK_PACKET))
    assert h.client.take() == frame(2, OK_PACKET)
    stats = h.session.stats
    assert (stats.tls_version, stats.tls_cipher, stats.tls_resumed) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384", False)
    assert stats.certificate_not_after == ssl.cert_time_to_seconds("Jan  1 00:00:00 2030 GMT")
    assert h.sample("tlsproxy_tls_handshakes_total", version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384",
                    resumed="no") == 1
    h.session.close("test over")
    assert end_line(caplog)["tls"] == "TLSv1.3"


@in_loop
async def test_close_cancels_every_task_the_session_started(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    never = asyncio.Event()

    async def stuck_start_tls(*args: object) -> asyncio.Transport:
        await never.wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(upstream, "start_tls", stuck_start_tls)
    before = asyncio.all_tasks()
    h = Harness(route(tls=TlsSettings()), upstream_tls=tls_runtime())
    await h.accept()
    h.server_sends(frame(0, G.MYSQL_80.payload))
    h.client_sends(frame(1, R.LIBMYSQLCLIENT_MYSQL80_DB.payload))
    await settle()
    started = asyncio.all_tasks() - before
    assert len(started) == 1  # the TLS upgrade (the connect's task ended when the upstream was had)
    h.session.close("shutting down", outcome=Outcome.ABORTED)
    await settle()
    assert all(task.cancelled() for task in started)
    assert end_line(caplog)["outcome"] == "aborted"


class StuckConnectHarness(Harness):
    async def connect(self, factory: upstream.ProtocolFactory, host: str, port: int,
                      ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@in_loop
async def test_close_cancels_a_connect_under_way(caplog: pytest.LogCaptureFixture) -> None:
    before = asyncio.all_tasks()
    h = StuckConnectHarness(route())
    await h.accept()
    started = asyncio.all_tasks() - before
    assert len(started) == 1  # the handshake's connect
    h.session.close("shutting down", outcome=Outcome.ABORTED)
    await settle()
    assert all(task.cancelled() for task in started)
    assert end_line(caplog)["outcome"] == "aborted"


# ---- the upstream pool (`upstream_pool`), `start_tls` faked ------------------------------------------------

RESET_CONNECTION = bytes.fromhex("010000001f")
QUIT = frame(0, b"\x01")
DO_1 = frame(0, b"\x03DO 1")


class PooledHarness(Harness):
    """A Harness whose route pools upstream connections; `next_client` makes another session on the same
    runtime (and pool), as the listener does for the next accepted client."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        async def fake_start_tls(transport: asyncio.Transport, protocol: asyncio.BaseProtocol, *args: object,
                                 ) -> asyncio.Transport:
            upgraded = FakeTransport(extra={"ssl_object": FakeSslObject()})
            upgraded.set_protocol(protocol)
            self.upstream = upgraded
            return upgraded

        monkeypatch.setattr(upstream, "start_tls", fake_start_tls)
        super().__init__(route(tls=TlsSettings(), upstream_pool=2), upstream_tls=tls_runtime())
        self.pool = UpstreamPool(self.route, self.metrics)
        self.runtime = dataclasses.replace(self.session.runtime, upstream_pool=self.pool)
        self.next_client()

    def next_client(self) -> None:
        self.session = Session(self.runtime, 7 + len(self.closed), self.closed.append)
        self.client = FakeTransport()
        self.client_side = ClientSide(self.session)

    def parked_sends(self, data: bytes) -> None:
        """Bytes from the server to a connection the pool holds."""
        assert self.upstream is not None
        protocol = self.upstream.protocol
        assert isinstance(protocol, asyncio.BufferedProtocol)
        view = protocol.get_buffer(len(data))
        view[: len(data)] = data
        protocol.buffer_updated(len(data))


def ssl_request_of(response: bytes) -> bytes:
    return with_caps(response[:32], (int.from_bytes(response[:4], "little") & ~MASKED_CAPS) | 0x800)


async def first_login_then_quit(h: PooledHarness, *, answer: bytes = frame(1, OK_PACKET)) -> FakeTransport:
    """The first client: a fresh upstream, TLS, a login, `DO 1` answered, then COM_QUIT."""
    await h.accept()
    h.server_sends(frame(0, G.MARIADB_10_11_CAPTURED.payload))
    h.client.take()
    response = R.CONNECTORC_MARIADB_NODB.payload
    h.client_sends(frame(1, response))
    await settle()
    h.server_sends(frame(3, OK_PACKET))
    assert h.client.take() == frame(2, OK_PACKET)
    h.client_sends(DO_1)
    upgraded = h.upstream
    assert upgraded is not None and upgraded.take() == frame(2, masked_response(response)) + DO_1
    h.server_sends(answer)
    h.client_sends(QUIT)
    return upgraded


@in_loop
async def test_a_client_that_quits_leaves_its_upstream_reset_and_parked(monkeypatch: pytest.MonkeyPatch,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    h = PooledHarness(monkeypatch)
    upgraded = await first_login_then_quit(h)
    assert upgraded.take() == RESET_CONNECTION  # not COM_QUIT
    assert not upgraded.closed and h.client.closed and h.closed == [h.session]
    fields = end_line(caplog)
    assert (fields["outcome"], fields["parked"], fields["reused"]) == ("ok", True, False)
    assert len(h.pool) == 0 and h.pool.resetting == 1  # parked only after the OK
    h.parked_sends(frame(1, OK_PACKET))
    assert len(h.pool) == 1 and h.pool.resetting == 0
    assert h.sample("tlsproxy_upstream_pool_events_total", outcome="parked") == 1
    h.pool.close()


async def parked_then_next_client(h: PooledHarness, caplog: pytest.LogCaptureFixture,
                                  **route_changes: Any) -> FakeTransport:
    """The first client quits, the reset is answered (parked); then the next client comes (log cleared)."""
    upgraded = await first_login_then_quit(h)
    h.parked_sends(frame(1, OK_PACKET))
    upgraded.take()
    caplog.clear()
    if route_changes:
        h.runtime = dataclasses.replace(h.runtime, route=dataclasses.replace(h.route, **route_changes))
    h.next_client()
    await h.accept()
    return upgraded


@in_loop
async def test_the_next_client_logs_in_on_the_parked_connection_through_com_change_user(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    h = PooledHarness(monkeypatch)
    upgraded = await parked_then_next_client(h, caplog)
    assert h.dialed == [("db.internal", 3306)]  # no second connect
    assert h.client.take() == frame(0, masked_greeting(G.MARIADB_10_11_CAPTURED))  # the parked one's own
    response = R.CONNECTORC_MARIADB_NODB.payload
    h.client_sends(frame(1, response))
    sent = upgraded.take()
    # COM_CHANGE_USER at seq 0: 0x11, user, the auth data with a 1-byte length, no database, the charset
    # (2 bytes), the plugin, then the client's attributes (PROTOCOL.md §6).
    scramble = R.SCRAMBLE_NATIVE_MARIADB
    assert sent[3] == 0
    assert sent[4:].startswith(b"\x11app\x00" + bytes((len(scramble),)) + scramble + b"\x00"
                               + bytes((response[8], 0)) + b"mysql_native_password\x00")
    assert sent.endswith(b"program_name\x05mysql\x0c_server_host\t127.0.0.1")
    # MariaDB's switch to native password over the greeting's nonce: the client's answer is the one in its
    # response, which the proxy sends up itself; the client sees the OK at seq 2.
    switch = b"\xfemysql_native_password\x00" + G.MARIADB_10_11_CAPTURED.nonce + b"\x00"
    h.parked_sends(frame(1, switch))  # the session's protocol now; the helper feeds whatever is set
    assert h.client.take() == b""
    assert upgraded.take() == frame(2, scramble)
    h.parked_sends(frame(3, OK_PACKET))
    assert h.client.take() == frame(2, OK_PACKET)
    assert h.sample("tlsproxy_upstream_pool_events_total", outcome="reused") == 1
    assert h.sample("tlsproxy_handshake_duration_seconds_count", phase="change_user") == 1
    assert h.sample("tlsproxy_handshake_duration_seconds_count", phase="auth") == 1  # the first client's
    assert h.sample("tlsproxy_tls_handshakes_total", version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384",
                    resumed="no") == 1  # no second handshake counted
    h.session.close("test over")
    assert end_line(caplog)["reused"] is True
    h.pool.close()


@in_loop
async def test_a_client_on_a_parked_connection_that_never_answers_the_greeting_times_out(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The parked connection is had without a task; the handshake deadline still runs from the client's arrival."""
    h = PooledHarness(monkeypatch)
    upgraded = await parked_then_next_client(h, caplog, handshake_timeout=0.05)
    assert h.client.take() == frame(0, masked_greeting(G.MARIADB_10_11_CAPTURED))
    await asyncio.sleep(0.1)
    assert h.client.take() == err_frame(
        2, 1159, "08S01", "tlsproxy: handshake timed out after 0.05s (phase: client_response)")
    assert upgraded.closed and len(h.pool) == 0  # the adopted connection is not parked again
    assert h.closed[-1] is h.session and h.client.closed
    assert end_line(caplog)["outcome"] == "handshake_timeout"


@in_loop
async def test_a_client_that_quits_with_a_command_unanswered_is_not_parked(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    h = PooledHarness(monkeypatch)
    upgraded = await first_login_then_quit(h, answer=b"")  # `DO 1` never answered
    assert upgraded.take() == QUIT  # passed on, as without a pool
    assert h.pool.resetting == 0 and len(h.pool) == 0
    assert h.sample("tlsproxy_upstream_pool_events_total", outcome="in_flight") == 1
    h.session.close("test over")
