"""Loopback helpers that sit on the wire: a recording TCP relay and scripted fake upstreams.

Used to prove what did or did not cross the upstream leg in plaintext, and to play servers that no
real MariaDB would (silent, no TLS, injecting bytes after the SSLRequest).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable


class Listener:
    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connections: list[socket.socket] = []

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def start(self):  # type: ignore[no-untyped-def]
        self._spawn(self._accept_loop)
        return self

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self._connections.append(conn)
            self._spawn(self.handle, conn)

    def handle(self, conn: socket.socket) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        for conn in self._connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv(); close() alone does not
            except OSError:
                pass
            try:
                conn.close()
            except OSError:
                pass
        for thread in self._threads:
            thread.join(5)

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


Prelude = Callable[["RecordingRelay", socket.socket, socket.socket], None]


class RecordingRelay(Listener):
    """Forwards to 127.0.0.1:target_port and records every byte each way (`to_server`, `to_client`).

    `prelude(relay, client, server)`, if given, runs first on each connection and plays a man in the
    middle (see `strip_tls_from_greeting`, `inject_after_ssl_request`); the relay then forwards as usual.
    """

    def __init__(self, target_port: int, listen_port: int = 0, *, delay_to_client: float = 0.0,
                 prelude: Prelude | None = None) -> None:
        super().__init__(listen_port)
        self.target_port = target_port
        self.delay_to_client = delay_to_client  # seconds added before each server-to-client chunk
        self.prelude = prelude
        self.to_server = bytearray()
        self.to_client = bytearray()
        self._lock = threading.Lock()

    def handle(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            conn.close()
            return
        self._connections.append(upstream)
        if self.prelude is not None:
            try:
                self.prelude(self, conn, upstream)
            except OSError:
                for sock in (conn, upstream):
                    sock.close()
                return
        self._spawn(self._pump, upstream, conn, self.to_client, self.delay_to_client)
        self._pump(conn, upstream, self.to_server)

    def forward_frame(self, source: socket.socket, sink: socket.socket, *, to_client: bool,
                      edit: Callable[[bytes], bytes] = lambda frame: frame) -> bytes:
        """Read one whole MySQL frame from `source`, pass `edit(frame)` to `sink`, record it; return it."""
        frame = read_frame(source)
        frame = edit(frame)
        with self._lock:
            (self.to_client if to_client else self.to_server).extend(frame)
        sink.sendall(frame)
        return frame

    def _pump(self, source: socket.socket, sink: socket.socket, record: bytearray, delay: float = 0.0) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if delay:
                    time.sleep(delay)
                with self._lock:
                    record += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class ScriptedUpstream(Listener):
    """A fake upstream: `script(conn)` plays the server; `received` keeps what the proxy sent."""

    def __init__(self, script: Callable[[socket.socket, bytearray], None]) -> None:
        super().__init__()
        self.script = script
        self.received = bytearray()

    def handle(self, conn: socket.socket) -> None:
        try:
            self.script(conn, self.received)
        except OSError:
            pass


def read_available(conn: socket.socket, into: bytearray, timeout: float = 1.0) -> None:
    """Read what arrives until the peer closes or `timeout` passes without data."""
    conn.settimeout(timeout)
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            into += data
    except (TimeoutError, socket.timeout, OSError):
        return


def capture_greeting(port: int) -> bytes:
    """The first frame a real server sends (a whole greeting frame)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:3], "little"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data[: 4 + int.from_bytes(data[:3], "little")]


def read_frame(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """One whole MySQL frame (header and payload) from `sock`; OSError if the peer closes first."""
    sock.settimeout(timeout)
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:3], "little"):
        chunk = sock.recv(4 + int.from_bytes(data[:3], "little") - len(data) if len(data) >= 4 else 4 - len(data))
        if not chunk:
            raise ConnectionResetError("peer closed inside a frame")
        data += chunk
    sock.settimeout(None)
    return data


CLIENT_SSL = 0x0800  # capability flag, in the greeting's lower two capability bytes


def without_client_ssl(greeting_frame: bytes) -> bytes:
    """The greeting frame with CLIENT_SSL cleared, edited byte by byte (protocol version, NUL-terminated
    server version, thread id 4, auth data 8, filler 1, then the lower capability flags, little-endian)."""
    payload = bytearray(greeting_frame[4:])
    assert payload[0] == 0x0A, "not a protocol-10 greeting"
    flags_at = payload.index(0, 1) + 1 + 4 + 8 + 1
    flags = int.from_bytes(payload[flags_at:flags_at + 2], "little")
    assert flags & CLIENT_SSL, "the server does not offer TLS to begin with"
    payload[flags_at:flags_at + 2] = (flags & ~CLIENT_SSL).to_bytes(2, "little")
    return greeting_frame[:4] + bytes(payload)


def strip_tls_from_greeting(relay: RecordingRelay, client: socket.socket, server: socket.socket) -> None:
    """A downgrade attack: forward the real server's greeting with CLIENT_SSL removed."""
    relay.forward_frame(server, client, to_client=True, edit=without_client_ssl)


def inject_after_ssl_request(payload: bytes) -> Prelude:
    """An injection attack: forward the greeting and the client's SSLRequest, then send `payload` to the
    client in plaintext before the server's first TLS byte, as if the server had said it."""
    def prelude(relay: RecordingRelay, client: socket.socket, server: socket.socket) -> None:
        relay.forward_frame(server, client, to_client=True)
        relay.forward_frame(client, server, to_client=False)  # the SSLRequest
        with relay._lock:
            relay.to_client.extend(payload)
        client.sendall(payload)

    return prelude
