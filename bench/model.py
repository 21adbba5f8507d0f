"""What a benchmark run measures (scenarios, samples, run sizes) and the results files it writes:
results.json of a run (RunResults) and of a soak (SoakResults), with load and save."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeGuard

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
    Scenario("socat_client_tls_unix", "5 socat relay, client does TLS, client leg Unix socket", client_tls=True,
             via="socat", local_leg="unix", workloads=("point_select",)),
    Scenario("proxy_tls_tcp_full", "3 tlsproxy TLS, session resumption off, TCP", client_tls=False, via="proxy_tls",
             workloads=("connect",)),
    Scenario("proxy_tls_tcp_prewarm", "3 tlsproxy TLS, prewarm 8, TCP", client_tls=False, via="proxy_tls",
             workloads=("connect",)),
    Scenario("proxy_tls_tcp_pool", "3 tlsproxy TLS, upstream pool 8, TCP", client_tls=False, via="proxy_tls",
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


QUICK = RunSize("quick", repetitions=2, seconds=2.0, point_threads=(1, 4), connect_threads=(1, 4),
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


# ---- results.json: what `bench run` writes and `bench report` reads -------------------------------
#
# The top level, the samples and the scenarios are typed. Each optional module (bench/handshake.py,
# bench/memory.py, bench/tls_matrix.py, bench/proxy_metrics.py) writes its own record; the model keeps
# that record as written (`data`: the report prints it as measured, column by column) and parses what
# the report interprets from it (plots, the proxy metrics section) into typed fields.

STATS_KEYS = {"median", "min", "max", "n", "mean", "stdev", "p50", "p90", "p95", "p99"}


def finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def is_stats(value: Any) -> bool:
    """{"median": .., "min": .., "max": ..} (and n, mean, ...): shown as one cell, plotted by its median."""
    return (isinstance(value, dict) and "median" in value and set(value) <= STATS_KEYS
            and all(is_scalar(item) for item in value.values()))


def number(value: Any) -> float | None:
    """A plottable number: a number, or the median of a summary."""
    if is_stats(value):
        value = value.get("median")
    return float(value) if finite(value) else None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _records(value: Any, key: str) -> list[dict[str, Any]]:
    """value[key] when value is a dict and that is a list: its dict items."""
    items = value.get(key) if isinstance(value, dict) else None
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


@dataclass(frozen=True)
class Stats:
    """A median [min–max] summary as the modules write it, or one number (then min = max = median)."""

    median: float
    low: float
    high: float

    @classmethod
    def parse(cls, value: Any) -> Stats | None:
        if is_stats(value):
            median = number(value.get("median"))
            if median is None:
                return None
            low, high = number(value.get("min")), number(value.get("max"))
            return cls(median, low if low is not None else median, high if high is not None else median)
        single = number(value)
        return cls(single, single, single) if single is not None else None


@dataclass(frozen=True)
class TlsChoice:
    """What a handshake variant or a TLS matrix point pins: TLS version, key type, cipher, resumption."""

    name: str | None = None
    tls_version: str | None = None
    key_type: str | None = None
    cipher: str | None = None
    resumption: bool | None = None

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> TlsChoice:
        return cls(row.get("name"), row.get("tls_version"), row.get("key_type"), row.get("cipher"),
                   row.get("resumption"))

    @property
    def label(self) -> str:
        name = str(self.name or " ".join("" if value is None else str(value)
                                         for value in (self.tls_version, self.resumption)))
        extras = [str(value) for value in (self.key_type, self.cipher) if value and str(value) not in name]
        return f"{name} ({', '.join(extras)})" if extras else name


@dataclass(frozen=True)
class HandshakeVariant:
    """One upstream handshake variant (bench/handshake.py): the TLS client's CPU per handshake (what
    tlsproxy pays), the server's CPU per connection, the handshake latency."""

    tls: TlsChoice
    cpu_us: Stats
    server_cpu_us_per_connection: Stats | None
    latency_ms: Stats | None


@dataclass
class HandshakeResults:
    """bench/handshake.py's record (also the TLS matrix's "handshake"): {"variants": [...], ...}."""

    data: Any
    variants: list[HandshakeVariant]  # those with a CPU figure

    @classmethod
    def from_json(cls, data: Any) -> HandshakeResults:
        variants = []
        for row in _records(data, "variants"):
            cpu = Stats.parse(row.get("cpu_us"))
            if cpu is not None:
                variants.append(HandshakeVariant(TlsChoice.from_json(row), cpu,
                                                 Stats.parse(row.get("server_cpu_us_per_connection")),
                                                 Stats.parse(row.get("latency_ms"))))
        return cls(data, variants)


@dataclass(frozen=True)
class MemoryPoint:
    connections: float
    proxy_rss_kib: float
    server_rss_kib: float | None


@dataclass
class MemoryResults:
    """bench/memory.py's record: RSS with N idle proxied connections."""

    data: Any
    points: list[MemoryPoint]
    proxy_rss_kib_after_close: float | None
    kib_per_connection: dict[str, Any]  # vs_0: connections -> KiB per connection against none

    @classmethod
    def from_json(cls, data: Any) -> MemoryResults:
        points = [MemoryPoint(point["connections"], point["proxy_rss_kib"],
                              point.get("server_rss_kib") if finite(point.get("server_rss_kib")) else None)
                  for point in _records(data, "points")
                  if finite(point.get("connections")) and finite(point.get("proxy_rss_kib"))]
        after = _mapping(data).get("after_close")
        after_kib = after.get("proxy_rss_kib") if isinstance(after, dict) else None
        vs_0 = (_mapping(data).get("kib_per_connection") or {}).get("vs_0")
        return cls(data, points, after_kib if finite(after_kib) else None, vs_0 if isinstance(vs_0, dict) else {})


@dataclass(frozen=True)
class BulkPoint:
    """Bulk transfer through tlsproxy pinned to one TLS version, cipher and server key."""

    tls: TlsChoice
    mb_per_s: Stats
    proxy_cpu_ms_per_mib: Stats | None
    server_cpu_ms_per_mib: Stats | None

    @property
    def label(self) -> str:
        return str(self.tls.name or self.tls.label)


@dataclass
class TlsMatrixResults:
    """bench/tls_matrix.py's record: {"design", "handshake": {"variants"}, "bulk": {"points"}, ...}."""

    data: Any
    handshake: HandshakeResults | None
    bulk: list[BulkPoint]

    @classmethod
    def from_json(cls, data: Any) -> TlsMatrixResults:
        handshake = _mapping(data).get("handshake")
        bulk = []
        for point in _records(_mapping(data).get("bulk"), "points"):
            speed = Stats.parse(point.get("mb_per_s"))
            if speed is not None:
                bulk.append(BulkPoint(TlsChoice.from_json(point), speed, Stats.parse(point.get("proxy_cpu_ms_per_mib")),
                                      Stats.parse(point.get("server_cpu_ms_per_mib"))))
        return cls(data, HandshakeResults.from_json(handshake) if isinstance(handshake, dict) else None, bulk)


@dataclass(frozen=True)
class MetricsRound:
    metric_cpu_us: float | None
    independent_cpu_us: float | None
    ratio: float | None


@dataclass(frozen=True)
class ResumptionCost:
    """Full against resumed upstream handshakes of one TLS version, by the proxy's own metric."""

    full_cpu_us: float | None
    full_handshakes: int | None
    resumed_cpu_us: float | None
    resumed_handshakes: int | None
    ratio: float


@dataclass
class ProxyMetrics:
    """bench/proxy_metrics.py's record: the proxy's /metrics histograms next to independent measurements."""

    data: Any
    error: str | None = None
    handshakes_counted: int | None = None
    tls_handshake_cpu_us_mean: float | None = None
    phase_latency_ms_mean: dict[str, float] = field(default_factory=dict)
    independent_what: str = "not measured"
    independent_cpu_us: float | None = None
    external_what: str = "not measured"
    external_latency_ms: float | None = None
    cpu_percent: float | None = None
    latency_percent: float | None = None
    cpu_median_round_ratio: float = float("nan")
    rounds: list[MetricsRound] = field(default_factory=list)
    resumption: dict[str, ResumptionCost] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> ProxyMetrics:
        if not isinstance(data, dict):
            return cls(data)
        if "error" in data:
            return cls(data, error=data["error"])
        metric, independent = _mapping(data.get("proxy_metric")), _mapping(data.get("independent"))
        external, difference = _mapping(data.get("external")), _mapping(data.get("difference"))
        rounds = [MetricsRound(item.get("metric_cpu_us"), item.get("independent_cpu_us"), item.get("ratio"))
                  for item in data.get("rounds") or []]
        resumption = {version: ResumptionCost(per.get("full", {}).get("cpu_us"), per.get("full", {}).get("handshakes"),
                                              per.get("resumed", {}).get("cpu_us"),
                                              per.get("resumed", {}).get("handshakes"), per.get("ratio", float("nan")))
                      for version, per in (data.get("resumption") or {}).items()}
        return cls(data, None, data.get("handshakes_counted"), metric.get("tls_handshake_cpu_us_mean"),
                   metric.get("phase_latency_ms_mean", {}), independent.get("what", "not measured"),
                   independent.get("tls_handshake_cpu_us"), external.get("what", "not measured"),
                   external.get("tls_handshake_latency_ms"), difference.get("cpu_percent"),
                   difference.get("latency_percent"), difference.get("cpu_median_round_ratio", float("nan")),
                   rounds, resumption)


def _scenario_from_json(item: dict[str, Any]) -> Scenario:
    return Scenario(item["name"], item.get("label", item["name"]), bool(item.get("client_tls")),
                    item.get("via", "direct"), item.get("local_leg", "tcp"), tuple(item.get("workloads") or ()))


def _sample_from_json(item: dict[str, Any]) -> Sample:
    """Missing keys as the report has always read them: workload and scenario "?", no metrics."""
    return Sample(item.get("workload", "?"), item.get("variant", ""), item.get("scenario", "?"),
                  item.get("repetition", 0), item.get("duration_s", float("nan")), item.get("metrics", {}),
                  item.get("cpu_s", {}), item.get("units", {}))


def _run_size_from_json(item: dict[str, Any]) -> RunSize:
    values: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value for key, value in item.items()}
    return RunSize(**values)


@dataclass
class TargetInfo:
    """`bench run --target`: the server the run measured and how it was reached (never the password)."""

    address: str
    user: str = ""
    database: str = ""
    tls: dict[str, Any] = field(default_factory=dict)  # the connection flags: ssl_ca, tls_server_name, ...
    check: dict[str, Any] = field(default_factory=dict)  # tlsproxy check: server_version, tls_version, cipher, verified
    network: dict[str, Any] = field(default_factory=dict)  # tcp_connect_us, query_us: {"median", ...}
    not_run: dict[str, str] = field(default_factory=dict)  # scenario -> why it has no figures
    workloads: list[str] = field(default_factory=list)
    allow_plaintext: bool = False
    allow_create: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TargetInfo:
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def network_us(self, key: str) -> float | None:
        value = _mapping(self.network.get(key)).get("median")
        return float(value) if finite(value) else None


_SECTIONS: dict[str, Any] = {"handshake": HandshakeResults, "proxy_metrics": ProxyMetrics, "memory": MemoryResults,
             "tls_matrix": TlsMatrixResults}


@dataclass
class RunResults:
    """One `bench run`: the folder's results.json."""

    size: str = "?"
    run_size: RunSize | None = None
    started: float | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    event_loop: str | None = None
    workers: int = 1
    scenarios: list[Scenario] = field(default_factory=list)  # empty: the report assumes SCENARIOS
    versions: dict[str, str] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    handshake: HandshakeResults | None = None
    proxy_metrics: ProxyMetrics | None = None
    memory: MemoryResults | None = None
    tls_matrix: TlsMatrixResults | None = None
    finished: float | None = None
    target: TargetInfo | None = None  # a run against the user's own server (bench/target.py); None: embedded
    extra: dict[str, Any] = field(default_factory=dict)  # keys this model does not know, in file order

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResults:
        known = {item.name for item in fields(cls)} - {"extra"}
        results = cls(
            size=data.get("size", "?"),
            run_size=_run_size_from_json(data["run_size"]) if data.get("run_size") else None,
            started=data.get("started"), machine=data.get("machine") or {}, event_loop=data.get("event_loop"),
            workers=data.get("workers", 1),
            scenarios=[_scenario_from_json(item) for item in data.get("scenarios") or []],
            versions=data.get("versions") or {},
            samples=[_sample_from_json(item) for item in data.get("samples") or []],
            finished=data.get("finished"),
            target=TargetInfo.from_json(data["target"]) if isinstance(data.get("target"), dict) else None,
            extra={key: value for key, value in data.items() if key not in known})
        for key, section in _SECTIONS.items():
            if data.get(key) is not None:
                setattr(results, key, section.from_json(data[key]))
        return results

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"size": self.size}
        if self.run_size is not None:
            data["run_size"] = asdict(self.run_size)
        if self.started is not None:
            data["started"] = self.started
        data.update(machine=self.machine, event_loop=self.event_loop, workers=self.workers,
                    scenarios=[asdict(scenario) for scenario in self.scenarios], versions=self.versions,
                    samples=[sample.to_json() for sample in self.samples])
        for key in _SECTIONS:
            section = getattr(self, key)
            if section is not None:
                data[key] = section.data
        if self.finished is not None:
            data["finished"] = self.finished
        if self.target is not None:
            data["target"] = asdict(self.target)
        return {**data, **self.extra}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(_json_safe(self.to_json()), indent=1, default=str))

    @classmethod
    def load(cls, path: Path) -> RunResults:
        return cls.from_json(json.loads(Path(path).read_text()))


def _json_safe(value: Any) -> Any:
    """NaN (a metric with no data) as null: strict JSON tools reject bare NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


# ---- a soak's results.json (bench/soak.py) ----------------------------------------------------------


@dataclass
class SoakTotals:
    connections: int
    max_open: int
    ramp_s: float | None
    steady_s: float
    queries: int
    operations: int
    echo_checks: int
    blob_checks: int
    blob_bytes: int
    tls_checks: int
    login_attempts: int
    logins: int
    reconnects: int
    reconnects_per_s: float | None
    queries_per_s: float | None
    errors: int
    errors_by_kind: dict[str, int]
    error_examples: dict[str, list[str]]
    blob_rows_left: int


@dataclass
class SoakResults:
    """One `bench soak`: the folder's results.json (summary.md is written from it)."""

    what: str
    route: str
    config: dict[str, Any]  # SoakConfig's fields and mean_operations_per_login
    event_loop: str
    client_event_loop: str
    started: float
    finished: float
    machine: dict[str, Any]
    versions: dict[str, str]
    limits: dict[str, Any]
    totals: SoakTotals
    latency: dict[str, dict[str, Any]]  # "query", "login": n, p50_ms, p99_ms, p999_ms, max_ms
    proxy_rss: dict[str, Any]  # bench.soak_summary.memory_summary
    server_rss: dict[str, Any]
    client_rss: dict[str, Any]
    proxy_counters: dict[str, float]
    samples: list[dict[str, Any]]  # t, phase, proxy_rss_kib, proxy_fds, ..., errors
    problems: list[str]
    ok: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SoakResults:
        return cls(**{**data, "totals": SoakTotals(**data["totals"])})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: Path) -> SoakResults:
        return cls.from_json(json.loads(Path(path).read_text()))


def is_soak(data: dict[str, Any]) -> bool:
    return "route" in data and "totals" in data


def load_results(path: Path) -> RunResults | SoakResults:
    """A results.json of either kind (a folder DIR or DIR/results.json)."""
    path = Path(path)
    data = json.loads((path / "results.json" if path.is_dir() else path).read_text())
    return SoakResults.from_json(data) if is_soak(data) else RunResults.from_json(data)
