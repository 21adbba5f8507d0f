"""A fault-injecting TCP relay for the upstream leg: proxy -> FaultRelay -> real MariaDB.

Each connection is a `Link` with one pump thread per direction. A `Fault` is applied to the next
connection (`FaultRelay.arm`) or to a live one (`Link.apply`); connections without one pass bytes
through untouched, so a test can show that only the faulted connection suffers.

Kinds (each starts once `after_bytes` more bytes have been forwarded in `direction`):

    delay     sleep `delay` seconds before forwarding each chunk
    stall     forward nothing more in that direction and stop reading it (the sender's buffers fill)
    reset     send an RST to the proxy (SO_LINGER 0) and close the server side
    truncate  forward the first TLS record that starts at or after `after_bytes` only up to half its
              body, then close both sides (the stream's first MySQL frame, the plaintext greeting or
              SSLRequest, is skipped before TLS records are counted); it needs the whole stream,
              so it is for `arm`, not for a live `Link.apply`
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Literal

from tests.support.wire import Listener

TO_CLIENT = "to_client"  # server -> proxy
TO_SERVER = "to_server"  # proxy -> server


@dataclass(frozen=True)
class Fault:
    kind: Literal["delay", "stall", "reset", "truncate"]
    direction: Literal["to_client", "to_server"] = TO_CLIENT
    after_bytes: int = 0
    delay: float = 0.0


class _TlsRecordCut:
    """Finds where to cut a stream: half-way into the first TLS record starting at or after `after`
    (offsets count from the start of the stream; the first MySQL frame is not TLS)."""

    def __init__(self, after: int) -> None:
        self.after = after
        self._next: int | None = None  # offset of the next record header, once known

    def cut_point(self, seen: bytes | bytearray) -> int | None:
        if self._next is None:
            if len(seen) < 4:
                return None
            self._next = 4 + int.from_bytes(seen[:3], "little")
        while len(seen) >= self._next + 5:
            length = int.from_bytes(seen[self._next + 3:self._next + 5], "big")
            if self._next >= self.after:
                return self._next + 5 + length // 2
            self._next += 5 + length
        return None


class Link:
    """One relayed connection. `forwarded[direction]` counts bytes passed on; `triggered` is set once
    its fault took effect."""

    def __init__(self, relay: "FaultRelay", proxy_side: socket.socket, server_side: socket.socket) -> None:
        self.relay = relay
        self.proxy_side = proxy_side
        self.server_side = server_side
        self.forwarded = {TO_CLIENT: 0, TO_SERVER: 0}
        self.triggered = threading.Event()
        self._lock = threading.Lock()
        self._faults: dict[str, tuple[Fault, int]] = {}

    def apply(self, fault: Fault) -> None:
        """Start `fault` on this live connection; `after_bytes` counts from now."""
        with self._lock:
            self._faults[fault.direction] = (fault, self.forwarded[fault.direction] + fault.after_bytes)

    def _fault(self, direction: str) -> tuple[Fault, int] | None:
        with self._lock:
            return self._faults.get(direction)

    def pump(self, direction: str) -> None:
        source, sink = ((self.server_side, self.proxy_side) if direction == TO_CLIENT
                        else (self.proxy_side, self.server_side))
        seen = bytearray()  # the whole stream, kept only while a truncate fault may need it
        cut: _TlsRecordCut | None = None
        try:
            while not self.relay.stopping.is_set():
                active = self._fault(direction)
                if active is not None and active[0].kind in ("stall", "reset") \
                        and self.forwarded[direction] >= active[1]:
                    self._trigger(active[0])
                    return
                data = source.recv(65536)
                if not data:
                    break
                active = self._fault(direction)
                if active is None:
                    self._send(sink, direction, data)
                    continue
                fault, start = active
                if fault.kind == "delay":
                    if self.forwarded[direction] + len(data) > start:
                        self.triggered.set()
                        time.sleep(fault.delay)
                    self._send(sink, direction, data)
                elif fault.kind in ("stall", "reset"):
                    room = start - self.forwarded[direction]
                    self._send(sink, direction, data[:room])
                    if room < len(data):
                        self._trigger(fault)
                        return
                else:  # truncate
                    if cut is None:
                        cut = _TlsRecordCut(start)
                    seen += data
                    point = cut.cut_point(seen)
                    if point is None:
                        self._send(sink, direction, data)
                        continue
                    self._send(sink, direction, bytes(seen[self.forwarded[direction]:point]))
                    self._trigger(fault)
                    return
        except OSError:
            pass
        self._close_both()

    def _send(self, sink: socket.socket, direction: str, data: bytes) -> None:
        if data:
            sink.sendall(data)
            self.forwarded[direction] += len(data)

    def _trigger(self, fault: Fault) -> None:
        self.triggered.set()
        if fault.kind == "stall":
            self.relay.stopping.wait()  # read nothing more until the relay stops
        elif fault.kind == "reset":
            self.proxy_side.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.proxy_side.close()  # the RST, before anything else could send a FIN on that socket
            try:
                self.server_side.shutdown(socket.SHUT_RDWR)  # wakes the other direction's pump from recv
            except OSError:
                pass
            self.server_side.close()
        else:
            self._close_both()

    def _close_both(self) -> None:
        for sock in (self.proxy_side, self.server_side):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class FaultRelay(Listener):
    """Listens on a free loopback port and relays each connection to 127.0.0.1:target_port."""

    def __init__(self, target_port: int) -> None:
        super().__init__()
        self.target_port = target_port
        self.links: list[Link] = []
        self._armed: Fault | None = None
        self._arm_lock = threading.Lock()

    @property
    def stopping(self) -> threading.Event:
        return self._stop

    def arm(self, fault: Fault) -> None:
        """The next connection (only that one) gets `fault`."""
        with self._arm_lock:
            self._armed = fault

    def handle(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            conn.close()
            return
        self._connections.append(upstream)
        link = Link(self, conn, upstream)
        with self._arm_lock:
            fault, self._armed = self._armed, None
        if fault is not None:
            link.apply(fault)
        self.links.append(link)
        self._spawn(link.pump, TO_CLIENT)
        link.pump(TO_SERVER)
