"""The server's side of the RSA password exchange, played by the proxy (PROTOCOL.md §5.3, §5.4).

Upstream of the proxy the link is TLS, so for caching_sha2_password full authentication and for
sha256_password the server wants the cleartext password. The client only sees a plaintext link, so it
asks for an RSA public key and sends the password encrypted: the proxy answers with its own key,
decrypts, and sends the password upstream inside TLS. Bytes in, bytes (or a refusal) out: the
handshake machine frames what this returns and keeps the sequence ids.

What the client is expected to send next is this small machine's state (`Expect`).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Union

from tlsproxy.errors import AuthEmulationError
from tlsproxy.mysql.constants import (
    CACHING_SHA2_PERFORM_FULL_AUTH,
    CACHING_SHA2_REQUEST_PUBLIC_KEY,
    NONCE_SIZE,
    SHA256_REQUEST_PUBLIC_KEY,
    AuthPlugin,
    PacketHeader,
)
from tlsproxy.mysql.effects import AuthKey

_OLD_RSA_PADDING_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)")
_FULL_AUTH_REQUESTS = (bytes((PacketHeader.AUTH_MORE_DATA, CACHING_SHA2_PERFORM_FULL_AUTH)),
                       bytes((CACHING_SHA2_PERFORM_FULL_AUTH,)))
_UNREADABLE = ("the client answered the password request with data the proxy cannot read; if the client is "
               "configured with the server's RSA public key, point it at the proxy's key instead")


class Expect(enum.Enum):
    """What the exchange expects next from the client."""

    NOTHING = enum.auto()  # the exchange is not running: client packets pass unchanged
    FULL_AUTH_REPLY = enum.auto()  # after caching_sha2's perform-full-auth: key request, ciphertext or cleartext
    SHA256_FIRST = enum.auto()  # after a switch to sha256_password: key request, ciphertext or cleartext
    CIPHERTEXT = enum.auto()  # after the proxy sent its public key
    INITIAL_CIPHERTEXT = enum.auto()  # sha256 key request inside the HandshakeResponse (§5.4)


@dataclass(frozen=True, slots=True)
class ToClient:
    """Answer the client with this payload (the proxy's public key)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class ToServer:
    """Send this payload upstream as the client's next authentication packet."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PasswordInResponse:
    """Put this cleartext password (NUL-terminated) in the held HandshakeResponse and send it upstream."""

    password: bytes


Step = Union[ToClient, ToServer, PasswordInResponse]


class RsaExchange:
    def __init__(self, key: AuthKey) -> None:
        self._key = key
        self.server_version = ""
        """The upstream's, from its greeting (old servers' clients pad RSA differently)."""
        self.expect = Expect.NOTHING
        self.emulated = False
        """True once the proxy sent its key or decrypted a password (logged and counted)."""

    # ---- what the server says --------------------------------------------------------------------

    def server_switched(self, plugin: str) -> None:
        """An AuthSwitchRequest to `plugin` went to the client."""
        self.expect = Expect.SHA256_FIRST if plugin == AuthPlugin.SHA256 else Expect.NOTHING

    def server_wants_full_auth(self, plugin: str, payload: bytes) -> bytes | None:
        """caching_sha2's perform_full_authentication (upstream, on TLS, wants the cleartext password):
        the payload to ask the client with, in the MySQL form (0x01-wrapped) every client library reads;
        None for any other packet."""
        if plugin != AuthPlugin.CACHING_SHA2 or payload not in _FULL_AUTH_REQUESTS:
            return None
        self.expect = Expect.FULL_AUTH_REPLY
        return _FULL_AUTH_REQUESTS[0]

    def finished(self) -> None:
        """The server ended the exchange (OK or ERR), or a new one starts (COM_CHANGE_USER)."""
        self.expect = Expect.NOTHING

    # ---- what the client says ------------------------------------------------------------------

    def initial_response(self, auth_response: bytes, nonce: bytes) -> Step | None:
        """sha256_password's auth data inside the HandshakeResponse (§5.4): a key request is answered
        here and the response held; a ciphertext is decrypted into the response. None: send it as is."""
        if auth_response == bytes((SHA256_REQUEST_PUBLIC_KEY,)):
            self.expect = Expect.INITIAL_CIPHERTEXT
            return self._public_key()
        if len(auth_response) == self._key.modulus_bytes:
            return PasswordInResponse(self._decrypt_password(auth_response, nonce))
        return None

    def client_packet(self, payload: bytes, nonce: bytes) -> Step:
        """The client's next authentication packet while the exchange runs."""
        expect, key_size = self.expect, self._key.modulus_bytes
        if expect is Expect.NOTHING:
            return ToServer(payload)
        if expect in (Expect.INITIAL_CIPHERTEXT, Expect.CIPHERTEXT):
            if len(payload) != key_size:
                raise AuthEmulationError(f"expected an RSA-encrypted password of {key_size} bytes")
            password = self._decrypt_password(payload, nonce)
            if expect is Expect.INITIAL_CIPHERTEXT:
                return PasswordInResponse(password)
            return ToServer(password + b"\x00")
        key_request = CACHING_SHA2_REQUEST_PUBLIC_KEY if expect is Expect.FULL_AUTH_REPLY else SHA256_REQUEST_PUBLIC_KEY
        if payload == bytes((key_request,)):
            self.expect = Expect.CIPHERTEXT
            return self._public_key()
        if len(payload) == key_size:
            # RSA ciphertext: under the proxy's key, or (client configured with the server's key) not
            # readable at all -- then refuse here rather than send it upstream as a password.
            return ToServer(self._decrypt_password(payload, nonce) + b"\x00")
        empty_password = expect is Expect.SHA256_FIRST and payload in (b"", b"\x00")
        if empty_password or payload.endswith(b"\x00"):
            # A client that believes its link is secure sends the cleartext password (PROTOCOL.md §5.3
            # product decision: the local leg is the operator's trust boundary). Upstream gets it inside TLS.
            self.expect = Expect.NOTHING
            return ToServer(payload)
        raise AuthEmulationError(_UNREADABLE)

    # ---- helpers -------------------------------------------------------------------------------

    def _public_key(self) -> ToClient:
        self.emulated = True
        return ToClient(bytes((PacketHeader.AUTH_MORE_DATA,)) + self._key.public_pem)

    def _decrypt_password(self, ciphertext: bytes, nonce: bytes) -> bytes:
        """RSA-OAEP(SHA-1) decrypt, XOR with the current nonce (NUL included), strip the NUL (§5.3)."""
        plain = self._key.decrypt(ciphertext)
        if plain is None and self._server_version_before_8_0_5():
            plain = self._key.decrypt_pkcs1v15(ciphertext)  # Connector/J's padding for old servers
        nonce = nonce[:NONCE_SIZE]
        if plain is None or not nonce:
            raise AuthEmulationError(
                "could not decrypt the password with the proxy's RSA key; if the client is configured "
                "with the server's public key, point it at the proxy's key instead",
            )
        password = bytes(byte ^ nonce[i % len(nonce)] for i, byte in enumerate(plain))
        end = password.find(b"\x00")
        if end < 0:
            raise AuthEmulationError("the decrypted password is not NUL-terminated")
        self.expect = Expect.NOTHING
        self.emulated = True
        return password[:end]

    def _server_version_before_8_0_5(self) -> bool:
        # Connector/J parses the version as sent: MariaDB 10.x's "5.5.5-" prefix reads as 5.5.5.
        match = _OLD_RSA_PADDING_VERSION.match(self.server_version)
        return bool(match) and tuple(int(part) for part in match.groups()) < (8, 0, 5)
