"""HandshakeMachine with a pooled upstream (a parked connection: authenticated for an earlier client, then
reset), as wire transcripts in the style of test_handshake_prewarm.py (PROTOCOL.md §6.3).

- The client gets the parked connection's own greeting; a fitting HandshakeResponse goes up as
  COM_CHANGE_USER at seq 0, and the server's answers continue the client's login from seq 2.
- A failed COM_CHANGE_USER ends the connection: the ERR reaches the client, nothing after it goes up.
- A client that does not fit: `ReplaceUpstream`, then a fitting parked connection or a fresh one.
- A pooled upstream that turns out dead before the server answered: `ReplaceUpstream` again.
- In the relay, COM_QUIT is held back (`ClientQuit`), and `parkable` says whether every command was
  answered.
"""

from __future__ import annotations

import pytest

from tests.fixtures import greetings as G
from tests.fixtures import responses as R
from tests.support.playbook import (
    AdoptPooled,
    Playbook,
    UsePooledReplacement,
    bytewise,
    client,
    frame,
    pooled_upstream_lost,
    raises,
    server,
    tls_established,
)
from tests.unit.test_handshake import OK, SSL, connected, machine, masked, ssl_request, switch, upstream_response
from tlsproxy.errors import ClientCapabilityError, UpstreamTlsUnsupportedError
from tlsproxy.mysql.constants import Capability
from tlsproxy.mysql.handshake import (
    ClientQuit,
    CloseConnection,
    ReplaceUpstream,
    SendToClient,
    SendToServer,
    StartRelay,
    StartUpstreamTls,
    State,
)
from tlsproxy.mysql.messages import change_user_from_response, parse_handshake_response
from tlsproxy.outcome import Outcome

GREETING = G.MARIADB_10_11_CAPTURED  # the parked connection's greeting, from its first client
RESPONSE = R.CONNECTORC_MARIADB_NODB.payload  # mariadb CLI
OTHER = R.PYMYSQL_MARIADB_NODB.payload  # PyMySQL: other capabilities and charset
FRESH = G.MARIADB_10  # another connection's greeting: another nonce
ANSWER = bytes(range(1, 21))  # the client's scramble for the nonce in the server's AuthSwitchRequest
DENIED = b"\xff\x15\x04#28000Access denied for user 'app'@'localhost' (using password: YES)"
QUIT = frame(0, b"\x01")
SELECT_1 = frame(0, b"\x03SELECT 1")


def change_user(response: bytes) -> bytes:
    """What upstream must get for this client's HandshakeResponse: COM_CHANGE_USER made of it."""
    upstream = upstream_response(response)
    return change_user_from_response(upstream, parse_handshake_response(upstream))


def adopted(response_prefix_of: bytes, **playbook: object) -> Playbook:
    return (
        Playbook(machine(upstream_pool=True), **playbook)  # type: ignore[arg-type]
        >> AdoptPooled(GREETING.payload, ssl_request(response_prefix_of))
        << SendToClient(frame(0, masked(GREETING)))
    )


def auth_of(response: bytes) -> bytes:
    return parse_handshake_response(response).auth_response


def logged_in(**playbook: object) -> Playbook:
    """The CLI on a parked connection: COM_CHANGE_USER, then MariaDB's AuthSwitchRequest to
    mysql_native_password with the greeting's nonce (PROTOCOL.md §6), which the client already answered in
    its HandshakeResponse: the proxy sends that answer up, and the client gets the OK at seq 2."""
    return (
        adopted(RESPONSE, **playbook)
        >> client >> frame(1, RESPONSE)
        << SendToServer(frame(0, change_user(RESPONSE)))
        >> server >> frame(1, switch("mysql_native_password", GREETING.nonce))
        << SendToServer(frame(2, auth_of(RESPONSE)))
        >> server >> frame(3, OK)
        << SendToClient(frame(2, OK))
        << StartRelay()
    )


def test_any_other_switch_is_relayed_to_the_client() -> None:
    """Another plugin, or another nonce (MySQL's and ed25519's are fresh): the client answers it itself."""
    for plugin, nonce in (("client_ed25519", FRESH.nonce), ("mysql_native_password", FRESH.nonce)):
        playbook = (
            adopted(RESPONSE)
            >> client >> frame(1, RESPONSE)
            << SendToServer(frame(0, change_user(RESPONSE)))
            >> server >> frame(1, switch(plugin, nonce))
            << SendToClient(frame(2, switch(plugin, nonce)))
            >> client >> frame(3, ANSWER)
            << SendToServer(frame(2, ANSWER))
            >> server >> frame(3, OK)
            << SendToClient(frame(4, OK))
            << StartRelay()
        )
        assert playbook


def test_a_fitting_client_logs_in_through_com_change_user() -> None:
    playbook = logged_in()
    assert playbook
    m = playbook.machine
    assert m.pooled and m.logged_in and m.state is State.RELAY
    assert m.greeting_payload == GREETING.payload  # what the session parks again
    sent = change_user(RESPONSE)
    assert sent[0] == 0x11 and parse_handshake_response(RESPONSE).username + b"\x00" in sent


def test_the_pooled_login_holds_one_byte_at_a_time() -> None:
    assert logged_in(chunker=bytewise)


def test_connect_with_db_alone_does_not_make_a_client_unfit() -> None:
    with_db = R.CONNECTORC_MARIADB_DB.payload
    assert parse_handshake_response(with_db).capability_flags & Capability.CONNECT_WITH_DB
    without = (parse_handshake_response(with_db).capability_flags & ~Capability.CONNECT_WITH_DB)
    parked_with = without.to_bytes(4, "little") + with_db[4:]  # the same client, no database that time
    assert (
        adopted(parked_with)
        >> client >> frame(1, with_db)
        << SendToServer(frame(0, change_user(with_db)))
    )


def test_a_failed_change_user_ends_the_connection_and_nothing_after_it_goes_up() -> None:
    playbook = (
        adopted(RESPONSE)
        >> client >> frame(1, RESPONSE)
        << SendToServer(frame(0, change_user(RESPONSE)))
        >> server >> frame(1, switch("mysql_native_password", GREETING.nonce))
        << SendToServer(frame(2, auth_of(RESPONSE)))
        >> server >> frame(3, DENIED)
        << SendToClient(frame(2, DENIED))
        << CloseConnection(Outcome.AUTH_DENIED, "upstream denied authentication")
        >> client >> SELECT_1  # a client that goes on as if logged in
    )
    assert playbook  # ... gets nothing relayed: no effect after the close
    assert playbook.machine.state is State.CLOSED and not playbook.machine.logged_in


def test_a_client_that_does_not_fit_gets_a_fitting_parked_connection() -> None:
    """Its COM_CHANGE_USER carries auth data for the first greeting's nonce; the server discards it and
    asks again with its own nonce (PROTOCOL.md §6)."""
    playbook = (
        adopted(RESPONSE)
        >> client >> frame(1, OTHER)
        << ReplaceUpstream
        >> UsePooledReplacement(FRESH.payload)
        << SendToServer(frame(0, change_user(OTHER)))
        >> server >> frame(1, switch("mysql_native_password", FRESH.nonce))
        << SendToClient(frame(2, switch("mysql_native_password", FRESH.nonce)))
        >> client >> frame(3, ANSWER)
        << SendToServer(frame(2, ANSWER))
        >> server >> frame(3, OK)
        << SendToClient(frame(4, OK))
        << StartRelay()
    )
    assert playbook
    assert playbook.machine.pooled and playbook.machine.greeting_payload == FRESH.payload


def test_a_client_that_does_not_fit_gets_a_fresh_upstream_as_after_prewarm() -> None:
    playbook = (
        adopted(RESPONSE)
        >> client >> frame(1, OTHER)
        << ReplaceUpstream
        >> server >> frame(0, FRESH.payload)
        << SendToServer(frame(1, ssl_request(OTHER)))
        << StartUpstreamTls()
        >> tls_established
        << SendToClient(frame(2, switch("mysql_native_password", FRESH.nonce)))
    )
    assert playbook
    assert not playbook.machine.pooled


def test_a_client_without_plugin_auth_that_does_not_fit_is_told_to_turn_the_pool_off() -> None:
    caps = parse_handshake_response(OTHER).capability_flags & ~Capability.PLUGIN_AUTH
    no_plugin_auth = caps.to_bytes(4, "little") + OTHER[4:]
    assert adopted(RESPONSE) >> client >> frame(1, no_plugin_auth) << raises(ClientCapabilityError,
                                                                              match="upstream_pool: 0")


def test_a_pooled_upstream_gone_before_its_first_answer_is_replaced() -> None:
    playbook = (
        adopted(RESPONSE)
        >> client >> frame(1, RESPONSE)
        << SendToServer(frame(0, change_user(RESPONSE)))
        >> pooled_upstream_lost
        << ReplaceUpstream
        >> server >> frame(0, FRESH.payload)
        << SendToServer(frame(1, ssl_request(RESPONSE)))
        << StartUpstreamTls()
        >> tls_established
        << SendToClient(frame(2, switch("mysql_native_password", FRESH.nonce)))
    )
    assert playbook
    assert playbook.machine.state is State.REAUTH


def test_a_pooled_upstream_gone_while_the_client_answers_the_greeting_is_replaced() -> None:
    assert (
        adopted(RESPONSE)
        >> pooled_upstream_lost
        >> client >> frame(1, RESPONSE)
        << ReplaceUpstream
    )


def test_a_pooled_upstream_gone_after_the_server_answered_cannot_be_replaced() -> None:
    playbook = (
        adopted(RESPONSE)
        >> client >> frame(1, RESPONSE)
        << SendToServer
        >> server >> frame(1, switch("client_ed25519", FRESH.nonce))
        << SendToClient
        >> pooled_upstream_lost  # the client saw the server's words: the driver fails the connection
    )
    assert playbook
    assert playbook.machine.state is State.AUTH


# ---- in the relay: COM_QUIT held back, and what may be parked -------------------------------------


def relaying() -> Playbook:
    playbook = logged_in()
    assert playbook
    return playbook


def test_com_quit_is_held_back_for_the_driver() -> None:
    playbook = relaying() >> client >> QUIT << ClientQuit(QUIT)
    assert playbook
    assert playbook.machine.parkable


def test_a_command_in_flight_is_not_parkable_until_its_answer_came() -> None:
    playbook = relaying() >> client >> SELECT_1 << SendToServer(SELECT_1)
    assert playbook
    m = playbook.machine
    assert not m.parkable and m.not_parkable_reason == "a command was still in flight"
    m.note_server_data(frame(1, b"\x00\x00\x00\x02\x00\x00\x00")[:5])
    assert not m.parkable  # half of the OK
    m.note_server_data(frame(1, b"\x00\x00\x00\x02\x00\x00\x00")[5:])
    assert m.parkable


def test_a_client_cut_off_mid_packet_is_not_parkable() -> None:
    playbook = relaying() >> client >> SELECT_1[:6] << SendToServer(SELECT_1[:6])
    assert playbook
    assert not playbook.machine.parkable


def test_bytes_behind_com_quit_go_up_as_they_came_and_rule_parking_out() -> None:
    playbook = relaying() >> client >> (QUIT + SELECT_1) << SendToServer(QUIT + SELECT_1)
    assert playbook
    assert not playbook.machine.parkable
    assert playbook.machine.not_parkable_reason == "the client sent bytes after COM_QUIT"


def test_a_failed_change_user_of_the_clients_own_rules_parking_out() -> None:
    own = change_user(OTHER)
    playbook = (
        relaying()
        >> client >> frame(0, own)
        << SendToServer(frame(0, own))
        >> server >> frame(1, DENIED)
        << SendToClient(frame(1, DENIED))
    )
    assert playbook
    m = playbook.machine
    assert m.state is State.RELAY and not m.parkable
    assert m.not_parkable_reason == "a COM_CHANGE_USER failed on this connection"


def test_a_successful_change_user_of_the_clients_own_keeps_it_parkable() -> None:
    own = change_user(OTHER)
    playbook = (
        relaying()
        >> client >> frame(0, own)
        << SendToServer(frame(0, own))
        >> server >> frame(1, OK)
        << SendToClient(frame(1, OK))
    )
    assert playbook
    assert playbook.machine.parkable


def test_without_a_pool_com_quit_passes_as_before() -> None:
    playbook = connected(GREETING, RESPONSE) >> server >> frame(3, OK) << SendToClient << StartRelay()
    assert playbook
    assert playbook >> client >> QUIT << SendToServer(QUIT)
    assert not playbook.machine.parkable


def no_plugin_auth(response: bytes) -> bytes:
    caps = parse_handshake_response(response).capability_flags & ~Capability.PLUGIN_AUTH
    return caps.to_bytes(4, "little") + response[4:]


def test_a_client_without_plugin_auth_gets_its_switch_answered_from_its_response() -> None:
    """MariaDB sends an AuthSwitchRequest even to such a client (PROTOCOL.md §6.3); over the greeting's own
    nonce its answer is the auth data of its HandshakeResponse, which goes up; the client sees OK at seq 2."""
    old = no_plugin_auth(RESPONSE)
    auth = parse_handshake_response(old).auth_response
    assert (
        adopted(old)
        >> client >> frame(1, old)
        << SendToServer(frame(0, change_user(old)))
        >> server >> frame(1, switch("mysql_native_password", GREETING.nonce))
        << SendToServer(frame(2, auth))
        >> server >> frame(3, OK)
        << SendToClient(frame(2, OK))
        << StartRelay()
    )


def test_a_client_without_plugin_auth_asked_for_another_plugin_or_nonce_is_told_to_turn_the_pool_off() -> None:
    old = no_plugin_auth(RESPONSE)
    for plugin, nonce in (("client_ed25519", GREETING.nonce), ("mysql_native_password", FRESH.nonce)):
        assert (
            adopted(old)
            >> client >> frame(1, old)
            << SendToServer
            >> server >> frame(1, switch(plugin, nonce))
            << raises(ClientCapabilityError, match="upstream_pool: 0")
        )


def test_a_pooled_upstream_gone_after_the_proxy_answered_its_switch_is_still_replaced() -> None:
    """The client has seen nothing of the server's yet: starting over on another upstream is still possible."""
    assert (
        adopted(RESPONSE)
        >> client >> frame(1, RESPONSE)
        << SendToServer
        >> server >> frame(1, switch("mysql_native_password", GREETING.nonce))
        << SendToServer(frame(2, auth_of(RESPONSE)))
        >> pooled_upstream_lost
        << ReplaceUpstream
    )


def test_a_greeting_parsed_when_the_connection_was_opened_is_not_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool hands the parked connection's parsed greeting along: adoption uses it, with the same result
    for the client as a greeting parsed afresh, and still judges it (TLS offered, 4.1)."""
    from tlsproxy.mysql import greeting as greeting_module
    from tlsproxy.mysql.messages import parse_initial_handshake

    parsed = parse_initial_handshake(GREETING.payload)
    fresh = machine(upstream_pool=True).adopt_pooled_upstream(GREETING.payload, ssl_request(RESPONSE))

    def no_parsing(payload: bytes) -> None:
        raise AssertionError("the greeting was parsed again")

    monkeypatch.setattr(greeting_module, "parse_initial_handshake", no_parsing)
    m = machine(upstream_pool=True)
    assert m.adopt_pooled_upstream(GREETING.payload, ssl_request(RESPONSE), parsed) == fresh
    assert m.greeting is parsed and m.state is State.CLIENT_RESPONSE

    no_tls = parse_initial_handshake(G.variant(GREETING, capability_flags=GREETING.capability_flags & ~SSL))
    with pytest.raises(UpstreamTlsUnsupportedError):
        machine(upstream_pool=True).adopt_pooled_upstream(GREETING.payload, ssl_request(RESPONSE), no_tls)
