"""CommandWatcher and FrameSkipper on the relay's hot path (PROTOCOL.md §6): a read of whole frames that
nobody claims passes with nothing copied and no object made, and `passing` followed by `feed` on the rest
claims exactly what `feed` alone does, wherever the reads are cut."""

from __future__ import annotations

import itertools
import tracemalloc

import pytest

from tlsproxy.mysql.codec import Frame, FrameSkipper, encode_frame
from tlsproxy.mysql.command_watcher import CommandWatcher
from tlsproxy.mysql.constants import Command

MAX_PACKET = 1 << 20
QUERY = encode_frame(0, b"\x03SELECT c FROM sbtest1 WHERE id=4711")
PREPARED = encode_frame(0, b"\x17" + bytes(9))  # COM_STMT_EXECUTE
CHANGE_USER = encode_frame(0, b"\x11bob\x00\x00\x00")
QUIT = encode_frame(0, bytes((Command.QUIT,)))
WHOLE_FRAMES = QUERY + PREPARED + encode_frame(0, b"") + QUERY  # under 256 bytes: no int is an object


def allocated_while(step, repetitions: int = 2000) -> int:
    """Bytes by which Python's allocator peaked above where it stood while `step` ran `repetitions` times
    (after a warm-up): 0 when nothing was allocated, however briefly."""
    for _ in range(10):
        step()
    loop = itertools.repeat(None, repetitions)  # no loop counter: ints past 256 are objects
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in loop:
            step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


def claims_nothing(length: int, sequence_id: int, first_byte: int) -> bool:
    return False


def test_the_measure_sees_a_four_byte_slice() -> None:
    assert allocated_while(lambda: WHOLE_FRAMES[0:4]) > 0
    assert allocated_while(lambda: None) == 0


def test_the_skipper_allocates_nothing_for_whole_frames() -> None:
    skipper = FrameSkipper(claims_nothing)
    assert skipper.feed(WHOLE_FRAMES) == len(WHOLE_FRAMES)
    assert allocated_while(lambda: skipper.feed(WHOLE_FRAMES)) == 0


@pytest.mark.parametrize("pooled", [False, True], ids=["plain route", "pooled route"])
def test_the_watcher_passes_a_read_of_whole_frames_without_allocating(pooled: bool) -> None:
    commands: list[int] = []
    watcher = CommandWatcher(MAX_PACKET, on_command=commands.append if pooled else None)
    assert watcher.passing(WHOLE_FRAMES) == len(WHOLE_FRAMES)
    if pooled:
        assert commands == [0x03, 0x17, 0x03]  # the empty frame has no command byte
        commands.clear()
        # the follower's own cost is not the watcher's: measure with a callback that keeps nothing
        watcher = CommandWatcher(MAX_PACKET, on_command=int)
    assert allocated_while(lambda: watcher.passing(WHOLE_FRAMES)) == 0
    assert watcher.at_command_boundary


def test_passing_stops_where_a_claimed_command_starts_and_at_a_cut_header() -> None:
    watcher = CommandWatcher(MAX_PACKET)
    assert watcher.passing(QUERY + CHANGE_USER + QUERY) == len(QUERY)
    passed, claimed, after = watcher.feed(CHANGE_USER + QUERY)
    assert (passed, claimed, after) == (b"", Frame(0, CHANGE_USER[4:]), QUERY)
    cut = QUERY + QUERY[:3]
    assert CommandWatcher(MAX_PACKET).passing(cut) == len(QUERY)
    pooled = CommandWatcher(MAX_PACKET, on_command=lambda first_byte: None)
    assert pooled.passing(QUERY + QUIT) == len(QUERY)
    assert CommandWatcher(MAX_PACKET).passing(QUERY + QUIT) == len(QUERY + QUIT)  # not claimed unpooled


def test_passing_holds_back_when_an_earlier_read_left_a_partial_frame() -> None:
    watcher = CommandWatcher(MAX_PACKET)
    assert watcher.feed(CHANGE_USER[:6]) == (b"", None, b"")
    assert watcher.buffered == 6
    assert watcher.passing(CHANGE_USER[6:]) == 0  # the rest must join the held bytes in `feed`
    assert watcher.feed(CHANGE_USER[6:]) == (b"", Frame(0, CHANGE_USER[4:]), b"")


def drive(watcher: CommandWatcher, data: bytes, *, hot_path: bool = True) -> tuple[bytes, list[Frame]]:
    """What the driver does with one read: the passing prefix as is (`hot_path`), the rest through `feed`."""
    passing = watcher.passing(data) if hot_path else 0
    sent, claimed = data[:passing], []
    data = data[passing:]
    while data:
        passed, frame, data = watcher.feed(data)
        sent += passed
        if frame is None:
            break
        claimed.append(frame)
    return sent, claimed


STREAM = QUERY + CHANGE_USER + PREPARED + encode_frame(0, b"") + QUIT + QUERY


@pytest.mark.parametrize("pooled", [False, True], ids=["plain route", "pooled route"])
@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_passing_then_feed_claims_what_feed_alone_claims_at_every_cut(pooled: bool, cut: int) -> None:
    def run(use_passing: bool) -> tuple[bytes, list[Frame], list[int]]:
        commands: list[int] = []
        watcher = CommandWatcher(MAX_PACKET, on_command=commands.append if pooled else None)
        sent, claimed = b"", []
        for read in (STREAM[:cut], STREAM[cut:]):
            more, frames = drive(watcher, read, hot_path=use_passing)
            sent += more
            claimed += frames
        return sent, claimed, commands

    assert run(True) == run(False)
    sent, claimed, commands = run(True)
    assert [frame.payload[0] for frame in claimed] == ([0x11, Command.QUIT] if pooled else [0x11])
    assert commands == ([0x03, 0x17, 0x03] if pooled else [])
