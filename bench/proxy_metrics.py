"""The proxy's own metrics against independent measurements of the same thing.

Rounds interleave: a process doing only N upstream TLS handshakes with the proxy's TLS settings
(bench/handshake_process.py; its getrusage CPU minus the same process doing the same connections with
their TLS objects made and freed but no handshake, per handshake: the handshake steps, what the metric
times), then N connect-per-request connections through the proxy, with /metrics scraped
before and after. The report shows both, per round and overall, and their difference. The latency of
the TLS phase is set against bench/handshake.py's in-process measurement.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Callable

from prometheus_client.parser import text_string_to_metric_families

from bench.env import FULL_HANDSHAKE_ROUTE, HANDSHAKE_ROUTES, BenchEnv, Endpoint
from bench.model import RunSize
from bench.sysbench import run_sysbench

ROUTE = FULL_HANDSHAKE_ROUTE  # resumption off: the independent process does full handshakes too
REPO = Path(__file__).resolve().parents[1]


def scrape(env: BenchEnv) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{env.ports['admin']}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _delta(before: dict, after: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def independent_handshake_cpu(env: BenchEnv, count: int) -> float:
    """CPU seconds per upstream TLS handshake of a process doing only handshakes."""
    assert env.server is not None

    def process_cpu(mode: str) -> float:
        result = subprocess.run([sys.executable, "-m", "bench.handshake_process", str(env.server.port),  # type: ignore[union-attr]
                                 str(env.ca_path), str(count), mode], capture_output=True, text=True, check=True,
                                cwd=REPO, timeout=600)
        return float(result.stdout)

    return (process_cpu("tls") - process_cpu("wrap")) / count


def run(env: BenchEnv, size: RunSize, progress: Callable[[str], None],
        external: dict[str, Any] | None) -> dict[str, Any]:
    endpoint = Endpoint("127.0.0.1", env.ports[ROUTE])
    count = max(50, size.handshakes)
    rounds: list[dict[str, float]] = []
    totals = {"metric_cpu_s": 0.0, "handshakes": 0.0}
    phase_sums: dict[str, list[float]] = {phase: [0.0, 0.0] for phase in ("connect", "greeting", "tls", "auth", "total")}
    for _ in range(max(1, size.repetitions)):
        independent = independent_handshake_cpu(env, count)
        before = scrape(env)
        run_sysbench("connect_select1", endpoint, client_tls=False, threads=1, seconds=0,
                     events=count, workdir=env.workdir)
        after = scrape(env)
        handshakes = _delta(before, after, "tlsproxy_tls_handshake_cpu_seconds_count", route=ROUTE, resumed="no")
        if not handshakes:
            return {"error": "no handshake was counted by the proxy"}
        cpu = _delta(before, after, "tlsproxy_tls_handshake_cpu_seconds_sum", route=ROUTE, resumed="no")
        totals["metric_cpu_s"] += cpu
        totals["handshakes"] += handshakes
        for phase, sums in phase_sums.items():
            sums[0] += _delta(before, after, "tlsproxy_handshake_duration_seconds_sum", route=ROUTE, phase=phase)
            sums[1] += _delta(before, after, "tlsproxy_handshake_duration_seconds_count", route=ROUTE, phase=phase)
        rounds.append({"metric_cpu_us": cpu / handshakes * 1e6, "independent_cpu_us": independent * 1e6,
                       "ratio": cpu / handshakes / independent, "handshakes": handshakes})
        progress(f"proxy metrics round {len(rounds)}: handshake CPU {rounds[-1]['metric_cpu_us']:.0f} us (metric) vs "
                 f"{rounds[-1]['independent_cpu_us']:.0f} us (independent)")
    comparison_resumption = resumption_cpu(env, count, max(1, size.repetitions), progress)
    metric_mean = totals["metric_cpu_s"] / totals["handshakes"] * 1e6
    independent_mean = statistics.mean(r["independent_cpu_us"] for r in rounds)
    phases = {phase: (sums[0] / sums[1] * 1e3 if sums[1] else float("nan")) for phase, sums in phase_sums.items()}
    comparison: dict[str, Any] = {
        "connections": int(totals["handshakes"]), "handshakes_counted": int(totals["handshakes"]), "rounds": rounds,
        "proxy_metric": {"tls_handshake_cpu_us_mean": metric_mean, "phase_latency_ms_mean": phases},
        "independent": {
            "what": "getrusage of a process doing only handshakes with the same TLS settings, minus the same "
                    "connections with their TLS objects made and freed but no handshake, per handshake "
                    "(bench/handshake_process.py)",
            "tls_handshake_cpu_us": independent_mean,
        },
        "difference": {"cpu_percent": (metric_mean / independent_mean - 1) * 100,
                       "cpu_median_round_ratio": statistics.median(r["ratio"] for r in rounds)},
    }
    variant = next((v for v in (external or {}).get("variants", []) if v.get("name") == "TLSv1.3 full"), None)
    if variant is not None:
        comparison["external"] = {"what": "bench/handshake.py, TLSv1.3 full, median (in-process, blocking)",
                                  "tls_handshake_latency_ms": variant["latency_ms"]["median"]}
        comparison["difference"]["latency_percent"] = (phases["tls"] / variant["latency_ms"]["median"] - 1) * 100
    comparison["resumption"] = comparison_resumption
    progress(f"proxy metrics: handshake CPU {metric_mean:.0f} us (metric) vs {independent_mean:.0f} us "
             f"(independent), {comparison['difference']['cpu_percent']:+.1f}%")
    return comparison


def resumption_cpu(env: BenchEnv, count: int, repetitions: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """The proxy's upstream TLS handshake CPU (its own metric), full against resumed, per TLS version:
    connect-per-request through a route with session resumption off and one with it on, interleaved."""
    sums = {route: [0.0, 0.0] for route in HANDSHAKE_ROUTES}
    for _ in range(repetitions):
        for route, (_, resumption) in HANDSHAKE_ROUTES.items():
            before = scrape(env)
            run_sysbench("connect_select1", Endpoint("127.0.0.1", env.ports[route]), client_tls=False, threads=1,
                         seconds=0, events=count, workdir=env.workdir)
            after = scrape(env)
            label = "yes" if resumption else "no"
            sums[route][0] += _delta(before, after, "tlsproxy_tls_handshake_cpu_seconds_sum", route=route, resumed=label)
            sums[route][1] += _delta(before, after, "tlsproxy_tls_handshake_cpu_seconds_count", route=route,
                                     resumed=label)
    result: dict[str, Any] = {}
    for version in ("TLSv1.3", "TLSv1.2"):
        per = {}
        for route, (route_version, resumption) in HANDSHAKE_ROUTES.items():
            if route_version == version:
                cpu, handshakes = sums[route]
                per["resumed" if resumption else "full"] = {
                    "cpu_us": cpu / handshakes * 1e6 if handshakes else float("nan"), "handshakes": int(handshakes)}
        per["ratio"] = per["resumed"]["cpu_us"] / per["full"]["cpu_us"]
        result[version] = per
        progress(f"proxy handshake CPU {version}: full {per['full']['cpu_us']:.0f} us, resumed "
                 f"{per['resumed']['cpu_us']:.0f} us ({per['ratio']:.2f}x; {per['resumed']['handshakes']} of "
                 f"{count * repetitions} connections resumed)")
    return result
