"""`python -m bench run --target`: the embedded test MariaDB used as a plain external target (the run
knows only its host, port, CA and an account with a password)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import model
from tests.conftest import NATIVE, TEST_DATABASE
from tests.support.pki import TestPki
from tlsproxy.demo.mariadb import MariaDBServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def bench_target(server: MariaDBServer, pki: TestPki, out: Path, *flags: str, ca: Path | None = None,
                 password: str = NATIVE.password) -> subprocess.CompletedProcess[str]:
    """The test server asks for client certificates (it has a CA) and rejects unknown ones, so the run
    gets the test PKI's client certificate, as a managed database's users would pass theirs."""
    argv = [sys.executable, "-m", "bench", "run", "--tiny", "--out", str(out), "--event-loop", "asyncio",
            "--target", f"127.0.0.1:{server.port}", "--ssl-ca", str(ca or pki.ca), "--ssl-cert", str(pki.client_cert),
            "--ssl-key", str(pki.client_key), "--user", NATIVE.user,
            "--database", TEST_DATABASE, *flags]
    env = {**os.environ, "TLSPROXY_BENCH_PASSWORD": password}
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_every_scenario_and_workload_has_figures_and_the_password_is_nowhere(
        mariadb: MariaDBServer, pki: TestPki, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = bench_target(mariadb, pki, out, "--allow-plaintext", "--allow-create")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "checking the target" in run.stdout and "network: TCP connect" in run.stdout
    results = model.RunResults.load(out / "results.json")
    target = results.target
    assert target is not None and target.address == f"127.0.0.1:{mariadb.port}"
    assert target.network_us("tcp_connect_us") is not None and target.network_us("query_us") is not None
    assert "verified" in target.check["verified"]
    # NATIVE is REQUIRE SSL: the plaintext scenario is refused, not zero
    assert "refused" in target.not_run["plaintext"], target.not_run
    assert [scenario.name for scenario in results.scenarios] == [
        "plaintext", "client_tls", "proxy_tls_tcp", "proxy_tls_unix", "proxy_tls_tcp_prewarm", "proxy_tls_tcp_pool"]
    figures = {(sample.workload, sample.scenario): next(iter(sample.metrics.values())) for sample in results.samples}
    for workload in ("select1", "connect", "bulk", "point_select"):
        for scenario in ("client_tls", "proxy_tls_tcp", "proxy_tls_unix"):
            assert figures[(workload, scenario)] > 0, (workload, scenario)
        assert (workload, "plaintext") not in figures
    assert figures[("connect", "proxy_tls_tcp_prewarm")] > 0 and figures[("connect", "proxy_tls_tcp_pool")] > 0
    for sample in results.samples:  # the server's CPU is not ours to measure
        assert "server" not in sample.cpu_s
        assert ("proxy" in sample.cpu_s) == sample.scenario.startswith("proxy")
    report = (out / "report.md").read_text()
    assert "## Target" in report and "not visible" in report and "refused by the server" in report
    assert "added µs" in report
    assert mariadb.sql(f"SHOW TABLES IN {TEST_DATABASE} LIKE 'sbtest%'") == []  # --allow-create dropped its table
    for path in out.rglob("*"):
        if path.is_file():
            assert NATIVE.password.encode() not in path.read_bytes(), path
    assert NATIVE.password not in run.stdout + run.stderr


@pytest.mark.parametrize("case", ["wrong CA", "wrong host name"])
def test_a_failed_verification_stops_before_any_load(case: str, mariadb: MariaDBServer, pki: TestPki,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "run"
    flags = ("--tls-server-name", "db.example.test") if case == "wrong host name" else ()
    run = bench_target(mariadb, pki, out, *flags, ca=pki.other_ca if case == "wrong CA" else pki.ca)
    assert run.returncode != 0
    said = run.stdout + run.stderr
    assert "failed tlsproxy's check; no load was run" in said
    assert "certificate verify failed" in said.lower() or "verif" in said.lower()
    if case == "wrong host name":
        assert "db.example.test" in said
    assert "select1" not in run.stdout and "[1/" not in run.stdout
    assert not (out / "results.json").exists()


def test_an_unreachable_target_is_a_clear_error(pki: TestPki, tmp_path: Path) -> None:
    from bench.env import free_ports

    port, = free_ports(1)
    argv = [sys.executable, "-m", "bench", "run", "--tiny", "--out", str(tmp_path / "run"), "--target",
            f"127.0.0.1:{port}", "--ssl-ca", str(pki.ca), "--user", "u", "--database", "d"]
    run = subprocess.run(argv, cwd=REPO, env={**os.environ, "TLSPROXY_BENCH_PASSWORD": "x"}, capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode != 0
    assert f"cannot connect to upstream 127.0.0.1:{port}" in run.stdout + run.stderr


def test_without_a_client_certificate_client_tls_is_reported_refused(mariadb: MariaDBServer, pki: TestPki,
                                                                      tmp_path: Path) -> None:
    """The test server asks for client certificates; sysbench 1.0.20 always presents one (a throwaway
    without --ssl-cert), which it rejects: client_tls has no figures and the report says why."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "bench", "run", "--tiny", "--out", str(out), "--event-loop", "asyncio",
            "--target", f"127.0.0.1:{mariadb.port}", "--ssl-ca", str(pki.ca), "--user", NATIVE.user,
            "--database", TEST_DATABASE]
    run = subprocess.run(argv, cwd=REPO, env={**os.environ, "TLSPROXY_BENCH_PASSWORD": NATIVE.password},
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stdout + run.stderr
    results = model.RunResults.load(out / "results.json")
    assert results.target is not None and "--ssl-cert" in results.target.not_run["client_tls"]
    assert {sample.scenario for sample in results.samples} == {"proxy_tls_tcp", "proxy_tls_unix", "proxy_tls_tcp_prewarm",
                                                                  "proxy_tls_tcp_pool"}
    assert "not run" in (out / "report.md").read_text()
