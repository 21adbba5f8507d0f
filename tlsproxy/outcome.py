"""How a connection ended: one closed vocabulary for the handshake machine's `CloseConnection`, the
errors' labels, the end-of-connection log line and the metrics' `outcome` label.

A `StrEnum`, so a value is its label as Prometheus and the JSON log show it; the set is fixed, which
keeps every metric's label cardinality bounded. Imports nothing: the sans-I/O core may use it.
"""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    # a connection in progress, or ended normally
    OPEN = "open"
    RELAYED = "relayed"  # authenticated, still relaying
    OK = "ok"  # ended after a successful login
    ABORTED = "aborted"  # cut short by the proxy (shutdown, cancelled, linger expired)
    CLIENT_GONE = "client_gone"  # the client left during the handshake
    IDLE_TIMEOUT = "idle_timeout"
    INTERNAL_ERROR = "internal_error"  # a bug: logged with its traceback
    # the server's word
    AUTH_DENIED = "auth_denied"  # the server answered the login with ERR
    UPSTREAM_ERROR = "upstream_error"  # the server refused with an ERR greeting
    # proxy errors (errors.py), each class's default label
    ERROR = "error"
    CLIENT_PROTOCOL = "client_protocol"
    CLIENT_REQUESTED_TLS = "client_requested_tls"
    CLIENT_UNSUPPORTED = "client_unsupported"
    SERVER_PROTOCOL = "server_protocol"
    UPSTREAM_REFUSED = "upstream_refused"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_LOST = "upstream_lost"
    TLS_ERROR = "tls_error"
    NO_TLS_OFFERED = "no_tls_offered"
    TLS_INJECTION = "tls_injection"
    AUTH_RSA_FAILED = "auth_rsa_failed"
    MAX_CONNECTIONS = "max_connections"
    SHUTTING_DOWN = "shutting_down"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    # TLS handshake failures, told apart (tls.describe_tls_failure)
    CERTIFICATE_UNTRUSTED = "certificate_untrusted"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    CRL_UNAVAILABLE = "crl_unavailable"
    CRL_EXPIRED = "crl_expired"
    REVOKED = "revoked"
    HOST_NAME_MISMATCH = "host_name_mismatch"
    PROTOCOL_VERSION = "protocol_version"
    NO_SHARED_CIPHER = "no_shared_cipher"
    # the proxy's own resources
    OUT_OF_FDS = "out_of_fds"  # the proxy ran out of file descriptors (EMFILE/ENFILE; descriptors.py)
