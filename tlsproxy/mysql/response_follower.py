"""TEMPORARY development stand-in (replaced by the real follower before commit)."""

from __future__ import annotations

from tlsproxy.mysql.codec import DecodeError, FrameBuffer, Reader


class ResponseFollower:
    def __init__(self, *, capability_flags: int, mariadb_extended_capabilities: int = 0) -> None:
        self._deprecate_eof = bool(capability_flags & (1 << 24))
        self._pending: list[int] = []
        self._frames = FrameBuffer(1 << 30)
        self._phase = "first"
        self._columns = 0
        self.lost: str | None = None

    def client_command(self, command: int) -> None:
        if command in (0x19, 0x18):
            return
        if command not in (0x03, 0x0E, 0x02, 0x1F, 0x1B, 0x09):
            self.lost = f"command {command:#x}"
        self._pending.append(command)

    def server_data(self, data: bytes) -> None:
        self._frames.feed(bytes(data))
        while (frame := self._frames.next_frame()) is not None:
            if not self._pending:
                self.lost = "unexpected"
                continue
            p = frame.payload
            head = p[:1]
            if self._phase == "first":
                if head in (b"\x00", b"\xff") or self._pending[0] in (0x09, 0x0E, 0x02, 0x1F, 0x1B):
                    if head == b"\x00" and _ok_status(p) & 8:
                        self.lost = "more results"
                    self._pending.pop(0)
                elif head == b"\xfb":
                    self.lost = "infile"
                else:
                    self._columns = p[0]
                    self._phase = "cols"
            elif self._phase == "cols":
                self._columns -= 1
                if self._columns == 0:
                    self._phase = "rows" if self._deprecate_eof else "coleof"
            elif self._phase == "coleof":
                self._phase = "rows"
            elif self._phase == "rows":
                if (head == b"\xfe" and len(p) < 0xFFFFFF) or head == b"\xff":
                    self._phase = "first"
                    self._pending.pop(0)

    @property
    def idle(self) -> bool:
        return self.lost is None and not self._pending and self._phase == "first"


def _ok_status(payload: bytes) -> int:
    """An OK packet's status flags: after the header byte, affected_rows and last_insert_id, both
    length-encoded (an insert id from 251 up takes 3 or more bytes). A malformed OK counts as more
    results to come: the connection is not parked."""
    reader = Reader(payload, 1)
    try:
        reader.lenenc_int("affected_rows")
        reader.lenenc_int("last_insert_id")
        return reader.int_le(2, "status_flags")
    except DecodeError:
        return 8
