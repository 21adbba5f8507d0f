"""The soak tool (bench/soak.py) at a tiny size, end to end: MariaDB with TLS, the tlsproxy CLI, the
asyncio client with reconnect churn and checked answers, the results file and the summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONNECTIONS = 20
DURATION_S = 5
BUDGET_S = 20  # measured about 8 s on 2 cores


@pytest.mark.parametrize("pool", [0, 4], ids=["no pool", "upstream pool"])
def test_tiny_soak(pool: int, tmp_path: Path) -> None:
    """Without a pool, and with `--upstream-pool 4`: a client that quits leaves its upstream connection,
    reset, for the next login (COM_CHANGE_USER), and every answer is still right."""
    out = tmp_path / "soak"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    started = time.monotonic()
    # 10 reconnects/s over 20 connections pausing 0.25 s on average: a lifetime of 1-15 operations;
    # one operation in 4 is a blob round trip
    result = subprocess.run(
        [sys.executable, "-m", "bench", "soak", "--connections", str(CONNECTIONS), "--duration", str(DURATION_S),
         "--query-interval", "0.25", "--reconnect-rate", "10", "--blob-every", "4", "--sample-interval", "0.5",
         "--out", str(out), "--upstream-pool", str(pool)],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=BUDGET_S * 3)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    assert elapsed < BUDGET_S, f"the tiny soak took {elapsed:.0f}s"

    results = json.loads((out / "results.json").read_text())
    totals = results["totals"]
    assert results["ok"] and results["problems"] == []
    assert totals["errors"] == 0 and totals["errors_by_kind"] == {}
    assert totals["max_open"] == CONNECTIONS
    assert totals["steady_s"] >= DURATION_S
    assert totals["queries"] > 0 and totals["echo_checks"] > 0 and totals["blob_checks"] > 0
    assert totals["reconnects"] > 0
    assert totals["tls_checks"] == totals["logins"] == totals["login_attempts"] == CONNECTIONS + totals["reconnects"]
    # every operation is one echo (1 query) or one blob round trip (3), plus one TLS check per login
    assert totals["operations"] == totals["echo_checks"] + totals["blob_checks"]
    assert totals["queries"] == totals["echo_checks"] + 3 * totals["blob_checks"] + totals["tls_checks"]
    assert totals["blob_rows_left"] == 0
    # the proxy saw exactly the client's connections, all ending well
    counters = results["proxy_counters"]
    assert counters["tlsproxy_connections_accepted_total"] == totals["login_attempts"]
    assert counters["tlsproxy_connections_closed_total{outcome=ok}"] == totals["login_attempts"]
    assert counters["tlsproxy_connections_active"] == 0
    events = {name.split("outcome=")[1].rstrip("}"): value for name, value in counters.items()
              if name.startswith("tlsproxy_upstream_pool_events_total")}
    if pool:
        assert results["route"] == "proxy_tls_tcp_pool" and results["config"]["upstream_pool"] == pool
        # logins on a pooled connection: at most one per park, and most reconnects find one
        assert 0 < events["reused"] <= events["parked"], events
        assert events["reused"] >= totals["reconnects"] / 2, events
        assert not {"reset_failed", "denied", "closed_by_server", "in_flight"} & {k for k, v in events.items() if v}, events
    else:
        assert results["route"] == "proxy_tls_tcp" and events == {}

    steady = [sample for sample in results["samples"] if sample["phase"] == "steady"]
    assert len(steady) >= 5
    assert all(sample["proxy_rss_kib"] > 0 and sample["proxy_fds"] > 0 for sample in steady)
    assert max(sample["open"] for sample in steady) == CONNECTIONS
    rss = results["proxy_rss"]
    assert rss["steady_samples"] == len(steady)
    assert 0 < rss["start_kib"] <= rss["max_kib"] and rss["end_kib"] <= rss["max_kib"]
    assert rss["slope_kib_per_min"] is not None and rss["after_close_kib"] > 0

    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert f"# Soak: {CONNECTIONS} connections through tlsproxy" in summary and "**OK**" in summary
    assert f"| queries | {totals['queries']:,} (" in summary
    assert f"| reconnects | {totals['reconnects']:,} (" in summary
    assert "| errors | 0 |" in summary
    assert ("upstream pool **on**: `upstream_pool: 4`" in summary and "| upstream pool events | " in summary
            and f"reused {events['reused']:,.0f} (" in summary) if pool else "upstream pool off" in summary
    assert f" / {rss['start_kib']:,} / {rss['end_kib']:,} / {rss['max_kib']:,} KiB |" in summary
