"""The proxy's exceptions. Each carries what the client is shown (errno, SQLSTATE, message) and a
bounded label for logs and metrics.

Only server-range codes (< 2000) go on the wire: MariaDB Connector/C (the mariadb CLI, PHP's mysqlnd
is similar) shows any client-range code (2xxx) that arrives from the server as "2027 Received
malformed packet", hiding the message. Checked with the mariadb CLI, PyMySQL and
mysql-connector-python (tests/integration/test_errors.py). Connection-phase failures use 1043
(SQLSTATE 08S01, a communication failure to JDBC and other drivers); the message says what failed.

Messages are safe to show the client: they never hold a password, auth data or a query.
"""

from __future__ import annotations

from tlsproxy.mysql.constants import ErrorCode, SqlState

MESSAGE_PREFIX = "tlsproxy: "


class TlsProxyError(Exception):
    errno: int = ErrorCode.HANDSHAKE_ERROR
    sqlstate: str = SqlState.COMMUNICATION_LINK.value
    metric_label: str = "error"

    def __init__(self, message: str, *, metric_label: str | None = None) -> None:
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
    metric_label = "client_protocol"


class ClientTlsRequestError(ClientProtocolError):
    """The client sent an SSLRequest, although the greeting it saw did not offer TLS."""

    metric_label = "client_requested_tls"


class ClientCapabilityError(ClientProtocolError):
    errno = ErrorCode.NOT_SUPPORTED_AUTH_MODE
    sqlstate = SqlState.CONNECTION_REJECTED.value
    metric_label = "client_unsupported"


class ServerProtocolError(ProtocolError):
    errno = ErrorCode.HANDSHAKE_ERROR
    sqlstate = SqlState.COMMUNICATION_LINK.value
    metric_label = "server_protocol"


class UpstreamConnectError(TlsProxyError):
    errno = ErrorCode.HANDSHAKE_ERROR
    sqlstate = SqlState.COMMUNICATION_LINK.value
    metric_label = "upstream_refused"


class UpstreamTimeoutError(UpstreamConnectError):
    metric_label = "upstream_timeout"


class UpstreamTlsError(TlsProxyError):
    errno = ErrorCode.HANDSHAKE_ERROR
    sqlstate = SqlState.COMMUNICATION_LINK.value
    metric_label = "tls_error"


class UpstreamTlsUnsupportedError(UpstreamTlsError):
    metric_label = "no_tls_offered"


class TlsInjectionError(UpstreamTlsError):
    metric_label = "tls_injection"


class CertificateVerifyError(UpstreamTlsError):
    metric_label = "certificate_untrusted"


class AuthEmulationError(TlsProxyError):
    """The proxy's side of the RSA password exchange failed (wrong key, bad ciphertext)."""

    errno = ErrorCode.ACCESS_DENIED
    sqlstate = SqlState.ACCESS_DENIED.value
    metric_label = "auth_rsa_failed"


class TooManyConnectionsError(TlsProxyError):
    errno = ErrorCode.CON_COUNT_ERROR
    sqlstate = SqlState.CONNECTION_REJECTED.value
    metric_label = "max_connections"


class ShuttingDownError(TlsProxyError):
    errno = ErrorCode.SERVER_SHUTDOWN
    sqlstate = SqlState.COMMUNICATION_LINK.value
    metric_label = "shutting_down"


class HandshakeTimeoutError(TlsProxyError):
    errno = ErrorCode.NET_READ_INTERRUPTED
    sqlstate = SqlState.COMMUNICATION_LINK.value
    metric_label = "handshake_timeout"


class UpstreamLostError(TlsProxyError):
    errno = ErrorCode.HANDSHAKE_ERROR
    sqlstate = SqlState.COMMUNICATION_LINK.value
    metric_label = "upstream_lost"
