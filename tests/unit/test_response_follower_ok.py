"""The upstream pool's response follower reads an OK packet's status flags after two length-encoded
integers: an INSERT's last_insert_id from 251 up (3 bytes and more) must not look like "more results"
(which kept a connection out of the pool after most blob INSERTs of `bench soak --upstream-pool`)."""

from __future__ import annotations

import pytest

from tlsproxy.mysql.codec import encode_frame, encode_lenenc_int
from tlsproxy.mysql.response_follower import ResponseFollower

COM_QUERY = 0x03
PROTOCOL_41 = 0x00000200
AUTOCOMMIT, MORE_RESULTS_EXIST = 0x0002, 0x0008


def ok(affected_rows: int, last_insert_id: int, status: int) -> bytes:
    payload = (b"\x00" + encode_lenenc_int(affected_rows) + encode_lenenc_int(last_insert_id)
               + status.to_bytes(2, "little") + bytes(2))
    return encode_frame(1, payload)


def follower_after(answer: bytes) -> ResponseFollower:
    follower = ResponseFollower(capability_flags=PROTOCOL_41)
    follower.client_command(COM_QUERY)
    follower.server_data(answer)
    return follower


@pytest.mark.parametrize("last_insert_id", [0, 5, 250, 251, 1000, 0xE8E8, 70_000, 1 << 40])
@pytest.mark.parametrize("affected_rows", [1, 300])
def test_an_ok_with_any_insert_id_ends_the_command(affected_rows: int, last_insert_id: int) -> None:
    follower = follower_after(ok(affected_rows, last_insert_id, AUTOCOMMIT))
    assert follower.idle and follower.lost is None


@pytest.mark.parametrize("last_insert_id", [5, 1000])
def test_more_results_in_the_ok_status_is_seen(last_insert_id: int) -> None:
    follower = follower_after(ok(1, last_insert_id, AUTOCOMMIT | MORE_RESULTS_EXIST))
    assert not follower.idle and follower.lost is None  # the next result is still to come
    follower.server_data(encode_frame(2, b"\x00\x00\x00" + AUTOCOMMIT.to_bytes(2, "little") + bytes(2)))
    assert follower.idle


def test_a_truncated_ok_is_not_parkable() -> None:
    assert not follower_after(encode_frame(1, b"\x00\x01\xfc\xe8")).idle
