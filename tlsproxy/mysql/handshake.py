"""The connection phase as a pure state machine: bytes in, effects out, no I/O (PROTOCOL.md §4-§6).

The driver feeds what each peer sends (`receive_server_data`, `receive_client_data`), reports that the
upstream TLS handshake finished (`tls_established`), and carries out the returned effects in order.
Errors are raised as `TlsProxyError` subclasses (the machine is then CLOSED); `error_packet` gives the
ERR the client expects for one.

Transitions (the table is `states.TRANSITIONS`; `_set_state` refuses anything else):

{diagram}

Inputs are routed by (side, state): `receive_*` settle the states where a side's bytes are not framed
(TLS_PENDING: refused; RELAY: passed on; CLOSED: dropped), then `SERVER_FRAME_HANDLERS` and
`CLIENT_FRAME_HANDLERS` name the handler of each whole frame by state.
In AUTH and CHANGE_USER the machine relays packets with two sequence counters (one per leg), and plays
the server's side of the caching_sha2_password / sha256_password RSA exchange with the proxy's own key
(`rsa_exchange`), sending the password upstream inside TLS (PROTOCOL.md §5.3, §5.4). In RELAY client
bytes pass as they come, their frame headers followed only to spot COM_CHANGE_USER and COM_QUIT
(`command_watcher`); server bytes do not pass through the machine at all (`inspecting_server_data`).
"""

from __future__ import annotations

from typing import Callable

from tlsproxy.errors import (
    ClientCapabilityError,
    ClientProtocolError,
    ClientTlsRequestError,
    ServerProtocolError,
    TlsInjectionError,
)
from tlsproxy.mysql.codec import DecodeError, Frame, FrameBuffer, encode_frame
from tlsproxy.mysql.command_watcher import CommandWatcher
from tlsproxy.mysql.constants import (
    CLIENT_LONG_PASSWORD,
    CLIENT_PLUGIN_AUTH,
    CLIENT_SECURE_CONNECTION,
    CLIENT_SSL,
    CLIENT_ZSTD_COMPRESSION_ALGORITHM,
    HEADER_SIZE,
    MASKED_CAPABILITIES,
    SSL_REQUEST_SIZE,
    AuthPlugin,
    Command,
    PacketHeader,
)
from tlsproxy.mysql.effects import (
    AuthKey,
    ClientQuit,
    CloseConnection,
    Effect,
    ReplaceUpstream,
    SendToClient,
    SendToServer,
    StartRelay,
    StartUpstreamTls,
)
from tlsproxy.mysql.greeting import (
    check_upstream_greeting,
    is_err_greeting,
    pool_key,
    ssl_request_for,
    ssl_request_frame,
)
from tlsproxy.mysql.machine_core import DEFAULT_MAX_AUTH_PACKETS, DEFAULT_MAX_HANDSHAKE_PACKET
from tlsproxy.mysql.messages import (
    AuthSwitchRequest,
    InitialHandshake,
    parse_auth_switch,
    parse_change_user,
    parse_handshake_response,
    patch_client_capabilities,
    patch_greeting_capabilities,
)
from tlsproxy.mysql.prewarm_adoption import PrewarmAdoption
from tlsproxy.mysql.response_follower import ResponseFollower
from tlsproxy.mysql.states import State, render_transitions
from tlsproxy.outcome import Outcome

__doc__ = __doc__.replace("{diagram}", "\n".join("    " + line for line in render_transitions().splitlines()))

__all__ = [
    "DEFAULT_MAX_AUTH_PACKETS", "DEFAULT_MAX_HANDSHAKE_PACKET", "AuthKey", "ClientQuit", "CloseConnection", "Effect",
    "HandshakeMachine", "ReplaceUpstream", "SendToClient", "SendToServer", "StartRelay", "StartUpstreamTls", "State",
    "check_upstream_greeting",
]

CLIENT_DATA_BEFORE_ANSWER = "client sent data before the server answered its handshake response"

_TLS_PENDING = (State.TLS_PENDING, State.REPLACEMENT_TLS_PENDING)


class HandshakeMachine(PrewarmAdoption):
    """One client connection's connection phase, and the command phase as far as the proxy follows it."""

    def receive_server_data(self, data: bytes) -> list[Effect]:
        state = self._state
        if state in _TLS_PENDING:
            self._set_state(State.CLOSED)
            raise TlsInjectionError(
                "upstream sent non-TLS data after the SSLRequest (before the TLS handshake); refusing the connection",
            )
        if state is State.RELAY:
            return [SendToClient(data)] if data else []
        if state is State.CLOSED:
            return []
        return self._step(lambda: self._feed_server(data), ServerProtocolError, "upstream")

    def relay_client_prefix(self, data: bytes) -> int:
        """In RELAY, how many leading bytes of `data` go to the server as they are, with no effect list
        built (the relay's hot path): all of them unless a command the machine takes whole (COM_CHANGE_USER;
        COM_QUIT on a pooled route) starts in them or a frame header is cut. The driver sends that prefix
        itself and gives the rest, if any, to `receive_client_data`. 0 in every other state."""
        if self._state is not State.RELAY:
            return 0
        return self._watcher.passing(data)

    def receive_client_data(self, data: bytes) -> list[Effect]:
        state = self._state
        if state is State.RELAY:
            return self._relay_client_data(data)
        if state is State.CLOSED or not data:
            return []
        if state in _TLS_PENDING:
            # The client waits for the server's answer to its response; it has nothing to send now.
            self._set_state(State.CLOSED)
            raise ClientProtocolError(CLIENT_DATA_BEFORE_ANSWER)
        return self._step(lambda: self._feed_client(data), ClientProtocolError, "client")

    def receive_client_eof(self) -> list[Effect]:
        """The client half-closed its side in the relay. A TLS upstream cannot half-close, so when the
        client's last packet is complete the proxy sends COM_QUIT: the server finishes what it was
        answering, then closes, and the client still gets every byte of the answer."""
        if self._state is State.RELAY and not self._watcher.client_sent_quit and self._watcher.at_command_boundary:
            return [SendToServer(encode_frame(0, bytes((Command.QUIT,))))]
        return []

    def tls_established(self) -> list[Effect]:
        if self._state is State.TLS_PENDING:
            self._set_state(State.AUTH)
            return self._step(lambda: self._send_client_response_upstream() + self._drain_client_frames(),
                              ClientProtocolError, "client")
        if self._state is State.REPLACEMENT_TLS_PENDING:
            self._set_state(State.REAUTH)
            return self._step(self._send_reauth_switch, ClientProtocolError, "client")
        raise RuntimeError(f"tls_established in state {self._state}")

    def _feed_server(self, data: bytes) -> list[Effect]:
        self._server_frames.feed(data)
        effects: list[Effect] = []
        while (handler := SERVER_FRAME_HANDLERS.get(self._state)) is not None:
            frame = self._server_frames.next_frame()
            if frame is None:
                break
            effects += handler(self, frame)
        if self._state is State.RELAY and len(self._server_frames):
            effects.append(SendToClient(self._server_frames.take_rest()))
        elif self._state is State.CLOSED:
            self._server_frames = FrameBuffer(self._max_packet)  # what follows a final ERR means nothing
        return effects

    def _feed_client(self, data: bytes) -> list[Effect]:
        if self._state is State.CHANGE_USER_SENT:
            # Upstream has not answered COM_CHANGE_USER yet, so nothing the client sends now belongs to
            # the exchange: hold it behind the command, as if it had come in the same read.
            self._hold_behind_change_user(data)
            return []
        if self._state is State.GREETING:
            raise ClientProtocolError("client sent data before the server greeting")
        self._client_frames.feed(data)
        return self._drain_client_frames()

    def _drain_client_frames(self) -> list[Effect]:
        effects: list[Effect] = []
        while (handler := CLIENT_FRAME_HANDLERS.get(self._state)) is not None:
            frame = self._client_frames.next_frame()
            if frame is None:
                break
            self._client_frames_taken = True
            self._check_sequence(frame, self._client_seq, ClientProtocolError, "client")
            self._client_seq += 1
            effects += handler(self, frame.payload)
        return effects

    def _refuse_server_packet(self, frame: Frame) -> list[Effect]:
        waiting_for = "the AuthSwitchRequest" if self._state is State.REAUTH else "its greeting"
        raise ServerProtocolError(f"upstream sent a packet before the client answered {waiting_for}")

    def _on_greeting(self, frame: Frame, parsed: InitialHandshake | None = None) -> list[Effect]:
        """`parsed`: an adopted connection's greeting, parsed when the connection was opened."""
        if is_err_greeting(frame):
            # Too many connections, host blocked...: the server's own words, already in the
            # pre-greeting format; pass them on as they are.
            self._set_state(State.CLOSED)
            return [SendToClient(frame.restamped(0).encode()),
                    CloseConnection(Outcome.UPSTREAM_ERROR, "upstream refused with an ERR greeting")]
        greeting = self._take_greeting(frame, parsed)
        self.auth_plugin = greeting.auth_plugin_name
        patched = patch_greeting_capabilities(frame.payload, greeting, MASKED_CAPABILITIES)
        self._answered_nonce = greeting.nonce
        self._set_state(State.CLIENT_RESPONSE)
        self._greeting_sent = True
        self._client_seq = 1
        self._server_seq = 1
        return [SendToClient(encode_frame(0, patched))]

    def _on_server_auth_frame(self, frame: Frame) -> list[Effect]:
        self._check_sequence(frame, self._server_seq, ServerProtocolError, "upstream")
        self._count_auth_packet(ServerProtocolError)
        self._server_seq += 1
        if self._state is State.CHANGE_USER_SENT:
            self._set_state(State.CHANGE_USER)
        payload = frame.payload
        head = payload[0] if payload else None
        if head == PacketHeader.OK:
            return self._finish_auth(payload, succeeded=True)
        if head == PacketHeader.ERR:
            return self._finish_auth(payload, succeeded=False)
        if head == PacketHeader.AUTH_SWITCH:
            switch = parse_auth_switch(payload)
            if self.pooled and self._state is State.AUTH and self._server_seq == 2:
                answer = self._answer_switch_for_the_client(switch)
                if answer is not None:
                    return answer
            self.auth_plugin = switch.plugin_name
            if switch.auth_plugin_data:
                self._nonce = switch.nonce
            if self._rsa is not None:
                self._rsa.server_switched(switch.plugin_name)
            return [self._to_client(payload)]
        if self._rsa is not None:
            ask_client = self._rsa.server_wants_full_auth(self.auth_plugin, payload)
            if ask_client is not None:
                return [self._to_client(ask_client)]
        return [self._to_client(payload)]

    def _answer_switch_for_the_client(self, switch: AuthSwitchRequest) -> list[Effect] | None:
        """The server's first answer to a pooled login is an AuthSwitchRequest (MariaDB sends one to every
        client, PROTOCOL.md §6.3). For mysql_native_password over the greeting's own nonce (the connection's
        scramble, reused: the nonce the client answered) the client's answer is already in its HandshakeResponse:
        send it up, and the client gets OK or ERR at seq 2 as at connect, a round trip sooner. A client
        without CLIENT_PLUGIN_AUTH could not read the switch at all; for any other switch it is refused.
        None: relay the switch to the client."""
        assert self.client_response is not None and self.greeting is not None
        response = self.client_response
        native_over_our_nonce = switch.plugin_name == AuthPlugin.NATIVE and switch.nonce == self._answered_nonce
        if not response.capability_flags & CLIENT_PLUGIN_AUTH:
            if not native_over_our_nonce:
                raise ClientCapabilityError(
                    f"the server asked this client to switch to {switch.plugin_name} on a pooled connection, and "
                    "the client cannot answer an AuthSwitchRequest (no CLIENT_PLUGIN_AUTH); set upstream_pool: 0 "
                    "on this route")
            return [self._to_server(response.auth_response)]
        if native_over_our_nonce and response.auth_plugin_name == AuthPlugin.NATIVE and self._rsa_idle():
            return [self._to_server(response.auth_response)]
        return None

    def _rsa_idle(self) -> bool:
        return self._rsa is None or not self._rsa.emulated

    def _finish_auth(self, payload: bytes, *, succeeded: bool) -> list[Effect]:
        effects: list[Effect] = [self._to_client(payload)]
        if self._rsa is not None:
            self._rsa.finished()
        if self._state is State.CHANGE_USER:  # the server's OK or ERR: either way the session goes on
            self._set_state(State.RELAY)
            if not succeeded:
                # MariaDB keeps the connection logged in as the previous user, and counts the failure
                # (after three it refuses every COM_CHANGE_USER): never hand it to another client.
                self._unparkable = "a COM_CHANGE_USER failed on this connection"
        elif succeeded:
            self._set_state(State.RELAY)
            self.logged_in = True
            if self.upstream_pool:
                self._start_following()
            effects.append(StartRelay())
        else:
            self._set_state(State.CLOSED)
            return effects + [CloseConnection(Outcome.AUTH_DENIED, "upstream denied authentication")]
        pending = self._held_behind_change_user + self._client_frames.take_rest()
        self._held_behind_change_user = b""
        if pending:
            effects += self._relay_client_data(pending)
        return effects

    def _on_client_response(self, payload: bytes) -> list[Effect]:
        response = parse_handshake_response(payload)
        self._client_protocol_41 = response.protocol_41
        if response.is_ssl_request or (len(payload) == SSL_REQUEST_SIZE and response.capability_flags & CLIENT_SSL):
            raise ClientTlsRequestError(
                "the client asked for TLS, but the proxy's client side is plaintext (TLS is done upstream); "
                "connect without TLS (mysql --ssl-mode=DISABLED, mariadb --skip-ssl)",
            )
        if not response.protocol_41 or not response.capability_flags & CLIENT_SECURE_CONNECTION:
            raise ClientCapabilityError("client does not support the 4.1 protocol and authentication")
        if len(payload) <= SSL_REQUEST_SIZE:
            raise ClientProtocolError("client handshake response has no user name")
        patched = patch_client_capabilities(payload, clear_bits=MASKED_CAPABILITIES)
        if response.capability_flags & CLIENT_ZSTD_COMPRESSION_ALGORITHM:
            patched = patched[:-1]  # the zstd level byte, meaningless once ZSTD is cleared
        self.client_response = response
        self._client_response_payload = patched
        if response.auth_plugin_name:
            self.auth_plugin = response.auth_plugin_name
        if not self.upstream_tls:
            self._set_state(State.AUTH)
            return self._send_client_response_upstream()
        self._check_nothing_before_tls()
        if len(self._client_frames):
            # The same as bytes arriving in a later read (receive_client_data in TLS_PENDING): the client
            # must wait for the server's answer, whatever the read boundaries.
            raise ClientProtocolError(CLIENT_DATA_BEFORE_ANSWER)
        self.ssl_request = ssl_request_for(patched)
        if self._warm_ssl_request is not None:
            fits = (pool_key(self.ssl_request) == pool_key(self._warm_ssl_request) and not self._upstream_gone
                    if self.pooled else self.ssl_request == self._warm_ssl_request)
            if fits:
                self._set_state(State.AUTH)  # TLS is up already
                return self._send_client_response_upstream()
            return self._replace_prewarmed_upstream(response)
        self._set_state(State.TLS_PENDING)
        self._server_seq = 2
        return [SendToServer(ssl_request_frame(self.ssl_request)), StartUpstreamTls()]

    def _on_client_auth_packet(self, payload: bytes) -> list[Effect]:
        self._count_auth_packet(ClientProtocolError)
        if self._rsa is None:
            return [self._to_server(payload)]
        return [self._carry_out(self._rsa.client_packet(payload, self._nonce))]

    def _relay_client_data(self, data: bytes) -> list[Effect]:
        if not data:
            return []
        passed, claimed, after = self._watcher.feed(data)
        effects: list[Effect] = [SendToServer(passed)] if passed else []
        if claimed is None:
            return effects
        if claimed.payload[0] == Command.QUIT:
            if after:  # bytes behind COM_QUIT: nothing to park; pass it all on as it came
                self._unparkable = "the client sent bytes after COM_QUIT"
                return effects + [SendToServer(claimed.encode() + after)]
            return effects + [ClientQuit(claimed.encode())]
        effects += self._start_change_user(claimed)
        if after:
            self._hold_behind_change_user(after)
        return effects

    # ---- the upstream pool ---------------------------------------------------------------------

    def _start_following(self) -> None:
        """Logged in on a pooled route: follow the server's answers from now on, so the driver can tell
        when the client leaves with nothing in flight (`parkable`)."""
        assert self.client_response is not None and self.greeting is not None
        client_flags = int.from_bytes(self._client_response_payload[:4], "little")
        # MariaDB reads the client's extended capabilities only when its CLIENT_MYSQL bit (bit 0) is clear.
        extended = 0 if client_flags & CLIENT_LONG_PASSWORD else (
            self.client_response.mariadb_extended_capabilities & self.greeting.mariadb_extended_capabilities)
        follower = ResponseFollower(capability_flags=client_flags & self.greeting.capability_flags,
                                    mariadb_extended_capabilities=extended)
        self._follower = follower
        self._watcher = CommandWatcher(self._max_packet, on_command=follower.client_command)

    def note_server_data(self, data: bytes | memoryview) -> None:
        """Server bytes relayed past the machine (RELAY), for the response follower."""
        if self._follower is not None:
            self._follower.server_data(data)

    @property
    def parkable(self) -> bool:
        """The upstream may be parked for another client: logged in, in the relay, every command answered
        in full, the client's bytes ending at a packet boundary, and nothing that rules it out."""
        follower = self._follower
        return (self._state is State.RELAY and follower is not None and follower.idle and self._unparkable is None
                and self._watcher.at_command_boundary and not self._held_behind_change_user)

    @property
    def not_parkable_reason(self) -> str:
        if self._unparkable is not None:
            return self._unparkable
        if self._follower is not None and self._follower.lost:
            return self._follower.lost
        return "a command was still in flight"

    def _hold_behind_change_user(self, data: bytes) -> None:
        """Client bytes pipelined behind COM_CHANGE_USER, relayed once it is answered; at most one
        connection-phase packet's worth."""
        self._held_behind_change_user += data
        if len(self._held_behind_change_user) > self._max_packet + HEADER_SIZE:
            self._set_state(State.CLOSED)  # also reached from the unguarded relay path
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
        if self._follower is not None and not self._follower.idle:
            self._unparkable = "COM_CHANGE_USER came while a command was in flight"
        self._set_state(State.CHANGE_USER_SENT)
        self._nonce = self.greeting.nonce  # MariaDB may reuse the greeting's nonce (PROTOCOL.md §6)
        if self._rsa is not None:
            self._rsa.finished()
        self._server_frames = FrameBuffer(self._max_packet)
        self._client_frames = FrameBuffer(self._max_packet)
        self._client_seq = 1
        self._server_seq = 1
        self._auth_packets = 0
        return [SendToServer(frame.encode())]


SERVER_FRAME_HANDLERS: dict[State, Callable[[HandshakeMachine, Frame], list[Effect]]] = {
    State.GREETING: HandshakeMachine._on_greeting,
    State.CLIENT_RESPONSE: HandshakeMachine._refuse_server_packet,
    State.REPLACING: HandshakeMachine._on_replacement_greeting,
    State.REAUTH: HandshakeMachine._refuse_server_packet,
    State.AUTH: HandshakeMachine._on_server_auth_frame,
    State.CHANGE_USER_SENT: HandshakeMachine._on_server_auth_frame,
    State.CHANGE_USER: HandshakeMachine._on_server_auth_frame,
}
"""Who takes a whole server frame in each state; in the others server bytes never reach the frame loop
(TLS_PENDING and REPLACEMENT_TLS_PENDING: injection, RELAY: passed through, CLOSED: dropped)."""

CLIENT_FRAME_HANDLERS: dict[State, Callable[[HandshakeMachine, bytes], list[Effect]]] = {
    State.CLIENT_RESPONSE: HandshakeMachine._on_client_response,
    State.REAUTH: HandshakeMachine._on_reauth_reply,
    State.AUTH: HandshakeMachine._on_client_auth_packet,
    State.CHANGE_USER: HandshakeMachine._on_client_auth_packet,
}
"""Who takes a whole client frame in each state. GREETING refuses the first client byte;
REPLACING and REPLACEMENT_TLS_PENDING keep client bytes buffered; CHANGE_USER_SENT holds them behind
the command; RELAY follows headers only (`_relay_client_data`)."""
