"""Properties of the response follower (hypothesis; profiles in conftest.py; PROTOCOL.md §6.2).

1. Any chunking of a stream of valid answers (random commands, result sets, MORE_RESULTS chains, ERR mid
   rows, prepares, progress reports, pipelined or sent one by one) ends idle, never loses track, and is
   never idle before the final byte of the last answer.
2. Arbitrary server bytes after arbitrary commands, in any chunking, raise nothing and end in the same
   state (idle, lost and its reason) as the same bytes in one piece.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.support import command_phase as wire
from tlsproxy.mysql.constants import Capability
from tlsproxy.mysql.response_follower import (
    COM_FIELD_LIST,
    COM_PING,
    COM_QUERY,
    COM_SET_OPTION,
    COM_STATISTICS,
    COM_STMT_CLOSE,
    COM_STMT_EXECUTE,
    COM_STMT_PREPARE,
    MARIADB_CLIENT_CACHE_METADATA,
    ResponseFollower,
)

values = st.one_of(st.none(), st.binary(max_size=40))
statuses = st.sampled_from([0, wire.AUTOCOMMIT, wire.AUTOCOMMIT | 0x0001, 0x4002])


@st.composite
def result(draw: st.DrawFn, *, binary: bool, deprecate_eof: bool, cache_metadata: bool, last: bool) -> list[bytes]:
    """One result of a COM_QUERY / COM_STMT_EXECUTE answer; MORE_RESULTS set unless `last`."""
    status = draw(statuses) | (0 if last else wire.MORE_RESULTS)
    kind = draw(st.sampled_from(["ok", "rows", "rows_then_err"] if last else ["ok", "rows"]))
    if kind == "ok":
        return [wire.ok(status, affected_rows=draw(st.integers(0, 1 << 40)), info=draw(st.binary(max_size=30)))]
    columns = draw(st.integers(1, 4))
    row_values = st.lists(values, min_size=columns, max_size=columns)
    rows = [wire.binary_row(*[value or b"" for value in row]) if binary else wire.text_row(*row)
            for row in draw(st.lists(row_values, max_size=6))]
    follows = (draw(st.booleans()) if binary else True) if cache_metadata else None
    error = wire.err(1317) if kind == "rows_then_err" else None
    return wire.ResultSet(columns, rows, status, follows, error).payloads(deprecate_eof=deprecate_eof)


@st.composite
def answer(draw: st.DrawFn, *, deprecate_eof: bool, cache_metadata: bool) -> tuple[int, list[bytes] | None]:
    """(command, the payloads of its answer or None when it has none)."""
    command = draw(st.sampled_from([COM_QUERY, COM_STMT_EXECUTE, COM_STMT_PREPARE, COM_PING, COM_STATISTICS,
                                    COM_FIELD_LIST, COM_SET_OPTION, COM_STMT_CLOSE]))
    if command == COM_STMT_CLOSE:
        return command, None
    if draw(st.integers(0, 9)) == 0:
        return command, [wire.err(draw(st.integers(1000, 4000)))]
    if command in (COM_QUERY, COM_STMT_EXECUTE):
        payloads = [wire.progress()] * draw(st.integers(0, 2))
        chain = draw(st.integers(1, 3))
        for index in range(chain):
            payloads += draw(result(binary=command == COM_STMT_EXECUTE, deprecate_eof=deprecate_eof,
                                    cache_metadata=cache_metadata, last=index == chain - 1))
        return command, payloads
    if command == COM_STMT_PREPARE:
        return command, wire.prepare_ok(draw(st.integers(1, 99)), draw(st.integers(0, 3)), draw(st.integers(0, 3)),
                                   deprecate_eof=deprecate_eof)
    if command == COM_STATISTICS:
        return command, [b"Uptime: " + draw(st.binary(max_size=60))]
    if command == COM_FIELD_LIST:
        definitions = [wire.column_def() + b"\xfb"] * draw(st.integers(0, 3))
        return command, definitions + [wire.terminator(deprecate_eof=deprecate_eof)]
    if command == COM_SET_OPTION:
        return command, [wire.terminator(deprecate_eof=deprecate_eof)]
    return command, [wire.ok(draw(statuses))]


@st.composite
def sessions(draw: st.DrawFn) -> tuple[ResponseFollower, list[tuple[int, bytes]]]:
    deprecate_eof, cache_metadata = draw(st.booleans()), draw(st.booleans())
    flags = Capability.PROTOCOL_41 | (Capability.DEPRECATE_EOF if deprecate_eof else 0)
    follower = ResponseFollower(capability_flags=flags,
                                mariadb_extended_capabilities=MARIADB_CLIENT_CACHE_METADATA if cache_metadata else 0)
    answers = draw(st.lists(answer(deprecate_eof=deprecate_eof, cache_metadata=cache_metadata), min_size=1, max_size=5))
    return follower, [(command, wire.frames(payloads) if payloads is not None else b"") for command, payloads in answers]


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


cut_lists = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@given(sessions(), cut_lists, st.booleans())
def test_valid_answers_in_any_chunking_are_idle_exactly_at_the_end(session, cuts: list[int], pipelined: bool) -> None:
    follower, answers = session
    stream = b"".join(wire for _, wire in answers)
    if pipelined:  # every command sent before the first answer comes
        for command, _ in answers:
            follower.client_command(command)
        consumed = 0
        for piece in pieces(stream, cuts):
            follower.server_data(piece)
            consumed += len(piece)
            assert follower.lost is None, follower.lost
            assert follower.idle == (consumed == len(stream)), (consumed, len(stream))
    else:  # one command at a time, each answered before the next is sent
        for command, wire in answers:
            follower.client_command(command)
            consumed = 0
            for piece in pieces(wire, cuts):
                assert not follower.idle or not wire
                follower.server_data(piece)
                consumed += len(piece)
                assert follower.lost is None, follower.lost
                assert follower.idle == (consumed == len(wire))
    assert follower.idle
    follower.server_data(stream[:1] or b"\x00")  # a byte more: nothing asked for it
    assert not follower.idle and "no answer was expected" in follower.lost


commands = st.lists(st.one_of(st.sampled_from([COM_QUERY, COM_STMT_EXECUTE, COM_STMT_PREPARE, COM_PING,
                                                COM_STATISTICS, COM_FIELD_LIST, COM_STMT_CLOSE]),
                              st.integers(0, 255)), max_size=4)
server_bytes = st.one_of(st.binary(max_size=300),
                         st.lists(st.binary(max_size=40), max_size=6).map(wire.frames),
                         st.builds(lambda a, b: a + b, sessions().map(lambda s: b"".join(w for _, w in s[1])),
                                   st.binary(max_size=20)))


@given(st.booleans(), st.booleans(), commands, server_bytes, cut_lists)
def test_arbitrary_bytes_end_the_same_in_any_chunking(deprecate_eof: bool, cache_metadata: bool, sent: list[int],
                                                      data: bytes, cuts: list[int]) -> None:
    def make() -> ResponseFollower:
        follower = ResponseFollower(
            capability_flags=Capability.PROTOCOL_41 | (Capability.DEPRECATE_EOF if deprecate_eof else 0),
            mariadb_extended_capabilities=MARIADB_CLIENT_CACHE_METADATA if cache_metadata else 0)
        for command in sent:
            follower.client_command(command)
        return follower

    whole, chunked = make(), make()
    whole.server_data(data)
    for piece in pieces(data, cuts):
        chunked.server_data(memoryview(piece))
    assert (chunked.idle, chunked.lost) == (whole.idle, whole.lost)
    if whole.lost is not None:
        assert not whole.idle
