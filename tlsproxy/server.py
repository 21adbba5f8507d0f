"""Listeners: one per route (TCP or Unix socket), the connection limit, and a graceful stop."""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import socket
import stat
import time
from pathlib import Path

from tlsproxy import allocator, descriptors
from tlsproxy.acceptor import Acceptor, tcp_listeners, unix_listener
from tlsproxy.config import (ConfigError, ListenAddress, ProxyConfig, Route, SslMode, StartupError, TcpAddress,
                             UnixAddress)
from tlsproxy.errors import ShuttingDownError, TooManyConnectionsError
from tlsproxy.metrics import ProxyMetrics
from tlsproxy.mysql.handshake import AuthKey
from tlsproxy.outcome import Outcome
from tlsproxy.prewarm import PrewarmPool
from tlsproxy.upstream_pool import UpstreamPool
from tlsproxy.session import ClientSide, RouteRuntime, Session
from tlsproxy.tls import build_upstream_tls

log = logging.getLogger(__name__)

LISTEN_BACKLOG = socket.SOMAXCONN
TRIM_INTERVAL_SECONDS = 30.0
POOL_CLOSE_SECONDS = 1.0
"""At shutdown, how long parked upstream connections get to quit and close cleanly."""
"""asyncio's default of 100 overflows when a few thousand clients connect at once (a pool reconnecting
after a failover): the kernel drops the SYNs and each of those clients waits a 1 s retransmit."""

REFUSAL_LOG_INTERVAL_SECONDS = 1.0
"""Clients refused for want of a descriptor are logged together, one line per route at most this often."""

_conn_ids = itertools.count(1)


class RouteListener:
    def __init__(self, runtime: RouteRuntime, *, sock: socket.socket | None = None, reuse_port: bool = False) -> None:
        """`sock`: a listening Unix socket made by the supervisor and shared by its workers (the worker
        neither creates nor removes the path). `reuse_port`: a worker's TCP listener, one of several on
        the same port (SO_REUSEPORT)."""
        self.runtime = runtime
        self._sock = sock
        self._reuse_port = reuse_port
        self.route = runtime.route
        self.sessions: set[Session] = set()
        self.closed_bytes = {"client_to_server": 0, "server_to_client": 0}  # of sessions already gone
        self.sessions_closed = 0
        self._server: Acceptor | None = None
        self._draining = False
        self.address: str = str(self.route.listen)
        self._refused_unlogged = 0
        self._refusal_logged_at = float("-inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop it listens on (start), handed to each session."""

    async def start(self) -> None:
        """Listen on the proxy's own accept loop (acceptor.py: refusing clients when out of file
        descriptors); StartupError (one line: the address, the cause, the fix) when the address cannot be had."""
        self._loop = asyncio.get_running_loop()
        try:
            await self._listen()
        except OSError as exc:
            raise listen_failure(exc, self.route.listen, who=f"route {self.route.name}",
                                 setting="listen, --listen") from None

    async def _listen(self) -> None:
        listen = self.route.listen
        if self._sock is not None:
            self._server = Acceptor([self._sock], self._new_protocol, on_refused=self._refused_out_of_fds)
            self.address = str(listen)
        elif isinstance(listen, UnixAddress):
            claim_socket_path(listen.path)
            sock = unix_listener(listen.path, backlog=LISTEN_BACKLOG)
            self._server = Acceptor([sock], self._new_protocol, on_refused=self._refused_out_of_fds)
            os.chmod(listen.path, listen.mode)
            self.address = f"unix:{listen.path}"
        else:
            sockets = await tcp_listeners(listen.host, listen.port, reuse_port=self._reuse_port,
                                          backlog=LISTEN_BACKLOG)
            self._server = Acceptor(sockets, self._new_protocol, on_refused=self._refused_out_of_fds)
            sockname = self._server.sockets[0].getsockname()
            self.address = str(TcpAddress(sockname[0], sockname[1]))

    @property
    def started(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    def _new_protocol(self) -> ClientSide:
        session = Session(self.runtime, next(_conn_ids), self._session_closed, loop=self._loop)
        protocol = ClientSide(session)
        if self._draining:
            protocol.connection_made = lambda transport: session.refuse(  # type: ignore[method-assign]
                transport, ShuttingDownError("the proxy is shutting down"))  # type: ignore[arg-type]
        elif len(self.sessions) >= self.route.max_connections:
            protocol.connection_made = lambda transport: session.refuse(  # type: ignore[method-assign]
                transport, TooManyConnectionsError(
                    f"too many connections (max_connections {self.route.max_connections} on route {self.route.name})"))  # type: ignore[arg-type]
        else:
            self.sessions.add(session)
            if self.runtime.metrics is not None:
                self.runtime.metrics.route(self.route.name).child(self.runtime.metrics.connections_accepted).inc()
        return protocol

    def _refused_out_of_fds(self, count: int) -> None:
        """`count` clients got ERR 1040 "out of file descriptors" at accept (acceptor.py)."""
        if self.runtime.metrics is not None:
            self.runtime.metrics.connections_refused.labels(self.route.name, Outcome.OUT_OF_FDS).inc(count)
        self._refused_unlogged += count
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL_SECONDS:
            log.warning("route %s: %s: refused %d client(s) with ERR 1040 (%d open here)", self.route.name,
                        descriptors.exhausted_message(), self._refused_unlogged, len(self.sessions))
            self._refused_unlogged = 0
            self._refusal_logged_at = now

    def _session_closed(self, session: Session) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.closed_bytes["client_to_server"] += session.stats.bytes_client_to_server
            self.closed_bytes["server_to_client"] += session.stats.bytes_server_to_client
            self.sessions_closed += 1

    def cached_tls_sessions(self) -> int:
        upstream_tls = self.runtime.upstream_tls
        return 0 if upstream_tls is None or upstream_tls.sessions is None else len(upstream_tls.sessions)

    def relayed_bytes(self) -> dict[str, int]:
        totals = dict(self.closed_bytes)
        for session in list(self.sessions):
            totals["client_to_server"] += session.stats.bytes_client_to_server
            totals["server_to_client"] += session.stats.bytes_server_to_client
        return totals

    def stop_accepting(self) -> None:
        self._draining = True
        if self._server is not None:
            self._server.close()
        if isinstance(self.route.listen, UnixAddress) and self._sock is None:
            remove_stale_socket(self.route.listen.path)

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()


UNIX_PATH_MAX = 107
"""Bytes in a Unix socket path (Linux's sun_path holds 108 with the terminating NUL)."""


def claim_socket_path(path: Path) -> None:
    """Make way for a new listening socket at `path`: remove a socket left by a process that is gone, but
    never one that another process (a second tlsproxy) still accepts on. OSError says why not."""
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise OSError(errno.ENAMETOOLONG, "path too long", str(path))
    try:
        if not stat.S_ISSOCK(path.stat().st_mode):
            return  # binding fails with EADDRINUSE: a file that is not ours to remove
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # nobody accepts on it: stale
            return
        except (BlockingIOError, TimeoutError):
            pass  # its backlog is full: busy, not stale
    raise OSError(errno.EADDRINUSE, "another process is listening on it", str(path))


def listen_failure(exc: OSError, address: ListenAddress, *, who: str, setting: str,
                   elsewhere: str | None = None) -> StartupError:
    """The one line for a listener that cannot start: `cannot listen on ADDRESS for WHO (SETTING): cause;
    fix`. `who`: "route NAME" or "the admin listener"; `setting`: the key and flag that set the address;
    `elsewhere`: how to choose another address (default: another one in SETTING)."""
    if elsewhere is None:
        what = "path" if isinstance(address, UnixAddress) else "port"
        elsewhere = f"choose another {what} ({setting})"
    code = exc.errno
    if isinstance(exc, socket.gaierror):
        host = address.host if isinstance(address, TcpAddress) else str(address)
        cause, fix = f"the host name {host!r} does not resolve ({exc.strerror})", "listen on an IP address such as 127.0.0.1"
    elif isinstance(address, UnixAddress):
        cause, fix = _unix_listen_cause(code, exc, address.path, setting, elsewhere)
    elif code == errno.EADDRINUSE:
        cause = "the address is already in use by another process (another tlsproxy?)"
        fix = f"stop that process, or {elsewhere}"
    elif code in (errno.EACCES, errno.EPERM) and address.port < 1024:
        cause = f"port {address.port} is below 1024 and this process may not bind it"
        fix = (f"choose a port from 1024 up ({setting}), or run with the capability CAP_NET_BIND_SERVICE "
               "(systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE)")
    elif code == errno.EADDRNOTAVAIL:
        cause = f"{address.host} is not an address of this host"
        fix = "listen on one of its addresses (127.0.0.1 for clients on this host)"
    else:
        cause, fix = exc.strerror or str(exc), elsewhere
    return StartupError(setting, f"cannot listen on {address} for {who} ({setting}): {cause}; {fix}")


def _unix_listen_cause(code: int | None, exc: OSError, path: Path, setting: str, elsewhere: str) -> tuple[str, str]:
    directory = path.parent
    if code == errno.ENOENT:
        return (f"the directory {directory} does not exist",
                f"create it (mkdir -p {directory}, writable by the proxy's user) or {elsewhere}")
    if code == errno.ENOTDIR:
        return f"{directory} is not a directory", elsewhere
    if code in (errno.EACCES, errno.EPERM):
        return (f"this process (uid {os.geteuid()}) may not create files in {directory}",
                f"make {directory} writable by the proxy's user or {elsewhere}")
    if code == errno.ENAMETOOLONG:
        return (f"the path is {len(os.fsencode(path))} bytes long, Unix socket paths hold at most {UNIX_PATH_MAX}",
                f"choose a shorter path ({setting})")
    if code == errno.EADDRINUSE:
        try:
            is_socket = stat.S_ISSOCK(path.stat().st_mode)
        except OSError:
            is_socket = True
        if is_socket:
            return ("another process is listening on this socket (another tlsproxy?)",
                    f"stop that process, or {elsewhere}")
        return f"{path} exists and is not a socket", f"remove it or {elsewhere}"
    if code == errno.EROFS:
        return f"{directory} is on a read-only file system", elsewhere
    return exc.strerror or str(exc), elsewhere


def remove_stale_socket(path: Path) -> None:
    try:
        if stat.S_ISSOCK(path.stat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


class TlsFileWatch:
    """Notices when a route's CA, CRL, client certificate or key file changes on disk (a Kubernetes
    Secret update swaps a symlink; stat follows it)."""

    def __init__(self, config: ProxyConfig) -> None:
        paths: set[Path] = set()
        for route in config.routes:
            tls = route.tls
            paths.update(path for path in (tls.ca_file, tls.crl_file, tls.cert_file, tls.key_file) if path)
            if tls.ca_path is not None:
                paths.add(tls.ca_path)
                if tls.ca_path.is_dir():
                    paths.update(tls.ca_path.glob("*"))
        self._paths = sorted(paths)
        self._seen = {path: self._signature(path) for path in self._paths}

    @staticmethod
    def _signature(path: Path) -> tuple[int, int, int] | None:
        try:
            status = path.stat()
        except OSError:
            return None
        return status.st_ino, status.st_mtime_ns, status.st_size

    def changed(self) -> list[str]:
        changed = []
        for path in self._paths:
            signature = self._signature(path)
            if signature != self._seen[path]:
                self._seen[path] = signature
                changed.append(str(path))
        return changed


def non_loopback_warning(route: Route) -> str | None:
    """The start-up warning for a TCP listener off loopback (only possible with allow_non_loopback)."""
    listen = route.listen
    if not isinstance(listen, TcpAddress) or listen.is_loopback:
        return None
    return (f"route {route.name}: listening on {listen}, a NON-LOOPBACK address (allow_non_loopback): user names, "
            "password exchanges and every query between clients and the proxy cross that network in PLAINTEXT. "
            "Anyone who can reach it can log in with a valid account. Prefer 127.0.0.1 or a Unix socket.")


def build_runtime(route: Route, auth_key: AuthKey | None, index: int,
                  metrics: ProxyMetrics | None = None) -> RouteRuntime:
    upstream_tls = build_upstream_tls(route, key_prefix=f"routes[{index}].")
    prewarm = PrewarmPool(route, upstream_tls, metrics) if route.prewarm and upstream_tls is not None else None
    pool = UpstreamPool(route, metrics) if route.upstream_pool and upstream_tls is not None else None
    return RouteRuntime(route, upstream_tls, auth_key, metrics, prewarm, upstream_pool=pool)


class Proxy:
    """All routes of one process."""

    def __init__(self, config: ProxyConfig, auth_key: AuthKey | None, metrics: ProxyMetrics | None = None, *,
                 shared_sockets: dict[int, socket.socket] | None = None, reuse_port: bool = False) -> None:
        """`shared_sockets` (route index -> socket) and `reuse_port`: for a worker process (worker.py)."""
        self.config = config
        self.auth_key = auth_key
        self.metrics = metrics or ProxyMetrics()
        shared = shared_sockets or {}
        self.listeners = [RouteListener(build_runtime(route, auth_key, i, self.metrics), sock=shared.get(i),
                                        reuse_port=reuse_port)
                          for i, route in enumerate(config.routes)]
        self._tls_files = TlsFileWatch(config)
        self._watch_task: asyncio.Task[None] | None = None
        self._trim_task: asyncio.Task[None] | None = None
        for listener in self.listeners:
            self.metrics.connections_active.labels(listener.route.name).set_function(
                lambda listener=listener: len(listener.sessions))
            self.metrics.tls_sessions_cached.labels(listener.route.name).set_function(
                lambda listener=listener: listener.cached_tls_sessions())
            self.metrics.prewarm_ready.labels(listener.route.name).set_function(
                lambda listener=listener: len(listener.runtime.prewarm) if listener.runtime.prewarm else 0)
            self.metrics.upstream_pool_idle.labels(listener.route.name).set_function(
                lambda listener=listener: len(listener.runtime.upstream_pool) if listener.runtime.upstream_pool else 0)
        self.metrics.add_relayed_bytes_source(self._relayed_bytes)
        self._draining = False

    def _relayed_bytes(self) -> list[tuple[str, str, int]]:
        return [(listener.route.name, direction, value)
                for listener in self.listeners for direction, value in listener.relayed_bytes().items()]

    async def start(self) -> None:
        """Start every route's listener; when one cannot listen (StartupError), the ones already started
        close again (their socket paths removed) and the error goes on to the caller."""
        for listener in self.listeners:
            try:
                await listener.start()
            except StartupError:
                for started in self.listeners:
                    if started.started:
                        started.stop_accepting()
                        await started.wait_closed()
                raise
            route = listener.route
            log.info("route %s: listening on %s, upstream %s, ssl_mode %s", route.name, listener.address,
                     route.upstream, route.tls.mode.value)
            if route.tls.mode is SslMode.REQUIRED:
                log.warning("route %s: ssl_mode REQUIRED encrypts but does NOT verify the upstream certificate: "
                            "anyone on the path can impersonate the server. Use VERIFY_IDENTITY.", route.name)
            elif route.tls.mode is SslMode.DISABLED:
                log.warning("route %s: ssl_mode DISABLED sends everything to the upstream in PLAINTEXT; "
                            "meant for measuring the relay only.", route.name)
            elif route.tls.mode is SslMode.VERIFY_CA:
                log.warning("route %s: ssl_mode VERIFY_CA checks the chain but not the host name", route.name)
            exposed = non_loopback_warning(route)
            if exposed:
                log.warning(exposed)
            if route.tls.allow_legacy_tls and route.tls.tls_versions[0] in ("TLSv1", "TLSv1.1"):
                log.warning("route %s: legacy TLS versions %s allowed (allow_legacy_tls)", route.name,
                            ",".join(route.tls.tls_versions))
        if self.config.tls_files_check_interval:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch_tls_files())
        if allocator.tune():
            self._trim_task = asyncio.get_running_loop().create_task(self._trim_memory())

    def reload_tls(self, why: str) -> bool:
        """Build every route's TLS context again from its files (certificate rotation). New handshakes
        use the new contexts; open connections keep theirs. If any file is bad, every route keeps its
        old context, and the failure is logged and counted."""
        try:
            runtimes = [build_runtime(listener.route, self.auth_key, i, self.metrics)
                        for i, listener in enumerate(self.listeners)]
        except ConfigError as exc:
            log.warning("TLS reload (%s) failed, keeping the previous TLS settings: %s", why, exc)
            self.metrics.config_reloads.labels("error").inc()
            return False
        for listener, runtime in zip(self.listeners, runtimes):
            old = listener.runtime.prewarm
            if listener.runtime.upstream_pool is not None:
                listener.runtime.upstream_pool.close()  # connections verified under the old settings
            listener.runtime = runtime
            if old is not None:
                old.close()  # connections verified under the old settings
                if runtime.prewarm is not None and old.learned_ssl_request is not None:
                    runtime.prewarm.learn(old.learned_ssl_request)
        log.info("TLS reload (%s): new connections use the new TLS contexts", why)
        self.metrics.config_reloads.labels("ok").inc()
        return True

    async def _trim_memory(self) -> None:
        """After connections closed, give the heap's free memory back (allocator.py)."""
        seen = 0
        while True:
            await asyncio.sleep(TRIM_INTERVAL_SECONDS)
            closed = sum(listener.sessions_closed for listener in self.listeners)
            if closed != seen:
                seen = closed
                allocator.trim()

    async def _watch_tls_files(self) -> None:
        while True:
            await asyncio.sleep(self.config.tls_files_check_interval)
            changed = self._tls_files.changed()
            if changed:
                self.reload_tls(f"changed on disk: {', '.join(changed)}")

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def active_connections(self) -> int:
        return sum(len(listener.sessions) for listener in self.listeners)

    async def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop accepting, let open connections finish for up to `grace_seconds`, then close the rest."""
        self._draining = True
        for task in (self._watch_task, self._trim_task):
            if task is not None:
                task.cancel()
        for listener in self.listeners:
            listener.stop_accepting()
            if listener.runtime.prewarm is not None:
                listener.runtime.prewarm.close()
            if listener.runtime.upstream_pool is not None:
                listener.runtime.upstream_pool.close()
        for listener in self.listeners:
            if listener.runtime.upstream_pool is not None:
                await listener.runtime.upstream_pool.wait_closed(POOL_CLOSE_SECONDS)
        deadline = asyncio.get_running_loop().time() + grace_seconds
        while self.active_connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        remaining = [session for listener in self.listeners for session in list(listener.sessions)]
        if remaining:
            log.info("closing %d connection(s) still open", len(remaining))
        for session in remaining:
            session.abort("proxy shutting down")
        for listener in self.listeners:
            await listener.wait_closed()
