"""The upstream TLS session cache, with real sessions from real in-memory TLS handshakes (no sockets):
the proxy's client context against a Python TLS server with the test PKI's certificate."""

from __future__ import annotations

import dataclasses
import ssl
import time
from typing import Callable
import pytest

from tests.support.pki import TestPki
from tlsproxy.config import Route, TcpAddress, TlsSettings
from tlsproxy.tls import MeteredSSLObject, UpstreamTls, build_upstream_tls
from tlsproxy.tls_sessions import TlsSessionCache


def server_context(pki: TestPki, version: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    context.minimum_version = context.maximum_version = ssl.TLSVersion[version.replace(".", "_")]
    return context


def upstream(pki: TestPki, version: str, **settings: object) -> UpstreamTls:
    route = Route(name="t", listen=TcpAddress("127.0.0.1", 0), upstream=TcpAddress("localhost", 3306),
                  tls=TlsSettings(ca_file=pki.ca, tls_versions=(version,), **settings))  # type: ignore[arg-type]
    result = build_upstream_tls(route)
    assert result is not None
    return result


def pump(source: ssl.MemoryBIO, sink: ssl.MemoryBIO) -> bool:
    data = source.read()
    if data:
        sink.write(data)
    return bool(data)


def handshake(client_tls: UpstreamTls, server: ssl.SSLContext, *, server_name: str | None = "localhost",
              garbage: bytes | None = None) -> MeteredSSLObject:
    """One full handshake in memory, then the client reads what the server sent after it (TLS 1.3
    tickets), as the proxy does while authentication goes on. Raises what the client raised."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_tls.context.wrap_bio(c_in, c_out, server_hostname=server_name)
    assert isinstance(client, MeteredSSLObject)
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, peer in (("client", client), ("server", server_side)):
            if not done[name]:
                try:
                    peer.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        moved = pump(c_out, s_in)
        if garbage is not None:
            s_out.read()
            c_in.write(garbage)
            garbage = None
        else:
            moved = pump(s_out, c_in) or moved
        if all(done.values()) and not moved:
            break
    server_side.write(b"x")  # application data after the tickets
    pump(s_out, c_in)
    assert client.read(1) == b"x"
    return client


def with_clock(client_tls: UpstreamTls, clock: Callable[[], float]) -> UpstreamTls:
    sessions = TlsSessionCache(clock=clock)
    client_tls.context.session_cache = sessions
    return dataclasses.replace(client_tls, sessions=sessions)


def keep(client_tls: UpstreamTls, client: ssl.SSLObject, not_after: float | None = None) -> bool:
    assert client_tls.sessions is not None
    return client_tls.sessions.put(client_tls.server_hostname, client.session, client.version(), not_after)


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_a_kept_session_is_offered_and_resumed(pki: TestPki, version: str) -> None:
    client_tls, server = upstream(pki, version), server_context(pki, version)
    first = handshake(client_tls, server)
    assert not first.session_reused and first.offered_session is None
    assert keep(client_tls, first)
    second = handshake(client_tls, server)
    assert second.offered_session is not None
    assert second.session_reused
    assert second.version() == version


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_a_session_is_reused_until_it_expires(pki: TestPki, version: str) -> None:
    client_tls, server = upstream(pki, version), server_context(pki, version)
    assert keep(client_tls, handshake(client_tls, server))
    for _ in range(3):
        again = handshake(client_tls, server)
        assert again.session_reused, version
    assert len(client_tls.sessions) == 1  # type: ignore[arg-type]


def test_sessions_are_only_offered_for_the_name_they_were_verified_for(pki: TestPki) -> None:
    client_tls = upstream(pki, "TLSv1.2")
    assert keep(client_tls, handshake(client_tls, server_context(pki, "TLSv1.2")))
    assert client_tls.sessions is not None
    assert client_tls.sessions.take("127.0.0.1") is None
    assert client_tls.sessions.take("localhost") is not None


def test_expired_sessions_are_never_offered(pki: TestPki) -> None:
    now = [time.time()]
    client_tls = with_clock(upstream(pki, "TLSv1.2"), lambda: now[0])
    client = handshake(client_tls, server_context(pki, "TLSv1.2"))
    assert keep(client_tls, client)
    lifetime = min(client.session.timeout, client.session.ticket_lifetime_hint or client.session.timeout)
    now[0] = client.session.time + lifetime - 1
    assert client_tls.sessions.take("localhost") is not None
    now[0] = client.session.time + lifetime
    assert client_tls.sessions.take("localhost") is None
    assert len(client_tls.sessions) == 0


def test_a_session_ends_with_the_certificate_it_was_verified_with(pki: TestPki) -> None:
    now = [time.time()]
    client_tls = with_clock(upstream(pki, "TLSv1.2"), lambda: now[0])
    client = handshake(client_tls, server_context(pki, "TLSv1.2"))
    not_after = now[0] + 10
    assert keep(client_tls, client, not_after=not_after)
    now[0] = not_after
    assert client_tls.sessions.take("localhost") is None
    # and a certificate that has already expired keeps nothing
    assert not keep(client_tls, client, not_after=now[0] - 1)


def test_the_cache_is_bounded_and_drops_the_oldest(pki: TestPki) -> None:
    client_tls = upstream(pki, "TLSv1.2", session_cache_size=2)
    server = server_context(pki, "TLSv1.2")
    kept = []
    for _ in range(3):
        client_tls.sessions.clear()  # type: ignore[union-attr]  # force full handshakes: new sessions
        kept.append(handshake(client_tls, server).session)
    for session in kept:
        assert client_tls.sessions.put("localhost", session, "TLSv1.2")  # type: ignore[union-attr]
    assert len(client_tls.sessions) == 2  # type: ignore[arg-type]
    assert client_tls.sessions.take("localhost").id == kept[2].id  # type: ignore[union-attr]
    client_tls.sessions.discard(kept[2])  # type: ignore[union-attr]
    assert client_tls.sessions.take("localhost").id == kept[1].id  # type: ignore[union-attr]


def test_a_session_the_server_declines_is_dropped(pki: TestPki) -> None:
    client_tls = upstream(pki, "TLSv1.2")
    assert keep(client_tls, handshake(client_tls, server_context(pki, "TLSv1.2")))
    restarted = server_context(pki, "TLSv1.2")  # new ticket keys: as a restarted server
    declined = handshake(client_tls, restarted)
    assert declined.offered_session is not None and not declined.session_reused
    assert len(client_tls.sessions) == 0  # type: ignore[arg-type]


def test_a_session_whose_handshake_failed_is_dropped(pki: TestPki) -> None:
    client_tls = upstream(pki, "TLSv1.2")
    assert keep(client_tls, handshake(client_tls, server_context(pki, "TLSv1.2")))
    with pytest.raises(ssl.SSLError):
        handshake(client_tls, server_context(pki, "TLSv1.2"), garbage=b"\x15\x03\x03\x00\x02\x02\x28")  # alert
    assert len(client_tls.sessions) == 0  # type: ignore[arg-type]


def test_a_tls13_session_without_a_ticket_is_not_kept(pki: TestPki) -> None:
    client_tls = upstream(pki, "TLSv1.3")
    server = server_context(pki, "TLSv1.3")
    server.num_tickets = 0
    assert not keep(client_tls, handshake(client_tls, server))


def test_resumption_off_keeps_nothing_and_offers_nothing(pki: TestPki) -> None:
    client_tls = upstream(pki, "TLSv1.2", session_resumption=False)
    assert client_tls.sessions is None and client_tls.context.session_cache is None
    second = handshake(client_tls, server_context(pki, "TLSv1.2"))
    assert second.offered_session is None and not second.session_reused


def test_a_new_context_verifies_in_full(pki: TestPki) -> None:
    """A reload builds a new context with its own, empty cache: a session verified under the old trust
    settings is not offered, so the new settings are checked in full."""
    client_tls = upstream(pki, "TLSv1.2")
    assert keep(client_tls, handshake(client_tls, server_context(pki, "TLSv1.2")))
    route = Route(name="t", listen=TcpAddress("127.0.0.1", 0), upstream=TcpAddress("localhost", 3306),
                  tls=TlsSettings(ca_file=pki.other_ca, tls_versions=("TLSv1.2",)))
    reloaded = build_upstream_tls(route)
    assert reloaded is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(reloaded, server_context(pki, "TLSv1.2"))
