"""Reading a server's side of a MySQL TLS upgrade as recorded on the wire: did the server resume?

The recording starts with the server's plaintext greeting (one MySQL packet); then come TLS records
(RFC 5246 §6.2, RFC 8446 §5.1). The server's first flight is plaintext up to its ChangeCipherSpec
(TLS 1.2) or up to and including its ServerHello (TLS 1.3):
- TLS 1.2: a full handshake sends the server's Certificate (handshake type 11); a resumed one does not.
- TLS 1.3: a resumed handshake's ServerHello carries the pre_shared_key extension (41), which says
  the server accepted the client's ticket (RFC 8446 §4.2.11).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HANDSHAKE, CHANGE_CIPHER_SPEC, APPLICATION_DATA = 22, 20, 23
SERVER_HELLO, CERTIFICATE = 2, 11
EXT_PRE_SHARED_KEY, EXT_SUPPORTED_VERSIONS = 41, 43


@dataclass(frozen=True)
class ServerFlight:
    version: str
    resumed: bool
    handshake_types: tuple[int, ...]


def server_flight(recorded: bytes) -> ServerFlight:
    """Parse one connection's server-to-client bytes (greeting, then TLS)."""
    greeting_length = int.from_bytes(recorded[:3], "little")
    offset = 4 + greeting_length
    handshake = bytearray()
    while offset + 5 <= len(recorded):
        content_type, _, length = struct.unpack_from("!BHH", recorded, offset)
        body = recorded[offset + 5: offset + 5 + length]
        offset += 5 + length
        if content_type != HANDSHAKE:
            break
        handshake += body
    types, extensions, position = [], set(), 0
    while position + 4 <= len(handshake):
        kind, length = handshake[position], int.from_bytes(handshake[position + 1: position + 4], "big")
        body = bytes(handshake[position + 4: position + 4 + length])
        position += 4 + length
        types.append(kind)
        if kind == SERVER_HELLO:
            extensions = _extensions(body)
    if SERVER_HELLO not in types:
        raise ValueError("no ServerHello in the recording")
    tls13 = EXT_SUPPORTED_VERSIONS in extensions and extensions[EXT_SUPPORTED_VERSIONS] == b"\x03\x04"
    if tls13:
        resumed = EXT_PRE_SHARED_KEY in extensions
    else:
        resumed = CERTIFICATE not in types
    return ServerFlight("TLSv1.3" if tls13 else "TLSv1.2", resumed, tuple(types))


def _extensions(server_hello: bytes) -> dict[int, bytes]:
    position = 2 + 32  # legacy_version, random
    position += 1 + server_hello[position]  # session id
    position += 2 + 1  # cipher suite, compression method
    if position + 2 > len(server_hello):
        return {}
    end = position + 2 + int.from_bytes(server_hello[position: position + 2], "big")
    position += 2
    found = {}
    while position + 4 <= end:
        kind, length = struct.unpack_from("!HH", server_hello, position)
        found[kind] = server_hello[position + 4: position + 4 + length]
        position += 4 + length
    return found
