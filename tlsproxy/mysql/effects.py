"""What the handshake machine asks its driver to do (mitmproxy's "commands"): a closed vocabulary of
frozen effects, carried out by the driver in the order they are returned."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Union

from tlsproxy.outcome import Outcome


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
    """Authentication succeeded; from now on bytes flow opaquely (server bytes no longer pass the machine)."""


@dataclass(frozen=True, slots=True)
class ReplaceUpstream:
    """The prewarmed or pooled upstream connection does not fit this client (its SSLRequest differed):
    put it away and connect a fresh one (the machine then expects its greeting), or take a pooled one
    opened with this client's SSLRequest (`HandshakeMachine.use_pooled_replacement`)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ClientQuit:
    """The client sent COM_QUIT on a route with an upstream pool, and the machine held it back: the driver
    parks the upstream if it can (`HandshakeMachine.parkable`), else sends `quit` on as if relayed."""

    quit: bytes


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close both legs once what was sent is flushed; `outcome` is what the logs and metrics record."""

    outcome: Outcome
    reason: str


Effect = Union[SendToClient, SendToServer, StartUpstreamTls, StartRelay, ReplaceUpstream, ClientQuit, CloseConnection]


class AuthKey(Protocol):
    """The proxy's RSA key for the password exchange (implemented by tlsproxy.certs.AuthRsaKey)."""

    public_pem: bytes
    modulus_bytes: int

    def decrypt(self, ciphertext: bytes) -> bytes | None: ...

    def decrypt_pkcs1v15(self, ciphertext: bytes) -> bytes | None: ...
