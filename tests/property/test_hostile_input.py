"""Hostile and broken input against the handshake machine, from the client side and from the server side
(properties and driver in tests/support/hostile.py; the atheris harnesses in fuzz/ check the same ones).

Inputs are real fixture bytes (captured greeting, captured HandshakeResponses) followed by or broken by
mutations. Short inputs are fed in literally every chunking, long ones split at every single point or in
random chunkings; all must give the result of the whole-buffer run.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import hostile as H
from tests.support.playbook import ServerData
from tlsproxy.errors import ClientProtocolError, ServerProtocolError
from tlsproxy.mysql.codec import encode_frame
from tlsproxy.mysql.handshake import (
    DEFAULT_MAX_AUTH_PACKETS,
    DEFAULT_MAX_HANDSHAKE_PACKET,
    HandshakeMachine,
    SendToClient,
    SendToServer,
    State,
)

mutations = st.lists(
    st.tuples(st.sampled_from(H.MUTATIONS), st.integers(min_value=0, max_value=1 << 16), st.binary(min_size=1, max_size=8)),
    max_size=4,
)
greetings = st.sampled_from(H.GREETINGS)
responses = st.integers(min_value=0, max_value=len(H.RESPONSES) - 1)
scripts = st.integers(min_value=0, max_value=len(H.AUTH_SCRIPTS) - 1)
seeds = st.integers(min_value=0, max_value=2**32)
packet_payloads = st.lists(st.one_of(st.sampled_from(H.INTERESTING_PAYLOADS), st.binary(max_size=40)), max_size=4)


def _client_scenario(greeting: bytes, response: int, script: int, ops: list, extra: bytes) -> list:
    stream, tail = H.valid_client_stream(response, script)
    return H.client_side(greeting, H.mutate(stream + extra, ops), script, H.mutate(tail, ops[:1]) + extra[:20])


def _server_scenario(greeting: bytes, response: int, script: int, ops: list, extra: bytes) -> list:
    server1, client2, _server2 = H.AUTH_SCRIPTS[script]
    return H.server_side(H.mutate(greeting + extra, ops), H.RESPONSES[response], H.mutate(server1, ops[1:]), client2)


# ---- short inputs: every chunking -------------------------------------------------------------------


@given(greetings, st.binary(max_size=9), st.booleans())
def test_short_client_input_in_every_chunking(greeting: bytes, blob: bytes, upstream_tls: bool) -> None:
    steps = H.client_side(greeting, blob, 0)
    reference = H.run(steps, upstream_tls=upstream_tls)
    for pieces in H.every_chunking(blob):
        H.same_outcome(reference, H.run(steps, lambda i, d, p=pieces: p if i == 1 else (d,), upstream_tls=upstream_tls))


@given(st.binary(max_size=9), st.booleans())
def test_short_server_input_in_every_chunking(blob: bytes, upstream_tls: bool) -> None:
    steps = H.server_side(blob, H.RESPONSES[0])
    reference = H.run(steps, upstream_tls=upstream_tls)
    for pieces in H.every_chunking(blob):
        H.same_outcome(reference, H.run(steps, lambda i, d, p=pieces: p if i == 0 else (d,), upstream_tls=upstream_tls))


@given(greetings, responses, st.integers(min_value=0, max_value=8), st.binary(min_size=1, max_size=8))
def test_valid_response_then_short_garbage_in_every_chunking_of_the_garbage(
    greeting: bytes, response: int, cut: int, garbage: bytes
) -> None:
    """The valid response whole or split once, then every chunking of what follows it."""
    stream = H.RESPONSES[response]
    steps = H.client_side(greeting, stream + garbage, 0)
    reference = H.run(steps)
    split = len(stream) - cut
    for pieces in H.every_chunking(garbage):
        H.same_outcome(reference, H.run(steps, lambda i, d, p=pieces: [d[:split], d[split:len(stream)], *p] if i == 1 else (d,)))


# ---- fixture prefixes + mutations: every split point, random chunkings --------------------------------


@given(greetings, responses, scripts, mutations, st.binary(max_size=40))
def test_client_mutations_split_at_every_point(greeting: bytes, response: int, script: int, ops: list, extra: bytes) -> None:
    steps = _client_scenario(greeting, response, script, ops, extra)
    reference = H.run(steps)
    stream = steps[1].data
    for point in range(1, len(stream)):
        H.same_outcome(reference, H.run(steps, lambda i, d, p=point: H.cut_at(d, [p]) if i == 1 else (d,)))


@given(greetings, responses, scripts, mutations, st.binary(max_size=40))
def test_server_mutations_split_at_every_point(greeting: bytes, response: int, script: int, ops: list, extra: bytes) -> None:
    steps = _server_scenario(greeting, response, script, ops, extra)
    reference = H.run(steps)
    stream = steps[0].data
    for point in range(1, len(stream)):
        H.same_outcome(reference, H.run(steps, lambda i, d, p=point: H.cut_at(d, [p]) if i == 0 else (d,)))


@given(greetings, responses, scripts, mutations, st.binary(max_size=600), seeds, st.booleans())
def test_mutations_from_either_side_in_random_chunkings(
    greeting: bytes, response: int, script: int, ops: list, extra: bytes, seed: int, upstream_tls: bool
) -> None:
    for scenario in (_client_scenario, _server_scenario):
        steps = scenario(greeting, response, script, ops, extra)
        reference = H.run(steps, upstream_tls=upstream_tls)
        H.same_outcome(reference, H.run(steps, H.random_cutter(seed), upstream_tls=upstream_tls))
        H.same_outcome(reference, H.run(steps, H.bytewise, upstream_tls=upstream_tls))


# where each of H.AUTH_SCRIPTS leaves the machine: relaying, still authenticating (the script stops
# mid-exchange), closed after upstream's ERR, or inside COM_CHANGE_USER
EXPECTED_END = [State.RELAY, State.RELAY, State.RELAY, State.AUTH, State.AUTH, State.AUTH, State.CLOSED,
                State.CHANGE_USER, State.RELAY]


@pytest.mark.parametrize("response", range(len(H.RESPONSES)))
@pytest.mark.parametrize("script", range(len(H.AUTH_SCRIPTS)))
def test_valid_exchanges_survive_every_split_point(response: int, script: int) -> None:
    """The unmutated exchanges end where the script leads, without an error, in every split."""
    steps = _client_scenario(H.GREETINGS[0], response, script, [], b"")
    reference = H.run(steps)
    assert reference.error is None
    assert reference.state is EXPECTED_END[script]
    for point in range(1, len(steps[1].data)):
        H.same_outcome(reference, H.run(steps, lambda i, d, p=point: H.cut_at(d, [p]) if i == 1 else (d,)))


@given(greetings, responses, st.integers(min_value=0, max_value=2), packet_payloads, packet_payloads, seeds, st.booleans())
def test_packet_level_exchanges_in_random_chunkings(
    greeting: bytes, response: int, script: int, from_server: list, from_client: list, seed: int, upstream_tls: bool
) -> None:
    """Whole frames at the sequence ids the machine expects (so they get past the order check), with
    payloads that mean something in the auth exchange, from either side."""
    first = 3 if upstream_tls else 2
    server_tail, client_tail = H.frames_from(first, from_server), H.frames_from(first, from_client)
    for steps in (
        H.client_side(greeting, H.RESPONSES[response], script, client_tail),
        H.server_side(greeting, H.RESPONSES[response], server_tail, client_tail),
        H.server_side(greeting, H.RESPONSES[response], server_tail, H.frames_from(first + 1, from_client)),
    ):
        reference = H.run(steps, upstream_tls=upstream_tls)
        H.same_outcome(reference, H.run(steps, H.random_cutter(seed), upstream_tls=upstream_tls))


# ---- huge announced lengths ---------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["client", "server"])
def test_huge_announced_length_fails_at_the_header(side: str) -> None:
    """A peer announcing a 16 MiB packet in the connection phase is refused on its 4-byte header, before
    any payload is buffered, with the default limit."""
    m = HandshakeMachine(auth_key=H.KEY)
    header = b"\xff\xff\xff" + (b"\x00" if side == "server" else b"\x01")
    if side == "client":
        m.receive_server_data(H.GREETINGS[0])
    with pytest.raises(ClientProtocolError if side == "client" else ServerProtocolError, match="exceeds the limit"):
        (m.receive_client_data if side == "client" else m.receive_server_data)(header)
    assert m.state is State.CLOSED
    assert len(m._client_frames) + len(m._server_frames) <= 4  # noqa: SLF001
    assert m.error_packet(ClientProtocolError("x"))[4] == 0xFF  # type: ignore[index]


def test_largest_allowed_packet_is_buffered_and_one_more_byte_is_refused() -> None:
    """The bound is DEFAULT_MAX_HANDSHAKE_PACKET: a client packet of exactly that size is waited for,
    one byte more fails at the header."""
    limit = DEFAULT_MAX_HANDSHAKE_PACKET
    m = HandshakeMachine(auth_key=H.KEY)
    m.receive_server_data(H.GREETINGS[0])
    assert m.receive_client_data(limit.to_bytes(3, "little") + b"\x01" + bytes(1000)) == []
    assert len(m._client_frames) == 1004  # noqa: SLF001
    m = HandshakeMachine(auth_key=H.KEY)
    m.receive_server_data(H.GREETINGS[0])
    with pytest.raises(ClientProtocolError, match=f"limit of {limit} bytes"):
        m.receive_client_data((limit + 1).to_bytes(3, "little") + b"\x01")


def test_huge_length_after_a_valid_response_fails_fast_in_auth() -> None:
    """After TLS, during the auth exchange, the same header is refused on arrival."""
    steps = H.client_side(H.GREETINGS[0], H.RESPONSES[0], 2, b"\xff\xff\xff\x03")
    outcome = H.run(steps)
    assert outcome.error is not None and outcome.error[0] is ClientProtocolError
    assert "exceeds the limit" in outcome.error[1]



# ---- endless authentication ---------------------------------------------------------------------------


def _authenticating() -> HandshakeMachine:
    m = H.new_machine()
    m.receive_server_data(H.GREETINGS[1])
    m.receive_client_data(H.RESPONSES[0])
    m.tls_established()
    return m


@pytest.mark.parametrize("loop", ["auth_switch", "more_data"])
def test_endless_auth_round_trips_are_cut_off(loop: str) -> None:
    """Upstream answering every client reply with another AuthSwitch (or auth-more-data) and the client
    playing along: the machine gives up after DEFAULT_MAX_AUTH_PACKETS packets with an ERR."""
    m = _authenticating()
    packet = H.SWITCH_SHA2 if loop == "auth_switch" else b"\x01\x03"
    packets = 0
    seq = 3  # upstream sends 3, 5, 7...; the client gets 2, 4, 6... and answers 3, 5, 7...
    with pytest.raises(ServerProtocolError, match=f"more than {DEFAULT_MAX_AUTH_PACKETS} packets") as caught:
        for _ in range(1000):
            assert m.receive_server_data(encode_frame(seq & 0xFF, packet))
            packets += 1
            assert m.receive_client_data(encode_frame(seq & 0xFF, bytes(32)))
            packets += 1
            seq += 2
    assert packets == DEFAULT_MAX_AUTH_PACKETS
    packet = m.error_packet(caught.value)
    assert packet is not None and packet[3] == (seq - 1) & 0xFF and packet[4] == 0xFF  # after the client's last


def test_a_client_flooding_auth_packets_is_cut_off() -> None:
    m = _authenticating()
    with pytest.raises(ClientProtocolError, match="more than"):
        for seq in range(2, 1000):
            m.receive_client_data(encode_frame(seq & 0xFF, b"\x00"))
    assert m.state is State.CLOSED


def test_the_auth_packet_budget_is_per_exchange() -> None:
    """COM_CHANGE_USER starts a new exchange with a fresh budget: a long but bounded first exchange
    does not eat into it."""
    m = HandshakeMachine(auth_key=H.KEY, max_auth_packets=4)
    m.receive_server_data(H.GREETINGS[1])
    m.receive_client_data(H.RESPONSES[0])
    m.tls_established()
    m.receive_server_data(encode_frame(3, H.SWITCH_SHA2))
    m.receive_client_data(encode_frame(3, bytes(32)))
    m.receive_server_data(encode_frame(5, b"\x01\x03") + encode_frame(6, H.OK))
    assert m.state is State.RELAY
    m.receive_client_data(encode_frame(0, H.CHANGE_USER))
    m.receive_server_data(encode_frame(1, H.SWITCH_SHA2))
    m.receive_client_data(encode_frame(2, bytes(32)))
    m.receive_server_data(encode_frame(3, b"\x01\x03") + encode_frame(4, b"\x01\x03"))  # 4 packets: at the limit
    with pytest.raises(ServerProtocolError, match="more than 4 packets"):
        m.receive_server_data(encode_frame(5, b"\x01\x03"))


# ---- bytes behind COM_CHANGE_USER ------------------------------------------------------------------------


def _relay_steps(client_tail: bytes, server_tail: bytes) -> list:
    return H.client_side(H.GREETINGS[0], H.RESPONSES[0], 0, client_tail)[:5] + [ServerData(server_tail)]


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=3), st.binary(max_size=12)), max_size=3),
       st.sampled_from([H.OK, b"\xff\x15\x04#28000denied", H.SWITCH_SHA2]))
def test_bytes_behind_change_user_mean_the_same_in_every_split(behind: list, answer: bytes) -> None:
    """What the client pipelines behind COM_CHANGE_USER, in the same read or in later ones before upstream
    answered, is held and relayed after the exchange: the same outcome at every split point."""
    tail = encode_frame(0, H.CHANGE_USER) + b"".join(encode_frame(seq, p) for seq, p in behind)
    steps = _relay_steps(tail, encode_frame(1, answer))
    reference = H.run(steps)
    assert reference.error is None
    for point in range(1, len(tail)):
        H.same_outcome(reference, H.run(steps, lambda i, d, p=point: H.cut_at(d, [p]) if i == 4 else (d,)))


@pytest.mark.parametrize("reads", [1, 2, 40])
def test_bytes_behind_change_user_are_bounded(reads: int) -> None:
    change_user = encode_frame(0, H.CHANGE_USER)
    flood = change_user + encode_frame(0, b"\x03" + bytes(H.MAX_PACKET - 1)) * 2
    steps = _relay_steps(flood, b"")
    outcome = H.run(steps, lambda i, d: H.cut_at(d, range(0, len(d), max(1, len(d) // reads))) if i == 4 else (d,))
    assert outcome.error == (ClientProtocolError, f"client sent more than {H.MAX_PACKET} bytes behind "
                             "COM_CHANGE_USER before the server answered it")
    # one packet's worth is fine
    outcome = H.run(_relay_steps(change_user + encode_frame(0, b"\x03" + bytes(H.MAX_PACKET - 1)), encode_frame(1, H.OK)))
    assert outcome.error is None and outcome.state is State.RELAY


# ---- regressions: what the properties found -------------------------------------------------------------


@pytest.mark.parametrize("reads", ["one read", "two reads"])
def test_client_bytes_pipelined_after_its_response_are_refused_in_any_read(reads: str) -> None:
    """Found by test_valid_response_then_short_garbage_in_every_chunking_of_the_garbage: a byte after the
    HandshakeResponse in the same read was held and handled after TLS, the same byte in the next read
    refused. Now both are refused, before anything goes upstream."""
    stream = H.RESPONSES[0] + encode_frame(2, b"\x00")
    cut = len(H.RESPONSES[0]) if reads == "two reads" else len(stream)
    outcome = H.run(H.client_side(H.GREETINGS[0], stream, 0), lambda i, d: H.cut_at(d, [cut]) if i == 1 else (d,))
    assert outcome.error == (ClientProtocolError, "client sent data before the server answered its handshake response")


@pytest.mark.parametrize("reads", ["one read", "two reads"])
def test_a_command_pipelined_behind_change_user_is_relayed_after_it_in_any_read(reads: str) -> None:
    """Found by test_bytes_behind_change_user_mean_the_same_in_every_split: in a later read, the command
    was taken for the client's auth answer and forwarded at once, which broke the upstream sequence."""
    change_user, select = encode_frame(0, H.CHANGE_USER), encode_frame(0, b"\x03SELECT 1")
    steps = _relay_steps(change_user + select, encode_frame(1, H.OK))
    cut = len(change_user) if reads == "two reads" else 0
    outcome = H.run(steps, lambda i, d: H.cut_at(d, [cut]) if i == 4 else (d,))
    assert outcome.error is None and outcome.state is State.RELAY
    assert outcome.effects[-3:] == (SendToServer(change_user), SendToClient(encode_frame(1, H.OK)), SendToServer(select))
