"""Hostile input for the sans-IO core, shared by tests/property/test_hostile_input.py (hypothesis) and the
atheris harnesses in fuzz/, so both check the same properties:

1. Only the proxy's own protocol errors (`TlsProxyError` subclasses) escape the machine; anything else
   (IndexError, DecodeError, AssertionError...) propagates out of `run` and fails the test / is a crash.
2. The same steps in any chunking give the same merged effects, or the same error (class and message).
3. The machine's buffers stay bounded after every call (`check_buffers`): one frame of at most
   `MAX_PACKET` bytes plus its header, whatever the peer announces or sends.

A scenario is a list of playbook steps (`server >> data`, `client >> data`, `tls_established`). Real
byte fixtures (captured greeting and HandshakeResponses in tests/fixtures) give the valid prefixes; the
`mutate` operations break them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from tests.fixtures import greetings as G
from tests.fixtures import responses as R
from tests.support.playbook import ClientData, ServerData, Step, TlsEstablished, merge_effects
from tlsproxy.certs import AuthRsaKey
from tlsproxy.errors import TlsProxyError
from tlsproxy.mysql.codec import DecodeError, Frame, FrameBuffer, FrameSkipper, encode_frame
from tlsproxy.mysql.constants import HEADER_SIZE, MASKED_CAPABILITIES, Capability
from tlsproxy.mysql.handshake import (
    CloseConnection,
    HandshakeMachine,
    SendToClient,
    SendToServer,
    StartRelay,
    StartUpstreamTls,
    State,
)
from tlsproxy.mysql.messages import (
    parse_auth_switch,
    parse_change_user,
    parse_err,
    parse_handshake_response,
    parse_initial_handshake,
    patch_greeting_capabilities,
)

MAX_PACKET = 512
"""The machines here refuse frames above this (the default is 1 MiB), so random input reaches the limit;
every fixture frame is shorter."""

KEY = AuthRsaKey.generate()

# Valid prefixes: real greetings (the captured MariaDB one first) and HandshakeResponses.
GREETINGS: tuple[bytes, ...] = (G.MARIADB_10_11_CAPTURED_FRAME,) + tuple(encode_frame(0, g.payload) for g in G.ALL)
RESPONSES: tuple[bytes, ...] = tuple(encode_frame(1, r.payload) for r in R.CAPTURED) + (
    encode_frame(1, R.LIBMYSQL_80_ZSTD), encode_frame(1, R.ONE_BYTE_AUTH),
)

NONCE2 = b"0123456789abcdefghij"
OK = b"\x00\x00\x00\x02\x00\x00\x00"
PASSWORD = b"secret\x00"
SWITCH_SHA2 = b"\xfecaching_sha2_password\x00" + NONCE2 + b"\x00"
SWITCH_SHA256 = b"\xfesha256_password\x00" + NONCE2 + b"\x00"
CHANGE_USER = b"\x11bob\x00\x00shop\x00\xff\x00caching_sha2_password\x00"

# Upstream's answers after the forwarded response (seq 3 with TLS), each a valid exchange with the client
# stream that follows it: (server bytes, client bytes, server bytes).
AUTH_SCRIPTS: tuple[tuple[bytes, bytes, bytes], ...] = (
    (encode_frame(3, OK), b"", b""),
    (encode_frame(3, b"\x01\x03") + encode_frame(4, OK), b"", b""),
    (encode_frame(3, b"\x01\x04"), encode_frame(3, PASSWORD), encode_frame(5, OK)),
    (encode_frame(3, b"\x01\x04"), encode_frame(3, b"\x02"), b""),
    (encode_frame(3, SWITCH_SHA2), encode_frame(3, bytes(32)), encode_frame(5, b"\x01\x04")),
    (encode_frame(3, SWITCH_SHA256), encode_frame(3, b"\x01"), b""),
    (encode_frame(3, b"\xff\x15\x04#28000Access denied"), b"", b""),
    (encode_frame(3, OK), encode_frame(0, CHANGE_USER), encode_frame(1, SWITCH_SHA2)),
    # a command pipelined behind COM_CHANGE_USER, relayed after its OK
    (encode_frame(3, OK), encode_frame(0, CHANGE_USER) + encode_frame(0, b"\x03SELECT 1"), encode_frame(1, OK)),
)

# Payloads worth sending as whole frames at the sequence id the machine expects (`frames_from`).
INTERESTING_PAYLOADS: tuple[bytes, ...] = (
    b"", b"\x00", OK, b"\xff", b"\xff\x15\x04#28000denied", b"\xfe", b"\xfe\x00", SWITCH_SHA2, SWITCH_SHA256,
    b"\xfemysql_native_password\x00", b"\x01", b"\x01\x03", b"\x01\x04", b"\x04", b"\x02", PASSWORD, CHANGE_USER,
    b"\x11", b"\x01\x00", bytes(256), b"\x01" * 256, bytes(MAX_PACKET), G.MYSQL_80.payload,
)


def frames_from(first_sequence_id: int, payloads: Iterable[bytes]) -> bytes:
    """Frames with consecutive sequence ids, every other one (the peer's turn in between is the other leg)."""
    return b"".join(encode_frame((first_sequence_id + 2 * i) & 0xFF, p) for i, p in enumerate(payloads))


Cutter = Callable[[int, bytes], Iterable[bytes]]
"""(index of the step, its bytes) -> the pieces to feed, in order."""


def whole(_index: int, data: bytes) -> Iterable[bytes]:
    return (data,)


def bytewise(_index: int, data: bytes) -> Iterable[bytes]:
    return (data[i : i + 1] for i in range(len(data)))


def cut_at(data: bytes, points: Iterable[int]) -> list[bytes]:
    """`data` cut at the given offsets (taken modulo len+1, duplicates ignored)."""
    bounds = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def random_cutter(seed: int, max_cuts: int = 12) -> Cutter:
    def cut(index: int, data: bytes) -> list[bytes]:
        rng = random.Random(seed * 1_000_003 + index)
        return cut_at(data, (rng.randrange(len(data) + 1) for _ in range(rng.randrange(max_cuts + 1))))
    return cut


def every_chunking(data: bytes) -> Iterable[list[bytes]]:
    """All 2**(n-1) ways to cut `data` into non-empty pieces (n = len(data); keep n small)."""
    n = len(data)
    if n == 0:
        yield [b""]
        return
    for mask in range(1 << (n - 1)):
        yield cut_at(data, (i + 1 for i in range(n - 1) if mask >> i & 1))


# ---- mutations ----------------------------------------------------------------------------------

MUTATIONS = ("flip", "set", "insert", "delete", "truncate", "length")


def mutate(data: bytes, ops: Sequence[tuple[str, int, bytes]]) -> bytes:
    """Apply (kind, position, value) edits: flip a bit, overwrite, insert, delete a range, truncate, or
    rewrite a 3-byte frame length at the position."""
    out = bytearray(data)
    for kind, pos, value in ops:
        at = pos % (len(out) + 1)
        if kind == "flip" and out:
            out[at % len(out)] ^= 1 << (pos % 8)
        elif kind == "set":
            out[at : at + len(value)] = value
        elif kind == "insert":
            out[at:at] = value
        elif kind == "delete":
            del out[at : at + 1 + (value[0] if value else 0)]
        elif kind == "truncate":
            del out[at:]
        elif kind == "length":
            out[at : at + 3] = int.from_bytes(value[:3].ljust(3, b"\xff"), "little").to_bytes(3, "little")
    return bytes(out)


# ---- scenarios ----------------------------------------------------------------------------------


def client_side(greeting: bytes, client_stream: bytes, script: int, client_tail: bytes = b"") -> list[Step]:
    """A real greeting, then the (hostile) client's bytes; upstream answers with a valid script."""
    server1, _client2, server2 = AUTH_SCRIPTS[script % len(AUTH_SCRIPTS)]
    return [ServerData(greeting), ClientData(client_stream), TlsEstablished(), ServerData(server1),
            ClientData(client_tail), ServerData(server2)]


def server_side(server_stream: bytes, response: bytes, server_tail: bytes = b"", client_tail: bytes = b"") -> list[Step]:
    """The (hostile) server's bytes, a real client response, more server bytes and the client's answer."""
    return [ServerData(server_stream), ClientData(response), TlsEstablished(), ServerData(server_tail),
            ClientData(client_tail)]


def valid_client_stream(response: int, script: int) -> tuple[bytes, bytes]:
    """The client's bytes of a valid exchange: its response, then its answer to `script`."""
    return RESPONSES[response % len(RESPONSES)], AUTH_SCRIPTS[script % len(AUTH_SCRIPTS)][1]


# ---- running ------------------------------------------------------------------------------------


def new_machine(upstream_tls: bool = True) -> HandshakeMachine:
    return HandshakeMachine(upstream_tls=upstream_tls, auth_key=KEY, max_handshake_packet=MAX_PACKET)


@dataclass(frozen=True)
class Outcome:
    effects: tuple[object, ...]  # merged; compare only when `error` is None (a failing step's are discarded)
    error: tuple[type, str] | None
    state: State


def check_buffers(m: HandshakeMachine) -> None:
    """Nothing the machine holds outgrows one frame of the connection-phase limit."""
    limit = m._max_packet + HEADER_SIZE  # noqa: SLF001
    for name, size in m.buffered().items():
        if size > limit:
            raise AssertionError(f"{name}: {size} bytes held, limit {limit}")


_EFFECT_TYPES = (SendToClient, SendToServer, StartUpstreamTls, StartRelay, CloseConnection)


def run(steps: Sequence[Step], cutter: Cutter = whole, *, upstream_tls: bool = True) -> Outcome:
    """Feed `steps` to a fresh machine. `tls_established` is skipped unless the machine waits for it. A
    TlsProxyError ends the run (after checking the ERR the client would get); any other exception propagates."""
    m = new_machine(upstream_tls)
    effects: list[object] = []
    for index, step in enumerate(steps):
        if isinstance(step, TlsEstablished):
            calls: list[Callable[[], list[object]]] = [m.tls_established] if m.state is State.TLS_PENDING else []
        else:
            receive = m.receive_server_data if isinstance(step, ServerData) else m.receive_client_data
            calls = [lambda piece=piece, receive=receive: receive(piece) for piece in cutter(index, step.data)]
        for call in calls:
            try:
                produced = call()
            except TlsProxyError as error:
                if m.state is not State.CLOSED:
                    raise AssertionError(f"{type(error).__name__} raised but the machine is in {m.state}") from error
                packet = m.error_packet(error)
                if packet is not None and (packet[4] != 0xFF or int.from_bytes(packet[:3], "little") != len(packet) - 4):
                    raise AssertionError(f"malformed ERR for the client: {packet!r}") from error
                return Outcome(tuple(merge_effects(effects)), (type(error), error.message), m.state)  # type: ignore[arg-type]
            for effect in produced:
                if not isinstance(effect, _EFFECT_TYPES):
                    raise AssertionError(f"unknown effect {effect!r}")
            effects += produced
            check_buffers(m)
    return Outcome(tuple(merge_effects(effects)), None, m.state)  # type: ignore[arg-type]


def same_outcome(reference: Outcome, other: Outcome) -> None:
    """Property 2: raise AssertionError if the two runs of the same bytes disagree."""
    if reference.error != other.error:
        raise AssertionError(f"chunking changed the error: {reference.error} vs {other.error}")
    if reference.error is None and (reference.effects != other.effects or reference.state != other.state):
        raise AssertionError(f"chunking changed the effects:\n{reference.effects}\nvs\n{other.effects}")


# ---- the codec ----------------------------------------------------------------------------------

_PARSERS = (parse_initial_handshake, parse_handshake_response, parse_auth_switch, parse_err)
_CHANGE_USER_FLAGS = (0, int(Capability.SECURE_CONNECTION), int(Capability.SECURE_CONNECTION | Capability.PLUGIN_AUTH))


def parse_everything(payload: bytes) -> None:
    """Every parser on `payload`: only DecodeError may escape; a greeting that parses can be patched."""
    for parse in _PARSERS:
        try:
            parsed = parse(payload)
        except DecodeError:
            continue
        if parse is parse_initial_handshake:
            patched = patch_greeting_capabilities(payload, parsed, MASKED_CAPABILITIES)  # type: ignore[arg-type]
            if len(patched) != len(payload):
                raise AssertionError("patching the greeting changed its length")
            if parse_initial_handshake(patched).auth_plugin_data != parsed.auth_plugin_data:  # type: ignore[union-attr]
                raise AssertionError("patching the greeting changed its nonce")
    for flags in _CHANGE_USER_FLAGS:
        try:
            parse_change_user(payload, flags)
        except DecodeError:
            pass


def frames_of(pieces: Iterable[bytes], max_payload: int) -> tuple[list[Frame], str | None, int]:
    """Frames a FrameBuffer hands out for the pieces, the DecodeError that stopped it and the bytes left."""
    buffer = FrameBuffer(max_payload)
    out: list[Frame] = []
    for piece in pieces:
        buffer.feed(piece)
        try:
            while (frame := buffer.next_frame()) is not None:
                out.append(frame)
        except DecodeError as error:
            return out, str(error), len(buffer)
        if len(buffer) >= HEADER_SIZE + max_payload:
            raise AssertionError(f"FrameBuffer holds {len(buffer)} bytes without a whole frame")
    return out, None, len(buffer)


def skipper_stops(pieces: Iterable[bytes], claim_seq: int, claim_byte: int) -> list[int]:
    """Stream offsets where a FrameSkipper stops at a claimed frame (each claimed frame is then consumed
    whole, as the machine does), fed piece by piece with the unconsumed tail kept, as its contract says."""
    def claim(length: int, sequence_id: int, first_byte: int) -> bool:
        return sequence_id == claim_seq and first_byte == claim_byte and length < 1 << 16

    skipper = FrameSkipper(claim)
    stops: list[int] = []
    offset = 0  # stream offset of tail[0]
    tail = b""
    for piece in pieces:
        data = tail + piece
        while data:
            passed = skipper.feed(data)
            if not 0 <= passed <= len(data):
                raise AssertionError(f"FrameSkipper passed {passed} of {len(data)} bytes")
            offset += passed
            data = data[passed:]
            if len(data) <= HEADER_SIZE:
                break
            length = int.from_bytes(data[:3], "little")
            if len(data) < HEADER_SIZE + length:
                break  # a claimed frame, not whole yet
            stops.append(offset)
            skipper.skip_claimed()
            offset += HEADER_SIZE + length
            data = data[HEADER_SIZE + length :]
        tail = data
    return stops
