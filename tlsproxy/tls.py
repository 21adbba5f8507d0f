"""Upstream TLS: one `ssl.SSLContext` per route, built once from validated settings, and the mapping of
`ssl` failures to the proxy's errors (what the client and the log are told).

Modes follow MySQL's --ssl-mode. VERIFY_IDENTITY (default) checks chain and host name; VERIFY_CA the
chain only; REQUIRED encrypts without any verification and DISABLED does no TLS at all — both only by
explicit configuration, and loudly logged by the caller.
"""

from __future__ import annotations

import ctypes
import functools
import re
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tlsproxy import certs
from tlsproxy.config import ConfigError, Route, SslMode, TlsSettings
from tlsproxy.errors import CertificateVerifyError, TlsInjectionError, UpstreamTlsError
from tlsproxy.outcome import Outcome
from tlsproxy.tls_sessions import TlsSessionCache

_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


@dataclass(frozen=True)
class UpstreamTls:
    """What a session needs to upgrade one upstream connection."""

    context: ssl.SSLContext
    server_hostname: str | None
    """Name sent as SNI and, in VERIFY_IDENTITY, matched against the certificate (a DNS name or an IP)."""
    expected_name: str
    mode: SslMode
    sessions: TlsSessionCache | None = None
    """Resumable sessions of `context` (None: resumption off)."""


class HandshakeMeter:
    """Adds up the thread CPU time spent inside the connection's own handshake steps: exactly the TLS
    handshake's CPU (key exchange, signature checks, certificate verification and, on a socket, the
    system calls that carry its records), not the event loop's other work.

    It also reports back on the session it was offered (`offered_session`, set by
    `UpstreamSSLContext`): a handshake that fails, or that the server did not resume, drops that
    session from the cache."""

    handshake_cpu_seconds = 0.0
    offered_session: ssl.SSLSession | None = None
    context: ssl.SSLContext
    session_reused: bool

    def do_handshake(self, *args: Any) -> None:
        started = time.thread_time()
        try:
            super().do_handshake(*args)  # type: ignore[misc]
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except BaseException:
            self._drop_offered_session()
            raise
        else:
            if self.offered_session is not None and not self.session_reused:
                self._drop_offered_session()
        finally:
            self.handshake_cpu_seconds += time.thread_time() - started

    def _drop_offered_session(self) -> None:
        cache = getattr(self.context, "session_cache", None)
        if self.offered_session is not None and cache is not None:
            cache.discard(self.offered_session)


class MeteredSSLObject(HandshakeMeter, ssl.SSLObject):
    """The metered connection over MemoryBIOs (`loop.start_tls`: asyncio and uvloop create it through
    `SSLContext.wrap_bio`)."""


class MeteredSSLSocket(HandshakeMeter, ssl.SSLSocket):
    """The metered connection on the socket itself (`tls_leg`, through `SSLContext.wrap_socket`)."""


class UpstreamSSLContext(ssl.SSLContext):
    """The client context of one route. It offers the newest cached session for the same server name to
    every connection it wraps (`wrap_socket` for `tls_leg`; `wrap_bio`, which asyncio's and uvloop's
    `start_tls` call and which is their only way to take a session). Verification is not weakened by
    it: the session was verified in full under this very context (CA, CRL, host name), and a reload
    builds a new context with an empty cache."""

    session_cache: TlsSessionCache | None = None

    def _cached_session(self, server_side: bool, server_hostname: str | None,
                        session: ssl.SSLSession | None) -> ssl.SSLSession | None:
        cache = self.session_cache
        if session is None and cache is not None and not server_side:
            session = cache.take(server_hostname)
        return session

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        session = self._cached_session(server_side, server_hostname, session)
        ssl_object = super().wrap_bio(incoming, outgoing, server_side=server_side,
                                      server_hostname=server_hostname, session=session)
        if isinstance(ssl_object, HandshakeMeter):
            ssl_object.offered_session = session
        return ssl_object

    def wrap_socket(self, sock: socket.socket, server_side: bool = False,  # type: ignore[override]
                    do_handshake_on_connect: bool = True, suppress_ragged_eofs: bool = True,
                    server_hostname: str | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        session = self._cached_session(server_side, server_hostname, session)
        later = session is not None and not do_handshake_on_connect  # set before the first handshake step
        tls_socket = super().wrap_socket(sock, server_side=server_side, do_handshake_on_connect=do_handshake_on_connect,
                                         suppress_ragged_eofs=suppress_ragged_eofs, server_hostname=server_hostname,
                                         session=None if later else session)
        if later:
            offer_session(tls_socket, session)  # type: ignore[arg-type]
        if isinstance(tls_socket, HandshakeMeter):
            tls_socket.offered_session = session
        return tls_socket


def build_upstream_tls(route: Route, key_prefix: str = "") -> UpstreamTls | None:
    """The route's TLS context, or None for DISABLED. ConfigError names the route key at fault."""
    settings = route.tls
    if settings.mode is SslMode.DISABLED:
        return None
    context = build_client_context(settings, key_prefix)
    name = settings.server_name or route.upstream.host
    sessions = TlsSessionCache(settings.session_cache_size) if settings.session_resumption else None
    context.session_cache = sessions
    return UpstreamTls(context, name, name, settings.mode, sessions)


def build_client_context(settings: TlsSettings, key_prefix: str = "") -> UpstreamSSLContext:
    context = UpstreamSSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.sslobject_class = MeteredSSLObject
    context.sslsocket_class = MeteredSSLSocket
    versions = settings.tls_versions
    cipher = settings.cipher
    if settings.allow_legacy_tls and versions[0] in ("TLSv1", "TLSv1.1"):
        # OpenSSL 3 refuses TLS < 1.2 at the default security level.
        cipher = (cipher or "DEFAULT") + ":@SECLEVEL=0"
    try:
        context.minimum_version = _VERSIONS[versions[0]]
        context.maximum_version = _VERSIONS[versions[-1]]
    except ValueError as exc:  # pragma: no cover - depends on the OpenSSL build
        raise ConfigError(key_prefix + "tls_version", f"not supported by this OpenSSL: {exc}") from None
    if cipher:
        try:
            context.set_ciphers(cipher)
        except ssl.SSLError:
            raise ConfigError(key_prefix + "ssl_cipher", f"OpenSSL accepts no cipher in {settings.cipher!r}") from None
    if settings.ciphersuites:
        set_tls13_ciphersuites(context, settings.ciphersuites, key_prefix + "tls_ciphersuites")

    if settings.mode in (SslMode.VERIFY_IDENTITY, SslMode.VERIFY_CA):
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = settings.mode is SslMode.VERIFY_IDENTITY
        _load_trust(context, settings, key_prefix)
    else:
        # REQUIRED: encryption without verification, an explicit opt-in warned about at start and
        # on every connection (connection_record.py).
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

    if settings.cert_file is not None:
        assert settings.key_file is not None  # config.py requires both
        _load_client_certificate(context, settings.cert_file, settings.key_file, key_prefix)
    return context


def _load_client_certificate(context: ssl.SSLContext, cert_file: Path, key_file: Path, key_prefix: str) -> None:
    """ConfigError names the file at fault: unreadable, not a PEM certificate or key, an encrypted key (which
    OpenSSL would otherwise ask a pass phrase for on the terminal), or a key of another certificate."""
    for path, key in ((cert_file, "ssl_cert"), (key_file, "ssl_key")):
        try:
            path.read_bytes()
        except OSError as exc:
            raise ConfigError(key_prefix + key, f"cannot read {path}: {exc.strerror or exc}") from None

    def encrypted() -> bytes:
        raise ConfigError(key_prefix + "ssl_key", f"{key_file} is encrypted; give an unencrypted key "
                                                  f"(openssl pkey -in {key_file} -out NEW_FILE)")

    try:
        context.load_cert_chain(str(cert_file), str(key_file), password=encrypted)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(key_prefix + "ssl_key", f"{key_file} is not the key of the certificate {cert_file}") from None
        try:
            ssl.create_default_context(cafile=str(cert_file))
        except ssl.SSLError:
            raise ConfigError(key_prefix + "ssl_cert", f"{cert_file} holds no PEM certificate "
                                                       "(-----BEGIN CERTIFICATE-----)") from None
        raise ConfigError(key_prefix + "ssl_key", f"{key_file} holds no PEM private key "
                                                  "(-----BEGIN PRIVATE KEY-----)") from None


def _load_trust(context: ssl.SSLContext, settings: TlsSettings, key_prefix: str) -> None:
    loaded = False
    if settings.ca_file is not None:
        try:
            pems = certs.load_ca_certificates(settings.ca_file)
            context.load_verify_locations(cadata="".join(pem.decode("ascii") for pem in pems))
        except certs.CertificateFileError as exc:
            raise ConfigError(key_prefix + "ssl_ca", str(exc)) from None
        except ssl.SSLError as exc:
            raise ConfigError(key_prefix + "ssl_ca", f"{settings.ca_file}: OpenSSL rejected a certificate: {exc}") from None
        loaded = True
    if settings.ca_path is not None:
        _check_ca_directory(settings.ca_path, key_prefix + "ssl_capath")
        context.load_verify_locations(capath=str(settings.ca_path))
        loaded = True
    if settings.uses_system_trust:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        loaded = True
    if not loaded:
        raise ConfigError(key_prefix + "ssl_ca", "no trust anchors: give ssl_ca or ssl_capath, or set ssl_system_trust: true")
    if settings.crl_file is not None:
        try:
            certs.check_crl_file(settings.crl_file)
        except certs.CertificateFileError as exc:
            raise ConfigError(key_prefix + "ssl_crl", str(exc)) from None
        try:
            context.load_verify_locations(cafile=str(settings.crl_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(key_prefix + "ssl_crl", f"cannot load CRL {settings.crl_file}: {exc}") from None
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


HASHED_NAME = re.compile(r"^[0-9a-f]{8}\.[0-9]+$")
"""How OpenSSL looks a CA up in a directory: the subject's hash, a dot, a number (`openssl rehash` makes them)."""


def _check_ca_directory(path: Path, key: str) -> None:
    """OpenSSL reads a CA directory only when a handshake needs an issuer, and finds nothing in one without
    hashed names: every connection would then fail verification. Refuse that at start instead."""
    try:
        names = [entry.name for entry in path.iterdir()]
    except FileNotFoundError:
        raise ConfigError(key, f"{path} does not exist") from None
    except NotADirectoryError:
        raise ConfigError(key, f"{path} is not a directory; give a CA bundle file with ssl_ca (--ssl-ca)") from None
    except OSError as exc:
        raise ConfigError(key, f"cannot read the directory {path}: {exc.strerror or exc}") from None
    if not names:
        raise ConfigError(key, f"{path} is empty; put the CA certificates there and run `openssl rehash {path}`")
    if not any(HASHED_NAME.match(name) for name in names):
        raise ConfigError(key, f"{path} has no hashed names (such as 1a2b3c4d.0), so OpenSSL would find no CA in "
                               f"it; run `openssl rehash {path}` (or c_rehash), or give a bundle with ssl_ca")


@functools.cache
def _openssl(*names: str) -> list[Any] | None:
    """OpenSSL functions of the library this Python's `ssl` module runs on, or None. Each caller sets
    the types of the functions it uses (always the same ones), once per process."""
    try:
        import _ssl

        library = ctypes.CDLL(_ssl.__file__)
        return [getattr(library, name) for name in names]
    except (OSError, AttributeError):
        return None


def _context_pointer(context: ssl.SSLContext) -> int | None:
    """The SSL_CTX of `context` (a PySSLContext holds it right after the object header), checked: OpenSSL
    must report the options Python reports for the context."""
    functions = _openssl("SSL_CTX_get_options")
    if functions is None:
        return None
    get_options, = functions
    get_options.argtypes = [ctypes.c_void_p]
    get_options.restype = ctypes.c_uint64
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer or get_options(pointer) != context.options:
        return None
    return pointer


def set_tls13_ciphersuites(context: ssl.SSLContext, suites: str, key: str) -> None:
    """Python's ssl module has no API for TLS 1.3 suites; call OpenSSL's SSL_CTX_set_ciphersuites on the
    context's SSL_CTX, after checking that the pointer really is that SSL_CTX (its options must match)."""
    functions = _openssl("SSL_CTX_set_ciphersuites")
    if functions is None:
        raise ConfigError(key, "this Python's OpenSSL does not allow choosing TLS 1.3 cipher suites")
    set_suites, = functions
    set_suites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    set_suites.restype = ctypes.c_int
    pointer = _context_pointer(context)
    if pointer is None:
        raise ConfigError(key, "cannot reach this Python's OpenSSL context to set TLS 1.3 cipher suites")
    if set_suites(pointer, suites.encode("ascii")) != 1:
        raise ConfigError(key, f"OpenSSL accepts no TLS 1.3 suite in {suites!r} (e.g. TLS_AES_256_GCM_SHA384)")
    wanted = {name.strip() for name in suites.split(":") if name.strip()}
    offered = {c["name"] for c in context.get_ciphers() if c.get("protocol") == "TLSv1.3"}
    unknown = wanted - offered
    if unknown:
        raise ConfigError(key, f"unknown TLS 1.3 suite(s) {', '.join(sorted(unknown))}; OpenSSL offers "
                               f"{', '.join(sorted(offered)) or 'none of them'}")


READ_BUFFER_BYTES = 64 * 1024
"""OpenSSL's read buffer per connection while it holds data (read-ahead: what one system call may take)."""
_SSL_CTRL_MODE, _SSL_MODE_RELEASE_BUFFERS = 33, 0x10


def _ssl_pointer(tls_socket: ssl.SSLSocket) -> int | None:
    """The SSL of one connection: it sits in the C object `SSLSocket._sslobj` after the header and the weak
    reference to the socket; checked by its SSL_CTX, which must be the context's (itself checked by its
    options)."""
    functions = _openssl("SSL_get_SSL_CTX")
    context_pointer = _context_pointer(tls_socket.context)
    ssl_object = getattr(tls_socket, "_sslobj", None)
    if functions is None or context_pointer is None or ssl_object is None:
        return None
    get_context, = functions
    get_context.argtypes = [ctypes.c_void_p]
    get_context.restype = ctypes.c_void_p
    pointer = ctypes.c_void_p.from_address(id(ssl_object) + object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)).value
    if not pointer or get_context(pointer) != context_pointer:
        return None
    return pointer


def tune_reads(tls_socket: ssl.SSLSocket) -> Callable[[], int] | None:
    """Set one connection up for reading straight from its socket, and return its `SSL_has_pending`;
    None (and OpenSSL left as Python sets it up) where this Python's OpenSSL cannot be reached safely.

    - Read-ahead: without it OpenSSL reads a record in two system calls, its 5-byte header and then its
      body; with it, one read takes whatever the socket holds, up to the read buffer. Whatever it holds
      beyond the record being read stays inside OpenSSL, where the socket's readiness cannot announce
      it and `SSLSocket.pending()` (decrypted bytes only) does not count it: the caller must read on
      while `SSL_has_pending` is true.
    - Buffers only while in use (SSL_MODE_RELEASE_BUFFERS): an idle connection holds no read or write
      buffer, so the read buffer can be larger: READ_BUFFER_BYTES, several records per system call for
      a bulk result."""
    functions = _openssl("SSL_has_pending", "SSL_set_read_ahead", "SSL_ctrl", "SSL_set_default_read_buffer_len")
    pointer = _ssl_pointer(tls_socket)
    if functions is None or pointer is None:
        return None
    has_pending, set_read_ahead, control, set_read_buffer = functions
    has_pending.argtypes = [ctypes.c_void_p]
    has_pending.restype = ctypes.c_int
    set_read_ahead.argtypes = [ctypes.c_void_p, ctypes.c_int]
    set_read_ahead.restype = set_read_buffer.restype = None
    control.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    control.restype = ctypes.c_long
    set_read_buffer.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    set_read_ahead(pointer, 1)
    set_read_buffer(pointer, READ_BUFFER_BYTES)
    control(pointer, _SSL_CTRL_MODE, _SSL_MODE_RELEASE_BUFFERS, None)
    return functools.partial(has_pending, ctypes.c_void_p(pointer))


def offer_session(tls_socket: ssl.SSLSocket, session: ssl.SSLSession) -> None:
    """Offer `session` for resumption before the handshake, on a copy of its own: OpenSSL may update
    the session a connection resumes (a TLS 1.2 server's renewed ticket), and the cached one must stay
    as it was. `ssl` copies by i2d then d2i, parsing the server's certificates again (a workaround for
    OpenSSL before 1.1.0h; the largest single cost in the proxy's profile of connect-per-request);
    SSL_SESSION_dup copies the same in memory and takes references to the certificates. The SSL_SESSION
    is the one `session` holds (right after the object header), checked by its id and time. Where
    anything cannot be checked, `ssl`'s own setter."""
    functions = _openssl("SSL_set_session", "SSL_SESSION_get_id", "SSL_SESSION_get_time", "SSL_SESSION_dup",
                         "SSL_SESSION_free")
    pointer = _ssl_pointer(tls_socket) if ssl.OPENSSL_VERSION_INFO >= (1, 1, 1) else None
    if functions is not None and pointer is not None:
        set_session, get_id, get_time, duplicate, free = functions
        set_session.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        set_session.restype = ctypes.c_int
        get_id.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint)]
        get_id.restype = duplicate.restype = ctypes.c_void_p
        get_time.argtypes = duplicate.argtypes = free.argtypes = [ctypes.c_void_p]
        get_time.restype = ctypes.c_long
        free.restype = None
        session_pointer = ctypes.c_void_p.from_address(id(session) + object.__basicsize__).value
        if session_pointer:
            length = ctypes.c_uint()
            id_pointer = get_id(session_pointer, ctypes.byref(length))
            same = (get_time(session_pointer) == session.time and id_pointer is not None
                    and ctypes.string_at(id_pointer, length.value) == session.id)
            copy = duplicate(session_pointer) if same else None
            if copy:
                taken = set_session(pointer, copy) == 1
                free(copy)  # SSL_set_session holds its own reference
                if taken:
                    return
    tls_socket.session = session


# ---- failures ------------------------------------------------------------------------------------

_VERIFY_REASONS = {
    # OpenSSL X509_V_ERR_* codes
    9: (Outcome.NOT_YET_VALID, "certificate is not yet valid"),
    10: (Outcome.EXPIRED, "certificate has expired"),
    18: (Outcome.CERTIFICATE_UNTRUSTED, "self-signed certificate is not trusted"),
    19: (Outcome.CERTIFICATE_UNTRUSTED, "the chain's root CA is not trusted (self-signed certificate in certificate chain)"),
    20: (Outcome.CERTIFICATE_UNTRUSTED, "issuer not trusted (unable to get local issuer certificate)"),
    21: (Outcome.CERTIFICATE_UNTRUSTED, "unable to verify the first certificate"),
    3: (Outcome.CRL_UNAVAILABLE, "no CRL from the certificate's issuer in ssl_crl (unable to get certificate CRL)"),
    12: (Outcome.CRL_EXPIRED, "the CRL in ssl_crl has expired"),
    23: (Outcome.REVOKED, "certificate revoked"),
    62: (Outcome.HOST_NAME_MISMATCH, "host name mismatch"),
    64: (Outcome.HOST_NAME_MISMATCH, "IP address mismatch"),
}


def describe_tls_failure(exc: BaseException, upstream: UpstreamTls) -> UpstreamTlsError:
    """The proxy error for a failed upstream TLS handshake, with a message an operator can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        label, text = _VERIFY_REASONS.get(exc.verify_code, (Outcome.CERTIFICATE_UNTRUSTED, exc.verify_message or "unknown reason"))
        if label is Outcome.HOST_NAME_MISMATCH:
            text += f" (expected {upstream.expected_name})"
        return CertificateVerifyError(f"upstream certificate verify failed: {text}", metric_label=label)
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if any(word in reason for word in ("PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE", "VERSION_TOO_LOW", "VERSION_TOO_HIGH")):
            return UpstreamTlsError(f"upstream TLS handshake failed: no TLS version in common ({exc.reason})",
                                    metric_label=Outcome.PROTOCOL_VERSION)
        if "WRONG_VERSION_NUMBER" in reason or "PACKET_LENGTH_TOO_LONG" in reason or "RECORD_LAYER" in reason:
            return TlsInjectionError(
                f"upstream sent non-TLS data after the SSLRequest ({exc.reason}); refusing the connection")
        if "CIPHER" in reason or "HANDSHAKE_FAILURE" in reason:
            return UpstreamTlsError(f"upstream TLS handshake failed: no cipher in common ({exc.reason})",
                                    metric_label=Outcome.NO_SHARED_CIPHER)
        return UpstreamTlsError(f"upstream TLS handshake failed: {exc.reason or exc}")
    if isinstance(exc, (ConnectionError, EOFError)):
        return UpstreamTlsError("upstream closed the connection during the TLS handshake", metric_label=Outcome.UPSTREAM_LOST)
    return UpstreamTlsError(f"upstream TLS handshake failed: {exc.__class__.__name__}: {exc}")
