"""tlsproxy.mysql.greeting: the greeting -> SSLRequest step that the machine, the prewarm pool and
`tlsproxy check` share."""

from __future__ import annotations

import pytest

from tests.fixtures import greetings as G
from tests.fixtures import responses as R
from tests.unit.test_handshake import ssl_request
from tlsproxy.errors import ServerProtocolError, UpstreamRefusedError, UpstreamTlsUnsupportedError
from tlsproxy.mysql.codec import encode_frame
from tlsproxy.mysql.greeting import UpstreamGreeting, ssl_request_for, ssl_request_frame

CAPTURED = G.MARIADB_10_11_CAPTURED_FRAME


@pytest.mark.parametrize("cut", [1, 3, 4, 5, len(CAPTURED) - 1])
def test_the_greeting_is_read_in_any_pieces(cut: int) -> None:
    reader = UpstreamGreeting(require_tls=True)
    assert reader.receive_data(CAPTURED[:cut]) is None
    greeting = reader.receive_data(CAPTURED[cut:])
    assert greeting is not None and greeting.server_version == G.MARIADB_10_11_CAPTURED.server_version
    assert reader.payload == CAPTURED[4:]


def test_an_err_in_place_of_the_greeting_names_the_servers_error() -> None:
    with pytest.raises(UpstreamRefusedError) as caught:
        UpstreamGreeting(require_tls=True).receive_data(G.MARIADB_ERR_GREETING_FRAME)
    assert caught.value.message.startswith("upstream refused the connection: ERROR ")
    assert caught.value.metric_label == "upstream_error"


def test_a_server_without_tls_is_refused_unless_the_route_is_plaintext() -> None:
    no_tls = encode_frame(0, G.variant(G.MYSQL_80, capability_flags=G.CAPS_MYSQL_80 & ~0x800))
    with pytest.raises(UpstreamTlsUnsupportedError):
        UpstreamGreeting(require_tls=True).receive_data(no_tls)
    assert UpstreamGreeting(require_tls=False).receive_data(no_tls) is not None


@pytest.mark.parametrize("extra", [b"\x00", encode_frame(1, b"\x00")])
def test_bytes_after_the_greeting_are_refused(extra: bytes) -> None:
    with pytest.raises(ServerProtocolError, match="more than its greeting"):
        UpstreamGreeting(require_tls=True).receive_data(CAPTURED + extra)
    reader = UpstreamGreeting(require_tls=True)
    reader.receive_data(CAPTURED)
    with pytest.raises(ServerProtocolError, match="after its greeting"):
        reader.receive_data(extra)


def test_a_greeting_with_another_sequence_id_is_refused() -> None:
    with pytest.raises(ServerProtocolError, match="sequence id 1"):
        UpstreamGreeting(require_tls=True).receive_data(encode_frame(1, CAPTURED[4:]))


def test_the_ssl_request_is_the_clients_prefix_masked_as_seq_1() -> None:
    response = R.CONNECTORC_MARIADB_NODB.payload
    assert ssl_request_for(response) == ssl_request(response)
    assert ssl_request_frame(ssl_request_for(response)) == encode_frame(1, ssl_request(response))
