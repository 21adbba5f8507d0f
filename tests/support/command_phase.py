"""Server answers of the command phase as wire bytes, built from their parts (MariaDB sql/protocol.cc,
sql/sql_prepare.cc): OK, EOF, ERR, column definitions, text and binary rows, result sets and
COM_STMT_PREPARE answers, framed from seq 1 with 16 MiB continuation frames. For the response follower's
tests (`tlsproxy/mysql/response_follower.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tlsproxy.mysql.codec import encode_lenenc_int
from tlsproxy.mysql.constants import MAX_PACKET_PAYLOAD

AUTOCOMMIT = 0x0002
MORE_RESULTS = 0x0008
CURSOR_EXISTS = 0x0040
LAST_ROW_SENT = 0x0080


def frames(payloads: list[bytes], seq: int = 1) -> bytes:
    """The packets on the wire from sequence id `seq`; a payload of 0xFFFFFF bytes or more is split into
    frames of 0xFFFFFF and a shorter last one (maybe empty), each with its own id."""
    out = bytearray()
    for payload in payloads:
        while True:
            piece = payload[:MAX_PACKET_PAYLOAD]
            payload = payload[MAX_PACKET_PAYLOAD:]
            out += len(piece).to_bytes(3, "little") + bytes((seq & 0xFF,)) + piece
            seq += 1
            if len(piece) < MAX_PACKET_PAYLOAD:
                break
    return bytes(out)


def ok(status: int = AUTOCOMMIT, *, affected_rows: int = 0, insert_id: int = 0, info: bytes = b"",
       header: int = 0x00) -> bytes:
    payload = (bytes((header,)) + encode_lenenc_int(affected_rows) + encode_lenenc_int(insert_id)
               + status.to_bytes(2, "little") + b"\x00\x00")
    return payload + (encode_lenenc_int(len(info)) + info if info else b"")


def eof(status: int = AUTOCOMMIT, warnings: int = 0) -> bytes:
    return b"\xfe" + warnings.to_bytes(2, "little") + status.to_bytes(2, "little")


def terminator(status: int = AUTOCOMMIT, *, deprecate_eof: bool) -> bytes:
    """What ends rows: an OK with header 0xFE under CLIENT_DEPRECATE_EOF, else an EOF packet."""
    return ok(status, header=0xFE) if deprecate_eof else eof(status)


def err(code: int = 1064, message: bytes = b"You have an error in your SQL syntax") -> bytes:
    return b"\xff" + code.to_bytes(2, "little") + b"#42000" + message


def progress(stage: int = 1, percent_1000: int = 50_000, info: bytes = b"copy to tmp table") -> bytes:
    """A MariaDB progress report: an ERR-like packet with errno 65535 (`net_send_progress_packet`)."""
    return (b"\xff\xff\xff" + bytes((1, stage, 2)) + percent_1000.to_bytes(3, "little")
            + encode_lenenc_int(len(info)) + info)


def lenenc_str(value: bytes) -> bytes:
    return encode_lenenc_int(len(value)) + value


def column_def(name: bytes = b"c", column_type: int = 0xFD) -> bytes:
    return (lenenc_str(b"def") + lenenc_str(b"db") + lenenc_str(b"t") + lenenc_str(b"t") + lenenc_str(name)
            + lenenc_str(name) + b"\x0c" + (45).to_bytes(2, "little") + (1020).to_bytes(4, "little")
            + bytes((column_type,)) + b"\x00\x00\x00\x00\x00")


def text_row(*values: bytes | None) -> bytes:
    return b"".join(b"\xfb" if value is None else lenenc_str(value) for value in values)


def binary_row(*values: bytes) -> bytes:
    """Binary row of string columns, none NULL: 0x00, the NULL bitmap, the values."""
    bitmap = bytes((len(values) + 7 + 2) // 8)
    return b"\x00" + bitmap + b"".join(lenenc_str(value) for value in values)


def column_count(count: int, metadata_follows: bool | None = None) -> bytes:
    """A column count packet; with MARIADB_CLIENT_CACHE_METADATA it ends with the metadata-follows byte."""
    return encode_lenenc_int(count) + (b"" if metadata_follows is None else bytes((metadata_follows,)))


@dataclass
class ResultSet:
    """One result set's packets: count, definitions, EOF unless deprecate_eof, rows, terminator (or ERR)."""

    columns: int = 1
    rows: list[bytes] = field(default_factory=list)
    status: int = AUTOCOMMIT
    metadata_follows: bool | None = None  # None: MARIADB_CLIENT_CACHE_METADATA not negotiated
    error: bytes | None = None  # an ERR in place of the terminator

    def payloads(self, *, deprecate_eof: bool) -> list[bytes]:
        out = [column_count(self.columns, self.metadata_follows)]
        if self.metadata_follows is not False:
            out += [column_def(b"c%d" % index) for index in range(self.columns)]
        if not deprecate_eof:
            out.append(eof(self.status & ~MORE_RESULTS))
        out += self.rows
        out.append(self.error if self.error is not None else terminator(self.status, deprecate_eof=deprecate_eof))
        return out


def prepare_ok(statement_id: int, columns: int, parameters: int, *, deprecate_eof: bool) -> list[bytes]:
    """A COM_STMT_PREPARE answer: the OK, the parameter definitions, the column definitions, each block
    followed by an EOF unless deprecate_eof."""
    out = [b"\x00" + statement_id.to_bytes(4, "little") + columns.to_bytes(2, "little")
           + parameters.to_bytes(2, "little") + b"\x00\x00\x00"]
    for count, name in ((parameters, b"?"), (columns, b"c")):
        if count:
            out += [column_def(name) for _ in range(count)]
            if not deprecate_eof:
                out.append(eof())
    return out
