"""The handshake machine's plumbing: its state and counters, the one way to change state, input steps
that fail as a whole, sequence-numbered sends on each leg, and the ERR for a failure. No protocol
decisions live here: `tlsproxy.mysql.handshake` (the connection phase) and `prewarm_adoption` (a
prewarmed upstream that does not fit) build on it.
"""

from __future__ import annotations

from typing import Callable

from tlsproxy.errors import AuthEmulationError, ServerProtocolError, TlsProxyError
from tlsproxy.mysql.codec import DecodeError, Frame, FrameBuffer, encode_frame
from tlsproxy.mysql.command_watcher import CommandWatcher
from tlsproxy.mysql.constants import MAX_PACKET_PAYLOAD, AuthPlugin
from tlsproxy.mysql.effects import AuthKey, Effect, SendToClient, SendToServer
from tlsproxy.mysql.greeting import check_upstream_greeting
from tlsproxy.mysql.messages import (
    ErrPacket,
    HandshakeResponse,
    InitialHandshake,
    change_user_from_response,
    parse_handshake_response,
    replace_auth_response,
)
from tlsproxy.mysql.response_follower import ResponseFollower
from tlsproxy.mysql.rsa_exchange import PasswordInResponse, RsaExchange, ToClient, ToServer
from tlsproxy.mysql.states import ALLOWED, State

DEFAULT_MAX_HANDSHAKE_PACKET = 1 << 20
"""No connection-phase packet is near this size; a larger one is refused rather than buffered."""

DEFAULT_MAX_AUTH_PACKETS = 64
"""Packets (both directions) one authentication exchange may take after the HandshakeResponse. Real ones
take at most a handful (caching_sha2 full auth with an AuthSwitch: 6); a peer looping AuthSwitch or
auth-more-data forever is cut off instead of holding the connection until the handshake timeout."""


class MachineCore:
    def __init__(
        self,
        *,
        upstream_tls: bool = True,
        auth_key: AuthKey | None = None,
        max_handshake_packet: int = DEFAULT_MAX_HANDSHAKE_PACKET,
        max_auth_packets: int = DEFAULT_MAX_AUTH_PACKETS,
        upstream_pool: bool = False,
    ) -> None:
        self.upstream_tls = upstream_tls
        self.upstream_pool = upstream_pool
        """The route pools upstream connections: COM_QUIT is held back and the server's answers followed."""
        self._auth_key = auth_key
        self._rsa = RsaExchange(auth_key) if upstream_tls and auth_key is not None else None
        self._max_packet = max_handshake_packet
        self._max_auth_packets = max_auth_packets
        self._auth_packets = 0
        self._state = State.GREETING
        self._server_frames = FrameBuffer(max_handshake_packet)
        self._client_frames = FrameBuffer(max_handshake_packet)
        self._client_seq = 0
        self._server_seq = 0
        self._client_packets_this_step = 0
        """Packets the current input step sent the client: its effects are discarded if it fails, so the
        client never saw them, and `error_packet` must number the ERR as if they were never sent."""
        self._greeting_sent = False
        self.greeting: InitialHandshake | None = None
        self.greeting_payload = b""
        """The upstream's greeting as it sent it (a parked connection hands it to its next client)."""
        self.client_response: HandshakeResponse | None = None
        self._client_response_payload = b""
        self.ssl_request = b""
        """The SSLRequest payload this client's upstream connection needs (learned by the prewarm pool)."""
        self._client_protocol_41: bool | None = None
        self._nonce = b""
        self._answered_nonce = b""
        """The nonce the client's auth data in its HandshakeResponse answers (its greeting's, or the proxy's
        AuthSwitchRequest's after a replacement)."""
        self.auth_plugin = ""
        self._watcher = CommandWatcher(max_handshake_packet)
        self._held_behind_change_user = b""
        self._client_frames_taken = False
        self._warm_ssl_request: bytes | None = None
        self.logged_in = False
        """The first login succeeded (StartRelay was returned); stays true after CLOSED."""
        self.prewarmed = False
        """The upstream was a prewarmed connection (greeting, SSLRequest and TLS done before the client came)."""
        self.prewarm_mismatch = False
        """... whose SSLRequest differed from this client's, so a fresh upstream replaced it."""
        self.pooled = False
        """The upstream is a parked connection: the client's login goes up as COM_CHANGE_USER (seq 0)."""
        self._upstream_gone = False
        """The pooled upstream closed while the client was answering its greeting."""
        self._follower: ResponseFollower | None = None
        self._unparkable: str | None = None
        """Why this upstream must not be parked whatever the follower says (a failed COM_CHANGE_USER...)."""

    @property
    def state(self) -> State:
        return self._state

    @property
    def inspecting_server_data(self) -> bool:
        """False once the relay runs: then server bytes go to the client without the machine."""
        return self._state is not State.RELAY

    @property
    def rsa_exchange_emulated(self) -> bool:
        return self._rsa is not None and self._rsa.emulated

    def buffered(self) -> dict[str, int]:
        """Bytes held in each of the machine's buffers (all bounded; the hostile-input tests check it)."""
        return {"client frames": len(self._client_frames), "server frames": len(self._server_frames),
                "relay tail": self._watcher.buffered, "change-user pending": len(self._held_behind_change_user)}

    def error_packet(self, error: TlsProxyError) -> bytes | None:
        """The ERR frame that tells the client about `error`, stamped with the id it expects; None once
        the relay runs (a client mid-command would misread it: the driver just closes). Pure."""
        if self._state is State.RELAY:
            return None
        if not self._greeting_sent:
            sequence_id, protocol_41 = 0, False
        elif not self._client_frames_taken and self._client_seq == 1:
            # The client got the greeting but its response has not been read: it sends it (seq 1)
            # before it reads anything, so it reads this ERR as the answer to it.
            sequence_id, protocol_41 = 2, True
        else:
            sequence_id = self._client_seq & 0xFF
            protocol_41 = True if self._client_protocol_41 is None else self._client_protocol_41
        payload = ErrPacket(error.errno, error.sqlstate, error.client_message).encode_payload(
            protocol_41=protocol_41,
        )
        return encode_frame(sequence_id, payload[: MAX_PACKET_PAYLOAD - 1])

    def discard(self) -> None:
        """The connection is over: enter CLOSED and drop the buffers."""
        self._set_state(State.CLOSED)
        self._server_frames = FrameBuffer(self._max_packet)
        self._client_frames = FrameBuffer(self._max_packet)
        self._watcher = CommandWatcher(self._max_packet)
        self._held_behind_change_user = b""

    def _set_state(self, new: State) -> None:
        if new not in ALLOWED[self._state]:
            raise RuntimeError(f"handshake machine: no transition from {self._state.name} to {new.name}")
        self._state = new

    def _step(self, step: Callable[[], list[Effect]], decode_error: type[TlsProxyError], side: str) -> list[Effect]:
        """Run one input step. On failure enter CLOSED as if its effects were never produced (the driver
        discards them): the greeting counts as unsent again if this step sent it, and the client-leg
        counter forgets the packets this step meant to send. Codec errors become the protocol error of
        the side that sent the bytes."""
        self._client_packets_this_step, before = 0, (self._greeting_sent, self.logged_in)
        try:
            return step()
        except DecodeError as exc:
            self._undo_step(*before)
            raise decode_error(f"malformed packet from {side}: {exc}") from None
        except TlsProxyError:
            self._undo_step(*before)
            raise

    def _undo_step(self, greeting_sent: bool, logged_in: bool) -> None:
        self._set_state(State.CLOSED)
        self._client_seq = (self._client_seq - self._client_packets_this_step) & 0xFF
        self._greeting_sent, self.logged_in = greeting_sent, logged_in

    def _take_greeting(self, frame: Frame, parsed: InitialHandshake | None = None) -> InitialHandshake:
        """`parsed`: the greeting's payload parsed already (`check_upstream_greeting`)."""
        greeting = check_upstream_greeting(frame, require_tls=self.upstream_tls, parsed=parsed)
        self.greeting = greeting
        self.greeting_payload = frame.payload
        self._nonce = greeting.nonce
        if self._rsa is not None:
            self._rsa.server_version = greeting.server_version
        return greeting

    def _check_nothing_before_tls(self) -> None:
        """No server byte may wait between the SSLRequest and the TLS handshake (it would be read as if
        it came over TLS)."""
        if len(self._server_frames):
            raise ServerProtocolError("upstream sent unexpected data after its greeting")

    def _send_client_response_upstream(self) -> list[Effect]:
        """Forward the client's HandshakeResponse: seq 2 after an SSLRequest, 1 without TLS; on a pooled
        upstream, as COM_CHANGE_USER at seq 0 (PROTOCOL.md §6)."""
        assert self.client_response is not None
        self._server_seq = 0 if self.pooled else 2 if self.upstream_tls else 1
        if (
            self._rsa is not None
            and self.auth_plugin == AuthPlugin.SHA256
            and self.greeting is not None
            and self.greeting.auth_plugin_name == AuthPlugin.SHA256
        ):
            step = self._rsa.initial_response(self.client_response.auth_response, self._nonce)
            if step is not None:
                return [self._carry_out(step)]
        return [self._to_server(self._login_payload(self._client_response_payload))]

    def _login_payload(self, response_payload: bytes) -> bytes:
        """What asks upstream to log this client in: its HandshakeResponse, or on a pooled upstream the
        COM_CHANGE_USER made of it (user, auth data, database, collation, plugin, attributes)."""
        if not self.pooled:
            return response_payload
        try:
            return change_user_from_response(response_payload, parse_handshake_response(response_payload))
        except ValueError:
            raise AuthEmulationError("the client's auth data is too long for COM_CHANGE_USER (at most 255 bytes); "
                                     "set upstream_pool: 0 on this route") from None

    def _carry_out(self, step: ToClient | ToServer | PasswordInResponse) -> SendToClient | SendToServer:
        if isinstance(step, ToClient):
            return self._to_client(step.payload)
        if isinstance(step, ToServer):
            return self._to_server(step.payload)
        return self._to_server(self._login_payload(self._response_with_auth(
            step.password + b"\x00", "the password is too long for this client's handshake format (a 1-byte auth length)")))

    def _response_with_auth(self, auth_response: bytes, too_long: str) -> bytes:
        assert self.client_response is not None
        try:
            return replace_auth_response(self._client_response_payload, self.client_response, auth_response)
        except ValueError:
            raise AuthEmulationError(too_long) from None

    def _to_client(self, payload: bytes) -> SendToClient:
        data = encode_frame(self._client_seq, payload)
        self._client_seq = (self._client_seq + 1) & 0xFF
        self._client_packets_this_step += 1
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
