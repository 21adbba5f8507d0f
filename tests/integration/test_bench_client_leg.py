"""bench/client_leg.py cannot rot: a tiny run through every form x leg x client count under both event
loops, and an interrupted run that leaves no leg server behind.

Each run gets a private TMPDIR (the bench's temporary directory, the leg servers' Unix sockets in it),
so "nothing left behind" includes "that TMPDIR is empty"."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.client_leg import CLIENTS, FORMS, LEGS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TINY = ["--seconds", "0.3", "--repetitions", "1"]
TINY_RUN_BUDGET_S = 60  # measured about 8 s on 2 cores (24 samples of 0.3 s, 6 leg servers)
EXIT_BOUND_S = 15  # from SIGTERM to the bench's exit


@pytest.fixture
def tmpdir_short() -> Iterator[Path]:
    """A private TMPDIR short enough for the Unix sockets' paths (pytest's tmp_path can be too long)."""
    path = Path(tempfile.mkdtemp(prefix="tlsp-leg-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _environment(tmpdir: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmpdir)}


def _running_bench(pid: int) -> bool:
    """`pid` is still a leg server (or any bench.client_leg process): alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX" and b"bench.client_leg" in cmdline


def test_tiny_run_measures_every_form_leg_and_client_count(tmp_path: Path, tmpdir_short: Path) -> None:
    out, tmpdir = tmp_path / "out", tmpdir_short
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "bench.client_leg", *TINY, "--loops", "uvloop,asyncio",
                             "--out", str(out)], cwd=REPO, env=_environment(tmpdir), capture_output=True, text=True,
                            timeout=TINY_RUN_BUDGET_S * 2, check=False)
    elapsed = time.monotonic() - began
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "outlived their stop" not in result.stderr, result.stderr  # the bench stopped its processes itself
    assert elapsed < TINY_RUN_BUDGET_S, f"the tiny run took {elapsed:.0f} s"
    results = json.loads((out / "client_leg.json").read_text())

    cells = {(s["loop"], s["form"], s["leg"], s["clients"]): s for s in results["samples"]}
    expected = {(loop, form, leg, clients) for loop in ("uvloop", "asyncio") for form in FORMS for leg in LEGS
                for clients in CLIENTS}
    assert set(cells) == expected and len(results["samples"]) == len(expected)
    for cell, sample in cells.items():
        assert sample["rate"] > 0 and sample["round_trips"] > 0, cell
        assert sample["cpu_us"] > 0 and sample["cpu_us_ticks"] >= 0, cell
    assert len(results["summary"]) == len(expected)

    servers = results["servers"]
    assert {(s["loop"], s["form"]) for s in servers} == {(loop, form) for loop in ("uvloop", "asyncio")
                                                         for form in FORMS}
    assert len({s["port"] for s in servers}) == len(servers) and len({s["unix"] for s in servers}) == len(servers)
    assert all(Path(s["unix"]).is_relative_to(tmpdir) for s in servers)
    assert not [s for s in servers if _running_bench(s["pid"])], "leg servers left running"
    assert not list(tmpdir.iterdir()), "temporary files left behind"

    text = (out / "report.md").read_text()
    assert "## uvloop" in text and "## asyncio" in text and "rates are noisy" in text
    assert text.count("| tcp | 4 | raw |") == 2


def test_an_interrupted_run_stops_every_leg_server(tmp_path: Path, tmpdir_short: Path) -> None:
    out, tmpdir = tmp_path / "out", tmpdir_short
    process = subprocess.Popen([sys.executable, "-m", "bench.client_leg", "--seconds", "0.5", "--repetitions", "3",
                                "--out", str(out)], cwd=REPO, env=_environment(tmpdir), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the first sample is done: servers and clients all up
            ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = process.stdout.readline() if ready else ""
            if not line:
                break
            if "leg server" in line:
                pids.append(int(line.split(": pid ")[1].split(",")[0]))
            if "[1/" in line:
                break
        assert len(pids) == len(FORMS), f"leg servers seen: {pids}"
        assert all(_running_bench(pid) for pid in pids)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=EXIT_BOUND_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        for pid in pids:  # whatever happened above, none outlives the test
            if _running_bench(pid):
                os.kill(pid, signal.SIGKILL)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "nothing is left running" in stderr, stderr
    assert "outlived their stop" not in stderr and "could not be stopped" not in stderr, stderr
    assert not [pid for pid in pids if _running_bench(pid)], "leg servers left running"
    assert not out.exists(), "partial results written"
    assert not list(tmpdir.iterdir()), "temporary files left behind"
