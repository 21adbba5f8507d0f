"""tlsproxy.mysql.response_follower: the server's answers followed to their last byte (PROTOCOL.md §6.2).

Every fixture is checked at every prefix length: `idle` is False until the last byte of the last answer
and True right after it, whether the bytes come one at a time, in two pieces cut anywhere, or whole.
"""

from __future__ import annotations

from typing import Callable

import pytest

from tests.support.command_phase import (
    AUTOCOMMIT,
    CURSOR_EXISTS,
    LAST_ROW_SENT,
    MORE_RESULTS,
    ResultSet,
    binary_row,
    column_count,
    column_def,
    eof,
    err,
    frames,
    ok,
    prepare_ok,
    progress,
    terminator,
    text_row,
)
from tlsproxy.mysql.constants import MAX_PACKET_PAYLOAD, Capability
from tlsproxy.mysql.response_follower import (
    COM_DEBUG,
    COM_FIELD_LIST,
    COM_INIT_DB,
    COM_PING,
    COM_PROCESS_KILL,
    COM_QUERY,
    COM_REFRESH,
    COM_RESET_CONNECTION,
    COM_SET_OPTION,
    COM_STATISTICS,
    COM_STMT_CLOSE,
    COM_STMT_EXECUTE,
    COM_STMT_FETCH,
    COM_STMT_PREPARE,
    COM_STMT_RESET,
    COM_STMT_SEND_LONG_DATA,
    MARIADB_CLIENT_CACHE_METADATA,
    ResponseFollower,
)

Make = Callable[[], ResponseFollower]
"""A new follower with the capabilities of the test."""
BASE = Capability.PROTOCOL_41 | Capability.MULTI_RESULTS | Capability.PS_MULTI_RESULTS
MODES = pytest.mark.parametrize("deprecate_eof", [False, True], ids=["eof", "deprecate_eof"])


def follower(deprecate_eof: bool, *, cache_metadata: bool = False) -> ResponseFollower:
    flags = BASE | (Capability.DEPRECATE_EOF if deprecate_eof else 0)
    return ResponseFollower(capability_flags=flags,
                            mariadb_extended_capabilities=MARIADB_CLIENT_CACHE_METADATA if cache_metadata else 0)


def check_idle_exactly_at_end(make: Make, commands: list[int], stream: bytes, *, every_split: bool = True) -> None:
    """After `commands`, `stream` is the whole of their answers: idle only once its last byte is in, however
    it is cut (byte by byte; every cut in two pieces; whole); never lost."""
    bytewise = make()
    for command in commands:
        bytewise.client_command(command)
    assert not bytewise.idle
    for index in range(len(stream)):
        bytewise.server_data(stream[index : index + 1])
        assert bytewise.lost is None, (index, bytewise.lost)
        assert bytewise.idle == (index == len(stream) - 1), f"idle={bytewise.idle} after {index + 1}/{len(stream)} bytes"
    for cut in range(len(stream) + 1) if every_split else (0, len(stream)):
        split = make()
        for command in commands:
            split.client_command(command)
        split.server_data(stream[:cut])
        assert split.idle == (cut == len(stream)) and split.lost is None, (cut, split.lost)
        split.server_data(memoryview(stream)[cut:])
        assert split.idle and split.lost is None, (cut, split.lost)


def check_lost(make: Make, commands: list[int], stream: bytes, reason: str) -> ResponseFollower:
    """The follower loses track somewhere in `stream`, for `reason`, in any chunking; then it stays lost."""
    for chunk in (1, 3, len(stream) or 1):
        lost = make()
        for command in commands:
            lost.client_command(command)
        for start in range(0, len(stream), chunk):
            lost.server_data(stream[start : start + chunk])
        assert lost.lost is not None and reason in lost.lost, lost.lost
        assert not lost.idle
        lost.server_data(frames([ok()]))
        lost.client_command(COM_PING)
        assert not lost.idle and reason in lost.lost
    return lost


# ---- COM_QUERY and COM_STMT_EXECUTE ---------------------------------------------------------------


@MODES
@pytest.mark.parametrize("command", [COM_QUERY, COM_STMT_EXECUTE])
def test_ok_err_and_ok_with_an_info_message(deprecate_eof: bool, command: int) -> None:
    for payload in (ok(), err(), ok(affected_rows=300, insert_id=70000, info=b"Rows matched: 1  Changed: 1  Warnings: 0"),
                    ok(affected_rows=1 << 40, insert_id=1 << 20)):
        check_idle_exactly_at_end(lambda: follower(deprecate_eof), [command], frames([payload]))


@MODES
def test_text_result_set(deprecate_eof: bool) -> None:
    rows = [text_row(b"1", b"one"), text_row(b"", b"starts with 0x00"), text_row(None, b"NULL first: 0xFB"),
            text_row(b"x" * 300, None)]
    stream = frames(ResultSet(columns=2, rows=rows).payloads(deprecate_eof=deprecate_eof))
    assert (rows[1][0], rows[2][0]) == (0x00, 0xFB)
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [COM_QUERY], stream)


@MODES
def test_empty_result_set(deprecate_eof: bool) -> None:
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [COM_QUERY],
                              frames(ResultSet(columns=3).payloads(deprecate_eof=deprecate_eof)))


@MODES
def test_binary_result_set(deprecate_eof: bool) -> None:
    rows = [binary_row(b"a", b"b"), binary_row(b"", b"")]
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [COM_STMT_EXECUTE],
                              frames(ResultSet(columns=2, rows=rows).payloads(deprecate_eof=deprecate_eof)))


@MODES
def test_many_columns_need_a_two_byte_column_count(deprecate_eof: bool) -> None:
    stream = frames(ResultSet(columns=300, rows=[text_row(*[b"v"] * 300)]).payloads(deprecate_eof=deprecate_eof))
    assert stream[4:7] == b"\xfc\x2c\x01"
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [COM_QUERY], stream, every_split=False)


@MODES
def test_more_results_chain_ok_result_sets_and_final_ok(deprecate_eof: bool) -> None:
    """A multi-statement query or a CALL: OK(more), result set(more), result set(more), the CALL's OK."""
    more = AUTOCOMMIT | MORE_RESULTS
    payloads = ([ok(more)] + ResultSet(rows=[text_row(b"1")], status=more).payloads(deprecate_eof=deprecate_eof)
                + ResultSet(columns=2, status=more).payloads(deprecate_eof=deprecate_eof) + [ok()])
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [COM_QUERY], frames(payloads))


@MODES
def test_more_results_then_err_ends_the_answer(deprecate_eof: bool) -> None:
    more = AUTOCOMMIT | MORE_RESULTS
    payloads = ResultSet(rows=[text_row(b"1")], status=more).payloads(deprecate_eof=deprecate_eof) + [err(1146)]
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [COM_QUERY], frames(payloads))


@MODES
@pytest.mark.parametrize("command", [COM_QUERY, COM_STMT_EXECUTE])
def test_err_in_place_of_a_row_ends_the_answer(deprecate_eof: bool, command: int) -> None:
    row = binary_row(b"1") if command == COM_STMT_EXECUTE else text_row(b"1")
    payloads = ResultSet(rows=[row, row], error=err(1317, b"Query execution was interrupted")).payloads(
        deprecate_eof=deprecate_eof)
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [command], frames(payloads))


@MODES
def test_err_among_the_column_definitions_ends_the_answer(deprecate_eof: bool) -> None:
    stream = frames([column_count(3), column_def(), err(1038, b"Out of sort memory")])
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [COM_QUERY], stream)


@MODES
def test_a_progress_report_does_not_end_the_answer(deprecate_eof: bool) -> None:
    """MariaDB's progress packets (errno 65535) come before the real answer of ALTER TABLE, LOAD DATA..."""
    stream = frames([progress(), progress(2, 100_000), ok(affected_rows=5)])
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [COM_QUERY], stream)


def frame_starts(stream: bytes) -> list[int]:
    starts, pos = [], 0
    while pos < len(stream):
        starts.append(pos)
        pos += 4 + int.from_bytes(stream[pos : pos + 3], "little")
    return starts


def check_idle_at_end_around_frame_starts(make: Make, commands: list[int], stream: bytes) -> None:
    """`check_idle_exactly_at_end` for streams too big for every cut: the first piece ends at or a few
    bytes after a frame start (its header, its first payload bytes), the rest comes in 1 MiB reads."""
    cuts = sorted({len(stream) - 1, len(stream)} | {start + d for start in frame_starts(stream) for d in (0, 2, 4, 5, 9)})
    view = memoryview(stream)
    for cut in (cut for cut in cuts if cut <= len(stream)):
        split = make()
        for command in commands:
            split.client_command(command)
        split.server_data(view[:cut])
        assert split.idle == (cut == len(stream)) and split.lost is None, (cut, split.lost)
        for start in range(cut, len(stream), 1 << 20):
            assert not split.idle
            split.server_data(view[start : start + (1 << 20)])
        assert split.idle and split.lost is None, (cut, split.lost)


@MODES
def test_text_rows_of_16_mib_or_more_in_continuation_frames(deprecate_eof: bool) -> None:
    """A value of 2^24 bytes makes a row that starts with 0xFE (its 8-byte length) and spans two frames;
    a row of exactly 0xFFFFFF bytes ends with an empty frame. Neither is a terminator."""
    huge = text_row(b"h" * (1 << 24))
    exact = b"\xfd" + (MAX_PACKET_PAYLOAD - 4).to_bytes(3, "little") + b"e" * (MAX_PACKET_PAYLOAD - 4)
    assert huge[0] == 0xFE and len(exact) == MAX_PACKET_PAYLOAD
    stream = frames(ResultSet(rows=[huge, exact, text_row(b"small")]).payloads(deprecate_eof=deprecate_eof))
    assert any(stream[start : start + 3] == b"\x00\x00\x00" for start in frame_starts(stream))  # ends `exact`
    check_idle_at_end_around_frame_starts(lambda: follower(deprecate_eof), [COM_QUERY], stream)


def test_binary_rows_of_16_mib_in_continuation_frames() -> None:
    stream = frames(ResultSet(rows=[binary_row(b"b" * (1 << 24)), binary_row(b"x")]).payloads(deprecate_eof=True))
    check_idle_at_end_around_frame_starts(lambda: follower(True), [COM_STMT_EXECUTE], stream)


def test_an_ok_continued_past_16_mib_loses_track() -> None:
    tracker = follower(False)
    tracker.client_command(COM_QUERY)
    tracker.server_data(frames([b"\x00" * MAX_PACKET_PAYLOAD + b"\x00"]))
    assert "malformed OK" in tracker.lost


@MODES
def test_sequence_ids_wrap_at_256(deprecate_eof: bool) -> None:
    stream = frames(ResultSet(rows=[text_row(b"%d" % n) for n in range(600)]).payloads(deprecate_eof=deprecate_eof))
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [COM_QUERY], stream, every_split=False)


# ---- MARIADB_CLIENT_CACHE_METADATA -----------------------------------------------------------------


@MODES
@pytest.mark.parametrize("metadata_follows", [True, False])
def test_cache_metadata_execute_with_and_without_column_definitions(deprecate_eof: bool, metadata_follows: bool) -> None:
    result = ResultSet(columns=2, rows=[binary_row(b"1", b"2")], metadata_follows=metadata_follows)
    stream = frames(result.payloads(deprecate_eof=deprecate_eof))
    check_idle_exactly_at_end(lambda: follower(deprecate_eof, cache_metadata=True), [COM_STMT_EXECUTE], stream)


@MODES
def test_cache_metadata_text_result_carries_the_byte_too(deprecate_eof: bool) -> None:
    """MariaDB writes the metadata-follows byte in every column count packet once the capability is on
    (`Protocol::send_result_set_metadata`), 1 outside prepared statements."""
    stream = frames(ResultSet(rows=[text_row(b"1")], metadata_follows=True).payloads(deprecate_eof=deprecate_eof))
    check_idle_exactly_at_end(lambda: follower(deprecate_eof, cache_metadata=True), [COM_QUERY], stream)


@pytest.mark.parametrize(("cache_metadata", "metadata_follows"), [(True, None), (False, True)])
def test_a_column_count_that_does_not_match_the_capabilities_loses_track(cache_metadata: bool,
                                                                           metadata_follows: bool | None) -> None:
    stream = frames(ResultSet(metadata_follows=metadata_follows).payloads(deprecate_eof=True))
    check_lost(lambda: follower(True, cache_metadata=cache_metadata), [COM_STMT_EXECUTE], stream, "column count")


def test_an_eof_under_deprecate_eof_loses_track() -> None:
    """Capabilities that do not match the server's: an EOF packet (5 bytes) is too short for an OK 0xFE."""
    stream = frames(ResultSet(rows=[text_row(b"1")]).payloads(deprecate_eof=False))
    check_lost(lambda: follower(True), [COM_QUERY], stream, "malformed 0xfe packet of 5 bytes")


def test_a_metadata_follows_byte_other_than_0_or_1_loses_track() -> None:
    check_lost(lambda: follower(True, cache_metadata=True), [COM_QUERY], frames([b"\x01\x02"]), "metadata-follows")


# ---- cursors ----------------------------------------------------------------------------------------


@MODES
def test_execute_opening_a_cursor_then_fetches(deprecate_eof: bool) -> None:
    """The cursor's answer is the metadata and its end (an EOF with SERVER_STATUS_CURSOR_EXISTS, or under
    DEPRECATE_EOF an OK 0xFE); COM_STMT_FETCH then gets rows and a terminator."""
    cursor_open = terminator(AUTOCOMMIT | CURSOR_EXISTS, deprecate_eof=deprecate_eof)
    opened = [column_count(2), column_def(), column_def(), cursor_open]
    fetch = [binary_row(b"1", b"2"), binary_row(b"3", b"4"), cursor_open]
    last = [terminator(AUTOCOMMIT | LAST_ROW_SENT, deprecate_eof=deprecate_eof)]
    make = lambda: follower(deprecate_eof)  # noqa: E731
    check_idle_exactly_at_end(make, [COM_STMT_EXECUTE], frames(opened))
    check_idle_exactly_at_end(make, [COM_STMT_FETCH], frames(fetch))
    check_idle_exactly_at_end(make, [COM_STMT_FETCH], frames(last))
    check_idle_exactly_at_end(make, [COM_STMT_EXECUTE, COM_STMT_FETCH, COM_STMT_FETCH],
                              frames(opened) + frames(fetch) + frames(last), every_split=False)


def test_a_cursor_in_a_text_result_loses_track() -> None:
    stream = frames([column_count(1), column_def(), eof(AUTOCOMMIT | CURSOR_EXISTS)])
    check_lost(lambda: follower(False), [COM_QUERY], stream, "cursor")


def test_a_fetch_announcing_more_results_loses_track() -> None:
    stream = frames([binary_row(b"1"), eof(AUTOCOMMIT | MORE_RESULTS)])
    check_lost(lambda: follower(False), [COM_STMT_FETCH], stream, "more results")


# ---- COM_STMT_PREPARE -----------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize(("columns", "parameters"), [(2, 3), (0, 2), (4, 0), (0, 0)])
def test_prepare(deprecate_eof: bool, columns: int, parameters: int) -> None:
    stream = frames(prepare_ok(7, columns, parameters, deprecate_eof=deprecate_eof))
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [COM_STMT_PREPARE], stream)


@MODES
def test_prepare_err(deprecate_eof: bool) -> None:
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [COM_STMT_PREPARE], frames([err(1146)]))


@MODES
@pytest.mark.parametrize("command", [COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA])
def test_commands_without_an_answer(deprecate_eof: bool, command: int) -> None:
    quiet = follower(deprecate_eof)
    quiet.client_command(command)
    assert quiet.idle
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [COM_STMT_PREPARE, COM_STMT_SEND_LONG_DATA,
                                                                 COM_STMT_CLOSE, COM_PING],
                              frames(prepare_ok(1, 0, 1, deprecate_eof=deprecate_eof)) + frames([ok()]))
    quiet.server_data(frames([ok()]))
    assert not quiet.idle and "no answer was expected" in quiet.lost


# ---- one-packet answers -----------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize("command", [COM_PING, COM_INIT_DB, COM_STMT_RESET, COM_RESET_CONNECTION, COM_REFRESH,
                                     COM_PROCESS_KILL])
def test_one_ok_or_err(deprecate_eof: bool, command: int) -> None:
    for payload in (ok(), err(1049, b"Unknown database"), ok(info=b"\x00" * 40)):
        check_idle_exactly_at_end(lambda: follower(deprecate_eof), [command], frames([payload]))


@MODES
@pytest.mark.parametrize("command", [COM_SET_OPTION, COM_DEBUG])
def test_one_eof(deprecate_eof: bool, command: int) -> None:
    """MariaDB answers COM_SET_OPTION and COM_DEBUG with `my_eof`: an EOF, or an OK 0xFE."""
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [command],
                              frames([terminator(deprecate_eof=deprecate_eof)]))


@MODES
def test_statistics(deprecate_eof: bool) -> None:
    text = (b"Uptime: 52  Threads: 1  Questions: 7  Slow queries: 0  Opens: 17  Open tables: 10  "
            b"Queries per second avg: 0.134")
    for payload in (text, err(1227)):
        check_idle_exactly_at_end(lambda: follower(deprecate_eof), [COM_STATISTICS], frames([payload]))


@MODES
def test_field_list(deprecate_eof: bool) -> None:
    stream = frames([column_def(b"a") + b"\xfb", column_def(b"b") + b"\x011", terminator(deprecate_eof=deprecate_eof)])
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [COM_FIELD_LIST], stream)
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [COM_FIELD_LIST], frames([err(1146)]))


# ---- pipelining -----------------------------------------------------------------------------------


@MODES
def test_pipelined_commands_are_answered_in_order(deprecate_eof: bool) -> None:
    answers = [
        (COM_QUERY, ResultSet(rows=[text_row(b"1")]).payloads(deprecate_eof=deprecate_eof)),
        (COM_STMT_PREPARE, prepare_ok(3, 1, 1, deprecate_eof=deprecate_eof)),
        (COM_STMT_CLOSE, None),
        (COM_PING, [ok()]),
        (COM_STMT_EXECUTE, [err(1243)]),
    ]
    stream = b"".join(frames(payloads) for _, payloads in answers if payloads is not None)
    check_idle_exactly_at_end(lambda: follower(deprecate_eof), [command for command, _ in answers], stream)


def test_idle_between_commands_and_a_command_sent_mid_answer() -> None:
    first, second = frames([ok(affected_rows=2)]), frames(ResultSet(rows=[text_row(b"x")]).payloads(deprecate_eof=True))
    tracker = follower(True)
    assert tracker.idle
    tracker.client_command(COM_QUERY)
    tracker.server_data(first[:-1])
    tracker.client_command(COM_QUERY)  # pipelined while the first answer is still coming
    tracker.server_data(first[-1:])
    assert not tracker.idle
    tracker.server_data(second)
    assert tracker.idle and tracker.lost is None


# ---- losing track -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "reason"), [
    (0x01, "COM_QUIT"), (0x11, "COM_CHANGE_USER"), (0x12, "0x12"), (0x15, "0x15"), (0x1D, "0x1d"),
    (0xFA, "0xfa"), (0xFE, "0xfe"), (0x0A, "0x0a"), (0x08, "0x08"), (0x00, "0x00"), (0x20, "0x20")])
def test_commands_not_followed(command: int, reason: str) -> None:
    check_lost(lambda: follower(True), [command], b"", reason)


def test_a_command_not_followed_behind_others() -> None:
    tracker = follower(False)
    tracker.client_command(COM_PING)
    tracker.client_command(0x12)
    tracker.server_data(frames([ok()]))
    assert not tracker.idle and "0x12" in tracker.lost


@MODES
def test_local_infile(deprecate_eof: bool) -> None:
    check_lost(lambda: follower(deprecate_eof), [COM_QUERY], frames([b"\xfb/etc/passwd"]), "LOCAL INFILE")
    more = frames([ok(AUTOCOMMIT | MORE_RESULTS), b"\xfbdata.csv"])
    check_lost(lambda: follower(deprecate_eof), [COM_QUERY], more, "LOCAL INFILE")


@pytest.mark.parametrize(("stream", "reason"), [
    (frames([ok()], seq=2), "sequence id 2 where 1 was expected"),
    (frames([column_count(1), column_def()]) + frames([eof()], seq=2), "sequence id 2 where 3"),
    (frames([ok()], seq=0), "sequence id 0"),
    (frames([b""]), "empty packet"),
    (frames([b"\xfe\x00\x00\x02\x00"]), "where a result was expected"),
    (frames([column_count(2), column_def(), b"\x05other"]), "definition packet starting with 0x05"),
    (frames([column_count(1), column_def(), text_row(b"1")]), "EOF after the definitions"),
    (frames([column_count(1), column_def(), b"\xfe\x00"]), "EOF after the definitions"),
    (frames([b"\x00\x00"]), "malformed OK"),
    (frames([b"\x00\xff\x00\x02\x00"]), "malformed OK"),
    (frames([b"\xff\x01"]), "ERR packet of 2 bytes"),
])
def test_malformed_answers_lose_track(stream: bytes, reason: str) -> None:
    check_lost(lambda: follower(False), [COM_QUERY], stream, reason)


def test_a_binary_row_must_start_with_0x00() -> None:
    stream = frames([column_count(1), column_def(), b"\x01\x00"])
    check_lost(lambda: follower(True), [COM_STMT_EXECUTE], stream, "binary row starting with 0x01")


def test_a_prepare_answer_that_is_not_its_ok() -> None:
    check_lost(lambda: follower(True), [COM_STMT_PREPARE], frames([ok()]), "COM_STMT_PREPARE answer")


@pytest.mark.parametrize(("command", "payload", "reason"), [
    (COM_PING, b"\x01", "one OK or EOF"), (COM_PING, b"\xfe" + bytes(20), "one OK or EOF"),
    (COM_PING, ok(AUTOCOMMIT | MORE_RESULTS), "more results"), (COM_FIELD_LIST, b"\x01x", "COM_FIELD_LIST")])
def test_one_packet_answers_that_do_not_fit(command: int, payload: bytes, reason: str) -> None:
    check_lost(lambda: follower(False), [command], frames([payload]), reason)


@pytest.mark.parametrize("stream", [
    frames([err(1927, b"Connection was killed")]),  # MariaDB's out-of-band ERR (seq 1) before it closes
    frames([ok()]),
    b"\x07",
])
def test_server_bytes_while_no_answer_is_expected(stream: bytes) -> None:
    check_lost(lambda: follower(True), [], stream, "no answer was expected")


def test_bytes_after_the_last_answer() -> None:
    check_lost(lambda: follower(True), [COM_PING], frames([ok()]) + b"\x00", "no answer was expected")


@pytest.mark.parametrize(("flags", "reason"), [
    (Capability.DEPRECATE_EOF, "4.1 protocol"),
    (BASE | Capability.OPTIONAL_RESULTSET_METADATA, "OPTIONAL_RESULTSET_METADATA")])
def test_capabilities_not_followed(flags: int, reason: str) -> None:
    tracker = ResponseFollower(capability_flags=flags)
    assert not tracker.idle and reason in tracker.lost
    tracker.client_command(COM_PING)
    tracker.server_data(frames([ok()]))
    assert not tracker.idle and reason in tracker.lost


def test_a_held_partial_header_is_completed_across_many_reads() -> None:
    stream = frames([ok(affected_rows=1 << 40, info=b"i" * 100)])
    tracker = follower(True)
    tracker.client_command(COM_QUERY)
    for index in range(24):
        tracker.server_data(stream[index : index + 1])
        assert not tracker.idle and tracker.lost is None
    tracker.server_data(stream[24:])
    assert tracker.idle
