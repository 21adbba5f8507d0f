"""The response follower against the real test server (MariaDB 10.11), without the proxy (PROTOCOL.md §6.2).

A plain TCP connection logs in as the PLAIN account (no TLS requirement) with or without
CLIENT_DEPRECATE_EOF and MARIADB_CLIENT_CACHE_METADATA, sends real commands and feeds every server byte to
followers. Where an answer ends is known here without the follower: behind each exchange goes a marker
command (COM_STATISTICS, or COM_PING after a COM_STATISTICS), and the server answers in order, so the
answer is everything before the marker's own one-packet answer. A follower told only the exchange's
commands must then be idle exactly at the answer's last byte (fed byte by byte, and as the reads came),
and one follower fed the whole session (markers included) must never lose track.
"""

from __future__ import annotations

import socket
from typing import Callable, Iterator

import pytest

from bench.myclient import native_password_scramble
from tests.conftest import PLAIN, TEST_DATABASE
from tests.fixtures.responses import build_response
from tlsproxy.demo.mariadb import MariaDBServer
from tlsproxy.mysql.codec import encode_frame, parse_header
from tlsproxy.mysql.constants import Capability
from tlsproxy.mysql.messages import parse_auth_switch, parse_initial_handshake
from tlsproxy.mysql.response_follower import MARIADB_CLIENT_CACHE_METADATA, ResponseFollower

pytestmark = pytest.mark.integration

Make = Callable[[], ResponseFollower]
"""A new follower with the capabilities of the test."""
TABLE = f"{TEST_DATABASE}.follower_rows"
ROWS = 20_000
FLAGS = (Capability.LONG_FLAG | Capability.CONNECT_WITH_DB | Capability.PROTOCOL_41 | Capability.TRANSACTIONS
         | Capability.SECURE_CONNECTION | Capability.MULTI_STATEMENTS | Capability.MULTI_RESULTS
         | Capability.PS_MULTI_RESULTS | Capability.PLUGIN_AUTH | Capability.LOCAL_FILES)
"""No CLIENT_MYSQL (bit 0): MariaDB then reads the extended capabilities of the HandshakeResponse."""
MODES = {
    "eof": (FLAGS, 0),
    "deprecate_eof": (FLAGS | Capability.DEPRECATE_EOF, 0),
    "eof_cache_metadata": (FLAGS, MARIADB_CLIENT_CACHE_METADATA),
    "deprecate_eof_cache_metadata": (FLAGS | Capability.DEPRECATE_EOF, MARIADB_CLIENT_CACHE_METADATA),
}
STATISTICS, PING = b"\x09", b"\x0e"
CURSOR_TYPE_READ_ONLY = 1
MYSQL_TYPE_LONGLONG = 0x08


@pytest.fixture(scope="module")
def server(mariadb: MariaDBServer) -> MariaDBServer:
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {TABLE} (i INT PRIMARY KEY, s VARCHAR(40), n VARCHAR(10))")
    if mariadb.sql(f"SELECT COUNT(*) FROM {TABLE}") != [[str(ROWS)]]:
        mariadb.sql(f"DELETE FROM {TABLE}; INSERT INTO {TABLE} SELECT seq, CONCAT('row ', seq), "
                    f"IF(seq % 3 = 0, NULL, IF(seq % 3 = 1, '', 'x')) FROM seq_1_to_{ROWS}", database=TEST_DATABASE)
    mariadb.sql(f"DELIMITER //\nCREATE OR REPLACE PROCEDURE {TEST_DATABASE}.follower_two_results() "
                f"BEGIN SELECT 1 AS a; SELECT s, n FROM {TABLE} WHERE i <= 3; END//")
    return mariadb


def read_packet(sock: socket.socket) -> tuple[int, bytes]:
    header = sock.recv(4, socket.MSG_WAITALL)
    length, sequence_id = parse_header(header) if len(header) == 4 else (-1, -1)
    payload = sock.recv(length, socket.MSG_WAITALL) if length > 0 else b""
    assert len(payload) == length, "the server closed the connection"
    return sequence_id, payload


class Session:
    """One logged-in connection and a follower fed every byte of its command phase."""

    def __init__(self, port: int, mode: str) -> None:
        self.flags, self.extended = MODES[mode]
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        _, greeting = read_packet(self.sock)
        nonce = parse_initial_handshake(greeting).nonce
        response = build_response(capability_flags=self.flags, username=PLAIN.user.encode(),
                                  auth_response=native_password_scramble(PLAIN.password, nonce),
                                  database=TEST_DATABASE.encode(), auth_plugin_name="mysql_native_password",
                                  character_set=45, mariadb_extended_capabilities=self.extended)
        self.sock.sendall(encode_frame(1, response))
        sequence_id, answer = read_packet(self.sock)
        if answer[:1] == b"\xfe":
            switch = parse_auth_switch(answer)
            self.sock.sendall(encode_frame(sequence_id + 1, native_password_scramble(PLAIN.password, switch.nonce)))
            _, answer = read_packet(self.sock)
        assert answer[:1] == b"\x00", answer
        self.whole = self.follower()
        """Fed the whole session, markers included, as the reads came."""

    def follower(self) -> ResponseFollower:
        return ResponseFollower(capability_flags=self.flags, mariadb_extended_capabilities=self.extended)

    def exchange(self, *packets: bytes) -> bytes:
        """Sends the command packets (pipelined) and a marker; returns the answers to the packets, having
        checked that followers find their end exactly there."""
        marker = PING if any(packet[:1] == STATISTICS for packet in packets) else STATISTICS
        commands = [packet[0] for packet in packets]
        for command in [*commands, marker[0]]:
            self.whole.client_command(command)
        self.sock.sendall(b"".join(encode_frame(0, packet) for packet in (*packets, marker)))
        reads, received = [], bytearray()
        while (end := marker_answer_start(received, marker)) is None:
            assert not self.whole.idle
            chunk = self.sock.recv(1 << 20)
            assert chunk, "the server closed the connection"
            reads.append(chunk)
            received += chunk
            self.whole.server_data(chunk)
            assert self.whole.lost is None, self.whole.lost
        assert self.whole.idle, "the marker's answer is in, so is everything before it"
        answer = bytes(received[:end])
        check_idle_exactly_at_end(self.follower, commands, answer, reads)
        return answer

    def close(self) -> None:
        self.sock.close()


def marker_answer_start(received: bytearray, marker: bytes) -> int | None:
    """Where the marker's answer starts, once it is whole at the end of `received`: one packet at seq 1,
    "Uptime: ..." (under 300 bytes) for COM_STATISTICS, an OK of 7 bytes for COM_PING."""
    if marker == STATISTICS:
        start = received.rfind(b"\x01Uptime: ", max(0, len(received) - 300)) - 3
        if start < 0 or int.from_bytes(received[start : start + 3], "little") + 4 != len(received) - start:
            return None
        return start
    if len(received) >= 11 and received[-11:-7] == b"\x07\x00\x00\x01" and received[-7:-6] == b"\x00":
        return len(received) - 11
    return None


def check_idle_exactly_at_end(make: Make, commands: list[int], answer: bytes, reads: list[bytes]) -> None:
    """Idle only at the answer's last byte: byte by byte (the last 2 KiB of a long answer; what comes before
    in 64 KiB pieces), and cut as the socket reads came."""
    bytewise = make()
    for command in commands:
        bytewise.client_command(command)
    assert bytewise.idle == (not answer)  # COM_STMT_CLOSE alone has no answer
    head = max(0, len(answer) - 2048)
    for start in range(0, head, 1 << 16):
        bytewise.server_data(answer[start : min(start + (1 << 16), head)])
        assert not bytewise.idle and bytewise.lost is None, bytewise.lost
    for index in range(head, len(answer)):
        bytewise.server_data(answer[index : index + 1])
        assert bytewise.lost is None, (index, bytewise.lost)
        assert bytewise.idle == (index == len(answer) - 1), f"idle={bytewise.idle} after {index + 1}/{len(answer)}"
    as_read = make()
    for command in commands:
        as_read.client_command(command)
    position = 0
    for chunk in reads:
        piece = answer[position : position + len(chunk)]
        position += len(piece)
        as_read.server_data(piece)
        assert as_read.idle == (position == len(answer)) and as_read.lost is None, (position, as_read.lost)
    assert as_read.idle


def packets_of(answer: bytes) -> list[tuple[int, bytes]]:
    """(sequence id, payload) of each frame of an answer, read here without the follower."""
    out, position = [], 0
    while position < len(answer):
        length, sequence_id = parse_header(answer[position : position + 4])
        out.append((sequence_id, answer[position + 4 : position + 4 + length]))
        position += 4 + length
    return out


def query(sql: str) -> bytes:
    return b"\x03" + sql.encode()


def execute(statement_id: int, *params: int, cursor: bool = False) -> bytes:
    """COM_STMT_EXECUTE with BIGINT parameters."""
    payload = b"\x17" + statement_id.to_bytes(4, "little") + bytes((CURSOR_TYPE_READ_ONLY if cursor else 0,))
    payload += (1).to_bytes(4, "little")
    if params:
        payload += bytes((len(params) + 7) // 8) + b"\x01" + bytes((MYSQL_TYPE_LONGLONG, 0)) * len(params)
        payload += b"".join(param.to_bytes(8, "little", signed=True) for param in params)
    return payload


@pytest.fixture(params=sorted(MODES))
def session(server: MariaDBServer, request: pytest.FixtureRequest) -> Iterator[Session]:
    opened = Session(server.port, request.param)
    try:
        yield opened
    finally:
        opened.close()


def prepare(session: Session, sql: str) -> tuple[int, int, int]:
    """(statement id, columns, parameters) of a COM_STMT_PREPARE, checked against the packets that followed."""
    answer = packets_of(session.exchange(b"\x16" + sql.encode()))
    ok = answer[0][1]
    statement_id, columns, parameters = (int.from_bytes(ok[1:5], "little"), int.from_bytes(ok[5:7], "little"),
                                         int.from_bytes(ok[7:9], "little"))
    eofs = 0 if session.flags & Capability.DEPRECATE_EOF else (columns > 0) + (parameters > 0)
    assert (ok[0], len(ok), len(answer)) == (0, 12, 1 + columns + parameters + eofs)
    return statement_id, columns, parameters


def test_text_protocol_answers(session: Session) -> None:
    counted = packets_of(session.exchange(query("SELECT 1")))[0][1]
    assert counted == (b"\x01\x01" if session.extended else b"\x01")  # CACHE_METADATA: a metadata-follows byte, 1
    session.exchange(query("DO 1"))
    assert packets_of(session.exchange(query("SELECT * FROM no_such_table")))[0][1][:3] == b"\xff\x7a\x04"  # 1146
    rows = packets_of(session.exchange(query("SELECT '', NULL UNION ALL SELECT NULL, ''")))
    assert {payload[0] for _, payload in rows[-3:-1]} == {0x00, 0xFB}  # text rows starting with 0x00 and 0xFB
    big = session.exchange(query(f"SELECT * FROM {TABLE} ORDER BY i"))
    assert len(packets_of(big)) > ROWS and packets_of(big)[-1][0] == (len(packets_of(big)) % 256)


def test_rows_of_16_mib_and_more(session: Session) -> None:
    """Values of 2^24 bytes: each row starts with 0xFE (an 8-byte length) and goes on in a second frame of
    10 bytes. The first row's second frame starts like an OK 0xFE terminator (FE 00 00 02 00...), the
    second row's like an EOF; neither is one, the frame before them was 0xFFFFFF long."""
    answer = packets_of(session.exchange(query(
        "SELECT CONCAT(REPEAT(c, 16777206), UNHEX(h)) FROM (SELECT 'x' AS c, 'FE000002000000000000' AS h "
        "UNION ALL SELECT 'y', 'FE000000020000000000') AS t")))  # (a UNION of the long values cuts them to 2^24-1)
    huge = [(index, payload) for index, (_, payload) in enumerate(answer) if len(payload) == 0xFFFFFF]
    assert len(huge) == 2 and all(payload[:1] == b"\xfe" for _, payload in huge)
    assert [answer[index + 1][1][:5] for index, _ in huge] == [b"\xfe\x00\x00\x02\x00", b"\xfe\x00\x00\x00\x02"]
    # a row that starts small (its first value: 5 bytes) and is continued by a frame that looks like an OK 0xFE
    answer = packets_of(session.exchange(query(
        "SELECT 'abcde', CONCAT(REPEAT('z', 16777205), UNHEX('FE000002000000000000'))")))
    index = next(index for index, (_, payload) in enumerate(answer) if len(payload) == 0xFFFFFF)
    assert answer[index][1][:1] == b"\x05" and answer[index + 1][1] == bytes.fromhex("FE000002000000000000")


def test_several_results_in_one_answer(session: Session) -> None:
    session.exchange(query("SELECT 1; SELECT 'a', 'b'; DO 1; SELECT 2 UNION SELECT 3"))
    stopped = packets_of(session.exchange(query("SELECT 1; SELECT * FROM no_such_table; SELECT 2")))
    assert stopped[-1][1][:1] == b"\xff"  # the ERR ends the answer: SELECT 2 never runs
    session.exchange(query("CALL follower_two_results()"))
    mid_rows = packets_of(session.exchange(query(
        f"SELECT i, (SELECT 1 UNION SELECT 2 FROM DUAL WHERE i > 10) FROM {TABLE} ORDER BY i")))
    assert mid_rows[-1][1][:3] == b"\xff\xda\x04" and len(mid_rows) > 5  # 1242 after rows were sent


def test_prepared_statements(session: Session) -> None:
    select, columns, parameters = prepare(session, f"SELECT i, s, n FROM {TABLE} WHERE i > ? AND i <= ?")
    assert (columns, parameters) == (3, 2)
    first = packets_of(session.exchange(execute(select, 0, 100)))
    again = packets_of(session.exchange(execute(select, 100, 150)))
    if session.extended & MARIADB_CLIENT_CACHE_METADATA:  # COM_STMT_PREPARE sent them: no column definitions
        assert first[0][1] == again[0][1] == b"\x03\x00"
    else:
        assert first[0][1] == again[0][1] == b"\x03"
    assert again[-2][1][:1] == b"\x00"  # a binary row
    session.exchange(execute(select, 0, ROWS))
    insert, columns, parameters = prepare(session, "SELECT ? + 1 AS v")
    session.exchange(execute(insert, 41))
    no_params, _, _ = prepare(session, "SELECT 1")
    call, _, _ = prepare(session, "CALL follower_two_results()")
    session.exchange(execute(call))
    assert packets_of(session.exchange(b"\x16SELEKT"))[0][1][:1] == b"\xff"
    session.exchange(b"\x18" + select.to_bytes(4, "little") + b"\x00\x00long data", b"\x1a" + select.to_bytes(4, "little"))
    session.exchange(b"\x19" + no_params.to_bytes(4, "little"))  # COM_STMT_CLOSE: no answer at all
    assert packets_of(session.exchange(execute(no_params)))[0][1][:3] == b"\xff\xdb\x04"  # 1243 unknown statement


def test_a_cursor_and_fetches(session: Session) -> None:
    statement, _, _ = prepare(session, f"SELECT i, s FROM {TABLE} WHERE i <= ?")
    opened = packets_of(session.exchange(execute(statement, 7, cursor=True)))
    end = opened[-1][1]
    # the status flags are at offset 3 of both an EOF (after the warnings) and an OK 0xFE (after two zeros)
    assert end[0] == 0xFE and int.from_bytes(end[3:5], "little") & 0x0040  # SERVER_STATUS_CURSOR_EXISTS
    fetches = []
    for _ in range(4):
        fetches.append(packets_of(session.exchange(b"\x1c" + statement.to_bytes(4, "little") + (3).to_bytes(4, "little"))))
    assert [len(fetch) for fetch in fetches[:3]] == [4, 4, 2]  # 3, 3 and 1 rows, each fetch ending with 0xFE
    assert all(fetch[-1][1][:1] == b"\xfe" for fetch in fetches[:3])
    assert int.from_bytes(fetches[2][-1][1][3:5], "little") & 0x0080  # SERVER_STATUS_LAST_ROW_SENT
    assert fetches[3][0][1][:1] == b"\xff"  # and the cursor is closed: the next fetch is an ERR
    session.exchange(execute(statement, 2))  # and the same statement without a cursor again


def test_one_packet_commands(session: Session) -> None:
    for packet in (PING, b"\x02" + TEST_DATABASE.encode(), b"\x02no_such_db", STATISTICS, b"\x1f",
                   b"\x1b\x00\x00", b"\x07\x01", b"\x0c" + (999_999).to_bytes(4, "little"), b"\x0d"):
        answer = packets_of(session.exchange(packet))
        assert len(answer) == 1, (packet, answer)
    assert packets_of(session.exchange(b"\x1b\x00\x00"))[0][1][:1] == b"\xfe"  # COM_SET_OPTION: my_eof()


def test_field_list(session: Session) -> None:
    listed = packets_of(session.exchange(b"\x04follower_rows\x00"))
    assert len(listed) == 4 and listed[-1][1][:1] == b"\xfe"
    assert packets_of(session.exchange(b"\x04no_such_table\x00"))[0][1][:1] == b"\xff"


def test_pipelined_commands(session: Session) -> None:
    statement, _, _ = prepare(session, "SELECT ?")
    session.exchange(query("SELECT 1"), b"\x16SELECT 2, 3", PING, query("SELECT 4; SELECT * FROM no_such_table"),
                     execute(statement, 5), b"\x19" + statement.to_bytes(4, "little"), query(f"SELECT * FROM {TABLE}"))


def test_local_infile_loses_track(session: Session) -> None:
    session.whole.client_command(0x03)
    session.sock.sendall(encode_frame(0, query(f"LOAD DATA LOCAL INFILE 'rows.csv' INTO TABLE {TABLE}")))
    sequence_id, request = read_packet(session.sock)
    session.whole.server_data(encode_frame(sequence_id, request))
    assert request[:1] == b"\xfb" and "LOCAL INFILE" in session.whole.lost
    session.sock.sendall(encode_frame(sequence_id + 1, b""))  # no file: the server answers OK
    assert read_packet(session.sock)[1][:1] == b"\x00"


def test_kill_of_an_idle_connection_sends_nothing(server: MariaDBServer) -> None:
    """KILL (as wait_timeout) of an idle connection: MariaDB 10.11 closes it without a word (no out-of-band
    ER_CONNECTION_KILLED), so the follower stays idle: a pool must watch a parked connection for its close."""
    killed = Session(server.port, "deprecate_eof")
    try:
        connection_id = int(packets_of(killed.exchange(query("SELECT CONNECTION_ID()")))[-2][1][1:])
        server.sql(f"KILL {connection_id}")
        assert killed.sock.recv(1 << 16) == b""
        assert killed.whole.idle
    finally:
        killed.close()
