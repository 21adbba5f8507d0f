"""The benchmark's own world: a CA, a MariaDB with TLS, tlsproxy (the real CLI, one process with a
route per scenario), a socat relay, and the files sysbench needs. Everything on loopback, stopped at
the end."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

import tlsproxy
from bench.model import Scenario
from bench.stopping import uninterrupted
from tlsproxy.demo import pki
from tlsproxy.demo.localdb import start_mariadb
from tlsproxy.demo.mariadb import MariaDBServer

log = logging.getLogger(__name__)

BENCH_USER = "bench"
BENCH_PASSWORD = "bench-password"
BENCH_DATABASE = "sbtest"


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports. The probes stay bound until all are picked: one at a time,
    the kernel hands out the same port twice now and then (18 of 5,000 sets of 9 here), and a config
    with two routes on one port is refused."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def raise_open_file_limit(wanted: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


FULL_HANDSHAKE_ROUTE = "proxy_tls_tcp_full"
"""A TLS route with session resumption off: every upstream handshake is a full one (bench/proxy_metrics.py)."""
PREWARM_ROUTE, PREWARM_SIZE = "proxy_tls_tcp_prewarm", 8
POOL_ROUTE, POOL_SIZE = "proxy_tls_tcp_pool", 8
"""A route with `upstream_pool: 8`: a client that quits leaves its authenticated upstream for the next one."""
HANDSHAKE_ROUTES = {
    # route: (TLS version, session resumption) -- bench/proxy_metrics.py's full vs resumed handshake CPU
    FULL_HANDSHAKE_ROUTE: ("TLSv1.3", False),
    "proxy_tls13_resumed": ("TLSv1.3", True),
    "proxy_tls12_full": ("TLSv1.2", False),
    "proxy_tls12_resumed": ("TLSv1.2", True),
}


@dataclass
class Endpoint:
    host: str | None = None
    port: int | None = None
    socket: Path | None = None
    user: str = BENCH_USER
    password: str = field(default=BENCH_PASSWORD, repr=False)
    database: str = BENCH_DATABASE

    def mysql_args(self) -> dict[str, str | int]:
        if self.socket is not None:
            return {"unix_socket": str(self.socket)}
        return {"host": self.host or "127.0.0.1", "port": self.port or 3306}


@dataclass
class BenchEnv:
    workdir: Path
    key_type: pki.KeyType = "rsa2048"
    event_loop: str = "uvloop"
    workers: int = 1
    """tlsproxy's `workers` (1: one process; the CPU meter sums a process and its children)."""
    server: MariaDBServer | None = None
    ca: pki.CertificateAuthority | None = None
    proxy_process: subprocess.Popen[bytes] | None = None
    socat_process: subprocess.Popen[bytes] | None = None
    socat_unix_process: subprocess.Popen[bytes] | None = None
    """socat with a Unix-socket client leg: what a C relay's hop costs on the leg tlsproxy's Unix routes use."""
    ports: dict[str, int] = field(default_factory=dict)
    sockets: dict[str, Path] = field(default_factory=dict)
    route_max_connections: int = 20000
    pool_size: int = POOL_SIZE
    """`upstream_pool` of the POOL_ROUTE (bench soak --upstream-pool N)."""
    bulk_source = "seq"  # bench/lua/bulk.lua's row source: MariaDB's sequence tables

    # ---- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def create(cls, *, key_type: pki.KeyType = "rsa2048", event_loop: str = "uvloop",
               max_connections: int = 6000, workers: int = 1, pool_size: int = POOL_SIZE) -> "BenchEnv":
        raise_open_file_limit()
        env = cls(Path(tempfile.mkdtemp(prefix="tlsp-bench-")), key_type=key_type, event_loop=event_loop,
                  workers=workers, pool_size=pool_size)
        try:
            env._start(max_connections)
        except BaseException:
            env.stop()
            raise
        return env

    def _start(self, max_connections: int) -> None:
        self.ca = pki.CertificateAuthority.create("tlsproxy bench CA")
        self.ca.write(self.ca_path)
        self.write_server_certificate(self.key_type)
        # sysbench (1.0.20) --mysql-ssl=on reads these fixed names from its working directory
        self.ca.write(self.workdir / "cacert.pem")
        self.ca.issue_client("sysbench").write(self.workdir / "client-cert.pem", self.workdir / "client-key.pem")
        self.server = start_mariadb(
            self.workdir / "mariadb", ssl_ca=self.ca_path, ssl_cert=self.server_cert_path,
            ssl_key=self.server_key_path,
            extra_options={"max_connections": str(max_connections), "innodb_buffer_pool_size": "256M",
                           "thread_cache_size": "64", "max_connect_errors": "1000000000",
                           "open_files_limit": "65535"},
        )
        self.server.sql(f"CREATE DATABASE {BENCH_DATABASE}")
        self.server.sql(f"CREATE USER '{BENCH_USER}'@'%' IDENTIFIED BY '{BENCH_PASSWORD}'")
        self.server.sql(f"GRANT ALL ON *.* TO '{BENCH_USER}'@'%'")
        self.start_proxy()
        self.start_socat()

    @property
    def ca_path(self) -> Path:
        return self.workdir / "ca.pem"

    @property
    def server_cert_path(self) -> Path:
        return self.workdir / "server-cert.pem"

    @property
    def server_key_path(self) -> Path:
        return self.workdir / "server-key.pem"

    def write_server_certificate(self, key_type: pki.KeyType) -> None:
        assert self.ca is not None
        self.ca.issue_server(("localhost",), ("127.0.0.1",), key_type=key_type).write(
            self.server_cert_path, self.server_key_path)
        self.key_type = key_type

    def use_server_key(self, key_type: pki.KeyType) -> None:
        """Restart MariaDB with a server certificate of another key type (the TLS matrix)."""
        assert self.server is not None
        if key_type == self.key_type:
            return
        self.write_server_certificate(key_type)
        self.server.restart(ssl_cert=self.server_cert_path, ssl_key=self.server_key_path)

    def proxy_routes(self) -> dict[str, tuple[str, str]]:
        """The proxy's routes: name -> (listen, ssl_mode)."""
        names = ("proxy_tls_tcp", "proxy_disabled_tcp", PREWARM_ROUTE, POOL_ROUTE, *HANDSHAKE_ROUTES, "admin")
        self.ports.update(zip(names, free_ports(len(names))))
        self.sockets["proxy_tls_unix"] = self.workdir / "tls.sock"
        self.sockets["proxy_disabled_unix"] = self.workdir / "relay.sock"
        return {
            "proxy_tls_tcp": (f"127.0.0.1:{self.ports['proxy_tls_tcp']}", "VERIFY_IDENTITY"),
            "proxy_tls_unix": (str(self.sockets["proxy_tls_unix"]), "VERIFY_IDENTITY"),
            "proxy_disabled_tcp": (f"127.0.0.1:{self.ports['proxy_disabled_tcp']}", "DISABLED"),
            "proxy_disabled_unix": (str(self.sockets["proxy_disabled_unix"]), "DISABLED"),
            **{name: (f"127.0.0.1:{self.ports[name]}", "VERIFY_IDENTITY") for name in HANDSHAKE_ROUTES},
            PREWARM_ROUTE: (f"127.0.0.1:{self.ports[PREWARM_ROUTE]}", "VERIFY_IDENTITY"),
            POOL_ROUTE: (f"127.0.0.1:{self.ports[POOL_ROUTE]}", "VERIFY_IDENTITY"),
        }

    def upstream(self) -> str:
        assert self.server is not None
        return f"localhost:{self.server.port}"

    def upstream_tls_lines(self) -> list[str]:
        """The routes' upstream TLS settings (YAML lines, without indentation)."""
        return [f"ssl_ca: {self.ca_path}"]

    def start_proxy(self, extra_route_settings: str = "") -> None:
        """One tlsproxy process (the real CLI), one route per proxied scenario."""
        self.stop_proxy()
        routes = self.proxy_routes()
        upstream = self.upstream()
        lines = [f"event_loop: {self.event_loop}", "log_level: WARNING", f"admin_listen: 127.0.0.1:{self.ports['admin']}",
                 "shutdown_grace: 0", f"workers: {self.workers}", "routes:"]
        for name, (listen, mode) in routes.items():
            lines += [f"  - name: {name}", f"    listen: {listen}", f"    upstream: {upstream}",
                      f"    ssl_mode: {mode}", *(f"    {line}" for line in self.upstream_tls_lines()),
                      f"    max_connections: {self.route_max_connections}",
                      "    handshake_timeout: 60"]
            if name == PREWARM_ROUTE:
                lines.append(f"    prewarm: {PREWARM_SIZE}")
            if name == POOL_ROUTE:
                lines.append(f"    upstream_pool: {self.pool_size}")
            if name in HANDSHAKE_ROUTES:
                version, resumption = HANDSHAKE_ROUTES[name]
                lines += [f"    tls_version: {version}", f"    tls_session_resumption: {str(resumption).lower()}"]
            lines += [f"    {line}" for line in extra_route_settings.splitlines() if line.strip()]
        config = self.workdir / "tlsproxy.yaml"
        config.write_text("\n".join(lines) + "\n")
        log_file = open(self.workdir / "tlsproxy.log", "ab")  # noqa: SIM115 - closed with the process
        self.proxy_process = subprocess.Popen([sys.executable, "-m", "tlsproxy", "--config", str(config)],
                                              stdout=log_file, stderr=log_file, start_new_session=True)
        log_file.close()
        tcp = [name for name in routes if name in self.ports]
        self.wait_listening([("127.0.0.1", self.ports[name]) for name in (*tcp, "admin")],
                             [self.sockets[name] for name in routes if name in self.sockets],
                             self.proxy_process, "tlsproxy")

    def start_socat(self) -> None:
        assert self.server is not None
        socat = shutil.which("socat")
        if socat is None:
            raise RuntimeError("socat not found: apt-get install socat (scripts/setup.sh installs it)")
        self.ports["socat_client_tls"], = free_ports(1)
        self.socat_process = subprocess.Popen(
            [socat, f"TCP-LISTEN:{self.ports['socat_client_tls']},bind=127.0.0.1,reuseaddr,fork,nodelay,backlog=1024",
             f"TCP:127.0.0.1:{self.server.port},nodelay"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.wait_listening([("127.0.0.1", self.ports["socat_client_tls"])], [], self.socat_process, "socat")
        # The client does its TLS through the Unix socket (MariaDB Connector/C does TLS on any transport).
        self.sockets["socat_client_tls_unix"] = self.workdir / "socat.sock"
        self.socat_unix_process = subprocess.Popen(
            [socat, f"UNIX-LISTEN:{self.sockets['socat_client_tls_unix']},fork,backlog=1024",
             f"TCP:127.0.0.1:{self.server.port},nodelay"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.wait_listening([], [self.sockets["socat_client_tls_unix"]], self.socat_unix_process, "socat")

    def wait_listening(self, tcp: list[tuple[str, int]], unix: list[Path], process: subprocess.Popen[bytes],
                        what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        pending_tcp, pending_unix = list(tcp), list(unix)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log_file = self.workdir / f"{what}.log"
                said = log_file.read_text(errors="replace").strip().splitlines()[-5:] if log_file.exists() else []
                raise RuntimeError(f"{what} exited with {process.returncode}" + "".join(f"\n  {line}" for line in said))
            pending_unix = [path for path in pending_unix if not path.exists()]
            still = []
            for address in pending_tcp:
                try:
                    socket.create_connection(address, timeout=0.5).close()
                except OSError:
                    still.append(address)
            pending_tcp = still
            if not pending_tcp and not pending_unix:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{what} did not start listening within {timeout:g}s")

    def stop_proxy(self) -> None:
        _stop(self.proxy_process)
        self.proxy_process = None

    def stop(self) -> None:
        """Stop everything and remove the work directory; a signal waits for the end (bench/stopping.py)."""
        with uninterrupted():
            self.stop_proxy()
            _stop(self.socat_process)
            _stop(self.socat_unix_process)
            self.socat_process = self.socat_unix_process = None
            if self.server is not None:
                self.server.stop()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "BenchEnv":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what scenarios need -----------------------------------------------------------------

    def endpoint(self, scenario: Scenario) -> Endpoint:
        assert self.server is not None
        if scenario.via == "direct":
            return Endpoint("127.0.0.1", self.server.port)
        if scenario.local_leg == "unix":
            return Endpoint(socket=self.sockets[scenario.name])
        return Endpoint("127.0.0.1", self.ports[scenario.name])

    def pids(self, scenario: Scenario) -> dict[str, int]:
        """Server-side processes by role (the client's own CPU is measured by the load generator)."""
        assert self.server is not None and self.server.pid is not None
        pids = {"server": self.server.pid}
        if "proxy" in scenario.roles and self.proxy_process is not None:
            pids["proxy"] = self.proxy_process.pid
        relay = self.socat_unix_process if scenario.local_leg == "unix" else self.socat_process
        if "relay" in scenario.roles and relay is not None:
            pids["relay"] = relay.pid
        return pids

    def versions(self) -> dict[str, str]:
        def first_line(argv: list[str]) -> str:
            try:
                out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
                return (out.stdout or out.stderr).strip().splitlines()[0]
            except (OSError, IndexError, subprocess.TimeoutExpired):
                return "unavailable"

        assert self.server is not None
        return {
            "tlsproxy": tlsproxy.__version__,
            "python": sys.version.split()[0],
            "uvloop": uvloop.__version__,
            "openssl": ssl.OPENSSL_VERSION,
            "mariadb": self.server.sql("SELECT VERSION()")[0][0],
            "sysbench": first_line(["sysbench", "--version"]),
            "socat": first_line(["socat", "-V"]) if shutil.which("socat") else "unavailable",
        }


def _stop(process: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    """SIGTERM to the process's group (its own session), SIGKILL after `grace`; then SIGKILL to whatever
    is left of the group. The leader is reaped last: until then its pid cannot name another group."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)
