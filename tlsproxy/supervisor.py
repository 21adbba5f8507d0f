"""`workers: N` (N > 1): one supervisor process and N worker processes (worker.py), for several cores.

The supervisor owns the listeners' addresses, the admin listener and the workers; the workers run the
ordinary single-process proxy (server.Proxy) and share every listener:

* TCP: every worker listens on the same port with SO_REUSEPORT, and the kernel spreads new connections
  over them. The supervisor binds the port first (port 0 becomes a real port here, before any worker
  starts) and keeps that socket bound, not listening, so the port stays reserved across restarts.
* Unix socket: SO_REUSEPORT does not apply, so the supervisor creates the listening socket (path,
  file mode) and every worker inherits it and accepts from it. On shutdown the supervisor closes its
  copy and removes the path first, so new connections are refused once the workers close theirs.
* The upstream auth RSA key is loaded or generated once, here, and handed to every worker over its
  stdin pipe (never written to disk): a client may fetch the key on one connection and use it on
  another, which another worker may serve.
* The workers' admin listeners are Unix sockets in a private temporary directory (mode 0700, removed
  at exit). The supervisor's /metrics scrapes them all and sums every sample (counters, histograms and
  gauges such as connections_active; certificate notAfter and build info are the min/max, `_created`
  the earliest: metrics_merge.py); /readiness is 503 if any worker is not running, not ready, or draining.
* Commands go to a worker as lines on its stdin: `drain`, `abort`, `reload` (lifecycle.py, which also
  says how a worker takes signals and the end of that pipe). SIGTERM/SIGINT and /quitquitquit drain
  every worker, a second one aborts them; SIGHUP reloads their TLS files.
* A worker that exits while the supervisor is not shutting down is restarted, after 0.5 s doubling to
  30 s while it keeps dying within 30 s of its start. Its counters up to the last scrape stay in the
  sums. A worker that fails during the first start stops everything: the supervisor exits 1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import Metric

from tlsproxy import __version__
from tlsproxy.admin import AdminHttp
from tlsproxy.config import ProxyConfig, TcpAddress, UnixAddress
from tlsproxy.lifecycle import ABORT, DRAIN, RELOAD, StopRequests, run_until_stopped, send_command
from tlsproxy.metrics_merge import Families, merge_families, parse_metrics
from tlsproxy.server import claim_socket_path, listen_failure, remove_stale_socket
from tlsproxy.tls import build_upstream_tls
from tlsproxy.worker import WORKER_ARGV, WorkerSpec, send_spec

# "tlsproxy.workers": the logger name these lines have always had (log lines stay as they were).
log = logging.getLogger("tlsproxy.workers")

WORKER_START_TIMEOUT_SECONDS = 30.0
WORKER_HTTP_TIMEOUT_SECONDS = 2.0
RESTART_DELAY_SECONDS = (0.5, 30.0)
"""First delay before restarting a dead worker, and the cap while it keeps dying soon after start."""
STABLE_UPTIME_SECONDS = 30.0
KILL_AFTER_GRACE_SECONDS = 15.0
"""Workers still running this long after shutdown_grace are killed (and the supervisor exits 1)."""
LISTEN_BACKLOG = socket.SOMAXCONN  # a burst of clients (a pool reconnecting) must not overflow it


# ---- the supervisor ------------------------------------------------------------------------------


@dataclasses.dataclass
class WorkerProcess:
    index: int
    admin_path: str
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_delay: float = RESTART_DELAY_SECONDS[0]
    last_metrics: str = ""
    serving: bool = False
    """Started and answering (its /startup said 200)."""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, command: str) -> None:
        if self.process is None or self.process.stdin is None or not self.running:
            return
        send_command(self.process.stdin, command)


class Supervisor:
    def __init__(self, config: ProxyConfig, auth_key) -> None:  # type: ignore[no-untyped-def]
        self.config = config
        self.auth_key = auth_key
        self.started = False
        self.draining = False
        self._stop = StopRequests()
        self._dir = Path(tempfile.mkdtemp(prefix="tlsproxy-workers-"))
        self.workers = [WorkerProcess(i, str(self._dir / f"worker-{i}.sock")) for i in range(config.workers)]
        self._tcp_placeholders: list[socket.socket] = []
        self._unix_sockets: dict[int, socket.socket] = {}
        self._worker_config = config
        self._retired: list[Metric] = []
        self._restart_tasks: set[asyncio.Task[None]] = set()
        self._monitor_task: asyncio.Task[None] | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        Gauge("tlsproxy_workers", "Worker processes configured (workers)", registry=self.registry).set(config.workers)
        Gauge("tlsproxy_workers_running", "Worker processes running now", registry=self.registry).set_function(
            lambda: sum(worker.running for worker in self.workers))
        self.restarts = Counter("tlsproxy_worker_restarts", "Worker processes restarted after an unexpected exit",
                                registry=self.registry)

    # ---- listeners -------------------------------------------------------------------------------

    def _bind_listeners(self) -> None:
        routes = []
        for i, route in enumerate(self.config.routes):
            listen = route.listen
            try:
                if isinstance(listen, UnixAddress):
                    self._unix_sockets[i] = _unix_listener(listen)
                else:
                    route = dataclasses.replace(route, listen=TcpAddress(listen.host, self._reserve_tcp(listen)))
            except OSError as exc:
                raise listen_failure(exc, listen, who=f"route {route.name}", setting="listen, --listen") from None
            routes.append(route)
            log.info("route %s: listening on %s, upstream %s, ssl_mode %s (%d workers)", route.name,
                     route.listen, route.upstream, route.tls.mode.value, self.config.workers)
        self._worker_config = dataclasses.replace(self.config, routes=tuple(routes), admin_listen=None)

    def _reserve_tcp(self, listen: TcpAddress) -> int:
        """Bind (without listening) every address of `listen` with SO_REUSEPORT; the workers bind the
        same port and listen. Port 0 becomes one real port for all of them. OSError when it cannot."""
        port = listen.port
        infos = socket.getaddrinfo(listen.host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        seen = set()
        for family, kind, proto, _, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            if port:
                _check_port_free(family, (address[0], port, *address[2:]))
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], port, *address[2:]))
            except OSError:
                sock.close()
                raise
            self._tcp_placeholders.append(sock)
            port = sock.getsockname()[1]
        return port

    def _close_listeners(self) -> None:
        """New connections are refused from now on: the path of a Unix listener goes, the workers'
        copies close as they drain."""
        for i, sock in self._unix_sockets.items():
            sock.close()
            remove_stale_socket(self.config.routes[i].listen.path)  # type: ignore[union-attr]
        self._unix_sockets.clear()

    # ---- workers ---------------------------------------------------------------------------------

    def _spawn(self, worker: WorkerProcess) -> None:
        spec = WorkerSpec(
            index=worker.index, config=self._worker_config,
            auth_key_pem=None if self.auth_key is None else self.auth_key.private_pem(),
            unix_fds={i: sock.fileno() for i, sock in self._unix_sockets.items()}, admin_path=worker.admin_path)
        remove_stale_socket(Path(worker.admin_path))
        worker.process = subprocess.Popen(
            WORKER_ARGV, stdin=subprocess.PIPE, pass_fds=tuple(spec.unix_fds.values()), start_new_session=True)
        worker.started_at = time.monotonic()
        worker.serving = False
        assert worker.process.stdin is not None
        send_spec(worker.process.stdin, spec)
        log.info("worker %d (pid %d) starting", worker.index, worker.process.pid)

    async def _wait_started(self, worker: WorkerProcess) -> bool:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if not worker.running:
                return False
            answer = await self._get(worker, "/startup")
            if answer is not None and answer[0] == 200:
                worker.serving = True
                log.info("worker %d (pid %d) serving", worker.index, worker.process.pid)  # type: ignore[union-attr]
                return True
            await asyncio.sleep(0.05)
        return False

    async def _get(self, worker: WorkerProcess, path: str) -> tuple[int, bytes] | None:
        """GET from a worker's admin listener; None if it does not answer."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(worker.admin_path),
                                                    WORKER_HTTP_TIMEOUT_SECONDS)
        except (OSError, TimeoutError):
            return None
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: worker\r\n\r\n".encode())
            data = await asyncio.wait_for(reader.read(), WORKER_HTTP_TIMEOUT_SECONDS)
            head, _, body = data.partition(b"\r\n\r\n")
            return int(head.split(b" ", 2)[1]), body
        except (OSError, TimeoutError, ValueError, IndexError):
            return None
        finally:
            writer.close()

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            for worker in self.workers:
                if worker.process is not None and not worker.running and not self.draining:
                    self._worker_died(worker)

    def _worker_died(self, worker: WorkerProcess) -> None:
        assert worker.process is not None
        code, pid = worker.process.returncode, worker.process.pid
        uptime = time.monotonic() - worker.started_at
        if uptime > STABLE_UPTIME_SECONDS:
            worker.restart_delay = RESTART_DELAY_SECONDS[0]
        delay = worker.restart_delay
        worker.restart_delay = min(delay * 2, RESTART_DELAY_SECONDS[1])
        log.warning("worker %d (pid %d) exited unexpectedly (code %s) after %.1fs; restarting in %gs",
                    worker.index, pid, code, uptime, delay)
        if worker.last_metrics:
            kept = [family for family in parse_metrics(worker.last_metrics) if family.type in ("counter", "histogram")]
            self._retired = merge_families([self._retired, kept])
            worker.last_metrics = ""
        if worker.process.stdin is not None:
            worker.process.stdin.close()
        worker.process = None
        task = asyncio.get_running_loop().create_task(self._restart(worker, delay))
        self._restart_tasks.add(task)
        task.add_done_callback(self._restart_tasks.discard)

    async def _restart(self, worker: WorkerProcess, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.draining:
            return
        self._spawn(worker)
        self.restarts.inc()
        await self._wait_started(worker)

    # ---- admin -----------------------------------------------------------------------------------

    async def metrics_text(self) -> bytes:
        answers = await asyncio.gather(*(self._get(worker, "/metrics") for worker in self.workers))
        sources: list[list[Metric]] = [self._retired, parse_metrics(generate_latest(self.registry).decode())]
        for worker, answer in zip(self.workers, answers):
            if answer is not None and answer[0] == 200:
                worker.last_metrics = answer[1].decode()
                sources.append(parse_metrics(worker.last_metrics))
        return generate_latest(Families(merge_families(sources)))  # type: ignore[arg-type]

    async def readiness_problems(self) -> list[str]:
        if not self.started:
            return ["starting"]
        if self.draining:
            return ["draining"]
        answers = await asyncio.gather(*(self._get(worker, "/readiness") for worker in self.workers))
        problems = []
        for worker, answer in zip(self.workers, answers):
            if not worker.running:
                problems.append(f"worker {worker.index}: not running")
            elif not worker.serving:
                problems.append(f"worker {worker.index}: starting")
            elif answer is None:
                problems.append(f"worker {worker.index}: no answer")
            elif answer[0] != 200:
                problems.append(f"worker {worker.index}: {answer[1].decode(errors='replace').strip()}")
        return problems

    # ---- run -------------------------------------------------------------------------------------

    async def run(self) -> int:
        try:
            for i, route in enumerate(self.config.routes):  # a bad file: a config error before any worker starts
                build_upstream_tls(route, key_prefix=f"routes[{i}].")
            self._bind_listeners()
            admin = None
            if self.config.admin_listen is not None:
                admin = SupervisorAdmin(self, self.config.admin_listen, on_quit=self._stop.request_stop)
            return await run_until_stopped(self, self._stop, admin=admin)
        finally:
            for worker in self.workers:
                if worker.running:
                    worker.process.kill()  # type: ignore[union-attr]
                    worker.process.wait()  # type: ignore[union-attr]
            for sock in self._tcp_placeholders:
                sock.close()
            self._close_listeners()
            shutil.rmtree(self._dir, ignore_errors=True)

    # ---- the lifecycle.Service run_until_stopped runs ---------------------------------------------

    async def start(self) -> bool:
        for worker in self.workers:
            self._spawn(worker)
        started = await asyncio.gather(*(self._wait_started(worker) for worker in self.workers))
        if not all(started):
            failed = [worker.index for worker, ok in zip(self.workers, started) if not ok]
            log.error("worker(s) %s failed to start; stopping", ", ".join(map(str, failed)))
            self.draining = True
            self._forward(ABORT)
            await self._wait_exited(5.0)
            return False
        self.started = True
        self._monitor_task = asyncio.get_running_loop().create_task(self._monitor())
        log.info("tlsproxy %s ready (%d workers, %s event loop)", __version__, self.config.workers,
                 self.config.event_loop)
        return True

    def reload(self) -> None:
        self._forward(RELOAD)

    async def drain(self) -> int:
        self.draining = True
        if self._monitor_task is not None:
            self._monitor_task.cancel()
        for task in list(self._restart_tasks):
            task.cancel()
        log.info("shutting down: draining %d worker(s), up to %gs", self.config.workers, self.config.shutdown_grace)
        self._close_listeners()
        self._forward(DRAIN)
        all_exited = await self._wait_exited(self.config.shutdown_grace + KILL_AFTER_GRACE_SECONDS)
        codes = {worker.index: worker.process.poll() for worker in self.workers if worker.process is not None}
        if not all_exited or any(code != 0 for code in codes.values()):
            log.error("worker(s) did not exit cleanly: %s", codes)
            return 1
        return 0

    def abort(self) -> None:
        log.info("second signal: every worker closes every connection now")
        self._forward(ABORT)

    def _forward(self, command: str) -> None:
        if command == RELOAD:
            log.info("SIGHUP: reloading the TLS files in every worker")
        for worker in self.workers:
            worker.send(command)

    async def _wait_exited(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while any(worker.running for worker in self.workers):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True


class SupervisorAdmin(AdminHttp):
    """The one admin listener of a multi-worker proxy: the workers' metrics summed, readiness of all."""

    def __init__(self, supervisor: Supervisor, address: TcpAddress, *, on_quit) -> None:  # type: ignore[no-untyped-def]
        super().__init__(address, on_quit=on_quit)
        self.supervisor = supervisor

    async def metrics_text(self) -> bytes:
        return await self.supervisor.metrics_text()

    async def readiness_problems(self) -> list[str]:
        return await self.supervisor.readiness_problems()


def _check_port_free(family: socket.AddressFamily, address: tuple) -> None:  # type: ignore[type-arg]
    """SO_REUSEPORT would let this supervisor share a port with another process of the same user (a second
    tlsproxy with workers) and quietly split its clients; a bind without it finds such a listener first."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind(address)


def _unix_listener(listen: UnixAddress) -> socket.socket:
    claim_socket_path(listen.path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(listen.path))
        os.chmod(listen.path, listen.mode)
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock
