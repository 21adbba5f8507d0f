"""A minimal asyncio MySQL client for the load generators (bench/memory.py, bench/soak.py): plain
streams, the mysql_native_password login written out here (scramble = SHA1(pw) XOR SHA1(nonce +
SHA1(SHA1(pw)))), and COM_QUERY with the text protocol's result set (PROTOCOL.md §1; no
CLIENT_DEPRECATE_EOF, so column definitions and rows each end in an EOF packet). Thousands of these
fit in one event loop, where thousands of client-library threads would not fit on two cores.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from bench.env import BENCH_PASSWORD, BENCH_USER
from tlsproxy.mysql.codec import DecodeError, Reader, encode_frame, parse_header
from tlsproxy.mysql.constants import MAX_PACKET_PAYLOAD, Capability
from tlsproxy.mysql.messages import parse_auth_switch, parse_err, parse_initial_handshake

NATIVE_PASSWORD = "mysql_native_password"
UTF8MB4_GENERAL_CI = 45
CLIENT_CAPABILITIES = (
    Capability.LONG_PASSWORD | Capability.LONG_FLAG | Capability.PROTOCOL_41 | Capability.TRANSACTIONS
    | Capability.SECURE_CONNECTION | Capability.MULTI_RESULTS | Capability.PLUGIN_AUTH
)
COM_QUIT = b"\x01"
COM_QUERY = b"\x03"


class LoginError(RuntimeError):
    pass


class QueryError(RuntimeError):
    """The server answered a query with an ERR packet."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"ERR {code}: {message}")
        self.code = code


class ProtocolViolation(RuntimeError):
    """A reply that does not parse as what the text protocol allows at that point."""


def native_password_scramble(password: str, nonce: bytes) -> bytes:
    """mysql_native_password: SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw)))."""
    if not password:
        return b""
    stage1 = hashlib.sha1(password.encode()).digest()
    stage2 = hashlib.sha1(stage1).digest()
    mask = hashlib.sha1(nonce[:20] + stage2).digest()
    return bytes(a ^ b for a, b in zip(stage1, mask))


def handshake_response(user: str, password: str, nonce: bytes) -> bytes:
    """HandshakeResponse41 payload: 4.1 protocol, no database, no TLS, native password."""
    auth = native_password_scramble(password, nonce)
    return (int(CLIENT_CAPABILITIES).to_bytes(4, "little") + (1 << 24).to_bytes(4, "little")
            + bytes((UTF8MB4_GENERAL_CI,)) + bytes(23) + user.encode() + b"\x00"
            + bytes((len(auth),)) + auth + NATIVE_PASSWORD.encode() + b"\x00")


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    length, sequence_id = parse_header(await reader.readexactly(4))
    if length >= MAX_PACKET_PAYLOAD:
        raise ProtocolViolation("a reply of 16 MiB or more (continuation frames are not spoken here)")
    return sequence_id, await reader.readexactly(length)


async def login(host: str, port: int, user: str = BENCH_USER,
                password: str = BENCH_PASSWORD) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """One connection, logged in (OK received); raises LoginError otherwise."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        sequence_id, payload = await read_packet(reader)
        if payload[:1] == b"\xff":
            raise LoginError(f"refused before login: {parse_err(payload).error_message}")
        greeting = parse_initial_handshake(payload)
        writer.write(encode_frame(sequence_id + 1, handshake_response(user, password, greeting.nonce)))
        for _ in range(3):
            sequence_id, payload = await read_packet(reader)
            if payload[:1] == b"\x00":
                return reader, writer
            if payload[:1] == b"\xff":
                raise LoginError(f"login failed: {parse_err(payload).error_message}")
            if payload[:1] == b"\xfe":  # AuthSwitchRequest
                switch = parse_auth_switch(payload)
                if switch.plugin_name != NATIVE_PASSWORD:
                    raise LoginError(f"server asked for {switch.plugin_name}; only {NATIVE_PASSWORD} is spoken here")
                writer.write(encode_frame(sequence_id + 1, native_password_scramble(password, switch.nonce)))
                continue
            raise LoginError(f"unexpected packet 0x{payload[0]:02x} during login")
        raise LoginError("login did not finish")
    except BaseException:
        writer.close()
        raise


@dataclass(frozen=True, slots=True)
class Ok:
    affected_rows: int
    last_insert_id: int


Row = list[bytes | None]


def _is_eof(payload: bytes) -> bool:
    return payload[:1] == b"\xfe" and len(payload) < 9


def _raise_err(payload: bytes) -> None:
    if payload[:1] == b"\xff":
        err = parse_err(payload)
        raise QueryError(err.error_code, err.error_message)


def _parse_ok(payload: bytes) -> Ok:
    try:
        reader = Reader(payload, 1)
        return Ok(reader.lenenc_int("affected_rows"), reader.lenenc_int("last_insert_id"))
    except DecodeError as error:
        raise ProtocolViolation(f"bad OK packet: {error}") from None


def _parse_row(payload: bytes, columns: int) -> Row:
    reader = Reader(payload)
    row: Row = []
    try:
        for index in range(columns):
            if payload[reader.position : reader.position + 1] == b"\xfb":
                reader.fixed(1, "NULL")
                row.append(None)
            else:
                row.append(reader.lenenc_bytes(f"column {index}"))
    except DecodeError as error:
        raise ProtocolViolation(f"bad row: {error}") from None
    if not reader.at_end():
        raise ProtocolViolation(f"row has {reader.remaining} bytes after its {columns} columns")
    return row


class Connection:
    """One logged-in connection; one query at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int, user: str = BENCH_USER, password: str = BENCH_PASSWORD) -> "Connection":
        return cls(*await login(host, port, user, password))

    async def _next(self, expected_sequence: int) -> bytes:
        sequence_id, payload = await read_packet(self.reader)
        if sequence_id != expected_sequence & 0xFF:
            raise ProtocolViolation(f"sequence id {sequence_id}, expected {expected_sequence & 0xFF}")
        if not payload:
            raise ProtocolViolation("empty packet")
        return payload

    async def query(self, sql: str | bytes) -> Ok | list[Row]:
        """OK for a statement, the rows for a result set; QueryError for an ERR packet."""
        self.writer.write(encode_frame(0, COM_QUERY + (sql.encode() if isinstance(sql, str) else sql)))
        sequence = 1
        payload = await self._next(sequence)
        _raise_err(payload)
        if payload[:1] == b"\x00":
            return _parse_ok(payload)
        try:
            columns = Reader(payload).lenenc_int("column count")
        except DecodeError as error:
            raise ProtocolViolation(str(error)) from None
        if columns == 0 or payload[:1] == b"\xfb":
            raise ProtocolViolation(f"unexpected first reply byte 0x{payload[0]:02x}")
        for _ in range(columns):  # column definitions: not needed, only counted
            sequence += 1
            _raise_err(await self._next(sequence))
        sequence += 1
        if not _is_eof(await self._next(sequence)):
            raise ProtocolViolation("no EOF after the column definitions")
        rows: list[Row] = []
        while True:
            sequence += 1
            payload = await self._next(sequence)
            _raise_err(payload)
            if _is_eof(payload):
                return rows
            rows.append(_parse_row(payload, columns))

    async def close(self, timeout: float = 5.0) -> None:
        """COM_QUIT and close; never raises for a peer already gone."""
        try:
            self.writer.write(encode_frame(0, COM_QUIT))
        except (ConnectionError, RuntimeError):
            pass
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), timeout)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass
