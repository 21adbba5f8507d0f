"""The proxy's own metrics, scraped from its admin listener around a connect-per-request run, against
the external measurement of the same TLS handshake (bench/handshake.py): both, and their difference."""

from __future__ import annotations

import urllib.request
from typing import Any, Callable

from prometheus_client.parser import text_string_to_metric_families

from bench.env import BenchEnv
from bench.model import SCENARIO_BY_NAME, RunSize
from bench.sysbench import run_sysbench

ROUTE = "proxy_tls_tcp"


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


def run(env: BenchEnv, size: RunSize, progress: Callable[[str], None],
        external: dict[str, Any] | None) -> dict[str, Any]:
    scenario = SCENARIO_BY_NAME[ROUTE]
    before = scrape(env)
    result = run_sysbench("connect_select1", env.endpoint(scenario), client_tls=False, threads=1,
                          seconds=max(2.0, size.seconds), workdir=env.workdir)
    after = scrape(env)
    handshakes = _delta(before, after, "tlsproxy_tls_handshake_cpu_seconds_count", route=ROUTE, resumed="no")
    if not handshakes:
        return {"error": "no handshake was counted by the proxy", "connections": result.events}
    cpu_us = _delta(before, after, "tlsproxy_tls_handshake_cpu_seconds_sum", route=ROUTE, resumed="no") / handshakes * 1e6
    phases = {}
    for phase in ("connect", "greeting", "tls", "auth", "total"):
        count = _delta(before, after, "tlsproxy_handshake_duration_seconds_count", route=ROUTE, phase=phase)
        total = _delta(before, after, "tlsproxy_handshake_duration_seconds_sum", route=ROUTE, phase=phase)
        phases[phase] = total / count * 1e3 if count else float("nan")
    comparison: dict[str, Any] = {
        "connections": result.events, "handshakes_counted": handshakes,
        "proxy_metric": {"tls_handshake_cpu_us_mean": cpu_us, "phase_latency_ms_mean": phases},
    }
    variant = next((v for v in (external or {}).get("variants", []) if v.get("name") == "TLSv1.3 full"), None)
    if variant is not None:
        external_cpu = variant["cpu_us"]["median"]
        external_latency = variant["latency_ms"]["median"]
        comparison["external"] = {"what": "bench/handshake.py, TLSv1.3 full, median",
                                  "tls_handshake_cpu_us": external_cpu, "tls_handshake_latency_ms": external_latency}
        comparison["difference"] = {
            "cpu_percent": (cpu_us / external_cpu - 1) * 100,
            "latency_percent": (phases["tls"] / external_latency - 1) * 100,
        }
    progress(f"proxy metrics: {handshakes:.0f} handshakes, CPU {cpu_us:.0f} us/handshake (metric), "
             f"TLS phase {phases['tls']:.2f} ms, total {phases['total']:.2f} ms")
    return comparison
