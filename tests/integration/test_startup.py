"""When tlsproxy cannot start, through the real CLI: one line on stderr naming the address (or file), the
setting and the fix, exit status 2, no traceback. Each test makes its own obstacle (a socket bound on a
free loopback port, a missing directory, a bad file) and removes it, also when the test fails."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

pytestmark = pytest.mark.integration

UPSTREAM = ["--upstream", "127.0.0.1:1", "--ssl-mode", "DISABLED"]
"""Never dialled: every case fails before a client connects."""
NOBODY = 65534


def tlsproxy(*args: str, as_nobody: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m tlsproxy ARGS`; `as_nobody`: as the user nobody, without groups or capabilities (setpriv)."""
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if as_nobody else []
    return subprocess.run([*drop, sys.executable, "-m", "tlsproxy", *args], capture_output=True, text=True,
                          timeout=timeout, cwd="/")


def skip_unless_privileges_can_drop() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run the proxy as another user")


def failure_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The one `tlsproxy: ...` line, the last on stderr (log lines of what did start may come before it)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("tlsproxy: ")] == lines[-1:], result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A free loopback port with another process's listener on it (this test's socket)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_accepting(proxy: subprocess.Popen[str], family: socket.AddressFamily, address: object) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proxy.poll() is None and time.monotonic() < deadline, "the proxy did not start"
        with socket.socket(family) as probe:
            if probe.connect_ex(address) == 0:
                return
        time.sleep(0.1)


# ---- listeners -----------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_admin_port_in_use(taken_port: int, workers: str) -> None:
    line = failure_line(tlsproxy(*UPSTREAM, "--listen", "127.0.0.1:0", "--admin-listen", f"127.0.0.1:{taken_port}",
                                 "--workers", workers),
                        f"cannot listen on 127.0.0.1:{taken_port} for the admin listener", "already in use",
                        "--admin-listen off")
    assert "--admin-listen 127.0.0.1:PORT" in line


@pytest.mark.parametrize("workers", ["1", "2"])
def test_route_port_in_use(taken_port: int, workers: str) -> None:
    """With workers the supervisor binds the port before any worker starts: reported once, by it."""
    result = tlsproxy(*UPSTREAM, "--listen", f"127.0.0.1:{taken_port}", "--admin-listen", "off", "--workers", workers)
    failure_line(result, f"cannot listen on 127.0.0.1:{taken_port} for route default (listen, --listen)",
                 "already in use", "stop that process, or choose another port")
    assert result.stderr.count("cannot listen") == 1, result.stderr
    assert "worker" not in result.stderr, result.stderr


def test_a_second_proxy_with_workers_does_not_share_the_first_ones_port() -> None:
    """SO_REUSEPORT, which the workers share a port with, would let a second tlsproxy of the same user bind
    the same port and quietly take half the clients."""
    port = free_port()
    args = [*UPSTREAM, "--listen", f"127.0.0.1:{port}", "--admin-listen", "off", "--workers", "2"]
    first = subprocess.Popen([sys.executable, "-m", "tlsproxy", *args], stderr=subprocess.PIPE, text=True)
    try:
        wait_accepting(first, socket.AF_INET, ("127.0.0.1", port))
        failure_line(tlsproxy(*args), f"cannot listen on 127.0.0.1:{port}", "already in use")
        assert first.poll() is None
    finally:
        first.terminate()
        first.communicate(timeout=30)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_privileged_port_without_privilege(workers: str) -> None:
    skip_unless_privileges_can_drop()
    if int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 306:
        pytest.skip("net.ipv4.ip_unprivileged_port_start lets any user bind port 306 here")
    failure_line(tlsproxy(*UPSTREAM, "--listen", "127.0.0.1:306", "--admin-listen", "off", "--workers", workers,
                          as_nobody=True),
                 "cannot listen on 127.0.0.1:306 for route default", "below 1024", "CAP_NET_BIND_SERVICE")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_unix_socket_in_a_missing_directory(tmp_path: Path, workers: str) -> None:
    path = tmp_path / "missing" / "mysql.sock"
    failure_line(tlsproxy(*UPSTREAM, "--listen", str(path), "--admin-listen", "off", "--workers", workers),
                 f"cannot listen on unix:{path} for route default", f"the directory {path.parent} does not exist",
                 f"mkdir -p {path.parent}")


def test_unix_socket_in_a_directory_the_user_may_not_write() -> None:
    skip_unless_privileges_can_drop()
    directory = Path("/tmp") / f"tlsproxy-test-{os.getpid()}"
    directory.mkdir(mode=0o755)
    try:
        failure_line(tlsproxy(*UPSTREAM, "--listen", str(directory / "mysql.sock"), "--admin-listen", "off",
                              as_nobody=True),
                     f"(uid {NOBODY}) may not create files in {directory}", f"make {directory} writable")
    finally:
        shutil.rmtree(directory)


def test_unix_socket_path_too_long(tmp_path: Path) -> None:
    path = tmp_path / ("s" * 120 + ".sock")
    failure_line(tlsproxy(*UPSTREAM, "--listen", str(path), "--admin-listen", "off"),
                 "Unix socket paths hold at most 107", "choose a shorter path")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_unix_socket_another_process_listens_on(tmp_path: Path, workers: str) -> None:
    """It used to be removed as stale and taken over."""
    path = tmp_path / "mysql.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen()
        failure_line(tlsproxy(*UPSTREAM, "--listen", str(path), "--admin-listen", "off", "--workers", workers),
                     f"cannot listen on unix:{path}", "another process is listening on this socket")
        assert path.is_socket()


def test_unix_socket_path_taken_by_a_file(tmp_path: Path) -> None:
    path = tmp_path / "mysql.sock"
    path.write_text("not a socket")
    failure_line(tlsproxy(*UPSTREAM, "--listen", str(path), "--admin-listen", "off"),
                 f"{path} exists and is not a socket; remove it")


def test_a_stale_unix_socket_is_replaced(tmp_path: Path) -> None:
    """A socket nobody accepts on (a proxy that was killed) is not an obstacle: the route starts."""
    path = tmp_path / "mysql.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))
    proxy = subprocess.Popen([sys.executable, "-m", "tlsproxy", *UPSTREAM, "--listen", str(path), "--admin-listen", "off"],
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_accepting(proxy, socket.AF_UNIX, str(path))
    finally:
        proxy.terminate()
        proxy.communicate(timeout=30)
    assert proxy.returncode == 0


def test_a_later_route_that_cannot_listen_closes_the_earlier_ones(tmp_path: Path, taken_port: int) -> None:
    config = tmp_path / "tlsproxy.yaml"
    config.write_text(f"""\
admin_listen: "off"
routes:
  - name: first
    listen: {tmp_path / 'first.sock'}
    upstream: 127.0.0.1:1
    ssl_mode: DISABLED
  - name: second
    listen: 127.0.0.1:{taken_port}
    upstream: 127.0.0.1:1
    ssl_mode: DISABLED
""")
    failure_line(tlsproxy("--config", str(config)), f"cannot listen on 127.0.0.1:{taken_port} for route second")
    assert not (tmp_path / "first.sock").exists()


def test_listen_host_that_does_not_resolve() -> None:
    failure_line(tlsproxy(*UPSTREAM, "--listen", "no-such-host.invalid:3306", "--allow-non-loopback",
                          "--admin-listen", "off"),
                 "cannot listen on no-such-host.invalid:3306 for route default", "does not resolve",
                 "listen on an IP address")


def test_listen_address_not_of_this_host() -> None:
    failure_line(tlsproxy(*UPSTREAM, "--listen", "192.0.2.1:3306", "--allow-non-loopback", "--admin-listen", "off"),
                 "cannot listen on 192.0.2.1:3306", "192.0.2.1 is not an address of this host")


# ---- files ---------------------------------------------------------------------------------------


def _garbage(path: Path) -> Path:
    path.write_text("garbage\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(("case", "fragments"), [
    ("config missing", ["config error at '--config': cannot read {tmp}/none.yaml: No such file or directory"]),
    ("config not YAML", ["config error at '--config':", "is not valid YAML", "at line 2, column 3"]),
    ("auth key missing", ["config error at 'auth_rsa_key': {tmp}/none.pem: cannot read the file"]),
    ("auth key malformed", ["config error at 'auth_rsa_key': {tmp}/garbage.pem: not a PEM private key"]),
    ("client cert missing", ["config error at 'routes[0].ssl_cert': cannot read {tmp}/none.pem"]),
    ("client cert malformed", ["config error at 'routes[0].ssl_cert': {tmp}/garbage.pem holds no PEM certificate"]),
    ("capath empty", ["config error at 'routes[0].ssl_capath': {tmp}/capath is empty", "openssl rehash {tmp}/capath"]),
    ("capath unhashed", ["config error at 'routes[0].ssl_capath': {tmp}/capath has no hashed names",
                         "openssl rehash {tmp}/capath"]),
])
def test_bad_files(tmp_path: Path, case: str, fragments: list[str]) -> None:
    tls = ["--upstream", "127.0.0.1:1", "--ssl-mode", "REQUIRED", "--admin-listen", "off"]
    capath = tmp_path / "capath"
    capath.mkdir()
    args = {
        "config missing": ["--config", str(tmp_path / "none.yaml")],
        "config not YAML": ["--config", str(tmp_path / "bad.yaml")],
        "auth key missing": [*UPSTREAM, "--auth-rsa-key", str(tmp_path / "none.pem")],
        "auth key malformed": [*UPSTREAM, "--auth-rsa-key", str(_garbage(tmp_path / "garbage.pem"))],
        "client cert missing": [*tls, "--ssl-cert", str(tmp_path / "none.pem"), "--ssl-key", str(tmp_path / "k.pem")],
        "client cert malformed": [*tls, "--ssl-cert", str(_garbage(tmp_path / "garbage.pem")),
                                  "--ssl-key", str(_garbage(tmp_path / "key.pem"))],
        "capath empty": ["--upstream", "127.0.0.1:1", "--ssl-capath", str(capath)],
        "capath unhashed": ["--upstream", "127.0.0.1:1", "--ssl-capath", str(capath)],
    }[case]
    if case == "config not YAML":
        (tmp_path / "bad.yaml").write_text("routes: [\n  - a: b\n")
    if case == "capath unhashed":
        _garbage(capath / "ca.pem")
    failure_line(tlsproxy(*args, "--listen", "127.0.0.1:0"), *(f.format(tmp=tmp_path) for f in fragments))
