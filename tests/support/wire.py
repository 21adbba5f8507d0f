"""Loopback helpers that sit on the wire: a recording TCP relay and scripted fake upstreams.

Used to prove what did or did not cross the upstream leg in plaintext, and to play servers that no
real MariaDB would (silent, no TLS, injecting bytes after the SSLRequest).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable


class _Listener:
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


class RecordingRelay(_Listener):
    """Forwards to 127.0.0.1:target_port and records every byte each way (`to_server`, `to_client`)."""

    def __init__(self, target_port: int, listen_port: int = 0, *, delay_to_client: float = 0.0) -> None:
        super().__init__(listen_port)
        self.target_port = target_port
        self.delay_to_client = delay_to_client  # seconds added before each server-to-client chunk
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
        self._spawn(self._pump, upstream, conn, self.to_client, self.delay_to_client)
        self._pump(conn, upstream, self.to_server)

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


class ScriptedUpstream(_Listener):
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
