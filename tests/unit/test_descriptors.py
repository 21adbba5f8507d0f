"""tlsproxy/descriptors.py: the start-up figure and warning, telling exhaustion apart, the reserve."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.proxy import make_route
from tlsproxy import descriptors, upstream
from tlsproxy.descriptors import OpenFilesLimit, Reserve, descriptors_needed, is_exhaustion, startup_report
from tlsproxy.errors import OutOfDescriptorsError
from tlsproxy.outcome import Outcome


@dataclass
class R:
    name: str = "main"
    max_connections: int = 1000
    prewarm: int = 0
    upstream_pool: int = 0


def test_the_figure_says_when_the_soft_limit_was_raised() -> None:
    info, warning = startup_report(OpenFilesLimit(soft=1048576, hard=1048576, before=1024), [R()])
    assert info == "open files limit 1048576 (soft limit raised from 1024 to the hard limit)"
    assert warning is None
    info, _ = startup_report(OpenFilesLimit(soft=4096, hard=4096, before=4096), [R()])
    assert info == "open files limit 4096"
    info, _ = startup_report(OpenFilesLimit(soft=1024, hard=4096, before=1024, error="not permitted"), [R()])
    assert info == "open files limit 1024 (raising it to the hard limit 4096 failed: not permitted)"


def test_two_descriptors_per_connection_plus_prewarm_pool_and_spare() -> None:
    routes = [R("a", 1000, 0), R("b", 10, 4), R("c", 10, 0, 8)]
    assert descriptors_needed(routes) == descriptors.SPARE + 2000 + 20 + 4 + 20 + 8
    needed = descriptors_needed(routes)
    assert startup_report(OpenFilesLimit(needed, needed, needed), routes)[1] is None


def test_a_limit_below_max_connections_is_warned_about_with_the_figures() -> None:
    _, warning = startup_report(OpenFilesLimit(soft=1024, hard=1024, before=1024), [R("main", 1000, 0)])
    assert warning is not None
    fits = (1024 - descriptors.SPARE) // 2
    assert warning.startswith(f"open files limit 1024 fits about {fits} connections, but max_connections allows 1000")
    assert f"main 1000; 2 descriptors per connection, plus prewarm, upstream_pool and {descriptors.SPARE} spare: " \
           f"{2000 + descriptors.SPARE} needed" in warning
    assert "ERR 1040 'out of file descriptors'" in warning and "LimitNOFILE=" in warning
    _, warning = startup_report(OpenFilesLimit(soft=10, hard=10, before=10), [R()])
    assert warning is not None and "fits about 0 connections" in warning


def test_raising_the_soft_limit_in_this_process() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 64:
        pytest.skip("needs a finite hard limit of at least 64")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard // 2), hard))
        limit = descriptors.raise_open_files_limit()
        assert (limit.soft, limit.hard, limit.before) == (hard, hard, min(soft, hard // 2))
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        again = descriptors.raise_open_files_limit()
        assert (again.soft, again.before) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_exhaustion_is_emfile_or_enfile_only() -> None:
    assert is_exhaustion(OSError(errno.EMFILE, "Too many open files"))
    assert is_exhaustion(OSError(errno.ENFILE, "Too many open files in system"))
    assert is_exhaustion(OSError("Multiple exceptions: [Errno 24] Too many open files, [Errno 24] Too many open files"))
    assert not is_exhaustion(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
    assert not is_exhaustion(OSError("Multiple exceptions: [Errno 111] Connect call failed"))
    assert not is_exhaustion(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert not is_exhaustion(TimeoutError())


@pytest.fixture(autouse=True)
def fresh_shortage(monkeypatch: pytest.MonkeyPatch) -> None:
    """No shortage noted here leaks into the other tests' readiness (nor theirs into these)."""
    monkeypatch.setattr(descriptors, "shortage", descriptors.Shortage())


def test_pressure_follows_a_recent_exhaustion(monkeypatch: pytest.MonkeyPatch) -> None:
    assert descriptors.pressure() is None
    descriptors.note_exhausted()
    assert (descriptors.pressure() or "").startswith("out of file descriptors (limit ")
    monkeypatch.setattr(descriptors, "RECENT_SECONDS", 0.0)
    assert descriptors.pressure() is None
    monkeypatch.setattr(descriptors, "NEAR_LIMIT", descriptors.current_limit())
    assert "file descriptors open" in (descriptors.pressure() or "")


def test_the_reserve_holds_one_descriptor_and_gives_it_back() -> None:
    reserve = Reserve()
    assert not reserve.held and not reserve.release()
    before = len(os.listdir("/proc/self/fd"))
    assert reserve.restore() and reserve.held and reserve.restore()
    assert len(os.listdir("/proc/self/fd")) == before + 1
    assert reserve.release() and not reserve.held
    assert len(os.listdir("/proc/self/fd")) == before


def test_an_upstream_connect_out_of_descriptors_is_the_proxys_failure_and_not_retried() -> None:
    """EMFILE from the connect: at once (no retry within connect_retry_window), errno 1040, out_of_fds."""
    attempts: list[tuple[str, int]] = []

    async def out_of_descriptors(factory: Any, host: str, port: int) -> Any:
        attempts.append((host, port))
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    route = make_route(3306, connect_retry_window=5.0)
    with pytest.raises(OutOfDescriptorsError) as raised:
        asyncio.run(upstream.connect(route, asyncio.Protocol, conn_id=1, connector=out_of_descriptors))
    assert attempts == [("localhost", 3306)]
    error = raised.value
    assert (error.errno, error.metric_label) == (1040, Outcome.OUT_OF_FDS)
    assert error.client_message == f"tlsproxy: out of file descriptors (limit {descriptors.current_limit()})"
    assert descriptors.pressure() is not None
