"""A prewarmed upstream in the handshake machine (the pool itself is `tlsproxy.prewarm`).

The client gets the prewarmed connection's greeting. If its SSLRequest prefix is the one that connection
was upgraded with, its HandshakeResponse goes straight up (seq 2). If not (PROTOCOL.md §3.2: capabilities
and charset come from the SSLRequest), the machine asks for a fresh upstream (`ReplaceUpstream`),
upgrades it with the client's own SSLRequest, and has the client answer that connection's nonce through
an AuthSwitchRequest, whose answer replaces the auth data in the held HandshakeResponse (states
REPLACING, REPLACEMENT_TLS_PENDING, REAUTH), as MySQL Router does when it cannot use the first greeting.

A pooled upstream (a parked, reset connection: `tlsproxy.upstream_pool`) is adopted the same way; the
client's login then goes up as COM_CHANGE_USER (`MachineCore._login_payload`). When its SSLRequest prefix
does not fit, the driver either connects a fresh upstream as above or finds a parked connection that
fits (`use_pooled_replacement`: REPLACING to AUTH, the server's own AuthSwitchRequest brings its nonce).
"""

from __future__ import annotations

from tlsproxy.errors import ClientCapabilityError, ServerProtocolError
from tlsproxy.mysql.codec import Frame, FrameBuffer
from tlsproxy.mysql.constants import CLIENT_PLUGIN_AUTH
from tlsproxy.mysql.effects import CloseConnection, Effect, ReplaceUpstream, SendToServer, StartUpstreamTls
from tlsproxy.mysql.greeting import is_err_greeting, ssl_request_frame
from tlsproxy.mysql.machine_core import MachineCore
from tlsproxy.mysql.messages import AuthSwitchRequest, HandshakeResponse, InitialHandshake, parse_handshake_response
from tlsproxy.mysql.states import State
from tlsproxy.outcome import Outcome


class PrewarmAdoption(MachineCore):
    def adopt_prewarmed_upstream(self, greeting_payload: bytes, ssl_request: bytes) -> list[Effect]:
        """Start with an upstream connection that already sent `greeting_payload` (seq 0), received the
        SSLRequest `ssl_request` (seq 1) and finished TLS. Its greeting goes to the client; if the
        client's own SSLRequest prefix is the same, its HandshakeResponse follows on that connection,
        else the machine asks for a fresh upstream (`ReplaceUpstream`) and has the client answer that
        one's nonce through an AuthSwitchRequest (PROTOCOL.md §3.2: capabilities and charset come from
        the SSLRequest, so a prefix that differs cannot be used on the prewarmed connection)."""
        if self._state is not State.GREETING or not self.upstream_tls:
            raise RuntimeError(f"adopt_prewarmed_upstream in state {self._state}")
        self.prewarmed = True
        self._warm_ssl_request = ssl_request
        return self._step(lambda: self._on_greeting(Frame(0, greeting_payload)), ServerProtocolError, "upstream")

    def adopt_pooled_upstream(self, greeting_payload: bytes, ssl_request: bytes,
                              greeting: InitialHandshake | None = None) -> list[Effect]:
        """Start with a parked upstream connection (`tlsproxy.upstream_pool`): authenticated for an earlier
        client, then reset. Its own greeting goes to the client (server version, thread id, nonce); if
        the client's SSLRequest prefix is the one the connection was opened with, its HandshakeResponse
        goes up as COM_CHANGE_USER (seq 0), and whatever the server answers continues the client's login
        (PROTOCOL.md §6). If not, `ReplaceUpstream`, as for a prewarmed connection. `greeting`: the
        payload parsed when the connection was opened (the pool keeps it), so it is not parsed again."""
        if self._state is not State.GREETING or not self.upstream_tls:
            raise RuntimeError(f"adopt_pooled_upstream in state {self._state}")
        self.pooled = True
        self._warm_ssl_request = ssl_request
        return self._step(lambda: self._on_greeting(Frame(0, greeting_payload), greeting), ServerProtocolError,
                          "upstream")

    def use_pooled_replacement(self, greeting_payload: bytes, greeting: InitialHandshake | None = None,
                               ) -> list[Effect]:
        """After `ReplaceUpstream`, a parked connection opened with this client's own SSLRequest: the
        client's HandshakeResponse goes up as COM_CHANGE_USER. Its auth data answered another
        connection's nonce, but for a CLIENT_PLUGIN_AUTH client (required to get here) both servers
        discard it and start with an AuthSwitchRequest carrying this connection's nonce (PROTOCOL.md §6).
        `greeting`: as for `adopt_pooled_upstream`."""
        if self._state is not State.REPLACING:
            raise RuntimeError(f"use_pooled_replacement in state {self._state}")

        def step() -> list[Effect]:
            self._take_greeting(Frame(0, greeting_payload), greeting)
            self.pooled = True
            self.prewarm_mismatch = False
            self._set_state(State.AUTH)
            return self._send_client_response_upstream()

        return self._step(step, ServerProtocolError, "upstream")

    def pooled_upstream_lost(self) -> list[Effect]:
        """The pooled upstream closed before the server answered anything for this client (a connection a
        firewall dropped while parked, seen only now): go on with another upstream as if the parked one
        had not fit (`ReplaceUpstream`), so the client sees no error. [] when that is no longer possible
        (the server or the proxy already answered the client): the driver fails the connection as usual."""
        if not self.pooled or self._state is State.CLOSED:
            return []
        if self._state is State.CLIENT_RESPONSE:
            self._upstream_gone = True  # the client's response asks for another upstream (`ReplaceUpstream`)
            return []
        if self._state is not State.AUTH or self._client_seq != 2 or self.rsa_exchange_emulated:
            return []  # the client saw a server packet (or the proxy's key): too late to start over
        assert self.client_response is not None
        if not self.client_response.capability_flags & CLIENT_PLUGIN_AUTH:
            return []
        self.pooled = False
        self.prewarm_mismatch = True
        self._warm_ssl_request = None
        self._server_frames = FrameBuffer(self._max_packet)
        if self._rsa is not None:
            self._rsa.finished()
        self._auth_packets = 0
        self._set_state(State.REPLACING)
        return [ReplaceUpstream("the pooled upstream connection was gone")]

    def _replace_prewarmed_upstream(self, response: HandshakeResponse) -> list[Effect]:
        if not response.capability_flags & CLIENT_PLUGIN_AUTH:
            what, key = ("pooled", "upstream_pool") if self.pooled else ("prewarmed", "prewarm")
            raise ClientCapabilityError(
                f"this client's capabilities differ from the {what} upstream connection's, and it cannot "
                f"answer an AuthSwitchRequest (no CLIENT_PLUGIN_AUTH); set {key}: 0 on this route",
            )
        self.prewarm_mismatch = True
        self.pooled = False
        self._warm_ssl_request = None
        self._server_frames = FrameBuffer(self._max_packet)
        self._set_state(State.REPLACING)
        return [ReplaceUpstream("the client's SSLRequest differs from the prewarmed connection's")]

    def _on_replacement_greeting(self, frame: Frame) -> list[Effect]:
        """The fresh upstream that replaces a prewarmed one greeted: upgrade it with this client's own
        SSLRequest. Its nonce reaches the client in an AuthSwitchRequest once TLS is up."""
        if is_err_greeting(frame):
            self._set_state(State.CLOSED)
            return [self._to_client(frame.payload),
                    CloseConnection(Outcome.UPSTREAM_ERROR, "upstream refused with an ERR greeting")]
        self._take_greeting(frame)
        self._check_nothing_before_tls()
        self._server_seq = 2
        self._set_state(State.REPLACEMENT_TLS_PENDING)
        return [SendToServer(ssl_request_frame(self.ssl_request)), StartUpstreamTls()]

    def _send_reauth_switch(self) -> list[Effect]:
        assert self.client_response is not None and self.greeting is not None
        plugin = self.client_response.auth_plugin_name or self.greeting.auth_plugin_name
        self.auth_plugin = plugin
        switch = AuthSwitchRequest(plugin, self._nonce + b"\x00")
        self._answered_nonce = self._nonce
        return [self._to_client(switch.encode_payload())]

    def _on_reauth_reply(self, payload: bytes) -> list[Effect]:
        """The client's auth data for the fresh nonce replaces the one in its HandshakeResponse, which
        then goes to the fresh upstream as usual (seq 2)."""
        self._client_response_payload = self._response_with_auth(payload, "the client's auth data is too long "
                                                                           "for its handshake format")
        self.client_response = parse_handshake_response(self._client_response_payload)
        self._set_state(State.AUTH)
        return self._send_client_response_upstream()
