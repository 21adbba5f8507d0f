"""acceptor.py on both event loops, in this process, with its descriptors really used up (a soft limit a
little above the highest open descriptor, the rest taken by /dev/null): a waiting client gets ERR 1040 from
the reserve descriptor, the accept loop does not spin when even the reserve is gone, the admin listener
answers from the reserve, and clients are served again once descriptors are free."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest
import uvloop

from tlsproxy import descriptors
from tlsproxy.acceptor import Acceptor, refusal_packet, tcp_listeners, unix_listener
from tlsproxy.mysql.messages import parse_err


def run(event_loop_name: str, scenario: Callable[[], Awaitable[Any]]) -> Any:
    if event_loop_name == "uvloop":
        return uvloop.run(scenario())
    return asyncio.run(scenario())


@contextmanager
def descriptors_used_up() -> Iterator[list[int]]:
    """Every descriptor this process may still open, taken; given back (and the limit restored) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    hog: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 16, hard))
    try:
        while True:
            try:
                hog.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                break
        yield hog
    finally:
        for fd in hog:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        descriptors.reserve.restore()
        descriptors.admin_reserve.restore()


@pytest.fixture(autouse=True)
def fresh_shortage(monkeypatch: pytest.MonkeyPatch) -> None:
    """No shortage noted here leaks into the other tests' readiness."""
    monkeypatch.setattr(descriptors, "shortage", descriptors.Shortage())


class CountingSocket(socket.socket):
    accepts = 0

    def accept(self) -> tuple[socket.socket, Any]:
        self.accepts += 1
        return super().accept()


def listening() -> CountingSocket:
    sock = CountingSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


class Greeter(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(b"served")  # type: ignore[attr-defined]
        transport.close()


def client_socket() -> socket.socket:
    """Made before the shortage; connecting it later needs no new descriptor."""
    client = socket.socket()
    client.setblocking(False)
    return client


def start_connect(client: socket.socket, address: tuple[str, int]) -> None:
    """Connect without yielding to the loop (so that the acceptor sees the client only afterwards)."""
    assert client.connect_ex(address) in (0, errno.EINPROGRESS)


async def read_all(client: socket.socket, timeout: float = 2.0) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(timeout):
        while chunk := await loop.sock_recv(client, 4096):
            data += chunk
    return data


@asynccontextmanager
async def serving(on_refused: Callable[[int], None] | None, clients: int
                  ) -> AsyncIterator[tuple[CountingSocket, list[socket.socket]]]:
    """An Acceptor on a fresh listener, and `clients` client sockets; all closed at the end."""
    listener = listening()
    acceptor = Acceptor([listener], Greeter, on_refused=on_refused,
                        reserve=descriptors.reserve if on_refused else descriptors.admin_reserve)
    sockets = [client_socket() for _ in range(clients)]
    try:
        yield listener, sockets
    finally:
        for client in sockets:
            client.close()
        acceptor.close()
        await acceptor.wait_closed()


def test_a_waiting_client_gets_err_1040_then_service_comes_back(event_loop_name: str) -> None:
    async def scenario() -> None:
        refused: list[int] = []
        async with serving(refused.append, 3) as (listener, (first, second, third)):
            with descriptors_used_up():
                start_connect(first, listener.getsockname())
                start_connect(second, listener.getsockname())
                await asyncio.sleep(0.05)  # the acceptor's turn, with nothing left
                packet = refusal_packet()
                assert await read_all(first) == packet and await read_all(second) == packet
                err = parse_err(packet[4:])
                assert err.error_code == 1040 and err.sql_state is None
                assert err.error_message == f"tlsproxy: out of file descriptors (limit {descriptors.current_limit()})"
                assert packet[3] == 0  # sequence id 0
                assert sum(refused) == 2
                assert (descriptors.pressure() or "").startswith("out of file descriptors")
            start_connect(third, listener.getsockname())
            assert await read_all(third) == b"served"
            assert descriptors.reserve.held

    run(event_loop_name, scenario)


def test_without_even_the_reserve_accepting_pauses_instead_of_spinning(event_loop_name: str) -> None:
    async def scenario() -> None:
        refused: list[int] = []
        async with serving(refused.append, 1) as (listener, (client,)):
            with descriptors_used_up() as hog:
                descriptors.reserve.release()
                hog.append(os.open("/dev/null", os.O_RDONLY))  # the reserve's descriptor, taken too
                start_connect(client, listener.getsockname())
                await asyncio.sleep(0.5)
                assert 1 <= listener.accepts <= 10, listener.accepts  # a few tries per second, not a spin
                assert refused == []
            assert await read_all(client) == b"served"  # waited in the queue, served once freed

    run(event_loop_name, scenario)


class Holder(asyncio.Protocol):
    """An admin request that takes its time: answered, the connection kept."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(b"served")  # type: ignore[attr-defined]


def test_the_admin_listener_answers_from_its_own_reserve(event_loop_name: str) -> None:
    """Out of descriptors, an admin request is served on the admin's reserve; while it holds it, the
    clients' listener still refuses with ERR 1040 from the clients' reserve."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        refused: list[int] = []
        admin_listener = listening()
        admin = Acceptor([admin_listener], Holder, on_refused=None, reserve=descriptors.admin_reserve)
        async with serving(refused.append, 1) as (listener, (client,)):
            probe = client_socket()
            try:
                with descriptors_used_up():
                    start_connect(probe, admin_listener.getsockname())
                    async with asyncio.timeout(2):
                        assert await loop.sock_recv(probe, 6) == b"served"
                    assert not descriptors.admin_reserve.held
                    start_connect(client, listener.getsockname())
                    assert await read_all(client) == refusal_packet() and refused == [1]
            finally:
                probe.close()
                admin.close()
                await admin.wait_closed()

    run(event_loop_name, scenario)


def test_listening_sockets_are_made_as_the_event_loops_make_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        (sock,) = await tcp_listeners("127.0.0.1", 0, reuse_port=False, backlog=8)
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            with pytest.raises(OSError, match="error while attempting to bind on address") as raised:
                await tcp_listeners("127.0.0.1", sock.getsockname()[1], reuse_port=False, backlog=8)
            assert raised.value.errno == errno.EADDRINUSE
        finally:
            sock.close()
        (first,) = await tcp_listeners("127.0.0.1", 0, reuse_port=True, backlog=8)
        try:  # another worker's listener on the same port
            (second,) = await tcp_listeners("127.0.0.1", first.getsockname()[1], reuse_port=True, backlog=8)
            second.close()
        finally:
            first.close()

    asyncio.run(scenario())
    path = tmp_path / "s.sock"
    stale = unix_listener(path, backlog=8)
    stale.close()  # the file stays, as after a crash
    fresh = unix_listener(path, backlog=8)
    fresh.close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="already in use"):
        unix_listener(path, backlog=8)


class NagleProbe(asyncio.Protocol):
    """Reports whether its transport's TCP socket has Nagle's delay off (TCP_NODELAY)."""

    def __init__(self, found: asyncio.Future[bool]) -> None:
        self.found = found

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        self.found.set_result(bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
        transport.close()


def test_both_legs_get_tcp_nodelay_from_the_event_loop(event_loop_name: str) -> None:
    """Both event loops set TCP_NODELAY on the TCP transports the proxy has them make: the clients' (accepted
    on `tcp_listeners`' sockets, then `connect_accepted_socket`) and the upstreams' (`create_connection`).
    asyncio's only for a socket whose proto is IPPROTO_TCP, as getaddrinfo gives `tcp_listeners`; uvloop's
    for every TCP transport. So the proxy does not set it again."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[bool] = loop.create_future()
        connected: asyncio.Future[bool] = loop.create_future()
        listeners = await tcp_listeners("127.0.0.1", 0, reuse_port=False, backlog=16)
        acceptor = Acceptor(listeners, lambda: NagleProbe(accepted), on_refused=lambda count: None)
        try:
            await loop.create_connection(lambda: NagleProbe(connected), *listeners[0].getsockname())
            assert await asyncio.wait_for(accepted, 2.0) and await asyncio.wait_for(connected, 2.0)
        finally:
            acceptor.close()
            await acceptor.wait_closed()

    run(event_loop_name, scenario)
