"""Where one scenario's relay time goes: `python -m bench.profile --scenario proxy_tls_unix
--workload point_select --threads 1 [--seconds 8] [--out DIR]`.

Starts the embedded world (bench/env.py: MariaDB with TLS, tlsproxy with every route, socat), warms
the scenario up, then runs its workload once per view, each view alone, of the relay process (tlsproxy,
or socat for the socat scenarios):

* `plain`: the rate and the relay's CPU per unit (/proc), with nothing attached;
* `strace`: `strace -c -f`, system calls per unit;
* `perf`: `perf record -g`, the relay's samples by shared object (kernel, libpython, uvloop, libssl, ...);
* `py-spy`: `py-spy record --native` (tlsproxy only), samples by leaf frame and the Python functions
  with the largest inclusive share.

A view whose tool is missing or not allowed is reported as such, not left out. A unit is a query
(point_select) or a connection with `SELECT 1` (connect). Writes profile.json and profile.md to --out,
and keeps each tool's raw output there.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from bench.env import BenchEnv
from bench.head_to_head import profile_summary, strace_calls, write_outputs
from bench.model import SCENARIO_BY_NAME, Scenario
from bench.procs import CpuMeter
from bench.sysbench import SysbenchResult, prepare_tables, run_sysbench

TABLE_SIZE = 100_000
WORKLOADS = {"point_select": ("oltp_point_select", {"tables": 1, "table-size": TABLE_SIZE}),
             "connect": ("connect_select1", {})}
VIEWS = ("plain", "strace", "perf", "py-spy")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Profiler:
    def __init__(self, env: BenchEnv, scenario: Scenario, workload: str, threads: int, seconds: float,
                 out: Path) -> None:
        self.env, self.scenario, self.threads, self.seconds, self.out = env, scenario, threads, seconds, out
        self.test, self.options = WORKLOADS[workload]
        pids = env.pids(scenario)
        self.role = "proxy" if "proxy" in pids else "relay"
        self.pid = pids[self.role]

    def workload(self, seconds: float) -> SysbenchResult:
        return run_sysbench(self.test, self.env.endpoint(self.scenario), client_tls=self.scenario.client_tls,
                            threads=self.threads, seconds=seconds, workdir=self.env.workdir, options=self.options)

    @staticmethod
    def units(result: SysbenchResult) -> int:
        return result.queries or result.events

    def attached(self, argv: list[str], stop: Callable[[subprocess.Popen[bytes]], None]) -> tuple[SysbenchResult, int]:
        """The workload with `argv` (a tool attached to the relay) running; the tool's exit code."""
        tool = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # attached to every thread before the first unit
        try:
            result = self.workload(self.seconds)
        finally:
            stop(tool)
        _, errors = tool.communicate(timeout=120)
        if tool.returncode not in (0, -signal.SIGINT, 130) and errors:
            log(errors.decode(errors="replace").strip()[-300:])
        return result, tool.returncode

    def plain(self) -> dict[str, Any]:
        meter = CpuMeter({self.role: self.pid})
        meter.start()
        result = self.workload(self.seconds)
        cpu = meter.stop()
        units = self.units(result)
        return {"units": units, "rate": units / result.seconds, "cpu_us_per_unit": cpu[self.role] / units * 1e6}

    def strace(self) -> dict[str, Any]:
        if shutil.which("strace") is None:
            return {"error": "strace is not installed"}
        path = self.out / "strace.txt"
        result, _ = self.attached(["strace", "-c", "-f", "-p", str(self.pid), "-o", str(path)], interrupt)
        if not path.exists():
            return {"error": "strace wrote nothing (ptrace not allowed?)"}
        units = self.units(result)
        calls = strace_calls(path.read_text())
        return {"units": units, "per_unit": {name: count / units for name, count in
                                             sorted(calls.items(), key=lambda item: -item[1])}}

    def perf(self) -> dict[str, Any]:
        if shutil.which("perf") is None:
            return {"error": "perf is not installed"}
        data = self.out / "perf.data"
        self.attached(["perf", "record", "-F", "999", "-g", "-p", str(self.pid), "-o", str(data)], interrupt)
        if not data.exists():
            return {"error": "perf recorded nothing (perf_event_paranoid?)"}
        report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso", "--stdio",
                                 "-g", "none"], capture_output=True, text=True)
        (self.out / "perf-dso.txt").write_text(report.stdout)
        data.unlink()
        shares = {}
        for line in report.stdout.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0].endswith("%"):
                shares[fields[1]] = float(fields[0].rstrip("%")) / 100
        return {"shares_by_object": shares}

    def py_spy(self) -> dict[str, Any]:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if self.role != "proxy":
            return {"error": "py-spy profiles Python only (the relay is socat)"}
        if not Path(spy).exists():
            return {"error": "py-spy is not installed (pip install py-spy)"}
        path = self.out / "py-spy.txt"
        duration = max(1, round(self.seconds))
        self.attached([spy, "record", "--native", "-p", str(self.pid), "-r", "250", "-f", "raw", "-o", str(path),
                       "-d", str(duration)], lambda tool: tool.wait(duration + 60))
        if not path.exists():
            return {"error": "py-spy wrote nothing"}
        return {**profile_summary(path), "python_inclusive": python_inclusive(path)}


def interrupt(tool: subprocess.Popen[bytes]) -> None:
    tool.send_signal(signal.SIGINT)
    tool.wait(120)


ENTRY_POINTS = ("tlsproxy/__main__.py", "tlsproxy/cli.py", "tlsproxy/lifecycle.py", "tlsproxy/worker.py")
"""On every stack: left out of the inclusive table."""


def python_inclusive(path: Path, top: int = 20) -> list[tuple[str, float]]:
    """The project's Python functions by the share of busy samples they are on the stack of."""
    inclusive: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not stack or frames[-1].split(" (")[0] in ("epoll_wait", "epoll_pwait"):
            continue
        busy += int(count)
        for frame in set(frames):
            if "tlsproxy/" in frame and not any(entry in frame for entry in ENTRY_POINTS):
                inclusive[frame] += int(count)
    return [(frame, count / max(busy, 1)) for frame, count in inclusive.most_common(top)]


def report(results: dict[str, Any]) -> str:
    plain, strace, perf, spy = (results["views"].get(view, {"error": "not run"}) for view in VIEWS)
    unit, units = ("connection", "connections") if results["workload"] == "connect" else ("query", "queries")
    lines = [f"# Where `{results['scenario']}`'s {results['role']} time goes: {results['workload']}, "
             f"{results['threads']} thread(s)", "",
             f"tlsproxy `{results['commit']}`; {results['seconds']:g} s per view, each view its own run "
             f"(`python -m bench.profile`).", ""]
    if "rate" in plain:
        lines.append(f"- plain: {plain['rate']:,.1f} {units}/s, {results['role']} CPU "
                     f"{plain['cpu_us_per_unit']:.1f} µs per {unit}")
    if "per_unit" in strace:
        shown = {name: value for name, value in strace["per_unit"].items() if value >= 0.01}
        lines.append(f"- strace: {sum(strace['per_unit'].values()):.2f} system calls per {unit}: "
                     + ", ".join(f"{name} {value:.2f}" for name, value in shown.items()))
    if "shares_by_object" in perf:
        lines.append("- perf, samples by object: " + ", ".join(
            f"{name} {share:.1%}" for name, share in list(perf["shares_by_object"].items())[:8]))
    if "busy" in spy:
        lines.append(f"- py-spy: {spy['busy']} busy samples of {spy['samples']}, {spy['busy_in_system_calls']:.0%} "
                     "of them in read/write system calls; top leaves: "
                     + ", ".join(f"{leaf} {share:.1%}" for leaf, share in spy["top_leaves"][:8]))
        lines += ["", "| tlsproxy function (inclusive) | share of busy samples |", "| --- | ---: |"]
        lines += [f"| `{frame}` | {share:.1%} |" for frame, share in spy["python_inclusive"]]
    for view, found in zip(VIEWS, (plain, strace, perf, spy)):
        if "error" in found:
            lines.append(f"- {view}: {found['error']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    relays = [name for name, scenario in SCENARIO_BY_NAME.items() if scenario.via != "direct"]
    parser.add_argument("--scenario", choices=relays, required=True)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="point_select")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=8.0, help="per view")
    parser.add_argument("--views", default=",".join(VIEWS))
    parser.add_argument("--out", type=Path, default=Path("profile"))
    args = parser.parse_args(argv)
    unknown = set(args.views.split(",")) - set(VIEWS)
    if unknown:
        parser.error(f"--views: unknown {', '.join(sorted(unknown))} (choose from {', '.join(VIEWS)})")
    args.out.mkdir(parents=True, exist_ok=True)
    scenario = SCENARIO_BY_NAME[args.scenario]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip() or "unknown"
    with BenchEnv.create() as env:
        assert env.server is not None
        if args.workload == "point_select":
            prepare_tables(env.endpoint(SCENARIO_BY_NAME["plaintext"]), table_size=TABLE_SIZE, workdir=env.workdir)
        profiler = Profiler(env, scenario, args.workload, args.threads, args.seconds, args.out)
        profiler.workload(min(2.0, args.seconds))  # warm: connections, caches, the pool
        views: dict[str, Any] = {}
        for view in args.views.split(","):
            log(f"{args.scenario} {args.workload}: {view}")
            views[view] = getattr(profiler, view.replace("-", "_"))()
    results = {"scenario": args.scenario, "workload": args.workload, "threads": args.threads,
               "seconds": args.seconds, "role": profiler.role, "commit": commit, "views": views}
    write_outputs(args.out, "profile", results, report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
