"""The one way tlsproxy runs until it is stopped, for the single process, each worker and the supervisor.

Every stop request feeds one channel (:class:`StopRequests`), the way cloud-sql-proxy's runSignalWrapper
does, and :func:`run_until_stopped` is the one path from start to exit code:

* SIGTERM, SIGINT and POST /quitquitquit drain: stop accepting, give open connections `shutdown_grace`
  seconds to finish, close the rest and exit 0. A second one while draining closes every connection at
  once (a supervisor tells every worker to).
* SIGHUP reloads the TLS files (a supervisor forwards it to every worker).
* A worker (`workers: N`) also takes commands from its supervisor, as lines on its stdin: `drain`,
  `abort`, `reload`. End of file (the supervisor died, even by SIGKILL) drains the worker. A worker
  also drains on its own SIGTERM/SIGINT (once; a repeated signal does not abort it, so a service manager
  that signals every process does not cut the grace period short) and reloads its TLS files on SIGHUP.
* Exit codes: 0 after a drain; 1 when the service could not start (a worker that fails during the
  supervisor's first start) or did not stop cleanly (a worker left running or exiting non-zero). A
  config error (2) is reported by cli.py before any of this starts; a listener that cannot listen (the
  admin's here, the routes' in ``service.start``) raises config.StartupError, which cli.py reports the same
  way (one line, 2).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, BinaryIO, Callable, Protocol

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio's loop serves without it
    uvloop = None

from tlsproxy import descriptors
from tlsproxy.admin import AdminHttp
from tlsproxy.server import Proxy

# The logger names these lines have always had (log lines stay as they were).
log = logging.getLogger("tlsproxy")
workers_log = logging.getLogger("tlsproxy.workers")

DRAIN = "drain"
ABORT = "abort"
RELOAD = "reload"
"""The supervisor's commands to a worker, one a line on the worker's stdin."""
_END_OF_FILE = "eof"


def run_event_loop(main: Any, event_loop: str) -> Any:
    if event_loop == "uvloop":
        if uvloop is None:  # pragma: no cover - uvloop is a dependency
            log.warning("uvloop is not installed; using the asyncio event loop")
        else:
            return uvloop.run(main)
    return asyncio.run(main)


class Service(Protocol):
    """What run_until_stopped runs: a proxy (ProxyService) or the supervisor of worker processes."""

    async def start(self) -> bool:
        """Start serving (and log that it is ready); False if it could not, which exits 1."""
        ...

    def reload(self) -> None:
        """SIGHUP: reload the TLS files."""
        ...

    async def drain(self) -> int:
        """Stop accepting and let open connections finish within the grace period; the exit code."""
        ...

    def abort(self) -> None:
        """A second stop request while draining: close every connection now."""
        ...


class StopRequests:
    """The one channel every stop request feeds: signals, /quitquitquit and the supervisor's commands.

    ``repeat_aborts``: whether a stop request while draining (a second signal) closes every connection at
    once; off in a worker, where only the supervisor's `abort` does.
    """

    def __init__(self, *, repeat_aborts: bool = True) -> None:
        self.repeat_aborts = repeat_aborts
        self._stop = asyncio.Event()
        self._abort = asyncio.Event()
        self._draining = False

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """SIGTERM, SIGINT or /quitquitquit."""
        if self._draining and self.repeat_aborts:
            self._abort.set()
        self._stop.set()

    def request_drain(self) -> None:
        """Drain; never an abort, however often it comes."""
        self._stop.set()

    def request_abort(self) -> None:
        """Close every connection now (draining first if that had not begun)."""
        self._stop.set()
        self._abort.set()

    async def wait_for_stop(self) -> None:
        await self._stop.wait()
        self._draining = True

    async def wait_for_abort(self) -> None:
        await self._abort.wait()


async def run_until_stopped(service: Service, stop: StopRequests, *, admin: AdminHttp | None = None,
                            commands: BinaryIO | None = None) -> int:
    """Start ``admin`` (whose on_quit should be ``stop.request_stop``) and ``service``, serve until a stop
    request, drain, and return the exit code. ``commands``: a worker's stdin, the supervisor's command feed."""
    loop = asyncio.get_running_loop()
    try:
        if admin is not None:
            await admin.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.request_stop)
        loop.add_signal_handler(signal.SIGHUP, service.reload)
        if not await service.start():
            return 1
        if admin is not None:
            admin.started = True
        if commands is not None:
            await loop.connect_read_pipe(lambda: CommandFeed(lambda line: _command(line, service, stop)), commands)
        await stop.wait_for_stop()
        return await _drain(service, stop)
    finally:
        if admin is not None:
            await admin.close()


async def _drain(service: Service, stop: StopRequests) -> int:
    drained = asyncio.ensure_future(service.drain())
    second_request = asyncio.ensure_future(stop.wait_for_abort())
    await asyncio.wait([drained, second_request], return_when=asyncio.FIRST_COMPLETED)
    if not drained.done():
        service.abort()
    code = await drained
    second_request.cancel()
    return code


class ProxyService:
    """A server.Proxy run by run_until_stopped: the single process, or one worker."""

    def __init__(self, proxy: Proxy, grace: float, *, announce: Callable[[], None]) -> None:
        self.proxy = proxy
        self.grace = grace
        self.announce = announce
        """Logs that the proxy is ready."""

    async def start(self) -> bool:
        limit = descriptors.raise_open_files_limit()
        info, warning = descriptors.startup_report(limit, self.proxy.config.routes)
        log.info("%s", info)
        if warning:
            log.warning("%s", warning)
        await self.proxy.start()
        self.announce()
        return True

    def reload(self) -> None:
        self.proxy.reload_tls("SIGHUP")

    async def drain(self) -> int:
        log.info("shutting down: %d connection(s) open, waiting up to %gs", self.proxy.active_connections, self.grace)
        await self.proxy.stop(grace_seconds=self.grace)
        return 0

    def abort(self) -> None:
        log.info("second signal: closing every connection now")
        for listener in self.proxy.listeners:
            for session in list(listener.sessions):
                session.abort("proxy shutting down (second signal)")


# ---- the supervisor's command feed to a worker ---------------------------------------------------


def send_command(pipe: BinaryIO, command: str) -> None:
    """Write one command line to a worker's stdin; a worker that is gone is not an error."""
    try:
        pipe.write(command.encode() + b"\n")
        pipe.flush()
    except (BrokenPipeError, OSError):
        pass


class CommandFeed(asyncio.Protocol):
    """The worker's end: each line read from stdin, then "eof" when the supervisor is gone."""

    def __init__(self, handle: Callable[[str], None]) -> None:
        self._handle = handle
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._handle(line.decode(errors="replace").strip())

    def eof_received(self) -> bool:
        self._handle(_END_OF_FILE)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._handle(_END_OF_FILE)


def _command(line: str, service: Service, stop: StopRequests) -> None:
    if line in (DRAIN, _END_OF_FILE):
        if line == _END_OF_FILE and not stop.stop_requested:
            workers_log.warning("the supervisor is gone: shutting down")
        stop.request_drain()
    elif line == ABORT:
        stop.request_abort()
    elif line == RELOAD:
        service.reload()
