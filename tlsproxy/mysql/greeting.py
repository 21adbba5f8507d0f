"""The upstream's first words: its greeting judged, and the SSLRequest that answers it (PROTOCOL.md §2,
§3.2). Shared by the handshake machine and by the two places that open an upstream connection without a
client: the prewarm pool and `tlsproxy check` (`UpstreamGreeting`), so the greeting -> SSLRequest step
is written once."""

from __future__ import annotations

from tlsproxy.errors import ServerProtocolError, UpstreamRefusedError, UpstreamTlsUnsupportedError
from tlsproxy.mysql.codec import DecodeError, Frame, FrameBuffer, encode_frame
from tlsproxy.mysql.constants import (
    CLIENT_CONNECT_WITH_DB,
    CLIENT_PROTOCOL_41,
    CLIENT_SSL,
    MASKED_CAPABILITIES,
    PacketHeader,
)
from tlsproxy.mysql.messages import (
    InitialHandshake,
    parse_err,
    parse_initial_handshake,
    patch_client_capabilities,
    ssl_request_from_response,
)

MAX_GREETING_SIZE = 1 << 16
"""A greeting is about 100 bytes; anything near this is not one."""


def check_upstream_greeting(frame: Frame, *, require_tls: bool, parsed: InitialHandshake | None = None,
                            ) -> InitialHandshake:
    """The upstream's greeting, parsed and judged: seq 0, the 4.1 protocol, and TLS offered when the
    route needs it (no silent fallback to plaintext). `parsed`: the frame's payload parsed already (a
    parked connection's greeting, parsed when the connection was opened): judged again, not parsed again."""
    if frame.sequence_id != 0:
        raise ServerProtocolError(f"upstream greeting has sequence id {frame.sequence_id}, expected 0")
    greeting = parse_initial_handshake(frame.payload) if parsed is None else parsed
    if not greeting.capability_flags & CLIENT_PROTOCOL_41:
        raise ServerProtocolError("upstream speaks a pre-4.1 protocol, which tlsproxy does not support")
    if require_tls and not greeting.capability_flags & CLIENT_SSL:
        raise UpstreamTlsUnsupportedError("upstream does not offer TLS; refusing to send credentials in plaintext")
    return greeting


def is_err_greeting(frame: Frame) -> bool:
    """Too many connections, host blocked...: the server refuses with an ERR in place of a greeting."""
    return frame.payload[:1] == bytes((PacketHeader.ERR,))


def ssl_request_for(response_payload: bytes) -> bytes:
    """The SSLRequest payload for a client whose HandshakeResponse (or its 32-byte prefix) this is: the
    prefix with CLIENT_SSL set and the capabilities the proxy masks cleared (PROTOCOL.md §3.2, §4.2)."""
    return ssl_request_from_response(response_payload, MASKED_CAPABILITIES)


def pool_key(ssl_request: bytes) -> bytes:
    """What must be equal between the SSLRequest a pooled upstream connection was opened with and a new
    client's, for the client to log in on it (PROTOCOL.md §6.3): all of it but CLIENT_CONNECT_WITH_DB,
    which only says whether the HandshakeResponse names a database (COM_CHANGE_USER always carries one)."""
    return patch_client_capabilities(ssl_request, clear_bits=CLIENT_CONNECT_WITH_DB)


def ssl_request_frame(ssl_request: bytes) -> bytes:
    """The SSLRequest on the wire: it answers the greeting, so its sequence id is 1."""
    return encode_frame(1, ssl_request)


class UpstreamGreeting:
    """Reads an upstream connection's greeting from its first bytes (sans-IO: bytes in, the greeting out).

    After the greeting the server waits for the client, so any byte more is refused: between the
    SSLRequest and the TLS handshake nothing may be buffered."""

    def __init__(self, *, require_tls: bool) -> None:
        self._require_tls = require_tls
        self._frames = FrameBuffer(MAX_GREETING_SIZE)
        self.greeting: InitialHandshake | None = None
        self.payload = b""
        """The greeting's payload as the server sent it."""

    def receive_data(self, data: bytes) -> InitialHandshake | None:
        """The greeting once it is whole (None until then); raises a `TlsProxyError` for anything else."""
        if self.greeting is not None:
            raise ServerProtocolError("upstream sent data after its greeting, before the client's answer")
        try:
            self._frames.feed(data)
            frame = self._frames.next_frame()
        except DecodeError as exc:
            raise ServerProtocolError(f"malformed packet from upstream: {exc}") from None
        if frame is None:
            return None
        if is_err_greeting(frame):
            try:
                err = parse_err(frame.payload)
            except DecodeError:
                raise ServerProtocolError("upstream refused the connection with a malformed ERR") from None
            raise UpstreamRefusedError(f"upstream refused the connection: ERROR {err.error_code}: {err.error_message}")
        if len(self._frames):
            raise ServerProtocolError("upstream sent more than its greeting")
        self.greeting = check_upstream_greeting(frame, require_tls=self._require_tls)
        self.payload = frame.payload
        return self.greeting
