"""A spec-faithful MySQL 8.0 server peer for tests.

No installable server speaks MySQL 8's ``caching_sha2_password`` and
``sha256_password``, so this module emulates the parts of mysqld that matter
to tlsproxy, modelled on ``sql/auth/sql_authentication.cc`` and
``sql/auth/sha2_password.cc`` (see ``docs/PROTOCOL.md`` §1-§8):

* HandshakeV10 greeting with a 20-byte nonce made like ``generate_user_salt``
  (bytes 1..127, never NUL or ``'$'``, then a NUL).
* SSLRequest -> server-side TLS.  Capabilities are taken from the SSLRequest;
  the post-TLS HandshakeResponse is only parsed from byte 32 on.
* One sequence counter per connection, as ``NET::pkt_nr``: the ids run on
  across the TLS upgrade (greeting 0, SSLRequest 1, response 2, reply 3...).
* The ``MPVIO`` state machine: the first plugin packet rides in the greeting,
  a plugin restarted for a different account plugin sends an
  AuthSwitchRequest, and every later plugin packet is wrapped as AuthMoreData
  (``0x01`` prefix).
* caching_sha2_password (cache, ``01 03`` / ``01 04``, cleartext on TLS,
  ``0x02`` public-key request and RSA-OAEP(SHA-1) + XOR-with-nonce on plain
  TCP), sha256_password (no cache, ``0x01`` key request) and
  mysql_native_password.
* COM_CHANGE_USER re-runs the plugin of the target account: the server
  "pretends a handshake was sent", so the plugin's first write becomes an
  AuthSwitchRequest.  The sha2 plugins always generate a fresh nonce;
  mysql_native_password reuses the connection's saved scramble (the server
  only resets it on COM_CONNECT).
* A tiny command phase so real clients can connect and run a few queries.

Passwords received from clients are only compared and then dropped; the
caching_sha2 cache stores SHA256(SHA256(password)) exactly like mysqld.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import ssl
import struct
import threading
from dataclasses import dataclass
from typing import Literal, Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = ["PeerAccount", "MySQL8Peer", "PeerThread"]

# --------------------------------------------------------------------------
# constants
# --------------------------------------------------------------------------

CLIENT_LONG_PASSWORD = 0x00000001
CLIENT_FOUND_ROWS = 0x00000002
CLIENT_LONG_FLAG = 0x00000004
CLIENT_CONNECT_WITH_DB = 0x00000008
CLIENT_NO_SCHEMA = 0x00000010
CLIENT_COMPRESS = 0x00000020
CLIENT_ODBC = 0x00000040
CLIENT_LOCAL_FILES = 0x00000080
CLIENT_IGNORE_SPACE = 0x00000100
CLIENT_PROTOCOL_41 = 0x00000200
CLIENT_INTERACTIVE = 0x00000400
CLIENT_SSL = 0x00000800
CLIENT_IGNORE_SIGPIPE = 0x00001000
CLIENT_TRANSACTIONS = 0x00002000
CLIENT_SECURE_CONNECTION = 0x00008000
CLIENT_MULTI_STATEMENTS = 0x00010000
CLIENT_MULTI_RESULTS = 0x00020000
CLIENT_PS_MULTI_RESULTS = 0x00040000
CLIENT_PLUGIN_AUTH = 0x00080000
CLIENT_CONNECT_ATTRS = 0x00100000
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 0x00200000
CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS = 0x00400000
CLIENT_SESSION_TRACK = 0x00800000
CLIENT_DEPRECATE_EOF = 0x01000000
CLIENT_ZSTD_COMPRESSION_ALGORITHM = 0x04000000
CLIENT_SSL_VERIFY_SERVER_CERT = 0x40000000

BASE_SERVER_CAPABILITIES = (
    CLIENT_LONG_PASSWORD
    | CLIENT_FOUND_ROWS
    | CLIENT_LONG_FLAG
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_NO_SCHEMA
    | CLIENT_ODBC
    | CLIENT_LOCAL_FILES
    | CLIENT_IGNORE_SPACE
    | CLIENT_PROTOCOL_41
    | CLIENT_INTERACTIVE
    | CLIENT_IGNORE_SIGPIPE
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_PLUGIN_AUTH
    | CLIENT_CONNECT_ATTRS
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS
    | CLIENT_SESSION_TRACK
    | CLIENT_DEPRECATE_EOF
)
TLS_SERVER_CAPABILITIES = CLIENT_SSL | CLIENT_SSL_VERIFY_SERVER_CERT

SERVER_STATUS_AUTOCOMMIT = 0x0002
DEFAULT_CHARSET = 255  # utf8mb4_0900_ai_ci
BINARY_CHARSET = 63

COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_PING = 0x0E
COM_CHANGE_USER = 0x11
COM_RESET_CONNECTION = 0x1F

SCRAMBLE_LENGTH = 20
MAX_PACKET = 0xFFFFFF
MAX_TOTAL_PAYLOAD = 64 * 1024 * 1024

PLUGIN_CACHING_SHA2 = "caching_sha2_password"
PLUGIN_SHA256 = "sha256_password"
PLUGIN_NATIVE = "mysql_native_password"
KNOWN_PLUGINS = (PLUGIN_CACHING_SHA2, PLUGIN_SHA256, PLUGIN_NATIVE)

# caching_sha2_password state bytes (sha2_password.cc)
FAST_AUTH_SUCCESS = 3
PERFORM_FULL_AUTHENTICATION = 4
CACHING_SHA2_REQUEST_PUBLIC_KEY = 2
SHA256_REQUEST_PUBLIC_KEY = 1
CACHING_SHA2_DIGEST_LENGTH = 32
CACHING_SHA2_PASSWORD_MAX_PASSWORD_LENGTH = 100
SHA256_PASSWORD_MAX_PASSWORD_LENGTH = 256

# plugin results (plugin_auth_common.h)
CR_OK = -1
CR_ERROR = 0
CR_AUTH_HANDSHAKE = 2
CR_AUTH_USER_CREDENTIALS = 3

# column types
MYSQL_TYPE_LONGLONG = 0x08
MYSQL_TYPE_VAR_STRING = 0xFD
NOT_NULL_FLAG = 0x0001
BINARY_FLAG = 0x0080
NUM_FLAG = 0x8000

ER_HANDSHAKE_ERROR = (1043, "08S01", "Bad handshake")
ER_UNKNOWN_COM_ERROR = (1047, "08S01", "Unknown command")


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def generate_user_salt() -> bytes:
    """20 bytes exactly as mysqld's ``generate_user_salt`` (without the NUL)."""
    out = bytearray(os.urandom(SCRAMBLE_LENGTH))
    for i, b in enumerate(out):
        b &= 0x7F
        if b == 0 or b == ord("$"):
            b += 1
        out[i] = b
    return bytes(out)


def lenenc_int(n: int) -> bytes:
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + struct.pack("<H", n)
    if n < 1 << 24:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)


def lenenc_str(s: bytes) -> bytes:
    return lenenc_int(len(s)) + s


def _xor(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % len(key)] for i, b in enumerate(data))


def _sha1(*parts: bytes) -> bytes:
    h = hashlib.sha1()
    for p in parts:
        h.update(p)
    return h.digest()


def _sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


class _Malformed(Exception):
    """Malformed packet or sequence-id error: answer 1043 and close."""


class _Closed(Exception):
    """The client went away."""


class _Reader:
    """Bounds-checked cursor over a packet payload (raises _Malformed)."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data = data
        self.pos = pos

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Malformed("short packet")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def nul_str(self) -> bytes:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise _Malformed("missing NUL terminator")
        out = self.data[self.pos : end]
        self.pos = end + 1
        return out

    def lenenc(self) -> int:
        first = self.u8()
        if first < 0xFB:
            return first
        if first == 0xFC:
            return struct.unpack("<H", self.take(2))[0]
        if first == 0xFD:
            return int.from_bytes(self.take(3), "little")
        if first == 0xFE:
            return struct.unpack("<Q", self.take(8))[0]
        raise _Malformed("bad length-encoded integer")


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


@dataclass
class PeerAccount:
    user: str
    password: str
    plugin: Literal["caching_sha2_password", "sha256_password", "mysql_native_password"]
    require_ssl: bool = False


@dataclass
class _Account:
    user: str
    password: str | None  # None: decoy for an unknown user
    plugin: str
    require_ssl: bool = False
    host: str = "%"

    @property
    def can_authenticate(self) -> bool:
        return self.password is not None


class MySQL8Peer:
    """An asyncio MySQL 8.0 server emulation for tests (see module doc)."""

    def __init__(
        self,
        *,
        accounts: Sequence[PeerAccount],
        ssl_context: ssl.SSLContext | None,
        default_plugin: str = PLUGIN_CACHING_SHA2,
        server_version: str = "8.0.36-tlsproxy-peer",
        rsa_private_key_pem: bytes | None = None,
        host: str = "127.0.0.1",
    ):
        if default_plugin not in KNOWN_PLUGINS:
            raise ValueError(f"unknown default plugin {default_plugin!r}")
        self._accounts: dict[str, _Account] = {}
        for acc in accounts:
            if acc.plugin not in KNOWN_PLUGINS:
                raise ValueError(f"unknown plugin {acc.plugin!r}")
            self._accounts[acc.user] = _Account(acc.user, acc.password, acc.plugin, acc.require_ssl)
        self.ssl_context = ssl_context
        self.default_plugin = default_plugin
        self.server_version = server_version
        self.host = host
        if rsa_private_key_pem is None:
            self._rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = serialization.load_pem_private_key(rsa_private_key_pem, password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError("rsa_private_key_pem must hold an RSA private key")
            self._rsa_key = key
        self.public_key_pem: bytes = self._rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.server_capabilities = BASE_SERVER_CAPABILITIES | (
            TLS_SERVER_CAPABILITIES if ssl_context is not None else 0
        )
        self.port: int = 0
        self.events: list[str] = []
        self.errors: list[BaseException] = []  # unexpected exceptions in sessions (peer bugs)
        self.queries: list[str] = []  # COM_QUERY texts seen (debug aid)
        # caching_sha2 cache: "user@host" -> SHA256(SHA256(password))
        self._sha2_cache: dict[str, bytes] = {}
        self._server: asyncio.base_events.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task] = set()
        self._next_conn_id = 8
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(lambda: _Link(self), self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def flush_cache(self) -> None:
        """Empty the caching_sha2 cache: the next login needs full auth."""
        self._sha2_cache.clear()

    # -- internals --------------------------------------------------------

    def _log(self, event: str) -> None:
        self.events.append(event)

    def _find_account(self, user: str) -> _Account:
        acc = self._accounts.get(user)
        if acc is None:
            # find_mpvio_user(): pretend the user exists, with the default plugin
            return _Account(user, None, self.default_plugin)
        return acc

    def _decrypt(self, ciphertext: bytes) -> bytes | None:
        try:
            return self._rsa_key.decrypt(
                ciphertext,
                padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
            )
        except ValueError:
            return None

    @property
    def _cipher_length(self) -> int:
        return self._rsa_key.key_size // 8

    def _on_link(self, link: _Link) -> None:
        self._links.add(link)
        conn_id = self._next_conn_id
        self._next_conn_id += 1
        session = _Session(self, link, conn_id)
        task = asyncio.get_running_loop().create_task(session.run())
        self._tasks.add(task)

        def _done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            self._links.discard(link)
            if not t.cancelled() and t.exception() is not None:
                self.errors.append(t.exception())  # type: ignore[arg-type]

        task.add_done_callback(_done)


# --------------------------------------------------------------------------
# transport glue
# --------------------------------------------------------------------------


class _Link(asyncio.BufferedProtocol):
    """Byte pipe.  Until the first client packet is complete it reads exactly
    one frame at a time and pauses, so no byte of a TLS ClientHello that
    follows an SSLRequest is consumed before ``loop.start_tls`` takes over."""

    def __init__(self, peer: MySQL8Peer):
        self.peer = peer
        self.transport: asyncio.BaseTransport | None = None
        self.exact = True
        self._buf = bytearray()
        self._frame = bytearray()  # bytes of the frame in flight (exact mode)
        self._scratch = bytearray(65536)
        self._eof = False
        self._waiter: asyncio.Future | None = None

    # protocol callbacks
    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport
        self.peer._on_link(self)

    def _frame_remaining(self) -> int:
        if len(self._frame) < 4:
            return 4 - len(self._frame)
        need = 4 + int.from_bytes(self._frame[:3], "little")
        return max(need - len(self._frame), 0)

    def get_buffer(self, sizehint):  # type: ignore[override]
        if self.exact:
            n = self._frame_remaining() or 1
            return memoryview(self._scratch)[: min(n, len(self._scratch))]
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes):  # type: ignore[override]
        data = self._scratch[:nbytes]
        self._buf += data
        if self.exact:
            self._frame += data
            if self._frame_remaining() == 0:
                # one whole frame is in: stop until the session decides what
                # comes next (a TLS handshake must not be read by us)
                del self._frame[:]
                self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def eof_received(self):  # type: ignore[override]
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc):  # type: ignore[override]
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # API for the session
    async def read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            if self._eof:
                raise _Closed()
            if self.exact and self.transport is not None:
                try:
                    if not self.transport.is_reading():  # type: ignore[attr-defined]
                        self.transport.resume_reading()  # type: ignore[attr-defined]
                except (AttributeError, RuntimeError):
                    pass
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def stop_exact(self) -> None:
        if self.exact:
            self.exact = False
            try:
                self.transport.resume_reading()  # type: ignore[union-attr]
            except (AttributeError, RuntimeError):
                pass

    async def start_tls(self, ctx: ssl.SSLContext) -> asyncio.BaseTransport:
        if self._buf:  # cannot happen with exact reads; never hand TLS bytes to the app
            raise _Malformed("bytes buffered before TLS")
        self.exact = False
        loop = asyncio.get_running_loop()
        new_transport = await loop.start_tls(
            self.transport, self, ctx, server_side=True, ssl_handshake_timeout=15  # type: ignore[arg-type]
        )
        if new_transport is None:
            raise _Closed()
        self.transport = new_transport
        return new_transport

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)  # type: ignore[attr-defined]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            try:
                self.transport.abort()  # type: ignore[attr-defined]
            except Exception:
                self.transport.close()


# --------------------------------------------------------------------------
# authentication state machine (MPVIO_EXT)
# --------------------------------------------------------------------------

_CLIENT_PLUGIN_FOR = {
    PLUGIN_CACHING_SHA2: PLUGIN_CACHING_SHA2,
    PLUGIN_SHA256: PLUGIN_SHA256,
    PLUGIN_NATIVE: PLUGIN_NATIVE,
}


class _MPVIO:
    FAILURE, RESTART, SUCCESS = "FAILURE", "RESTART", "SUCCESS"

    def __init__(self, session: _Session):
        self.s = session
        self.packets_written = 0
        self.packets_read = 0
        self.status = self.FAILURE
        self.plugin = ""  # server plugin now running
        self.cached_reply: bytes | None = None
        self.cached_reply_plugin = ""
        self.cached_server_packet = b""
        self.acl_user: _Account | None = None
        self.user_name = ""
        self.password_used = False
        self.error: tuple[int, str, str] | None = None  # first error wins
        self.db = b""

    def set_error(self, err: tuple[int, str, str]) -> None:
        if self.error is None:
            self.error = err

    @property
    def client_auth_plugin(self) -> str:
        return _CLIENT_PLUGIN_FOR[self.plugin]

    # server_mpvio_write_packet
    async def write_packet(self, data: bytes) -> None:
        s = self.s
        if s.client_caps & CLIENT_PLUGIN_AUTH:
            self.cached_reply = None
        if self.packets_written == 0:
            self.cached_server_packet = data
            s.send_greeting(data)
        elif self.status == self.RESTART:
            self.status = self.FAILURE
            s.send_auth_switch(self.client_auth_plugin, data)
        else:
            s.write_packet(b"\x01" + data)  # AuthMoreData wrap, always
        self.packets_written += 1

    # server_mpvio_read_packet; None means "-1"
    async def read_packet(self) -> bytes | None:
        s = self.s
        if self.cached_reply is not None:
            if self.cached_reply_plugin == self.client_auth_plugin:
                self.status = self.FAILURE
                pkt, self.cached_reply = self.cached_reply, None
                self.packets_read += 1
                return pkt
            if not (s.client_caps & CLIENT_PLUGIN_AUTH):
                self.status = self.FAILURE
                self.set_error(ER_HANDSHAKE_ERROR)
                return None
            await self.write_packet(b"")
        pkt = await s.read_packet()
        self.packets_read += 1
        if self.packets_read == 1:
            return await s.parse_client_handshake(self, pkt)
        return pkt


class _Session:
    def __init__(self, peer: MySQL8Peer, link: _Link, conn_id: int):
        self.peer = peer
        self.link = link
        self.conn_id = conn_id
        self.seq = 0
        self.client_caps = 0
        self.charset = DEFAULT_CHARSET
        self.tls = False
        self.cipher = ""
        self.tls_version = ""
        self.thd_scramble: bytes | None = None  # thd->scramble; None = "no scramble yet"
        self.account: _Account | None = None
        self.autocommit = True
        self.database = b""
        try:
            self.client_host = link.transport.get_extra_info("peername")[0]  # type: ignore[union-attr]
        except Exception:
            self.client_host = "unknown"

    # -- framing ---------------------------------------------------------

    async def read_packet(self) -> bytes:
        payload = bytearray()
        while True:
            header = await self.link.read_exact(4)
            length = int.from_bytes(header[:3], "little")
            seq = header[3]
            if seq != self.seq:
                raise _Malformed(f"packet sequence number wrong: got {seq}, expected {self.seq}")
            self.seq = (self.seq + 1) & 0xFF
            payload += await self.link.read_exact(length)
            if len(payload) > MAX_TOTAL_PAYLOAD:
                raise _Malformed("packet too large")
            if length < MAX_PACKET:
                return bytes(payload)

    def write_packet(self, payload: bytes) -> None:
        out = bytearray()
        pos = 0
        while True:
            chunk = payload[pos : pos + MAX_PACKET]
            out += len(chunk).to_bytes(3, "little") + bytes([self.seq])
            out += chunk
            self.seq = (self.seq + 1) & 0xFF
            pos += len(chunk)
            if len(chunk) < MAX_PACKET:
                break
        self.link.write(bytes(out))

    @property
    def status_flags(self) -> int:
        return SERVER_STATUS_AUTOCOMMIT if self.autocommit else 0

    def send_ok(self, header: int = 0x00, affected: int = 0) -> None:
        self.write_packet(
            bytes([header]) + lenenc_int(affected) + lenenc_int(0) + struct.pack("<HH", self.status_flags, 0)
        )

    def send_eof(self) -> None:
        self.write_packet(b"\xfe" + struct.pack("<HH", 0, self.status_flags))

    def send_err(self, code: int, state: str, message: str) -> None:
        body = b"\xff" + struct.pack("<H", code)
        if self.client_caps & CLIENT_PROTOCOL_41:
            body += b"#" + state.encode("ascii")
        body += message.encode("utf-8")
        self.write_packet(body)

    # -- connection phase packets -------------------------------------------

    def send_greeting(self, auth_data: bytes) -> None:
        if len(auth_data) != SCRAMBLE_LENGTH + 1:
            raise AssertionError("greeting needs a 20-byte nonce + NUL")
        caps = self.peer.server_capabilities
        pkt = bytearray(b"\x0a")
        pkt += self.peer.server_version.encode() + b"\0"
        pkt += struct.pack("<I", self.conn_id)
        pkt += auth_data[:8] + b"\0"
        pkt += struct.pack("<H", caps & 0xFFFF)
        pkt += bytes([DEFAULT_CHARSET])
        pkt += struct.pack("<H", SERVER_STATUS_AUTOCOMMIT)
        pkt += struct.pack("<H", caps >> 16)
        pkt += bytes([len(auth_data)])  # 21
        pkt += b"\0" * 10
        pkt += auth_data[8:]  # 12 bytes + NUL
        pkt += self.peer.default_plugin.encode() + b"\0"
        self.write_packet(bytes(pkt))

    def send_auth_switch(self, plugin: str, data: bytes) -> None:
        self.peer._log("auth_switch")
        self.write_packet(b"\xfe" + plugin.encode() + b"\0" + data)

    async def parse_client_handshake(self, mpvio: _MPVIO, pkt: bytes) -> bytes | None:
        """parse_client_handshake_packet(); returns the auth data or None."""
        if len(pkt) < 2:
            raise _Malformed("short handshake response")
        caps = struct.unpack("<H", pkt[:2])[0]
        if not (caps & CLIENT_PROTOCOL_41):
            raise _Malformed("pre-4.1 clients are not supported by the peer")
        if len(pkt) < 32:
            raise _Malformed("short handshake response")
        self.client_caps = struct.unpack("<I", pkt[:4])[0]
        self.charset = pkt[8]
        if self.client_caps & CLIENT_SSL:
            ctx = self.peer.ssl_context
            if ctx is None:
                raise _Malformed("SSL requested but not configured")
            transport = await self.link.start_tls(ctx)
            sslobj = transport.get_extra_info("ssl_object")
            self.tls = True
            if sslobj is not None:
                self.cipher = (sslobj.cipher() or ("",))[0]
                self.tls_version = sslobj.version() or ""
            self.peer._log("tls")
            pkt = await self.read_packet()
            if len(pkt) < 32:
                raise _Malformed("short handshake response after TLS")
        else:
            self.link.stop_exact()

        r = _Reader(pkt, 32)
        user = r.nul_str()
        if self.client_caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
            auth = r.take(r.lenenc())
        else:
            n = r.u8()
            auth = r.take(n)
        db = b""
        if self.client_caps & CLIENT_CONNECT_WITH_DB:
            db = r.nul_str()
        client_plugin = ""
        if self.client_caps & CLIENT_PLUGIN_AUTH and r.remaining:
            end = pkt.find(b"\0", r.pos)
            if end >= 0:
                client_plugin = pkt[r.pos : end].decode("ascii", "replace")
                r.pos = end + 1
            else:
                client_plugin = ""
                r.pos = len(pkt)
        if self.client_caps & CLIENT_CONNECT_ATTRS and r.remaining:
            self._read_connect_attrs(r)
        if auth:
            mpvio.password_used = True

        user_s = user.decode("utf-8", "replace")
        if len(user_s) > 1 and user_s[0] == "'" and user_s[-1] == "'":
            user_s = user_s[1:-1]
        mpvio.user_name = user_s
        mpvio.db = db
        mpvio.acl_user = self.peer._find_account(user_s)
        if not (self.client_caps & CLIENT_PLUGIN_AUTH):
            client_plugin = PLUGIN_NATIVE

        if mpvio.acl_user.plugin != mpvio.plugin:
            mpvio.cached_reply = auth
            mpvio.cached_reply_plugin = client_plugin
            mpvio.status = _MPVIO.RESTART
            return None

        if client_plugin != mpvio.client_auth_plugin:
            # same server plugin, wrong client plugin: ask the client to switch,
            # re-sending the data of the greeting (same nonce)
            self.send_auth_switch(mpvio.client_auth_plugin, mpvio.cached_server_packet)
            return await self.read_packet()
        return auth

    def _read_connect_attrs(self, r: _Reader) -> None:
        total = r.lenenc()
        if total > r.remaining or total > 65535:
            raise _Malformed("bad connection attributes")
        block = _Reader(r.take(total))
        while block.remaining:
            block.take(block.lenenc())
            block.take(block.lenenc())

    def parse_change_user(self, mpvio: _MPVIO, pkt: bytes) -> None:
        """parse_com_change_user_packet(); pkt includes the 0x11 byte."""
        r = _Reader(pkt, 1)
        user = r.nul_str()
        n = r.u8()  # clients always send a 1-byte length here
        auth = r.take(n)
        db = r.nul_str()
        client_plugin = PLUGIN_NATIVE
        if r.remaining >= 2:
            charset = struct.unpack("<H", r.take(2))[0]
            if charset:
                self.charset = charset & 0xFF
            if self.client_caps & CLIENT_PLUGIN_AUTH:
                client_plugin = r.nul_str().decode("ascii", "replace")
            if self.client_caps & CLIENT_CONNECT_ATTRS and r.remaining:
                self._read_connect_attrs(r)
        elif self.client_caps & CLIENT_PLUGIN_AUTH:
            raise _Malformed("COM_CHANGE_USER without plugin name")
        user_s = user.decode("utf-8", "replace")
        mpvio.user_name = user_s
        mpvio.db = db
        mpvio.acl_user = self.peer._find_account(user_s)
        mpvio.cached_reply = auth
        mpvio.cached_reply_plugin = client_plugin
        mpvio.status = _MPVIO.RESTART

    # -- server plugins ----------------------------------------------------

    async def _plugin_native(self, vio: _MPVIO) -> int:
        if self.thd_scramble is None:
            self.thd_scramble = generate_user_salt()
        scramble = self.thd_scramble
        await vio.write_packet(scramble + b"\0")
        pkt = await vio.read_packet()
        if pkt is None:
            return CR_AUTH_HANDSHAKE
        acc = vio.acl_user
        assert acc is not None
        if len(pkt) == 0:
            return CR_OK if acc.password == "" else CR_AUTH_USER_CREDENTIALS
        vio.password_used = True
        self.peer._log("native")
        if len(pkt) == SCRAMBLE_LENGTH:
            if not acc.password:
                return CR_AUTH_USER_CREDENTIALS
            stage2 = _sha1(_sha1(acc.password.encode()))
            candidate = _xor(pkt, _sha1(scramble, stage2))
            return CR_OK if hmac.compare_digest(_sha1(candidate), stage2) else CR_AUTH_USER_CREDENTIALS
        vio.set_error(ER_HANDSHAKE_ERROR)
        return CR_AUTH_HANDSHAKE

    def _rsa_password(self, vio: _MPVIO, pkt: bytes, scramble: bytes) -> bytes | None:
        """Decrypt + XOR with the nonce (NUL included), read up to first NUL."""
        if len(pkt) != self.peer._cipher_length:
            self.peer._log("rsa_bad_packet")
            return None
        plain = self.peer._decrypt(pkt)
        if plain is None:
            self.peer._log("rsa_bad_packet")
            return None
        return _xor(plain, scramble).split(b"\0", 1)[0]

    async def _plugin_caching_sha2(self, vio: _MPVIO) -> int:
        scramble = generate_user_salt()
        await vio.write_packet(scramble + b"\0")
        self.thd_scramble = scramble  # auth_save_scramble()
        pkt = await vio.read_packet()
        if pkt is None:
            return CR_AUTH_HANDSHAKE
        acc = vio.acl_user
        assert acc is not None
        if len(pkt) == 0 or pkt == b"\0":
            vio.password_used = False
            return CR_OK if not acc.password else CR_AUTH_USER_CREDENTIALS
        vio.password_used = True
        key = f"{acc.user}@{acc.host}"
        if len(pkt) != CACHING_SHA2_DIGEST_LENGTH:
            return CR_ERROR
        cached = self.peer._sha2_cache.get(key) if acc.can_authenticate else None
        fast_ok = False
        if cached is not None:
            candidate = _xor(pkt, _sha256(cached, scramble))
            fast_ok = hmac.compare_digest(_sha256(candidate), cached)
        if fast_ok:
            await vio.write_packet(bytes([FAST_AUTH_SUCCESS]))
            self.peer._log("fast_auth")
            return CR_OK
        await vio.write_packet(bytes([PERFORM_FULL_AUTHENTICATION]))
        pkt = await vio.read_packet()
        if not pkt:
            return CR_AUTH_HANDSHAKE
        if not self.tls:
            if pkt == bytes([CACHING_SHA2_REQUEST_PUBLIC_KEY]):
                self.peer._log("public_key_request")
                await vio.write_packet(self.peer.public_key_pem)
                pkt = await vio.read_packet()
                if not pkt:
                    return CR_ERROR
            password = self._rsa_password(vio, pkt, scramble)
            if password is None:
                return CR_ERROR
            self.peer._log("full_auth_rsa")
            if not password:
                return CR_AUTH_USER_CREDENTIALS
        else:
            password = pkt[:-1]
            self.peer._log("full_auth_tls_cleartext")
        if (
            not acc.can_authenticate
            or len(password) > CACHING_SHA2_PASSWORD_MAX_PASSWORD_LENGTH
            or not hmac.compare_digest(password, acc.password.encode())  # type: ignore[union-attr]
        ):
            return CR_AUTH_USER_CREDENTIALS
        if password:
            self.peer._sha2_cache[key] = _sha256(_sha256(password))
        return CR_OK

    async def _plugin_sha256(self, vio: _MPVIO) -> int:
        scramble = generate_user_salt()
        await vio.write_packet(scramble + b"\0")
        self.thd_scramble = scramble  # auth_save_scramble()
        pkt = await vio.read_packet()
        if pkt is None:
            return CR_ERROR
        acc = vio.acl_user
        assert acc is not None
        if len(pkt) == 0 or (len(pkt) == 1 and pkt[0] == 0):
            vio.password_used = False
            return CR_OK if not acc.password else CR_ERROR
        vio.password_used = True
        if not self.tls:
            if pkt == bytes([SHA256_REQUEST_PUBLIC_KEY]):
                self.peer._log("public_key_request")
                await vio.write_packet(self.peer.public_key_pem)
                pkt = await vio.read_packet()
                if pkt is None:
                    return CR_ERROR
            password = self._rsa_password(vio, pkt, scramble)
            if not password:
                return CR_ERROR
            self.peer._log("sha256_rsa")
        else:
            password = pkt[:-1]
            self.peer._log("sha256_tls_cleartext")
        if len(password) > SHA256_PASSWORD_MAX_PASSWORD_LENGTH:
            return CR_ERROR
        if not acc.can_authenticate or not acc.password:
            return CR_ERROR
        return CR_OK if hmac.compare_digest(password, acc.password.encode()) else CR_ERROR

    async def _do_auth_once(self, vio: _MPVIO, plugin: str) -> int:
        vio.plugin = plugin
        old_status = vio.status
        if plugin == PLUGIN_CACHING_SHA2:
            res = await self._plugin_caching_sha2(vio)
        elif plugin == PLUGIN_SHA256:
            res = await self._plugin_sha256(vio)
        else:
            res = await self._plugin_native(vio)
        if old_status == vio.RESTART and vio.status == vio.RESTART:
            vio.status = vio.FAILURE
        return res

    async def acl_authenticate(self, change_user_pkt: bytes | None = None) -> bool:
        vio = _MPVIO(self)
        if change_user_pkt is not None:
            vio.packets_written = 1  # pretend a handshake was sent
            vio.packets_read = 1
            self.parse_change_user(vio, change_user_pkt)
            res = CR_OK
        else:
            self.thd_scramble = None  # "mark the thd as having no scramble yet"
            res = await self._do_auth_once(vio, self.peer.default_plugin)
        if vio.status == vio.RESTART:
            assert vio.acl_user is not None
            res = await self._do_auth_once(vio, vio.acl_user.plugin)

        acc = vio.acl_user
        if res == CR_OK and (acc is None or not acc.can_authenticate):
            res = CR_ERROR
        if res != CR_OK:
            if vio.error is not None:
                self.peer._log("bad_handshake")
                self.send_err(*vio.error)
            else:
                self._access_denied(vio)
            return False
        assert acc is not None
        if acc.require_ssl and not self.tls:  # acl_check_ssl()
            self._access_denied(vio)
            return False
        self.account = acc
        self.database = vio.db
        self.autocommit = True
        self.peer._log("authenticated")
        self.send_ok()
        return True

    def _access_denied(self, vio: _MPVIO) -> None:
        self.peer._log("denied")
        self.send_err(
            1045,
            "28000",
            f"Access denied for user '{vio.user_name}'@'{self.client_host}' "
            f"(using password: {'YES' if vio.password_used else 'NO'})",
        )

    # -- main loop ----------------------------------------------------------

    async def run(self) -> None:
        try:
            try:
                if not await self.acl_authenticate():
                    return
                self.link.stop_exact()
                await self.command_loop()
            except _Malformed:
                self.peer._log("bad_handshake")
                self.send_err(*ER_HANDSHAKE_ERROR)
        except (_Closed, ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            self.link.close()

    async def command_loop(self) -> None:
        while True:
            self.seq = 0
            pkt = await self.read_packet()
            if not pkt:
                raise _Malformed("empty command")
            cmd = pkt[0]
            if cmd == COM_QUIT:
                return
            if cmd == COM_PING:
                self.send_ok()
            elif cmd == COM_RESET_CONNECTION:
                # dispatch_command, case COM_RESET_CONNECTION: thd->cleanup_connection(), then my_ok(thd).
                # THD::cleanup_connection resets the session (autocommit among it) and keeps the login,
                # the current database and the scramble; the OK is a plain one at seq 1.
                self.peer._log("reset_connection")
                self.autocommit = True
                self.send_ok()
            elif cmd == COM_INIT_DB:
                self.database = pkt[1:]
                self.send_ok()
            elif cmd == COM_QUERY:
                self.handle_query(pkt[1:].decode("utf-8", "replace"))
            elif cmd == COM_CHANGE_USER:
                self.peer._log("change_user")
                if not await self.acl_authenticate(change_user_pkt=pkt):
                    return  # ERR, then disconnect
            else:
                self.send_err(*ER_UNKNOWN_COM_ERROR)

    # -- queries -------------------------------------------------------------

    def _send_resultset(self, columns: list[tuple[str, int]], rows: list[list[bytes | None]]) -> None:
        deprecate_eof = bool(self.client_caps & CLIENT_DEPRECATE_EOF)
        self.write_packet(lenenc_int(len(columns)))
        for name, ctype in columns:
            if ctype == MYSQL_TYPE_LONGLONG:
                charset, length, flags, decimals = BINARY_CHARSET, 21, NOT_NULL_FLAG | BINARY_FLAG | NUM_FLAG, 0
            else:
                charset, length, flags, decimals = self.charset or DEFAULT_CHARSET, 1024, 0, 31
            self.write_packet(
                lenenc_str(b"def")
                + lenenc_str(b"")
                + lenenc_str(b"")
                + lenenc_str(b"")
                + lenenc_str(name.encode())
                + lenenc_str(b"")
                + b"\x0c"
                + struct.pack("<HIBHB", charset, length, ctype, flags, decimals)
                + b"\0\0"
            )
        if not deprecate_eof:
            self.send_eof()
        for row in rows:
            self.write_packet(b"".join(b"\xfb" if v is None else lenenc_str(v) for v in row))
        if deprecate_eof:
            self.send_ok(header=0xFE)
        else:
            self.send_eof()

    def _status_vars(self) -> dict[str, str]:
        return {
            "Ssl_cipher": self.cipher if self.tls else "",
            "Ssl_version": self.tls_version if self.tls else "",
            "Ssl_sessions_reused": "0",
        }

    def _sys_vars(self) -> dict[str, bytes | None]:
        return {
            "version": self.peer.server_version.encode(),
            "version_comment": b"MySQL Community Server - GPL",
            "autocommit": b"1" if self.autocommit else b"0",
            "session.autocommit": b"1" if self.autocommit else b"0",
            "transaction_isolation": b"REPEATABLE-READ",
            "session.transaction_isolation": b"REPEATABLE-READ",
            "transaction_read_only": b"0",
            "session.transaction_read_only": b"0",
            "character_set_client": b"utf8mb4",
            "character_set_connection": b"utf8mb4",
            "character_set_results": b"utf8mb4",
            "collation_connection": b"utf8mb4_0900_ai_ci",
            "max_allowed_packet": b"67108864",
            "sql_mode": b"ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,"
            b"ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION",
            "time_zone": b"SYSTEM",
            "system_time_zone": b"UTC",
            "lower_case_table_names": b"0",
            "wait_timeout": b"28800",
        }

    _RE_SELECT_INT = re.compile(r"^select\s+(-?\d{1,18})$", re.I)
    _RE_SHOW_STATUS = re.compile(r"^show\s+(?:(session|global|local)\s+)?status\s+like\s+'([^']*)'$", re.I)
    _RE_SELECT_USER = re.compile(r"^select\s+(current_user|user|session_user|system_user)\s*\(\s*\)$", re.I)
    _RE_SELECT_VARS = re.compile(r"^select\s+(@@[\w.]+(?:\s*,\s*@@[\w.]+)*)(?:\s+limit\s+1)?$", re.I)
    _RE_SET_AUTOCOMMIT = re.compile(
        r"^set\s+(?:@@session\.|session\s+|@@)?autocommit\s*=\s*(0|1|on|off|true|false)$", re.I
    )

    def handle_query(self, sql: str) -> None:
        self.peer.queries.append(sql)
        q = " ".join(sql.strip().rstrip(";").split())
        low = q.lower()
        if m := self._RE_SELECT_INT.match(q):
            self._send_resultset([(m.group(1), MYSQL_TYPE_LONGLONG)], [[m.group(1).encode()]])
        elif m := self._RE_SHOW_STATUS.match(q):
            pattern = re.escape(m.group(2)).replace("%", ".*").replace("_", ".")
            rx = re.compile(f"^{pattern}$", re.I | re.S)
            rows = [[k.encode(), v.encode()] for k, v in sorted(self._status_vars().items()) if rx.match(k)]
            self._send_resultset([("Variable_name", MYSQL_TYPE_VAR_STRING), ("Value", MYSQL_TYPE_VAR_STRING)], rows)
        elif m := self._RE_SELECT_USER.match(q):
            user = self.account.user if self.account else ""
            self._send_resultset([(q[7:], MYSQL_TYPE_VAR_STRING)], [[f"{user}@%".encode()]])
        elif low in ("select version()",):
            self._send_resultset([("VERSION()", MYSQL_TYPE_VAR_STRING)], [[self.peer.server_version.encode()]])
        elif low in ("select database()", "select schema()"):
            self._send_resultset([(q[7:], MYSQL_TYPE_VAR_STRING)], [[self.database or None]])
        elif low == "select connection_id()":
            self._send_resultset([("CONNECTION_ID()", MYSQL_TYPE_LONGLONG)], [[str(self.conn_id).encode()]])
        elif m := self._RE_SELECT_VARS.match(q):
            names = [n.strip() for n in m.group(1).split(",")]
            values = self._sys_vars()
            row: list[bytes | None] = []
            for n in names:
                key = n[2:].lower()
                if key.startswith("global."):
                    key = key[7:]
                if key not in values:
                    self.send_err(1193, "HY000", f"Unknown system variable '{n[2:]}'")
                    return
                row.append(values[key])
            self._send_resultset([(n, MYSQL_TYPE_VAR_STRING) for n in names], [row])
        elif m := self._RE_SET_AUTOCOMMIT.match(q):
            self.autocommit = m.group(1).lower() in ("1", "on", "true")
            self.send_ok()
        elif low.startswith("set ") or low in (
            "commit",
            "rollback",
            "begin",
            "start transaction",
        ) or low.startswith("use "):
            self.send_ok()
        elif low == "show warnings":
            self._send_resultset(
                [("Level", MYSQL_TYPE_VAR_STRING), ("Code", MYSQL_TYPE_LONGLONG), ("Message", MYSQL_TYPE_VAR_STRING)],
                [],
            )
        else:
            near = sql.strip()[:80]
            self.send_err(
                1064,
                "42000",
                "You have an error in your SQL syntax; check the manual that corresponds to your "
                f"MySQL server version for the right syntax to use near '{near}' at line 1",
            )


# --------------------------------------------------------------------------
# thread wrapper
# --------------------------------------------------------------------------


class PeerThread:
    """Runs a :class:`MySQL8Peer` in its own event loop in a daemon thread.

    ``start()`` returns the port; ``stop()`` closes the peer and joins the
    thread.  Usable as a context manager.  Constructor arguments are passed to
    :class:`MySQL8Peer`; the peer object is available as ``.peer``.
    """

    def __init__(self, **peer_kwargs):
        self.peer = MySQL8Peer(**peer_kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._startup_error: BaseException | None = None

    @property
    def port(self) -> int:
        return self.peer.port

    @property
    def events(self) -> list[str]:
        return self.peer.events

    def flush_cache(self) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            done = threading.Event()

            def _flush() -> None:
                self.peer.flush_cache()
                done.set()

            loop.call_soon_threadsafe(_flush)
            done.wait(5)
        else:
            self.peer.flush_cache()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.peer.start())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._startup_error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(self.peer.close())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def start(self) -> int:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name="mysql8-peer", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._startup_error is not None:
            raise self._startup_error
        if not self._started.is_set():
            raise RuntimeError("peer did not start")
        return self.peer.port

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        self._thread = None

    def __enter__(self) -> PeerThread:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
