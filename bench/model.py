"""What a benchmark run measures: scenarios, samples and run sizes."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"  # one folder per run, results.json in each


@dataclass(frozen=True)
class Scenario:
    """One way for the client to reach the same server."""

    name: str
    label: str
    client_tls: bool  # the client library does TLS itself
    via: str  # "direct", "proxy_tls", "proxy_disabled", "socat"
    local_leg: str = "tcp"  # "tcp" or "unix" (the client's hop to the proxy)
    workloads: tuple[str, ...] = ()  # the workloads it takes part in; empty: all

    @property
    def roles(self) -> tuple[str, ...]:
        """Processes whose CPU this scenario is charged with."""
        if self.via.startswith("proxy"):
            return ("client", "proxy", "server")
        if self.via == "socat":
            return ("client", "relay", "server")
        return ("client", "server")


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("plaintext", "1 direct plaintext", client_tls=False, via="direct"),
    Scenario("client_tls", "2 direct TLS (client library)", client_tls=True, via="direct"),
    Scenario("proxy_tls_tcp", "3 tlsproxy TLS, client leg TCP", client_tls=False, via="proxy_tls"),
    Scenario("proxy_tls_unix", "3 tlsproxy TLS, client leg Unix socket", client_tls=False, via="proxy_tls",
             local_leg="unix"),
    Scenario("proxy_disabled_tcp", "4 tlsproxy DISABLED (relay only), TCP", client_tls=False, via="proxy_disabled"),
    Scenario("proxy_disabled_unix", "4 tlsproxy DISABLED (relay only), Unix socket", client_tls=False,
             via="proxy_disabled", local_leg="unix"),
    Scenario("socat_client_tls", "5 socat relay, client does TLS", client_tls=True, via="socat"),
    Scenario("proxy_tls_tcp_full", "3 tlsproxy TLS, session resumption off, TCP", client_tls=False, via="proxy_tls",
             workloads=("connect",)),
    Scenario("proxy_tls_tcp_prewarm", "3 tlsproxy TLS, prewarm 8, TCP", client_tls=False, via="proxy_tls",
             workloads=("connect",)),
)
SCENARIO_BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
BASELINES = ("client_tls", "plaintext")


@dataclass
class Sample:
    """One measurement of one workload variant through one scenario."""

    workload: str
    variant: str
    scenario: str
    repetition: int
    duration_s: float
    metrics: dict[str, float]  # e.g. qps, p50_ms, conn_per_s, mb_per_s
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds by role
    units: dict[str, float] = field(default_factory=dict)  # queries, connections, mib done in the sample

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunSize:
    """How big a run is. --quick must finish in under 3 minutes on 2 cores."""

    name: str
    repetitions: int
    seconds: float  # per sysbench sample
    point_threads: tuple[int, ...]
    connect_threads: tuple[int, ...]
    bulk_mib: int  # per row size, per sample
    bulk_row_sizes: tuple[int, ...]
    table_size: int
    handshakes: int  # per handshake sample
    idle_connections: tuple[int, ...]
    tls_matrix: bool


QUICK = RunSize("quick", repetitions=2, seconds=2.0, point_threads=(1, 4), connect_threads=(1,),
                bulk_mib=32, bulk_row_sizes=(1048576,), table_size=10000, handshakes=100,
                idle_connections=(0, 200), tls_matrix=False)
FULL = RunSize("full", repetitions=5, seconds=6.0, point_threads=(1, 4, 16), connect_threads=(1, 4),
               bulk_mib=256, bulk_row_sizes=(1024, 1048576), table_size=100000, handshakes=400,
               idle_connections=(0, 1000, 5000), tls_matrix=True)
TINY = RunSize("tiny", repetitions=1, seconds=0.5, point_threads=(1,), connect_threads=(1,), bulk_mib=2,
               bulk_row_sizes=(1048576,), table_size=100, handshakes=5, idle_connections=(0, 10), tls_matrix=False)
SIZES = {size.name: size for size in (QUICK, FULL, TINY)}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(samples: list[Sample], metric: str) -> dict[str, float]:
    values = [sample.metrics[metric] for sample in samples if metric in sample.metrics]
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": median(values), "min": min(values), "max": max(values), "n": len(values)}
