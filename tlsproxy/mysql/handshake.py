"""The connection phase as a pure state machine: bytes in, effects out, no I/O (PROTOCOL.md §4-§6).

The driver feeds what each peer sends (`receive_server_data`, `receive_client_data`), reports that the
upstream TLS handshake finished (`tls_established`), and carries out the returned effects in order.
Errors are raised as `TlsProxyError` subclasses; `error_packet` then gives the ERR the client expects.

Transitions (every one of them lives in this file):

    GREETING ──server greeting──▶ CLIENT_RESPONSE ──client response──▶ TLS_PENDING ──tls_established──▶ AUTH
                                                    └─(upstream_tls off)───────────────────────────────▶ AUTH
    AUTH ──server OK──▶ RELAY ──client COM_CHANGE_USER──▶ CHANGE_USER ──server OK/ERR──▶ RELAY
    AUTH ──server ERR──▶ CLOSED;  any error ──▶ CLOSED

In AUTH and CHANGE_USER the machine relays packets with two sequence counters (one per leg), and plays
the server's side of the caching_sha2_password / sha256_password RSA exchange with the proxy's own key,
sending the password upstream inside TLS as a server on a secure link expects (PROTOCOL.md §5.3, §5.4).
In RELAY it forwards client bytes as they come, following frame headers only to spot COM_CHANGE_USER;
server bytes do not pass through the machine at all unless `inspecting_server_data` is true.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Callable, Protocol, Union

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
from tlsproxy.mysql.codec import DecodeError, Frame, FrameBuffer, FrameSkipper, encode_frame
from tlsproxy.mysql.constants import (
    CACHING_SHA2_PERFORM_FULL_AUTH,
    CACHING_SHA2_REQUEST_PUBLIC_KEY,
    HEADER_SIZE,
    MASKED_CAPABILITIES,
    MAX_PACKET_PAYLOAD,
    NONCE_SIZE,
    SHA256_REQUEST_PUBLIC_KEY,
    SSL_REQUEST_SIZE,
    AuthPlugin,
    Capability,
    Command,
    PacketHeader,
)
from tlsproxy.outcome import Outcome
from tlsproxy.mysql.messages import (
    AuthSwitchRequest,
    ErrPacket,
    HandshakeResponse,
    InitialHandshake,
    parse_auth_switch,
    parse_change_user,
    parse_handshake_response,
    parse_initial_handshake,
    patch_client_capabilities,
    patch_greeting_capabilities,
    replace_auth_response,
    ssl_request_from_response,
)

DEFAULT_MAX_HANDSHAKE_PACKET = 1 << 20
"""No connection-phase packet is near this size; a larger one is refused rather than buffered."""

DEFAULT_MAX_AUTH_PACKETS = 64
"""Packets (both directions) one authentication exchange may take after the HandshakeResponse. Real ones
take at most a handful (caching_sha2 full auth with an AuthSwitch: 6); a peer looping AuthSwitch or
auth-more-data forever is cut off instead of holding the connection until the handshake timeout."""

CLIENT_DATA_BEFORE_ANSWER = "client sent data before the server answered its handshake response"


# ---- effects -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendToClient:
    data: bytes


@dataclass(frozen=True, slots=True)
class SendToServer:
    data: bytes


@dataclass(frozen=True, slots=True)
class StartUpstreamTls:
    """Upgrade the upstream socket now. No server byte is buffered (checked), and none may be read
    from the plaintext socket before the TLS handshake takes it over."""


@dataclass(frozen=True, slots=True)
class StartRelay:
    """Authentication succeeded; from now on bytes flow opaquely (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class ReplaceUpstream:
    """The prewarmed upstream connection does not fit this client (its SSLRequest differed): close it and
    connect a fresh one; the machine then expects that connection's greeting."""

    reason: str


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close both legs once what was sent is flushed; `outcome` is what the logs and metrics record."""

    outcome: Outcome
    reason: str


Effect = Union[SendToClient, SendToServer, StartUpstreamTls, StartRelay, ReplaceUpstream, CloseConnection]


class AuthKey(Protocol):
    """The proxy's RSA key for the password exchange (implemented by tlsproxy.certs.AuthRsaKey)."""

    public_pem: bytes
    modulus_bytes: int

    def decrypt(self, ciphertext: bytes) -> bytes | None: ...

    def decrypt_pkcs1v15(self, ciphertext: bytes) -> bytes | None: ...


class State(enum.Enum):
    GREETING = "greeting"
    CLIENT_RESPONSE = "client_response"
    TLS_PENDING = "tls_pending"
    AUTH = "auth"
    REPLACING = "replacing_upstream"  # a prewarmed upstream did not fit: waiting for a fresh one's greeting
    REAUTH = "reauth"  # the client answers the AuthSwitchRequest that carries the fresh nonce
    RELAY = "relay"
    CHANGE_USER = "change_user"
    CLOSED = "closed"


class _Await(enum.Enum):
    """What the RSA emulation expects next from the client, if anything."""

    NOTHING = enum.auto()
    FULL_AUTH_REPLY = enum.auto()  # after caching_sha2 0x04: key request, ciphertext or cleartext
    SHA256_FIRST = enum.auto()  # after a switch to sha256_password: key request, ciphertext or cleartext
    CIPHERTEXT = enum.auto()  # after the proxy sent its public key
    INITIAL_CIPHERTEXT = enum.auto()  # sha256 key request inside the HandshakeResponse (§5.4)


_OLD_RSA_PADDING_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


def _never_claim(length: int, sequence_id: int, first_byte: int) -> bool:
    return False


class HandshakeMachine:
    def __init__(
        self,
        *,
        upstream_tls: bool = True,
        auth_key: AuthKey | None = None,
        max_handshake_packet: int = DEFAULT_MAX_HANDSHAKE_PACKET,
        max_auth_packets: int = DEFAULT_MAX_AUTH_PACKETS,
    ) -> None:
        self.upstream_tls = upstream_tls
        self._auth_key = auth_key
        self._intercept_rsa = upstream_tls and auth_key is not None
        self._max_packet = max_handshake_packet
        self._max_auth_packets = max_auth_packets
        self._auth_packets = 0
        self.state = State.GREETING
        self._server_frames = FrameBuffer(max_handshake_packet)
        self._client_frames = FrameBuffer(max_handshake_packet)
        self._client_seq = 0
        self._server_seq = 0
        self._greeting_sent = False
        self.greeting: InitialHandshake | None = None
        self.client_response: HandshakeResponse | None = None
        self._client_response_payload = b""
        self.ssl_request = b""
        """The SSLRequest payload this client's upstream connection needs (learned by the prewarm pool)."""
        self._client_protocol_41: bool | None = None
        self._sent_in_call = 0
        self._nonce = b""
        self.auth_plugin = ""
        self.rsa_exchange_emulated = False
        self._await = _Await.NOTHING
        self._relay_skipper = FrameSkipper(self._is_change_user_start)
        self._relay_tail = b""
        self._change_user_pending_client = b""
        self._client_sent_quit = False
        self._client_frames_taken = False
        self._warm_ssl_request: bytes | None = None
        self._reauth = False
        self.prewarmed = False
        """The upstream was a prewarmed connection (greeting, SSLRequest and TLS done before the client came)."""
        self.prewarm_mismatch = False
        """... whose SSLRequest differed from this client's, so a fresh upstream replaced it."""

    # ---- public API ----------------------------------------------------------------------------

    @property
    def inspecting_server_data(self) -> bool:
        """False once the relay runs: then server bytes go to the client without the machine."""
        return self.state is not State.RELAY

    def receive_server_data(self, data: bytes) -> list[Effect]:
        if self.state is State.TLS_PENDING:
            self._fail()
            raise TlsInjectionError(
                "upstream sent non-TLS data after the SSLRequest (before the TLS handshake); refusing the connection",
            )
        if self.state is State.RELAY:
            return [SendToClient(data)] if data else []
        if self.state is State.CLOSED:
            return []
        return self._guarded(lambda: self._feed_server(data), ServerProtocolError, "upstream")

    def receive_client_data(self, data: bytes) -> list[Effect]:
        if self.state is State.RELAY:
            return self._relay_client_data(data)
        if self.state is State.CLOSED or not data:
            return []
        if self.state is State.TLS_PENDING:
            # The client waits for the server's answer to its response; it has nothing to send now.
            self._fail()
            raise ClientProtocolError(CLIENT_DATA_BEFORE_ANSWER)
        return self._guarded(lambda: self._feed_client(data), ClientProtocolError, "client")

    def adopt_prewarmed_upstream(self, greeting_payload: bytes, ssl_request: bytes) -> list[Effect]:
        """Start with an upstream connection that already sent `greeting_payload` (seq 0), received the
        SSLRequest `ssl_request` (seq 1) and finished TLS. Its greeting goes to the client; if the
        client's own SSLRequest prefix is the same, its HandshakeResponse follows on that connection,
        else the machine asks for a fresh upstream (`ReplaceUpstream`) and has the client answer that
        one's nonce through an AuthSwitchRequest (PROTOCOL.md §3.2: capabilities and charset come from
        the SSLRequest, so a prefix that differs cannot be used on the prewarmed connection)."""
        if self.state is not State.GREETING or not self.upstream_tls:
            raise RuntimeError(f"adopt_prewarmed_upstream in state {self.state}")
        self.prewarmed = True
        self._warm_ssl_request = ssl_request
        return self._guarded(lambda: self._on_greeting(Frame(0, greeting_payload)), ServerProtocolError, "upstream")

    def tls_established(self) -> list[Effect]:
        if self.state is not State.TLS_PENDING:
            raise RuntimeError(f"tls_established in state {self.state}")
        self.state = State.AUTH
        if self._reauth:
            self._reauth = False
            self.state = State.REAUTH
            return self._guarded(self._send_reauth_switch, ClientProtocolError, "client")
        return self._guarded(
            lambda: self._send_client_response_upstream() + self._drain_client_frames(), ClientProtocolError, "client",
        )

    def _guarded(self, step: Callable[[], list[Effect]], decode_error: type[TlsProxyError], side: str) -> list[Effect]:
        """Run one input step; on failure enter CLOSED as if its effects were never produced (the driver
        discards them), and turn codec errors into the protocol error of the side that sent the bytes."""
        self._sent_in_call, greeting_sent = 0, self._greeting_sent
        try:
            effects = step()
            self._sent_in_call = 0
            return effects
        except DecodeError as exc:
            self._fail(greeting_sent)
            raise decode_error(f"malformed packet from {side}: {exc}") from None
        except TlsProxyError:
            self._fail(greeting_sent)
            raise

    def _feed_server(self, data: bytes) -> list[Effect]:
        self._server_frames.feed(data)
        effects: list[Effect] = []
        while self.state in (State.GREETING, State.CLIENT_RESPONSE, State.AUTH, State.CHANGE_USER, State.REPLACING,
                             State.REAUTH):
            frame = self._server_frames.next_frame()
            if frame is None:
                break
            effects += self._on_server_frame(frame)
        if self.state is State.RELAY and len(self._server_frames):
            effects.append(SendToClient(self._server_frames.take_rest()))
        elif self.state is State.CLOSED:
            self._server_frames = FrameBuffer(self._max_packet)  # what follows a final ERR means nothing
        return effects

    def _feed_client(self, data: bytes) -> list[Effect]:
        if self.state is State.CHANGE_USER and self._server_seq == 1:
            # Upstream has not answered COM_CHANGE_USER yet, so nothing the client sends now belongs to
            # the exchange: hold it behind the command, as if it had come in the same read.
            self._hold_behind_change_user(data)
            return []
        self._client_frames.feed(data)
        return self._drain_client_frames()

    def receive_client_eof(self) -> list[Effect]:
        """The client half-closed its side in the relay. A TLS upstream cannot half-close, so when the
        client's last packet is complete the proxy sends COM_QUIT: the server finishes what it was
        answering, then closes, and the client still gets every byte of the answer."""
        if (
            self.state is State.RELAY
            and not self._client_sent_quit
            and not self._relay_tail
            and self._relay_skipper.at_frame_boundary
        ):
            return [SendToServer(encode_frame(0, bytes((Command.QUIT,))))]
        return []

    def discard(self) -> None:
        """The connection is over: enter CLOSED and drop the buffers and the relay's frame skipper (whose
        callback points back here), so that nothing keeps this machine alive in a reference cycle."""
        self.state = State.CLOSED
        self._relay_skipper = FrameSkipper(_never_claim)
        self._server_frames = FrameBuffer(self._max_packet)
        self._client_frames = FrameBuffer(self._max_packet)
        self._relay_tail = b""

    def _fail(self, greeting_sent: bool | None = None) -> None:
        """Enter CLOSED. The driver discards the effects of the failing step, so the client-leg counter
        forgets the packets that step meant to send (for `error_packet`)."""
        self.state = State.CLOSED
        self._client_seq = (self._client_seq - self._sent_in_call) & 0xFF
        self._sent_in_call = 0
        if greeting_sent is not None:
            self._greeting_sent = greeting_sent

    def error_packet(self, error: TlsProxyError) -> bytes | None:
        """The ERR frame that tells the client about `error`, stamped with the id it expects; None once
        the relay runs (a client mid-command would misread it: the driver just closes)."""
        if self.state is State.RELAY:
            return None
        if not self._greeting_sent:
            sequence_id, protocol_41 = 0, False
        elif not self._client_frames_taken and self._client_seq == 1:
            # The client got the greeting but its response has not been read: it sends it (seq 1)
            # before it reads anything, so it reads this ERR as the answer to it.
            sequence_id, protocol_41 = 2, True
        else:
            sequence_id = self._client_seq
            protocol_41 = True if self._client_protocol_41 is None else self._client_protocol_41
        payload = ErrPacket(error.errno, error.sqlstate, error.client_message).encode_payload(
            protocol_41=protocol_41,
        )
        self.state = State.CLOSED
        return encode_frame(sequence_id, payload[: MAX_PACKET_PAYLOAD - 1])

    # ---- server side ---------------------------------------------------------------------------

    def _on_server_frame(self, frame: Frame) -> list[Effect]:
        if self.state is State.GREETING:
            return self._on_greeting(frame)
        if self.state is State.REPLACING:
            return self._on_replacement_greeting(frame)
        if self.state is State.CLIENT_RESPONSE:
            raise ServerProtocolError("upstream sent a packet before the client answered its greeting")
        if self.state is State.REAUTH:
            raise ServerProtocolError("upstream sent a packet before the client answered the AuthSwitchRequest")
        self._check_sequence(frame, self._server_seq, ServerProtocolError, "upstream")
        self._count_auth_packet(ServerProtocolError)
        self._server_seq += 1
        return self._on_server_auth_packet(frame.payload)

    def _on_greeting(self, frame: Frame) -> list[Effect]:
        payload = frame.payload
        if payload[:1] == bytes((PacketHeader.ERR,)):
            # Too many connections, host blocked...: the server's own words, already in the
            # pre-greeting format; pass them on as they are.
            self.state = State.CLOSED
            return [SendToClient(frame.restamped(0).encode()), CloseConnection(Outcome.UPSTREAM_ERROR, "upstream refused with an ERR greeting")]
        greeting = self._checked_greeting(frame)
        self.greeting = greeting
        self._nonce = greeting.nonce
        self.auth_plugin = greeting.auth_plugin_name
        patched = patch_greeting_capabilities(payload, greeting, MASKED_CAPABILITIES)
        self.state = State.CLIENT_RESPONSE
        self._greeting_sent = True
        self._client_seq = 1
        self._server_seq = 1
        return [SendToClient(encode_frame(0, patched))]

    def _on_replacement_greeting(self, frame: Frame) -> list[Effect]:
        """The fresh upstream that replaces a prewarmed one greeted: upgrade it with this client's own
        SSLRequest. Its nonce reaches the client in an AuthSwitchRequest once TLS is up."""
        if frame.payload[:1] == bytes((PacketHeader.ERR,)):
            self.state = State.CLOSED
            return [self._to_client(frame.payload), CloseConnection(Outcome.UPSTREAM_ERROR, "upstream refused with an ERR greeting")]
        greeting = self._checked_greeting(frame)
        self.greeting = greeting
        self._nonce = greeting.nonce
        self._server_seq = 2
        self._reauth = True
        self.state = State.TLS_PENDING
        return [SendToServer(encode_frame(1, self.ssl_request)), StartUpstreamTls()]

    def _send_reauth_switch(self) -> list[Effect]:
        assert self.client_response is not None and self.greeting is not None
        plugin = self.client_response.auth_plugin_name or self.greeting.auth_plugin_name
        self.auth_plugin = plugin
        switch = AuthSwitchRequest(plugin, self._nonce + b"\x00")
        return [self._to_client(switch.encode_payload())]

    def _on_reauth_reply(self, payload: bytes) -> list[Effect]:
        """The client's auth data for the fresh nonce replaces the one in its HandshakeResponse, which
        then goes to the fresh upstream as usual (seq 2)."""
        assert self.client_response is not None
        try:
            patched = replace_auth_response(self._client_response_payload, self.client_response, payload)
        except ValueError:
            raise AuthEmulationError("the client's auth data is too long for its handshake format") from None
        self.client_response = parse_handshake_response(patched)
        self._client_response_payload = patched
        self.state = State.AUTH
        return self._send_client_response_upstream()

    def _checked_greeting(self, frame: Frame) -> InitialHandshake:
        payload = frame.payload
        if frame.sequence_id != 0:
            raise ServerProtocolError(f"upstream greeting has sequence id {frame.sequence_id}, expected 0")
        greeting = parse_initial_handshake(payload)
        if not greeting.capability_flags & Capability.PROTOCOL_41:
            raise ServerProtocolError("upstream speaks a pre-4.1 protocol, which tlsproxy does not support")
        if self.upstream_tls and not greeting.capability_flags & Capability.SSL:
            raise UpstreamTlsUnsupportedError(
                "upstream does not offer TLS; refusing to send credentials in plaintext",
            )
        return greeting

    def _on_server_auth_packet(self, payload: bytes) -> list[Effect]:
        head = payload[0] if payload else None
        if head == PacketHeader.OK:
            return self._finish_auth(payload, succeeded=True)
        if head == PacketHeader.ERR:
            return self._finish_auth(payload, succeeded=False)
        if head == PacketHeader.AUTH_SWITCH:
            switch = parse_auth_switch(payload)
            self.auth_plugin = switch.plugin_name
            if switch.auth_plugin_data:
                self._nonce = switch.nonce
            if self._intercept_rsa and switch.plugin_name == AuthPlugin.SHA256:
                self._await = _Await.SHA256_FIRST
            else:
                self._await = _Await.NOTHING
            return [self._to_client(payload)]
        if (
            self._intercept_rsa
            and self.auth_plugin == AuthPlugin.CACHING_SHA2
            and payload in (b"\x01\x04", b"\x04")
        ):
            # perform_full_authentication: upstream (on TLS) now wants the cleartext password. Ask the
            # client in the MySQL form (0x01-wrapped), which every client library reads.
            self._await = _Await.FULL_AUTH_REPLY
            return [self._to_client(bytes((PacketHeader.AUTH_MORE_DATA, CACHING_SHA2_PERFORM_FULL_AUTH)))]
        return [self._to_client(payload)]

    def _finish_auth(self, payload: bytes, *, succeeded: bool) -> list[Effect]:
        effects: list[Effect] = [self._to_client(payload)]
        self._await = _Await.NOTHING
        in_change_user = self.state is State.CHANGE_USER
        if succeeded or in_change_user:
            self.state = State.RELAY
            if not in_change_user:
                effects.append(StartRelay())
            pending = self._change_user_pending_client + self._client_frames.take_rest()
            self._change_user_pending_client = b""
            if pending:
                effects += self._relay_client_data(pending)
        else:
            self.state = State.CLOSED
            effects.append(CloseConnection(Outcome.AUTH_DENIED, "upstream denied authentication"))
        return effects

    # ---- client side ---------------------------------------------------------------------------

    def _drain_client_frames(self) -> list[Effect]:
        effects: list[Effect] = []
        while self.state in (State.CLIENT_RESPONSE, State.AUTH, State.CHANGE_USER, State.GREETING, State.REAUTH):
            if self.state is State.GREETING:
                if len(self._client_frames):
                    raise ClientProtocolError("client sent data before the server greeting")
                break
            frame = self._client_frames.next_frame()
            if frame is None:
                break
            self._client_frames_taken = True
            self._check_sequence(frame, self._client_seq, ClientProtocolError, "client")
            self._client_seq += 1
            if self.state is State.CLIENT_RESPONSE:
                effects += self._on_client_response(frame.payload)
            elif self.state is State.REAUTH:
                effects += self._on_reauth_reply(frame.payload)
            else:
                self._count_auth_packet(ClientProtocolError)
                effects += self._on_client_auth_packet(frame.payload)
        return effects

    def _on_client_response(self, payload: bytes) -> list[Effect]:
        response = parse_handshake_response(payload)
        self._client_protocol_41 = response.protocol_41
        if response.is_ssl_request or (len(payload) == SSL_REQUEST_SIZE and response.capability_flags & Capability.SSL):
            raise ClientTlsRequestError(
                "the client asked for TLS, but the proxy's client side is plaintext (TLS is done upstream); "
                "connect without TLS (mysql --ssl-mode=DISABLED, mariadb --skip-ssl)",
            )
        if not response.protocol_41 or not response.capability_flags & Capability.SECURE_CONNECTION:
            raise ClientCapabilityError("client does not support the 4.1 protocol and authentication")
        if len(payload) <= SSL_REQUEST_SIZE:
            raise ClientProtocolError("client handshake response has no user name")
        clear = MASKED_CAPABILITIES
        patched = patch_client_capabilities(payload, clear_bits=clear)
        if response.capability_flags & Capability.ZSTD_COMPRESSION_ALGORITHM:
            patched = patched[:-1]  # the zstd level byte, meaningless once ZSTD is cleared
        self.client_response = response
        self._client_response_payload = patched
        if response.auth_plugin_name:
            self.auth_plugin = response.auth_plugin_name
        if not self.upstream_tls:
            self.state = State.AUTH
            return self._send_client_response_upstream()
        if len(self._server_frames):
            raise ServerProtocolError("upstream sent unexpected data after its greeting")
        if len(self._client_frames):
            # The same as bytes arriving in a later read (receive_client_data in TLS_PENDING): the client
            # must wait for the server's answer, whatever the read boundaries.
            raise ClientProtocolError(CLIENT_DATA_BEFORE_ANSWER)
        ssl_request = ssl_request_from_response(patched, clear)
        self.ssl_request = ssl_request
        if self._warm_ssl_request is not None:
            if ssl_request == self._warm_ssl_request:
                self.state = State.AUTH  # TLS is up already
                return self._send_client_response_upstream()
            return self._replace_prewarmed_upstream(response)
        self.state = State.TLS_PENDING
        self._server_seq = 2
        return [SendToServer(encode_frame(1, ssl_request)), StartUpstreamTls()]

    def _replace_prewarmed_upstream(self, response: HandshakeResponse) -> list[Effect]:
        if not response.capability_flags & Capability.PLUGIN_AUTH:
            raise ClientCapabilityError(
                "this client's capabilities differ from the prewarmed upstream connection's, and it cannot "
                "answer an AuthSwitchRequest (no CLIENT_PLUGIN_AUTH); set prewarm: 0 on this route",
            )
        self.prewarm_mismatch = True
        self._warm_ssl_request = None
        self._server_frames = FrameBuffer(self._max_packet)
        self.state = State.REPLACING
        return [ReplaceUpstream("the client's SSLRequest differs from the prewarmed connection's")]

    def _send_client_response_upstream(self) -> list[Effect]:
        """Forward the client's HandshakeResponse: seq 2 after an SSLRequest, 1 without TLS."""
        assert self.client_response is not None
        payload = self._client_response_payload
        response = self.client_response
        self._server_seq = 1
        if self.upstream_tls:
            self._server_seq = 2
            if (
                self._intercept_rsa
                and self.auth_plugin == AuthPlugin.SHA256
                and self.greeting is not None
                and self.greeting.auth_plugin_name == AuthPlugin.SHA256
            ):
                auth = response.auth_response
                if auth == bytes((SHA256_REQUEST_PUBLIC_KEY,)):
                    # PROTOCOL.md §5.4 special case: answer the key request ourselves, hold the response.
                    self._await = _Await.INITIAL_CIPHERTEXT
                    return [self._send_public_key()]
                if self._auth_key is not None and len(auth) == self._auth_key.modulus_bytes:
                    return [self._send_initial_response_with_password(auth)]
        return [self._to_server(payload)]

    def _send_initial_response_with_password(self, ciphertext: bytes) -> SendToServer:
        password = self._decrypt_password(ciphertext)
        try:
            payload = replace_auth_response(
                self._client_response_payload, self.client_response, password + b"\x00",  # type: ignore[arg-type]
            )
        except ValueError:
            raise AuthEmulationError("the password is too long for this client's handshake format "
                                     "(a 1-byte auth length)") from None
        self._await = _Await.NOTHING
        return self._to_server(payload)

    def _on_client_auth_packet(self, payload: bytes) -> list[Effect]:
        waiting = self._await
        if waiting is _Await.NOTHING:
            return [self._to_server(payload)]
        key_size = self._auth_key.modulus_bytes if self._auth_key else 0
        if waiting is _Await.INITIAL_CIPHERTEXT:
            if len(payload) != key_size:
                raise AuthEmulationError(f"expected an RSA-encrypted password of {key_size} bytes")
            return [self._send_initial_response_with_password(payload)]
        if waiting is _Await.CIPHERTEXT:
            if len(payload) != key_size:
                raise AuthEmulationError(f"expected an RSA-encrypted password of {key_size} bytes")
            return [self._forward_password(self._decrypt_password(payload))]
        key_request = CACHING_SHA2_REQUEST_PUBLIC_KEY if waiting is _Await.FULL_AUTH_REPLY else SHA256_REQUEST_PUBLIC_KEY
        if payload == bytes((key_request,)):
            self._await = _Await.CIPHERTEXT
            return [self._send_public_key()]
        if len(payload) == key_size:
            # RSA ciphertext: under the proxy's key, or (client configured with the server's key) not
            # readable at all -- then refuse here rather than send it upstream as a password.
            return [self._forward_password(self._decrypt_password(payload))]
        empty_password = waiting is _Await.SHA256_FIRST and payload in (b"", b"\x00")
        if empty_password or payload.endswith(b"\x00"):
            # A client that believes its link is secure sends the cleartext password (PROTOCOL.md §5.3
            # product decision: the local leg is the operator's trust boundary). Upstream gets it inside TLS.
            self._await = _Await.NOTHING
            return [self._to_server(payload)]
        raise AuthEmulationError(
            "the client answered the password request with data the proxy cannot read; if the client is "
            "configured with the server's RSA public key, point it at the proxy's key instead",
        )

    def _send_public_key(self) -> SendToClient:
        assert self._auth_key is not None
        self.rsa_exchange_emulated = True
        return self._to_client(bytes((PacketHeader.AUTH_MORE_DATA,)) + self._auth_key.public_pem)

    def _forward_password(self, password: bytes) -> SendToServer:
        self._await = _Await.NOTHING
        return self._to_server(password + b"\x00")

    def _decrypt_password(self, ciphertext: bytes) -> bytes:
        """RSA-OAEP(SHA-1) decrypt, XOR with the current nonce (NUL included), strip the NUL (§5.3)."""
        assert self._auth_key is not None
        plain = self._auth_key.decrypt(ciphertext)
        if plain is None and self._server_version_before_8_0_5():
            plain = self._auth_key.decrypt_pkcs1v15(ciphertext)  # Connector/J's padding for old servers
        nonce = self._nonce[:NONCE_SIZE]
        if plain is None or not nonce:
            raise AuthEmulationError(
                "could not decrypt the password with the proxy's RSA key; if the client is configured "
                "with the server's public key, point it at the proxy's key instead",
            )
        password = bytes(byte ^ nonce[i % len(nonce)] for i, byte in enumerate(plain))
        end = password.find(b"\x00")
        if end < 0:
            raise AuthEmulationError("the decrypted password is not NUL-terminated")
        self.rsa_exchange_emulated = True
        return password[:end]

    def _server_version_before_8_0_5(self) -> bool:
        if self.greeting is None:
            return False
        # Connector/J parses the version as sent: MariaDB 10.x's "5.5.5-" prefix reads as 5.5.5.
        match = _OLD_RSA_PADDING_VERSION.match(self.greeting.server_version)
        return bool(match) and tuple(int(part) for part in match.groups()) < (8, 0, 5)

    # ---- command phase -------------------------------------------------------------------------

    def _is_change_user_start(self, length: int, sequence_id: int, first_byte: int) -> bool:
        """The skipper asks this at every client packet start in the relay."""
        self._client_sent_quit = sequence_id == 0 and first_byte == Command.QUIT and length == 1
        return sequence_id == 0 and first_byte == Command.CHANGE_USER and length < self._max_packet

    def _relay_client_data(self, data: bytes) -> list[Effect]:
        if not data:
            return []
        if self._relay_tail:
            data = self._relay_tail + data
            self._relay_tail = b""
        passed = self._relay_skipper.feed(data)
        if passed == len(data):
            return [SendToServer(data)]
        effects: list[Effect] = [SendToServer(data[:passed])] if passed else []
        rest = data[passed:]
        frames = FrameBuffer(self._max_packet)
        frames.feed(rest)
        try:
            frame = frames.next_frame()
        except DecodeError:  # pragma: no cover - the skipper only claims frames under the limit
            frame = None
        if frame is None:
            self._relay_tail = rest  # an incomplete header or COM_CHANGE_USER: wait for the rest
            return effects
        self._relay_skipper.skip_claimed()
        effects += self._start_change_user(frame)
        remainder = frames.take_rest()
        if remainder:
            self._hold_behind_change_user(remainder)
        return effects

    def _hold_behind_change_user(self, data: bytes) -> None:
        """Client bytes pipelined behind COM_CHANGE_USER, relayed once it is answered; at most one
        connection-phase packet's worth."""
        self._change_user_pending_client += data
        if len(self._change_user_pending_client) > self._max_packet + HEADER_SIZE:
            self._fail()  # also reached from the unguarded relay path
            raise ClientProtocolError(
                f"client sent more than {self._max_packet} bytes behind COM_CHANGE_USER before the server answered it",
            )

    def _start_change_user(self, frame: Frame) -> list[Effect]:
        """COM_CHANGE_USER re-runs authentication inside the command phase, ids starting at 0 on both legs."""
        assert self.client_response is not None and self.greeting is not None
        try:
            change = parse_change_user(frame.payload, self.client_response.capability_flags)
            self.auth_plugin = change.auth_plugin_name or self.auth_plugin
        except DecodeError:
            pass  # the server judges the packet; the proxy only needs to follow the exchange
        self.state = State.CHANGE_USER
        self._nonce = self.greeting.nonce  # MariaDB may reuse the greeting's nonce (PROTOCOL.md §6)
        self._await = _Await.NOTHING
        self._server_frames = FrameBuffer(self._max_packet)
        self._client_frames = FrameBuffer(self._max_packet)
        self._client_seq = 1
        self._server_seq = 1
        self._auth_packets = 0
        return [SendToServer(frame.encode())]

    # ---- helpers -------------------------------------------------------------------------------

    def _to_client(self, payload: bytes) -> SendToClient:
        data = encode_frame(self._client_seq, payload)
        self._client_seq = (self._client_seq + 1) & 0xFF
        self._sent_in_call += 1
        return SendToClient(data)

    def _to_server(self, payload: bytes) -> SendToServer:
        data = encode_frame(self._server_seq, payload)
        self._server_seq = (self._server_seq + 1) & 0xFF
        return SendToServer(data)

    def _count_auth_packet(self, error: type[TlsProxyError]) -> None:
        self._auth_packets += 1
        if self._auth_packets > self._max_auth_packets:
            raise error(
                f"authentication took more than {self._max_auth_packets} packets; an AuthSwitch or "
                "auth-more-data loop? giving up",
            )

    @staticmethod
    def _check_sequence(frame: Frame, expected: int, error: type[TlsProxyError], side: str) -> None:
        if frame.sequence_id != expected & 0xFF:
            raise error(f"{side} packet out of order: sequence id {frame.sequence_id}, expected {expected & 0xFF}")
        if len(frame.payload) == MAX_PACKET_PAYLOAD:
            raise error(f"{side} sent a packet too large for the connection phase")
