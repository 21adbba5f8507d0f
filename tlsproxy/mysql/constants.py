"""Names and numbers of the MySQL classic protocol that the connection phase uses.

Values: docs/PROTOCOL.md §2.1 (MySQL include/mysql_com.h, MariaDB mysql_com.h).
"""

from __future__ import annotations

import enum

MAX_PACKET_PAYLOAD = 0xFFFFFF
"""A payload of this length is followed by a continuation frame (PROTOCOL.md §1)."""

HEADER_SIZE = 4
SSL_REQUEST_SIZE = 32
"""An SSLRequest is the first 32 bytes of HandshakeResponse41 (PROTOCOL.md §3.1)."""

NONCE_SIZE = 20
"""The clients hash, sign and XOR with the first 20 bytes of the server's nonce."""


class Capability(enum.IntFlag):
    LONG_PASSWORD = 0x00000001  # MariaDB: CLIENT_MYSQL
    FOUND_ROWS = 0x00000002
    LONG_FLAG = 0x00000004
    CONNECT_WITH_DB = 0x00000008
    NO_SCHEMA = 0x00000010
    COMPRESS = 0x00000020
    ODBC = 0x00000040
    LOCAL_FILES = 0x00000080
    IGNORE_SPACE = 0x00000100
    PROTOCOL_41 = 0x00000200
    INTERACTIVE = 0x00000400
    SSL = 0x00000800
    IGNORE_SIGPIPE = 0x00001000
    TRANSACTIONS = 0x00002000
    RESERVED = 0x00004000
    SECURE_CONNECTION = 0x00008000
    MULTI_STATEMENTS = 0x00010000
    MULTI_RESULTS = 0x00020000
    PS_MULTI_RESULTS = 0x00040000
    PLUGIN_AUTH = 0x00080000
    CONNECT_ATTRS = 0x00100000
    PLUGIN_AUTH_LENENC_CLIENT_DATA = 0x00200000
    CAN_HANDLE_EXPIRED_PASSWORDS = 0x00400000
    SESSION_TRACK = 0x00800000
    DEPRECATE_EOF = 0x01000000
    OPTIONAL_RESULTSET_METADATA = 0x02000000
    ZSTD_COMPRESSION_ALGORITHM = 0x04000000
    QUERY_ATTRIBUTES = 0x08000000
    MULTI_FACTOR_AUTHENTICATION = 0x10000000
    CAPABILITY_EXTENSION = 0x20000000
    SSL_VERIFY_SERVER_CERT = 0x40000000
    REMEMBER_OPTIONS = 0x80000000


# The capability bits the per-connection code tests, as plain ints (MySQL's names for them). In Python
# 3.11 `flags & Capability.SSL`, an int and an IntFlag, runs enum.Flag's operator in Python and builds a
# Capability member for the result: several per connection, a measurable share of the proxy's CPU.
CLIENT_LONG_PASSWORD = int(Capability.LONG_PASSWORD)
CLIENT_CONNECT_WITH_DB = int(Capability.CONNECT_WITH_DB)
CLIENT_PROTOCOL_41 = int(Capability.PROTOCOL_41)
CLIENT_SSL = int(Capability.SSL)
CLIENT_SECURE_CONNECTION = int(Capability.SECURE_CONNECTION)
CLIENT_PLUGIN_AUTH = int(Capability.PLUGIN_AUTH)
CLIENT_CONNECT_ATTRS = int(Capability.CONNECT_ATTRS)
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = int(Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA)
CLIENT_DEPRECATE_EOF = int(Capability.DEPRECATE_EOF)
CLIENT_OPTIONAL_RESULTSET_METADATA = int(Capability.OPTIONAL_RESULTSET_METADATA)
CLIENT_ZSTD_COMPRESSION_ALGORITHM = int(Capability.ZSTD_COMPRESSION_ALGORITHM)

MASKED_CAPABILITIES = int(
    Capability.SSL
    | Capability.SSL_VERIFY_SERVER_CERT
    | Capability.COMPRESS
    | Capability.ZSTD_COMPRESSION_ALGORITHM
    | Capability.MULTI_FACTOR_AUTHENTICATION
)
"""Cleared in the greeting shown to the client and in what the client sends upstream (PROTOCOL.md §4.2).
A plain int, like the CLIENT_* bits above.

SSL: the client leg is plaintext. COMPRESS/ZSTD: compressed frames would hide COM_CHANGE_USER, whose
RSA exchange the proxy must intercept. MULTI_FACTOR_AUTHENTICATION: the machine does not follow
AuthNextFactor packets.
"""


class Command(enum.IntEnum):
    QUIT = 0x01
    CHANGE_USER = 0x11
    RESET_CONNECTION = 0x1F


class PacketHeader(enum.IntEnum):
    """First payload byte of server packets in the authentication exchange (PROTOCOL.md §4.4)."""

    OK = 0x00
    AUTH_MORE_DATA = 0x01
    AUTH_NEXT_FACTOR = 0x02
    AUTH_SWITCH = 0xFE
    ERR = 0xFF


class AuthPlugin(str, enum.Enum):
    NATIVE = "mysql_native_password"
    CACHING_SHA2 = "caching_sha2_password"
    SHA256 = "sha256_password"
    CLEAR = "mysql_clear_password"
    OLD = "mysql_old_password"
    ED25519 = "client_ed25519"


CACHING_SHA2_FAST_AUTH_SUCCESS = 0x03
CACHING_SHA2_PERFORM_FULL_AUTH = 0x04
CACHING_SHA2_REQUEST_PUBLIC_KEY = 0x02
SHA256_REQUEST_PUBLIC_KEY = 0x01


class ErrorCode(enum.IntEnum):
    # server range
    CON_COUNT_ERROR = 1040  # Too many connections
    HANDSHAKE_ERROR = 1043  # Bad handshake
    ACCESS_DENIED = 1045
    SERVER_SHUTDOWN = 1053
    NET_READ_INTERRUPTED = 1159  # Got timeout reading communication packets
    NOT_SUPPORTED_AUTH_MODE = 1251


class SqlState(str, enum.Enum):
    GENERAL = "HY000"
    COMMUNICATION_LINK = "08S01"
    CONNECTION_REJECTED = "08004"
    ACCESS_DENIED = "28000"
