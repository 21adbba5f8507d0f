"""`python -m bench run` and `python -m bench soak` stop everything they started (bench/stopping.py).

Each case starts the real command at tiny size, records the process ids of every descendant while it
runs (from /proc: parent pid chains, with each process's start time so a reused id does not count),
interrupts it once its world is up (the load running) and then checks: the exit status (143 SIGTERM,
130 SIGINT, 1 error) within a bound, the one line saying nothing is left running, none of the recorded
processes alive (not even as a zombie), no temporary directory left and no partial results. Each run
gets a private TMPDIR, so "no temporary directory left" is "that TMPDIR is empty", whatever prefixes
the bench and its children (MariaDB's socket directory, tlsproxy's workers) use, and other runs on the
machine do not disturb the count.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60  # until the load runs: MariaDB's first start is most of it (about 3 s here)
EXIT_BOUND_S = 30  # from the signal to the bench's exit
STARTING_EXIT_BOUND_S = 10  # the same while MariaDB starts (measured well under 1 s)
TINY_SOAK = ["--connections", "20", "--duration", "60", "--query-interval", "0.25", "--reconnect-rate", "10",
             "--blob-every", "4", "--sample-interval", "0.5"]
RUN_LOADING = re.compile(r"\[\d+/\d+\] ")  # a workload's sample done: sysbench runs through the world
SOAK_LOADING = "connections logged in"


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, start time, state) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # fields[0] state, [1] ppid, [19] start time (man 5 proc, fields 3, 4, 22)
        table[int(entry.name)] = (int(fields[1]), fields[19], fields[0])
    return table


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Bench:
    process: subprocess.Popen[str]
    log: Path
    tmpdir: Path
    out: Path
    seen: dict[tuple[int, str], str] = field(default_factory=dict)  # (pid, start time) -> command line

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def record(self) -> None:
        """Add every current descendant of the bench (parent chains from /proc) to `seen`."""
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        stack = list(children.get(self.process.pid, []))
        while stack:
            pid = stack.pop()
            # read again each time: a process seen between fork and exec still shows its parent's
            self.seen[(pid, table[pid][1])] = _cmdline(pid) or self.seen.get((pid, table[pid][1]), "")
            stack += children.get(pid, [])

    def wait_for(self, marker: str | re.Pattern[str]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self.record()
            text = self.output()
            if (marker.search(text) if isinstance(marker, re.Pattern) else marker in text):
                for _ in range(5):  # a few more looks: the load's own short-lived processes
                    time.sleep(0.1)
                    self.record()
                return
            assert self.process.poll() is None, f"the bench exited early:\n{text[-3000:]}"
            time.sleep(0.1)
        raise AssertionError(f"the bench's load did not start within {READY_TIMEOUT_S}s:\n{self.output()[-3000:]}")

    def wait_exit(self) -> tuple[int, float]:
        began = time.monotonic()
        while self.process.poll() is None and time.monotonic() - began < EXIT_BOUND_S:
            self.record()  # anything started while stopping must be stopped too
            time.sleep(0.05)
        try:
            status = self.process.wait(timeout=max(0.0, EXIT_BOUND_S - (time.monotonic() - began)))
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the bench did not exit within {EXIT_BOUND_S}s:\n{self.output()[-3000:]}") from None
        return status, time.monotonic() - began

    def assert_nothing_left(self) -> None:
        table = _proc_table()
        alive = [f"{pid} {table[pid][2]} {cmdline[:160]}" for (pid, started), cmdline in self.seen.items()
                 if pid in table and table[pid][1] == started]
        assert not alive, "still there after the bench exited:\n" + "\n".join(alive)
        left = sorted(path.name for path in self.tmpdir.iterdir())
        assert not left, f"temporary files left: {left}"
        assert not self.out.exists(), f"partial results left: {sorted(p.name for p in self.out.iterdir())}"


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Bench]]:
    started: list[Bench] = []

    def start_bench(*args: str) -> Bench:
        # short: MariaDB's socket path lies under it
        private_tmp = Path(tempfile.mkdtemp(prefix="tbi-", dir="/tmp"))
        log = tmp_path / f"bench-{len(started)}.log"
        env = dict(os.environ, TMPDIR=str(private_tmp),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        out = tmp_path / f"out-{len(started)}"
        with log.open("w") as log_file:
            # its own session, as a shell's job: a Ctrl-C reaches its whole process group (see _ctrl_c)
            process = subprocess.Popen([sys.executable, "-m", "bench", *args, "--out", str(out)], cwd=REPO, env=env,
                                       stdout=log_file, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        bench = Bench(process, log, private_tmp, out)
        started.append(bench)
        return bench

    yield start_bench
    for bench in started:
        if bench.process.poll() is None:
            os.killpg(bench.process.pid, signal.SIGKILL)
            bench.process.wait()
        shutil.rmtree(bench.tmpdir, ignore_errors=True)


def _commands(bench: Bench) -> str:
    return "\n".join(bench.seen.values())


def _check_interrupted(bench: Bench, signum: signal.Signals) -> float:
    status, took = bench.wait_exit()
    output = bench.output()
    assert status == 128 + signum, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert output.rstrip().splitlines()[-1] == (
        f"bench {bench.process.args[3]}: interrupted by {signum.name}; everything it started is stopped, "
        "nothing is left running (no partial results written)"), output[-3000:]
    bench.assert_nothing_left()
    return took


def test_run_sigterm_stops_mariadb_proxy_workers_socat_and_sysbench(start: Callable[..., Bench]) -> None:
    bench = start("run", "--tiny", "--workers", "2")
    bench.wait_for(RUN_LOADING)
    commands = _commands(bench)
    assert "mariadbd" in commands and "socat" in commands and "-m tlsproxy --config" in commands
    assert commands.count("tlsproxy.worker import worker_main") == 2, commands
    os.kill(bench.process.pid, signal.SIGTERM)
    _check_interrupted(bench, signal.SIGTERM)
    assert "sysbench" in _commands(bench)


def test_run_ctrl_c_while_mariadb_starts(start: Callable[..., Bench]) -> None:
    """Ctrl-C once mariadbd runs, before it is ready (a SIGTERM then can go unheeded for 20 s: it is killed)."""
    bench = start("run", "--tiny")

    def server_launched() -> bool:
        return any("mariadbd --defaults-file" in command and "--bootstrap" not in command
                   for command in bench.seen.values())

    deadline = time.monotonic() + READY_TIMEOUT_S
    while not server_launched() and time.monotonic() < deadline:
        assert bench.process.poll() is None, bench.output()
        bench.record()
        time.sleep(0.01)
    assert server_launched(), bench.output()
    os.killpg(bench.process.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground process group
    took = _check_interrupted(bench, signal.SIGINT)
    assert "[1/" not in bench.output()  # it was still starting
    assert took < STARTING_EXIT_BOUND_S, f"took {took:.1f}s to stop a MariaDB that was starting"


def test_soak_sigterm(start: Callable[..., Bench]) -> None:
    bench = start("soak", *TINY_SOAK)
    bench.wait_for(SOAK_LOADING)
    assert "mariadbd" in _commands(bench) and "-m tlsproxy --config" in _commands(bench)
    os.kill(bench.process.pid, signal.SIGTERM)
    _check_interrupted(bench, signal.SIGTERM)


def test_soak_ctrl_c(start: Callable[..., Bench]) -> None:
    bench = start("soak", *TINY_SOAK)
    bench.wait_for(SOAK_LOADING)
    os.killpg(bench.process.pid, signal.SIGINT)
    _check_interrupted(bench, signal.SIGINT)


def test_soak_error_after_start(start: Callable[..., Bench]) -> None:
    """An error with the world up (limits too low for 10 million connections): status 1, nothing left."""
    bench = start("soak", *TINY_SOAK, "--connections", "10000000")  # the last one counts
    status, _ = bench.wait_exit()
    output = bench.output()
    assert status == 1, output[-3000:]
    assert "soak: limits too low for 10000000 connections" in output
    assert output.rstrip().splitlines()[-1] == (
        "bench soak: failed; everything it started is stopped, nothing is left running "
        "(no partial results written)"), output[-3000:]
    assert "mariadbd" in _commands(bench)
    bench.assert_nothing_left()
