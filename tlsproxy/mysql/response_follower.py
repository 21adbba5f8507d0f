"""The server's answers in the command phase, followed to tell when nothing is in flight: every command
the client sent has been answered completely. An upstream pool may park a connection only then
(PROTOCOL.md §6.2).

`ResponseFollower` is told each command (`client_command`) and fed every server byte (`server_data`, any
chunking). Like `FrameSkipper` (PROTOCOL.md §1) it copies no payload: of a packet it reads the header and
at most `PEEK` first bytes, and keeps bytes only when those are split across reads.

It fails closed: whatever it does not follow with certainty sets `lost`, and `idle` is then False for
good (the pool closes that upstream, as without a pool). A missed park is cheap; a false idle would hand
a half-read answer to the next client.
"""

from __future__ import annotations

from collections import deque

from tlsproxy.mysql.constants import (
    CLIENT_DEPRECATE_EOF,
    CLIENT_OPTIONAL_RESULTSET_METADATA,
    CLIENT_PROTOCOL_41,
    HEADER_SIZE,
    MAX_PACKET_PAYLOAD,
    Command,
)

# Commands: the first payload byte of a client packet at seq 0 (MariaDB include/mysql_com.h).
COM_INIT_DB, COM_QUERY, COM_FIELD_LIST, COM_REFRESH, COM_STATISTICS = 0x02, 0x03, 0x04, 0x07, 0x09
COM_PROCESS_KILL, COM_DEBUG, COM_PING = 0x0C, 0x0D, 0x0E
COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE = 0x16, 0x17, 0x18, 0x19
COM_STMT_RESET, COM_SET_OPTION, COM_STMT_FETCH, COM_RESET_CONNECTION = 0x1A, 0x1B, 0x1C, 0x1F

SERVER_MORE_RESULTS_EXISTS = 0x0008
SERVER_STATUS_CURSOR_EXISTS = 0x0040
MARIADB_CLIENT_CACHE_METADATA = 1 << 4
"""In the MariaDB extended capabilities (the 4 bytes at offset 28 of HandshakeResponse41): every column
count packet carries a metadata-follows byte, and a COM_STMT_EXECUTE may skip its column definitions."""

PEEK = 23
"""The most of a packet's payload a decision needs: an OK packet's header byte, two length-encoded
integers of up to 9 bytes each, its status flags and warning count."""

OK, LOCAL_INFILE, EOF, ERR = 0x00, 0xFB, 0xFE, 0xFF
DEF = 0x03
"""A column (or parameter) definition starts with the catalog "def" as a length-encoded string."""
LENENC_WIDTH = {0xFC: 3, 0xFD: 4, 0xFE: 9}
"""Bytes a length-encoded integer takes, by its first byte (1 below 0xFB; 0xFB and 0xFF are none)."""
EOF_LIMIT = 9
"""A 0xFE packet shorter than this is an EOF packet (without CLIENT_DEPRECATE_EOF); a text row that
starts with 0xFE (a value of 16 MiB or more) is far longer."""

# What the next packet of the answer in progress is.
NONE = 0  # no answer expected
RESULT = 1  # OK, ERR, LOCAL INFILE request or a column count (COM_QUERY, COM_STMT_EXECUTE)
DEFINITIONS = 2  # column (or parameter) definitions, `_left` of them
DEFINITIONS_EOF = 3  # the EOF after definitions (without CLIENT_DEPRECATE_EOF)
ROWS = 4  # rows, until the terminator or ERR
PREPARE_OK = 5  # COM_STMT_PREPARE: its OK (statement id, column and parameter counts) or ERR
STATUS = 6  # one OK, EOF or ERR packet
ONE_PACKET = 7  # one packet, whatever it holds (COM_STATISTICS: a string, or ERR)
FIELD_LIST = 8  # COM_FIELD_LIST: column definitions until an EOF (or an OK with 0xFE) or ERR

FIRST_PHASE = {
    COM_QUERY: RESULT, COM_STMT_EXECUTE: RESULT, COM_STMT_PREPARE: PREPARE_OK, COM_STMT_FETCH: ROWS,
    COM_FIELD_LIST: FIELD_LIST, COM_STATISTICS: ONE_PACKET,
    **dict.fromkeys((COM_PING, COM_INIT_DB, COM_STMT_RESET, COM_RESET_CONNECTION, COM_SET_OPTION, COM_REFRESH,
                     COM_PROCESS_KILL, COM_DEBUG), STATUS),
}
"""The commands followed, and how their answer starts. Binary rows: COM_STMT_EXECUTE and COM_STMT_FETCH."""
NO_ANSWER = frozenset({COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA})
BINARY_ROWS = frozenset({COM_STMT_EXECUTE, COM_STMT_FETCH})
HANDLED_BY_THE_PROXY = {Command.QUIT: "COM_QUIT", Command.CHANGE_USER: "COM_CHANGE_USER"}


def ok_status(buf: bytes | memoryview, start: int, end: int) -> int:
    """The status flags of an OK packet (header 0x00, or 0xFE under CLIENT_DEPRECATE_EOF) whose first
    bytes are buf[start:end]: after two length-encoded integers, before the warning count. -1 if they do
    not parse there (an EOF packet, 5 bytes, is too short to be an OK 0xFE)."""
    pos = start + 1
    for _ in range(2):
        if pos >= end:
            return -1
        width = 1 if buf[pos] < LOCAL_INFILE else LENENC_WIDTH.get(buf[pos], 0)
        if not width:
            return -1
        pos += width
    return buf[pos] | (buf[pos + 1] << 8) if pos + 4 <= end else -1


class ResponseFollower:
    """Follows the answers to the commands a client sends, in order (pipelined commands included), and
    says whether all of them are complete (`idle`) or why it stopped following (`lost`)."""

    __slots__ = ("_deprecate_eof", "_terminator_limit", "_cache_metadata", "_commands", "_phase", "_binary",
                 "_fetch", "_left", "_blocks", "_seq", "_skip", "_continuing", "_pending", "_lost")

    def __init__(self, *, capability_flags: int, mariadb_extended_capabilities: int = 0) -> None:
        """The capabilities negotiated for the connection (the client's HandshakeResponse flags after the
        proxy's masking == what the server uses): CLIENT_DEPRECATE_EOF changes result-set ends; MariaDB's
        MARIADB_CLIENT_CACHE_METADATA (extended capability) adds a metadata-follows byte to column counts
        and lets COM_STMT_EXECUTE skip column definitions. Packets that do not fit these capabilities (a
        column count of the wrong length, an EOF where an OK 0xFE must be) set `lost`."""
        self._deprecate_eof = bool(capability_flags & CLIENT_DEPRECATE_EOF)
        self._terminator_limit = MAX_PACKET_PAYLOAD if self._deprecate_eof else EOF_LIMIT
        self._cache_metadata = bool(mariadb_extended_capabilities & MARIADB_CLIENT_CACHE_METADATA)
        self._commands: deque[int] = deque()
        """Commands sent and not yet answered completely; the first one's answer is in progress."""
        self._phase = NONE
        self._binary = False  # the rows of the answer in progress are binary (they start with 0x00)
        self._fetch = False  # the answer in progress is a COM_STMT_FETCH's (rows only, no further result)
        self._left = 0  # definitions still to come in the current block
        self._blocks: list[int] | None = None
        """COM_STMT_PREPARE: the definition blocks still to come after the current one (None otherwise)."""
        self._seq = 0  # the sequence id the next frame must carry
        self._skip = 0  # payload bytes of the current frame still to pass over
        self._continuing = False  # the current packet goes on in the next frame (a frame of 0xFFFFFF)
        self._pending = b""  # an incomplete frame header, or the first bytes a decision needs
        self._lost: str | None = None
        if not capability_flags & CLIENT_PROTOCOL_41:
            self._lost = "the connection does not use the 4.1 protocol (OK and EOF carry no status flags)"
        elif capability_flags & CLIENT_OPTIONAL_RESULTSET_METADATA:
            self._lost = "CLIENT_OPTIONAL_RESULTSET_METADATA (MySQL) is negotiated; its metadata flag is not followed"

    @property
    def idle(self) -> bool:
        """True only when every command sent has been answered completely and the follower never lost track."""
        return (self._lost is None and not self._commands and not self._skip and not self._pending
                and not self._continuing)

    @property
    def lost(self) -> str | None:
        """Why the follower stopped following (then `idle` is False forever)."""
        return self._lost

    def client_command(self, command: int) -> None:
        """A client command packet (seq 0) went to the server; `command` is its first payload byte. Call it
        once per command packet (a 16 MiB continuation frame is not a new command), in the order sent.

        COM_QUIT and COM_CHANGE_USER are the proxy's own business (the connection ends, or it
        re-authenticates through the handshake machine), so they set `lost` here, as does any command not
        followed (binlog dump, COM_REGISTER_SLAVE, COM_STMT_BULK_EXECUTE, COM_DAEMON, unknown bytes...)."""
        if self._lost is not None or command in NO_ANSWER:
            return
        if command not in FIRST_PHASE:
            name = HANDLED_BY_THE_PROXY.get(command, f"command 0x{command:02x}")
            self._lose(f"{name} is not followed")
            return
        self._commands.append(command)
        if len(self._commands) == 1:
            self._start_answer()

    def server_data(self, data: bytes | memoryview) -> None:
        """Bytes the server sent in the command phase, any chunking (a header or the bytes a decision needs
        may be split across calls)."""
        if self._lost is not None:
            return
        size = len(data)
        pos = 0
        if self._pending:
            pos = self._complete_pending(data)
            if pos < 0:
                return
        skip = self._skip
        while True:
            if skip:
                if skip >= size - pos:
                    self._skip = skip - (size - pos)
                    return
                pos += skip
                skip = 0
            left = size - pos
            if not left:
                self._skip = 0
                return
            if self._phase == NONE:
                self._lose("server bytes while no answer was expected")
                return
            if left < HEADER_SIZE:
                self._skip = 0
                self._pending = bytes(data[pos:])
                return
            length = data[pos] | (data[pos + 1] << 8) | (data[pos + 2] << 16)
            seq = data[pos + 3]
            if self._continuing or not length:
                window = 0
            elif (left > HEADER_SIZE and self._phase == ROWS and seq == self._seq
                    and ((first := data[pos + HEADER_SIZE]) == OK or (first < EOF and not self._binary))):
                # a row: its first byte is all it takes (the hot path)
                self._seq = (seq + 1) & 0xFF
                self._continuing = length == MAX_PACKET_PAYLOAD
                pos += HEADER_SIZE + 1
                skip = length - 1
                continue
            else:
                window = length if length < PEEK else PEEK
                if left - HEADER_SIZE < window:
                    self._skip = 0
                    self._pending = bytes(data[pos:])
                    return
            if not self._frame(data, pos, length, window):
                return
            pos += HEADER_SIZE + window
            skip = length - window

    # ---- frames -----------------------------------------------------------------------------------

    def _complete_pending(self, data: bytes | memoryview) -> int:
        """Completes the held frame start from `data` and decides on it: how many bytes of `data` that
        took, or -1 when `data` ran out first (the bytes are held) or the follower is lost."""
        pending = self._pending
        used = 0
        window = -1
        while True:
            need = HEADER_SIZE if window < 0 else HEADER_SIZE + window
            if len(pending) < need:
                piece = bytes(data[used : used + need - len(pending)])
                used += len(piece)
                pending += piece
                if len(pending) < need:
                    self._pending = pending
                    return -1
            if window >= 0:
                break
            length = pending[0] | (pending[1] << 8) | (pending[2] << 16)
            window = 0 if self._continuing or not length else min(length, PEEK)
        self._pending = b""
        if not self._frame(pending, 0, length, window):
            return -1
        self._skip = length - window
        return used

    def _frame(self, buf: bytes | memoryview, pos: int, length: int, window: int) -> bool:
        """A frame whose header is at buf[pos:] followed by `window` payload bytes. False if lost."""
        seq = buf[pos + 3]
        if seq != self._seq:
            return self._lose(f"the server sent sequence id {seq} where {self._seq} was expected")
        self._seq = (seq + 1) & 0xFF
        if self._continuing:
            self._continuing = length == MAX_PACKET_PAYLOAD
            return True
        self._continuing = length == MAX_PACKET_PAYLOAD
        if not length:
            return self._lose("the server sent an empty packet")
        self._packet(buf, pos + HEADER_SIZE, length, pos + HEADER_SIZE + window)
        return self._lost is None

    def _packet(self, buf: bytes | memoryview, start: int, length: int, end: int) -> None:
        """The start of a packet: its payload begins at buf[start], of which buf[start:end] is here
        (min(length, PEEK) bytes)."""
        first = buf[start]
        phase = self._phase
        if first == ERR:
            if length < 3 or length >= MAX_PACKET_PAYLOAD:
                self._lose(f"an ERR packet of {length} bytes")
            elif buf[start + 1] == 0xFF and buf[start + 2] == 0xFF:
                pass  # a MariaDB progress report (errno 65535): the answer goes on
            else:
                self._answered()
        elif phase == ROWS:
            if first == EOF and length < self._terminator_limit:
                status = self._terminator_status(buf, start, length, end)
                if status < 0:
                    return
                if not status & SERVER_MORE_RESULTS_EXISTS:
                    self._answered()
                elif self._fetch:
                    self._lose("a COM_STMT_FETCH answer announced more results")
                else:
                    self._phase = RESULT
            elif self._binary and first != OK:
                self._lose(f"a binary row starting with 0x{first:02x}")
        elif phase == DEFINITIONS:
            if first != DEF or length >= MAX_PACKET_PAYLOAD:
                self._lose(f"a definition packet starting with 0x{first:02x}")
                return
            self._left -= 1
            if not self._left:
                self._definitions_done()
        elif phase == RESULT:
            self._result(buf, start, length, end)
        elif phase == DEFINITIONS_EOF:
            status = self._terminator_status(buf, start, length, end) if first == EOF and length < EOF_LIMIT else -1
            if status < 0:
                self._lose(f"0x{first:02x} where the EOF after the definitions was expected")
            elif self._blocks is not None:
                self._next_block()
            elif status & SERVER_STATUS_CURSOR_EXISTS:
                # COM_STMT_EXECUTE opened a cursor: no rows follow, COM_STMT_FETCH asks for them
                if not self._binary or self._fetch or status & SERVER_MORE_RESULTS_EXISTS:
                    self._lose("a cursor where none can be")
                else:
                    self._answered()
            else:
                self._phase = ROWS
        elif phase == PREPARE_OK:
            if first != OK or length < 12 or length >= MAX_PACKET_PAYLOAD:
                self._lose(f"a COM_STMT_PREPARE answer starting with 0x{first:02x}, {length} bytes long")
                return
            columns = buf[start + 5] | (buf[start + 6] << 8)
            parameters = buf[start + 7] | (buf[start + 8] << 8)
            self._blocks = [count for count in (parameters, columns) if count]
            self._next_block()
        elif phase == STATUS:
            if length >= (self._terminator_limit if first == EOF else MAX_PACKET_PAYLOAD) or first not in (OK, EOF):
                self._lose(f"0x{first:02x} where one OK or EOF packet was expected")
                return
            status = self._terminator_status(buf, start, length, end)
            if status < 0:
                return
            if status & SERVER_MORE_RESULTS_EXISTS:
                self._lose("a one-packet answer announced more results")
            else:
                self._answered()
        elif phase == ONE_PACKET:
            if length >= MAX_PACKET_PAYLOAD:
                self._lose("a one-packet answer of 16 MiB")
            else:
                self._answered()
        elif phase == FIELD_LIST:
            if first == EOF and length < self._terminator_limit:
                self._answered()
            elif first != DEF or length >= MAX_PACKET_PAYLOAD:
                self._lose(f"0x{first:02x} in a COM_FIELD_LIST answer")
        else:
            self._lose("a packet while no answer was expected")

    def _result(self, buf: bytes | memoryview, start: int, length: int, end: int) -> None:
        """The first packet of a result: OK, LOCAL INFILE request, or a column count."""
        first = buf[start]
        if first == OK:
            status = ok_status(buf, start, end)
            if status < 0 or length >= MAX_PACKET_PAYLOAD:
                self._lose("a malformed OK packet")
            elif not status & SERVER_MORE_RESULTS_EXISTS:
                self._answered()
            return
        if first == LOCAL_INFILE:
            self._lose("a LOCAL INFILE request (the client's file and the server's answer are not followed)")
            return
        size = 1 if first < LOCAL_INFILE else LENENC_WIDTH.get(first, 0)
        if not 0 < size < 9 or end - start < size:  # (a count of 2^24 columns or more is none)
            self._lose(f"0x{first:02x} where a result was expected")
            return
        if length != size + self._cache_metadata:
            self._lose(f"a column count packet of {length} bytes")
            return
        definitions = first if size == 1 else int.from_bytes(buf[start + 1 : start + size], "little")
        if self._cache_metadata:
            metadata_follows = buf[start + size]
            if metadata_follows > 1:
                self._lose(f"metadata-follows byte 0x{metadata_follows:02x}")
                return
            if not metadata_follows:
                definitions = 0
        self._left = definitions
        if definitions:
            self._phase = DEFINITIONS
        else:
            self._definitions_done()

    def _terminator_status(self, buf: bytes | memoryview, start: int, length: int, end: int) -> int:
        """Status flags of a 0xFE packet: an EOF packet (status at offset 3), or under
        CLIENT_DEPRECATE_EOF an OK packet with header 0xFE. Sets `lost` (and returns -1) if malformed."""
        if buf[start] == EOF and not self._deprecate_eof:
            status = buf[start + 3] | (buf[start + 4] << 8) if length >= 5 else -1
        else:
            status = ok_status(buf, start, end)
        if status < 0:
            self._lose(f"a malformed 0x{buf[start]:02x} packet of {length} bytes")
        return status

    # ---- the answer in progress -------------------------------------------------------------------

    def _definitions_done(self) -> None:  # the EOF after them, then rows or the next block
        if not self._deprecate_eof:
            self._phase = DEFINITIONS_EOF
        elif self._blocks is not None:
            self._next_block()
        else:
            self._phase = ROWS

    def _next_block(self) -> None:
        """COM_STMT_PREPARE: the next block of definitions (parameters, then columns), or the end."""
        if self._blocks:
            self._left = self._blocks.pop(0)
            self._phase = DEFINITIONS
        else:
            self._answered()

    def _start_answer(self) -> None:
        command = self._commands[0]
        self._phase = FIRST_PHASE[command]
        self._binary = command in BINARY_ROWS
        self._fetch = command == COM_STMT_FETCH
        self._blocks = None
        self._seq = 1

    def _answered(self) -> None:
        """The answer in progress is complete (its last packet's remaining bytes are still skipped)."""
        self._commands.popleft()
        if self._commands:
            self._start_answer()
        else:
            self._phase = NONE
            self._blocks = None

    def _lose(self, reason: str) -> bool:
        self._lost = reason
        self._phase = NONE
        return False
