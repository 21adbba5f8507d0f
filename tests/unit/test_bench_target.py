"""`bench run --target` without a server: its flags, the password's sources, the typed target record in
results.json (old results without it still load) and the added-µs figures of the report."""

from __future__ import annotations

import pytest

from bench import cli, model
from bench.analysis import RunAnalysis
from bench.report_markdown import markdown
from bench.target import PASSWORD_VARIABLE, TargetSpec, parse_target, read_password


def test_target_flags_need_target_and_an_account() -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "--tiny", "--ssl-ca", "ca.pem"])  # a connection flag without --target
    with pytest.raises(SystemExit):
        cli.main(["run", "--tiny", "--target", "db:3306", "--ssl-ca", "ca.pem"])  # no --user / --database
    with pytest.raises(SystemExit):
        cli.main(["run", "--tiny", "--target", "db:3306", "--user", "u", "--database", "d"])  # no CA


def test_parse_target_and_password() -> None:
    assert parse_target("db.example.test:3306") == ("db.example.test", 3306)
    assert parse_target("[::1]:3307") == ("::1", 3307)
    with pytest.raises(SystemExit):
        parse_target("db.example.test")
    assert read_password({PASSWORD_VARIABLE: "s3cret"}) == "s3cret"
    spec = TargetSpec("db", 3306, "u", "d", "s3cret")
    assert "s3cret" not in repr(spec) and "s3cret" not in str(spec.route_settings())


def _target_results() -> model.RunResults:
    scenarios = [model.SCENARIO_BY_NAME[name] for name in ("plaintext", "client_tls", "proxy_tls_tcp")]
    qps = {"client_tls": 1000.0, "proxy_tls_tcp": 800.0}  # 1000 µs and 1250 µs per query
    samples = [model.Sample("select1", "threads=1", name, 0, 1.0, {"qps": value, "p50_ms": 1e3 / value},
                            {"client": 0.1, **({"proxy": 0.05} if name.startswith("proxy") else {})},
                            {"queries": value}) for name, value in qps.items()]
    target = model.TargetInfo(address="db.example.test:3306", user="bench", database="app",
                              tls={"ssl_ca": "/ca.pem"}, check={"server_version": "8.0.36", "verified": "chain and host name verified"},
                              network={"tcp_connect_us": {"median": 600.0, "min": 550.0, "max": 700.0, "n": 20},
                                       "query_us": {"median": 900.0}},
                              not_run={"plaintext": "refused by the server: Access denied"},
                              workloads=["select1"])
    return model.RunResults(size="tiny", run_size=model.TINY, scenarios=scenarios, samples=samples, target=target)


def test_target_record_round_trips_and_old_results_have_none(tmp_path) -> None:  # type: ignore[no-untyped-def]
    results = _target_results()
    results.save(tmp_path / "results.json")
    loaded = model.RunResults.load(tmp_path / "results.json")
    assert loaded.target == results.target
    assert loaded.target is not None and loaded.target.network_us("tcp_connect_us") == 600.0
    assert "target" not in loaded.extra
    old = model.RunResults.from_json({"size": "quick", "samples": []})
    assert old.target is None and "target" not in old.to_json()


def test_report_shows_added_microseconds_and_what_is_not_visible() -> None:
    run = RunAnalysis(_target_results())
    assert run.baselines == ["client_tls"]  # a refused baseline is no baseline
    variant = run.variants[0]
    assert variant.added_us("proxy_tls_tcp", "client_tls") == pytest.approx(250.0)
    report = markdown(run, {})
    assert "+250 µs per query (of 1,000 µs with the client's TLS" in report
    assert "TCP connect 600 µs" in report and "**not visible**" in report
    assert "refused by the server: Access denied" in report
    assert "| 1 direct plaintext | not run" in report


def test_without_the_variable_the_password_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("getpass.getpass", lambda prompt: asked.append(prompt) or "typed")
    assert read_password({}) == "typed" and asked
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(SystemExit, match=PASSWORD_VARIABLE):
        read_password({})
