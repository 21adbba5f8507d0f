"""The comparisons a report makes of a run (bench.model.RunResults): samples grouped by workload
variant and scenario, medians, ratios to the baselines and CPU per unit of work.

Every comparison is a ratio of medians taken within the same run: absolute numbers drift on shared
machines, ratios between interleaved scenarios much less.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from bench import model
from bench.model import RunResults, Sample, Scenario, finite

# ---- what the metrics mean ---------------------------------------------------------------------

HEADLINE = {"point_select": "qps", "select1": "qps", "connect": "conn_per_s", "bulk": "mb_per_s"}
PER_UNIT = {"qps": ("query", 1.0), "conn_per_s": ("connection", 1.0), "mb_per_s": ("MiB", 1024 * 1024 / 1e6)}
"""A rate's unit of work and its size in the rate's units: µs per unit = threads × size × 1e6 / rate."""
METRIC_UNITS = {"qps": "queries/s", "conn_per_s": "connections/s", "mb_per_s": "MB/s"}
CPU_UNIT = {"point_select": "queries", "select1": "queries", "connect": "connections", "bulk": "mib"}
UNIT_SINGULAR = {"queries": "query", "connections": "connection", "mib": "MiB", "handshakes": "handshake"}
ROLES = ("client", "proxy", "relay", "server")


def median_of(values: Iterable[float]) -> float:
    kept = [value for value in values if finite(value)]
    return statistics.median(kept) if kept else float("nan")


def ratio_of(value: float, baseline: float) -> float:
    if not (finite(value) and finite(baseline)) or baseline == 0:
        return float("nan")
    return value / baseline


def metric_label(key: str) -> str:
    """p50_ms -> 'p50 ms', p50_ms_per_result -> 'p50 ms/result', conn_per_s -> 'conn/s'."""
    label = key.replace("_per_", "/").replace("_", " ")
    return label.replace("conn/s", "connections/s")


def is_latency(key: str) -> bool:
    return "_ms" in key or key.endswith("ms")


def _first_seen(keys: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(keys))


class Variant:
    """One workload variant (e.g. point_select threads=4): samples by scenario and their summaries."""

    def __init__(self, workload: str, variant: str, samples: list[Sample], scenarios: list[str]):
        self.workload = workload
        self.variant = variant
        self.title = f"{workload} {variant}".strip()
        self.by_scenario: dict[str, list[Sample]] = {}
        for sample in samples:
            self.by_scenario.setdefault(sample.scenario, []).append(sample)
        known = [name for name in scenarios if name in self.by_scenario]
        self.scenarios = known + sorted(name for name in self.by_scenario if name not in known)
        metric_keys = _first_seen(key for sample in samples for key in sample.metrics)
        self.headline = HEADLINE.get(workload) or next((key for key in metric_keys if not is_latency(key)),
                                                       metric_keys[0] if metric_keys else "")
        self.higher_is_better = not is_latency(self.headline)
        self.latency_keys = [key for key in metric_keys if key != self.headline and is_latency(key)]
        self.other_keys = [key for key in metric_keys if key != self.headline and key not in self.latency_keys]
        unit_keys = _first_seen(key for sample in samples for key in sample.units)
        preferred = CPU_UNIT.get(workload, "")
        self.cpu_unit = preferred if preferred in unit_keys else (unit_keys[0] if unit_keys else "")
        present = {role for sample in samples for role in sample.cpu_s}
        self.roles = [role for role in ROLES if role in present] + sorted(present - set(ROLES))

    @property
    def unit_label(self) -> str:
        return UNIT_SINGULAR.get(self.cpu_unit, self.cpu_unit)

    @property
    def metric_unit(self) -> str:
        return METRIC_UNITS.get(self.headline, metric_label(self.headline))

    def values(self, scenario: str, metric: str) -> list[float]:
        return [sample.metrics[metric] for sample in self.by_scenario.get(scenario, [])
                if finite(sample.metrics.get(metric))]

    def summary(self, scenario: str, metric: str) -> dict[str, float]:
        values = self.values(scenario, metric)
        if not values:
            return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
        return {"median": median_of(values), "min": min(values), "max": max(values), "n": len(values)}

    def median(self, scenario: str, metric: str) -> float:
        return median_of(self.values(scenario, metric))

    def ratio(self, scenario: str, baseline: str, metric: str | None = None) -> float:
        metric = metric or self.headline
        return ratio_of(self.median(scenario, metric), self.median(baseline, metric))

    @property
    def threads(self) -> int:
        """The variant's concurrency (threads=N), 1 when it has none: each thread waits for its own answers."""
        for part in self.variant.split():
            if part.startswith("threads=") and part[8:].isdigit():
                return int(part[8:])
        return 1

    @property
    def time_unit(self) -> str:
        return PER_UNIT[self.headline][0] if self.headline in PER_UNIT else ""

    def us_per_unit(self, scenario: str) -> float:
        """What one unit of work (a query, a connection, a MiB) takes one thread, in µs, from the median rate."""
        if self.headline not in PER_UNIT:
            return float("nan")
        rate = self.median(scenario, self.headline)
        if not finite(rate) or rate <= 0:
            return float("nan")
        return self.threads * PER_UNIT[self.headline][1] * 1e6 / rate

    def added_us(self, scenario: str, baseline: str) -> float:
        """µs this scenario adds to each unit of work against the baseline (negative: it saves time)."""
        value, base = self.us_per_unit(scenario), self.us_per_unit(baseline)
        return value - base if finite(value) and finite(base) else float("nan")

    def cpu_per_unit(self, scenario: str) -> dict[str, float]:
        """Median over repetitions of CPU µs per unit, by role and in total (a role this scenario
        does not have is absent)."""
        per_role: dict[str, list[float]] = {}
        totals: list[float] = []
        for sample in self.by_scenario.get(scenario, []):
            done = sample.units.get(self.cpu_unit)
            cpu = sample.cpu_s
            if not finite(done) or done <= 0 or not cpu:
                continue
            for role, seconds in cpu.items():
                if finite(seconds):
                    per_role.setdefault(role, []).append(seconds * 1e6 / done)
            totals.append(sum(seconds for seconds in cpu.values() if finite(seconds)) * 1e6 / done)
        result = {role: median_of(values) for role, values in per_role.items()}
        result["total"] = median_of(totals)
        return result

    def cpu_ratio(self, scenario: str, baseline: str) -> float:
        return ratio_of(self.cpu_per_unit(scenario)["total"], self.cpu_per_unit(baseline)["total"])


class RunAnalysis:
    """A run's scenarios (those of the run, then any seen only in samples), baselines and variants."""

    def __init__(self, results: RunResults):
        self.results = results
        self.scenarios: list[Scenario] = list(results.scenarios or model.SCENARIOS)
        self.labels = {scenario.name: scenario.label for scenario in self.scenarios}
        for sample in results.samples:  # scenarios only seen in samples still get a row
            if sample.scenario not in self.labels:
                self.labels[sample.scenario] = sample.scenario
                self.scenarios.append(Scenario(sample.scenario, sample.scenario, client_tls=False, via="–",
                                               local_leg="–"))
        self.names = [scenario.name for scenario in self.scenarios]
        not_run = results.target.not_run if results.target is not None else {}
        self.baselines = [name for name in model.BASELINES if name in self.labels and name not in not_run]
        grouped: dict[tuple[str, str], list[Sample]] = {}
        for sample in results.samples:
            grouped.setdefault((sample.workload, sample.variant), []).append(sample)
        self.variants = [Variant(workload, variant, samples, self.names)
                         for (workload, variant), samples in grouped.items()]

    def label(self, name: str) -> str:
        return self.labels.get(name, name)
