"""The typed results model of bench/ (bench.model): results.json of a run and of a soak load into it,
save and load again to the same model, and every committed result under bench/results/ still loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import cli, model
from bench.soak_summary import summary_markdown

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
COMMITTED = sorted(RESULTS.glob("*/results.json"))


def _run_results() -> model.RunResults:
    """A small run written by hand: every typed section, a sample with no data (NaN written as null)."""
    samples = [model.Sample("point_select", "threads=1", scenario.name, repetition, 1.0,
                            {"qps": 1000.0 + repetition, "p50_ms": 0.5, "p99_ms": None}, {"client": 0.1, "server": 0.2},
                            {"queries": 1000.0})
               for repetition in range(2) for scenario in model.SCENARIOS if not scenario.workloads]
    stats = {"median": 800.0, "min": 700.0, "max": 900.0, "n": 3}
    variants = [{"name": f"{version} full", "tls_version": version, "key_type": "rsa2048", "resumption": False,
                 "latency_ms": stats, "cpu_us": stats, "server_cpu_us_per_connection": stats}
                for version in ("TLSv1.2", "TLSv1.3")]
    return model.RunResults(
        size="tiny", run_size=model.TINY, started=1767225600.0, machine={"cpus": 2, "cpu_model": "test CPU"},
        event_loop="uvloop", workers=2, scenarios=list(model.SCENARIOS), versions={"tlsproxy": "0.1.0"},
        samples=samples,
        handshake=model.HandshakeResults.from_json({"what": "upstream TLS handshake only", "variants": variants}),
        proxy_metrics=model.ProxyMetrics.from_json({
            "connections": 10, "handshakes_counted": 10,
            "rounds": [{"metric_cpu_us": 700.0, "independent_cpu_us": 750.0, "ratio": 0.93, "handshakes": 5.0}],
            "proxy_metric": {"tls_handshake_cpu_us_mean": 700.0, "phase_latency_ms_mean": {"tls": 1.4}},
            "independent": {"what": "getrusage", "tls_handshake_cpu_us": 750.0},
            "difference": {"cpu_percent": -6.7, "cpu_median_round_ratio": 0.93, "latency_percent": 10.0},
            "external": {"what": "bench/handshake.py", "tls_handshake_latency_ms": 1.3},
            "resumption": {"TLSv1.3": {"full": {"cpu_us": 680.0, "handshakes": 10},
                                       "resumed": {"cpu_us": 260.0, "handshakes": 9}, "ratio": 0.38}}}),
        memory=model.MemoryResults.from_json({
            "points": [{"connections": 0, "proxy_rss_kib": 40000, "server_rss_kib": 90000},
                       {"connections": 10, "proxy_rss_kib": 40500, "server_rss_kib": 91000}],
            "kib_per_connection": {"vs_0": {"10": 50.0}}, "after_close": {"proxy_rss_kib": 40100}}),
        tls_matrix=model.TlsMatrixResults.from_json({
            "handshake": {"variants": variants},
            "bulk": {"points": [{"name": "rsa2048 TLSv1.3 AES-256-GCM", "mb_per_s": stats,
                                 "proxy_cpu_ms_per_mib": stats}]}}),
        finished=1767225700.0, extra={"future_module": {"nested": {"a": {"x": 1}}}})


def test_run_results_round_trip(tmp_path: Path) -> None:
    results = _run_results()
    path = tmp_path / "results.json"
    results.save(path)
    loaded = model.RunResults.load(path)
    assert loaded == results
    assert model.load_results(tmp_path) == results  # a folder or its results.json
    # what the report interprets is typed
    assert [variant.tls.label for variant in loaded.handshake.variants] == [  # type: ignore[union-attr]
        "TLSv1.2 full (rsa2048)", "TLSv1.3 full (rsa2048)"]
    assert loaded.memory is not None and [point.connections for point in loaded.memory.points] == [0, 10]
    assert loaded.memory.proxy_rss_kib_after_close == 40100
    assert loaded.proxy_metrics is not None and loaded.proxy_metrics.resumption["TLSv1.3"].resumed_handshakes == 9
    assert loaded.tls_matrix is not None and loaded.tls_matrix.bulk[0].mb_per_s == model.Stats(800.0, 700.0, 900.0)
    # saved once more: the same file
    again = tmp_path / "again.json"
    loaded.save(again)
    assert again.read_text() == path.read_text()


def test_nan_is_written_as_null(tmp_path: Path) -> None:
    results = _run_results()
    results.samples[0].metrics["p50_ms"] = float("nan")
    results.save(tmp_path / "results.json")
    assert "NaN" not in (tmp_path / "results.json").read_text()
    assert model.RunResults.load(tmp_path / "results.json").samples[0].metrics["p50_ms"] is None


def test_soak_results_round_trip(tmp_path: Path) -> None:
    soak = next(path for path in COMMITTED if path.parent.name.endswith("-soak"))
    results = model.SoakResults.load(soak)
    results.save(tmp_path / "results.json")
    assert model.SoakResults.load(tmp_path / "results.json") == results
    assert (tmp_path / "results.json").read_text() == soak.read_text()


def test_there_are_committed_results() -> None:
    names = {path.parent.name for path in COMMITTED}
    assert {"2026-11-28-full", "2026-12-01-full", "2026-12-01-soak"} <= names


@pytest.mark.parametrize("path", COMMITTED, ids=lambda path: path.parent.name)
def test_committed_results_load(path: Path) -> None:
    data = json.loads(path.read_text())
    results = model.load_results(path)
    assert type(results).from_json(results.to_json()) == results
    if path.parent.name.endswith("-soak"):
        assert isinstance(results, model.SoakResults)
        assert results.totals.connections == data["totals"]["connections"]
        # the committed summary is what the typed model renders
        assert summary_markdown(results) == (path.parent / "summary.md").read_text(encoding="utf-8")
    elif path.parent.name.endswith("-target-example"):  # bench run --target: no server of its own to measure
        assert isinstance(results, model.RunResults)
        assert results.target is not None and results.target.network_us("tcp_connect_us") is not None
        assert len(results.samples) == len(data["samples"]) > 0 and results.extra == {}
        assert results.handshake is None and results.memory is None
    else:
        assert isinstance(results, model.RunResults)
        assert len(results.samples) == len(data["samples"]) > 0
        assert {scenario.name for scenario in results.scenarios} == {item["name"] for item in data["scenarios"]}
        assert results.run_size is not None and results.run_size.name == data["size"]
        assert results.handshake is not None and results.handshake.variants
        assert results.memory is not None and results.memory.points
        if results.run_size.name == "full":  # --quick has no TLS matrix
            assert results.tls_matrix is not None and results.tls_matrix.handshake and results.tls_matrix.bulk
        else:
            assert results.tls_matrix is None
        assert results.proxy_metrics is not None and results.proxy_metrics.error is None
        assert results.extra == {}
    # `python -m bench report DIR` reads any results.json as a run (a soak's as one without samples of its own)
    assert model.RunResults.from_json(data).started == data["started"]


def test_bench_report_on_a_soak_folder_writes_its_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    soak = next(path.parent for path in COMMITTED if path.parent.name.endswith("-soak"))
    (tmp_path / "results.json").write_bytes((soak / "results.json").read_bytes())
    assert cli.main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "summary.md").read_text(encoding="utf-8") == (soak / "summary.md").read_text(encoding="utf-8")
    assert not (tmp_path / "report.md").exists()
    assert "summary.md" in capsys.readouterr().out
