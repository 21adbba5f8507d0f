"""File descriptors: the open files limit (RLIMIT_NOFILE), what the routes need of it, and running out.

Every proxied connection holds two descriptors (the client's and the upstream's). Many hosts and
service managers start processes with a soft limit of 1024 (or less) and a much higher hard limit,
while `max_connections` 1000 needs over 2,000: at start the proxy raises its soft limit to the hard
limit, as Go's runtime does for every Go program (cloud-sql-proxy included), logs the figure, and
warns when the routes' `max_connections` do not fit in it.

When descriptors run out anyway, an accept or a connect fails with EMFILE (the process's limit) or
ENFILE (the system's). That is the proxy's own failure, never the upstream's: the listeners refuse the
client with ERR 1040 from a reserved descriptor (acceptor.py), an upstream connect is not retried
(upstream.py), and /readiness is 503 until descriptors are free again (`pressure`).

Descriptors are the process's, so the state here is too (one per process: the single process, or
each worker of `workers: N`). Imports nothing from the package.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import time
from dataclasses import dataclass
from typing import Iterable, Protocol

EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
PER_CONNECTION = 2
"""The client's descriptor and the upstream's."""
SPARE = 32
"""Descriptors a process holds besides its connections: standard streams, the event loop's own, the
listeners, the admin listener and its requests, the reserve, the resolver's and log files."""
RECENT_SECONDS = 1.0
"""/readiness stays 503 this long after an accept or connect last ran out of descriptors."""
NEAR_LIMIT = 8
"""/readiness is 503 while fewer descriptors than this are left."""
RESERVE_PATH = "/dev/null"


class RouteLimits(Protocol):
    name: str
    max_connections: int
    prewarm: int
    upstream_pool: int


@dataclass(frozen=True)
class OpenFilesLimit:
    soft: int
    """The soft limit now (after raising it)."""
    hard: int
    before: int
    """The soft limit the process started with."""
    error: str = ""
    """Why raising it failed, if it did."""


def raise_open_files_limit() -> OpenFilesLimit:
    """Raise the soft RLIMIT_NOFILE to the hard limit (what Go's runtime does at start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return OpenFilesLimit(soft, hard, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        return OpenFilesLimit(soft, hard, soft, error=str(exc))
    return OpenFilesLimit(hard, hard, soft)


def descriptors_needed(routes: Iterable[RouteLimits]) -> int:
    """Descriptors for every route at max_connections, with its prewarmed and parked connections, and the
    spare."""
    return SPARE + sum(route.max_connections * PER_CONNECTION + _held(route) for route in routes)


def _held(route: RouteLimits) -> int:
    """Upstream connections a route holds with no client: prewarmed and parked ones."""
    return route.prewarm + route.upstream_pool


def startup_report(limit: OpenFilesLimit, routes: Iterable[RouteLimits]) -> tuple[str, str | None]:
    """The INFO line about the open files limit, and a warning when the routes' max_connections do not
    fit in it (None when they do)."""
    routes = list(routes)
    figure = "unlimited" if limit.soft == resource.RLIM_INFINITY else str(limit.soft)
    if limit.error:
        info = f"open files limit {figure} (raising it to the hard limit {limit.hard} failed: {limit.error})"
    elif limit.soft != limit.before:
        info = f"open files limit {figure} (soft limit raised from {limit.before} to the hard limit)"
    else:
        info = f"open files limit {figure}"
    needed = descriptors_needed(routes)
    if limit.soft == resource.RLIM_INFINITY or needed <= limit.soft:
        return info, None
    allowed = sum(route.max_connections for route in routes)
    fits = max(0, (limit.soft - SPARE - sum(_held(route) for route in routes)) // PER_CONNECTION)
    detail = ", ".join(f"{route.name} {route.max_connections}" for route in routes)
    warning = (f"open files limit {figure} fits about {fits} connections, but max_connections allows {allowed} "
               f"({detail}; {PER_CONNECTION} descriptors per connection, plus prewarm, upstream_pool and {SPARE} spare: {needed} "
               f"needed). Clients past the limit get ERR 1040 'out of file descriptors'. Raise the hard limit "
               f"(LimitNOFILE= in a systemd unit, ulimit -Hn, the container runtime's nofile ulimit) or lower "
               f"max_connections.")
    return info, warning


def current_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def exhausted_message() -> str:
    """What a client refused for want of a descriptor is told (after "tlsproxy: ")."""
    return f"out of file descriptors (limit {current_limit()})"


def is_exhaustion(exc: BaseException) -> bool:
    """An OSError that means the process (EMFILE) or the system (ENFILE) is out of descriptors. asyncio
    and uvloop keep the errno of a connect that failed alike on every address, not of a mix."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in EXHAUSTION_ERRNOS:
        return True
    if isinstance(exc, socket.gaierror):  # the resolver could not open /etc/hosts or its socket
        return exc.errno == getattr(socket, "EAI_SYSTEM", None) and open_descriptors() is None
    text = str(exc)
    return exc.errno is None and (os.strerror(errno.EMFILE) in text or os.strerror(errno.ENFILE) in text)


# ---- running out: the process's state ------------------------------------------------------------

class Shortage:
    """When an accept or a connect last failed for want of a descriptor."""

    def __init__(self) -> None:
        self.last = float("-inf")

    def seconds_since(self) -> float:
        return time.monotonic() - self.last


shortage = Shortage()
"""The process's (a test swaps in a fresh one)."""


def note_exhausted() -> None:
    """An accept or a connect just failed for want of a descriptor."""
    shortage.last = time.monotonic()


def open_descriptors() -> int | None:
    """Descriptors open in this process now (None when even counting them needs one too many)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own
    except OSError as exc:
        if exc.errno in EXHAUSTION_ERRNOS:
            return None
        return 0  # no /proc: only the recent-failure test applies


def pressure() -> str | None:
    """Why the process cannot take new connections now for want of descriptors, or None."""
    limit = current_limit()
    since = shortage.seconds_since()
    if since < RECENT_SECONDS:
        return f"out of file descriptors (limit {limit}) {since:.1f}s ago"
    count = open_descriptors()
    if count is None:
        return f"out of file descriptors (limit {limit})"
    if limit != resource.RLIM_INFINITY and count > limit - NEAR_LIMIT:
        return f"{count} of {limit} file descriptors open"
    return None


class Reserve:
    """One descriptor held back so that a listener out of descriptors can still accept a client to tell
    it why before closing it (the classic event-server trick: libuv and nginx do the same)."""

    def __init__(self) -> None:
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def restore(self) -> bool:
        if self._fd is None:
            try:
                self._fd = os.open(RESERVE_PATH, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
        return True

    def release(self) -> bool:
        """Give the descriptor back to the process; False if none was held."""
        if self._fd is None:
            return False
        os.close(self._fd)
        self._fd = None
        return True


reserve = Reserve()
"""The process's reserve, shared by its client listeners."""
admin_reserve = Reserve()
"""The admin listener's, lent to one request at a time while descriptors are short."""
