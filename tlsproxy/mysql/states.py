"""The handshake machine's states and every transition between them (h11's `_state.py` in spirit).

`TRANSITIONS` is the whole story: `HandshakeMachine._set_state` refuses a move that is not in it, and
the diagram in `tlsproxy.mysql.handshake`'s docstring is `render_transitions()` (a test keeps them
equal). Any state may also move to CLOSED: on an error, a final ERR, or when the connection ends.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    GREETING = "greeting"  # waiting for the upstream's greeting
    CLIENT_RESPONSE = "client_response"  # the client has the greeting; waiting for its HandshakeResponse
    TLS_PENDING = "tls_pending"  # SSLRequest sent; the driver runs the upstream TLS handshake
    REPLACING = "replacing_upstream"  # a prewarmed upstream did not fit: waiting for a fresh one's greeting
    REPLACEMENT_TLS_PENDING = "replacement_tls_pending"  # the fresh upstream's TLS handshake runs
    REAUTH = "reauth"  # the client answers the AuthSwitchRequest that carries the fresh nonce
    AUTH = "auth"  # authentication packets relayed, ids rewritten, RSA exchange played
    RELAY = "relay"  # logged in: bytes pass, client frame headers followed
    CHANGE_USER_SENT = "change_user_sent"  # COM_CHANGE_USER sent; the server has not answered yet
    CHANGE_USER = "change_user"  # the server answered COM_CHANGE_USER; re-authentication runs
    CLOSED = "closed"


TRANSITIONS: tuple[tuple[State, str, State], ...] = (
    (State.GREETING, "server greeting (or an adopted prewarmed one)", State.CLIENT_RESPONSE),
    (State.CLIENT_RESPONSE, "client response: SSLRequest sent", State.TLS_PENDING),
    (State.CLIENT_RESPONSE, "client response, TLS off or already up (pooled: as COM_CHANGE_USER)", State.AUTH),
    (State.CLIENT_RESPONSE, "client response unlike the prewarmed one", State.REPLACING),
    (State.REPLACING, "fresh upstream's greeting: SSLRequest sent", State.REPLACEMENT_TLS_PENDING),
    (State.REPLACING, "a pooled upstream that fits: COM_CHANGE_USER sent", State.AUTH),
    (State.TLS_PENDING, "tls_established: response sent up", State.AUTH),
    (State.REPLACEMENT_TLS_PENDING, "tls_established: AuthSwitchRequest sent", State.REAUTH),
    (State.REAUTH, "client's auth data: response sent up", State.AUTH),
    (State.AUTH, "server OK: StartRelay", State.RELAY),
    (State.AUTH, "pooled upstream gone before its first answer", State.REPLACING),
    (State.RELAY, "client COM_CHANGE_USER", State.CHANGE_USER_SENT),
    (State.CHANGE_USER_SENT, "server's first answer", State.CHANGE_USER),
    (State.CHANGE_USER, "server OK or ERR", State.RELAY),
)

ALLOWED: dict[State, frozenset[State]] = {
    state: frozenset({to for source, _, to in TRANSITIONS if source is state} | {State.CLOSED})
    for state in State
}
"""Where each state may go (CLOSED included from everywhere, and CLOSED to CLOSED)."""


def render_transitions() -> str:
    """The transition table as the diagram lines of the handshake module's docstring."""
    width = max(len(source.name) for source, _, _ in TRANSITIONS)
    lines = [f"{source.name:<{width}} ──{trigger}──▶ {to.name}" for source, trigger, to in TRANSITIONS]
    lines.append(f"{'any state':<{width}} ──error, final ERR or end of connection──▶ CLOSED")
    return "\n".join(lines)
