"""A minimal MySQL client on a bare socket, for what real client libraries will not do: send a command
before the server has answered the login, or after it refused it.

Only the plaintext client leg (the proxy's side) and mysql_native_password are spoken: the greeting is
read, a HandshakeResponse41 is sent, an AuthSwitchRequest is answered. Every frame is sent and read
whole, with its sequence id chosen by the caller, so a test can pipeline whatever it likes.
"""

from __future__ import annotations

import socket
import struct

from bench.myclient import native_password_scramble as native_scramble
from tlsproxy.mysql.codec import encode_frame as frame  # noqa: F401 - the tests' frame builder
from tlsproxy.mysql.constants import Capability
from tlsproxy.mysql.messages import parse_initial_handshake

C = Capability
DEFAULT_FLAGS = int(C.LONG_PASSWORD | C.LONG_FLAG | C.PROTOCOL_41 | C.TRANSACTIONS | C.SECURE_CONNECTION
                    | C.MULTI_RESULTS | C.PLUGIN_AUTH | C.CONNECT_ATTRS | C.PLUGIN_AUTH_LENENC_CLIENT_DATA)
"""PyMySQL 2.2's flags (0x003aa205): with its charset and max packet size, a raw client fits the connections
PyMySQL leaves parked."""
UTF8MB4_GENERAL_CI = 45
MAX_PACKET = (1 << 24) - 1  # PyMySQL's
NATIVE = "mysql_native_password"


def com_query(sql: str) -> bytes:
    return frame(0, b"\x03" + sql.encode())


class RawClient:
    """One connection to `port`; the greeting is read on connect."""

    def __init__(self, port: int, *, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.greeting = parse_initial_handshake(self.read_frame()[1])

    def read_frame(self) -> tuple[int, bytes]:
        """(sequence id, payload); raises ConnectionError at EOF."""
        header = self._read(4)
        return header[3], self._read(int.from_bytes(header[:3], "little"))

    def _read(self, count: int) -> bytes:
        data = bytearray()
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError(f"EOF after {len(data)} of {count} bytes")
            data += chunk
        return bytes(data)

    def closed_by_peer(self) -> bool:
        """Whether the other side has closed (EOF or reset) without sending anything more."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def handshake_response(self, user: str, password: str, *, flags: int = DEFAULT_FLAGS,
                           database: str | None = None, plugin: str = NATIVE) -> bytes:
        """A HandshakeResponse41 answering the greeting's nonce (payload only; it goes at seq 1)."""
        if database is not None:
            flags |= C.CONNECT_WITH_DB
        auth = native_scramble(password, self.greeting.nonce)  # < 251 bytes: the lenenc form is the same byte
        payload = (struct.pack("<IIB", flags, MAX_PACKET, UTF8MB4_GENERAL_CI) + bytes(23)
                   + user.encode() + b"\0" + bytes((len(auth),)) + auth)
        if database is not None:
            payload += database.encode() + b"\0"
        if flags & C.PLUGIN_AUTH:
            payload += plugin.encode() + b"\0"
        if flags & C.CONNECT_ATTRS:
            payload += b"\0"  # no attributes
        return payload

    def auth_switch_answer(self, switch: bytes, password: str) -> bytes:
        """The answer to an AuthSwitchRequest (0xFE, plugin name, nonce) for mysql_native_password."""
        assert switch[:1] == b"\xfe", switch
        end = switch.index(b"\0", 1)
        assert switch[1:end].decode() == NATIVE, switch
        return native_scramble(password, switch[end + 1:].rstrip(b"\0"))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
