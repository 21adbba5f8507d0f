"""The admin listener: Prometheus metrics and the sidecar health endpoints, served in the event loop.

    GET  /metrics       Prometheus text format
    GET  /startup       200 once every listener is up
    GET  /liveness      200 while the process runs (a database outage must not restart the pod)
    GET  /readiness     200 when started, not draining, not out of file descriptors, under max
                        connections on every route, and every upstream accepted a TCP connection in a
                        recent (cached) check
    POST /quitquitquit  begin a graceful shutdown (for Kubernetes Jobs)
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tlsproxy import descriptors
from tlsproxy.acceptor import Acceptor, tcp_listeners, unix_listener
from tlsproxy.config import TcpAddress, UnixAddress
from tlsproxy.server import Proxy, listen_failure

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_SECONDS = 5.0
UPSTREAM_CHECK_TTL_SECONDS = 5.0
UPSTREAM_CHECK_TIMEOUT_SECONDS = 1.0
ADMIN_BACKLOG = 100  # asyncio.start_server's


@dataclass
class _UpstreamCheck:
    reachable: bool = False
    checked_at: float = float("-inf")
    reason: str = "not checked yet"
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class AdminHttp:
    """The HTTP side of the admin listener; subclasses say what /metrics and /readiness report."""

    def __init__(self, address: TcpAddress | UnixAddress, *, on_quit: Callable[[], None]) -> None:
        self.address = address
        self.on_quit = on_quit
        self.started = False
        self._server: Acceptor | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        """Streams on the proxy's own accept loop (acceptor.py), so that a probe is answered even when
        the process is out of file descriptors."""
        if isinstance(self.address, UnixAddress):  # a worker's, in the supervisor's private directory
            self._server = Acceptor([unix_listener(self.address.path, backlog=ADMIN_BACKLOG)], self._protocol,
                                    on_refused=None, reserve=descriptors.admin_reserve)
            return
        try:
            sockets = await tcp_listeners(self.address.host, self.address.port, reuse_port=False,
                                          backlog=ADMIN_BACKLOG)
        except OSError as exc:
            raise listen_failure(exc, self.address, who="the admin listener", setting="admin_listen, --admin-listen",
                                 elsewhere="choose another port (--admin-listen 127.0.0.1:PORT) or turn the "
                                           "admin listener off (--admin-listen off)") from None
        self._server = Acceptor(sockets, self._protocol, on_refused=None, reserve=descriptors.admin_reserve)
        log.info("admin: metrics and health on http://%s:%d/", self.address.host, self.port)

    def _protocol(self) -> asyncio.StreamReaderProtocol:
        """What asyncio.start_server makes for each connection."""
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(), self._serve)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def metrics_text(self) -> bytes:
        raise NotImplementedError

    async def readiness_problems(self) -> list[str]:
        raise NotImplementedError

    # ---- HTTP ------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_SECONDS)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, _ = (request_line.split(" ", 2) + ["", ""])[:3]
            status, content_type, body = await self._route(method, target.split("?", 1)[0])
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        except Exception:  # a bug: answer 500, keep serving
            log.exception("admin: internal error")
            status, content_type, body = 500, "text/plain", b"internal error\n"
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
                  503: "Service Unavailable"}[status]
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1") + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        handlers: dict[str, tuple[str, Callable[[], Awaitable[tuple[int, bytes]]]]] = {
            "/metrics": ("GET", self._metrics),
            "/startup": ("GET", self._startup),
            "/liveness": ("GET", self._liveness),
            "/readiness": ("GET", self._readiness),
            "/quitquitquit": ("POST", self._quit),
        }
        if path not in handlers:
            return 404, "text/plain", b"not found\n"
        wanted, handler = handlers[path]
        if method != wanted and not (wanted == "GET" and method == "HEAD"):
            return 405, "text/plain", f"use {wanted}\n".encode()
        status, body = await handler()
        content_type = CONTENT_TYPE_LATEST if path == "/metrics" else "text/plain; charset=utf-8"
        return status, content_type, body

    async def _metrics(self) -> tuple[int, bytes]:
        return 200, await self.metrics_text()

    async def _startup(self) -> tuple[int, bytes]:
        return (200, b"started\n") if self.started else (503, b"starting\n")

    async def _liveness(self) -> tuple[int, bytes]:
        return 200, b"alive\n"

    async def _quit(self) -> tuple[int, bytes]:
        log.info("admin: /quitquitquit received, shutting down")
        asyncio.get_running_loop().call_soon(self.on_quit)
        return 200, b"shutting down\n"

    async def _readiness(self) -> tuple[int, bytes]:
        problems = await self.readiness_problems()
        if problems:
            return 503, ("not ready: " + "; ".join(problems) + "\n").encode()
        return 200, b"ready\n"


class AdminServer(AdminHttp):
    """The admin listener of a single proxy process (or of one worker)."""

    def __init__(self, proxy: Proxy, address: TcpAddress | UnixAddress, *, on_quit: Callable[[], None]) -> None:
        super().__init__(address, on_quit=on_quit)
        self.proxy = proxy
        self._checks = {listener.route.name: _UpstreamCheck() for listener in proxy.listeners}

    async def metrics_text(self) -> bytes:
        return generate_latest(self.proxy.metrics.registry)

    async def readiness_problems(self) -> list[str]:
        if not self.started:
            return ["starting"]
        if self.proxy.draining:
            return ["draining"]
        problems = []
        out_of_descriptors = descriptors.pressure()
        if out_of_descriptors:
            problems.append(out_of_descriptors)
        for listener in self.proxy.listeners:
            route = listener.route
            if len(listener.sessions) >= route.max_connections:
                problems.append(f"route {route.name}: at max_connections ({route.max_connections})")
            check = await self._check_upstream(route.name, route.upstream)
            if not check.reachable:
                problems.append(f"route {route.name}: upstream {route.upstream} unreachable ({check.reason})")
        return problems

    async def _check_upstream(self, name: str, upstream: TcpAddress) -> _UpstreamCheck:
        """A TCP connect to the upstream, at most once per UPSTREAM_CHECK_TTL_SECONDS per route."""
        check = self._checks[name]
        async with check.lock:
            if time.monotonic() - check.checked_at < UPSTREAM_CHECK_TTL_SECONDS:
                return check
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(upstream.host, upstream.port),
                                                   UPSTREAM_CHECK_TIMEOUT_SECONDS)
                writer.close()
                check.reachable, check.reason = True, "ok"
            except (OSError, TimeoutError) as exc:
                if descriptors.is_exhaustion(exc):  # the proxy's own shortage, reported as such: no verdict
                    descriptors.note_exhausted()
                    return check
                check.reachable = False
                check.reason = "timeout" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            check.checked_at = time.monotonic()
            return check
