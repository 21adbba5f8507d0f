"""The command phase, as far as the proxy follows it: client frame headers, to spot the two commands
that concern the connection itself (PROTOCOL.md §6).

* COM_CHANGE_USER re-runs authentication, so the handshake machine takes it whole and steps back into
  the connection phase (the proxy's RSA exchange may be needed again).
* COM_QUIT as the client's last packet tells a client half-close (nothing more to send) from a client
  that vanished mid-command.

Everything else passes without a copy: `FrameSkipper` counts payload bytes and stops only at the start
of a COM_CHANGE_USER frame.
"""

from __future__ import annotations

from functools import partial

from tlsproxy.mysql.codec import DecodeError, Frame, FrameBuffer, FrameSkipper
from tlsproxy.mysql.constants import Command


def _is_change_user(max_packet: int, length: int, sequence_id: int, first_byte: int) -> bool:
    return sequence_id == 0 and first_byte == Command.CHANGE_USER and length < max_packet


class CommandWatcher:
    def __init__(self, max_packet: int) -> None:
        self._max_packet = max_packet
        # A partial of a module function, not a bound method: no reference cycle through the skipper.
        self._skipper = FrameSkipper(partial(_is_change_user, max_packet))
        self._tail = b""
        """An incomplete frame header, or an incomplete COM_CHANGE_USER, waiting for more bytes."""

    def feed(self, data: bytes) -> tuple[bytes, Frame | None, bytes]:
        """(the bytes that pass on now, a COM_CHANGE_USER taken whole or None, the bytes after it)."""
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
