"""A process that does only upstream TLS handshakes (or, for the baseline, the same connections
without TLS) and prints its own CPU seconds: the independent measurement the proxy's handshake-CPU
metric is checked against.

    python -m bench.handshake_process PORT CA_FILE COUNT tls|plain|wrap

`wrap` makes each connection's TLS object (SSL_new, the proxy's read settings) and frees it without a
handshake: `tls` minus `wrap` is the CPU of the handshake steps alone, what the proxy's metric times.
"""

from __future__ import annotations

import resource
import socket
import sys
from pathlib import Path

from tlsproxy.check import client_response_for_check
from tlsproxy.config import TlsSettings
from tlsproxy.mysql.codec import encode_frame
from tlsproxy.tls import build_client_context, tune_reads


def main(argv: list[str]) -> float:
    port, ca_file, count, mode = int(argv[0]), Path(argv[1]), int(argv[2]), argv[3]
    context = build_client_context(TlsSettings(ca_file=ca_file))  # the proxy's settings: VERIFY_IDENTITY
    request = bytearray(encode_frame(1, client_response_for_check()[:32]))
    request[5] |= 0x08  # CLIENT_SSL: this is the SSLRequest
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.recv(65536)
            sock.sendall(request)
            if mode in ("tls", "wrap"):  # as the proxy's TLS leg does it: read-ahead on, then the handshake
                tls_socket = context.wrap_socket(sock, server_hostname="localhost", do_handshake_on_connect=False)
                tune_reads(tls_socket)
                if mode == "tls":
                    tls_socket.do_handshake()
                tls_socket.close()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
