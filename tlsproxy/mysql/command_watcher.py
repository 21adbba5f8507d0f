"""The command phase, as far as the proxy follows it: client frame headers, to spot the two commands
that concern the connection itself (PROTOCOL.md §6).

* COM_CHANGE_USER re-runs authentication, so the handshake machine takes it whole and steps back into
  the connection phase (the proxy's RSA exchange may be needed again).
* COM_QUIT as the client's last packet tells a client half-close (nothing more to send) from a client
  that vanished mid-command. On a route with an upstream pool it is taken whole too (`claim_quit`): the
  machine holds it back, and the driver parks the upstream instead of passing it on.
* With an upstream pool, every other command's first byte goes to `on_command` (the response follower,
  which must know what each answer will look like to tell when nothing is in flight).

Everything else passes without a copy: `FrameSkipper` counts payload bytes and stops only at the start
of a claimed frame. `passing` is the relay's hot path: for a read of whole unclaimed frames it makes no
object at all, and the driver writes the read as it came.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from tlsproxy.mysql.codec import DecodeError, Frame, FrameBuffer, FrameSkipper
from tlsproxy.mysql.constants import Command


# Plain ints for the per-frame predicates: reading an enum member off its class runs Python code and
# makes an object each time (3.11).
_CHANGE_USER, _QUIT = int(Command.CHANGE_USER), int(Command.QUIT)


def _is_change_user(max_packet: int, length: int, sequence_id: int, first_byte: int) -> bool:
    return sequence_id == 0 and first_byte == _CHANGE_USER and length < max_packet


def _claims_change_user_or_quit(max_packet: int, on_command: Callable[[int], None], length: int, sequence_id: int,
                                first_byte: int) -> bool:
    if sequence_id:
        return False
    if (first_byte == _CHANGE_USER and length < max_packet) or (first_byte == _QUIT and length == 1):
        return True
    on_command(first_byte)
    return False


class CommandWatcher:
    def __init__(self, max_packet: int, *, on_command: Callable[[int], None] | None = None) -> None:
        """`on_command`: claim COM_QUIT too, and report the first byte of every other command."""
        self._max_packet = max_packet
        # A partial of a module function, not a bound method: no reference cycle through the skipper.
        wants_whole = (partial(_is_change_user, max_packet) if on_command is None
                       else partial(_claims_change_user_or_quit, max_packet, on_command))
        self._skipper = FrameSkipper(wants_whole)
        self._tail = b""
        """An incomplete frame header, or an incomplete COM_CHANGE_USER, waiting for more bytes."""

    def passing(self, data: bytes) -> int:
        """How many leading bytes of `data` pass on as they are: all of them unless a claimed command
        starts in `data` or a frame header is cut at its end. The relay's hot path: nothing is copied and
        no object is made. The bytes from the returned offset on must go to `feed` next (the watcher
        stands at the start of that frame); 0 also when bytes from an earlier read are held."""
        if self._tail:
            return 0
        return self._skipper.feed(data)

    def feed(self, data: bytes) -> tuple[bytes, Frame | None, bytes]:
        """(the bytes that pass on now, a COM_CHANGE_USER (or, with `on_command`, COM_QUIT) taken whole or
        None, the bytes after it)."""
        if self._tail:
            data = self._tail + data
            self._tail = b""
        passed = self._skipper.feed(data)
        if passed == len(data):
            return data, None, b""
        rest = data[passed:]
        frames = FrameBuffer(self._max_packet)
        frames.feed(rest)
        try:
            frame = frames.next_frame()
        except DecodeError:  # pragma: no cover - the skipper only claims frames under the limit
            frame = None
        if frame is None:
            self._tail = rest
            return data[:passed], None, b""
        self._skipper.skip_claimed()
        return data[:passed], frame, frames.take_rest()

    @property
    def client_sent_quit(self) -> bool:
        """The last packet the client started is COM_QUIT."""
        skipper = self._skipper
        return skipper.last_sequence_id == 0 and skipper.last_first_byte == Command.QUIT and skipper.last_length == 1

    @property
    def at_command_boundary(self) -> bool:
        """The client's bytes so far end with a whole packet."""
        return not self._tail and self._skipper.at_frame_boundary

    @property
    def buffered(self) -> int:
        return len(self._tail)
