"""`python -m bench run --quick|--full [--out DIR]`; `python -m bench soak [--connections N --duration S ...]`.

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
from bench.workloads import interleaved


def run(size: model.RunSize, out: Path, *, event_loop: str = "uvloop", workers: int = 1) -> model.RunResults:
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)

    def progress(message: str) -> None:
        print(f"[{time.time() - started:6.1f}s] {message}", flush=True)

    progress(f"bench {size.name}: starting MariaDB with TLS, tlsproxy and socat")
    results = model.RunResults(size=size.name, run_size=size, started=started, machine=machine_info(),
                               event_loop=event_loop, workers=workers, scenarios=list(model.SCENARIOS))
    with BenchEnv.create(event_loop=event_loop, workers=workers) as env:
        assert env.server is not None
        results.versions = env.versions()
        prepare_tables(env.endpoint(model.SCENARIO_BY_NAME["plaintext"]), table_size=size.table_size,
                       workdir=env.workdir)
        results.samples = interleaved(env, size, progress=progress)
        _optional_workloads(env, size, progress, results)
    results.finished = time.time()
    results.save(out / "results.json")
    write_report(results, out)
    progress(f"done: {out / 'report.md'}")
    return results


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

    def command() -> int:
        with output_folder(out):  # an interrupted or failed run leaves no results behind
            run(size, out, event_loop=args.event_loop, workers=args.workers)
        return 0

    return guarded("bench run", command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
