"""`tlsproxy check`: per route, connect upstream once and report what an operator needs to know:
the greeting, the negotiated TLS version and cipher, the certificate chain, and whether verification
passed. Blocking sockets: this is a one-shot command, not the proxy's hot path.
"""

from __future__ import annotations

import socket
import ssl
import sys
import time
from dataclasses import dataclass, field, replace
from typing import TextIO

from tlsproxy import certs
from tlsproxy.config import ProxyConfig, Route, SslMode
from tlsproxy.errors import TlsProxyError, UpstreamConnectError, UpstreamTimeoutError
from tlsproxy.mysql.codec import DecodeError
from tlsproxy.mysql.constants import Capability
from tlsproxy.mysql.greeting import UpstreamGreeting, ssl_request_for, ssl_request_frame
from tlsproxy.mysql.messages import InitialHandshake
from tlsproxy.tls import UpstreamTls, build_client_context, build_upstream_tls, describe_tls_failure

CHECK_CLIENT_CAPABILITIES = (
    Capability.LONG_PASSWORD | Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION | Capability.TRANSACTIONS
    | Capability.PLUGIN_AUTH | Capability.MULTI_RESULTS
)
UTF8MB4_GENERAL_CI = 45


@dataclass
class CheckResult:
    route: Route
    ok: bool = False
    server_version: str = ""
    tls_version: str | None = None
    cipher: str | None = None
    verified: str = ""
    error: str | None = None
    chain: list[certs.CertificateSummary] = field(default_factory=list)
    seconds: float = 0.0


def client_response_for_check() -> bytes:
    """A HandshakeResponse from a generic 4.1 client; only its 32-byte prefix is sent (as the SSLRequest)."""
    prefix = (int(CHECK_CLIENT_CAPABILITIES).to_bytes(4, "little") + (1 << 24).to_bytes(4, "little")
              + bytes((UTF8MB4_GENERAL_CI,)) + bytes(23))
    return prefix + b"tlsproxy_check\x00\x00mysql_native_password\x00"


def _read_greeting(sock: socket.socket, *, require_tls: bool) -> InitialHandshake:
    """The upstream's greeting, judged as the proxy judges it (an ERR in its place raises)."""
    reader = UpstreamGreeting(require_tls=require_tls)
    while reader.greeting is None:
        data = sock.recv(65536)
        if not data:
            raise UpstreamConnectError("upstream closed the connection before its greeting")
        reader.receive_data(data)
    return reader.greeting


def _send_ssl_request(sock: socket.socket) -> None:
    sock.sendall(ssl_request_frame(ssl_request_for(client_response_for_check())))


def check_route(route: Route, upstream_tls: UpstreamTls | None) -> CheckResult:
    result = CheckResult(route)
    started = time.monotonic()
    try:
        sock = socket.create_connection((route.upstream.host, route.upstream.port), timeout=route.connect_timeout)
    except TimeoutError:
        result.error = str(UpstreamTimeoutError(f"no answer from {route.upstream} within {route.connect_timeout:g}s"))
        return result
    except OSError as exc:
        result.error = f"cannot connect to upstream {route.upstream}: {exc.strerror or exc}"
        return result
    try:
        sock.settimeout(route.handshake_timeout)
        greeting = _read_greeting(sock, require_tls=upstream_tls is not None)
        result.server_version = greeting.server_version
        if upstream_tls is None:
            result.ok = True
            result.verified = "no TLS (ssl_mode DISABLED)"
            return result
        _send_ssl_request(sock)
        result.ok, result.verified = _tls_handshake(sock, route, upstream_tls, result)
    except TlsProxyError as exc:
        result.error = exc.message
    except (OSError, DecodeError) as exc:
        result.error = f"{exc.__class__.__name__}: {exc}"
    finally:
        sock.close()
        result.seconds = time.monotonic() - started
    return result


def _tls_handshake(sock: socket.socket, route: Route, upstream_tls: UpstreamTls,
                   result: CheckResult) -> tuple[bool, str]:
    try:
        tls_sock = upstream_tls.context.wrap_socket(sock, server_hostname=upstream_tls.server_hostname)
    except (ssl.SSLError, OSError) as exc:
        result.error = describe_tls_failure(exc, upstream_tls).message
        if not isinstance(exc, ssl.SSLCertVerificationError):
            return False, "TLS handshake failed"
        # Show the chain that failed: one more connection without verification, only to display it.
        _describe_unverified(route, result)
        return False, "FAILED"
    _record_session(tls_sock, result)
    tls_sock.close()
    if upstream_tls.mode is SslMode.VERIFY_IDENTITY:
        return True, f"chain and host name verified (name {upstream_tls.expected_name})"
    if upstream_tls.mode is SslMode.VERIFY_CA:
        return True, "chain verified; host name NOT checked (VERIFY_CA)"
    return True, "NOT verified (ssl_mode REQUIRED)"


def _record_session(tls_sock: ssl.SSLSocket, result: CheckResult) -> None:
    result.tls_version = tls_sock.version()
    cipher = tls_sock.cipher()
    result.cipher = cipher[0] if cipher else None
    chain = _peer_chain(tls_sock)
    result.chain = [certs.summarize_certificate(der) for der in chain]


def _peer_chain(tls_sock: ssl.SSLSocket) -> list[bytes]:
    sslobj = getattr(tls_sock, "_sslobj", None)
    for name in ("get_verified_chain", "get_unverified_chain"):
        getter = getattr(sslobj, name, None)
        if getter is None:
            continue
        try:
            chain = getter()
        except (ssl.SSLError, ValueError):
            continue
        if chain:
            return [c.public_bytes(ssl._ssl.ENCODING_DER) if hasattr(c, "public_bytes") else c for c in chain]  # type: ignore[attr-defined]
    leaf = tls_sock.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def _describe_unverified(route: Route, result: CheckResult) -> None:
    unverified = replace(route.tls, mode=SslMode.REQUIRED)
    context = build_client_context(unverified)
    try:
        with socket.create_connection((route.upstream.host, route.upstream.port), timeout=route.connect_timeout) as sock:
            sock.settimeout(route.handshake_timeout)
            _read_greeting(sock, require_tls=True)
            _send_ssl_request(sock)
            server_name = route.tls.server_name or route.upstream.host
            with context.wrap_socket(sock, server_hostname=server_name) as tls_sock:
                _record_session(tls_sock, result)
    except (OSError, ssl.SSLError, TlsProxyError, DecodeError):
        pass


def print_result(result: CheckResult, out: TextIO) -> None:
    route = result.route
    status = "OK" if result.ok else "FAILED"
    print(f"route {route.name}: {route.listen} -> {route.upstream}  [{status}]  ({result.seconds * 1000:.0f} ms)", file=out)
    print(f"  ssl_mode:      {route.tls.mode.value}", file=out)
    if result.server_version:
        print(f"  server:        {result.server_version}", file=out)
    if result.tls_version:
        print(f"  tls:           {result.tls_version}, cipher {result.cipher}", file=out)
    if result.verified:
        print(f"  verification:  {result.verified}", file=out)
    if result.error:
        print(f"  error:         {result.error}", file=out)
    for depth, summary in enumerate(result.chain):
        print(f"  certificate {depth}: {summary.subject}", file=out)
        print(f"    issuer:      {summary.issuer}", file=out)
        names = list(summary.san_dns) + list(summary.san_ip)
        if names:
            print(f"    SANs:        {', '.join(names)}", file=out)
        days = summary.days_left()
        warn = "  (EXPIRED)" if days < 0 else ("  (expires soon)" if days < 30 else "")
        print(f"    notAfter:    {summary.not_after:%Y-%m-%d %H:%M:%S} UTC, {days} days left{warn}", file=out)


def run_check(config: ProxyConfig, out: TextIO = sys.stdout) -> int:
    failures = 0
    for index, route in enumerate(config.routes):
        upstream_tls = build_upstream_tls(route, key_prefix=f"routes[{index}].")
        result = check_route(route, upstream_tls)
        print_result(result, out)
        failures += not result.ok
    return 1 if failures else 0
