"""bench/profile.py cannot rot: a tiny profile of the proxy's Unix-socket leg, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_a_tiny_profile_counts_the_system_calls_of_a_point_select(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.profile", "--scenario", "proxy_tls_unix", "--seconds", "1",
         "--views", "plain,strace,py-spy", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "profile.json").read_text())
    plain, strace, spy = (results["views"][view] for view in ("plain", "strace", "py-spy"))
    assert plain["rate"] > 0 and plain["cpu_us_per_unit"] > 0
    # a relayed query: the client's read and the upstream write, the answer's read and the client write
    calls = strace["per_unit"]
    assert 1.0 <= calls["read"] <= 3.0 and 1.0 <= calls["write"] <= 3.0, calls
    assert ("busy" in spy) != ("error" in spy)  # profiled, or said why not (py-spy is not a dependency)
    report = (tmp_path / "profile.md").read_text()
    assert "queries/s, proxy CPU" in report and "system calls per query" in report
