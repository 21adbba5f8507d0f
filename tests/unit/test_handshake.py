"""HandshakeMachine as wire transcripts (PROTOCOL.md §4-§6, §8).

Each test reads like a capture: ``>> server >> bytes`` and ``>> client >> bytes`` are what a peer sends,
``<< Effect`` what the machine must do, in order and exactly. Expected bytes are built from the fixtures
and the layouts in PROTOCOL.md, never by the code under test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from tests.fixtures import greetings as G
from tests.fixtures import responses as R
from tests.fixtures.responses import build_response
from tests.support.playbook import (
    Playbook,
    bytewise,
    client,
    frame,
    frames,
    merge_effects,
    raises,
    run_step,
    run_steps,
    server,
    tls_established,
)
from tlsproxy.certs import AuthRsaKey
from tlsproxy.errors import (
    AuthEmulationError,
    ClientCapabilityError,
    ClientProtocolError,
    ClientTlsRequestError,
    ServerProtocolError,
    TlsInjectionError,
    TlsProxyError,
    UpstreamTlsUnsupportedError,
)
from tlsproxy.outcome import Outcome
from tlsproxy.mysql.handshake import (
    DEFAULT_MAX_HANDSHAKE_PACKET,
    CloseConnection,
    HandshakeMachine,
    SendToClient,
    SendToServer,
    StartRelay,
    StartUpstreamTls,
    State,
)

KEY = AuthRsaKey.generate()
OTHER_KEY = AuthRsaKey.generate()
PEM_PACKET = b"\x01" + KEY.public_pem

MASK = 0x00000800 | 0x40000000 | 0x00000020 | 0x04000000 | 0x10000000  # PROTOCOL.md §4.2
SSL = 0x00000800
OK = b"\x00\x00\x00\x02\x00\x00\x00"
PASSWORD = b"s3cr3t-p\xc3\xa4ss"
NONCE2 = b"0123456789abcdefghij"  # a fresh nonce from an AuthSwitchRequest
SCRAMBLE = bytes(range(100, 132))  # a 32-byte caching_sha2 scramble; its value does not matter here
SELECT_1 = b"\x03SELECT 1"


# ---- expected bytes, built independently --------------------------------------------------------


def masked(fx: G.GreetingFixture) -> bytes:
    """The greeting the client must see: the fixture rebuilt with the §4.2 bits cleared."""
    return G.variant(fx, capability_flags=fx.capability_flags & ~MASK)


def set_caps(payload: bytes, caps: int) -> bytes:
    return caps.to_bytes(4, "little") + payload[4:]


def caps_of(payload: bytes) -> int:
    return int.from_bytes(payload[:4], "little")


def upstream_response(payload: bytes, *, zstd: bool = False) -> bytes:
    """The client's HandshakeResponse as upstream must get it: masked caps, zstd level byte dropped."""
    out = set_caps(payload, caps_of(payload) & ~MASK)
    return out[:-1] if zstd else out


def ssl_request(payload: bytes) -> bytes:
    """C1[0..32) with CLIENT_SSL set and the other masked bits cleared (PROTOCOL.md §4.1 step 4)."""
    return set_caps(payload[:32], (caps_of(payload) & ~MASK) | SSL)


def err(errno: int, sqlstate: str | None, message: str) -> bytes:
    body = b"\xff" + errno.to_bytes(2, "little")
    if sqlstate is not None:
        body += b"#" + sqlstate.encode()
    return body + message.encode()


def encrypt(password: bytes, nonce: bytes, public_pem: bytes = KEY.public_pem) -> bytes:
    """What PyMySQL sends (_auth.sha2_rsa_encrypt): RSA-OAEP(SHA-1) of (password + NUL) XOR nonce."""
    salt = nonce[:20]
    message = bytes(b ^ salt[i % len(salt)] for i, b in enumerate(password + b"\x00"))
    key = serialization.load_pem_public_key(public_pem)
    return key.encrypt(  # type: ignore[union-attr]
        message, padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    )


def encrypt_pkcs1v15(password: bytes, nonce: bytes) -> bytes:
    """Connector/J's padding for servers whose version parses below 8.0.5."""
    message = bytes(b ^ nonce[i % 20] for i, b in enumerate(password + b"\x00"))
    key = serialization.load_pem_public_key(KEY.public_pem)
    return key.encrypt(message, padding.PKCS1v15())  # type: ignore[union-attr]


def undecryptable_ciphertext() -> bytes:
    """A well-formed ciphertext under someone else's key (e.g. the server's), not ending in NUL."""
    for i in range(100):
        ciphertext = encrypt(PASSWORD + bytes((i,)), G.NONCE_MYSQL_80, OTHER_KEY.public_pem)
        if ciphertext[-1] != 0:
            return ciphertext
    raise AssertionError("unreachable")


def switch(plugin: str, nonce: bytes) -> bytes:
    return b"\xfe" + plugin.encode() + b"\x00" + nonce + b"\x00"


def machine(**kwargs: object) -> HandshakeMachine:
    kwargs.setdefault("auth_key", KEY)
    return HandshakeMachine(**kwargs)  # type: ignore[arg-type]


def connected(greeting: G.GreetingFixture, response: bytes, **kwargs: object) -> Playbook:
    """Greeting, HandshakeResponse, SSLRequest, TLS, response upstream: the common opening."""
    playbook = (
        Playbook(machine(**kwargs))
        >> server >> frame(0, greeting.payload)
        << SendToClient(frame(0, masked(greeting)))
        >> client >> frame(1, response)
        << SendToServer(frame(1, ssl_request(response)))
        << StartUpstreamTls()
        >> tls_established
        << SendToServer(frame(2, upstream_response(response)))
    )
    return playbook


C1_SHA2 = R.LIBMYSQLCLIENT_MYSQL80_DB.payload
C1_MARIADB = R.CONNECTORC_MARIADB_DB.payload
CHANGE_USER_PAYLOAD = (
    b"\x11" + b"second\x00" + b"\x20" + SCRAMBLE + b"shop\x00" + b"\xff\x00" + b"caching_sha2_password\x00"
    + b"\x04\x03_os\x01L"
)


# ---- greeting -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fx", G.ALL, ids=lambda fx: fx.name)
def test_greeting_is_relayed_with_tls_compression_and_mfa_bits_cleared(fx: G.GreetingFixture) -> None:
    playbook = Playbook(machine()) >> server >> frame(0, fx.payload) << SendToClient(frame(0, masked(fx)))
    assert playbook
    shown = playbook.actual[1].data[4:]  # type: ignore[union-attr]
    greeting = playbook.machine.greeting
    assert greeting is not None and greeting.nonce == fx.nonce
    assert fx.nonce[:8] in shown and fx.nonce[8:] + b"\x00" in shown  # nonce byte-identical
    assert playbook.machine.state is State.CLIENT_RESPONSE


def test_captured_mariadb_greeting_bytes_seen_by_the_client() -> None:
    expected = bytes.fromhex(
        "640000000a352e352e352d31302e31312e31392d4d6172696144422d302b646562313275310007000000775c462b40416763"
        "00def7080200ff81150000000000001d0000003b3b54777a22362862382e7c006d7973716c5f6e61746976655f7061737377"
        "6f726400"
    )  # the capture with caps low 0xfffe -> 0xf7de (SSL, COMPRESS cleared); nothing else differs
    assert Playbook(machine()) >> server >> G.MARIADB_10_11_CAPTURED_FRAME << SendToClient(expected)


def test_greeting_split_across_reads() -> None:
    data = frame(0, G.MYSQL_84.payload)
    assert (
        Playbook(machine())
        >> server >> data[:3]
        >> server >> data[3:20]
        >> server >> data[20:]
        << SendToClient(frame(0, masked(G.MYSQL_84)))
    )


def test_err_greeting_is_relayed_as_is() -> None:
    playbook = (
        Playbook(machine())
        >> server >> G.MARIADB_ERR_GREETING_FRAME
        << SendToClient(G.MARIADB_ERR_GREETING_FRAME)
        << CloseConnection
    )
    assert playbook
    assert playbook.machine.state is State.CLOSED
    assert playbook.machine.receive_client_data(b"anything") == []
    assert playbook.machine.receive_server_data(b"anything") == []


def test_server_without_tls_is_refused_with_err_seq0_without_sqlstate() -> None:
    no_tls = G.variant(G.MYSQL_80, capability_flags=G.CAPS_MYSQL_80 & ~SSL)
    expect = raises(UpstreamTlsUnsupportedError)
    playbook = Playbook(machine()) >> server >> frame(0, no_tls) << expect
    assert playbook
    error = expect.caught
    assert isinstance(error, UpstreamTlsUnsupportedError)
    assert error.errno == 1043
    assert playbook.machine.error_packet(error) == frame(0, err(1043, None, error.client_message))
    assert b"#" not in playbook.machine.error_packet(error)[4:7]  # type: ignore[index]
    assert playbook.machine.state is State.CLOSED


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (frame(1, G.MYSQL_80.payload), ServerProtocolError),  # greeting must be seq 0
        (frame(0, b"\x09" + G.MYSQL_80.payload[1:]), ServerProtocolError),  # protocol version 9
        (frame(0, b"\x0a5.0\x00" + bytes(4)), ServerProtocolError),  # truncated
        (frame(0, b"\x0a3.23.58\x00" + bytes(4) + b"abcdefgh\x00" + b"\x2c\x08"), ServerProtocolError),  # pre-4.1
        ((DEFAULT_MAX_HANDSHAKE_PACKET + 1).to_bytes(3, "little") + b"\x00", ServerProtocolError),  # too large
    ],
    ids=["seq1", "protocol9", "truncated", "pre41", "too-large"],
)
def test_bad_greetings(data: bytes, error: type[TlsProxyError]) -> None:
    expect = raises(error)
    playbook = Playbook(machine()) >> server >> data << expect
    assert playbook
    assert playbook.machine.error_packet(expect.caught)[3] == 0  # type: ignore[arg-type,index]


def test_client_data_before_greeting() -> None:
    expect = raises(ClientProtocolError)
    playbook = Playbook(machine()) >> client >> frame(0, b"hello") << expect
    assert playbook
    packet = playbook.machine.error_packet(expect.caught)  # type: ignore[arg-type]
    assert packet == frame(0, err(1043, None, expect.caught.client_message))  # type: ignore[union-attr]


# ---- handshake response, SSLRequest, TLS --------------------------------------------------------


@pytest.mark.parametrize(
    ("greeting", "response"),
    [
        (G.MYSQL_80, R.LIBMYSQLCLIENT_MYSQL80_DB),
        (G.MYSQL_57, R.LIBMYSQLCLIENT_MYSQL57_NODB),
        (G.MYSQL_80, R.PYMYSQL_MYSQL80_DB),
        (G.MYSQL_80, R.CONNPY_PURE_MYSQL80),
        (G.MYSQL_80, R.CONNECTORC_MYSQL80_NODB),
        (G.MARIADB_10_11_CAPTURED, R.PYMYSQL_MARIADB_NODB),
        (G.MARIADB_10_11_CAPTURED, R.CONNECTORC_MARIADB_DB),
        (G.MARIADB_10_11_CAPTURED, R.CONNECTORC_MARIADB_NODB),
    ],
    ids=lambda v: getattr(v, "name", ""),
)
def test_ssl_request_then_response_at_seq2(greeting: G.GreetingFixture, response: R.ResponseFixture) -> None:
    playbook = connected(greeting, response.payload)
    assert playbook
    request = playbook.actual[3].data[4:]  # type: ignore[union-attr]
    assert len(request) == 32
    assert caps_of(request) & SSL
    assert request[4:] == response.payload[4:32]  # max_packet, charset, filler, MariaDB ext caps
    assert playbook.machine.state is State.AUTH
    assert playbook.machine.inspecting_server_data


def test_ssl_request_clears_bits_the_client_set_anyway() -> None:
    # libmysqlclient with --compression-algorithms=zstd: COMPRESS, ZSTD and MFA set, plus a zstd level byte
    response = R.LIBMYSQL_80_ZSTD
    assert caps_of(response) & (0x20 | 0x04000000 | 0x10000000) == 0x20 | 0x04000000 | 0x10000000
    assert (
        Playbook(machine())
        >> server >> frame(0, G.MYSQL_80.payload)
        << SendToClient(frame(0, masked(G.MYSQL_80)))
        >> client >> frame(1, response)
        << SendToServer(frame(1, set_caps(response[:32], 0x09BFA28D | SSL)))
        << StartUpstreamTls()
        >> tls_established
        << SendToServer(frame(2, set_caps(response, 0x09BFA28D)[:-1]))
    )


def test_client_ssl_request_is_refused_with_err_seq2() -> None:
    expect = raises(ClientTlsRequestError)
    playbook = (
        Playbook(machine())
        >> server >> frame(0, G.MYSQL_80.payload)
        << SendToClient(frame(0, masked(G.MYSQL_80)))
        >> client >> frame(1, R.SSL_REQUEST_41)
        << expect
    )
    assert playbook
    error = expect.caught
    assert isinstance(error, ClientTlsRequestError)
    assert playbook.machine.error_packet(error) == frame(2, err(1043, "08S01", error.client_message))


def test_pre41_ssl_request_is_refused() -> None:
    assert (
        Playbook(machine())
        >> server >> frame(0, G.MYSQL_80.payload)
        << SendToClient(frame(0, masked(G.MYSQL_80)))
        >> client >> frame(1, R.SSL_REQUEST_320)
        << raises(ClientTlsRequestError)
    )


@pytest.mark.parametrize("response", [R.PRE41_RESPONSE, R.NUL_AUTH], ids=["pre-4.1", "no-secure-connection"])
def test_old_clients_are_refused_with_1251(response: bytes) -> None:
    expect = raises(ClientCapabilityError)
    playbook = (
        Playbook(machine())
        >> server >> frame(0, G.MYSQL_57.payload)
        << SendToClient(frame(0, masked(G.MYSQL_57)))
        >> client >> frame(1, response)
        << expect
    )
    assert playbook
    packet = playbook.machine.error_packet(expect.caught)  # type: ignore[arg-type]
    assert packet is not None and packet[3] == 2 and packet[4:7] == b"\xff\xe3\x04"  # 1251


def test_pre41_client_error_has_no_sqlstate() -> None:
    expect = raises(ClientCapabilityError)
    playbook = (
        Playbook(machine())
        >> server >> frame(0, G.MYSQL_57.payload)
        << SendToClient(frame(0, masked(G.MYSQL_57)))
        >> client >> frame(1, R.PRE41_RESPONSE)
        << expect
    )
    assert playbook
    error = expect.caught
    assert playbook.machine.error_packet(error) == frame(2, err(1251, None, error.client_message))  # type: ignore[union-attr]


def test_response_without_user_name_is_refused() -> None:
    assert (
        Playbook(machine())
        >> server >> frame(0, G.MYSQL_80.payload)
        << SendToClient(frame(0, masked(G.MYSQL_80)))
        >> client >> frame(1, C1_SHA2[:32])
        << raises(ClientProtocolError, match="no user name")
    )


def test_malformed_response_is_a_client_protocol_error() -> None:
    assert (
        Playbook(machine())
        >> server >> frame(0, G.MYSQL_80.payload)
        << SendToClient(frame(0, masked(G.MYSQL_80)))
        >> client >> frame(1, C1_SHA2[:40])  # user name without its NUL
        << raises(ClientProtocolError, match="malformed")
    )


def test_response_with_wrong_sequence_id() -> None:
    expect = raises(ClientProtocolError, match="out of order")
    playbook = (
        Playbook(machine())
        >> server >> frame(0, G.MYSQL_80.payload)
        << SendToClient(frame(0, masked(G.MYSQL_80)))
        >> client >> frame(2, C1_SHA2)
        << expect
    )
    assert playbook
    assert playbook.machine.error_packet(expect.caught)[3] == 1  # type: ignore[arg-type,index]


def test_server_packet_before_client_response_is_refused() -> None:
    expect = raises(ServerProtocolError, match="before the client answered")
    playbook = (
        Playbook(machine())
        >> server >> frame(0, G.MYSQL_80.payload)
        << SendToClient(frame(0, masked(G.MYSQL_80)))
        >> server >> frame(1, OK)
        << expect
    )
    assert playbook
    # seq 2: the client sends its response (seq 1) before it reads anything after the greeting, so it
    # reads the ERR as the answer to it (PyMySQL refuses seq 1 with "Packet sequence number wrong")
    assert playbook.machine.error_packet(expect.caught) == frame(  # type: ignore[arg-type]
        2, err(1043, "08S01", expect.caught.client_message)  # type: ignore[union-attr]
    )


def test_error_after_greeting_in_the_same_read_is_reported_as_pre_greeting() -> None:
    m = machine()
    with pytest.raises(ServerProtocolError) as caught:
        m.receive_server_data(frame(0, G.MYSQL_80.payload) + frame(1, OK))
    assert m.error_packet(caught.value) == frame(0, err(1043, None, caught.value.client_message))


def test_partial_server_bytes_before_ssl_request_are_refused() -> None:
    # no server byte may sit in the buffer when the TLS handshake takes the socket over
    assert (
        Playbook(machine())
        >> server >> frame(0, G.MYSQL_80.payload) + b"\x07\x00"
        << SendToClient(frame(0, masked(G.MYSQL_80)))
        >> client >> frame(1, C1_SHA2)
        << raises(ServerProtocolError, match="unexpected data")
    )


@pytest.mark.parametrize("injected", [b"\x00", frame(2, OK), b"\x16\x03\x01"], ids=["1-byte", "ok", "tls-record"])
def test_server_bytes_between_ssl_request_and_tls_are_an_injection(injected: bytes) -> None:
    expect = raises(TlsInjectionError)
    playbook = (
        Playbook(machine())
        >> server >> frame(0, G.MYSQL_80.payload)
        << SendToClient(frame(0, masked(G.MYSQL_80)))
        >> client >> frame(1, C1_SHA2)
        << SendToServer(frame(1, ssl_request(C1_SHA2)))
        << StartUpstreamTls()
        >> server >> injected
        << expect
    )
    assert playbook
    error = expect.caught
    assert isinstance(error, TlsInjectionError)
    assert playbook.machine.state is State.CLOSED
    assert playbook.machine.error_packet(error) == frame(2, err(1043, "08S01", error.client_message))


def test_tls_established_outside_tls_pending_is_a_driver_bug() -> None:
    with pytest.raises(RuntimeError):
        machine().tls_established()


def test_client_bytes_during_tls_pending_are_handled_after_tls() -> None:
    assert (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, b"\x01\x03")
        << SendToClient(frame(2, b"\x01\x03"))
        >> server >> frame(4, OK)
        << SendToClient(frame(3, OK))
        << StartRelay()
    )


def test_tls_error_reported_at_client_seq2() -> None:
    m = machine()
    m.receive_server_data(frame(0, G.MYSQL_80.payload))
    m.receive_client_data(frame(1, C1_SHA2))
    error = TlsProxyError("certificate verify failed")
    assert m.error_packet(error) == frame(2, err(1043, "08S01", "tlsproxy: certificate verify failed"))


def test_client_bytes_while_tls_is_pending_are_a_protocol_error() -> None:
    """The client must wait for the server's answer: anything it sends meanwhile (here a header
    announcing 65535 bytes) ends the connection with ERR seq 2, before it is buffered."""
    m = machine(max_handshake_packet=1000)
    m.receive_server_data(frame(0, G.MYSQL_80.payload))
    m.receive_client_data(frame(1, C1_SHA2))
    with pytest.raises(ClientProtocolError) as caught:
        m.receive_client_data(b"\xff\xff\x00\x02")
    packet = m.error_packet(caught.value)
    assert packet is not None and packet[3] == 2
    assert len(m._client_frames) == 0  # noqa: SLF001


def test_client_bytes_during_tls_pending_are_bounded() -> None:
    m = machine(max_handshake_packet=1000)
    m.receive_server_data(frame(0, G.MYSQL_80.payload))
    m.receive_client_data(frame(1, C1_SHA2))
    with pytest.raises(ClientProtocolError):
        for _ in range(100):
            m.receive_client_data(bytes(1000))
            assert len(m._client_frames) <= 1000 + 4  # noqa: SLF001


# ---- authentication exchange ------------------------------------------------------------------------


def test_native_password_ok() -> None:
    playbook = (
        connected(G.MARIADB_10_11_CAPTURED, C1_MARIADB)
        >> server >> frame(3, OK)
        << SendToClient(frame(2, OK))
        << StartRelay()
    )
    assert playbook
    assert playbook.machine.state is State.RELAY
    assert not playbook.machine.inspecting_server_data
    assert playbook.machine.error_packet(TlsProxyError("late")) is None
    assert (
        playbook
        >> client >> frame(0, SELECT_1)
        << SendToServer(frame(0, SELECT_1))
        >> server >> frame(1, b"\x01") + frame(2, b"\x00" * 20)
        << SendToClient(frame(1, b"\x01") + frame(2, b"\x00" * 20))
    )


def test_sequence_ids_rewritten_both_ways_through_a_multi_round_exchange() -> None:
    # MariaDB dialog (PAM): raw prompts without the 0x01 prefix, relayed verbatim
    assert (
        connected(G.MARIADB_10_11_CAPTURED, C1_MARIADB)
        >> server >> frame(3, switch("dialog", b"\x04Password: ")[:-1])
        << SendToClient(frame(2, switch("dialog", b"\x04Password: ")[:-1]))
        >> client >> frame(3, b"one\x00")
        << SendToServer(frame(4, b"one\x00"))
        >> server >> frame(5, b"\x03One-time code: ")
        << SendToClient(frame(4, b"\x03One-time code: "))
        >> client >> frame(5, b"123456\x00")
        << SendToServer(frame(6, b"123456\x00"))
        >> server >> frame(7, OK)
        << SendToClient(frame(6, OK))
        << StartRelay()
    )


def test_sequence_ids_wrap_at_256() -> None:
    # 400 packets: far over the default auth budget (DEFAULT_MAX_AUTH_PACKETS), raised for this test
    playbook = connected(G.MARIADB_10_11_CAPTURED, C1_MARIADB, max_auth_packets=1000)
    server_seq, client_seq = 3, 2
    for _ in range(200):
        playbook = (
            playbook
            >> server >> frame(server_seq & 0xFF, b"\x02Question: ")
            << SendToClient(frame(client_seq & 0xFF, b"\x02Question: "))
            >> client >> frame((client_seq + 1) & 0xFF, b"answer\x00")
            << SendToServer(frame((server_seq + 1) & 0xFF, b"answer\x00"))
        )
        server_seq += 2
        client_seq += 2
    assert playbook >> server >> frame(server_seq & 0xFF, OK) << SendToClient(frame(client_seq & 0xFF, OK)) << StartRelay()


def test_err_during_auth_is_relayed_and_closes() -> None:
    denied = err(1045, "28000", "Access denied for user 'app'@'localhost' (using password: YES)")
    playbook = (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, denied)
        << SendToClient(frame(2, denied))
        << CloseConnection
    )
    assert playbook
    assert playbook.machine.state is State.CLOSED
    assert playbook.machine.receive_server_data(frame(4, OK)) == []


def test_server_out_of_order_during_auth() -> None:
    expect = raises(ServerProtocolError, match="out of order")
    playbook = connected(G.MYSQL_80, C1_SHA2) >> server >> frame(2, OK) << expect
    assert playbook
    assert playbook.machine.error_packet(expect.caught)[3] == 2  # type: ignore[arg-type,index]


def test_client_out_of_order_during_auth() -> None:
    assert (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, switch("mysql_native_password", NONCE2))
        << SendToClient(frame(2, switch("mysql_native_password", NONCE2)))
        >> client >> frame(4, bytes(20))
        << raises(ClientProtocolError, match="out of order")
    )


def test_oversized_packets_during_auth() -> None:
    over = (DEFAULT_MAX_HANDSHAKE_PACKET + 1).to_bytes(3, "little")
    assert connected(G.MYSQL_80, C1_SHA2) >> server >> over + b"\x03" << raises(ServerProtocolError)
    assert connected(G.MYSQL_80, C1_SHA2) >> client >> over + b"\x03" << raises(ClientProtocolError)


def test_ok_and_following_server_bytes_in_one_read() -> None:
    assert (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, OK) + b"\x01\x00\x00\x01\x01"
        << SendToClient(frame(2, OK))
        << StartRelay()
        << SendToClient(b"\x01\x00\x00\x01\x01")
    )


def test_auth_switch_updates_plugin_and_nonce() -> None:
    playbook = (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, switch("mysql_native_password", NONCE2))
        << SendToClient(frame(2, switch("mysql_native_password", NONCE2)))
    )
    assert playbook
    assert playbook.machine.auth_plugin == "mysql_native_password"
    # and back to caching_sha2 with yet another nonce: the RSA exchange must XOR with that one
    nonce3 = b"ZYXWVUTSRQPONMLKJIHG"
    assert (
        playbook
        >> client >> frame(3, bytes(20))
        << SendToServer(frame(4, bytes(20)))
        >> server >> frame(5, switch("caching_sha2_password", nonce3))
        << SendToClient(frame(4, switch("caching_sha2_password", nonce3)))
        >> client >> frame(5, SCRAMBLE)
        << SendToServer(frame(6, SCRAMBLE))
        >> server >> frame(7, b"\x01\x04")
        << SendToClient(frame(6, b"\x01\x04"))
        >> client >> frame(7, b"\x02")
        << SendToClient(frame(8, PEM_PACKET))
        >> client >> frame(9, encrypt(PASSWORD, nonce3))
        << SendToServer(frame(8, PASSWORD + b"\x00"))
    )
    assert playbook.machine.auth_plugin == "caching_sha2_password"


def test_old_auth_switch_keeps_the_greeting_nonce() -> None:
    playbook = (
        connected(G.MARIADB_10_11_CAPTURED, C1_MARIADB)
        >> server >> frame(3, b"\xfe")
        << SendToClient(frame(2, b"\xfe"))
        >> client >> frame(3, b"abcdefgh\x00")
        << SendToServer(frame(4, b"abcdefgh\x00"))
        >> server >> frame(5, OK)
        << SendToClient(frame(4, OK))
        << StartRelay()
    )
    assert playbook
    assert playbook.machine.auth_plugin == "mysql_old_password"


# ---- caching_sha2_password ------------------------------------------------------------------------


def test_caching_sha2_fast_path_is_transparent() -> None:
    playbook = (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, b"\x01\x03")
        << SendToClient(frame(2, b"\x01\x03"))
        >> server >> frame(4, OK)
        << SendToClient(frame(3, OK))
        << StartRelay()
    )
    assert playbook
    assert not playbook.machine.rsa_exchange_emulated


@pytest.mark.parametrize("full_auth", [b"\x01\x04", b"\x04"], ids=["mysql", "mariadb-bare"])
def test_caching_sha2_full_auth_rsa_emulation(full_auth: bytes) -> None:
    # PROTOCOL.md §5.3 step 5: greeting 0/0, C1 1 -> 2, U 01 04 3 -> C 2, C 02 3, PEM -> C 4,
    # C ciphertext 5, P->U password 4, U OK 5 -> C 6
    playbook = (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, full_auth)
        << SendToClient(frame(2, b"\x01\x04"))
        >> client >> frame(3, b"\x02")
        << SendToClient(frame(4, PEM_PACKET))
        >> client >> frame(5, encrypt(PASSWORD, G.NONCE_MYSQL_80))
        << SendToServer(frame(4, PASSWORD + b"\x00"))
        >> server >> frame(5, OK)
        << SendToClient(frame(6, OK))
        << StartRelay()
    )
    assert playbook
    assert playbook.machine.rsa_exchange_emulated
    assert KEY.public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")


def test_caching_sha2_client_with_proxy_key_sends_ciphertext_directly() -> None:
    assert (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, b"\x01\x04")
        << SendToClient(frame(2, b"\x01\x04"))
        >> client >> frame(3, encrypt(PASSWORD, G.NONCE_MYSQL_80))
        << SendToServer(frame(4, PASSWORD + b"\x00"))
        >> server >> frame(5, OK)
        << SendToClient(frame(4, OK))
        << StartRelay()
    )


def test_caching_sha2_cleartext_from_client_believing_its_link_secure() -> None:
    assert (
        connected(G.MARIADB_11, R.CONNECTORC_MYSQL80_NODB.payload)
        >> server >> frame(3, switch("caching_sha2_password", NONCE2))
        << SendToClient(frame(2, switch("caching_sha2_password", NONCE2)))
        >> client >> frame(3, SCRAMBLE)
        << SendToServer(frame(4, SCRAMBLE))
        >> server >> frame(5, b"\x04")
        << SendToClient(frame(4, b"\x01\x04"))
        >> client >> frame(5, b"password\x00")
        << SendToServer(frame(6, b"password\x00"))
        >> server >> frame(7, OK)
        << SendToClient(frame(6, OK))
        << StartRelay()
    )


def test_caching_sha2_wrong_ciphertext_is_access_denied() -> None:
    expect = raises(AuthEmulationError)
    playbook = (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, b"\x01\x04")
        << SendToClient(frame(2, b"\x01\x04"))
        >> client >> frame(3, b"\x02")
        << SendToClient(frame(4, PEM_PACKET))
        >> client >> frame(5, undecryptable_ciphertext())
        << expect
    )
    assert playbook
    error = expect.caught
    assert isinstance(error, AuthEmulationError)
    assert (error.errno, error.sqlstate) == (1045, "28000")
    assert playbook.machine.error_packet(error) == frame(6, err(1045, "28000", error.client_message))
    assert playbook.machine.state is State.CLOSED


def test_caching_sha2_ciphertext_under_the_servers_key_is_refused() -> None:
    # a client configured with the upstream's public key: no 0x02 round trip, undecryptable ciphertext
    expect = raises(AuthEmulationError)
    playbook = (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, b"\x01\x04")
        << SendToClient(frame(2, b"\x01\x04"))
        >> client >> frame(3, undecryptable_ciphertext())
        << expect
    )
    assert playbook
    assert playbook.machine.error_packet(expect.caught) == frame(  # type: ignore[arg-type]
        4, err(1045, "28000", expect.caught.client_message)  # type: ignore[union-attr]
    )


@pytest.mark.parametrize("reply", [b"\x05", b"password", b"", b"\x01" * 255], ids=["byte", "no-nul", "empty", "255"])
def test_caching_sha2_unreadable_reply_is_access_denied(reply: bytes) -> None:
    assert (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, b"\x01\x04")
        << SendToClient(frame(2, b"\x01\x04"))
        >> client >> frame(3, reply)
        << raises(AuthEmulationError)
    )


def test_ciphertext_of_wrong_length_after_key_request() -> None:
    assert (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, b"\x01\x04")
        << SendToClient(frame(2, b"\x01\x04"))
        >> client >> frame(3, b"\x02")
        << SendToClient(frame(4, PEM_PACKET))
        >> client >> frame(5, b"password\x00")
        << raises(AuthEmulationError, match="RSA-encrypted password of 256 bytes")
    )


def test_caching_sha2_without_proxy_key_is_relayed_verbatim() -> None:
    assert (
        connected(G.MYSQL_80, C1_SHA2, auth_key=None)
        >> server >> frame(3, b"\x01\x04")
        << SendToClient(frame(2, b"\x01\x04"))
        >> client >> frame(3, b"\x02")
        << SendToServer(frame(4, b"\x02"))
    )


def test_old_server_version_accepts_connector_j_pkcs1v15_padding() -> None:
    old = G.variant(G.MYSQL_80, server_version="8.0.4-rc-log")
    old_fx = G.GreetingFixture("8.0.4", old, "8.0.4-rc-log", G.MYSQL_80.connection_id, G.CAPS_MYSQL_80, 255, 2,
                               G.NONCE_MYSQL_80, "caching_sha2_password", 0)
    assert (
        connected(old_fx, C1_SHA2)
        >> server >> frame(3, b"\x01\x04")
        << SendToClient(frame(2, b"\x01\x04"))
        >> client >> frame(3, b"\x02")
        << SendToClient(frame(4, PEM_PACKET))
        >> client >> frame(5, encrypt_pkcs1v15(PASSWORD, G.NONCE_MYSQL_80))
        << SendToServer(frame(4, PASSWORD + b"\x00"))
    )


def test_new_server_version_refuses_pkcs1v15_padding() -> None:
    ciphertext = encrypt_pkcs1v15(PASSWORD, G.NONCE_MYSQL_80)  # modulus-sized: never taken as cleartext
    assert (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, b"\x01\x04")
        << SendToClient(frame(2, b"\x01\x04"))
        >> client >> frame(3, b"\x02")
        << SendToClient(frame(4, PEM_PACKET))
        >> client >> frame(5, ciphertext)
        << raises(AuthEmulationError)
    )


def test_mariadb_5_5_5_prefix_gets_the_pkcs1v15_fallback() -> None:
    ciphertext = encrypt_pkcs1v15(PASSWORD, NONCE2)
    assert (
        connected(G.MARIADB_10, C1_MARIADB)
        >> server >> frame(3, switch("caching_sha2_password", NONCE2))
        << SendToClient(frame(2, switch("caching_sha2_password", NONCE2)))
        >> client >> frame(3, SCRAMBLE)
        << SendToServer(frame(4, SCRAMBLE))
        >> server >> frame(5, b"\x04")
        << SendToClient(frame(4, b"\x01\x04"))
        >> client >> frame(5, b"\x02")
        << SendToClient(frame(6, PEM_PACKET))
        >> client >> frame(7, ciphertext)
        << SendToServer(frame(6, PASSWORD + b"\x00"))
    )


# ---- sha256_password ------------------------------------------------------------------------------


def test_sha256_after_auth_switch() -> None:
    playbook = (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, switch("sha256_password", NONCE2))
        << SendToClient(frame(2, switch("sha256_password", NONCE2)))
        >> client >> frame(3, b"\x01")
        << SendToClient(frame(4, PEM_PACKET))
        >> client >> frame(5, encrypt(PASSWORD, NONCE2))
        << SendToServer(frame(4, PASSWORD + b"\x00"))
        >> server >> frame(5, OK)
        << SendToClient(frame(6, OK))
        << StartRelay()
    )
    assert playbook
    assert playbook.machine.auth_plugin == "sha256_password"
    assert playbook.machine.rsa_exchange_emulated


@pytest.mark.parametrize("reply", [b"password\x00", b"\x00"], ids=["cleartext", "empty-password"])
def test_sha256_after_switch_cleartext_is_forwarded(reply: bytes) -> None:
    assert (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, switch("sha256_password", NONCE2))
        << SendToClient(frame(2, switch("sha256_password", NONCE2)))
        >> client >> frame(3, reply)
        << SendToServer(frame(4, reply))
    )


def test_sha256_after_switch_direct_ciphertext() -> None:
    assert (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, switch("sha256_password", NONCE2))
        << SendToClient(frame(2, switch("sha256_password", NONCE2)))
        >> client >> frame(3, encrypt(PASSWORD, NONCE2))
        << SendToServer(frame(4, PASSWORD + b"\x00"))
    )


SHA256_GREETING = G.GreetingFixture(
    "mysql-8.0-sha256", G.variant(G.MYSQL_80, auth_plugin_name="sha256_password"), "8.0.40", 0x1234,
    G.CAPS_MYSQL_80, 255, 2, G.NONCE_MYSQL_80, "sha256_password", 0,
)
C1_FLAGS = R.LIBMYSQLCLIENT_MYSQL80_DB.capability_flags


def sha256_response(auth: bytes, flags: int = C1_FLAGS) -> bytes:
    return build_response(capability_flags=flags, auth_response=auth, database=b"shop",
                          auth_plugin_name="sha256_password", attributes=R.LIBMYSQL_ATTRS,
                          max_packet_size=0x40000000)


@pytest.mark.parametrize(
    "flags",
    [C1_FLAGS, C1_FLAGS & ~0x00200000],
    ids=["lenenc", "one-byte-length"],
)
def test_sha256_key_request_inside_the_handshake_response(flags: int) -> None:
    c1 = sha256_response(b"\x01", flags)
    upstream_c1 = build_response(capability_flags=flags & ~MASK, auth_response=PASSWORD + b"\x00",
                                 database=b"shop", auth_plugin_name="sha256_password",
                                 attributes=R.LIBMYSQL_ATTRS, max_packet_size=0x40000000)
    playbook = (
        Playbook(machine())
        >> server >> frame(0, SHA256_GREETING.payload)
        << SendToClient(frame(0, masked(SHA256_GREETING)))
        >> client >> frame(1, c1)
        << SendToServer(frame(1, ssl_request(c1)))
        << StartUpstreamTls()
        >> tls_established
        << SendToClient(frame(2, PEM_PACKET))  # the proxy answers the key request; C1 is held
        >> client >> frame(3, encrypt(PASSWORD, G.NONCE_MYSQL_80))
        << SendToServer(frame(2, upstream_c1))
        >> server >> frame(3, OK)
        << SendToClient(frame(4, OK))
        << StartRelay()
    )
    assert playbook


def test_sha256_ciphertext_inside_the_handshake_response() -> None:
    c1 = sha256_response(encrypt(PASSWORD, G.NONCE_MYSQL_80))
    upstream_c1 = build_response(capability_flags=C1_FLAGS & ~MASK, auth_response=PASSWORD + b"\x00",
                                 database=b"shop", auth_plugin_name="sha256_password",
                                 attributes=R.LIBMYSQL_ATTRS, max_packet_size=0x40000000)
    assert (
        Playbook(machine())
        >> server >> frame(0, SHA256_GREETING.payload)
        << SendToClient(frame(0, masked(SHA256_GREETING)))
        >> client >> frame(1, c1)
        << SendToServer(frame(1, ssl_request(c1)))
        << StartUpstreamTls()
        >> tls_established
        << SendToServer(frame(2, upstream_c1))
        >> server >> frame(3, OK)
        << SendToClient(frame(2, OK))
        << StartRelay()
    )


def test_sha256_initial_wrong_ciphertext_length() -> None:
    c1 = sha256_response(b"\x01")
    assert (
        Playbook(machine())
        >> server >> frame(0, SHA256_GREETING.payload)
        << SendToClient(frame(0, masked(SHA256_GREETING)))
        >> client >> frame(1, c1)
        << SendToServer(frame(1, ssl_request(c1)))
        << StartUpstreamTls()
        >> tls_established
        << SendToClient(frame(2, PEM_PACKET))
        >> client >> frame(3, b"short")
        << raises(AuthEmulationError)
    )


def test_sha256_initial_cleartext_on_the_greeting_plugin_is_forwarded() -> None:
    c1 = sha256_response(b"password\x00")
    assert (
        Playbook(machine())
        >> server >> frame(0, SHA256_GREETING.payload)
        << SendToClient(frame(0, masked(SHA256_GREETING)))
        >> client >> frame(1, c1)
        << SendToServer(frame(1, ssl_request(c1)))
        << StartUpstreamTls()
        >> tls_established
        << SendToServer(frame(2, upstream_response(c1)))
    )


@dataclass
class FakeKey:
    """An AuthKey double with a large modulus, decrypting one known ciphertext."""

    plaintext: bytes
    modulus_bytes: int = 512
    public_pem: bytes = b"-----BEGIN PUBLIC KEY-----\nFAKE\n-----END PUBLIC KEY-----\n"

    def decrypt(self, ciphertext: bytes) -> bytes | None:
        return self.plaintext if ciphertext == b"C" * self.modulus_bytes else None

    def decrypt_pkcs1v15(self, ciphertext: bytes) -> bytes | None:
        return None


def test_sha256_initial_long_password_with_one_byte_length_is_a_protocol_error() -> None:
    password = b"p" * 300  # allowed by a 4096-bit key: strlen + 41 < 512
    fake = FakeKey(bytes(b ^ G.NONCE_MYSQL_80[i % 20] for i, b in enumerate(password + b"\x00")))
    m = HandshakeMachine(auth_key=fake)
    c1 = sha256_response(b"\x01", C1_FLAGS & ~0x00200000)
    m.receive_server_data(frame(0, SHA256_GREETING.payload))
    m.receive_client_data(frame(1, c1))
    assert m.tls_established() == [SendToClient(frame(2, b"\x01" + fake.public_pem))]
    with pytest.raises(TlsProxyError):
        m.receive_client_data(frame(3, b"C" * 512))


# ---- COM_CHANGE_USER --------------------------------------------------------------------------------


def relaying() -> Playbook:
    return (
        connected(G.MYSQL_80, C1_SHA2)
        >> server >> frame(3, b"\x01\x03")
        << SendToClient(frame(2, b"\x01\x03"))
        >> server >> frame(4, OK)
        << SendToClient(frame(3, OK))
        << StartRelay()
    )


def test_change_user_with_rsa_emulation_uses_the_switch_nonce() -> None:
    password2 = b"second-pw"
    playbook = (
        relaying()
        >> client >> frame(0, SELECT_1)
        << SendToServer(frame(0, SELECT_1))
        >> client >> frame(0, CHANGE_USER_PAYLOAD)
        << SendToServer(frame(0, CHANGE_USER_PAYLOAD))
    )
    assert playbook
    m = playbook.machine
    assert m.state is State.CHANGE_USER_SENT  # the server has not answered yet
    assert m.inspecting_server_data
    assert (
        playbook
        >> server >> frame(1, switch("caching_sha2_password", NONCE2))
        << SendToClient(frame(1, switch("caching_sha2_password", NONCE2)))
        >> client >> frame(2, SCRAMBLE)
        << SendToServer(frame(2, SCRAMBLE))
        >> server >> frame(3, b"\x01\x04")
        << SendToClient(frame(3, b"\x01\x04"))
        >> client >> frame(4, b"\x02")
        << SendToClient(frame(5, PEM_PACKET))
        >> client >> frame(6, encrypt(password2, NONCE2))
        << SendToServer(frame(4, password2 + b"\x00"))
        >> server >> frame(5, OK)
        << SendToClient(frame(7, OK))  # back to relaying: no second StartRelay
    )
    assert m.state is State.RELAY
    assert not m.inspecting_server_data
    assert (
        playbook
        >> client >> frame(0, SELECT_1)
        << SendToServer(frame(0, SELECT_1))
    )


def test_change_user_error_packet_uses_the_restarted_counter() -> None:
    expect = raises(AuthEmulationError)
    playbook = (
        relaying()
        >> client >> frame(0, CHANGE_USER_PAYLOAD)
        << SendToServer(frame(0, CHANGE_USER_PAYLOAD))
        >> server >> frame(1, b"\x01\x04")  # MySQL: straight to full auth without a switch
        << SendToClient(frame(1, b"\x01\x04"))
        >> client >> frame(2, b"\x02")
        << SendToClient(frame(3, PEM_PACKET))
        >> client >> frame(4, undecryptable_ciphertext())
        << expect
    )
    assert playbook
    packet = playbook.machine.error_packet(expect.caught)  # type: ignore[arg-type]
    assert packet == frame(5, err(1045, "28000", expect.caught.client_message))  # type: ignore[union-attr]


def test_change_user_mariadb_reuses_greeting_nonce() -> None:
    # MariaDB may answer COM_CHANGE_USER without an AuthSwitch: the greeting's nonce is the one in force
    c1 = R.CONNECTORC_MYSQL80_NODB.payload
    playbook = (
        connected(G.MARIADB_11, c1)
        >> server >> frame(3, OK)
        << SendToClient(frame(2, OK))
        << StartRelay()
        >> client >> frame(0, CHANGE_USER_PAYLOAD)
        << SendToServer(frame(0, CHANGE_USER_PAYLOAD))
        >> server >> frame(1, b"\x04")
        << SendToClient(frame(1, b"\x01\x04"))
        >> client >> frame(2, b"\x02")
        << SendToClient(frame(3, PEM_PACKET))
        >> client >> frame(4, encrypt(PASSWORD, G.NONCE_MARIADB_11))
        << SendToServer(frame(2, PASSWORD + b"\x00"))
        >> server >> frame(3, OK)
        << SendToClient(frame(5, OK))
    )
    assert playbook
    assert playbook.machine.state is State.RELAY


def test_change_user_err_returns_to_relay() -> None:
    denied = err(1045, "28000", "Access denied")
    playbook = (
        relaying()
        >> client >> frame(0, CHANGE_USER_PAYLOAD)
        << SendToServer(frame(0, CHANGE_USER_PAYLOAD))
        >> server >> frame(1, switch("mysql_native_password", NONCE2))
        << SendToClient(frame(1, switch("mysql_native_password", NONCE2)))
        >> client >> frame(2, bytes(20))
        << SendToServer(frame(2, bytes(20)))
        >> server >> frame(3, denied)
        << SendToClient(frame(3, denied))
    )
    assert playbook
    assert playbook.machine.state is State.RELAY


def test_change_user_sequence_checked_on_both_sides() -> None:
    base = relaying() >> client >> frame(0, CHANGE_USER_PAYLOAD) << SendToServer(frame(0, CHANGE_USER_PAYLOAD))
    assert base >> server >> frame(2, OK) << raises(ServerProtocolError)
    base = relaying() >> client >> frame(0, CHANGE_USER_PAYLOAD) << SendToServer(frame(0, CHANGE_USER_PAYLOAD))
    assert (
        base
        >> server >> frame(1, switch("mysql_native_password", NONCE2))
        << SendToClient(frame(1, switch("mysql_native_password", NONCE2)))
        >> client >> frame(1, bytes(20))
        << raises(ClientProtocolError)
    )


def test_change_user_split_and_pipelined_with_next_bytes() -> None:
    data = frame(0, CHANGE_USER_PAYLOAD)
    playbook = (
        relaying()
        >> client >> frame(0, SELECT_1) + data[:2]
        << SendToServer(frame(0, SELECT_1))
        >> client >> data[2:9]
        >> client >> data[9:]
        << SendToServer(data)
    )
    assert playbook
    assert playbook.machine.state is State.CHANGE_USER_SENT


def test_change_user_malformed_is_still_followed() -> None:
    assert (
        relaying()
        >> client >> frame(0, b"\x11bob")  # no NUL: the server judges it, the proxy follows the exchange
        << SendToServer(frame(0, b"\x11bob"))
        >> server >> frame(1, err(1047, "08S01", "Unknown command"))
        << SendToClient(frame(1, err(1047, "08S01", "Unknown command")))
    )


# ---- relay ----------------------------------------------------------------------------------------


def test_relay_passes_client_bytes_unchanged_including_16mib_packets() -> None:
    playbook = relaying()
    assert playbook
    m = playbook.machine
    big_payload = b"\x03" + b"x" * (0xFFFFFF - 1) + CHANGE_USER_PAYLOAD + frame(0, CHANGE_USER_PAYLOAD)
    stream = (
        frames(0, big_payload)  # continuation frame (seq 1) starts with 0x11
        + frame(0, b"\x03" + frame(0, CHANGE_USER_PAYLOAD))  # a COM_QUERY holding a fake COM_CHANGE_USER frame
        + frames(0, b"\x03" + bytes(0xFFFFFF - 1))  # exactly 16 MiB - 1: an empty terminator frame
        + frame(0, SELECT_1)
    )
    assert stream[0xFFFFFF + 4 + 3] == 1 and stream[0xFFFFFF + 8] == 0x11
    sent = bytearray()
    step = 1 << 20
    for pos in range(0, len(stream), step):
        for effect in m.receive_client_data(stream[pos : pos + step]):
            assert isinstance(effect, SendToServer)
            sent += effect.data
    assert sent == stream
    assert m.state is State.RELAY


def test_relay_client_prefix_is_what_the_driver_sends_as_it_came() -> None:
    """The relay's hot path: the bytes before a command the machine takes whole go up without effects;
    the rest goes to receive_client_data, which then claims that command."""
    query = frame(0, SELECT_1)
    assert machine().relay_client_prefix(query) == 0  # not relaying yet
    playbook = relaying()
    assert playbook
    m = playbook.machine
    assert m.relay_client_prefix(query + query) == 2 * len(query)
    assert m.relay_client_prefix(query + frame(0, CHANGE_USER_PAYLOAD)) == len(query)
    assert m.receive_client_data(frame(0, CHANGE_USER_PAYLOAD)) == [SendToServer(frame(0, CHANGE_USER_PAYLOAD))]
    assert m.state is State.CHANGE_USER_SENT
    assert m.relay_client_prefix(query) == 0  # in the connection phase again: everything through the machine


def test_relay_server_bytes_pass_unchanged() -> None:
    playbook = relaying()
    assert playbook
    data = frame(1, b"\x11 looks like change user") + b"\xff\xff\xff"
    assert playbook >> server >> data << SendToClient(data)
    assert playbook.machine.receive_server_data(b"") == []


# ---- upstream_tls = False (DISABLED mode) -----------------------------------------------------------


def test_disabled_mode_forwards_response_at_seq1_without_rsa_interception() -> None:
    no_tls = G.variant(G.MYSQL_80, capability_flags=G.CAPS_MYSQL_80 & ~SSL)
    no_tls_fx = G.GreetingFixture("no-tls", no_tls, "8.0.40", 0x1234, G.CAPS_MYSQL_80 & ~SSL, 255, 2,
                                  G.NONCE_MYSQL_80, "caching_sha2_password", 0)
    server_pem = b"\x01-----BEGIN PUBLIC KEY-----\nSERVER\n-----END PUBLIC KEY-----\n"
    playbook = (
        Playbook(machine(upstream_tls=False))
        >> server >> frame(0, no_tls)
        << SendToClient(frame(0, masked(no_tls_fx)))
        >> client >> frame(1, C1_SHA2)
        << SendToServer(frame(1, upstream_response(C1_SHA2)))
    )
    assert playbook
    assert playbook.machine.state is State.AUTH
    assert (
        playbook
        >> server >> frame(2, b"\x01\x04")
        << SendToClient(frame(2, b"\x01\x04"))
        >> client >> frame(3, b"\x02")
        << SendToServer(frame(3, b"\x02"))
        >> server >> frame(4, server_pem)
        << SendToClient(frame(4, server_pem))
        >> client >> frame(5, b"R" * 256)
        << SendToServer(frame(5, b"R" * 256))
        >> server >> frame(6, OK)
        << SendToClient(frame(6, OK))
        << StartRelay()
    )
    assert not playbook.machine.rsa_exchange_emulated


def test_disabled_mode_accepts_a_tls_capable_server_too() -> None:
    assert (
        Playbook(machine(upstream_tls=False))
        >> server >> frame(0, G.MARIADB_10_11_CAPTURED.payload)
        << SendToClient(frame(0, masked(G.MARIADB_10_11_CAPTURED)))
        >> client >> frame(1, C1_MARIADB)
        << SendToServer(frame(1, upstream_response(C1_MARIADB)))
        >> server >> frame(2, OK)
        << SendToClient(frame(2, OK))
        << StartRelay()
    )


# ---- every chunking ---------------------------------------------------------------------------------


def _transcripts() -> dict[str, Callable[[], Playbook]]:
    return {
        "native": lambda: (
            connected(G.MARIADB_10_11_CAPTURED, C1_MARIADB)
            >> server >> frame(3, OK) << SendToClient(frame(2, OK)) << StartRelay()
            >> client >> frame(0, SELECT_1) + frame(0, CHANGE_USER_PAYLOAD)
            << SendToServer(frame(0, SELECT_1)) << SendToServer(frame(0, CHANGE_USER_PAYLOAD))
            >> server >> frame(1, OK) + frame(1, b"tail")
            << SendToClient(frame(1, OK)) << SendToClient(frame(1, b"tail"))
        ),
        "caching_sha2_full": lambda: (
            connected(G.MYSQL_80, C1_SHA2)
            >> server >> frame(3, b"\x01\x04") << SendToClient(frame(2, b"\x01\x04"))
            >> client >> frame(3, b"\x02") << SendToClient(frame(4, PEM_PACKET))
            >> client >> frame(5, encrypt(PASSWORD, G.NONCE_MYSQL_80)) << SendToServer(frame(4, PASSWORD + b"\x00"))
            >> server >> frame(5, OK) << SendToClient(frame(6, OK)) << StartRelay()
        ),
        "sha256_initial": lambda: (
            Playbook(machine())
            >> server >> frame(0, SHA256_GREETING.payload) << SendToClient(frame(0, masked(SHA256_GREETING)))
            >> client >> frame(1, sha256_response(b"\x01"))
            << SendToServer(frame(1, ssl_request(sha256_response(b"\x01")))) << StartUpstreamTls()
            >> tls_established << SendToClient(frame(2, PEM_PACKET))
            >> client >> frame(3, encrypt(PASSWORD, G.NONCE_MYSQL_80))
            << SendToServer(frame(2, upstream_response(sha256_response(PASSWORD + b"\x00"))))
            >> server >> frame(3, OK) << SendToClient(frame(4, OK)) << StartRelay()
        ),
        "change_user_rsa": lambda: (
            relaying()
            >> client >> frame(0, CHANGE_USER_PAYLOAD) << SendToServer(frame(0, CHANGE_USER_PAYLOAD))
            >> server >> frame(1, switch("sha256_password", NONCE2))
            << SendToClient(frame(1, switch("sha256_password", NONCE2)))
            >> client >> frame(2, b"\x01") << SendToClient(frame(3, PEM_PACKET))
            >> client >> frame(4, encrypt(PASSWORD, NONCE2)) << SendToServer(frame(2, PASSWORD + b"\x00"))
            >> server >> frame(3, OK) << SendToClient(frame(5, OK))
            >> client >> frame(0, SELECT_1) << SendToServer(frame(0, SELECT_1))
        ),
        "disabled": lambda: (
            Playbook(machine(upstream_tls=False))
            >> server >> frame(0, G.MYSQL_57.payload) << SendToClient(frame(0, masked(G.MYSQL_57)))
            >> client >> frame(1, R.LIBMYSQLCLIENT_MYSQL57_NODB.payload)
            << SendToServer(frame(1, upstream_response(R.LIBMYSQLCLIENT_MYSQL57_NODB.payload)))
            >> server >> frame(2, OK) << SendToClient(frame(2, OK)) << StartRelay()
        ),
        "err": lambda: (
            connected(G.MYSQL_84, R.PYMYSQL_MYSQL80_DB.payload)
            >> server >> frame(3, err(1045, "28000", "denied"))
            << SendToClient(frame(2, err(1045, "28000", "denied")))
            << CloseConnection(Outcome.AUTH_DENIED, "upstream denied authentication")
        ),
    }


TRANSCRIPTS = _transcripts()


def machine_like(playbook: Playbook) -> HandshakeMachine:
    m = playbook.machine
    return HandshakeMachine(upstream_tls=m.upstream_tls, auth_key=m._auth_key)  # noqa: SLF001


@pytest.mark.parametrize("name", TRANSCRIPTS)
def test_transcript_holds_one_byte_at_a_time(name: str) -> None:
    reference = TRANSCRIPTS[name]()
    assert reference
    expected = merge_effects(reference.expected_effects)
    assert run_steps(machine_like(reference), reference.steps, bytewise) == expected


@pytest.mark.parametrize("name", TRANSCRIPTS)
def test_transcript_holds_for_every_split_point(name: str) -> None:
    """Each data step cut in two at every position (the other steps whole): same bytes, same effects."""
    reference = TRANSCRIPTS[name]()
    assert reference
    expected = merge_effects(reference.expected_effects)
    steps = reference.steps
    for index, step in enumerate(steps):
        data = getattr(step, "data", b"")
        for split in range(1, len(data)):
            m = machine_like(reference)
            effects = []
            for other_index, other in enumerate(steps):
                if other_index == index:
                    effects += run_step(m, other, lambda piece, k=split: (piece[:k], piece[k:]))
                else:
                    effects += run_step(m, other)
            assert merge_effects(effects) == expected, f"step {index} ({step!r}) split at {split}"


# ---- client half-close in the relay -------------------------------------------------------------------


def test_client_eof_after_a_complete_command_sends_com_quit() -> None:
    playbook = relaying() >> client >> frame(0, SELECT_1) << SendToServer(frame(0, SELECT_1))
    assert playbook
    assert playbook.machine.receive_client_eof() == [SendToServer(frame(0, b"\x01"))]


def test_client_eof_after_its_own_com_quit_sends_nothing_more() -> None:
    playbook = relaying() >> client >> frame(0, b"\x01") << SendToServer(frame(0, b"\x01"))
    assert playbook
    assert playbook.machine.receive_client_eof() == []


def test_client_eof_mid_packet_sends_nothing() -> None:
    half = frame(0, SELECT_1)[:-3]
    playbook = relaying() >> client >> half << SendToServer(half)
    assert playbook
    assert playbook.machine.receive_client_eof() == []
