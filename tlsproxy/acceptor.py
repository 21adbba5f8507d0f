"""The listeners' accept loop, owned by the proxy rather than the event loop, for one reason: running out
of file descriptors.

When accept() fails with EMFILE/ENFILE the two event loops do different wrong things for a proxy:

* asyncio's selector loop logs "socket.accept() out of system resource", stops accepting for
  ACCEPT_RETRY_DELAY (1 s) and tries again: the waiting clients hang, a second at a time, for as long
  as the shortage lasts.
* uvloop (libuv's `uv__emfile_trick`) closes its reserved descriptor, accepts every waiting
  connection and closes it at once, then takes the reserve back: the clients see a bare close
  ("2013 Lost connection to server during query"); without its reserve, libuv reports the error
  and uvloop closes the whole listener.

So each listening socket is non-blocking and watched with `loop.add_reader`; the callback accepts, and
`loop.connect_accepted_socket` makes the client's transport (what both loops' servers do per
connection anyway: asyncio in a task per connection, as here). On EMFILE/ENFILE the acceptor frees the
process's reserved descriptor (descriptors.reserve), accepts each waiting client, writes it ERR 1040
"out of file descriptors (limit N)" (a pre-4.1 ERR at sequence 0, as for max_connections), closes it
and takes the reserve back: no client hangs, none is left without a reason, and the accept loop does
not spin (the listening socket is empty afterwards). If the reserve cannot be taken back, accepting
pauses for ACCEPT_PAUSE_SECONDS at a time until it can.

The admin listener uses the same loop, but a health probe or a scrape must get its answer, above all
while descriptors are short: out of descriptors, it serves one waiting request on a reserve of its own
(descriptors.admin_reserve, so that a slow request cannot stop the clients' refusals) instead of
refusing it; the reserve is taken back by the next accept once descriptors are free again.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import stat
from pathlib import Path
from typing import Callable

from tlsproxy import descriptors
from tlsproxy.errors import OutOfDescriptorsError
from tlsproxy.mysql.codec import encode_frame
from tlsproxy.mysql.messages import ErrPacket

log = logging.getLogger("tlsproxy.server")

ACCEPT_BATCH = 128
"""Connections accepted per readiness callback, so that a flood cannot starve the connections open."""
ACCEPT_PAUSE_SECONDS = 0.1
"""How long accepting pauses when no client can even be refused (the reserve is gone too), or on
ENOBUFS/ENOMEM."""
_RESOURCE_ERRNOS = frozenset({errno.ENOBUFS, errno.ENOMEM})

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


def refusal_packet() -> bytes:
    """ERR 1040 at sequence id 0, pre-4.1 (the client has not said what it speaks yet)."""
    error = OutOfDescriptorsError(descriptors.exhausted_message())
    return encode_frame(0, ErrPacket(error.errno, error.sqlstate, error.client_message).encode_payload(
        protocol_41=False))


class Acceptor:
    """Serves the listening sockets given (already bound and listening): the proxy's stand-in for the
    event loop's `Server`, with the parts of its interface the listeners use."""

    def __init__(self, sockets: list[socket.socket], protocol_factory: ProtocolFactory, *,
                 on_refused: Callable[[int], None] | None, reserve: descriptors.Reserve = descriptors.reserve) -> None:
        """`on_refused(n)`: n clients were refused for want of a descriptor. None: serve one on the
        reserve's descriptor instead (the admin listener, with its own `reserve`)."""
        self._loop = asyncio.get_running_loop()
        self._sockets = sockets
        self._factory = protocol_factory
        self._on_refused = on_refused
        self._reserve = reserve
        self._tasks: set[asyncio.Task[None]] = set()
        self._paused: asyncio.TimerHandle | None = None
        self._serving = False
        self._reserve.restore()
        for sock in sockets:
            sock.setblocking(False)
        self._watch()

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._sockets)

    def is_serving(self) -> bool:
        return self._serving

    def _watch(self) -> None:
        self._serving = True
        for sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _pause(self) -> None:
        if self._paused is not None or not self._serving:
            return
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
        self._paused = self._loop.call_later(ACCEPT_PAUSE_SECONDS, self._resume)

    def _resume(self) -> None:
        self._paused = None
        self._reserve.restore()
        self._watch()

    def close(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        elif self._serving:
            for sock in self._sockets:
                self._loop.remove_reader(sock.fileno())
        self._serving = False
        for sock in self._sockets:
            sock.close()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- accepting ---------------------------------------------------------------------------------

    def _accept(self, sock: socket.socket) -> None:
        if not self._reserve.held:  # lent to an admin request, or lost to a shortage
            self._reserve.restore()
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in descriptors.EXHAUSTION_ERRNOS:
                    if self._on_refused is None:
                        self._serve_from_reserve(sock)
                    else:
                        self._refuse_waiting(sock, self._on_refused)
                elif exc.errno in _RESOURCE_ERRNOS:
                    log.warning("accept on %s: %s; pausing %gs", sock.getsockname(), exc, ACCEPT_PAUSE_SECONDS)
                    self._pause()
                else:  # the socket was closed under us (close() at shutdown): nothing to accept
                    log.debug("accept on fd %d: %s", sock.fileno(), exc)
                return
            task = self._loop.create_task(self._connect(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except Exception as exc:  # the client reset before its transport existed, or the loop refused it
            log.debug("a client's transport could not be set up: %s", exc)
            conn.close()

    def _serve_from_reserve(self, sock: socket.socket) -> None:
        """Out of descriptors on the admin listener: answer one request on the reserve's descriptor."""
        descriptors.note_exhausted()
        if not self._reserve.release():
            self._pause()
            return
        try:
            conn, _ = sock.accept()
        except OSError:
            self._reserve.restore()
            return
        task = self._loop.create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refuse_waiting(self, sock: socket.socket, on_refused: Callable[[int], None]) -> None:
        """Out of descriptors: tell each waiting client why, from the reserve descriptor. (Linux takes
        the descriptor before it looks at the queue: an accept right after the last free descriptor
        went fails with EMFILE even when nobody waits. Then the queue is simply empty, and the next
        client wakes the listener again.)"""
        descriptors.note_exhausted()
        refused, stuck = 0, False
        if self._reserve.release():
            packet = refusal_packet()
            try:
                while refused < ACCEPT_BATCH:
                    try:
                        conn, _ = sock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except ConnectionAbortedError:
                        continue
                    except OSError:  # even the reserve's descriptor is gone (another thread took it)
                        stuck = True
                        break
                    try:
                        conn.send(packet)  # a fresh socket's buffer takes these few bytes whole
                    except OSError:
                        pass
                    conn.close()
                    refused += 1
            finally:
                self._reserve.restore()
        if refused:
            on_refused(refused)
        if stuck or not self._reserve.held:
            self._pause()  # nothing to refuse with: wait for descriptors instead of spinning


async def tcp_listeners(host: str, port: int, *, reuse_port: bool, backlog: int) -> list[socket.socket]:
    """Bound, listening sockets for every address of `host`, as the event loops' create_server makes
    them (SO_REUSEADDR; IPV6_V6ONLY; SO_REUSEPORT for a worker sharing the port)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as err:
                raise OSError(err.errno, f"error while attempting to bind on address {address!r}: "
                                         f"{(err.strerror or str(err)).lower()}") from None
            sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def unix_listener(path: Path, *, backlog: int) -> socket.socket:
    """A listening Unix socket at `path`; a stale socket file there is replaced (as the event loops'
    create_unix_server do), any other file is an error."""
    try:
        if stat.S_ISSOCK(path.stat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(errno.EADDRINUSE, f"Address {str(path)!r} is already in use") from None
        raise
    return sock
