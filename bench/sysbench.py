"""Run sysbench against one endpoint and read its result: events, queries, latency percentiles (from
its histogram) and the client's own CPU (from the child's rusage)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.env import Endpoint

LUA_DIR = Path(__file__).parent / "lua"


@dataclass
class SysbenchResult:
    events: int
    queries: int
    seconds: float
    latencies_ms: list[tuple[float, int]]  # histogram: (value, count)
    client_cpu_s: float
    output: str

    def percentile(self, fraction: float) -> float:
        total = sum(count for _, count in self.latencies_ms)
        if not total:
            return float("nan")
        threshold = fraction * total
        running = 0
        for value, count in self.latencies_ms:
            running += count
            if running >= threshold:
                return value
        return self.latencies_ms[-1][0]


_HISTOGRAM_LINE = re.compile(r"^\s*([0-9.]+)\s*\|[*\s]*\s(\d+)\s*$")
_TOTAL_TIME = re.compile(r"total time:\s*([0-9.]+)s")
_EVENTS = re.compile(r"total number of events:\s*(\d+)")
_QUERIES = re.compile(r"queries:\s*(\d+)\s")


def run_sysbench(test: str, endpoint: Endpoint, *, client_tls: bool, threads: int, seconds: float,
                 workdir: Path, events: int = 0, options: dict[str, str | int] | None = None,
                 timeout: float = 600) -> SysbenchResult:
    """`test` is a bundled sysbench test (oltp_point_select) or a script name in bench/lua/."""
    script = str(LUA_DIR / f"{test}.lua") if (LUA_DIR / f"{test}.lua").exists() else test
    argv = ["sysbench", script, *_connection_args(endpoint), f"--mysql-ssl={'on' if client_tls else 'off'}", f"--threads={threads}",
            f"--time={max(1, round(seconds)) if not events else 0}", f"--events={events}",
            "--histogram=on", "--percentile=99", "--rand-type=uniform", "--db-ps-mode=disable"]
    for key, value in (options or {}).items():
        argv.append(f"--{key}={value}")
    argv.append("run")
    started = time.monotonic()
    process = subprocess.Popen(argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert process.stdout is not None
        output = process.stdout.read().decode(errors="replace")
        _, status, rusage = os.wait4(process.pid, 0)
    finally:
        if process.poll() is None:
            process.kill()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 or "FATAL" in output:
        raise SysbenchError(f"sysbench failed ({_shown(argv)}):\n{output[-3000:]}", output)
    histogram = [(float(m.group(1)), int(m.group(2))) for m in map(_HISTOGRAM_LINE.match, output.splitlines()) if m]
    total = _TOTAL_TIME.search(output)
    event_count = _EVENTS.search(output)
    queries = _QUERIES.search(output)
    return SysbenchResult(
        events=int(event_count.group(1)) if event_count else 0,
        queries=int(queries.group(1)) if queries else 0,
        seconds=float(total.group(1)) if total else time.monotonic() - started,
        latencies_ms=histogram,
        client_cpu_s=rusage.ru_utime + rusage.ru_stime,
        output=output,
    )


def prepare_tables(endpoint: Endpoint, *, table_size: int, workdir: Path, client_tls: bool = False,
                   command: str = "prepare") -> None:
    """sysbench's table sbtest1 (`command` "cleanup": dropped again)."""
    argv = ["sysbench", "oltp_point_select", *_connection_args(endpoint), f"--mysql-ssl={'on' if client_tls else 'off'}",
            "--tables=1", f"--table-size={table_size}", command]
    result = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SysbenchError(f"sysbench {command} failed:\n{result.stdout}\n{result.stderr}", result.stdout)


class SysbenchError(RuntimeError):
    """sysbench failed; the message shows its command line without the password."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


def _connection_args(endpoint: Endpoint) -> list[str]:
    argv = ["--db-driver=mysql", f"--mysql-user={endpoint.user}", f"--mysql-password={endpoint.password}",
            f"--mysql-db={endpoint.database}"]
    if endpoint.socket is not None:
        return argv + [f"--mysql-socket={endpoint.socket}"]
    return argv + [f"--mysql-host={endpoint.host}", f"--mysql-port={endpoint.port}"]


def _shown(argv: list[str]) -> str:
    return " ".join("--mysql-password=***" if item.startswith("--mysql-password=") else item for item in argv)
