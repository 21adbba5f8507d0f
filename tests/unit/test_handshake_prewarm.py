"""HandshakeMachine with a prewarmed upstream (greeting, SSLRequest and TLS done before the client came),
as wire transcripts in the style of test_handshake.py.

- Same SSLRequest prefix as the prewarmed connection: the client's HandshakeResponse goes straight up
  that connection as seq 2; no SSLRequest, no TLS step.
- A different prefix (PROTOCOL.md §3.2: capabilities and charset come from the SSLRequest): the machine
  asks for a fresh upstream, upgrades it with the client's own SSLRequest, and has the client answer the
  fresh nonce through an AuthSwitchRequest; its new auth data replaces the old in the HandshakeResponse.
"""

from __future__ import annotations

import pytest

from tests.fixtures import greetings as G
from tests.fixtures import responses as R
from tests.support.playbook import AdoptPrewarmed, Playbook, bytewise, client, frame, raises, server, tls_established
from tests.unit.test_handshake import OK, machine, masked, ssl_request, switch, upstream_response
from tlsproxy.errors import ClientCapabilityError, ServerProtocolError
from tlsproxy.mysql.handshake import (
    CloseConnection,
    ReplaceUpstream,
    SendToClient,
    SendToServer,
    StartRelay,
    StartUpstreamTls,
    State,
)
from tlsproxy.mysql.messages import parse_handshake_response

GREETING = G.MARIADB_10_11_CAPTURED
RESPONSE = R.CONNECTORC_MARIADB_NODB.payload  # mariadb CLI against MariaDB
OTHER = R.PYMYSQL_MARIADB_NODB.payload  # PyMySQL: other capabilities and charset
FRESH = G.MARIADB_10  # the replacement connection's greeting: another nonce
NEW_AUTH = bytes(range(1, 21))  # the client's scramble over the fresh nonce


def adopted(response_prefix_of: bytes, **playbook: object) -> Playbook:
    return (
        Playbook(machine(), **playbook)  # type: ignore[arg-type]
        >> AdoptPrewarmed(GREETING.payload, ssl_request(response_prefix_of))
        << SendToClient(frame(0, masked(GREETING)))
    )


def switched_to_a_fresh_upstream(playbook: Playbook) -> Playbook:
    """PyMySQL's response on a connection prewarmed with the CLI's SSLRequest: a fresh upstream, its
    own SSLRequest, then the AuthSwitchRequest with the fresh nonce."""
    return (
        playbook
        >> client >> frame(1, OTHER)
        << ReplaceUpstream
        >> server >> frame(0, FRESH.payload)
        << SendToServer(frame(1, ssl_request(OTHER)))
        << StartUpstreamTls()
        >> tls_established
        << SendToClient(frame(2, switch("mysql_native_password", FRESH.nonce)))
    )


def test_a_matching_client_goes_straight_up_the_prewarmed_connection() -> None:
    playbook = (
        adopted(RESPONSE)
        >> client >> frame(1, RESPONSE)
        << SendToServer(frame(2, upstream_response(RESPONSE)))
        >> server >> frame(3, OK)
        << SendToClient(frame(2, OK))
        << StartRelay()
    )
    assert playbook
    assert playbook.machine.prewarmed and not playbook.machine.prewarm_mismatch
    assert playbook.machine.ssl_request == ssl_request(RESPONSE)


def test_the_greeting_of_a_prewarmed_connection_is_checked_like_any_other() -> None:
    no_tls = G.variant(GREETING, capability_flags=GREETING.capability_flags & ~0x800)
    from tlsproxy.errors import UpstreamTlsUnsupportedError

    assert Playbook(machine()) >> AdoptPrewarmed(no_tls, b"x" * 32) << raises(UpstreamTlsUnsupportedError)


def test_a_client_with_another_prefix_reauthenticates_against_a_fresh_upstream() -> None:
    old_auth = parse_handshake_response(OTHER).auth_response
    expected_response = upstream_response(OTHER).replace(bytes((len(old_auth),)) + old_auth,
                                                          bytes((len(NEW_AUTH),)) + NEW_AUTH)
    playbook = (
        switched_to_a_fresh_upstream(adopted(RESPONSE))
        >> client >> frame(3, NEW_AUTH)
        << SendToServer(frame(2, expected_response))
        >> server >> frame(3, OK)
        << SendToClient(frame(4, OK))
        << StartRelay()
    )
    assert playbook
    assert playbook.machine.prewarm_mismatch and playbook.machine.state is State.RELAY


def test_reauthentication_bytewise() -> None:
    assert switched_to_a_fresh_upstream(adopted(RESPONSE, chunker=bytewise))


def test_wrong_password_after_reauthentication_reaches_the_client_with_its_id() -> None:
    denied = b"\xff\x15\x04#28000Access denied for user 'app'@'localhost' (using password: YES)"
    assert (
        adopted(RESPONSE)
        >> client >> frame(1, OTHER)
        << ReplaceUpstream
        >> server >> frame(0, FRESH.payload)
        << SendToServer
        << StartUpstreamTls()
        >> tls_established
        << SendToClient
        >> client >> frame(3, NEW_AUTH)
        << SendToServer
        >> server >> frame(3, denied)
        << SendToClient(frame(4, denied))
        << CloseConnection
    )


def test_a_client_without_plugin_auth_gets_a_clear_error_on_a_mismatch() -> None:
    caps = int.from_bytes(OTHER[:4], "little") & ~0x00080000
    no_plugin_auth = caps.to_bytes(4, "little") + OTHER[4:]
    playbook = adopted(RESPONSE) >> client >> frame(1, no_plugin_auth) << raises(ClientCapabilityError, "prewarm")
    assert playbook
    error = playbook.actual[-1]
    packet = playbook.machine.error_packet(error)  # type: ignore[arg-type]
    assert packet is not None and packet[3] == 2  # the id the client expects after its response


def test_an_err_greeting_from_the_replacement_reaches_the_client() -> None:
    err_greeting = b"\xff\x10\x04Too many connections"
    assert (
        adopted(RESPONSE)
        >> client >> frame(1, OTHER)
        << ReplaceUpstream
        >> server >> frame(0, err_greeting)
        << SendToClient(frame(2, err_greeting))
        << CloseConnection
    )


@pytest.mark.parametrize("state_step", ["before_response", "replacing"])
def test_server_bytes_at_the_wrong_time_are_refused(state_step: str) -> None:
    playbook = adopted(RESPONSE)
    if state_step == "replacing":
        playbook = playbook >> client >> frame(1, OTHER) << ReplaceUpstream
        playbook = playbook >> server >> frame(1, OK) << raises(ServerProtocolError)
    else:
        playbook = playbook >> server >> frame(1, OK) << raises(ServerProtocolError)
    assert playbook


def test_server_bytes_while_the_client_reauthenticates_are_refused() -> None:
    assert (
        switched_to_a_fresh_upstream(adopted(RESPONSE))
        >> server >> frame(3, OK)
        << raises(ServerProtocolError, "before the client answered the AuthSwitchRequest")
    )


def test_bytes_behind_a_final_err_are_not_held() -> None:
    """Found by the hostile-input property (deep profile): an ERR ends the exchange, and whatever the
    server sent behind it in the same read is dropped rather than held in the machine."""
    denied = b"\xff\x15\x04#28000Access denied"
    playbook = (
        adopted(RESPONSE)
        >> client >> frame(1, RESPONSE)
        << SendToServer(frame(2, upstream_response(RESPONSE)))
        >> server >> frame(3, denied) + frame(4, b"\x00" * 600)
        << SendToClient(frame(2, denied))
        << CloseConnection
    )
    assert playbook
    assert len(playbook.machine._server_frames) == 0  # noqa: SLF001
