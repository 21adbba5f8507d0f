"""Proxy memory per idle connection: the tlsproxy process's RSS with 0, N1, N2, ... idle, proxied,
*authenticated* connections through its TLS TCP route (scenario proxy_tls_tcp), then after closing
them all.

The proxy is restarted first (same configuration) so the numbers do not depend on what ran before.
The clients are one asyncio program in this process (bench/myclient.py), at most CONCURRENCY logins
in flight, each one checked to end in OK. Connections are added cumulatively (0 -> N1 -> N2); every
point is read after the proxy's fd count has settled. A few connections are opened and closed before
the 0 point so that one-time allocations of the first connection (lazy imports, the TLS context's
first use) are not charged to the slope. After closing all, the largest count is opened once more
("reopened"): the RSS of a proxy that has served that many connections before, not a fresh one.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from bench.env import BENCH_USER, BenchEnv
from bench.model import SCENARIO_BY_NAME, RunSize
from bench.myclient import COM_QUIT, NATIVE_PASSWORD, LoginError, login
from bench.procs import rss_kib
from bench.stopping import run_async
from tlsproxy.mysql.codec import encode_frame

SCENARIO = "proxy_tls_tcp"
CONCURRENCY = 100
WARMUP_CONNECTIONS = 20
LOGIN_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 30.0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, PermissionError):
        return -1


async def settle(pid: int, target_fds: int | None = None, timeout: float = SETTLE_TIMEOUT_S) -> int:
    """Wait until the proxy's fd count stops changing (and reaches `target_fds` when given)."""
    deadline = time.monotonic() + timeout
    last, stable = fd_count(pid), 0
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = fd_count(pid)
        stable = stable + 1 if now == last else 0
        last = now
        if stable >= 3 and (target_fds is None or now <= target_fds):
            break
    return last


class _Clients:
    def __init__(self, host: str, port: int, concurrency: int) -> None:
        self.host, self.port = host, port
        self.semaphore = asyncio.Semaphore(concurrency)
        self.open: list[asyncio.StreamWriter] = []
        self._readers: list[asyncio.StreamReader] = []

    async def _one(self) -> None:
        async with self.semaphore:
            reader, writer = await asyncio.wait_for(login(self.host, self.port), LOGIN_TIMEOUT_S)
        self.open.append(writer)
        self._readers.append(reader)

    async def grow_to(self, count: int) -> None:
        missing = count - len(self.open)
        if missing <= 0:
            return
        results = await asyncio.gather(*(self._one() for _ in range(missing)), return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise LoginError(f"{len(failures)} of {missing} logins through the proxy failed; first: {failures[0]!r}")

    async def close_all(self) -> None:
        for writer in self.open:
            try:
                writer.write(encode_frame(0, COM_QUIT))
            except (ConnectionError, RuntimeError):
                pass
            writer.close()
        for writer in self.open:
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        self.open.clear()
        self._readers.clear()


def _point(env: BenchEnv, proxy_pid: int, connections: int, open_seconds: float, fds: int) -> dict[str, Any]:
    assert env.server is not None and env.server.pid is not None
    return {"connections": connections, "proxy_rss_kib": rss_kib(proxy_pid), "proxy_fds": fds,
            "server_rss_kib": rss_kib(env.server.pid), "open_seconds": open_seconds}


async def _measure(env: BenchEnv, counts: list[int], progress: Callable[[str], None]) -> dict[str, Any]:
    assert env.proxy_process is not None
    pid = env.proxy_process.pid
    endpoint = env.endpoint(SCENARIO_BY_NAME[SCENARIO])
    assert endpoint.host is not None and endpoint.port is not None
    clients = _Clients(endpoint.host, endpoint.port, CONCURRENCY)
    # warm-up: one-time allocations of the first connections are not per-connection memory
    await clients.grow_to(WARMUP_CONNECTIONS)
    await clients.close_all()
    base_fds = await settle(pid)
    points = []
    try:
        for count in counts:
            started = time.monotonic()
            await clients.grow_to(count)
            open_seconds = time.monotonic() - started
            fds = await settle(pid)
            point = _point(env, pid, count, open_seconds, fds)
            points.append(point)
            progress(f"memory: {count} idle proxied connections: proxy RSS {point['proxy_rss_kib']} KiB, "
                     f"{fds} fds (opened in {open_seconds:.1f}s)")
    finally:
        started = time.monotonic()
        await clients.close_all()
    fds = await settle(pid, target_fds=base_fds)
    after = _point(env, pid, 0, 0.0, fds)
    after["close_seconds"] = time.monotonic() - started
    del after["open_seconds"]
    progress(f"memory: after closing all: proxy RSS {after['proxy_rss_kib']} KiB, {fds} fds")
    # The same number again in the same process: freed memory is not all reused (allocator retention),
    # so a proxy that has already served that many connections sits higher than a fresh one.
    largest = max(counts)
    reopened = None
    if largest > 0:
        try:
            started = time.monotonic()
            await clients.grow_to(largest)
            open_seconds = time.monotonic() - started
            reopened = _point(env, pid, largest, open_seconds, await settle(pid))
            progress(f"memory: {largest} again after closing: proxy RSS {reopened['proxy_rss_kib']} KiB")
        finally:
            await clients.close_all()
            await settle(pid, target_fds=base_fds)
    return {"base_fds": base_fds, "points": points, "after_close": after, "reopened": reopened}


def _slopes(points: list[dict[str, Any]], key: str) -> dict[str, Any]:
    zero = next((point for point in points if point["connections"] == 0), None)
    per_connection: dict[str, float] = {}
    marginal: dict[str, float] = {}
    previous = None
    for point in points:
        if zero is not None and point["connections"] > 0:
            per_connection[str(point["connections"])] = (point[key] - zero[key]) / point["connections"]
        if previous is not None and point["connections"] > previous["connections"]:
            marginal[f"{previous['connections']}->{point['connections']}"] = (
                (point[key] - previous[key]) / (point["connections"] - previous["connections"]))
        previous = point
    return {"vs_0": per_connection, "marginal": marginal}


def run(env: BenchEnv, size: RunSize, progress: Callable[[str], None]) -> dict[str, Any]:
    started = time.monotonic()
    counts = sorted(set(size.idle_connections) | {0})
    progress(f"memory: proxy RSS at {', '.join(map(str, counts))} idle proxied connections (fresh proxy process)")
    # A fresh proxy: what ran before (thousands of connections in the workloads) leaves allocator state
    # that would make the 0 point and the slope depend on the run's history.
    env.start_proxy()
    measured = run_async(_measure(env, counts, progress))
    points = measured["points"]
    result = {
        "what": "tlsproxy process RSS (VmRSS) with idle, authenticated connections through its TLS TCP route",
        "scenario": SCENARIO, "user": BENCH_USER, "auth_plugin": NATIVE_PASSWORD, "concurrency": CONCURRENCY,
        "warmup_connections": WARMUP_CONNECTIONS, "event_loop": env.event_loop, "fresh_proxy": True,
        "base_fds": measured["base_fds"], "points": points,
        "kib_per_connection": _slopes(points, "proxy_rss_kib"),
        "server_kib_per_connection": _slopes(points, "server_rss_kib"),
        "after_close": measured["after_close"],
        "reopened": measured["reopened"],
        "seconds": time.monotonic() - started,
    }
    largest = max(counts)
    result["kib_per_connection_at_largest"] = result["kib_per_connection"]["vs_0"].get(str(largest), float("nan"))
    for count, slope in result["kib_per_connection"]["vs_0"].items():
        progress(f"memory: {slope:.1f} KiB per idle proxied connection at {count}")
    return result


