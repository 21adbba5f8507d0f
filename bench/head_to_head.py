"""Two tlsproxy trees head to head in one run: `python -m bench.head_to_head --base-tree DIR [--out DIR]`.

The tree this module runs from ("new") and another checkout ("base", e.g. a `git worktree` of main)
each serve one identical TLS route (VERIFY_IDENTITY, TCP and a Unix socket) in a proxy process of its
own, in front of the same MariaDB, next to socat with the client doing its own TLS and the client's
own TLS directly. Every sample runs one scenario alone; repetitions are interleaved and the order of the
scenarios rotates, so drift and the neighbours' load fall on all alike. CPU is the relay's process tree
from /proc (bench/procs.py), per query (or connection, or 16 MiB bulk event).

Workloads: oltp_point_select at 1 and 4 threads (the proxies and socat), point select over the Unix
socket leg (the proxies, socat on a Unix socket with the client doing TLS, and direct TLS), bulk (1 MiB
and 1 KiB rows, the proxies and direct TLS) and connect per request (the proxies and direct TLS). With --strace, `strace -c -f` of each proxy during
3,000 point selects and during 64 MiB of bulk; with --profile, `py-spy record --native` of each proxy
during 8 s of point select at 4 threads (py-spy must be installed: pip install py-spy).

Writes head_to_head.json and report.md (medians, [min-max] spread, ratios) to --out (not results.json:
that name is `bench run`'s, which bench/model.py loads).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.env import BenchEnv, Endpoint, free_ports
from bench.procs import CpuMeter
from bench.sysbench import prepare_tables, run_sysbench
from bench.workloads import MIB

TABLE_SIZE = 100_000
NEW_TREE = Path(__file__).resolve().parents[1]
POINT = {"tables": 1, "table-size": TABLE_SIZE}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def start_tree_proxy(env: BenchEnv, tree: Path, name: str) -> tuple[subprocess.Popen[bytes], Endpoint, Endpoint]:
    """tlsproxy from `tree` (its own `tlsproxy` package, checked), one route on TCP and one on a Unix socket."""
    tcp, admin = free_ports(2)
    sock = env.workdir / f"{name}.sock"
    lines = ["event_loop: uvloop", "log_level: WARNING", f"admin_listen: 127.0.0.1:{admin}", "shutdown_grace: 0",
             "routes:"]
    for route, listen in ((f"{name}_tcp", f"127.0.0.1:{tcp}"), (f"{name}_unix", str(sock))):
        lines += [f"  - name: {route}", f"    listen: {listen}", f"    upstream: {env.upstream()}",
                  "    ssl_mode: VERIFY_IDENTITY", *(f"    {line}" for line in env.upstream_tls_lines()),
                  "    max_connections: 20000", "    handshake_timeout: 60"]
    config = env.workdir / f"{name}.yaml"
    config.write_text("\n".join(lines) + "\n")
    package = subprocess.run([sys.executable, "-c", "import tlsproxy; print(tlsproxy.__file__)"], cwd=tree,
                             capture_output=True, text=True, check=True).stdout.strip()
    if not package.startswith(str(tree)):
        raise RuntimeError(f"{tree} does not provide its own tlsproxy package (found {package})")
    with open(env.workdir / f"{name}.log", "ab") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "tlsproxy", "--config", str(config)], cwd=tree,
                                   stdout=log_file, stderr=log_file, start_new_session=True)
    env.wait_listening([("127.0.0.1", tcp)], [sock], process, name)
    log(f"{name}: pid {process.pid}, {package}")
    return process, Endpoint("127.0.0.1", tcp), Endpoint(socket=sock)


class HeadToHead:
    def __init__(self, env: BenchEnv, base_tree: Path, args: argparse.Namespace) -> None:
        assert env.server is not None and env.server.pid is not None and env.socat_process is not None
        self.env, self.args = env, args
        self.processes: list[subprocess.Popen[bytes]] = []
        direct = Endpoint("127.0.0.1", env.server.port)
        self.scenarios: dict[str, tuple[Endpoint, bool, int | None]] = {
            "socat": (Endpoint("127.0.0.1", env.ports["socat_client_tls"]), True, env.socat_process.pid),
            "socat_unix": (Endpoint(socket=env.sockets["socat_client_tls_unix"]), True,
                           env.socat_unix_process.pid if env.socat_unix_process else None),
            "client_tls": (direct, True, None),
        }
        for name, tree in (("base", base_tree), ("new", NEW_TREE)):
            process, tcp, unix = start_tree_proxy(env, tree, name)
            self.processes.append(process)
            self.scenarios[name] = (tcp, False, process.pid)
            self.scenarios[f"{name}_unix"] = (unix, False, process.pid)
        self.samples: list[dict[str, Any]] = []

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)

    def sample(self, workload: str, variant: str, scenario: str, repetition: int, test: str,
               **options: Any) -> None:
        endpoint, client_tls, relay = self.scenarios[scenario]
        assert self.env.server is not None and self.env.server.pid is not None
        pids = {"server": self.env.server.pid, **({"relay": relay} if relay else {})}
        meter = CpuMeter(pids)
        meter.start()
        result = run_sysbench(test, endpoint, client_tls=client_tls, workdir=self.env.workdir, **options)
        cpu = meter.stop()
        units = result.queries or result.events
        sample = {"workload": workload, "variant": variant, "scenario": scenario, "repetition": repetition,
                  "seconds": result.seconds, "units": units, "rate": units / result.seconds,
                  "relay_cpu_s": cpu.get("relay", 0.0), "server_cpu_s": cpu["server"],
                  "client_cpu_s": result.client_cpu_s,
                  "relay_us_per_unit": cpu.get("relay", 0.0) / units * 1e6 if units else float("nan")}
        self.samples.append(sample)
        log(f"{workload} {variant} rep {repetition + 1} {scenario}: {sample['rate']:.1f}/s, "
            f"relay {sample['relay_us_per_unit']:.1f} us per unit")

    def run(self) -> None:
        args, seconds = self.args, self.args.seconds
        plan: list[tuple[str, str, list[str], dict[str, Any]]] = []
        if "point" in args.workloads:
            for threads in (1, 4):
                plan.append(("point_select", f"threads={threads}", ["base", "new", "socat"],
                             {"test": "oltp_point_select", "threads": threads, "seconds": seconds, "options": POINT}))
        if "unix" in args.workloads:
            plan.append(("point_select_unix", "threads=1", ["base_unix", "new_unix", "socat_unix", "client_tls"],
                         {"test": "oltp_point_select", "threads": 1, "seconds": seconds, "options": POINT}))
        if "bulk" in args.workloads:
            for row in (MIB, 1024):
                plan.append(("bulk", f"row={row}", ["base", "new", "client_tls"],
                             {"test": "bulk", "threads": 1, "seconds": 0, "events": max(1, args.bulk_mib // 16),
                              "options": {"rowbytes": row, "rows": 16 * MIB // row, "source": self.env.bulk_source}}))
        if "connect" in args.workloads:
            plan.append(("connect", "threads=1", ["base", "new", "client_tls"],
                         {"test": "connect_select1", "threads": 1, "seconds": seconds}))
        for repetition in range(args.repetitions):
            for workload, variant, names, options in plan:
                shift = repetition % len(names)
                for scenario in names[shift:] + names[:shift]:
                    self.sample(workload, variant, scenario, repetition, **options)

    def trace(self, out: Path) -> dict[str, Any]:
        """`strace -c -f` of each proxy: 3,000 point selects, then 64 MiB of bulk (1 MiB rows)."""
        traced: dict[str, Any] = {}
        for name in ("base", "new"):
            endpoint, _, pid = self.scenarios[name]
            for workload, options in (
                    ("point_select", {"test": "oltp_point_select", "threads": 1, "seconds": 0, "events": 3000,
                                      "options": POINT}),
                    ("bulk", {"test": "bulk", "threads": 1, "seconds": 0, "events": 4,
                              "options": {"rowbytes": MIB, "rows": 16, "source": self.env.bulk_source}})):
                path = out / f"strace-{workload}-{name}.txt"
                tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", str(path)],
                                          stderr=subprocess.DEVNULL)
                time.sleep(1.0)  # attached to every thread
                result = run_sysbench(options.pop("test"), endpoint, client_tls=False, workdir=self.env.workdir,
                                      **options)
                tracer.send_signal(signal.SIGINT)
                tracer.wait(60)
                traced[f"{workload} {name}"] = {"units": result.queries or result.events,
                                                "calls": strace_calls(path.read_text())}
        return traced

    def profile(self, out: Path) -> dict[str, Any]:
        """`py-spy record --native` of each proxy during 8 s of point select at 4 threads (raw stacks)."""
        spy = Path(sys.executable).parent / "py-spy"
        profiles: dict[str, Any] = {}
        for name in ("base", "new"):
            endpoint, _, pid = self.scenarios[name]
            path = out / f"py-spy-{name}.txt"
            recorder = subprocess.Popen([str(spy), "record", "--native", "-p", str(pid), "-r", "250", "-f", "raw",
                                         "-o", str(path), "-d", "8"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            run_sysbench("oltp_point_select", endpoint, client_tls=False, threads=4, seconds=8,
                         workdir=self.env.workdir, options=POINT)
            recorder.wait(60)
            profiles[name] = profile_summary(path) if path.exists() else {"error": "py-spy wrote nothing"}
        return profiles


def strace_calls(text: str) -> dict[str, int]:
    """System call name -> calls, from `strace -c` output."""
    calls = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0].replace(".", "").isdigit() and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    return calls


SYSCALL_FRAMES = {"write", "read", "writev", "readv", "send", "recv", "sendmsg", "recvmsg", "epoll_ctl"}
WAIT_FRAMES = {"epoll_wait", "epoll_pwait"}


def profile_summary(path: Path) -> dict[str, Any]:
    """Samples by leaf frame in a py-spy raw (collapsed stacks) file: waiting, system calls, the rest."""
    leaves: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            leaves[stack.split(";")[-1].split(" (")[0]] += int(count)
    total = sum(leaves.values())
    waiting = sum(leaves[name] for name in WAIT_FRAMES)
    busy = max(total - waiting, 1)
    in_calls = sum(leaves[name] for name in SYSCALL_FRAMES)
    return {"samples": total, "waiting": waiting, "busy": busy, "busy_in_system_calls": in_calls / busy,
            "top_leaves": [(name, count / busy) for name, count in leaves.most_common(16) if name not in WAIT_FRAMES]}


def report(results: dict[str, Any]) -> str:
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    for sample in results["samples"]:
        groups[(sample["workload"], sample["variant"])][sample["scenario"]].append(sample)
    lines = ["# Head to head: two tlsproxy trees, socat and direct TLS, one run", "",
             f"base: `{results['base_tree_commit']}`, new: `{results['new_tree_commit']}`; "
             f"{results['repetitions']} interleaved repetitions of {results['seconds']:g} s; "
             "medians, [min-max] over the repetitions; CPU = the relay's process tree per query (connect: per "
             "connection, bulk: per 16 MiB event).", ""]
    for (workload, variant), scenarios in groups.items():
        lines += [f"## {workload} {variant}", "", "| scenario | rate/s | relay CPU µs per unit |", "| --- | ---: | ---: |"]
        medians = {}
        for scenario, samples in scenarios.items():
            rates = [s["rate"] for s in samples]
            cpu = [s["relay_us_per_unit"] for s in samples]
            medians[scenario] = (statistics.median(rates), statistics.median(cpu))
            lines.append(f"| {scenario} | {medians[scenario][0]:,.1f} [{min(rates):,.1f}-{max(rates):,.1f}] | "
                         + (f"{medians[scenario][1]:,.1f} [{min(cpu):,.1f}-{max(cpu):,.1f}] |" if samples[0]["relay_cpu_s"] or
                            scenario != "client_tls" else "- |"))
        reference = "socat" if "socat" in medians else "client_tls"
        lines.append("")
        for scenario in ("base", "new", "base_unix", "new_unix", "socat_unix"):
            if scenario in medians:
                text = f"- {scenario} / {reference}: rate {medians[scenario][0] / medians[reference][0]:.3f}x"
                if reference == "socat":
                    text += f", CPU per query {medians[scenario][1] / medians[reference][1]:.3f}x"
                lines.append(text)
        for new, base in (("new", "base"), ("new_unix", "base_unix")):
            if new in medians and base in medians:
                lines.append(f"- {new} / {base}: rate {medians[new][0] / medians[base][0]:.3f}x, "
                             f"CPU {medians[new][1] / medians[base][1]:.3f}x")
        lines.append("")
    for key, traced in results.get("strace", {}).items():
        per_unit = {name: calls / traced["units"] for name, calls in traced["calls"].items()
                    if calls / traced["units"] >= 0.01}
        lines.append(f"- strace {key}: " + ", ".join(f"{name} {value:.2f}" for name, value in
                                                      sorted(per_unit.items(), key=lambda kv: -kv[1]))
                     + f" (per {'query' if key.startswith('point') else '16 MiB event'}; total "
                       f"{sum(per_unit.values()):.2f})")
    for name, summary in results.get("profile", {}).items():
        if "busy" in summary:
            lines.append(f"- py-spy {name}: {summary['busy']} busy samples of {summary['samples']}, "
                         f"{summary['busy_in_system_calls']:.0%} of them in read/write system calls; top leaves: "
                         + ", ".join(f"{leaf} {share:.1%}" for leaf, share in summary["top_leaves"][:8]))
    return "\n".join(lines) + "\n"


def commit_of(tree: Path) -> str:
    result = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (result.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.head_to_head", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-tree", type=Path, required=True, help="another checkout of tlsproxy")
    parser.add_argument("--out", type=Path, default=Path("head-to-head"))
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="per point-select and connect sample")
    parser.add_argument("--bulk-mib", type=int, default=256, help="per bulk sample")
    parser.add_argument("--workloads", default="point,unix,bulk,connect")
    parser.add_argument("--strace", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    args.workloads = set(args.workloads.split(","))
    base_tree = args.base_tree.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"base_tree_commit": commit_of(base_tree), "new_tree_commit": commit_of(NEW_TREE),
                               "repetitions": args.repetitions, "seconds": args.seconds, "bulk_mib": args.bulk_mib}
    with BenchEnv.create() as env:
        assert env.server is not None
        prepare_tables(Endpoint("127.0.0.1", env.server.port), table_size=TABLE_SIZE, workdir=env.workdir)
        run = HeadToHead(env, base_tree, args)
        try:
            run.run()
            results["samples"] = run.samples
            if args.strace:
                results["strace"] = run.trace(args.out)
            if args.profile:
                results["profile"] = run.profile(args.out)
        finally:
            run.stop()
    write_outputs(args.out, "head_to_head", results, report(results))
    return 0


def write_outputs(out: Path, name: str, results: dict[str, Any], markdown: str) -> None:
    """`name`.json and the Markdown report beside it (report.md for head_to_head, `name`.md otherwise)."""
    (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    report_path = out / ("report.md" if name == "head_to_head" else f"{name}.md")
    report_path.write_text(markdown)
    log(f"done: {report_path}")


if __name__ == "__main__":
    sys.exit(main())
