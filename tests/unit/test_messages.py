"""tlsproxy.mysql.messages against the byte fixtures (PROTOCOL.md §2, §3, §4.4, §6, §8).

Every message is parsed, round-tripped where the module can write it, then truncated at every field
boundary and at every byte: only DecodeError may come out (envoy mysql_greet_test style).
"""

from __future__ import annotations

import pytest

from tests.fixtures import greetings as G
from tests.fixtures import responses as R
from tests.fixtures.greetings import GreetingFixture
from tests.fixtures.responses import ResponseFixture, build_response
from tlsproxy.mysql.codec import DecodeError
from tlsproxy.mysql.constants import MASKED_CAPABILITIES, Capability
from tlsproxy.mysql.messages import (
    AuthSwitchRequest,
    ErrPacket,
    change_user_from_response,
    parse_auth_switch,
    parse_change_user,
    parse_err,
    parse_handshake_response,
    parse_initial_handshake,
    patch_client_capabilities,
    patch_greeting_capabilities,
    replace_auth_response,
    ssl_request_from_response,
)

# Written out here rather than imported: PROTOCOL.md §4.2 (SSL, VERIFY_SERVER_CERT, COMPRESS, ZSTD, MFA)
MASK = 0x00000800 | 0x40000000 | 0x00000020 | 0x04000000 | 0x10000000

GREETINGS = pytest.mark.parametrize("fx", G.ALL, ids=lambda fx: fx.name)
RESPONSES = pytest.mark.parametrize(
    "fx",
    [*R.CAPTURED],
    ids=lambda fx: fx.name,
)


def test_masked_capabilities_constant() -> None:
    assert int(MASKED_CAPABILITIES) == MASK


# ---- greetings ---------------------------------------------------------------------------------


@GREETINGS
def test_fixture_builder_reproduces_payload(fx: GreetingFixture) -> None:
    # the fields recorded for each fixture describe its bytes exactly (for the capture: its real bytes)
    assert G.variant(fx) == fx.payload


@GREETINGS
def test_parse_initial_handshake(fx: GreetingFixture) -> None:
    greeting = parse_initial_handshake(fx.payload)
    assert greeting.server_version == fx.server_version
    assert greeting.connection_id == fx.connection_id
    assert greeting.capability_flags == fx.capability_flags
    assert greeting.character_set == fx.character_set
    assert greeting.status_flags == fx.status_flags
    assert greeting.auth_plugin_data == fx.nonce + b"\x00"
    assert greeting.nonce == fx.nonce
    assert len(greeting.nonce) == 20
    assert greeting.auth_plugin_name == fx.auth_plugin_name
    assert greeting.mariadb_extended_capabilities == fx.mariadb_extended_capabilities
    low, high = greeting.capability_low_offset, greeting.capability_high_offset
    assert high is not None
    assert int.from_bytes(fx.payload[low : low + 2], "little") == fx.capability_flags & 0xFFFF
    assert int.from_bytes(fx.payload[high : high + 2], "little") == fx.capability_flags >> 16
    assert greeting.capability_flags & Capability.SSL


@pytest.mark.parametrize(
    ("fx", "is_mariadb", "bit0"),
    [
        (G.MYSQL_56, False, True), (G.MYSQL_57, False, True), (G.MYSQL_80, False, True), (G.MYSQL_84, False, True),
        (G.MARIADB_10, True, False), (G.MARIADB_10_11_CAPTURED, True, False), (G.MARIADB_11, True, False),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_server_family_markers(fx: GreetingFixture, is_mariadb: bool, bit0: bool) -> None:
    greeting = parse_initial_handshake(fx.payload)
    assert greeting.is_mariadb is is_mariadb
    assert bool(greeting.capability_flags & Capability.LONG_PASSWORD) is bit0
    assert fx.server_version.startswith("5.5.5-") is (fx in (G.MARIADB_10, G.MARIADB_10_11_CAPTURED))


def test_mysql_greeting_ignores_reserved_bytes() -> None:
    # bit 0 set: the reserved bytes are not MariaDB extended caps even if non-zero
    payload = bytearray(G.MYSQL_80.payload)
    greeting = parse_initial_handshake(bytes(payload))
    reserved_at = greeting.capability_high_offset + 3  # type: ignore[operator]
    payload[reserved_at + 6 : reserved_at + 10] = b"\x1d\x00\x00\x00"
    assert parse_initial_handshake(bytes(payload)).mariadb_extended_capabilities == 0


@GREETINGS
@pytest.mark.parametrize("clear", [MASK, 0, Capability.SSL, 0xFFFFFFFF], ids=["mask", "none", "ssl", "all"])
def test_patch_greeting_changes_only_the_capability_bytes(fx: GreetingFixture, clear: int) -> None:
    greeting = parse_initial_handshake(fx.payload)
    patched = patch_greeting_capabilities(fx.payload, greeting, clear)
    assert len(patched) == len(fx.payload)
    low, high = greeting.capability_low_offset, greeting.capability_high_offset
    assert high is not None
    cap_positions = {low, low + 1, high, high + 1}
    for i, (before, after) in enumerate(zip(fx.payload, patched)):
        if i not in cap_positions:
            assert before == after, f"byte {i} changed"
    # the whole greeting equals the fixture rebuilt with the cleared caps
    assert patched == G.variant(fx, capability_flags=fx.capability_flags & ~clear & 0xFFFFFFFF)
    if clear == 0xFFFFFFFF:
        return  # without PROTOCOL_41/SECURE_CONNECTION the patched bytes no longer parse the same way
    reparsed = parse_initial_handshake(patched)
    assert reparsed.capability_flags == fx.capability_flags & ~clear & 0xFFFFFFFF
    assert reparsed.nonce == fx.nonce
    assert reparsed.mariadb_extended_capabilities == fx.mariadb_extended_capabilities
    assert reparsed.server_version == fx.server_version
    assert reparsed.auth_plugin_name == fx.auth_plugin_name


def test_patch_greeting_keeps_mariadb_bit0_clear() -> None:
    fx = G.MARIADB_10_11_CAPTURED
    greeting = parse_initial_handshake(fx.payload)
    patched = parse_initial_handshake(patch_greeting_capabilities(fx.payload, greeting, MASK))
    assert not patched.capability_flags & Capability.LONG_PASSWORD
    assert patched.mariadb_extended_capabilities == 0x1D
    assert patched.capability_flags == 0x81FFF7DE  # SSL and COMPRESS cleared


PRE41_GREETING = b"\x0a" + b"3.23.58\x00" + b"\x01\x00\x00\x00" + b"abcdefgh" + b"\x00" + b"\x2c\x00"


def test_pre41_greeting_stops_after_low_capabilities() -> None:
    greeting = parse_initial_handshake(PRE41_GREETING)
    assert greeting.server_version == "3.23.58"
    assert greeting.capability_flags == 0x002C
    assert greeting.capability_high_offset is None
    assert greeting.nonce == b"abcdefgh"
    patched = patch_greeting_capabilities(PRE41_GREETING, greeting, 0x20)
    assert patched == PRE41_GREETING[:-2] + b"\x0c\x00"


def test_greeting_wrong_protocol_version() -> None:
    with pytest.raises(DecodeError, match="protocol version 9"):
        parse_initial_handshake(b"\x09" + G.MYSQL_80.payload[1:])


def test_greeting_without_plugin_auth_or_trailing_nul() -> None:
    without_plugin = G.variant(G.MYSQL_57, capability_flags=G.CAPS_MYSQL_57 & ~Capability.PLUGIN_AUTH)
    assert parse_initial_handshake(without_plugin).auth_plugin_name == ""
    no_final_nul = G.MYSQL_57.payload[:-1]
    assert parse_initial_handshake(no_final_nul).auth_plugin_name == "mysql_native_password"


def _greeting_boundaries(fx: GreetingFixture) -> list[int]:
    """Offsets where each field of the greeting starts (PROTOCOL.md §2)."""
    version_end = 1 + len(fx.server_version) + 1
    offsets = [0, 1, version_end, version_end + 4, version_end + 12, version_end + 13, version_end + 15,
               version_end + 16, version_end + 18, version_end + 20, version_end + 21, version_end + 31,
               version_end + 44, len(fx.payload)]
    return offsets


@GREETINGS
def test_greeting_truncated_at_field_boundaries(fx: GreetingFixture) -> None:
    boundaries = _greeting_boundaries(fx)
    assert fx.payload[boundaries[-2] - 1] == 0  # part 2's NUL closes the nonce
    low_caps_end = boundaries[6]  # a pre-4.1 greeting may end right after the low capability word
    for cut in boundaries[:-3]:
        if cut == low_caps_end:
            assert parse_initial_handshake(fx.payload[:cut]).capability_high_offset is None
            continue
        with pytest.raises(DecodeError):
            parse_initial_handshake(fx.payload[:cut])


@GREETINGS
def test_greeting_truncated_at_every_byte_raises_only_decode_error(fx: GreetingFixture) -> None:
    reserved_end = _greeting_boundaries(fx)[11]
    for cut in range(len(fx.payload)):
        try:
            parse_initial_handshake(fx.payload[:cut])
        except DecodeError:
            continue
        # only a pre-4.1 greeting (end after the low capability word) or a short nonce/plugin tail parse
        assert cut == _greeting_boundaries(fx)[6] or cut >= reserved_end, cut


# ---- HandshakeResponse41 -------------------------------------------------------------------------


@RESPONSES
def test_parse_captured_responses(fx: ResponseFixture) -> None:
    response = parse_handshake_response(fx.payload)
    assert response.capability_flags == fx.capability_flags
    assert response.max_packet_size == fx.max_packet_size
    assert response.character_set == fx.character_set
    assert response.mariadb_extended_capabilities == fx.mariadb_extended_capabilities
    assert response.username == fx.username
    assert response.auth_response == fx.auth_response
    assert response.database == fx.database
    assert response.auth_plugin_name == fx.auth_plugin_name
    assert response.protocol_41
    assert not response.is_ssl_request
    start, end = response.auth_response_span
    assert fx.payload[start:end] == fx.auth_response
    length_start, length_end = response.auth_length_span
    assert length_end == start
    assert fx.payload[length_start:length_end] == bytes((len(fx.auth_response),))


def test_connector_c_writes_extended_caps_only_when_bit0_clear() -> None:
    assert R.CONNECTORC_MARIADB_DB.payload[28:32] == b"\x1d\x00\x00\x00"
    assert not R.CONNECTORC_MARIADB_DB.capability_flags & Capability.LONG_PASSWORD
    assert R.CONNECTORC_MYSQL80_NODB.payload[28:32] == bytes(4)
    assert R.CONNECTORC_MYSQL80_NODB.capability_flags & Capability.LONG_PASSWORD


@pytest.mark.parametrize(
    ("payload", "flags", "auth", "database", "plugin"),
    [
        (R.LIBMYSQL_80_ZSTD, R.CAPS_LIBMYSQL_80_ZSTD, R.SCRAMBLE_SHA2_MYSQL80, b"shop", "caching_sha2_password"),
        (R.ONE_BYTE_AUTH, R.CAPS_ONE_BYTE, R.SCRAMBLE_NATIVE_MYSQL57, b"db", "mysql_native_password"),
        (R.NUL_AUTH, R.CAPS_NUL_AUTH, b"12345678", b"db", ""),
    ],
    ids=["zstd", "one-byte-length", "nul-terminated"],
)
def test_parse_synthesized_responses(payload: bytes, flags: int, auth: bytes, database: bytes, plugin: str) -> None:
    response = parse_handshake_response(payload)
    assert response.capability_flags == flags
    assert response.auth_response == auth
    assert response.database == database
    assert response.auth_plugin_name == plugin
    start, end = response.auth_response_span
    assert payload[start:end] == auth


def test_lenenc_auth_response_longer_than_250() -> None:
    flags = R.LIBMYSQLCLIENT_MYSQL80_DB.capability_flags
    auth = bytes(range(256)) * 2
    payload = build_response(capability_flags=flags, auth_response=auth, database=b"d", auth_plugin_name="x",
                             attributes={b"a": b"b"})
    response = parse_handshake_response(payload)
    assert response.auth_response == auth
    assert payload[response.auth_length_span[0] : response.auth_length_span[1]] == b"\xfc\x00\x02"


def test_parse_ssl_requests() -> None:
    ssl41 = parse_handshake_response(R.SSL_REQUEST_41)
    assert ssl41.is_ssl_request and ssl41.protocol_41
    assert ssl41.username == b""
    ssl320 = parse_handshake_response(R.SSL_REQUEST_320)
    assert ssl320.is_ssl_request and not ssl320.protocol_41
    plain_prefix = parse_handshake_response(R.LIBMYSQLCLIENT_MYSQL80_DB.payload[:32])
    assert not plain_prefix.is_ssl_request  # 32 bytes without CLIENT_SSL: no user name, refused later


def test_parse_pre41_response() -> None:
    response = parse_handshake_response(R.PRE41_RESPONSE)
    assert not response.protocol_41
    assert not response.is_ssl_request
    assert response.capability_flags == 0x0005


@RESPONSES
@pytest.mark.parametrize(
    "new_auth", [b"", b"\x01", b"secret\x00", bytes(range(250)), bytes(251), bytes(300), bytes(0x10000)],
    ids=lambda v: f"{len(v)}B",
)
def test_replace_auth_response_lenenc(fx: ResponseFixture, new_auth: bytes) -> None:
    response = parse_handshake_response(fx.payload)
    assert fx.capability_flags & Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
    replaced = replace_auth_response(fx.payload, response, new_auth)
    again = parse_handshake_response(replaced)
    assert again.auth_response == new_auth
    assert (again.username, again.database, again.auth_plugin_name) == (fx.username, fx.database, fx.auth_plugin_name)
    start, end = response.auth_length_span[0], response.auth_response_span[1]
    new_end = again.auth_response_span[1]
    assert replaced[:start] == fx.payload[:start]
    assert replaced[new_end:] == fx.payload[end:]  # database, plugin, attributes byte-identical


@RESPONSES
def test_replace_auth_response_with_itself_is_identity(fx: ResponseFixture) -> None:
    response = parse_handshake_response(fx.payload)
    assert replace_auth_response(fx.payload, response, fx.auth_response) == fx.payload


def test_replace_auth_response_one_byte_length() -> None:
    response = parse_handshake_response(R.ONE_BYTE_AUTH)
    replaced = replace_auth_response(R.ONE_BYTE_AUTH, response, b"secret\x00")
    assert replaced == build_response(capability_flags=R.CAPS_ONE_BYTE, auth_response=b"secret\x00",
                                      database=b"db", auth_plugin_name="mysql_native_password")
    assert parse_handshake_response(replaced).auth_response == b"secret\x00"
    assert replace_auth_response(R.ONE_BYTE_AUTH, response, bytes(255))[36] == 255
    with pytest.raises(ValueError):
        replace_auth_response(R.ONE_BYTE_AUTH, response, bytes(256))


def test_replace_auth_response_nul_terminated_form() -> None:
    response = parse_handshake_response(R.NUL_AUTH)
    replaced = replace_auth_response(R.NUL_AUTH, response, b"secret\x00")
    assert replaced == build_response(capability_flags=R.CAPS_NUL_AUTH, auth_response=b"secret", database=b"db")
    again = parse_handshake_response(replaced)
    assert again.auth_response == b"secret"
    assert again.database == b"db"


def test_ssl_request_from_response_is_the_patched_prefix() -> None:
    for fx in (*R.CAPTURED,):
        request = ssl_request_from_response(fx.payload, MASK)
        assert len(request) == 32
        flags = int.from_bytes(request[:4], "little")
        assert flags == (fx.capability_flags | 0x800) & ~(MASK & ~0x800)
        assert flags & Capability.SSL
        assert request[4:] == fx.payload[4:32]  # max_packet, charset, filler and MariaDB ext caps unchanged
    zstd = ssl_request_from_response(R.LIBMYSQL_80_ZSTD, MASK)
    assert int.from_bytes(zstd[:4], "little") == (R.CAPS_LIBMYSQL_80_ZSTD & ~MASK) | 0x800
    assert not int.from_bytes(zstd[:4], "little") & (Capability.COMPRESS | Capability.ZSTD_COMPRESSION_ALGORITHM)


def test_patch_client_capabilities() -> None:
    payload = R.CONNECTORC_MARIADB_DB.payload
    patched = patch_client_capabilities(payload, set_bits=0x800, clear_bits=0x8)
    assert int.from_bytes(patched[:4], "little") == (0x00BFA28C | 0x800) & ~0x8
    assert patched[4:] == payload[4:]
    assert patch_client_capabilities(payload) == payload


def _response_boundaries(payload: bytes) -> tuple[list[int], int]:
    """Field starts of a HandshakeResponse41 (PROTOCOL.md §3.1) and where its auth response ends."""
    response = parse_handshake_response(payload)
    user_end = 32 + len(response.username) + 1
    boundaries = [0, 4, 8, 9, 28, 32, user_end, response.auth_length_span[1], response.auth_response_span[1]]
    return boundaries, response.auth_response_span[1]


@RESPONSES
def test_response_truncated_at_field_boundaries(fx: ResponseFixture) -> None:
    boundaries, _ = _response_boundaries(fx.payload)
    for cut in boundaries[:-1]:
        if cut == 32:
            assert parse_handshake_response(fx.payload[:cut]).username == b""  # an SSLRequest-sized prefix
            continue
        with pytest.raises(DecodeError):
            parse_handshake_response(fx.payload[:cut])


@pytest.mark.parametrize(
    "payload",
    [*(fx.payload for fx in R.CAPTURED), R.LIBMYSQL_80_ZSTD, R.ONE_BYTE_AUTH, R.NUL_AUTH],
    ids=[*(fx.name for fx in R.CAPTURED), "zstd", "one-byte", "nul"],
)
def test_response_truncated_at_every_byte_raises_only_decode_error(payload: bytes) -> None:
    _, auth_end = _response_boundaries(payload)
    for cut in range(len(payload)):
        try:
            parse_handshake_response(payload[:cut])
        except DecodeError:
            continue
        # before the auth response ends only the SSLRequest-sized prefix parses
        assert cut == 32 or cut >= auth_end, cut


def test_response_with_invalid_lenenc_auth_length() -> None:
    fx = R.PYMYSQL_MYSQL80_DB
    response = parse_handshake_response(fx.payload)
    broken = bytearray(fx.payload)
    broken[response.auth_length_span[0]] = 0xFB
    with pytest.raises(DecodeError, match="auth_response_length"):
        parse_handshake_response(bytes(broken))


# ---- AuthSwitchRequest ---------------------------------------------------------------------------

NONCE2 = bytes(range(0x41, 0x55))
SWITCH_SHA2 = b"\xfe" + b"caching_sha2_password\x00" + NONCE2 + b"\x00"


def test_parse_auth_switch() -> None:
    switch = parse_auth_switch(SWITCH_SHA2)
    assert switch == AuthSwitchRequest("caching_sha2_password", NONCE2 + b"\x00")
    assert switch.nonce == NONCE2
    assert switch.encode_payload() == SWITCH_SHA2


def test_parse_auth_switch_ed25519_nonce_without_nul() -> None:
    nonce = bytes(range(32))
    switch = parse_auth_switch(b"\xfeclient_ed25519\x00" + nonce)
    assert switch.plugin_name == "client_ed25519"
    assert switch.nonce == nonce


def test_parse_old_auth_switch() -> None:
    switch = parse_auth_switch(b"\xfe")
    assert switch == AuthSwitchRequest("mysql_old_password", b"")
    assert switch.nonce == b""


@pytest.mark.parametrize("payload", [b"", b"\x00", b"\x01\x04", b"\xff\x15\x04"])
def test_parse_auth_switch_refuses_other_packets(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_auth_switch(payload)


def test_auth_switch_truncated_at_every_byte() -> None:
    plugin_end = 1 + len("caching_sha2_password") + 1
    for cut in range(len(SWITCH_SHA2)):
        if cut == 0:
            with pytest.raises(DecodeError, match="not an AuthSwitchRequest"):
                parse_auth_switch(b"")
        elif cut == 1:
            assert parse_auth_switch(SWITCH_SHA2[:1]).plugin_name == "mysql_old_password"
        elif cut < plugin_end:
            with pytest.raises(DecodeError, match="auth_plugin_name"):
                parse_auth_switch(SWITCH_SHA2[:cut])
        else:
            assert parse_auth_switch(SWITCH_SHA2[:cut]).auth_plugin_data == SWITCH_SHA2[plugin_end:cut]


# ---- ERR ---------------------------------------------------------------------------------------


def test_err_encode_with_sqlstate() -> None:
    err = ErrPacket(1045, "28000", "Access denied")
    assert err.encode_payload(protocol_41=True) == b"\xff\x15\x04#28000Access denied"
    assert parse_err(err.encode_payload(protocol_41=True)) == err


def test_err_encode_without_sqlstate() -> None:
    err = ErrPacket(1043, "08S01", "tlsproxy: no TLS")
    assert err.encode_payload(protocol_41=False) == b"\xff\x13\x04tlsproxy: no TLS"
    assert ErrPacket(1043, None, "x").encode_payload(protocol_41=True) == b"\xff\x13\x04x"
    assert parse_err(b"\xff\x13\x04tlsproxy: no TLS") == ErrPacket(1043, None, "tlsproxy: no TLS")


def test_err_sqlstate_is_exactly_five_bytes() -> None:
    assert ErrPacket(1, "HY", "m").encode_payload(protocol_41=True) == b"\xff\x01\x00#HY000m"
    assert ErrPacket(1, "HY0001", "m").encode_payload(protocol_41=True) == b"\xff\x01\x00#HY000m"


def test_parse_captured_err_greeting() -> None:
    frame = G.MARIADB_ERR_GREETING_FRAME
    assert frame[3] == 0
    err = parse_err(frame[4:])
    assert err.error_code == 1130
    assert err.sql_state is None
    assert err.error_message == "Host '127.0.0.1' is not allowed to connect to this MariaDB server"


def test_err_truncated() -> None:
    payload = b"\xff\x15\x04#28000Access denied"
    for cut in range(3):
        with pytest.raises(DecodeError):
            parse_err(payload[:cut])
    for cut in range(3, len(payload) + 1):
        assert parse_err(payload[:cut]).error_code == 1045
    with pytest.raises(DecodeError):
        parse_err(b"\x00\x00\x00")


# ---- COM_CHANGE_USER -----------------------------------------------------------------------------

CU_FLAGS = R.LIBMYSQLCLIENT_MYSQL80_DB.capability_flags
CHANGE_USER = (
    b"\x11" + b"bob\x00" + b"\x14" + bytes(range(1, 21)) + b"shop\x00" + b"\xff\x00"
    + b"mysql_native_password\x00" + b"\x05\x03_os\x01L"
)


def test_parse_change_user() -> None:
    change = parse_change_user(CHANGE_USER, CU_FLAGS)
    assert change.username == b"bob"
    assert change.auth_plugin_name == "mysql_native_password"


def test_parse_change_user_without_optional_tail() -> None:
    minimal = b"\x11bob\x00\x00\x00"
    assert parse_change_user(minimal, CU_FLAGS).auth_plugin_name == ""
    with_charset = minimal + b"\x21\x00"
    assert parse_change_user(with_charset, CU_FLAGS).auth_plugin_name == ""
    no_plugin_auth = parse_change_user(CHANGE_USER, CU_FLAGS & ~Capability.PLUGIN_AUTH)
    assert no_plugin_auth.auth_plugin_name == ""


def test_parse_change_user_nul_auth_form() -> None:
    payload = b"\x11bob\x00" + b"12345678\x00" + b"db\x00"
    change = parse_change_user(payload, Capability.PROTOCOL_41)
    assert change.username == b"bob"


def test_change_user_truncated_at_every_byte() -> None:
    db_end = CHANGE_USER.index(b"shop\x00") + 5
    plugin_start = db_end + 2
    plugin_end = CHANGE_USER.index(b"_password\x00") + 10
    for cut in range(len(CHANGE_USER)):
        if cut < db_end or plugin_start < cut < plugin_end:
            with pytest.raises(DecodeError):
                parse_change_user(CHANGE_USER[:cut], CU_FLAGS)
        else:
            parse_change_user(CHANGE_USER[:cut], CU_FLAGS)


# ---- change_user_from_response (a HandshakeResponse as COM_CHANGE_USER) ----------------------------


def test_change_user_carries_the_responses_fields_in_its_own_layout() -> None:
    flags = int(Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION | Capability.PLUGIN_AUTH
                | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA | Capability.CONNECT_WITH_DB | Capability.CONNECT_ATTRS)
    payload = build_response(capability_flags=flags, username=b"bob", auth_response=b"\x01\x02\x03",
                             database=b"shop", auth_plugin_name="mysql_native_password",
                             attributes={b"_os": b"Linux"}, character_set=45)
    change = change_user_from_response(payload, parse_handshake_response(payload))
    assert change == (b"\x11" + b"bob\x00" + b"\x03\x01\x02\x03" + b"shop\x00" + b"\x2d\x00"
                      + b"mysql_native_password\x00" + b"\x0a\x03_os\x05Linux")


def test_change_user_without_database_plugin_or_attributes() -> None:
    flags = int(Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION)
    payload = build_response(capability_flags=flags, username=b"bob", auth_response=b"\xaa" * 20, character_set=8)
    change = change_user_from_response(payload, parse_handshake_response(payload))
    assert change == b"\x11bob\x00\x14" + b"\xaa" * 20 + b"\x00\x08\x00"


def test_change_user_cannot_carry_more_than_255_bytes_of_auth_data() -> None:
    flags = int(Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA)
    payload = build_response(capability_flags=flags, username=b"bob", auth_response=bytes(256))
    with pytest.raises(ValueError, match="255"):
        change_user_from_response(payload, parse_handshake_response(payload))


@RESPONSES
def test_change_user_from_every_captured_response_parses_back(fx: ResponseFixture) -> None:
    response = parse_handshake_response(fx.payload)
    change = change_user_from_response(fx.payload, response)
    parsed = parse_change_user(change, response.capability_flags)
    assert (parsed.username, parsed.auth_plugin_name) == (fx.username, fx.auth_plugin_name)
    if response.capability_flags & Capability.CONNECT_ATTRS:
        assert fx.payload.endswith(change[-20:])  # the attributes, copied byte for byte
