"""Packet framing, length-encoded values and a bounds-checked reader (PROTOCOL.md §1).

No I/O: `FrameBuffer` takes bytes as they arrive and hands out whole frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tlsproxy.mysql.constants import HEADER_SIZE, MAX_PACKET_PAYLOAD


class DecodeError(ValueError):
    """Bytes that do not parse as the message they should be. The handshake machine turns this into
    the fitting ProtocolError for the side that sent them."""


@dataclass(frozen=True, slots=True)
class Frame:
    sequence_id: int
    payload: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.sequence_id <= 255:
            raise ValueError(f"sequence_id out of range: {self.sequence_id}")
        if len(self.payload) > MAX_PACKET_PAYLOAD:
            raise ValueError("payload longer than one frame")

    def encode(self) -> bytes:
        return encode_frame(self.sequence_id, self.payload)

    def restamped(self, sequence_id: int) -> "Frame":
        return Frame(sequence_id & 0xFF, self.payload)


def encode_frame(sequence_id: int, payload: bytes) -> bytes:
    """One wire frame. The caller keeps payloads under 16 MiB (the connection phase never needs more)."""
    length = len(payload)
    if length >= MAX_PACKET_PAYLOAD:
        raise ValueError("payload needs continuation frames")
    return bytes((length & 0xFF, (length >> 8) & 0xFF, length >> 16, sequence_id & 0xFF)) + payload


def parse_header(header: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(payload_length, sequence_id) of a 4-byte frame header."""
    return header[0] | (header[1] << 8) | (header[2] << 16), header[3]


class FrameBuffer:
    """Collects bytes from one peer and yields complete frames.

    `max_payload` bounds what one frame may announce; a larger one raises `DecodeError` before any
    of it is buffered, so a peer cannot make the proxy hold an unbounded packet.
    """

    __slots__ = ("_buffer", "_max_payload")

    def __init__(self, max_payload: int = MAX_PACKET_PAYLOAD) -> None:
        self._buffer = bytearray()
        self._max_payload = max_payload

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def __len__(self) -> int:
        return len(self._buffer)

    def next_frame(self) -> Frame | None:
        buffer = self._buffer
        if len(buffer) < HEADER_SIZE:
            return None
        length, sequence_id = parse_header(buffer)
        if length > self._max_payload:
            raise DecodeError(f"packet of {length} bytes exceeds the limit of {self._max_payload} bytes")
        end = HEADER_SIZE + length
        if len(buffer) < end:
            return None
        payload = bytes(buffer[HEADER_SIZE:end])
        del buffer[:end]
        return Frame(sequence_id, payload)

    def take_rest(self) -> bytes:
        """Everything buffered and not yet handed out; empties the buffer."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


def encode_lenenc_int(value: int) -> bytes:
    if value < 0:
        raise ValueError("negative length")
    if value < 0xFB:
        return bytes((value,))
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


class Reader:
    """Bounds-checked cursor over one payload. Every read past the end raises DecodeError naming the field."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self._data = data
        self._pos = pos

    @property
    def position(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def at_end(self) -> bool:
        return self._pos >= len(self._data)

    def fixed(self, size: int, field: str) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise DecodeError(f"truncated {field}: need {size} bytes, have {self.remaining}")
        value = self._data[self._pos : end]
        self._pos = end
        return value

    def int_le(self, size: int, field: str) -> int:
        return int.from_bytes(self.fixed(size, field), "little")

    def null_terminated(self, field: str) -> bytes:
        end = self._data.find(b"\x00", self._pos)
        if end < 0:
            raise DecodeError(f"unterminated {field}")
        value = self._data[self._pos : end]
        self._pos = end + 1
        return value

    def lenenc_int(self, field: str) -> int:
        first = self.int_le(1, field)
        if first < 0xFB:
            return first
        if first == 0xFC:
            return self.int_le(2, field)
        if first == 0xFD:
            return self.int_le(3, field)
        if first == 0xFE:
            return self.int_le(8, field)
        raise DecodeError(f"invalid length-encoded integer in {field}: 0x{first:02x}")

    def lenenc_bytes(self, field: str) -> bytes:
        return self.fixed(self.lenenc_int(field), field)

    def rest(self) -> bytes:
        value = self._data[self._pos :]
        self._pos = len(self._data)
        return value


class FrameSkipper:
    """Follows frame boundaries in a byte stream without copying it: in the command phase the proxy only
    needs to know where each client packet starts, to spot COM_CHANGE_USER (PROTOCOL.md §6).

    `feed` returns how many of the given bytes may pass straight on; it stops at the first byte of a
    frame that `wants_whole(length, sequence_id, first_byte)` claims, which the caller then takes whole
    from the stream (the skipper holds no bytes itself; the caller keeps the unconsumed tail). It reads
    each header in place and builds no object for a frame nobody claims (Python's ints above 256 aside:
    a length or offset that large is an object of its own).
    """

    __slots__ = ("_payload_left", "_in_continuation", "_wants_whole", "last_length", "last_sequence_id",
                 "last_first_byte")

    def __init__(self, wants_whole: Callable[[int, int, int], bool]) -> None:
        self._payload_left = 0
        self._in_continuation = False  # the next frame continues a packet of 16 MiB or more
        self._wants_whole = wants_whole
        self.last_length = self.last_sequence_id = self.last_first_byte = -1
        """Header and first byte of the last packet start seen (the last one offered to `wants_whole`)."""

    def feed(self, data: bytes | memoryview) -> int:
        """Number of leading bytes of `data` that belong to frames nobody claims. If it returns less than
        len(data), the remainder starts with a frame header (maybe incomplete: then it needs more bytes,
        and the caller must keep it and call again with more appended) or a claimed frame."""
        pos = 0
        size = len(data)
        while True:
            if self._payload_left:
                step = self._payload_left if self._payload_left < size - pos else size - pos  # min() builds a tuple
                self._payload_left -= step
                pos += step
                if self._payload_left:
                    return pos
            if size - pos < HEADER_SIZE:
                return pos
            # The header read in place, as `parse_header` does: no slice, no tuple (the command phase's hot path).
            length = data[pos] | (data[pos + 1] << 8) | (data[pos + 2] << 16)
            if length and not self._in_continuation:
                if size - pos == HEADER_SIZE:
                    return pos  # the first payload byte decides whether the frame is claimed
                sequence_id, first_byte = data[pos + 3], data[pos + HEADER_SIZE]
                self.last_length, self.last_sequence_id, self.last_first_byte = length, sequence_id, first_byte
                if self._wants_whole(length, sequence_id, first_byte):
                    return pos
            pos += HEADER_SIZE
            self._payload_left = length
            self._in_continuation = length == MAX_PACKET_PAYLOAD
            if pos == size:
                return pos

    @property
    def at_frame_boundary(self) -> bool:
        """True when the bytes fed so far end exactly at the end of a whole packet."""
        return self._payload_left == 0 and not self._in_continuation

    def skip_claimed(self) -> None:
        """The caller consumed a claimed frame whole; continue after it."""
        self._payload_left = 0
