"""Properties of the sans-IO core (hypothesis; profiles in conftest.py).

1. Encoding then decoding gives back the original (frames, lenenc, greetings, responses, ERR, AuthSwitch).
2. Splitting the input into different chunks does not change the result (FrameBuffer, FrameSkipper, machine).
3. Arbitrary bytes from either peer, in any chunking, raise only TlsProxyError subclasses (never IndexError,
   struct.error, AssertionError, DecodeError...), and the machine never buffers more than its limit.
"""

from __future__ import annotations

from typing import Callable, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fixtures import greetings as G
from tests.fixtures import responses as R
from tests.fixtures.greetings import build_greeting
from tests.fixtures.responses import build_response
from tests.support.hostile import check_buffers
from tests.support.playbook import merge_effects
from tlsproxy.certs import AuthRsaKey
from tlsproxy.errors import TlsProxyError
from tlsproxy.mysql.codec import Frame, FrameBuffer, FrameSkipper, Reader, encode_frame, encode_lenenc_int
from tlsproxy.mysql.constants import HEADER_SIZE, Capability
from tlsproxy.mysql.handshake import Effect, HandshakeMachine, State
from tlsproxy.mysql.messages import (
    AuthSwitchRequest,
    ErrPacket,
    parse_auth_switch,
    parse_err,
    parse_handshake_response,
    parse_initial_handshake,
    patch_greeting_capabilities,
    replace_auth_response,
)

KEY = AuthRsaKey.generate()
MAX_PACKET = 300  # small, so random input reaches the limit
OK = b"\x00\x00\x00\x02\x00\x00\x00"
NONCE2 = b"0123456789abcdefghij"


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])] or [b""]


cut_lists = st.lists(st.integers(min_value=0, max_value=10_000), max_size=8)


# ---- 1. round trips --------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_lenenc_round_trip(value: int) -> None:
    wire = encode_lenenc_int(value)
    reader = Reader(wire)
    assert reader.lenenc_int("n") == value
    assert reader.at_end()
    assert len(wire) == (1 if value < 251 else 3 if value < 1 << 16 else 4 if value < 1 << 24 else 9)


frame_lists = st.lists(
    st.tuples(st.integers(min_value=0, max_value=255), st.binary(max_size=300)), max_size=8
)


@given(frame_lists, cut_lists)
def test_frames_round_trip_in_any_chunking(frames: list[tuple[int, bytes]], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(seq, payload) for seq, payload in frames)
    buffer = FrameBuffer(max_payload=300)
    out: list[Frame] = []
    for piece in chunked(wire, cuts):
        buffer.feed(piece)
        while (frame := buffer.next_frame()) is not None:
            out.append(frame)
    assert out == [Frame(seq, payload) for seq, payload in frames]
    assert len(buffer) == 0


@given(frame_lists, cut_lists, st.integers(min_value=0, max_value=255), st.integers(min_value=0, max_value=255))
def test_frame_skipper_any_chunking_finds_the_same_claimed_frame(
    frames: list[tuple[int, bytes]], cuts: list[int], claim_seq: int, claim_byte: int
) -> None:
    def claim(length: int, sequence_id: int, first_byte: int) -> bool:
        return sequence_id == claim_seq and first_byte == claim_byte

    wire = b"".join(encode_frame(seq, payload) for seq, payload in frames)
    # reference: walk the frames
    expected_stop = len(wire)
    pos = 0
    for seq, payload in frames:
        if payload and claim(len(payload), seq, payload[0]):
            expected_stop = pos
            break
        pos += HEADER_SIZE + len(payload)
    skipper = FrameSkipper(claim)
    passed_total = 0
    tail = b""
    for piece in chunked(wire, cuts):
        data = tail + piece
        passed = skipper.feed(data)
        assert 0 <= passed <= len(data)
        passed_total += passed
        tail = data[passed:]
        if passed_total >= expected_stop and expected_stop < len(wire):
            break
    assert passed_total == expected_stop


no_nul = st.binary(max_size=20).map(lambda b: b.replace(b"\x00", b"x"))
ascii_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", max_size=30)
optional_flags = st.sets(
    st.sampled_from([
        Capability.CONNECT_WITH_DB, Capability.PLUGIN_AUTH, Capability.CONNECT_ATTRS,
        Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA, Capability.ZSTD_COMPRESSION_ALGORITHM, Capability.LONG_PASSWORD,
        Capability.COMPRESS, Capability.MULTI_FACTOR_AUTHENTICATION, Capability.SSL_VERIFY_SERVER_CERT,
    ])
)


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    flags = Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION
    for flag in draw(optional_flags):
        flags |= flag
    lenenc = bool(flags & Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA)
    fields = dict(
        capability_flags=int(flags),
        username=draw(no_nul),
        auth_response=draw(st.binary(max_size=600 if lenenc else 255)),
        database=draw(no_nul) if flags & Capability.CONNECT_WITH_DB else None,
        auth_plugin_name=draw(ascii_name) if flags & Capability.PLUGIN_AUTH else None,
        attributes=draw(st.dictionaries(no_nul, st.binary(max_size=30), max_size=4)),
        max_packet_size=draw(st.integers(min_value=0, max_value=2**32 - 1)),
        character_set=draw(st.integers(min_value=0, max_value=255)),
        mariadb_extended_capabilities=draw(st.integers(min_value=0, max_value=2**32 - 1)),
    )
    return build_response(**fields), fields  # type: ignore[arg-type]


@given(responses(), st.binary(max_size=600))
def test_handshake_response_round_trip_and_auth_replacement(
    generated: tuple[bytes, dict[str, object]], new_auth: bytes
) -> None:
    payload, fields = generated
    response = parse_handshake_response(payload)
    assert response.capability_flags == fields["capability_flags"]
    assert response.max_packet_size == fields["max_packet_size"]
    assert response.character_set == fields["character_set"]
    assert response.mariadb_extended_capabilities == fields["mariadb_extended_capabilities"]
    assert response.username == fields["username"]
    assert response.auth_response == fields["auth_response"]
    assert response.database == fields["database"]
    assert response.auth_plugin_name == (fields["auth_plugin_name"] or "")
    flags = response.capability_flags
    if not flags & Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA and len(new_auth) > 255:
        with pytest.raises(ValueError):
            replace_auth_response(payload, response, new_auth)
        return
    replaced = replace_auth_response(payload, response, new_auth)
    again = parse_handshake_response(replaced)
    assert again.auth_response == new_auth
    assert (again.username, again.database, again.auth_plugin_name) == (
        response.username, response.database, response.auth_plugin_name)
    assert replaced[again.auth_response_span[1] :] == payload[response.auth_response_span[1] :]
    assert replace_auth_response(replaced, again, response.auth_response) == payload


@given(
    version=ascii_name.map(lambda s: "8.0." + s),
    connection_id=st.integers(min_value=0, max_value=2**32 - 1),
    caps=st.integers(min_value=0, max_value=2**32 - 1),
    charset=st.integers(min_value=0, max_value=255),
    status=st.integers(min_value=0, max_value=0xFFFF),
    nonce=st.binary(min_size=20, max_size=20),
    plugin=ascii_name,
    ext=st.integers(min_value=0, max_value=2**32 - 1),
    clear=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_greeting_round_trip_and_patch(version: str, connection_id: int, caps: int, charset: int, status: int,
                                       nonce: bytes, plugin: str, ext: int, clear: int) -> None:
    caps |= Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION | Capability.PLUGIN_AUTH
    if caps & Capability.LONG_PASSWORD:
        ext = 0
    payload = build_greeting(server_version=version, connection_id=connection_id, capability_flags=caps,
                             character_set=charset, status_flags=status, nonce=nonce, auth_plugin_name=plugin,
                             mariadb_extended_capabilities=ext)
    greeting = parse_initial_handshake(payload)
    assert (greeting.server_version, greeting.connection_id, greeting.capability_flags) == (version, connection_id, caps)
    assert (greeting.character_set, greeting.status_flags) == (charset, status)
    assert greeting.auth_plugin_data == nonce + b"\x00"
    assert greeting.auth_plugin_name == plugin
    assert greeting.mariadb_extended_capabilities == ext
    patched = patch_greeting_capabilities(payload, greeting, clear)
    changed = {i for i, (a, b) in enumerate(zip(payload, patched)) if a != b}
    low, high = greeting.capability_low_offset, greeting.capability_high_offset
    assert changed <= {low, low + 1, high, high + 1}  # type: ignore[operator]
    assert len(patched) == len(payload)
    new_caps = int.from_bytes(patched[low : low + 2], "little") | int.from_bytes(patched[high : high + 2], "little") << 16  # type: ignore[index,operator]
    assert new_caps == caps & ~clear & 0xFFFFFFFF


@given(
    code=st.integers(min_value=0, max_value=0xFFFF),
    state=st.text(alphabet="0123456789ABCDEFHSYZ", min_size=5, max_size=5),
    message=st.text(max_size=60).filter(lambda m: not m.startswith("#")),
    protocol_41=st.booleans(),
)
def test_err_round_trip(code: int, state: str, message: str, protocol_41: bool) -> None:
    payload = ErrPacket(code, state, message).encode_payload(protocol_41=protocol_41)
    assert parse_err(payload) == ErrPacket(code, state if protocol_41 else None, message)


@given(plugin=ascii_name, data=st.binary(max_size=64))
def test_auth_switch_round_trip(plugin: str, data: bytes) -> None:
    request = AuthSwitchRequest(plugin, data)
    assert parse_auth_switch(request.encode_payload()) == request


# ---- 3. the machine under arbitrary input -------------------------------------------------------------

C1 = R.LIBMYSQLCLIENT_MYSQL80_DB.payload
SHA256_GREETING = G.variant(G.MYSQL_80, auth_plugin_name="sha256_password")
SHA256_C1 = build_response(capability_flags=R.LIBMYSQLCLIENT_MYSQL80_DB.capability_flags, auth_response=b"\x01",
                           auth_plugin_name="sha256_password")
CHANGE_USER = b"\x11bob\x00\x00shop\x00\xff\x00caching_sha2_password\x00"


def _machine(upstream_tls: bool = True) -> HandshakeMachine:
    return HandshakeMachine(upstream_tls=upstream_tls, auth_key=KEY, max_handshake_packet=MAX_PACKET)


def _start(name: str) -> HandshakeMachine:
    """A machine driven to a given point by a valid exchange."""
    if name == "disabled":
        m = _machine(upstream_tls=False)
        m.receive_server_data(encode_frame(0, G.MYSQL_80.payload))
        m.receive_client_data(encode_frame(1, C1))
        return m
    m = _machine()
    if name == "greeting":
        return m
    if name == "sha256_initial":
        m.receive_server_data(encode_frame(0, SHA256_GREETING))
        m.receive_client_data(encode_frame(1, SHA256_C1))
        m.tls_established()
        return m
    m.receive_server_data(encode_frame(0, G.MYSQL_80.payload))
    if name == "client_response":
        return m
    m.receive_client_data(encode_frame(1, C1))
    if name == "tls_pending":
        return m
    m.tls_established()
    if name == "auth":
        return m
    if name == "full_auth":
        m.receive_server_data(encode_frame(3, b"\x01\x04"))
        return m
    if name == "sha256_switch":
        m.receive_server_data(encode_frame(3, b"\xfesha256_password\x00" + NONCE2 + b"\x00"))
        return m
    m.receive_server_data(encode_frame(3, OK))
    if name == "relay":
        return m
    m.receive_client_data(encode_frame(0, CHANGE_USER))
    assert name == "change_user"
    return m


START_STATES = ["greeting", "client_response", "tls_pending", "auth", "full_auth", "sha256_switch",
                "sha256_initial", "relay", "change_user", "disabled"]

INTERESTING_PAYLOADS = [
    b"", b"\x00", OK, b"\xff\x15\x04#28000denied", b"\xff", b"\xfe", b"\x01\x04", b"\x04", b"\x01\x03", b"\x02",
    b"\x01", b"\x01\x02", b"\xfecaching_sha2_password\x00" + NONCE2 + b"\x00",
    b"\xfesha256_password\x00" + NONCE2 + b"\x00", b"\xfemysql_native_password\x00", b"\xfe\x00",
    CHANGE_USER, b"\x11", b"\x03SELECT 1", b"password\x00", G.MYSQL_80.payload, C1, C1[:32],
    R.SSL_REQUEST_41, R.PRE41_RESPONSE, SHA256_C1, b"\x0a", bytes(256), b"\x01" * 256,
]

payloads = st.one_of(
    st.binary(max_size=60),
    st.sampled_from(INTERESTING_PAYLOADS),
    st.tuples(st.sampled_from(INTERESTING_PAYLOADS), st.binary(max_size=20)).map(lambda t: t[0] + t[1]),
    st.tuples(st.sampled_from(INTERESTING_PAYLOADS), st.integers(min_value=0, max_value=400)).map(
        lambda t: t[0][: t[1]]
    ),
)

# An event: (side, kind, payload or raw bytes, sequence id or None for "the one the machine expects")
events = st.one_of(
    st.tuples(st.sampled_from(["server", "client"]), st.just("raw"), st.binary(max_size=80), st.none()),
    st.tuples(st.sampled_from(["server", "client"]), st.just("frame"), payloads,
              st.one_of(st.none(), st.integers(min_value=0, max_value=255))),
    st.tuples(st.just("tls"), st.just("tls"), st.just(b""), st.none()),
)


def _event_bytes(m: HandshakeMachine, side: str, kind: str, data: bytes, seq: int | None) -> bytes:
    if kind == "raw":
        return data
    if seq is None:  # white-box: the id the machine expects, to get past the sequence check
        if m.state is State.RELAY:
            seq = 0
        else:
            seq = (m._client_seq if side == "client" else m._server_seq) & 0xFF  # noqa: SLF001
    return encode_frame(seq, data)


Event = tuple[str, str, bytes, "int | None"]


def _drive(m: HandshakeMachine, evs: list[Event], split: Callable[[bytes], list[bytes]]) -> tuple[list[object], type | None]:
    """Feed the events; the merged effects and the class of the TlsProxyError that stopped it (if any).
    Anything else than a TlsProxyError fails the test."""
    effects: list[object] = []
    for side, kind, data, seq in evs:
        if side == "tls":
            if m.state is not State.TLS_PENDING:
                continue
            call: Callable[[], list[object]] = m.tls_established
            pieces: list[Callable[[], list[object]]] = [call]
        else:
            wire = _event_bytes(m, side, kind, data, seq)
            receive = m.receive_client_data if side == "client" else m.receive_server_data
            pieces = [lambda piece=piece, receive=receive: receive(piece) for piece in split(wire)]
        for piece_call in pieces:
            try:
                effects += piece_call()
            except TlsProxyError as error:
                packet = m.error_packet(error)
                if packet is not None:
                    assert int.from_bytes(packet[:3], "little") == len(packet) - 4
                    assert packet[4] == 0xFF
                assert m.state is State.CLOSED
                return merge_effects(effects), type(error)  # type: ignore[arg-type]
            if m.state is not State.CLOSED:
                check_buffers(m)
            for effect in effects:
                assert isinstance(effect, get_args(Effect))  # the machine's own effect vocabulary
    return merge_effects(effects), None  # type: ignore[arg-type]


@given(st.sampled_from(START_STATES), st.lists(events, max_size=12), st.data())
def test_machine_raises_only_tlsproxy_errors_and_bounds_its_buffers(
    start: str, evs: list[Event], data: st.DataObject
) -> None:
    m = _start(start)

    def split(wire: bytes) -> list[bytes]:
        return chunked(wire, data.draw(cut_lists, label="cuts"))

    _drive(m, evs, split)


@given(st.sampled_from(START_STATES), st.lists(events, max_size=12), st.data())
def test_machine_result_does_not_depend_on_chunking(start: str, evs: list[Event], data: st.DataObject) -> None:
    # fix the sequence ids against a whole-read run first, so both runs feed identical bytes
    reference = _start(start)
    concrete: list[Event] = []
    for side, kind, payload, seq in evs:
        if side != "tls":
            wire = _event_bytes(reference, side, kind, payload, seq)
            concrete.append((side, "raw", wire, None))
        else:
            concrete.append((side, kind, payload, seq))
        try:
            if side == "tls":
                if reference.state is State.TLS_PENDING:
                    reference.tls_established()
            else:
                (reference.receive_client_data if side == "client" else reference.receive_server_data)(wire)
        except TlsProxyError:
            break
    whole_effects, whole_error = _drive(_start(start), concrete, lambda wire: [wire])

    def split(wire: bytes) -> list[bytes]:
        return chunked(wire, data.draw(cut_lists, label="cuts"))

    split_effects, split_error = _drive(_start(start), concrete, split)
    assert split_error == whole_error
    if whole_error is None:
        assert split_effects == whole_effects


@given(st.sampled_from(START_STATES), st.binary(min_size=1, max_size=2000))
def test_machine_one_byte_at_a_time_from_either_side(start: str, blob: bytes) -> None:
    for side in ("server", "client"):
        m = _start(start)
        _drive(m, [(side, "raw", blob, None)], lambda wire: [wire[i : i + 1] for i in range(len(wire))])


@given(st.binary(max_size=400), st.binary(max_size=400))
def test_messages_raise_only_decode_error(a: bytes, b: bytes) -> None:
    from tlsproxy.mysql.codec import DecodeError
    from tlsproxy.mysql.messages import parse_change_user

    for payload in (a, b"\x0a" + a, b"\xfe" + a, b"\xff" + a, a + b):
        for parse in (parse_initial_handshake, parse_handshake_response, parse_auth_switch, parse_err):
            try:
                parse(payload)
            except DecodeError:
                pass
        for flags in (0, int(Capability.SECURE_CONNECTION | Capability.PLUGIN_AUTH)):
            try:
                parse_change_user(payload, flags)
            except DecodeError:
                pass
