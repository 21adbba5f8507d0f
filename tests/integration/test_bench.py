"""The benchmark (bench/) cannot rot: a tiny run end to end through every scenario, and the report
rendered from a synthetic results dict without any server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench import model
from bench.report import HEADLINE, write_report

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_RUN_BUDGET_S = 120  # measured about 22 s on 2 cores; the guard only catches the run growing out of "tiny"


# ---- the report from a synthetic run (no servers) -------------------------------------------------

# qps of one repetition per scenario; repetition 1 is 10% faster, so median = 1.05 x these
QPS = {"plaintext": 20000.0, "client_tls": 10000.0, "proxy_tls_tcp": 8000.0, "proxy_tls_unix": 9000.0,
       "proxy_disabled_tcp": 15000.0, "proxy_disabled_unix": 16000.0, "socat_client_tls": 9500.0, "socat_client_tls_unix": 9700.0,
       "proxy_tls_tcp_full": 7000.0, "proxy_tls_tcp_prewarm": 12000.0, "proxy_tls_tcp_pool": 16000.0}


def _sample(workload: str, variant: str, scenario: model.Scenario, repetition: int) -> dict[str, Any]:
    speed = QPS[scenario.name] * (1.0 if repetition == 0 else 1.1)
    cpu = {role: 0.25 for role in scenario.roles}
    cpu["client"] = 0.5 if scenario.client_tls else 0.25
    if workload == "point_select":
        metrics = {"qps": speed, "p50_ms": 1000 / speed, "p95_ms": 1500 / speed, "p99_ms": 3000 / speed}
        units = {"queries": 50000.0}
    elif workload == "connect":
        metrics = {"conn_per_s": speed / 20, "p50_ms": 20000 / speed, "p99_ms": 40000 / speed}
        units = {"connections": 5000.0, "queries": 5000.0}
    else:
        metrics = {"mb_per_s": speed / 50, "p50_ms_per_result": 1e5 / speed}
        units = {"mib": 32.0, "queries": 2.0}
    return model.Sample(workload, variant, scenario.name, repetition, 1.0, metrics, cpu, units).to_json()


def synthetic_results() -> dict[str, Any]:
    samples = []
    for workload, variant in (("point_select", "threads=1"), ("point_select", "threads=4"),
                              ("connect", "threads=1"), ("bulk", "row=1MiB")):
        for repetition in range(2):
            samples += [_sample(workload, variant, scenario, repetition) for scenario in model.SCENARIOS
                        if not scenario.workloads or workload in scenario.workloads]
    stats = {"median": 800.0, "min": 700.0, "max": 900.0}
    return {
        "size": "quick", "run_size": model.QUICK.__dict__, "started": 1767225600.0, "finished": 1767225700.0,
        "machine": {"cpus": 2, "cpu_model": "test CPU"}, "event_loop": "uvloop",
        "scenarios": [scenario.__dict__ for scenario in model.SCENARIOS],
        "versions": {"tlsproxy": "0.1.0", "mariadb": "10.11"},
        "samples": samples,
        "handshake": {
            "what": "upstream TLS handshake only", "key_type": "rsa2048",
            "variants": [{"name": f"{version} {kind}", "tls_version": version, "key_type": "rsa2048",
                          "resumption": kind == "resumed", "n": 5, "latency_ms": {"median": 2.0, "min": 1.0, "max": 3.0},
                          "cpu_us": stats, "server_cpu_us_per_connection": stats,
                          "negotiated_versions": [version]}
                         for version in ("TLSv1.2", "TLSv1.3") for kind in ("full", "resumed")],
            "ratios": {"TLSv1.2 full / TLSv1.3 full": {"latency": 0.9, "cpu": 0.95}},
        },
        "memory": {"points": [{"connections": 0, "proxy_rss_kib": 40000, "server_rss_kib": 90000},
                              {"connections": 200, "proxy_rss_kib": 48000, "server_rss_kib": 95000}],
                   "kib_per_connection": {"vs_0": {"200": 40.0}, "marginal": {"0->200": 40.0}}},
        "tls_matrix": {
            "design": {"baseline": {"tls_version": "TLSv1.3", "key_type": "rsa2048"}, "repetitions": 2},
            "handshake": {"variants": [{"name": f"{key} TLSv1.3 full", "key_type": key, "tls_version": "TLSv1.3",
                                        "resumption": False, "latency_ms": stats, "cpu_us": stats,
                                        "server_cpu_us_per_connection": stats} for key in ("rsa2048", "ec256")]},
            "bulk": {"points": [{"name": f"rsa2048 TLSv1.3 {cipher}", "cipher": cipher,
                                 "mb_per_s": {"median": 150.0, "min": 140.0, "max": 160.0, "n": 2},
                                 "proxy_cpu_ms_per_mib": {"median": 2.5, "min": 2.0, "max": 3.0, "n": 2},
                                 "negotiated": [{"Ssl_version": "TLSv1.3", "Ssl_cipher": cipher}] * 2,
                                 "samples": [samples[0], samples[1]]}
                                for cipher in ("TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256")]},
        },
    }


def test_report_renders_synthetic_results(tmp_path: Path) -> None:
    results = synthetic_results()
    write_report(results, tmp_path / "a")
    report = (tmp_path / "a" / "report.md").read_text(encoding="utf-8")
    for scenario in model.SCENARIOS:
        assert scenario.label in report
    for heading in ("## point_select threads=1", "## point_select threads=4", "## connect threads=1",
                    "## bulk row=1MiB", "## Handshake cost", "## Memory", "## TLS matrix"):
        assert heading in report
    assert "vs client_tls" in report and "vs plaintext" in report and "higher is better" in report
    proxy_row = next(line for line in report.splitlines()
                     if line.startswith("| 3 tlsproxy TLS, client leg TCP | 8,400 [8,000–8,800]"))
    # ratios of medians within the run: 8,400 / 10,500 vs client_tls, 8,400 / 21,000 vs plaintext
    assert "| 0.80× | 0.40× |" in proxy_row
    # CPU µs per query by role: 0.25 s / 50,000 queries = 5 µs for client, proxy and server; total 15
    assert "| 5.00 | 5.00 | – | 5.00 | 15.0 |" in proxy_row
    # the pooled route: in the reading guide, and against both baselines with the proxy's and server's CPU
    assert "`proxy_tls_tcp_pool` has `upstream_pool: 8`" in report
    assert ("through the upstream pool (`proxy_tls_tcp_pool`), medians: threads=1: 840 connections/s, 1.60× "
            "client_tls, 0.80× plaintext; CPU µs per connection proxy 50.0, server 50.0.") in report
    assert "TLSv1.3 resumed" in report and "800 [700–900]" in report  # handshake table, summaries as one cell
    # a list of records inside a record is one cell: the distinct records, or a count
    assert "| Ssl_version=TLSv1.3, Ssl_cipher=TLS_CHACHA20_POLY1305_SHA256 | 2 samples (results.json) |" in report
    for name in ("throughput.png", "latency.png", "cpu.png", "handshake_cpu.png", "memory.png",
                 "tls_matrix_handshake.png", "tls_matrix_bulk.png"):
        assert (tmp_path / "a" / name).read_bytes().startswith(PNG_MAGIC), name
        assert f"]({name})" in report
    # a pure function of the results: rendering again gives the same report
    write_report(json.loads(json.dumps(results)), tmp_path / "b")
    assert (tmp_path / "b" / "report.md").read_text(encoding="utf-8") == report


def test_report_without_optional_sections(tmp_path: Path) -> None:
    results = synthetic_results()
    for key in ("handshake", "memory", "tls_matrix"):
        del results[key]
    results["samples"] = [sample for sample in results["samples"] if sample["scenario"] != "socat_client_tls"]
    results["future_module"] = {"nested": {"a": {"x": 1, "y": "z"}, "b": {"x": 2, "y": "w"}}}
    write_report(results, tmp_path)
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Handshake cost" not in report and "## Memory" not in report
    assert "## future_module" in report and "| key | x | y |" in report  # unknown results: generic tables
    assert "no samples for 5 socat relay, client does TLS" in report  # a missing scenario is called out
    assert not (tmp_path / "handshake_cpu.png").exists()


# ---- the real thing, tiny ---------------------------------------------------------------------------


def test_tiny_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "bench", "run", "--tiny", "--out", str(out)], check=False, cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=TINY_RUN_BUDGET_S * 2)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    assert elapsed < TINY_RUN_BUDGET_S, f"--tiny took {elapsed:.0f}s"

    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text(encoding="utf-8")
    assert list(out.glob("*.png")), "no plots"
    for name in ("throughput.png", "latency.png", "cpu.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC), name

    samples = results["samples"]
    variants = {(sample["workload"], sample["variant"]) for sample in samples}
    assert {workload for workload, _ in variants} == {"point_select", "connect", "bulk"}
    for workload, variant in sorted(variants):
        for scenario in model.SCENARIOS:
            mine = [sample for sample in samples if (sample["workload"], sample["variant"], sample["scenario"])
                    == (workload, variant, scenario.name)]
            if scenario.workloads and workload not in scenario.workloads:
                assert not mine, f"{scenario.name} takes no part in {workload}"
                continue
            assert mine, f"no {workload} {variant} sample for {scenario.name}"
            for sample in mine:
                assert sample["metrics"][HEADLINE[workload]] > 0, sample
                assert set(sample["cpu_s"]) == set(scenario.roles), sample
                assert sum(sample["cpu_s"].values()) > 0, sample

    # the pooled route was used: after the first clients, logins go up as COM_CHANGE_USER on parked connections
    pooled = [sample for sample in samples if sample["scenario"] == "proxy_tls_tcp_pool"]
    assert pooled and all(sample["units"]["pool_reused"] > 0 for sample in pooled), pooled
    assert all(sample["units"].get("pool_reset_failed", 0) == 0 for sample in pooled), pooled
    assert "through the upstream pool (`proxy_tls_tcp_pool`)" in report and "on a pooled connection" in report

    for scenario in model.SCENARIOS:
        assert scenario.label in report
    assert "vs client_tls" in report and "vs plaintext" in report
    assert "| 2 direct TLS (client library) |" in report and "1.00×" in report
    for key, heading in (("handshake", "## Handshake cost"), ("memory", "## Memory"), ("tls_matrix", "## TLS matrix")):
        if key in results:
            assert heading in report
    assert "## Warnings" not in report, report
    # the proxy's own histograms were scraped and set against the external handshake measurement
    scraped = results["proxy_metrics"]
    assert scraped["handshakes_counted"] == scraped["connections"] > 0
    assert scraped["proxy_metric"]["tls_handshake_cpu_us_mean"] > 0
    assert scraped["independent"]["tls_handshake_cpu_us"] > 0
    assert "cpu_percent" in scraped["difference"] and scraped["rounds"]
    assert "## The proxy's own metrics vs independent measurements" in report
    # full against resumed upstream handshakes, by the proxy's own metric
    for version in ("TLSv1.3", "TLSv1.2"):
        per = scraped["resumption"][version]
        assert per["full"]["handshakes"] > 0 and per["resumed"]["handshakes"] > 0, per
        assert 0 < per["resumed"]["cpu_us"] < per["full"]["cpu_us"], per
    assert "### Upstream TLS session resumption" in report
    for key in ("handshake", "memory"):
        assert key in results

    # the report is a pure function of results.json
    write_report(results, tmp_path / "again")
    assert (tmp_path / "again" / "report.md").read_text(encoding="utf-8") == report
