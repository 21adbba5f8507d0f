"""The sysbench workloads, run through every scenario, repetitions interleaved (A B C ... A B C ...)."""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from bench.env import POOL_ROUTE, BenchEnv
from bench.model import SCENARIOS, RunSize, Sample, Scenario
from bench.procs import CpuMeter
from bench.proxy_metrics import scrape
from bench.sysbench import SysbenchResult, run_sysbench

log = logging.getLogger(__name__)

MIB = 1024 * 1024
BULK_EVENT_MIB = 16  # one result set per event


def measure(env: BenchEnv, scenario: Scenario, run: Callable[[], SysbenchResult]) -> tuple[SysbenchResult, dict[str, float]]:
    meter = CpuMeter(env.pids(scenario))
    meter.start()
    result = run()
    cpu = meter.stop()
    cpu["client"] = result.client_cpu_s
    return result, cpu


def _queries(env: BenchEnv, scenario: Scenario, test: str, workload: str, threads: int, size: RunSize,
             repetition: int, options: dict[str, str | int] | None = None) -> Sample:
    """Queries on open connections: sysbench's `test` for size.seconds, one query per event."""
    result, cpu = measure(env, scenario, lambda: run_sysbench(
        test, env.endpoint(scenario), client_tls=scenario.client_tls, threads=threads,
        seconds=size.seconds, workdir=env.workdir, options=options))
    queries = result.queries or result.events
    return Sample(
        workload=workload, variant=f"threads={threads}", scenario=scenario.name, repetition=repetition,
        duration_s=result.seconds,
        metrics={"qps": queries / result.seconds, "p50_ms": result.percentile(0.50),
                 "p95_ms": result.percentile(0.95), "p99_ms": result.percentile(0.99)},
        cpu_s=cpu, units={"queries": queries},
    )


def point_select(env: BenchEnv, scenario: Scenario, threads: int, size: RunSize, repetition: int) -> Sample:
    return _queries(env, scenario, "oltp_point_select", "point_select", threads, size, repetition,
                    {"tables": 1, "table-size": size.table_size})


def select1(env: BenchEnv, scenario: Scenario, threads: int, size: RunSize, repetition: int) -> Sample:
    """A read-only point query without a table: SELECT 1 on open connections."""
    return _queries(env, scenario, "select1", "select1", threads, size, repetition)


def connect_per_request(env: BenchEnv, scenario: Scenario, threads: int, size: RunSize, repetition: int) -> Sample:
    pooled = scenario.name == POOL_ROUTE
    before = pool_events(env) if pooled else {}
    result, cpu = measure(env, scenario, lambda: run_sysbench(
        "connect_select1", env.endpoint(scenario), client_tls=scenario.client_tls, threads=threads,
        seconds=size.seconds, workdir=env.workdir))
    units = {"connections": float(result.events), "queries": float(result.events)}
    if pooled:  # the pool's own count of what happened: logins on a pooled connection, parks, refusals
        after = pool_events(env)
        units.update({f"pool_{outcome}": after[outcome] - before.get(outcome, 0.0) for outcome in after})
    return Sample(
        workload="connect", variant=f"threads={threads}", scenario=scenario.name, repetition=repetition,
        duration_s=result.seconds,
        metrics={"conn_per_s": result.events / result.seconds, "p50_ms": result.percentile(0.50),
                 "p99_ms": result.percentile(0.99)},
        cpu_s=cpu, units=units,
    )


def pool_events(env: BenchEnv, route: str = POOL_ROUTE) -> dict[str, float]:
    """tlsproxy_upstream_pool_events_total of `route` by outcome, from the proxy's /metrics."""
    return {dict(labels)["outcome"]: value for (name, labels), value in scrape(env).items()
            if name == "tlsproxy_upstream_pool_events_total" and dict(labels).get("route") == route}


def bulk(env: BenchEnv, scenario: Scenario, row_bytes: int, size: RunSize, repetition: int) -> Sample:
    event_mib = min(BULK_EVENT_MIB, size.bulk_mib)
    rows = max(1, event_mib * MIB // row_bytes)
    events = max(1, size.bulk_mib // event_mib)
    result, cpu = measure(env, scenario, lambda: run_sysbench(
        "bulk", env.endpoint(scenario), client_tls=scenario.client_tls, threads=1, seconds=0, events=events,
        workdir=env.workdir, options={"rowbytes": row_bytes, "rows": rows, "source": env.bulk_source}))
    mib = result.events * rows * row_bytes / MIB
    return Sample(
        workload="bulk", variant=f"row={_size_label(row_bytes)}", scenario=scenario.name, repetition=repetition,
        duration_s=result.seconds,
        metrics={"mb_per_s": mib * MIB / 1e6 / result.seconds, "p50_ms_per_result": result.percentile(0.5)},
        cpu_s=cpu, units={"mib": mib, "queries": result.events},
    )


def _size_label(size: int) -> str:
    return f"{size // MIB}MiB" if size >= MIB else f"{size // 1024}KiB"


EMBEDDED_WORKLOADS = ("point_select", "connect", "bulk")


def interleaved(env: BenchEnv, size: RunSize, scenarios: Iterable[Scenario] = SCENARIOS,
                progress: Callable[[str], None] = print,
                workloads: Iterable[str] = EMBEDDED_WORKLOADS) -> list[Sample]:
    """Every workload variant through every scenario, repetitions interleaved so drift hits all alike."""
    scenarios = list(scenarios)
    workloads = tuple(workloads)
    variants: list[tuple[str, Callable[[Scenario, int], Sample]]] = []
    if "select1" in workloads:
        for threads in size.point_threads:
            variants.append((f"select1 threads={threads}", lambda s, r, t=threads: select1(env, s, t, size, r)))
    for threads in size.point_threads if "point_select" in workloads else ():
        variants.append((f"point_select threads={threads}",
                         lambda s, r, t=threads: point_select(env, s, t, size, r)))
    for threads in size.connect_threads if "connect" in workloads else ():
        variants.append((f"connect threads={threads}",
                         lambda s, r, t=threads: connect_per_request(env, s, t, size, r)))
    for row_bytes in size.bulk_row_sizes if "bulk" in workloads else ():
        variants.append((f"bulk row={_size_label(row_bytes)}",
                         lambda s, r, b=row_bytes: bulk(env, s, b, size, r)))
    samples: list[Sample] = []

    def takes_part(scenario: Scenario, variant_name: str) -> bool:
        return not scenario.workloads or variant_name.split()[0] in scenario.workloads

    total = sum(size.repetitions for name, _ in variants for scenario in scenarios if takes_part(scenario, name))
    done = 0
    for name, measure in variants:
        for repetition in range(size.repetitions):
            for scenario in scenarios:
                if not takes_part(scenario, name):
                    continue
                sample = measure(scenario, repetition)
                samples.append(sample)
                done += 1
                headline = next(iter(sample.metrics.items()))
                progress(f"[{done}/{total}] {name} rep {repetition + 1} {scenario.name}: "
                         f"{headline[0]}={headline[1]:.1f}")
    return samples
