"""server.listen_failure and claim_socket_path without the CLI: each cause's line, and which Unix socket
path may be taken over (tests/integration/test_startup.py runs the real CLI into each of them)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Iterator

import pytest

from tlsproxy.config import StartupError, TcpAddress, UnixAddress
from tlsproxy.server import claim_socket_path, listen_failure

ROUTE = {"who": "route orders", "setting": "listen, --listen"}


@pytest.mark.parametrize(("exc", "address", "line"), [
    (OSError(errno.EADDRINUSE, "in use"), TcpAddress("127.0.0.1", 3306),
     "cannot listen on 127.0.0.1:3306 for route orders (listen, --listen): the address is already in use by another "
     "process (another tlsproxy?); stop that process, or choose another port (listen, --listen)"),
    (PermissionError(errno.EACCES, "denied"), TcpAddress("127.0.0.1", 2000),
     "cannot listen on 127.0.0.1:2000 for route orders (listen, --listen): denied; choose another port (listen, --listen)"),
    (PermissionError(errno.EACCES, "denied"), TcpAddress("127.0.0.1", 80), "port 80 is below 1024"),
    (OSError(errno.EADDRNOTAVAIL, "x"), TcpAddress("192.0.2.1", 3306), "192.0.2.1 is not an address of this host"),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), TcpAddress("nowhere", 3306),
     "the host name 'nowhere' does not resolve (Name or service not known); listen on an IP address"),
    (FileNotFoundError(errno.ENOENT, "x"), UnixAddress(Path("/run/x/mysql.sock")),
     "cannot listen on unix:/run/x/mysql.sock for route orders (listen, --listen): the directory /run/x does not exist; "
     "create it (mkdir -p /run/x, writable by the proxy's user) or choose another path (listen, --listen)"),
    (NotADirectoryError(errno.ENOTDIR, "x"), UnixAddress(Path("/etc/hosts/mysql.sock")), "/etc/hosts is not a directory"),
    (OSError(errno.EROFS, "x"), UnixAddress(Path("/usr/mysql.sock")), "/usr is on a read-only file system"),
    (OSError(errno.ENOBUFS, "No buffer space available"), UnixAddress(Path("/run/mysql.sock")),
     "No buffer space available; choose another path (listen, --listen)"),
])
def test_each_cause_has_its_line(exc: OSError, address: TcpAddress | UnixAddress, line: str) -> None:
    error = listen_failure(exc, address, **ROUTE)
    assert isinstance(error, StartupError)
    assert line in str(error)
    assert str(error).startswith(f"cannot listen on {address} for route orders (listen, --listen): ")
    assert "\n" not in str(error)


def test_the_admin_listener_gives_its_own_fix() -> None:
    error = listen_failure(OSError(errno.EADDRINUSE, "in use"), TcpAddress("127.0.0.1", 9090), who="the admin listener",
                           setting="admin_listen, --admin-listen", elsewhere="turn it off (--admin-listen off)")
    assert str(error).endswith("stop that process, or turn it off (--admin-listen off)")
    assert error.key == "admin_listen, --admin-listen"


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "mysql.sock"


@pytest.fixture
def listening(socket_path: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(socket_path))
        sock.listen(0)
        yield sock


def test_a_stale_socket_is_removed(socket_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as gone:
        gone.bind(str(socket_path))
    claim_socket_path(socket_path)
    assert not socket_path.exists()


def test_a_live_socket_is_kept(socket_path: Path, listening: socket.socket) -> None:
    with pytest.raises(OSError) as error:
        claim_socket_path(socket_path)
    assert error.value.errno == errno.EADDRINUSE
    assert socket_path.is_socket()


def test_a_live_socket_with_a_full_backlog_is_kept(socket_path: Path, listening: socket.socket) -> None:
    waiting = []
    try:
        for _ in range(8):  # fill the backlog of 0 (the kernel allows one more)
            client = socket.socket(socket.AF_UNIX)
            client.setblocking(False)
            waiting.append(client)
            try:
                client.connect(str(socket_path))
            except BlockingIOError:
                break
        with pytest.raises(OSError) as error:
            claim_socket_path(socket_path)
        assert error.value.errno == errno.EADDRINUSE
        assert socket_path.is_socket()
    finally:
        for client in waiting:
            client.close()


def test_a_file_is_left_for_bind_to_refuse(socket_path: Path) -> None:
    socket_path.write_text("mine")
    claim_socket_path(socket_path)
    assert socket_path.read_text() == "mine"


def test_a_path_over_107_bytes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OSError) as error:
        claim_socket_path(tmp_path / ("s" * 120))
    assert error.value.errno == errno.ENAMETOOLONG
