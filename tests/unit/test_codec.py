"""tlsproxy.mysql.codec: frames, FrameBuffer, length-encoded integers, Reader, FrameSkipper (PROTOCOL.md §1)."""

from __future__ import annotations

import pytest

from tlsproxy.mysql.codec import (
    DecodeError,
    Frame,
    FrameBuffer,
    FrameSkipper,
    Reader,
    encode_frame,
    encode_lenenc_int,
    parse_header,
)
from tlsproxy.mysql.constants import HEADER_SIZE, MAX_PACKET_PAYLOAD

# (sequence_id, payload, wire bytes): drive both the writer and the reader (h11 test_io style)
FRAME_CASES = [
    (0, b"", b"\x00\x00\x00\x00"),
    (1, b"\x03", b"\x01\x00\x00\x01\x03"),
    (255, b"ab", b"\x02\x00\x00\xffab"),
    (7, b"x" * 0xFB, b"\xfb\x00\x00\x07" + b"x" * 0xFB),
    (3, b"y" * 0x10203, b"\x03\x02\x01\x03" + b"y" * 0x10203),
]


@pytest.mark.parametrize(("sequence_id", "payload", "wire"), FRAME_CASES)
def test_encode_frame(sequence_id: int, payload: bytes, wire: bytes) -> None:
    assert encode_frame(sequence_id, payload) == wire
    assert Frame(sequence_id, payload).encode() == wire


@pytest.mark.parametrize(("sequence_id", "payload", "wire"), FRAME_CASES)
def test_parse_frame(sequence_id: int, payload: bytes, wire: bytes) -> None:
    assert parse_header(wire[:4]) == (len(payload), sequence_id)
    buffer = FrameBuffer()
    buffer.feed(wire)
    assert buffer.next_frame() == Frame(sequence_id, payload)
    assert buffer.next_frame() is None
    assert len(buffer) == 0


def test_encode_frame_masks_sequence_id_and_refuses_continuation_sized_payload() -> None:
    assert encode_frame(256, b"") == b"\x00\x00\x00\x00"
    assert encode_frame(257, b"a")[3] == 1
    with pytest.raises(ValueError):
        encode_frame(0, bytes(MAX_PACKET_PAYLOAD))


def test_frame_validation_and_restamp() -> None:
    with pytest.raises(ValueError):
        Frame(256, b"")
    with pytest.raises(ValueError):
        Frame(-1, b"")
    with pytest.raises(ValueError):
        Frame(0, bytes(MAX_PACKET_PAYLOAD + 1))
    frame = Frame(5, b"abc")
    assert frame.restamped(7) == Frame(7, b"abc")
    assert frame.restamped(256) == Frame(0, b"abc")
    with pytest.raises(AttributeError):
        frame.sequence_id = 1  # type: ignore[misc]


# ---- FrameBuffer -----------------------------------------------------------------------------------

TWO_FRAMES = encode_frame(1, b"hello") + encode_frame(2, b"") + encode_frame(3, b"\xff\x00world")
TWO_FRAMES_PARSED = [Frame(1, b"hello"), Frame(2, b""), Frame(3, b"\xff\x00world")]


def _drain(buffer: FrameBuffer) -> list[Frame]:
    frames = []
    while (frame := buffer.next_frame()) is not None:
        frames.append(frame)
    return frames


def test_framebuffer_partial_input_yields_nothing_until_complete() -> None:
    buffer = FrameBuffer()
    wire = encode_frame(4, b"abcdef")
    for i in range(len(wire) - 1):
        buffer.feed(wire[i : i + 1])
        assert buffer.next_frame() is None
        assert len(buffer) == i + 1
    buffer.feed(wire[-1:])
    assert buffer.next_frame() == Frame(4, b"abcdef")


@pytest.mark.parametrize("split", range(len(TWO_FRAMES) + 1))
def test_framebuffer_every_split(split: int) -> None:
    buffer = FrameBuffer()
    frames: list[Frame] = []
    for piece in (TWO_FRAMES[:split], TWO_FRAMES[split:]):
        buffer.feed(piece)
        frames += _drain(buffer)
    assert frames == TWO_FRAMES_PARSED
    assert len(buffer) == 0


def test_framebuffer_one_byte_at_a_time() -> None:
    buffer = FrameBuffer()
    frames: list[Frame] = []
    for i in range(len(TWO_FRAMES)):
        buffer.feed(TWO_FRAMES[i : i + 1])
        frames += _drain(buffer)
    assert frames == TWO_FRAMES_PARSED


def test_framebuffer_limit_raises_on_the_header_before_the_payload_is_buffered() -> None:
    buffer = FrameBuffer(max_payload=100)
    buffer.feed((101).to_bytes(3, "little") + b"\x00")
    with pytest.raises(DecodeError, match="exceeds the limit of 100"):
        buffer.next_frame()
    assert len(buffer) == HEADER_SIZE  # nothing but the header was ever held


def test_framebuffer_limit_is_inclusive() -> None:
    buffer = FrameBuffer(max_payload=100)
    buffer.feed(encode_frame(0, bytes(100)))
    assert buffer.next_frame() == Frame(0, bytes(100))


def test_framebuffer_default_limit_is_one_full_frame() -> None:
    buffer = FrameBuffer()
    buffer.feed(b"\xff\xff\xff\x00")  # 0xFFFFFF announces a continuation: allowed
    assert buffer.next_frame() is None


def test_framebuffer_take_rest() -> None:
    buffer = FrameBuffer()
    buffer.feed(encode_frame(0, b"a") + b"\x05\x00")
    assert buffer.next_frame() == Frame(0, b"a")
    assert buffer.take_rest() == b"\x05\x00"
    assert len(buffer) == 0
    assert buffer.take_rest() == b""


# ---- length-encoded integers -----------------------------------------------------------------------

LENENC_CASES = [
    (0, b"\x00"),
    (1, b"\x01"),
    (250, b"\xfa"),
    (251, b"\xfc\xfb\x00"),
    (0xFFFF, b"\xfc\xff\xff"),
    (0x10000, b"\xfd\x00\x00\x01"),
    (0xFFFFFF, b"\xfd\xff\xff\xff"),
    (0x1000000, b"\xfe\x00\x00\x00\x01\x00\x00\x00\x00"),
    (2**64 - 1, b"\xfe" + b"\xff" * 8),
]


@pytest.mark.parametrize(("value", "wire"), LENENC_CASES)
def test_lenenc_round_trip(value: int, wire: bytes) -> None:
    assert encode_lenenc_int(value) == wire
    reader = Reader(wire)
    assert reader.lenenc_int("n") == value
    assert reader.at_end()


@pytest.mark.parametrize(("value", "wire"), LENENC_CASES)
def test_lenenc_truncated_names_the_field(value: int, wire: bytes) -> None:
    for cut in range(len(wire)):
        with pytest.raises(DecodeError, match="my_length"):
            Reader(wire[:cut]).lenenc_int("my_length")


@pytest.mark.parametrize("first", [0xFB, 0xFF])
def test_lenenc_invalid_first_byte(first: int) -> None:
    with pytest.raises(DecodeError, match="invalid length-encoded integer in auth_length"):
        Reader(bytes((first, 0, 0, 0, 0, 0, 0, 0, 0))).lenenc_int("auth_length")


def test_lenenc_negative_refused() -> None:
    with pytest.raises(ValueError):
        encode_lenenc_int(-1)


def test_lenenc_bytes() -> None:
    reader = Reader(b"\x03abcd")
    assert reader.lenenc_bytes("name") == b"abc"
    assert reader.rest() == b"d"
    with pytest.raises(DecodeError, match="name"):
        Reader(b"\x05abc").lenenc_bytes("name")


# ---- Reader --------------------------------------------------------------------------------------


def test_reader_fields_in_order() -> None:
    reader = Reader(b"\x0a" + b"8.0\x00" + b"\x01\x02\x03\x04" + b"tail")
    assert reader.int_le(1, "protocol_version") == 10
    assert reader.null_terminated("server_version") == b"8.0"
    assert reader.position == 5
    assert reader.int_le(4, "connection_id") == 0x04030201
    assert reader.remaining == 4
    assert not reader.at_end()
    assert reader.rest() == b"tail"
    assert reader.at_end()
    assert reader.remaining == 0
    assert reader.rest() == b""


def test_reader_fixed_truncated_names_field_and_sizes() -> None:
    reader = Reader(b"abc")
    with pytest.raises(DecodeError, match=r"truncated connection_id: need 4 bytes, have 3"):
        reader.int_le(4, "connection_id")
    assert reader.position == 0  # nothing consumed by the failed read


def test_reader_unterminated_string_names_field() -> None:
    with pytest.raises(DecodeError, match="unterminated username"):
        Reader(b"root").null_terminated("username")


def test_reader_start_position() -> None:
    reader = Reader(b"\xfeplugin\x00data", 1)
    assert reader.null_terminated("auth_plugin_name") == b"plugin"
    assert reader.rest() == b"data"


def test_decode_error_is_a_value_error() -> None:
    # the machine converts it to a ProtocolError; callers outside the machine may catch ValueError
    assert issubclass(DecodeError, ValueError)


# ---- FrameSkipper --------------------------------------------------------------------------------


def change_user_claim(length: int, sequence_id: int, first_byte: int) -> bool:
    """What the handshake machine claims: a seq-0 packet starting with COM_CHANGE_USER (0x11)."""
    return sequence_id == 0 and first_byte == 0x11 and length < 1 << 20


QUERY = encode_frame(0, b"\x03SELECT 1")
CHANGE_USER = encode_frame(0, b"\x11bob\x00\x00\x00")


def test_skipper_passes_unclaimed_frames() -> None:
    skipper = FrameSkipper(change_user_claim)
    data = QUERY + encode_frame(1, b"\x11 not seq 0") + encode_frame(0, b"")
    assert skipper.feed(data) == len(data)


def test_skipper_stops_at_claimed_frame() -> None:
    skipper = FrameSkipper(change_user_claim)
    data = QUERY + CHANGE_USER + QUERY
    assert skipper.feed(data) == len(QUERY)
    # the caller takes the claimed frame whole, then continues after it
    skipper.skip_claimed()
    assert skipper.feed(data[len(QUERY) + len(CHANGE_USER) :]) == len(QUERY)


def test_skipper_claimed_frame_at_start() -> None:
    skipper = FrameSkipper(change_user_claim)
    assert skipper.feed(CHANGE_USER) == 0


def test_skipper_needs_first_payload_byte_to_decide() -> None:
    skipper = FrameSkipper(change_user_claim)
    for cut in range(HEADER_SIZE + 1):
        assert skipper.feed(CHANGE_USER[:cut]) == 0
    assert skipper.feed(QUERY[:4]) == 0  # a non-empty frame's header alone: undecided


def test_skipper_passes_empty_frame_on_header_alone() -> None:
    skipper = FrameSkipper(change_user_claim)
    assert skipper.feed(b"\x00\x00\x00\x00") == 4
    assert skipper.feed(b"\x00\x00\x00\x00" + b"\x00\x00\x00") == 4


@pytest.mark.parametrize("split", range(1, len(QUERY + CHANGE_USER)))
def test_skipper_header_split_across_chunks(split: int) -> None:
    """Caller protocol: keep the unconsumed tail, append the next chunk, feed again."""
    stream = QUERY + encode_frame(1, b"") + QUERY + CHANGE_USER
    skipper = FrameSkipper(change_user_claim)
    passed_total = 0
    tail = b""
    for chunk in (stream[:split], stream[split:]):
        data = tail + chunk
        passed = skipper.feed(data)
        passed_total += passed
        tail = data[passed:]
    assert passed_total == len(stream) - len(CHANGE_USER)
    assert tail == CHANGE_USER


def test_skipper_every_split_bytewise() -> None:
    stream = QUERY + encode_frame(0, b"") + QUERY + CHANGE_USER
    skipper = FrameSkipper(change_user_claim)
    passed_total = 0
    tail = b""
    for i in range(len(stream)):
        data = tail + stream[i : i + 1]
        passed = skipper.feed(data)
        passed_total += passed
        tail = data[passed:]
    assert passed_total == len(stream) - len(CHANGE_USER)
    assert tail == CHANGE_USER


def test_skipper_skips_payloads_that_look_like_change_user() -> None:
    # a COM_QUERY whose payload holds a complete fake COM_CHANGE_USER frame
    inner = CHANGE_USER
    data = encode_frame(0, b"\x03" + inner + inner) + QUERY
    skipper = FrameSkipper(change_user_claim)
    assert skipper.feed(data) == len(data)


def test_skipper_payload_split_over_many_feeds() -> None:
    payload = b"\x03" + bytes(1000)
    data = encode_frame(0, payload)
    skipper = FrameSkipper(change_user_claim)
    assert skipper.feed(data[:10]) == 10
    assert skipper.feed(data[10:500]) == 490
    assert skipper.feed(data[500:] + CHANGE_USER) == len(data) - 500


def test_skipper_continuation_frames_of_16mib_packet_never_claimed() -> None:
    """A 16 MiB+ packet: 0xFFFFFF frame, then continuations with seq 1, 2 ... even if they start with 0x11."""
    full = memoryview(bytes(MAX_PACKET_PAYLOAD))
    skipper = FrameSkipper(change_user_claim)
    assert skipper.feed(b"\xff\xff\xff\x00\x03") == 5
    assert skipper.feed(full[1:]) == MAX_PACKET_PAYLOAD - 1
    continuation = encode_frame(1, b"\x11bob\x00\x00\x00")
    assert skipper.feed(continuation) == len(continuation)
    # exactly 16 MiB - 1 payload: the terminator is an empty frame, passed too
    skipper = FrameSkipper(change_user_claim)
    skipper.feed(b"\xff\xff\xff\x00\x03")
    skipper.feed(full[1:])
    assert skipper.feed(encode_frame(1, b"") + QUERY) == 4 + len(QUERY)


def test_skipper_claims_change_user_after_a_16mib_packet() -> None:
    full = memoryview(bytes(MAX_PACKET_PAYLOAD))
    skipper = FrameSkipper(change_user_claim)
    skipper.feed(b"\xff\xff\xff\x00\x03")
    skipper.feed(full[1:])
    skipper.feed(encode_frame(1, b"end"))
    assert skipper.feed(CHANGE_USER) == 0


def test_skipper_continuation_with_wrapped_sequence_id_not_claimed() -> None:
    full = memoryview(bytes(MAX_PACKET_PAYLOAD))
    skipper = FrameSkipper(change_user_claim)
    for index in range(256):
        head = b"\xff\xff\xff" + bytes((index & 0xFF,)) + b"\x03"
        assert skipper.feed(head) == 5
        assert skipper.feed(full[1:]) == MAX_PACKET_PAYLOAD - 1
    # frame 257 of the same packet: seq 256 & 0xFF == 0, first byte 0x11 - still a continuation
    last = encode_frame(0, b"\x11bob\x00\x00\x00")
    assert skipper.feed(last) == len(last)


def test_skipper_claim_callback_sees_length_seq_and_first_byte() -> None:
    seen: list[tuple[int, int, int]] = []

    def claim(length: int, sequence_id: int, first_byte: int) -> bool:
        seen.append((length, sequence_id, first_byte))
        return False

    skipper = FrameSkipper(claim)
    skipper.feed(encode_frame(9, b"\x42xyz") + encode_frame(0, b"") + encode_frame(1, b"\x11"))
    assert seen == [(4, 9, 0x42), (1, 1, 0x11)]  # the empty frame is never offered
