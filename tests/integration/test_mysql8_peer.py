"""Prove that tests/support/mysql8_peer.py behaves like a MySQL 8.0 server.

The peer is driven directly (no proxy) by real clients -- PyMySQL and
mysql-connector-python (pure Python and, when importable, the C extension) --
and by a small raw-protocol client that checks the bytes and sequence ids of
PROTOCOL.md §2-§6.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import struct
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.mysql8_peer import MySQL8Peer, PeerAccount, PeerThread
from tests.support.pki import TestPki

import mysql.connector as mysql_connector
import pymysql
from mysql.connector import connection_cext as _cext  # noqa: F401  - the pinned version's C extension loads

HAVE_CEXT = bool(getattr(mysql_connector, "HAVE_CEXT", False))
assert HAVE_CEXT, "mysql-connector-python's C extension must load (see the pin in pyproject.toml)"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HOST = "127.0.0.1"

ACCOUNTS = [
    PeerAccount("sha2user", "sha2-Pass!", "caching_sha2_password"),
    PeerAccount("sha256user", "sha256-Pass!", "sha256_password"),
    PeerAccount("nativeuser", "native-Pass!", "mysql_native_password"),
    PeerAccount("ssluser", "ssl-Pass!", "caching_sha2_password", require_ssl=True),
]
PASSWORDS = {a.user: a.password for a in ACCOUNTS}

# capability bits
LONG_PASSWORD = 0x1
CONNECT_WITH_DB = 0x8
PROTOCOL_41 = 0x200
SSL_FLAG = 0x800
TRANSACTIONS = 0x2000
SECURE_CONNECTION = 0x8000
PLUGIN_AUTH = 0x80000
PLUGIN_AUTH_LENENC = 0x200000
DEPRECATE_EOF = 0x1000000
VERIFY_SERVER_CERT = 0x40000000

EXPECTED_CAPS_NO_TLS = (
    0x1  # LONG_PASSWORD
    | 0x2  # FOUND_ROWS
    | 0x4  # LONG_FLAG
    | 0x8  # CONNECT_WITH_DB
    | 0x10  # NO_SCHEMA
    | 0x40  # ODBC
    | 0x80  # LOCAL_FILES
    | 0x100  # IGNORE_SPACE
    | 0x200  # PROTOCOL_41
    | 0x400  # INTERACTIVE
    | 0x1000  # IGNORE_SIGPIPE
    | 0x2000  # TRANSACTIONS
    | 0x8000  # SECURE_CONNECTION
    | 0x10000  # MULTI_STATEMENTS
    | 0x20000  # MULTI_RESULTS
    | 0x40000  # PS_MULTI_RESULTS
    | 0x80000  # PLUGIN_AUTH
    | 0x100000  # CONNECT_ATTRS
    | 0x200000  # PLUGIN_AUTH_LENENC_CLIENT_DATA
    | 0x400000  # CAN_HANDLE_EXPIRED_PASSWORDS
    | 0x800000  # SESSION_TRACK
    | 0x1000000  # DEPRECATE_EOF
)
EXPECTED_CAPS_TLS = EXPECTED_CAPS_NO_TLS | SSL_FLAG | VERIFY_SERVER_CERT


# --------------------------------------------------------------------------------------------
# Test PKI (local helper on purpose: no dependency on tlsproxy.certs)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca_path(pki: TestPki) -> str:
    return str(pki.ca)


@pytest.fixture(scope="module")
def rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _server_ctx(pki: TestPki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    return ctx


@pytest.fixture
def make_peer(pki, rsa_pem) -> Iterator[Callable[..., PeerThread]]:
    started: list[PeerThread] = []

    def factory(*, tls: bool = True, default_plugin: str = "caching_sha2_password", accounts=None) -> PeerThread:
        pt = PeerThread(
            accounts=ACCOUNTS if accounts is None else accounts,
            ssl_context=_server_ctx(pki) if tls else None,
            default_plugin=default_plugin,
            rsa_private_key_pem=rsa_pem,
        )
        started.append(pt)
        pt.start()
        return pt

    try:
        yield factory
    finally:
        for pt in started:
            pt.stop()
    for pt in started:
        assert pt.peer.errors == [], f"peer raised unexpected exceptions: {pt.peer.errors!r}"


@pytest.fixture
def peer(make_peer) -> PeerThread:
    return make_peer()


# --------------------------------------------------------------------------------------------
# Client helpers
# --------------------------------------------------------------------------------------------

CLIENTS = ["pymysql", "connector-pure"] + (["connector-cext"] if HAVE_CEXT else [])
CONNECTOR_KINDS = ["connector-pure"] + (["connector-cext"] if HAVE_CEXT else [])


def connect(kind: str, port: int, user: str, password: str, *, tls: bool, ca: str | None, **extra):
    if kind == "pymysql":
        kwargs = dict(host=HOST, port=port, user=user, password=password, connect_timeout=10, read_timeout=10)
        if tls:
            kwargs.update(ssl_ca=ca, ssl_verify_cert=True, ssl_verify_identity=True)
        else:
            kwargs.update(ssl_disabled=True)  # PyMySQL >= 1.2 otherwise tries TLS ("PREFERRED")
        kwargs.update(extra)
        return pymysql.connect(**kwargs)
    kwargs = dict(
        host=HOST,
        port=port,
        user=user,
        password=password,
        use_pure=(kind == "connector-pure"),
        connection_timeout=10,
    )
    if tls:
        kwargs.update(ssl_ca=ca, ssl_verify_cert=True, ssl_verify_identity=True)
    else:
        kwargs.update(ssl_disabled=True)
    kwargs.update(extra)
    return mysql_connector.connect(**kwargs)


def query(conn, sql: str) -> list[tuple]:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]
    finally:
        cur.close()


def _text(v) -> str:
    return v.decode() if isinstance(v, (bytes, bytearray)) else str(v)


def session_check(conn, user: str, *, tls: bool) -> None:
    """Things a real client does after connecting must work."""
    assert [tuple(int(x) for x in r) for r in query(conn, "SELECT 1")] == [(1,)]
    assert [_text(r[0]) for r in query(conn, "SELECT CURRENT_USER()")] == [f"{user}@%"]
    version = dict((_text(k), _text(v)) for k, v in query(conn, "SHOW SESSION STATUS LIKE 'Ssl_version'"))
    cipher = dict((_text(k), _text(v)) for k, v in query(conn, "SHOW STATUS LIKE 'Ssl_cipher'"))
    if tls:
        assert version["Ssl_version"].startswith("TLSv1.")
        assert cipher["Ssl_cipher"]
    else:
        assert version == {"Ssl_version": ""}
        assert cipher == {"Ssl_cipher": ""}


def error_code(exc: BaseException) -> int | None:
    if getattr(exc, "errno", None):
        return exc.errno  # mysql.connector
    if getattr(exc, "args", None) and isinstance(exc.args[0], int):
        return exc.args[0]  # pymysql
    return None


def new_events(pt: PeerThread, start: int) -> list[str]:
    return pt.events[start:]


# --------------------------------------------------------------------------------------------
# Raw protocol client
# --------------------------------------------------------------------------------------------


class RawClient:
    def __init__(self, port: int):
        self.sock: socket.socket = socket.create_connection((HOST, port), timeout=10)

    def close(self) -> None:
        self.sock.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("peer closed the connection")
            buf += chunk
        return buf

    def read(self) -> tuple[int, bytes]:
        hdr = self._recv_exact(4)
        n = int.from_bytes(hdr[:3], "little")
        return hdr[3], self._recv_exact(n)

    def send(self, seq: int, payload: bytes) -> None:
        self.sock.sendall(len(payload).to_bytes(3, "little") + bytes([seq]) + payload)

    def starttls(self, ca: str) -> None:
        ctx = ssl.create_default_context(cafile=ca)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=HOST)

    def at_eof(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True


def parse_greeting(p: bytes) -> dict:
    assert p[0] == 0x0A
    end = p.index(b"\0", 1)
    g = {"version": p[1:end].decode()}
    pos = end + 1
    g["conn_id"] = struct.unpack_from("<I", p, pos)[0]
    pos += 4
    part1 = p[pos : pos + 8]
    pos += 8
    g["filler"] = p[pos]
    pos += 1
    caps_lo = struct.unpack_from("<H", p, pos)[0]
    pos += 2
    g["charset"] = p[pos]
    pos += 1
    g["status"] = struct.unpack_from("<H", p, pos)[0]
    pos += 2
    caps_hi = struct.unpack_from("<H", p, pos)[0]
    pos += 2
    g["caps"] = caps_lo | caps_hi << 16
    g["auth_len"] = p[pos]
    pos += 1
    g["reserved"] = p[pos : pos + 10]
    pos += 10
    n2 = max(13, g["auth_len"] - 8)
    part2 = p[pos : pos + n2]
    pos += n2
    g["part2"] = part2
    g["nonce"] = part1 + part2[:-1]
    pend = p.index(b"\0", pos)
    g["plugin"] = p[pos:pend].decode()
    g["trailing"] = p[pend + 1 :]
    return g


def check_nonce(nonce: bytes) -> None:
    assert len(nonce) == 20
    assert all(1 <= b <= 127 for b in nonce), nonce
    assert b"$" not in nonce


def handshake_response(
    user: str, auth: bytes, plugin: str, *, ssl_flag: bool = False, extra_caps: int = 0, db: bytes | None = None
) -> bytes:
    caps = LONG_PASSWORD | PROTOCOL_41 | TRANSACTIONS | SECURE_CONNECTION | PLUGIN_AUTH | PLUGIN_AUTH_LENENC
    caps |= extra_caps
    if ssl_flag:
        caps |= SSL_FLAG
    if db is not None:
        caps |= CONNECT_WITH_DB
    body = struct.pack("<IIB23s", caps, 16 * 1024 * 1024, 255, b"")
    body += user.encode() + b"\0" + bytes([len(auth)]) + auth
    if db is not None:
        body += db + b"\0"
    return body + plugin.encode() + b"\0"


def ssl_request(extra_caps: int = 0) -> bytes:
    return handshake_response("x", b"", "", ssl_flag=True, extra_caps=extra_caps)[:32]


def scramble_sha2(password: str, nonce: bytes) -> bytes:
    h1 = hashlib.sha256(password.encode()).digest()
    h2 = hashlib.sha256(hashlib.sha256(h1).digest() + nonce).digest()
    return bytes(a ^ b for a, b in zip(h1, h2))


def scramble_native(password: str, nonce: bytes) -> bytes:
    s1 = hashlib.sha1(password.encode()).digest()
    s2 = hashlib.sha1(s1).digest()
    s3 = hashlib.sha1(nonce + s2).digest()
    return bytes(a ^ b for a, b in zip(s1, s3))


def rsa_encrypt_password(pem: bytes, password: str, nonce: bytes) -> bytes:
    pub = serialization.load_pem_public_key(pem)
    assert isinstance(pub, rsa.RSAPublicKey)
    data = password.encode() + b"\0"
    xored = bytes(b ^ nonce[i % len(nonce)] for i, b in enumerate(data))
    return pub.encrypt(
        xored, padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    )


def parse_err(p: bytes) -> tuple[int, str | None, str]:
    assert p[0] == 0xFF
    code = struct.unpack_from("<H", p, 1)[0]
    if p[3:4] != b"#":  # no CLIENT_PROTOCOL_41 negotiated (yet): no SQLSTATE
        return code, None, p[3:].decode()
    return code, p[4:9].decode(), p[9:].decode()


def parse_auth_switch(p: bytes) -> tuple[str, bytes]:
    assert p[0] == 0xFE and len(p) > 1
    end = p.index(b"\0", 1)
    return p[1:end].decode(), p[end + 1 :]


# --------------------------------------------------------------------------------------------
# Raw protocol tests: bytes and sequence ids
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [True, False], ids=["tls-ctx", "no-tls-ctx"])
def test_greeting_layout(make_peer, tls):
    pt = make_peer(tls=tls)
    seen_nonces = set()
    for _ in range(3):
        c = RawClient(pt.port)
        try:
            seq, p = c.read()
            g = parse_greeting(p)
        finally:
            c.close()
        assert seq == 0
        assert g["version"] == "8.0.36-tlsproxy-peer"
        assert g["filler"] == 0
        assert g["caps"] == (EXPECTED_CAPS_TLS if tls else EXPECTED_CAPS_NO_TLS)
        assert g["charset"] == 255
        assert g["status"] == 2
        assert g["auth_len"] == 21
        assert g["reserved"] == b"\0" * 10
        assert len(g["part2"]) == 13 and g["part2"][-1] == 0
        check_nonce(g["nonce"])
        assert g["plugin"] == "caching_sha2_password"
        assert g["trailing"] == b""
        seen_nonces.add(g["nonce"])
    assert len(seen_nonces) == 3


def test_raw_caching_sha2_tls_ids_full_then_fast(peer, ca_path):
    pw = PASSWORDS["sha2user"]
    # cold cache: full authentication, cleartext password inside TLS
    c = RawClient(peer.port)
    try:
        _, g = c.read()
        nonce = parse_greeting(g)["nonce"]
        c.send(1, ssl_request())
        c.starttls(ca_path)
        c.send(2, handshake_response("sha2user", scramble_sha2(pw, nonce), "caching_sha2_password", ssl_flag=True))
        assert c.read() == (3, b"\x01\x04")
        c.send(4, pw.encode() + b"\0")
        seq, ok = c.read()
        assert (seq, ok[0]) == (5, 0x00)
        # command phase resets ids
        c.send(0, b"\x0e")  # COM_PING
        seq, ok = c.read()
        assert (seq, ok[0]) == (1, 0x00)
    finally:
        c.close()
    # warm cache: fast path, 01 03 then OK
    c = RawClient(peer.port)
    try:
        _, g = c.read()
        nonce = parse_greeting(g)["nonce"]
        c.send(1, ssl_request())
        c.starttls(ca_path)
        c.send(2, handshake_response("sha2user", scramble_sha2(pw, nonce), "caching_sha2_password", ssl_flag=True))
        assert c.read() == (3, b"\x01\x03")
        seq, ok = c.read()
        assert (seq, ok[0]) == (4, 0x00)
    finally:
        c.close()
    assert peer.events == ["tls", "full_auth_tls_cleartext", "authenticated", "tls", "fast_auth", "authenticated"]


def test_raw_caching_sha2_rsa_on_plaintext(peer):
    pw = PASSWORDS["sha2user"]
    c = RawClient(peer.port)
    try:
        _, g = c.read()
        nonce = parse_greeting(g)["nonce"]
        c.send(1, handshake_response("sha2user", scramble_sha2(pw, nonce), "caching_sha2_password"))
        assert c.read() == (2, b"\x01\x04")
        c.send(3, b"\x02")  # request public key
        seq, pem = c.read()
        assert seq == 4 and pem[:1] == b"\x01"
        assert pem[1:].startswith(b"-----BEGIN PUBLIC KEY-----\n") and pem.endswith(b"-----END PUBLIC KEY-----\n")
        assert pem[1:] == peer.peer.public_key_pem
        c.send(5, rsa_encrypt_password(pem[1:], pw, nonce))
        seq, ok = c.read()
        assert (seq, ok[0]) == (6, 0x00)
    finally:
        c.close()
    assert peer.events == ["public_key_request", "full_auth_rsa", "authenticated"]
    # the cache is now warm for plaintext logins too
    c = RawClient(peer.port)
    try:
        _, g = c.read()
        nonce = parse_greeting(g)["nonce"]
        c.send(1, handshake_response("sha2user", scramble_sha2(pw, nonce), "caching_sha2_password"))
        assert c.read() == (2, b"\x01\x03")
        assert c.read()[0] == 3
    finally:
        c.close()
    # flush_cache() forces full authentication again
    peer.flush_cache()
    c = RawClient(peer.port)
    try:
        _, g = c.read()
        nonce = parse_greeting(g)["nonce"]
        c.send(1, handshake_response("sha2user", scramble_sha2(pw, nonce), "caching_sha2_password"))
        assert c.read() == (2, b"\x01\x04")
    finally:
        c.close()


def test_raw_plaintext_cleartext_after_full_auth_is_denied(peer):
    """mysqld expects RSA ciphertext of exactly the key size on an insecure link."""
    pw = PASSWORDS["sha2user"]
    c = RawClient(peer.port)
    try:
        _, g = c.read()
        nonce = parse_greeting(g)["nonce"]
        c.send(1, handshake_response("sha2user", scramble_sha2(pw, nonce), "caching_sha2_password"))
        assert c.read() == (2, b"\x01\x04")
        c.send(3, pw.encode() + b"\0")
        seq, err = c.read()
        assert seq == 4
        assert parse_err(err) == (
            1045,
            "28000",
            "Access denied for user 'sha2user'@'127.0.0.1' (using password: YES)",
        )
        assert c.at_eof()
    finally:
        c.close()


def test_raw_sha256_switch_fresh_nonce_and_rsa(peer):
    pw = PASSWORDS["sha256user"]
    c = RawClient(peer.port)
    try:
        _, g = c.read()
        greeting_nonce = parse_greeting(g)["nonce"]
        c.send(1, handshake_response("sha256user", scramble_sha2(pw, greeting_nonce), "caching_sha2_password"))
        seq, sw = c.read()
        plugin, data = parse_auth_switch(sw)
        assert (seq, plugin) == (2, "sha256_password")
        assert len(data) == 21 and data[-1] == 0
        nonce = data[:20]
        check_nonce(nonce)
        assert nonce != greeting_nonce  # sha256_password always generates a new scramble
        c.send(3, b"\x01")  # sha256_password public key request
        seq, pem = c.read()
        assert seq == 4 and pem.startswith(b"\x01-----BEGIN PUBLIC KEY-----")
        c.send(5, rsa_encrypt_password(pem[1:], pw, nonce))
        seq, ok = c.read()
        assert (seq, ok[0]) == (6, 0x00)
    finally:
        c.close()
    assert peer.events == ["auth_switch", "public_key_request", "sha256_rsa", "authenticated"]


def test_raw_sha256_over_tls_has_no_cache(peer, ca_path):
    pw = PASSWORDS["sha256user"]
    for _ in range(2):
        c = RawClient(peer.port)
        try:
            c.read()
            c.send(1, ssl_request())
            c.starttls(ca_path)
            c.send(2, handshake_response("sha256user", b"\x00" * 32, "caching_sha2_password", ssl_flag=True))
            seq, sw = c.read()
            assert seq == 3 and parse_auth_switch(sw)[0] == "sha256_password"
            c.send(4, pw.encode() + b"\0")
            seq, ok = c.read()
            assert (seq, ok[0]) == (5, 0x00)
        finally:
            c.close()
    assert peer.events.count("sha256_tls_cleartext") == 2


def test_raw_native_switch_reuses_greeting_nonce(peer):
    """caching_sha2 saved its scramble; mysql_native_password re-sends it."""
    pw = PASSWORDS["nativeuser"]
    c = RawClient(peer.port)
    try:
        _, g = c.read()
        nonce = parse_greeting(g)["nonce"]
        c.send(1, handshake_response("nativeuser", scramble_sha2(pw, nonce), "caching_sha2_password"))
        seq, sw = c.read()
        plugin, data = parse_auth_switch(sw)
        assert (seq, plugin, data) == (2, "mysql_native_password", nonce + b"\0")
        c.send(3, scramble_native(pw, nonce))
        seq, ok = c.read()
        assert (seq, ok[0]) == (4, 0x00)
    finally:
        c.close()


def test_raw_client_plugin_mismatch_same_account_plugin(peer):
    """Account plugin == greeting plugin but the client used another one: AuthSwitch with the greeting nonce."""
    pw = PASSWORDS["sha2user"]
    c = RawClient(peer.port)
    try:
        _, g = c.read()
        nonce = parse_greeting(g)["nonce"]
        c.send(1, handshake_response("sha2user", scramble_native(pw, nonce), "mysql_native_password"))
        seq, sw = c.read()
        assert (seq, parse_auth_switch(sw)) == (2, ("caching_sha2_password", nonce + b"\0"))
        c.send(3, scramble_sha2(pw, nonce))
        assert c.read() == (4, b"\x01\x04")
    finally:
        c.close()


def test_raw_bad_sequence_id_is_bad_handshake(peer):
    c = RawClient(peer.port)
    try:
        c.read()
        c.send(2, handshake_response("sha2user", b"\x00" * 32, "caching_sha2_password"))  # should be 1
        seq, err = c.read()
        # the bad frame does not advance the server's counter (like NET::pkt_nr in mysqld),
        # and no capabilities were accepted yet, so the ERR carries no SQLSTATE
        assert seq == 1
        assert parse_err(err) == (1043, None, "Bad handshake")
        assert c.at_eof()
    finally:
        c.close()
    assert peer.events == ["bad_handshake"]


def test_raw_malformed_response_is_bad_handshake(peer):
    c = RawClient(peer.port)
    try:
        c.read()
        # 32-byte prefix, then a user name without its NUL terminator
        c.send(1, handshake_response("sha2user", b"", "")[:32] + b"sha2user")
        seq, err = c.read()
        assert seq == 2
        assert parse_err(err) == (1043, "08S01", "Bad handshake")
    finally:
        c.close()


def test_raw_ssl_request_without_tls_is_bad_handshake(make_peer):
    pt = make_peer(tls=False)
    c = RawClient(pt.port)
    try:
        c.read()
        c.send(1, ssl_request())
        seq, err = c.read()
        assert seq == 2 and parse_err(err)[0] == 1043
    finally:
        c.close()


def test_raw_change_user_fresh_nonce_then_rsa(peer, ca_path):
    """COM_CHANGE_USER: AuthSwitch (seq 1) with a fresh nonce; the RSA XOR uses that nonce."""
    pw = PASSWORDS["sha2user"]
    c = RawClient(peer.port)
    try:
        _, g = c.read()
        greeting_nonce = parse_greeting(g)["nonce"]
        c.send(1, handshake_response("nativeuser", b"", "mysql_native_password"))
        seq, sw = c.read()  # nativeuser != greeting plugin: switch, same nonce
        assert seq == 2 and parse_auth_switch(sw)[1] == greeting_nonce + b"\0"
        c.send(3, scramble_native(PASSWORDS["nativeuser"], greeting_nonce))
        assert c.read()[1][0] == 0x00

        nonces = {greeting_nonce}
        for expect_fast in (False, True):
            change = (
                b"\x11"
                + b"sha2user\0"
                + bytes([32])
                + scramble_sha2(pw, greeting_nonce)  # computed on the old nonce, discarded
                + b"\0"  # db
                + struct.pack("<H", 255)
                + b"caching_sha2_password\0"
            )
            c.send(0, change)
            seq, sw = c.read()
            plugin, data = parse_auth_switch(sw)
            assert (seq, plugin) == (1, "caching_sha2_password")
            assert len(data) == 21 and data[-1] == 0
            nonce = data[:20]
            check_nonce(nonce)
            assert nonce not in nonces
            nonces.add(nonce)
            c.send(2, scramble_sha2(pw, nonce))
            if expect_fast:
                assert c.read() == (3, b"\x01\x03")
                seq, ok = c.read()
                assert (seq, ok[0]) == (4, 0x00)
            else:
                assert c.read() == (3, b"\x01\x04")
                c.send(4, b"\x02")
                seq, pem = c.read()
                assert seq == 5 and pem[:1] == b"\x01"
                c.send(6, rsa_encrypt_password(pem[1:], pw, nonce))
                seq, ok = c.read()
                assert (seq, ok[0]) == (7, 0x00)
        # mysql_native_password reuses the connection's saved scramble (the last
        # caching_sha2 nonce): mysqld only resets thd->scramble on COM_CONNECT
        c.send(0, b"\x11nativeuser\0" + bytes([0]) + b"\0" + struct.pack("<H", 255) + b"mysql_native_password\0")
        seq, sw = c.read()
        assert (seq, parse_auth_switch(sw)) == (1, ("mysql_native_password", nonce + b"\0"))
        c.send(2, scramble_native(PASSWORDS["nativeuser"], nonce))
        seq, ok = c.read()
        assert (seq, ok[0]) == (3, 0x00)
        # failed change user: ERR then disconnect
        c.send(0, b"\x11sha2user\0" + bytes([0]) + b"\0" + struct.pack("<H", 255) + b"caching_sha2_password\0")
        seq, sw = c.read()
        assert seq == 1 and parse_auth_switch(sw)[0] == "caching_sha2_password"
        c.send(2, b"")  # empty password
        seq, err = c.read()
        assert seq == 3
        assert parse_err(err) == (
            1045,
            "28000",
            "Access denied for user 'sha2user'@'127.0.0.1' (using password: NO)",
        )
        assert c.at_eof()
    finally:
        c.close()
    assert peer.events.count("change_user") == 4


@pytest.mark.parametrize("deprecate_eof", [True, False], ids=["deprecate-eof", "classic-eof"])
def test_raw_resultset_framing(peer, deprecate_eof):
    pw = PASSWORDS["nativeuser"]
    extra = DEPRECATE_EOF if deprecate_eof else 0
    c = RawClient(peer.port)
    try:
        _, g = c.read()
        nonce = parse_greeting(g)["nonce"]
        c.send(1, handshake_response("nativeuser", scramble_native(pw, nonce), "caching_sha2_password", extra_caps=extra))
        c.read()  # AuthSwitch, same nonce
        c.send(3, scramble_native(pw, nonce))
        assert c.read()[1][0] == 0
        c.send(0, b"\x03SELECT 1")
        packets = []
        while True:
            seq, p = c.read()
            packets.append((seq, p))
            if p[0] == 0xFE and (len(packets) > 3 or deprecate_eof):
                break
        assert [s for s, _ in packets] == list(range(1, len(packets) + 1))
        assert packets[0][1] == b"\x01"  # one column
        assert packets[1][1].startswith(b"\x03def")
        if deprecate_eof:
            assert len(packets) == 4
            assert packets[2][1] == b"\x011"
            assert packets[3][1] == b"\xfe\x00\x00\x02\x00\x00\x00"  # OK with 0xFE header
        else:
            assert len(packets) == 5
            assert packets[2][1] == b"\xfe\x00\x00\x02\x00"  # EOF
            assert packets[3][1] == b"\x011"
            assert packets[4][1] == b"\xfe\x00\x00\x02\x00"
        c.send(0, b"\x03SELECT nonsense FROM nowhere")
        seq, err = c.read()
        assert seq == 1 and parse_err(err)[:2] == (1064, "42000")
        c.send(0, b"\x01")  # COM_QUIT
        assert c.at_eof()
    finally:
        c.close()


def test_async_api_direct(rsa_pem):
    """MySQL8Peer can be used directly from asyncio code."""

    async def main() -> None:
        p = MySQL8Peer(accounts=ACCOUNTS, ssl_context=None, rsa_private_key_pem=rsa_pem)
        await p.start()
        try:
            assert p.port > 0
            reader, writer = await asyncio.open_connection(HOST, p.port)
            hdr = await reader.readexactly(4)
            body = await reader.readexactly(int.from_bytes(hdr[:3], "little"))
            assert hdr[3] == 0 and parse_greeting(body)["caps"] & SSL_FLAG == 0
            writer.close()
        finally:
            await p.close()
        with pytest.raises(OSError):
            socket.create_connection((HOST, p.port), timeout=2).close()

    asyncio.run(main())


# --------------------------------------------------------------------------------------------
# Real clients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENTS)
def test_caching_sha2_tls_full_then_fast(peer, ca_path, kind):
    user = "sha2user"
    conn = connect(kind, peer.port, user, PASSWORDS[user], tls=True, ca=ca_path)
    try:
        session_check(conn, user, tls=True)
    finally:
        conn.close()
    assert peer.events[:3] == ["tls", "full_auth_tls_cleartext", "authenticated"]
    n = len(peer.events)
    conn = connect(kind, peer.port, user, PASSWORDS[user], tls=True, ca=ca_path)
    try:
        session_check(conn, user, tls=True)
    finally:
        conn.close()
    assert new_events(peer, n) == ["tls", "fast_auth", "authenticated"]


@pytest.mark.parametrize("kind", CLIENTS)
def test_caching_sha2_plaintext_fast_path_after_warm_cache(peer, ca_path, kind):
    user = "sha2user"
    connect(kind, peer.port, user, PASSWORDS[user], tls=True, ca=ca_path).close()
    n = len(peer.events)
    conn = connect(kind, peer.port, user, PASSWORDS[user], tls=False, ca=None)
    try:
        session_check(conn, user, tls=False)
    finally:
        conn.close()
    assert new_events(peer, n) == ["fast_auth", "authenticated"]


def test_caching_sha2_plaintext_full_pymysql_rsa(peer):
    user = "sha2user"
    conn = connect("pymysql", peer.port, user, PASSWORDS[user], tls=False, ca=None)
    try:
        session_check(conn, user, tls=False)
    finally:
        conn.close()
    assert peer.events == ["public_key_request", "full_auth_rsa", "authenticated"]


def test_caching_sha2_plaintext_full_pymysql_configured_key(peer):
    """A client that already holds the server key encrypts without the 0x02 round trip."""
    user = "sha2user"
    conn = connect(
        "pymysql", peer.port, user, PASSWORDS[user], tls=False, ca=None, server_public_key=peer.peer.public_key_pem
    )
    conn.close()
    assert peer.events == ["full_auth_rsa", "authenticated"]


def test_caching_sha2_plaintext_full_connector_pure_sends_cleartext(peer):
    """Connector/Python (pure) answers 01 04 with the cleartext password even on plain TCP.
    mysqld rejects it (not an RSA block), so the login fails with 1045."""
    with pytest.raises(mysql_connector.Error) as ei:
        connect("connector-pure", peer.port, "sha2user", PASSWORDS["sha2user"], tls=False, ca=None)
    assert ei.value.errno == 1045
    assert ei.value.sqlstate == "28000"
    assert ei.value.msg == "Access denied for user 'sha2user'@'127.0.0.1' (using password: YES)"
    assert peer.events == ["rsa_bad_packet", "denied"]


@pytest.mark.skipif(not HAVE_CEXT, reason="mysql-connector C extension not importable")
def test_caching_sha2_plaintext_full_connector_cext_refuses(peer):
    """libmysqlclient without get-server-public-key fails locally with CR 2061."""
    with pytest.raises(mysql_connector.Error) as ei:
        connect("connector-cext", peer.port, "sha2user", PASSWORDS["sha2user"], tls=False, ca=None)
    assert ei.value.errno == 2061
    assert "Authentication requires secure connection" in ei.value.msg
    assert "denied" not in peer.events and "authenticated" not in peer.events


@pytest.mark.parametrize("kind", CLIENTS)
def test_sha256_over_tls(peer, ca_path, kind):
    user = "sha256user"
    for _ in range(2):  # no cache: both logins do the full exchange
        conn = connect(kind, peer.port, user, PASSWORDS[user], tls=True, ca=ca_path)
        try:
            session_check(conn, user, tls=True)
        finally:
            conn.close()
    assert peer.events == ["tls", "auth_switch", "sha256_tls_cleartext", "authenticated"] * 2


@pytest.mark.parametrize("kind", ["pymysql"] + (["connector-cext"] if HAVE_CEXT else []))
def test_sha256_plaintext_rsa(peer, kind):
    user = "sha256user"
    conn = connect(kind, peer.port, user, PASSWORDS[user], tls=False, ca=None)
    try:
        session_check(conn, user, tls=False)
    finally:
        conn.close()
    assert peer.events == ["auth_switch", "public_key_request", "sha256_rsa", "authenticated"]


def test_sha256_plaintext_connector_pure_refuses(peer):
    with pytest.raises(mysql_connector.Error) as ei:
        connect("connector-pure", peer.port, "sha256user", PASSWORDS["sha256user"], tls=False, ca=None)
    assert "sha256_password requires SSL" in str(ei.value)
    assert peer.events == ["auth_switch"]


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
@pytest.mark.parametrize("kind", CLIENTS)
def test_native_password(peer, ca_path, kind, tls):
    user = "nativeuser"
    conn = connect(kind, peer.port, user, PASSWORDS[user], tls=tls, ca=ca_path)
    try:
        session_check(conn, user, tls=tls)
    finally:
        conn.close()
    expected = ["auth_switch", "native", "authenticated"]
    assert peer.events == (["tls"] + expected if tls else expected)


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
@pytest.mark.parametrize("kind", CLIENTS)
def test_auth_switch_server_default_native(make_peer, ca_path, kind, tls):
    """Greeting offers mysql_native_password; the caching_sha2 account restarts with a new nonce."""
    pt = make_peer(default_plugin="mysql_native_password")
    user = "sha2user"
    connect(kind, pt.port, user, PASSWORDS[user], tls=True, ca=ca_path).close()  # warm the cache
    n = len(pt.events)
    conn = connect(kind, pt.port, user, PASSWORDS[user], tls=tls, ca=ca_path)
    try:
        session_check(conn, user, tls=tls)
    finally:
        conn.close()
    assert pt.events[:4] == ["tls", "auth_switch", "full_auth_tls_cleartext", "authenticated"]
    assert new_events(pt, n) == (["tls"] if tls else []) + ["auth_switch", "fast_auth", "authenticated"]


@pytest.mark.parametrize("kind", CONNECTOR_KINDS)
def test_auth_switch_client_default_differs(peer, ca_path, kind):
    """Client starts with mysql_native_password, account and greeting use caching_sha2."""
    user = "sha2user"
    conn = connect(kind, peer.port, user, PASSWORDS[user], tls=True, ca=ca_path, auth_plugin="mysql_native_password")
    try:
        session_check(conn, user, tls=True)
    finally:
        conn.close()
    assert peer.events == ["tls", "auth_switch", "full_auth_tls_cleartext", "authenticated"]


def _wrong_password_cases() -> list[tuple[str, str, bool]]:
    """Every client x account x transport, less the combinations a client refuses locally before it
    sends anything (each has its own test): connector-pure and sha256 without TLS; libmysqlclient and
    caching_sha2 full auth on plain TCP (2061)."""
    cases = []
    for kind in CLIENTS:
        for user in ("sha2user", "nativeuser", "sha256user", "nosuchuser"):
            for tls in (True, False):
                if not tls and user == "sha256user" and kind == "connector-pure":
                    continue
                if not tls and user in ("sha2user", "nosuchuser") and kind == "connector-cext":
                    continue
                cases.append((kind, user, tls))
    return cases


@pytest.mark.parametrize(("kind", "user", "tls"), _wrong_password_cases())
def test_wrong_password(peer, ca_path, kind, user, tls):
    with pytest.raises((pymysql.err.MySQLError, mysql_connector.Error)) as ei:
        connect(kind, peer.port, user, "wrong-password", tls=tls, ca=ca_path)
    assert error_code(ei.value) == 1045
    assert f"Access denied for user '{user}'@'127.0.0.1' (using password: YES)" in str(ei.value)
    assert peer.events[-1] == "denied"


@pytest.mark.parametrize("kind", CLIENTS)
def test_require_ssl_account(peer, ca_path, kind):
    user = "ssluser"
    conn = connect(kind, peer.port, user, PASSWORDS[user], tls=True, ca=ca_path)
    try:
        session_check(conn, user, tls=True)
    finally:
        conn.close()
    # correct password, warm cache (fast path works on plain TCP) -- still refused without TLS
    with pytest.raises((pymysql.err.MySQLError, mysql_connector.Error)) as ei:
        connect(kind, peer.port, user, PASSWORDS[user], tls=False, ca=None)
    assert error_code(ei.value) == 1045
    assert "Access denied for user 'ssluser'@'127.0.0.1' (using password: YES)" in str(ei.value)
    assert peer.events[-2:] == ["fast_auth", "denied"]


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
@pytest.mark.parametrize("kind", CONNECTOR_KINDS)
def test_change_user(peer, ca_path, kind, tls):
    conn = connect(kind, peer.port, "nativeuser", PASSWORDS["nativeuser"], tls=tls, ca=ca_path)
    try:
        plan = [("nativeuser", "native")]
        if tls:
            plan += [
                ("sha2user", "full_auth_tls_cleartext"),
                ("sha2user", "fast_auth"),
                ("sha256user", "sha256_tls_cleartext"),
            ]
        else:
            if kind == "connector-cext":
                plan += [("sha256user", "sha256_rsa")]
        for user, path_event in plan:
            n = len(peer.events)
            conn.cmd_change_user(username=user, password=PASSWORDS[user])
            assert [_text(r[0]) for r in query(conn, "SELECT CURRENT_USER()")] == [f"{user}@%"]
            assert path_event in new_events(peer, n)
            assert new_events(peer, n)[:2] == ["change_user", "auth_switch"]
            assert new_events(peer, n)[-1] == "authenticated"
        n = len(peer.events)
        with pytest.raises(mysql_connector.Error) as ei:
            conn.cmd_change_user(username="nativeuser", password="wrong")
        assert ei.value.errno == 1045
        assert new_events(peer, n) == ["change_user", "auth_switch", "native", "denied"]
    finally:
        try:
            conn.close()
        except Exception:
            pass


@pytest.mark.parametrize("kind", CLIENTS)
def test_unknown_query_is_1064(peer, ca_path, kind):
    conn = connect(kind, peer.port, "nativeuser", PASSWORDS["nativeuser"], tls=True, ca=ca_path)
    try:
        with pytest.raises((pymysql.err.MySQLError, mysql_connector.Error)) as ei:
            query(conn, "SELECT * FROM no_such_table")
        assert error_code(ei.value) == 1064
        conn.ping()  # COM_PING still works afterwards
        assert [tuple(int(x) for x in r) for r in query(conn, "SELECT 42")] == [(42,)]
    finally:
        conn.close()


@pytest.mark.skipif(not HAVE_CEXT, reason="mysql-connector C extension not importable")
def test_cext_is_really_the_c_extension(peer, ca_path):
    conn = connect("connector-cext", peer.port, "sha2user", PASSWORDS["sha2user"], tls=True, ca=ca_path)
    try:
        assert type(conn).__name__ == "CMySQLConnection"
    finally:
        conn.close()
