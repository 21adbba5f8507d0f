"""The threat model's claims (SECURITY.md), each against the real MariaDB with TLS: a man in the middle,
certificates that must not pass, a downgrade, an injection, legacy TLS, a client asking for TLS.

Every refusal is checked as the real clients show it (mariadb CLI, PyMySQL, mysql-connector-python),
word for word, and the upstream leg is checked for the client's credentials: by a recording relay and,
for the downgrade, by a packet capture on the loopback interface.
"""

from __future__ import annotations

import socket
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import pymysql
import pytest
from pymysql.constants import CLIENT

from tests.conftest import NATIVE, PLAIN, serve_certificate
from tests.support.capture import LoopbackCapture
from tests.support.clients import assert_no_credentials_in_plaintext, assert_refused
from tests.support.pki import TestPki
from tests.support.proxy import ProxyThread, make_route
from tests.support.wire import (CLIENT_SSL, RecordingRelay, inject_after_ssl_request, read_available,
                                read_frame, strip_tls_from_greeting)
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = pytest.mark.integration

SSL_REQUEST_SEQ = 1


def assert_tls_was_attempted(relay: RecordingRelay) -> None:
    """The proxy sent its SSLRequest (32 bytes, seq 1) and then a TLS handshake record, nothing else
    in plaintext: the refusal happened inside the TLS handshake."""
    assert relay.to_server[:4] == b"\x20\x00\x00" + bytes((SSL_REQUEST_SEQ,)), bytes(relay.to_server[:4])
    assert relay.to_server[36:37] == b"\x16", "a TLS handshake record after the SSLRequest"


# ---- certificates that must not pass (VERIFY_IDENTITY, the default) --------------------------------


CERTIFICATE_CASES = {
    # a man in the middle: a certificate for the right name from a CA the proxy does not trust
    "another CA, right name": ("other_server_cert", None,
                               "tlsproxy: upstream certificate verify failed: issuer not trusted "
                               "(unable to get local issuer certificate)"),
    "not yet valid": ("not_yet_valid_cert", None,
                      "tlsproxy: upstream certificate verify failed: certificate is not yet valid"),
    "revoked, CRL configured": ("server_cert", "crl_revoking_server",
                                "tlsproxy: upstream certificate verify failed: certificate revoked"),
}


@pytest.mark.parametrize("case", CERTIFICATE_CASES)
def test_certificate_refused(case: str, alt: MariaDBServer, pki: TestPki) -> None:
    cert_name, crl_name, expected = CERTIFICATE_CASES[case]
    cert = getattr(pki, cert_name)
    key = getattr(pki, cert_name.replace("_cert", "_key"))
    crl = getattr(pki, crl_name) if crl_name else None
    serve_certificate(alt, cert, key)
    with RecordingRelay(alt.port) as relay:
        with ProxyThread(make_route(relay.port, ca_file=pki.ca, crl_file=crl)) as proxy:
            assert_refused(proxy.port, expected, account=PLAIN, exact=True)
    assert_tls_was_attempted(relay)
    assert_no_credentials_in_plaintext(relay, PLAIN)


# ---- downgrade: a man in the middle strips CLIENT_SSL from the real server's greeting ----------------


def test_greeting_stripped_of_tls_is_refused_and_nothing_reaches_the_wire(
        mariadb: MariaDBServer, pki: TestPki, tmp_path: Path, event_loop_name: str) -> None:
    with ExitStack() as stack:
        relay = stack.enter_context(RecordingRelay(mariadb.port, prelude=strip_tls_from_greeting))
        proxy = stack.enter_context(ProxyThread(make_route(relay.port, ca_file=pki.ca), event_loop=event_loop_name))
        proxy_port = proxy.port
        capture = stack.enter_context(LoopbackCapture(tmp_path / "lo.pcap", [proxy_port, relay.port, mariadb.port]))
        assert_refused(proxy_port, "tlsproxy: upstream does not offer TLS; refusing to send credentials in plaintext",
                       exact=True)
    # the attack happened: the proxy got the real greeting without CLIENT_SSL
    greeting = bytes(relay.to_client[:4 + int.from_bytes(relay.to_client[:3], "little")])
    assert b"MariaDB" in greeting
    # the recording relay: not one byte from the proxy toward the server
    assert relay.to_server == b""
    # the packet capture sees payloads (the server's greeting, the proxy's ERR to each client), and on the
    # upstream hops nothing went toward the server; the clients never got a greeting to answer
    assert capture.payload_from(mariadb.port).count(greeting[:4]) == 3
    assert capture.payload_from(proxy_port).count(b"upstream does not offer TLS") == 3
    upstream_bytes = capture.payload_to(relay.port) + capture.payload_to(mariadb.port)
    assert upstream_bytes == b""
    assert NATIVE.user.encode() not in capture.payload_to(proxy_port)


def test_stripping_relay_removes_only_client_ssl(mariadb: MariaDBServer) -> None:
    """The attacker in the test above does what it says: the same greeting, CLIENT_SSL cleared."""
    with RecordingRelay(mariadb.port, prelude=strip_tls_from_greeting) as relay:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
            stripped = read_frame(sock)
    with socket.create_connection(("127.0.0.1", mariadb.port), timeout=5) as sock:
        original = read_frame(sock)
    assert len(stripped) == len(original)
    version_end = 4 + original[4:].index(0, 1)  # server version's NUL
    flags_at = version_end + 1 + 4 + 8 + 1
    assert int.from_bytes(original[flags_at:flags_at + 2], "little") & CLIENT_SSL
    assert int.from_bytes(stripped[flags_at:flags_at + 2], "little") & CLIENT_SSL == 0
    per_connection = {*range(version_end + 1, version_end + 13),  # thread id, nonce part 1
                      *range(version_end + 32, version_end + 44)}  # nonce part 2
    differing = [i for i in range(len(original)) if original[i] != stripped[i] and i not in per_connection]
    assert differing == [flags_at + 1], differing  # CLIENT_SSL is bit 3 of the second flag byte


# ---- injection: plaintext bytes in front of the server's TLS handshake --------------------------------

FORGED_OK = b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00"  # an OK packet, seq 2, as if login succeeded


def test_plaintext_injected_before_the_tls_handshake(mariadb: MariaDBServer, pki: TestPki,
                                                     event_loop_name: str) -> None:
    with ExitStack() as stack:
        relay = stack.enter_context(RecordingRelay(mariadb.port, prelude=inject_after_ssl_request(FORGED_OK)))
        proxy = stack.enter_context(ProxyThread(make_route(relay.port, ca_file=pki.ca), event_loop=event_loop_name))
        assert_refused(proxy.port, "tlsproxy: upstream sent non-TLS data after the SSLRequest (WRONG_VERSION_NUMBER); "
                                   "refusing the connection", exact=True)
    assert_tls_was_attempted(relay)
    assert_no_credentials_in_plaintext(relay, NATIVE)


# ---- TLS 1.0/1.1 only, against the default minimum TLS 1.2 --------------------------------------------


@contextmanager
def legacy_tls_only(server: MariaDBServer, pki: TestPki) -> Iterator[MariaDBServer]:
    """The server restarted with TLS 1.0 and 1.1 only. OpenSSL 3's default security level has no cipher
    for them, so MariaDB fails every handshake ("tlsv1 alert internal error") unless its cipher list
    lowers the level, as an old server's OpenSSL effectively did."""
    server.extra_options = {"ssl_cipher": "DEFAULT:@SECLEVEL=0"}
    try:
        server.restart(ssl_cert=pki.server_cert, ssl_key=pki.server_key, tls_version="TLSv1.0,TLSv1.1")
        yield server
    finally:
        server.extra_options = {}
        server.restart(tls_version="TLSv1.2,TLSv1.3")


def test_server_offering_only_tls_1_0_and_1_1(alt: MariaDBServer, pki: TestPki) -> None:
    with legacy_tls_only(alt, pki):
        with RecordingRelay(alt.port) as relay:
            with ProxyThread(make_route(relay.port, ca_file=pki.ca)) as proxy:  # default TLSv1.2,TLSv1.3
                assert_refused(proxy.port, "tlsproxy: upstream TLS handshake failed: no TLS version in common "
                                           "(TLSV1_ALERT_PROTOCOL_VERSION)", account=PLAIN, exact=True)
        assert_tls_was_attempted(relay)
        assert_no_credentials_in_plaintext(relay, PLAIN)
        # the control: the server really speaks TLS 1.1, and an explicit opt-in reaches it
        legacy = make_route(alt.port, ca_file=pki.ca, tls_versions=("TLSv1", "TLSv1.1"), allow_legacy_tls=True)
        with ProxyThread(legacy) as proxy:
            with pymysql.connect(host="127.0.0.1", port=proxy.port, user=PLAIN.user, password=PLAIN.password,
                                 ssl_disabled=True) as connection, connection.cursor() as cursor:
                cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
                assert cursor.fetchone()[1] == "TLSv1.1"


# ---- a client that sends its own SSLRequest --------------------------------------------------------------

# An SSLRequest laid out as PyMySQL writes one: its capabilities with CLIENT_SSL, max packet 16 MiB,
# charset utf8mb4_general_ci (45), 23 zero bytes.
CLIENT_SSL_REQUEST = ((CLIENT.CAPABILITIES | CLIENT.SSL).to_bytes(4, "little") + (16 * 1024 * 1024).to_bytes(4, "little")
                      + bytes((45,)) + bytes(23))


def test_client_sending_its_own_ssl_request(mariadb: MariaDBServer, pki: TestPki) -> None:
    """No real client sends an SSLRequest to a greeting without CLIENT_SSL (they stop with their own
    error: test_negative.py::test_client_asking_for_tls_gets_a_clear_error); one that does anyway gets an
    ERR in plaintext, at the sequence id it expects, and the server gets nothing."""
    with ExitStack() as stack:
        relay = stack.enter_context(RecordingRelay(mariadb.port))
        proxy = stack.enter_context(ProxyThread(make_route(relay.port, ca_file=pki.ca)))
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            greeting = read_frame(sock)
            assert greeting[3] == 0 and greeting[4] == 0x0A
            sock.sendall(len(CLIENT_SSL_REQUEST).to_bytes(3, "little") + bytes((SSL_REQUEST_SEQ,)) + CLIENT_SSL_REQUEST)
            answer = bytearray(read_frame(sock))
            read_available(sock, answer, timeout=2)
    assert answer[3] == SSL_REQUEST_SEQ + 1, bytes(answer)
    assert answer[4] == 0xFF and int.from_bytes(answer[5:7], "little") == 1043, bytes(answer)
    assert answer[7:13] == b"#08S01"
    assert bytes(answer[13:]).decode() == (
        "tlsproxy: the client asked for TLS, but the proxy's client side is plaintext (TLS is done upstream); "
        "connect without TLS (mysql --ssl-mode=DISABLED, mariadb --skip-ssl)")
    assert relay.to_client, "the proxy had the server's greeting"
    assert relay.to_server == b""
