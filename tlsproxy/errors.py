"""The proxy's exceptions. Each carries what the client is shown (errno, SQLSTATE, message) and a
bounded label for logs and metrics.

Only server-range codes (< 2000) go on the wire: MariaDB Connector/C (the mariadb CLI, PHP's mysqlnd
is similar) shows any client-range code (2xxx) that arrives from the server as "2027 Received
malformed packet", hiding the message. Checked with the mariadb CLI, PyMySQL and
mysql-connector-python (tests/integration/test_negative.py). Connection-phase failures use 1043
(SQLSTATE 08S01, a communication failure to JDBC and other drivers); the message says what failed.

Messages are safe to show the client: they never hold a password, auth data or a query.
"""

from __future__ import annotations

from tlsproxy.mysql.constants import ErrorCode, SqlState
from tlsproxy.outcome import Outcome

MESSAGE_PREFIX = "tlsproxy: "


class TlsProxyError(Exception):
    errno: int = ErrorCode.HANDSHAKE_ERROR
    sqlstate: str = SqlState.COMMUNICATION_LINK.value
    metric_label: Outcome = Outcome.ERROR

    def __init__(self, message: str, *, metric_label: Outcome | None = None) -> None:
        super().__init__(message)
        self.message = message
        if metric_label is not None:
            self.metric_label = metric_label

    @property
    def client_message(self) -> str:
        return MESSAGE_PREFIX + self.message


class ProtocolError(TlsProxyError):
    """A peer broke the MySQL protocol."""


class ClientProtocolError(ProtocolError):
    errno = ErrorCode.HANDSHAKE_ERROR
    sqlstate = SqlState.COMMUNICATION_LINK.value
    metric_label = Outcome.CLIENT_PROTOCOL


class ClientTlsRequestError(ClientProtocolError):
    """The client sent an SSLRequest, although the greeting it saw did not offer TLS."""

    metric_label = Outcome.CLIENT_REQUESTED_TLS


class ClientCapabilityError(ClientProtocolError):
    errno = ErrorCode.NOT_SUPPORTED_AUTH_MODE
    sqlstate = SqlState.CONNECTION_REJECTED.value
    metric_label = Outcome.CLIENT_UNSUPPORTED


class ServerProtocolError(ProtocolError):
    errno = ErrorCode.HANDSHAKE_ERROR
    sqlstate = SqlState.COMMUNICATION_LINK.value
    metric_label = Outcome.SERVER_PROTOCOL


class UpstreamConnectError(TlsProxyError):
    errno = ErrorCode.HANDSHAKE_ERROR
    sqlstate = SqlState.COMMUNICATION_LINK.value
    metric_label = Outcome.UPSTREAM_REFUSED


class UpstreamTimeoutError(UpstreamConnectError):
    metric_label = Outcome.UPSTREAM_TIMEOUT


class UpstreamTlsError(TlsProxyError):
    errno = ErrorCode.HANDSHAKE_ERROR
    sqlstate = SqlState.COMMUNICATION_LINK.value
    metric_label = Outcome.TLS_ERROR


class UpstreamTlsUnsupportedError(UpstreamTlsError):
    metric_label = Outcome.NO_TLS_OFFERED


class TlsInjectionError(UpstreamTlsError):
    metric_label = Outcome.TLS_INJECTION


class CertificateVerifyError(UpstreamTlsError):
    metric_label = Outcome.CERTIFICATE_UNTRUSTED


class AuthEmulationError(TlsProxyError):
    """The proxy's side of the RSA password exchange failed (wrong key, bad ciphertext)."""

    errno = ErrorCode.ACCESS_DENIED
    sqlstate = SqlState.ACCESS_DENIED.value
    metric_label = Outcome.AUTH_RSA_FAILED


class TooManyConnectionsError(TlsProxyError):
    errno = ErrorCode.CON_COUNT_ERROR
    sqlstate = SqlState.CONNECTION_REJECTED.value
    metric_label = Outcome.MAX_CONNECTIONS


class ShuttingDownError(TlsProxyError):
    errno = ErrorCode.SERVER_SHUTDOWN
    sqlstate = SqlState.COMMUNICATION_LINK.value
    metric_label = Outcome.SHUTTING_DOWN


class HandshakeTimeoutError(TlsProxyError):
    errno = ErrorCode.NET_READ_INTERRUPTED
    sqlstate = SqlState.COMMUNICATION_LINK.value
    metric_label = Outcome.HANDSHAKE_TIMEOUT


class UpstreamLostError(TlsProxyError):
    errno = ErrorCode.HANDSHAKE_ERROR
    sqlstate = SqlState.COMMUNICATION_LINK.value
    metric_label = Outcome.UPSTREAM_LOST


class UpstreamRefusedError(TlsProxyError):
    """The upstream answered with an ERR instead of a greeting (seen where no client is there to get the
    server's own ERR: the prewarm pool, `tlsproxy check`)."""

    errno = ErrorCode.HANDSHAKE_ERROR
    sqlstate = SqlState.COMMUNICATION_LINK.value
    metric_label = Outcome.UPSTREAM_ERROR


class OutOfDescriptorsError(TlsProxyError):
    """The proxy ran out of file descriptors (EMFILE/ENFILE) accepting the client or connecting upstream:
    its own failure, never the upstream's, so it is not retried. 1040 as for max_connections: the proxy
    is full."""

    errno = ErrorCode.CON_COUNT_ERROR
    sqlstate = SqlState.CONNECTION_REJECTED.value
    metric_label = Outcome.OUT_OF_FDS
