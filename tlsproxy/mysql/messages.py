"""The connection-phase messages the proxy reads or writes (PROTOCOL.md §2, §3, §4.4, §6, §8).

Parsers return frozen dataclasses and raise `DecodeError` on malformed input. Messages the proxy
forwards are edited in place (`patch_*`), never re-encoded, so bytes it does not understand (MariaDB's
extended capabilities, reserved fields, attributes) pass unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from tlsproxy.mysql.codec import DecodeError, Reader, encode_lenenc_int
from tlsproxy.mysql.constants import (
    CLIENT_CONNECT_ATTRS,
    CLIENT_CONNECT_WITH_DB,
    CLIENT_LONG_PASSWORD,
    CLIENT_PLUGIN_AUTH,
    CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION,
    CLIENT_SSL,
    SSL_REQUEST_SIZE,
    Command,
    PacketHeader,
)

PROTOCOL_VERSION_10 = 0x0A


@dataclass(frozen=True, slots=True)
class InitialHandshake:
    """Protocol::HandshakeV10. `capability_offsets` are where the two capability words sit in the payload."""

    server_version: str
    connection_id: int
    capability_flags: int
    character_set: int
    status_flags: int
    auth_plugin_data: bytes
    auth_plugin_name: str
    mariadb_extended_capabilities: int
    capability_low_offset: int
    capability_high_offset: int | None

    @property
    def nonce(self) -> bytes:
        """The bytes clients hash or sign: auth data without its trailing NUL."""
        data = self.auth_plugin_data
        return data[:-1] if data.endswith(b"\x00") else data

    @property
    def is_mariadb(self) -> bool:
        return "MariaDB" in self.server_version or "-maria-" in self.server_version


def parse_initial_handshake(payload: bytes) -> InitialHandshake:
    reader = Reader(payload)
    protocol_version = reader.int_le(1, "protocol_version")
    if protocol_version != PROTOCOL_VERSION_10:
        raise DecodeError(f"unsupported protocol version {protocol_version}")
    server_version = reader.null_terminated("server_version").decode("utf-8", "replace")
    connection_id = reader.int_le(4, "connection_id")
    part1 = reader.fixed(8, "auth_plugin_data_part_1")
    reader.fixed(1, "filler")
    capability_low_offset = reader.position
    capabilities = reader.int_le(2, "capability_flags")
    if reader.at_end():
        # Pre-4.1 servers stop here; the proxy refuses them later for lacking CLIENT_SSL/PROTOCOL_41.
        return InitialHandshake(server_version, connection_id, capabilities, 0, 0, part1, "", 0,
                                capability_low_offset, None)
    character_set = reader.int_le(1, "character_set")
    status_flags = reader.int_le(2, "status_flags")
    capability_high_offset = reader.position
    capabilities |= reader.int_le(2, "capability_flags_upper") << 16
    auth_data_length = reader.int_le(1, "auth_plugin_data_len")
    reserved = reader.fixed(10, "reserved")
    mariadb_extended = 0
    if not capabilities & CLIENT_LONG_PASSWORD:
        mariadb_extended = int.from_bytes(reserved[6:10], "little")
    auth_data = part1
    if capabilities & CLIENT_SECURE_CONNECTION:
        part2_length = max(13, auth_data_length - 8)
        auth_data += reader.fixed(part2_length, "auth_plugin_data_part_2")
    plugin_name = ""
    if capabilities & CLIENT_PLUGIN_AUTH and not reader.at_end():
        # Some servers omit the final NUL of the plugin name.
        rest = reader.rest()
        plugin_name = rest.split(b"\x00", 1)[0].decode("ascii", "replace")
    return InitialHandshake(server_version, connection_id, capabilities, character_set, status_flags,
                            auth_data, plugin_name, mariadb_extended, capability_low_offset,
                            capability_high_offset)


def patch_greeting_capabilities(payload: bytes, greeting: InitialHandshake, clear: int) -> bytes:
    """The greeting with the bits in `clear` removed from both capability words; all else byte-identical."""
    patched = bytearray(payload)
    low = greeting.capability_low_offset
    value = int.from_bytes(patched[low : low + 2], "little") & ~clear & 0xFFFF
    patched[low : low + 2] = value.to_bytes(2, "little")
    high = greeting.capability_high_offset
    if high is not None:
        value = int.from_bytes(patched[high : high + 2], "little") & ~(clear >> 16) & 0xFFFF
        patched[high : high + 2] = value.to_bytes(2, "little")
    return bytes(patched)


@dataclass(frozen=True, slots=True)
class HandshakeResponse:
    """HandshakeResponse41 (or an SSLRequest, which is its 32-byte prefix: `is_ssl_request`).

    `auth_response_span` is (start, end) of the auth response bytes inside the payload and
    `auth_length_span` the span of its length prefix, so the proxy can swap the auth response
    without re-encoding anything else.
    """

    capability_flags: int
    max_packet_size: int
    character_set: int
    mariadb_extended_capabilities: int
    username: bytes
    auth_response: bytes
    database: bytes | None
    auth_plugin_name: str
    auth_length_span: tuple[int, int]
    auth_response_span: tuple[int, int]
    is_ssl_request: bool
    attributes_start: int = -1
    """Where the connection attributes (CLIENT_CONNECT_ATTRS) start in the payload: after the plugin name."""

    @property
    def protocol_41(self) -> bool:
        return bool(self.capability_flags & CLIENT_PROTOCOL_41)


def parse_handshake_response(payload: bytes) -> HandshakeResponse:
    reader = Reader(payload)
    if len(payload) < 4:
        raise DecodeError("truncated client_flag")
    flags = int.from_bytes(payload[0:2], "little")
    if not flags & CLIENT_PROTOCOL_41:
        # HandshakeResponse320 / 5-byte SSLRequest: the proxy refuses these (no 4.1 auth).
        return HandshakeResponse(flags, 0, 0, 0, b"", b"", None, "", (0, 0), (0, 0),
                                 bool(flags & CLIENT_SSL) and len(payload) <= 5)
    capability_flags = reader.int_le(4, "client_flag")
    max_packet_size = reader.int_le(4, "max_packet_size")
    character_set = reader.int_le(1, "character_set")
    reader.fixed(19, "filler")
    extended = reader.int_le(4, "mariadb_extended_capabilities")
    if reader.at_end():
        return HandshakeResponse(capability_flags, max_packet_size, character_set, extended, b"", b"",
                                 None, "", (0, 0), (0, 0), bool(capability_flags & CLIENT_SSL))
    username = reader.null_terminated("username")
    length_start = reader.position
    if capability_flags & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth_length = reader.lenenc_int("auth_response_length")
        length_span = (length_start, reader.position)
        auth_response = reader.fixed(auth_length, "auth_response")
    elif capability_flags & CLIENT_SECURE_CONNECTION:
        auth_length = reader.int_le(1, "auth_response_length")
        length_span = (length_start, reader.position)
        auth_response = reader.fixed(auth_length, "auth_response")
    else:
        length_span = (length_start, length_start)
        auth_response = reader.null_terminated("auth_response")
    auth_span = (length_span[1], length_span[1] + len(auth_response))
    database = None
    if capability_flags & CLIENT_CONNECT_WITH_DB and not reader.at_end():
        database = reader.null_terminated("database")
    plugin_name = ""
    if capability_flags & CLIENT_PLUGIN_AUTH and not reader.at_end():
        plugin_name = reader.null_terminated("client_plugin_name").decode("ascii", "replace")
    return HandshakeResponse(capability_flags, max_packet_size, character_set, extended, username,
                             auth_response, database, plugin_name, length_span, auth_span, False, reader.position)


def change_user_from_response(payload: bytes, response: HandshakeResponse) -> bytes:
    """The COM_CHANGE_USER that asks, on an already authenticated connection, for what a client's
    HandshakeResponse asked for at connect: user, auth data, database, collation, auth plugin, connection
    attributes (PROTOCOL.md §6, `parse_com_change_user_packet`). The auth data keeps the response's form,
    but its length is one byte here (SECURE_CONNECTION), so more than 255 bytes cannot be carried; the
    database is always present; the collation takes two bytes."""
    flags = response.capability_flags
    auth = response.auth_response
    if flags & (CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA):
        if len(auth) > 255:
            raise ValueError("auth data longer than 255 bytes does not fit COM_CHANGE_USER")
        auth_field = bytes((len(auth),)) + auth
    else:
        auth_field = auth + b"\x00"
    out = (bytes((Command.CHANGE_USER,)) + response.username + b"\x00" + auth_field + (response.database or b"")
           + b"\x00" + response.character_set.to_bytes(2, "little"))
    if flags & CLIENT_PLUGIN_AUTH:
        out += response.auth_plugin_name.encode("ascii") + b"\x00"
    if flags & CLIENT_CONNECT_ATTRS and response.attributes_start >= 0:
        out += payload[response.attributes_start:]
    return out


def patch_client_capabilities(payload: bytes, *, set_bits: int = 0, clear_bits: int = 0) -> bytes:
    """The client's HandshakeResponse (or its 32-byte prefix) with capability bits changed in place."""
    flags = (int.from_bytes(payload[0:4], "little") & ~clear_bits | set_bits) & 0xFFFFFFFF
    return flags.to_bytes(4, "little") + payload[4:]


def ssl_request_from_response(response_payload: bytes, clear_bits: int) -> bytes:
    """SSLRequest = the client's own 32-byte prefix with CLIENT_SSL set (PROTOCOL.md §3.2, §4.1 step 4)."""
    return patch_client_capabilities(response_payload[:SSL_REQUEST_SIZE], set_bits=CLIENT_SSL,
                                     clear_bits=clear_bits)


def replace_auth_response(payload: bytes, response: HandshakeResponse, auth_response: bytes) -> bytes:
    """The HandshakeResponse with its auth response swapped, the length prefix re-encoded per its flags."""
    flags = response.capability_flags
    if flags & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        length = encode_lenenc_int(len(auth_response))
    elif flags & CLIENT_SECURE_CONNECTION:
        if len(auth_response) > 255:
            raise ValueError("auth response too long for a 1-byte length")
        length = bytes((len(auth_response),))
    else:
        length = b""
        auth_response = auth_response.rstrip(b"\x00")
    start, _ = response.auth_length_span
    _, end = response.auth_response_span
    if not flags & (CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | CLIENT_SECURE_CONNECTION):
        end += 1  # the old form's NUL terminator is re-added below
        auth_response += b"\x00"
    return payload[:start] + length + auth_response + payload[end:]


@dataclass(frozen=True, slots=True)
class AuthSwitchRequest:
    plugin_name: str
    auth_plugin_data: bytes

    @property
    def nonce(self) -> bytes:
        data = self.auth_plugin_data
        return data[:-1] if data.endswith(b"\x00") else data

    def encode_payload(self) -> bytes:
        return bytes((PacketHeader.AUTH_SWITCH,)) + self.plugin_name.encode("ascii") + b"\x00" + self.auth_plugin_data


def parse_auth_switch(payload: bytes) -> AuthSwitchRequest:
    """0xFE plugin<NUL> data<EOF>; a 1-byte 0xFE is the old switch to mysql_old_password."""
    if payload[:1] != b"\xfe":
        raise DecodeError("not an AuthSwitchRequest")
    if len(payload) == 1:
        return AuthSwitchRequest("mysql_old_password", b"")
    reader = Reader(payload, 1)
    plugin = reader.null_terminated("auth_plugin_name").decode("ascii", "replace")
    return AuthSwitchRequest(plugin, reader.rest())


@dataclass(frozen=True, slots=True)
class ErrPacket:
    error_code: int
    sql_state: str | None
    error_message: str

    def encode_payload(self, *, protocol_41: bool) -> bytes:
        body = b"\xff" + self.error_code.to_bytes(2, "little")
        if protocol_41 and self.sql_state:
            body += b"#" + self.sql_state.encode("ascii")[:5].ljust(5, b"0")
        return body + self.error_message.encode("utf-8")


def parse_err(payload: bytes) -> ErrPacket:
    reader = Reader(payload)
    if reader.int_le(1, "header") != PacketHeader.ERR:
        raise DecodeError("not an ERR packet")
    code = reader.int_le(2, "error_code")
    sql_state = None
    if payload[3:4] == b"#" and len(payload) >= 9:
        reader.fixed(1, "sql_state_marker")
        sql_state = reader.fixed(5, "sql_state").decode("ascii", "replace")
    return ErrPacket(code, sql_state, reader.rest().decode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class ChangeUser:
    username: bytes
    auth_plugin_name: str


def parse_change_user(payload: bytes, capability_flags: int) -> ChangeUser:
    """COM_CHANGE_USER (PROTOCOL.md §6). Only the fields up to the plugin name are read."""
    reader = Reader(payload)
    reader.fixed(1, "command")
    username = reader.null_terminated("username")
    if capability_flags & CLIENT_SECURE_CONNECTION:
        reader.fixed(reader.int_le(1, "auth_response_length"), "auth_response")
    else:
        reader.null_terminated("auth_response")
    reader.null_terminated("database")
    plugin_name = ""
    if reader.remaining >= 2:
        reader.fixed(2, "character_set")
        if capability_flags & CLIENT_PLUGIN_AUTH and not reader.at_end():
            plugin_name = reader.null_terminated("auth_plugin_name").decode("ascii", "replace")
    return ChangeUser(username, plugin_name)
