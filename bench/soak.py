"""Soak test: many concurrent connections through tlsproxy for a long time, with steady reconnect
churn, every answer checked, and the proxy's memory sampled over time.

`python -m bench soak` (or `python -m bench.soak`) starts the bench world (bench/env.py: a MariaDB
with TLS and the real tlsproxy CLI in front of it, all on loopback), then runs one asyncio load
generator in this process (bench/myclient.py, mysql_native_password) against the proxy's TLS TCP
route (with `--upstream-pool N`, the route with `upstream_pool: N`: each reconnect logs in on the
upstream connection a client before it left, and the pool's events are read from /metrics):

* ramp: CONNECTIONS connections log in (at most LOGIN_CONCURRENCY logins in flight); the timed
  phase of DURATION seconds starts once all of them have logged in once;
* each connection, after each login, checks that its upstream leg is TLS (Ssl_cipher not empty),
  then does a random number of operations, each after a random pause (uniform 0 .. 2 x
  QUERY_INTERVAL), then quits and logs in again. The number of operations is uniform in
  1 .. 2L - 1 with L = CONNECTIONS / (RECONNECT_RATE x QUERY_INTERVAL), so the connections together
  reconnect about RECONNECT_RATE times a second (a little less: each operation also takes its own
  time); the first lifetime of each connection is drawn as if it were already under way;
* an operation is an echo (SELECT of a random 63-bit number, a random token and the connection's
  index, checked field by field) or, one time in BLOB_EVERY, a blob round trip: INSERT of random
  bytes with their SHA-256, SELECT of the bytes back with the server's SHA2() of them (both checked
  against the client's copy), DELETE of the row (exactly one row);
* every few seconds the proxy's VmRSS and fd count (and MariaDB's and this process's RSS) are
  sampled from /proc.

Any failure (connect, login, ERR packet, a wrong answer, a protocol violation, a disconnect, a
timeout) is counted by kind and the connection starts over after a short pause; zero are expected.
At the end the proxy's own counters (/metrics) are read and the blob table must be empty. The results
go to bench/results/<date>-soak/ (results.json, summary.md); the exit status is 1 if anything failed.
SIGTERM, SIGINT or an error stop everything the soak started and leave no results (bench/stopping.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import logging
import math
import os
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.env import BENCH_DATABASE, POOL_ROUTE, POOL_SIZE, BenchEnv
from bench.memory import settle, fd_count
from bench.model import RESULTS_DIR, SCENARIO_BY_NAME, SoakResults, SoakTotals
from bench.myclient import Connection, LoginError, Ok, ProtocolViolation, QueryError
from bench.procs import cpu_seconds, machine_info, rss_kib
from bench.soak_summary import memory_summary, summary_markdown
from bench.stopping import guarded, output_folder, run_async
from bench.proxy_metrics import scrape

ROUTE = "proxy_tls_tcp"
TABLE = f"{BENCH_DATABASE}.soak_blobs"
ERROR_EXAMPLES = 5
RETRY_PAUSE_S = 1.0
PROGRESS_EVERY_S = 30.0
FD_HEADROOM = 1000


@dataclass
class SoakConfig:
    connections: int = 2000
    duration_s: float = 600.0
    query_interval_s: float = 1.0  # mean pause before each operation of one connection
    reconnect_rate: float = 20.0  # target reconnects per second, all connections together
    blob_every: int = 20  # one operation in this many is a blob round trip
    blob_max_bytes: int = 16384
    sample_interval_s: float = 5.0
    login_concurrency: int = 64
    op_timeout_s: float = 30.0
    ramp_timeout_s: float = 300.0
    seed: int = field(default_factory=lambda: random.SystemRandom().getrandbits(32))
    upstream_pool: int = 0  # > 0: through the route with `upstream_pool: N` (bench/env.py's POOL_ROUTE)

    @property
    def mean_operations_per_login(self) -> float:
        return max(1.0, self.connections / (self.reconnect_rate * self.query_interval_s))

    @property
    def route(self) -> str:
        return POOL_ROUTE if self.upstream_pool else ROUTE


class DataMismatch(RuntimeError):
    """A query's answer is not what was sent."""


class UpstreamNotTls(RuntimeError):
    pass


def error_kind(error: BaseException, *, connecting: bool) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "login_timeout" if connecting else "timeout"
    if isinstance(error, LoginError):
        return "login"
    if isinstance(error, QueryError):
        return "query_error"
    if isinstance(error, DataMismatch):
        return "wrong_answer"
    if isinstance(error, UpstreamNotTls):
        return "upstream_not_tls"
    if isinstance(error, ProtocolViolation):
        return "protocol"
    if isinstance(error, (asyncio.IncompleteReadError, ConnectionError)):
        return "disconnected"
    if isinstance(error, OSError):
        return "connect" if connecting else "socket"
    return type(error).__name__


class LatencyHistogram:
    """Log-spaced buckets (4 per doubling, from 1 µs): bounded memory for millions of latencies."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.count = 0
        self.max_s = 0.0

    def add(self, seconds: float) -> None:
        self.counts[int(4 * math.log2(max(seconds * 1e6, 1.0)))] += 1
        self.count += 1
        self.max_s = max(self.max_s, seconds)

    def quantile_ms(self, q: float) -> float | None:
        if not self.count:
            return None
        rank, seen = q * self.count, 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return min(2 ** ((bucket + 1) / 4) / 1e3, self.max_s * 1e3)  # the bucket's upper edge
        return self.max_s * 1000

    def summary(self) -> dict[str, Any]:
        return {"n": self.count, "p50_ms": self.quantile_ms(0.5), "p99_ms": self.quantile_ms(0.99),
                "p999_ms": self.quantile_ms(0.999), "max_ms": self.max_s * 1000 if self.count else None}


@dataclass
class Stats:
    queries: int = 0
    operations: int = 0
    echo_checks: int = 0
    blob_checks: int = 0
    blob_bytes: int = 0
    tls_checks: int = 0
    login_attempts: int = 0
    logins: int = 0
    reconnects: int = 0  # logins after a connection's first
    open: int = 0
    max_open: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, list[str]] = field(default_factory=dict)
    query_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    login_latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def error(self, kind: str, error: BaseException, index: int) -> None:
        self.errors[kind] += 1
        examples = self.error_examples.setdefault(kind, [])
        if len(examples) < ERROR_EXAMPLES:
            examples.append(f"connection {index}: {error!r}")


class Soak:
    def __init__(self, config: SoakConfig, host: str, port: int, proxy_pid: int, server_pid: int,
                 progress: Callable[[str], None]) -> None:
        self.config, self.host, self.port = config, host, port
        self.proxy_pid, self.server_pid = proxy_pid, server_pid
        self.progress = progress
        self.stats = Stats()
        self.samples: list[dict[str, Any]] = []
        self.first_logins = 0
        self.started = 0.0
        self.ramp_end: float | None = None
        self.finished = 0.0
        self.deadline = 0.0
        self.login_slots: asyncio.Semaphore | None = None

    # ---- one connection ----------------------------------------------------------------------

    async def _login(self, index: int, first: bool) -> Connection:
        assert self.login_slots is not None
        stats = self.stats
        async with self.login_slots:
            stats.login_attempts += 1
            began = time.monotonic()
            connection = await asyncio.wait_for(Connection.open(self.host, self.port), self.config.op_timeout_s)
            stats.login_latency.add(time.monotonic() - began)
        stats.logins += 1
        stats.open += 1
        stats.max_open = max(stats.max_open, stats.open)
        if first:
            self.first_logins += 1
            if self.first_logins == self.config.connections:
                self._ramp_done()
        else:
            stats.reconnects += 1
        return connection

    def _ramp_done(self) -> None:
        self.ramp_end = time.monotonic()
        self.deadline = self.ramp_end + self.config.duration_s
        self.progress(f"soak: all {self.config.connections} connections logged in after "
                      f"{self.ramp_end - self.started:.1f}s; {self.config.duration_s:g}s of churn from now")

    async def _query(self, connection: Connection, sql: str) -> Ok | list[list[bytes | None]]:
        began = time.monotonic()
        result = await asyncio.wait_for(connection.query(sql), self.config.op_timeout_s)
        self.stats.query_latency.add(time.monotonic() - began)
        self.stats.queries += 1
        return result

    async def _check_tls(self, connection: Connection) -> None:
        rows = await self._query(connection, "SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        if not isinstance(rows, list) or len(rows) != 1 or rows[0][0] != b"Ssl_cipher":
            raise DataMismatch(f"SHOW SESSION STATUS LIKE 'Ssl_cipher' gave {rows!r}")
        if not rows[0][1]:
            raise UpstreamNotTls("the proxy's upstream session has no TLS cipher")
        self.stats.tls_checks += 1

    async def _echo(self, connection: Connection, rng: random.Random, index: int) -> None:
        number, token = rng.getrandbits(63), rng.randbytes(8).hex()
        rows = await self._query(connection, f"SELECT {number}, '{token}', {index}")
        expected = [[str(number).encode(), token.encode(), str(index).encode()]]
        if rows != expected:
            raise DataMismatch(f"echo: sent {expected!r}, got {rows!r}")
        self.stats.echo_checks += 1

    async def _blob(self, connection: Connection, rng: random.Random, index: int) -> None:
        data = rng.randbytes(rng.randint(1, self.config.blob_max_bytes))
        digest = hashlib.sha256(data).hexdigest()
        inserted = await self._query(
            connection, f"INSERT INTO {TABLE} (conn, data, sha) VALUES ({index}, X'{data.hex()}', '{digest}')")
        if not isinstance(inserted, Ok) or inserted.affected_rows != 1 or inserted.last_insert_id <= 0:
            raise DataMismatch(f"blob INSERT answered {inserted!r}")
        row_id = inserted.last_insert_id
        rows = await self._query(connection, f"SELECT data, SHA2(data, 256), sha, conn FROM {TABLE} WHERE id = {row_id}")
        if not isinstance(rows, list) or len(rows) != 1:
            raise DataMismatch(f"blob SELECT of row {row_id} gave {len(rows) if isinstance(rows, list) else rows!r} rows")
        got, server_digest, stored_digest, conn = rows[0]
        if got != data:
            raise DataMismatch(f"blob of row {row_id}: {len(data)} bytes sent, {len(got or b'')} different bytes back")
        if (server_digest, stored_digest, conn) != (digest.encode(), digest.encode(), str(index).encode()):
            raise DataMismatch(f"blob of row {row_id}: SHA2/sha/conn {server_digest!r} {stored_digest!r} {conn!r}, "
                               f"expected {digest} and {index}")
        deleted = await self._query(connection, f"DELETE FROM {TABLE} WHERE id = {row_id}")
        if not isinstance(deleted, Ok) or deleted.affected_rows != 1:
            raise DataMismatch(f"blob DELETE of row {row_id} answered {deleted!r}")
        self.stats.blob_checks += 1
        self.stats.blob_bytes += len(data)

    async def _pause(self, seconds: float) -> bool:
        """Sleep up to `seconds`, not past the deadline; False once the deadline has passed."""
        now = time.monotonic()
        if now >= self.deadline:
            return False
        await asyncio.sleep(min(seconds, self.deadline - now))
        return time.monotonic() < self.deadline

    async def _worker(self, index: int) -> None:
        config, stats = self.config, self.stats
        rng = random.Random(config.seed * 1_000_003 + index)
        mean = config.mean_operations_per_login
        most = max(1, round(2 * mean - 1))
        first = True
        while time.monotonic() < self.deadline:
            connection = None
            connecting = True
            # The first lifetime is the remaining part of one already under way (the renewal process's
            # stationary residual, density falling linearly from 1/L to 0 over 0 .. 2L): otherwise all
            # connections would start their first lifetime together and churn would build up only slowly.
            lifetime = (max(1, min(most, round(2 * mean * (1 - math.sqrt(1 - rng.random()))))) if first
                        else rng.randint(1, most))
            try:
                connection = await self._login(index, first)
                first, connecting = False, False
                await self._check_tls(connection)
                for _ in range(lifetime):
                    if not await self._pause(rng.uniform(0, 2 * config.query_interval_s)):
                        break
                    if rng.randrange(config.blob_every) == 0:
                        await self._blob(connection, rng, index)
                    else:
                        await self._echo(connection, rng, index)
                    stats.operations += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, LoginError, QueryError,
                    DataMismatch, UpstreamNotTls, ProtocolViolation) as error:
                stats.error(error_kind(error, connecting=connecting), error, index)
                await self._pause(RETRY_PAUSE_S)
            finally:
                if connection is not None:
                    stats.open -= 1
                    await connection.close()

    # ---- the whole run -----------------------------------------------------------------------

    def sample(self, phase: str) -> dict[str, Any]:
        stats = self.stats
        point = {"t": round(time.monotonic() - self.started, 2), "phase": phase,
                 "proxy_rss_kib": rss_kib(self.proxy_pid), "proxy_fds": fd_count(self.proxy_pid),
                 "proxy_cpu_s": round(cpu_seconds(self.proxy_pid), 2),
                 "server_rss_kib": rss_kib(self.server_pid), "client_rss_kib": rss_kib(os.getpid()),
                 "open": stats.open, "queries": stats.queries, "reconnects": stats.reconnects,
                 "errors": sum(stats.errors.values())}
        self.samples.append(point)
        return point

    async def _sampler(self) -> None:
        last_progress = time.monotonic()
        while True:
            await asyncio.sleep(self.config.sample_interval_s)
            point = self.sample("steady" if self.ramp_end is not None else "ramp")
            if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                last_progress = time.monotonic()
                self.progress(f"soak: {point['open']} open, {point['queries']} queries, {point['reconnects']} "
                              f"reconnects, {point['errors']} errors; proxy RSS {point['proxy_rss_kib']} KiB, "
                              f"{point['proxy_fds']} fds")

    async def run(self) -> None:
        config = self.config
        self.login_slots = asyncio.Semaphore(config.login_concurrency)
        self.started = time.monotonic()
        self.deadline = self.started + config.ramp_timeout_s + config.duration_s
        self.sample("before")
        sampler = asyncio.create_task(self._sampler())
        ramp_deadline = self.started + config.ramp_timeout_s
        workers = [asyncio.create_task(self._worker(index)) for index in range(config.connections)]
        try:
            while self.ramp_end is None and time.monotonic() < ramp_deadline:
                await asyncio.sleep(0.2)
            if self.ramp_end is None:  # not every connection got in: stop, the results say so
                self.progress(f"soak: only {self.first_logins} of {config.connections} connections logged in "
                              f"within {config.ramp_timeout_s:g}s; stopping")
                self.deadline = time.monotonic()
            # workers stop at the deadline, after at most one operation in flight (op_timeout_s); no
            # gather() here: cancelled (a signal), its future's error would go unread
            timeout = max(0.0, self.deadline - time.monotonic()) + 3 * config.op_timeout_s
            done, pending = await asyncio.wait(workers, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION)
            for worker in done:
                worker.result()  # a worker's unexpected error, as gather() would raise it
            if pending:
                raise asyncio.TimeoutError(f"{len(pending)} connections still busy {timeout:.0f}s after the deadline")
        finally:
            sampler.cancel()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(sampler, *workers, return_exceptions=True)
        self.finished = time.monotonic()
        self.sample("end")


POOL_EVENTS = "tlsproxy_upstream_pool_events_total"


def proxy_counters(env: BenchEnv, route: str = ROUTE) -> dict[str, float]:
    wanted = ("tlsproxy_connections_accepted_total", "tlsproxy_connections_refused_total",
              "tlsproxy_handshake_failures_total", "tlsproxy_connections_closed_total", "tlsproxy_connections_active",
              POOL_EVENTS, "tlsproxy_upstream_pool_idle")
    counters: dict[str, float] = {}
    for (name, labels), value in sorted(scrape(env).items()):
        label_map = dict(labels)
        if name in wanted and label_map.get("route") == route:
            detail = ",".join(f"{key}={item}" for key, item in labels if key != "route")
            counters[f"{name}{{{detail}}}" if detail else name] = value
    return counters


def nofile_limit(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_limits(env: BenchEnv, config: SoakConfig) -> dict[str, Any]:
    """Every limit between here and 2,000 connections, read from the running processes; a clear error
    before the run if one is too low."""
    import resource

    assert env.server is not None and env.server.pid is not None and env.proxy_process is not None
    max_connections, open_files = (int(value) for value in
                                   env.server.sql("SELECT @@max_connections, @@open_files_limit")[0])
    limits = {"client_nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
              "proxy_nofile": nofile_limit(env.proxy_process.pid), "mariadb_nofile": nofile_limit(env.server.pid),
              "mariadb_max_connections": max_connections, "mariadb_open_files_limit": open_files,
              "proxy_route_max_connections": env.route_max_connections,
              "somaxconn": int(Path("/proc/sys/net/core/somaxconn").read_text())}
    needs = {"client_nofile": config.connections + FD_HEADROOM,
             "proxy_nofile": 2 * config.connections + FD_HEADROOM,
             "mariadb_max_connections": config.connections + config.upstream_pool + 10,
             "mariadb_open_files_limit": config.connections + FD_HEADROOM,
             "proxy_route_max_connections": config.connections + config.login_concurrency}
    short = [f"{name} is {limits[name]}, needs {need}" for name, need in needs.items()
             if limits[name] is not None and limits[name] < need]
    if short:
        raise SystemExit(f"soak: limits too low for {config.connections} connections: {'; '.join(short)}")
    return limits


def run(config: SoakConfig, out: Path, *, event_loop: str = "uvloop") -> SoakResults:
    began = time.time()
    out.mkdir(parents=True, exist_ok=True)

    def progress(message: str) -> None:
        print(f"[{time.time() - began:7.1f}s] {message}", flush=True)

    progress(f"soak: starting MariaDB with TLS and tlsproxy for {config.connections} connections")
    with BenchEnv.create(event_loop=event_loop, max_connections=max(6000, 2 * config.connections + 100),
                         pool_size=config.upstream_pool or POOL_SIZE) as env:
        assert env.server is not None and env.server.pid is not None and env.proxy_process is not None
        limits = check_limits(env, config)
        # insert ids from 1000: every INSERT's OK carries a 3-byte length-encoded last_insert_id
        env.server.sql(f"CREATE TABLE {TABLE} (id BIGINT AUTO_INCREMENT PRIMARY KEY, conn INT NOT NULL, "
                       "data MEDIUMBLOB NOT NULL, sha CHAR(64) NOT NULL) ENGINE=InnoDB AUTO_INCREMENT=1000")
        # durability is not what is tested: one fsync per blob INSERT/DELETE would make the disk the subject
        env.server.sql("SET GLOBAL innodb_flush_log_at_trx_commit = 2")
        endpoint = env.endpoint(SCENARIO_BY_NAME[config.route])
        assert endpoint.host is not None and endpoint.port is not None
        counters_before = proxy_counters(env, config.route)  # the start-up probes of the listening port count too
        soak = Soak(config, endpoint.host, endpoint.port, env.proxy_process.pid, env.server.pid, progress)
        _run_loop(soak.run())
        stats = soak.stats
        progress(f"soak: done: {stats.queries} queries, {stats.reconnects} reconnects, "
                 f"{sum(stats.errors.values())} errors; waiting for the proxy to close its sessions")
        run_async(settle(env.proxy_process.pid))
        soak.sample("after_close")
        leftover = int(env.server.sql(f"SELECT COUNT(*) FROM {TABLE}")[0][0])
        counters = {name: value if name.endswith(("_active", "_idle")) else value - counters_before.get(name, 0.0)
                    for name, value in proxy_counters(env, config.route).items()}
        versions = env.versions()
    results = _results(config, soak, limits, counters, leftover, versions, event_loop, began)
    results.save(out / "results.json")
    (out / "summary.md").write_text(summary_markdown(results), encoding="utf-8")
    progress(f"soak: {'OK' if results.ok else 'FAILED'}; wrote {out / 'results.json'} and {out / 'summary.md'}")
    return results


def _run_loop(coroutine: Any) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        run_async(coroutine)
        return
    run_async(coroutine, loop_factory=uvloop.new_event_loop)


def _results(config: SoakConfig, soak: Soak, limits: dict[str, Any], counters: dict[str, Any], leftover: int,
             versions: dict[str, str], event_loop: str, began: float) -> SoakResults:
    stats = soak.stats
    steady_s = soak.finished - soak.ramp_end if soak.ramp_end is not None else 0.0
    errors = sum(stats.errors.values())
    accepted = counters.get("tlsproxy_connections_accepted_total", 0.0)
    totals = SoakTotals(
        connections=config.connections, max_open=stats.max_open,
        ramp_s=round(soak.ramp_end - soak.started, 2) if soak.ramp_end is not None else None,
        steady_s=round(steady_s, 1), queries=stats.queries, operations=stats.operations,
        echo_checks=stats.echo_checks, blob_checks=stats.blob_checks, blob_bytes=stats.blob_bytes,
        tls_checks=stats.tls_checks, login_attempts=stats.login_attempts, logins=stats.logins,
        reconnects=stats.reconnects,
        reconnects_per_s=round(stats.reconnects / steady_s, 2) if steady_s else None,
        queries_per_s=round(stats.queries / steady_s, 1) if steady_s else None,
        errors=errors, errors_by_kind=dict(stats.errors), error_examples=stats.error_examples,
        blob_rows_left=leftover,
    )
    problems = [f"{errors} errors"] if errors else []
    if soak.ramp_end is None:
        problems.append(f"only {soak.first_logins} of {config.connections} connections logged in")
    if leftover:
        problems.append(f"{leftover} blob rows left in {TABLE}")
    if accepted != stats.login_attempts:
        problems.append(f"the proxy accepted {accepted:g} connections, the client made {stats.login_attempts}")
    failed = {name: value for name, value in counters.items() if value and (
        name.startswith(("tlsproxy_handshake_failures", "tlsproxy_connections_refused"))
        or (name.startswith("tlsproxy_connections_closed") and "outcome=ok" not in name)
        or name in {f"{POOL_EVENTS}{{outcome={bad}}}" for bad in ("reset_failed", "denied", "closed_by_server", "in_flight")})}
    if failed:
        problems.append("the proxy counted failures: " + ", ".join(f"{name} {value:g}" for name, value in failed.items()))
    if stats.tls_checks != stats.logins:
        problems.append(f"{stats.logins} logins but {stats.tls_checks} upstream-TLS checks")
    if config.upstream_pool and stats.reconnects and not counters.get(f"{POOL_EVENTS}{{outcome=reused}}"):
        problems.append("the upstream pool was on but no client logged in on a pooled connection")
    return SoakResults(
        what="soak: concurrent connections through tlsproxy's TLS TCP route with reconnect churn, every answer "
             "checked, the proxy's RSS sampled over time"
             + (f"; upstream pool of {config.upstream_pool} on" if config.upstream_pool else ""),
        route=config.route, config={**asdict(config), "mean_operations_per_login": config.mean_operations_per_login},
        event_loop=event_loop, client_event_loop="uvloop", started=began, finished=time.time(),
        machine=machine_info(), versions=versions, limits=limits, totals=totals,
        latency={"query": stats.query_latency.summary(), "login": stats.login_latency.summary()},
        proxy_rss=memory_summary(soak.samples, "proxy_rss_kib"),
        server_rss=memory_summary(soak.samples, "server_rss_kib"),
        client_rss=memory_summary(soak.samples, "client_rss_kib"),
        proxy_counters=counters, samples=soak.samples, problems=problems, ok=not problems,
    )


# ---- command line -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SoakConfig()
    parser.add_argument("--connections", type=int, default=defaults.connections, help="concurrent connections (%(default)s)")
    parser.add_argument("--duration", type=float, default=defaults.duration_s,
                        help="seconds of churn after all connections are in (%(default)s)")
    parser.add_argument("--query-interval", type=float, default=defaults.query_interval_s,
                        help="mean pause in seconds before each operation of a connection (%(default)s)")
    parser.add_argument("--reconnect-rate", type=float, default=defaults.reconnect_rate,
                        help="target reconnects per second, all connections together (%(default)s)")
    parser.add_argument("--blob-every", type=int, default=defaults.blob_every,
                        help="one operation in this many is a blob round trip (%(default)s)")
    parser.add_argument("--sample-interval", type=float, default=defaults.sample_interval_s,
                        help="seconds between RSS samples (%(default)s)")
    parser.add_argument("--seed", type=int, help="random seed (default: a random one, recorded in the results)")
    parser.add_argument("--out", type=Path, help="output folder (default bench/results/<date>-soak/)")
    parser.add_argument("--event-loop", choices=["uvloop", "asyncio"], default="uvloop", help="the proxy's event loop")
    parser.add_argument("--upstream-pool", type=int, default=0, metavar="N",
                        help="through a route with `upstream_pool: N`: clients that quit leave their upstream "
                             "connection for the next login (default 0: the plain TLS route)")


def config_from(args: argparse.Namespace) -> SoakConfig:
    config = SoakConfig(connections=args.connections, duration_s=args.duration, query_interval_s=args.query_interval,
                        reconnect_rate=args.reconnect_rate, blob_every=args.blob_every,
                        sample_interval_s=args.sample_interval, upstream_pool=args.upstream_pool)
    if config.upstream_pool < 0:
        raise SystemExit("soak: --upstream-pool must be 0 (off) or more")
    if args.seed is not None:
        config.seed = args.seed
    for name in ("connections", "duration_s", "query_interval_s", "reconnect_rate", "blob_every", "sample_interval_s"):
        if getattr(config, name) <= 0:
            raise SystemExit(f"soak: --{name.removesuffix('_s').replace('_', '-')} must be positive")
    return config


def command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or RESULTS_DIR / f"{datetime.date.today().isoformat()}-soak"
    config = config_from(args)
    with output_folder(out):  # an interrupted or failed soak leaves no results behind
        results = run(config, out, event_loop=args.event_loop)
    print(summary_markdown(results).split("## Proxy RSS over time")[0].rstrip())
    return 0 if results.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return guarded("bench soak", lambda: command(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
