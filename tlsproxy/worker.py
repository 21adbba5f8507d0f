"""One worker process of `workers: N` (N > 1): the ordinary single-process proxy (server.Proxy) on
listeners it shares with the other workers, started by the supervisor (supervisor.py).

* Its settings (WorkerSpec) arrive pickled on its stdin, ahead of the supervisor's command lines
  (lifecycle.py: `drain`, `abort`, `reload`; end of file drains). They include the upstream auth RSA key,
  loaded or generated once by the supervisor and never written to disk.
* TCP listeners bind the supervisor's port with SO_REUSEPORT; a Unix listener is the supervisor's
  socket, inherited as a file descriptor.
* Its admin listener is a Unix socket in the supervisor's private directory; the supervisor scrapes it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import socket
import struct
import sys
from pathlib import Path
from typing import BinaryIO

from tlsproxy.admin import AdminServer
from tlsproxy.certs import AuthRsaKey
from tlsproxy.config import ConfigError, ProxyConfig, UnixAddress
from tlsproxy.lifecycle import ProxyService, StopRequests, run_event_loop, run_until_stopped
from tlsproxy.logs import setup_logging
from tlsproxy.server import Proxy, remove_stale_socket

# "tlsproxy.workers": the logger name these lines have always had (log lines stay as they were).
log = logging.getLogger("tlsproxy.workers")

WORKER_ARGV = (sys.executable, "-c", "from tlsproxy.worker import worker_main; raise SystemExit(worker_main())")
"""How the supervisor starts a worker process."""


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, pickled onto its stdin ahead of the command lines."""

    index: int
    config: ProxyConfig
    auth_key_pem: bytes | None
    unix_fds: dict[int, int]
    """route index -> the inherited fd of that route's listening Unix socket"""
    admin_path: str


def send_spec(pipe: BinaryIO, spec: WorkerSpec) -> None:
    """The supervisor's end: the spec, length-prefixed, on the worker's stdin."""
    payload = pickle.dumps(spec)
    pipe.write(struct.pack("!I", len(payload)) + payload)
    pipe.flush()


def read_spec(fd: int = 0) -> WorkerSpec:
    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = os.read(fd, count - len(data))
            if not chunk:
                raise EOFError("the supervisor closed the pipe before sending the worker's settings")
            data += chunk
        return data

    (length,) = struct.unpack("!I", exactly(4))
    spec = pickle.loads(exactly(length))  # noqa: S301 - from our own parent process, over a private pipe
    assert isinstance(spec, WorkerSpec)
    return spec


def worker_main() -> int:
    """Entry point of a worker process (started by Supervisor with WORKER_ARGV)."""
    spec = read_spec()
    setup_logging(spec.config.log_level, spec.config.log_format, worker=spec.index)
    try:
        return run_event_loop(serve_worker(spec), spec.config.event_loop)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2


async def serve_worker(spec: WorkerSpec) -> int:
    auth_key = None if spec.auth_key_pem is None else AuthRsaKey.from_private_pem(spec.auth_key_pem)
    sockets = {i: socket.socket(fileno=fd) for i, fd in spec.unix_fds.items()}
    proxy = Proxy(spec.config, auth_key, shared_sockets=sockets, reuse_port=True)
    stop = StopRequests(repeat_aborts=False)
    admin = AdminServer(proxy, UnixAddress(Path(spec.admin_path)), on_quit=stop.request_stop)
    service = ProxyService(proxy, spec.config.shutdown_grace,
                           announce=lambda: log.debug("worker %d serving", spec.index))
    stdin = os.fdopen(0, "rb", buffering=0, closefd=False)
    code = await run_until_stopped(service, stop, admin=admin, commands=stdin)
    remove_stale_socket(Path(spec.admin_path))
    try:  # the last one out, if the supervisor could not (it was killed)
        os.rmdir(Path(spec.admin_path).parent)
    except OSError:
        pass
    return code
