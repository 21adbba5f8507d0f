"""`python -m bench run --quick|--full [--out DIR]`; `python -m bench run --target HOST:PORT --ssl-ca FILE
--user USER --database DB` (your own server; the password from TLSPROXY_BENCH_PASSWORD or a prompt);
`python -m bench soak [--connections N --duration S ...]`.

Both stop everything they started on SIGTERM, SIGINT (Ctrl-C), SIGHUP or an error, and then exit with
128 + the signal's number or 1 (bench/stopping.py)."""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import time
from pathlib import Path

from bench import handshake, memory, model, proxy_metrics, soak, tls_matrix
from bench.env import BenchEnv
from bench.procs import machine_info
from bench.report import write_report
from bench.soak_summary import summary_markdown
from bench.stopping import guarded, output_folder
from bench.sysbench import prepare_tables
from bench.target import TargetSpec, parse_target, read_password, run_target
from bench.workloads import interleaved


def run(size: model.RunSize, out: Path, *, event_loop: str = "uvloop", workers: int = 1,
        target: TargetSpec | None = None) -> model.RunResults:
    """The embedded world (bench/env.py), or `target`: the user's own server (bench/target.py)."""
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)

    def progress(message: str) -> None:
        print(f"[{time.time() - started:6.1f}s] {message}", flush=True)

    results = model.RunResults(size=size.name, run_size=size, started=started, machine=machine_info(),
                               event_loop=event_loop, workers=workers, scenarios=list(model.SCENARIOS))
    if target is not None:
        run_target(target, size, results, progress, event_loop=event_loop, workers=workers)
    else:
        _run_embedded(size, event_loop, workers, progress, results)
    results.finished = time.time()
    results.save(out / "results.json")
    write_report(results, out)
    progress(f"done: {out / 'report.md'}")
    return results


def _run_embedded(size: model.RunSize, event_loop: str, workers: int, progress, results: model.RunResults) -> None:  # type: ignore[no-untyped-def]
    progress(f"bench {size.name}: starting MariaDB with TLS, tlsproxy and socat")
    with BenchEnv.create(event_loop=event_loop, workers=workers) as env:
        assert env.server is not None
        results.versions = env.versions()
        prepare_tables(env.endpoint(model.SCENARIO_BY_NAME["plaintext"]), table_size=size.table_size,
                       workdir=env.workdir)
        results.samples = interleaved(env, size, progress=progress)
        _optional_workloads(env, size, progress, results)


def _optional_workloads(env: BenchEnv, size: model.RunSize, progress, results: model.RunResults) -> None:  # type: ignore[no-untyped-def]
    measured = handshake.run(env, size, progress)
    results.handshake = model.HandshakeResults.from_json(measured)
    results.proxy_metrics = model.ProxyMetrics.from_json(proxy_metrics.run(env, size, progress, measured))
    results.memory = model.MemoryResults.from_json(memory.run(env, size, progress))
    if size.tls_matrix:
        results.tls_matrix = model.TlsMatrixResults.from_json(tls_matrix.run(env, size, progress))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the benchmark")
    group = run_parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", const="quick", dest="size", help="under 3 minutes (default)")
    group.add_argument("--full", action="store_const", const="full", dest="size", help="every workload and the TLS matrix")
    group.add_argument("--tiny", action="store_const", const="tiny", dest="size", help="seconds; for tests")
    run_parser.add_argument("--out", type=Path, help="output folder (default bench/results/<date-time>/)")
    run_parser.add_argument("--event-loop", choices=["uvloop", "asyncio"], default="uvloop")
    run_parser.add_argument("--workers", type=int, default=1, help="tlsproxy's worker processes (default 1)")
    _add_target_arguments(run_parser)
    soak_parser = commands.add_parser("soak", help="many connections with reconnect churn for minutes, every answer "
                                      "checked, the proxy's RSS over time (bench/soak.py)")
    soak.add_arguments(soak_parser)
    report_parser = commands.add_parser("report", help="render report.md and the plots (or a soak's summary.md) again from DIR/results.json")
    report_parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    if args.command == "soak":
        return guarded("bench soak", lambda: soak.command(args))
    if args.command == "report":
        results = model.load_results(args.directory)
        if isinstance(results, model.SoakResults):  # a soak folder: its summary, not a benchmark report
            written = args.directory / "summary.md"
            written.write_text(summary_markdown(results), encoding="utf-8")
        else:
            write_report(results, args.directory)
            written = args.directory / "report.md"
        print(f"wrote {written}")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    size = model.SIZES[args.size or "quick"]
    out = args.out or model.RESULTS_DIR / datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")

    target = _target(run_parser, args)

    def command() -> int:
        with output_folder(out):  # an interrupted or failed run leaves no results behind
            run(size, out, event_loop=args.event_loop, workers=args.workers, target=target)
        return 0

    return guarded("bench run", command)


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "your own server", "--target HOST:PORT measures what TLS and the proxy cost against your MySQL/MariaDB "
        "(read-only workloads by default); the password comes from TLSPROXY_BENCH_PASSWORD or a prompt")
    group.add_argument("--target", metavar="HOST:PORT", help="the server to measure instead of the embedded MariaDB")
    group.add_argument("--ssl-ca", type=Path, help="CA bundle the server's certificate is verified with")
    group.add_argument("--ssl-capath", type=Path, help="directory of hashed CA certificates")
    group.add_argument("--tls-server-name", help="name to verify and send as SNI (for IP targets)")
    group.add_argument("--ssl-cert", type=Path, help="client certificate (REQUIRE X509 accounts; and for client_tls "
                       "when the server asks for one: sysbench always presents one)")
    group.add_argument("--ssl-key", type=Path, help="client certificate key")
    group.add_argument("--tls-version", help="allowed versions, e.g. TLSv1.2,TLSv1.3 (default)")
    group.add_argument("--user", help="the account the workloads log in with")
    group.add_argument("--database", help="the database they use (--allow-create: where its table goes)")
    group.add_argument("--allow-plaintext", action="store_true",
                       help="also measure direct plaintext, if the server accepts it (sends the traffic unencrypted)")
    group.add_argument("--allow-create", action="store_true",
                       help="also run sysbench's point selects on a table it creates and drops in --database")


def _target(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TargetSpec | None:
    if args.target is None:
        given = [flag for flag in ("ssl_ca", "ssl_capath", "tls_server_name", "ssl_cert", "ssl_key", "tls_version",
                                   "user", "database") if getattr(args, flag) is not None]
        if given or args.allow_plaintext or args.allow_create:
            parser.error("the connection flags go with --target HOST:PORT")
        return None
    if args.user is None or args.database is None:
        parser.error("--target needs --user and --database")
    if args.ssl_ca is None and args.ssl_capath is None:
        parser.error("--target needs --ssl-ca or --ssl-capath: the server's certificate is always verified")
    host, port = parse_target(args.target)
    return TargetSpec(host, port, args.user, args.database, read_password(), ssl_ca=args.ssl_ca,
                      ssl_capath=args.ssl_capath, tls_server_name=args.tls_server_name, ssl_cert=args.ssl_cert,
                      ssl_key=args.ssl_key, tls_version=args.tls_version, allow_plaintext=args.allow_plaintext,
                      allow_create=args.allow_create)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
