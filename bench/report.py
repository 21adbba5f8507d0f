"""report.md and PNG plots from a run's results (the dict cli.py writes to results.json).

Everything here is a pure function of that dict, so a report can be rendered again from an old
results.json (`write_report(json.loads(path.read_text()), folder)`) and a test can render a fixture.
Every comparison is a ratio of medians taken within the same run: absolute numbers drift on shared
machines, ratios between interleaved scenarios much less.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench import model

# ---- what the metrics mean ---------------------------------------------------------------------

HEADLINE = {"point_select": "qps", "connect": "conn_per_s", "bulk": "mb_per_s"}
METRIC_UNITS = {"qps": "queries/s", "conn_per_s": "connections/s", "mb_per_s": "MB/s"}
CPU_UNIT = {"point_select": "queries", "connect": "connections", "bulk": "mib"}
UNIT_SINGULAR = {"queries": "query", "connections": "connection", "mib": "MiB", "handshakes": "handshake"}
ROLES = ("client", "proxy", "relay", "server")
ROLE_COLORS = {"client": "#4c72b0", "proxy": "#dd8452", "relay": "#8172b3", "server": "#8c8c8c"}
SCENARIO_COLORS = {
    "plaintext": "#9e9e9e",
    "client_tls": "#1f77b4",
    "proxy_tls_tcp": "#ff7f0e",
    "proxy_tls_unix": "#ffbb78",
    "proxy_disabled_tcp": "#2ca02c",
    "proxy_disabled_unix": "#98df8a",
    "socat_client_tls": "#9467bd",
}
EXTRA_COLORS = ("#8c564b", "#e377c2", "#bcbd22", "#17becf", "#d62728", "#7f7f7f")
MAX_TABLE_ROWS = 60
MAX_INLINE_LIST = 12
STATS_KEYS = {"median", "min", "max", "n", "mean", "stdev", "p50", "p90", "p95", "p99"}
PROSE_KEYS = ("what", "description", "note", "notes")


def write_report(results: dict[str, Any], out: Path) -> None:
    """Write out/report.md and the PNG plots it links to."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(results)
    plots, plot_note = _write_plots(report, out)
    (out / "report.md").write_text(report.markdown(plots, plot_note), encoding="utf-8")


# ---- numbers -------------------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _median(values: Iterable[float]) -> float:
    kept = [value for value in values if _finite(value)]
    return statistics.median(kept) if kept else float("nan")


def _ratio(value: float, baseline: float) -> float:
    if not (_finite(value) and _finite(baseline)) or baseline == 0:
        return float("nan")
    return value / baseline


def fmt(value: Any) -> str:
    """A number for a table: about three significant digits, thousands separated, '–' when absent."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if not isinstance(value, float):
        return _cell(value)
    if not math.isfinite(value):
        return "–"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.9995:  # 0.9999 shows as 1.00, not 1
        return f"{value:.2f}"
    if magnitude == 0:
        return "0"
    return f"{value:.3g}"


def _signed_percent(value: Any) -> str:
    return f"{value:+.1f}%" if _finite(value) else "–"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}×" if _finite(value) else "–"


def _cell(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, str):
        return fmt(value)
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(item) for item in value)
    if isinstance(value, dict):
        if "median" in value and {"min", "max"} <= set(value):
            if not _finite(value["median"]):
                return "–"
            return f"{fmt(value['median'])} [{fmt(value['min'])}–{fmt(value['max'])}]"
        return ", ".join(f"{key}={_cell(item)}" for key, item in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def _plain(value: Any) -> str:
    """A run parameter as written: [1, 4], 1048576, true."""
    if isinstance(value, str):
        return _cell(value)
    return _cell(json.dumps(value, default=str))


def _table(header: list[str], rows: list[list[str]], align_right_from: int = 1,
           right: list[bool] | None = None) -> list[str]:
    """A markdown table; numeric columns (from `align_right_from`, or as `right` says) aligned right."""
    if right is None:
        right = [index >= align_right_from for index in range(len(header))]
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---:" if flag else "---" for flag in right) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _metric_label(key: str) -> str:
    """p50_ms -> 'p50 ms', p50_ms_per_result -> 'p50 ms/result', conn_per_s -> 'conn/s'."""
    label = key.replace("_per_", "/").replace("_", " ")
    return label.replace("conn/s", "connections/s")


def _is_latency(key: str) -> bool:
    return "_ms" in key or key.endswith("ms")


# ---- the model of a report -----------------------------------------------------------------------


class Variant:
    """One workload variant (e.g. point_select threads=4): samples by scenario and their summaries."""

    def __init__(self, workload: str, variant: str, samples: list[dict[str, Any]], scenarios: list[str]):
        self.workload = workload
        self.variant = variant
        self.title = f"{workload} {variant}".strip()
        self.by_scenario: dict[str, list[dict[str, Any]]] = {}
        for sample in samples:
            self.by_scenario.setdefault(sample.get("scenario", "?"), []).append(sample)
        known = [name for name in scenarios if name in self.by_scenario]
        self.scenarios = known + sorted(name for name in self.by_scenario if name not in known)
        metric_keys: list[str] = []
        for sample in samples:
            for key in sample.get("metrics", {}):
                if key not in metric_keys:
                    metric_keys.append(key)
        self.headline = HEADLINE.get(workload) or next((key for key in metric_keys if not _is_latency(key)),
                                                       metric_keys[0] if metric_keys else "")
        self.higher_is_better = not _is_latency(self.headline)
        self.latency_keys = [key for key in metric_keys if key != self.headline and _is_latency(key)]
        self.other_keys = [key for key in metric_keys if key != self.headline and key not in self.latency_keys]
        unit_keys: list[str] = []
        for sample in samples:
            for key in sample.get("units", {}):
                if key not in unit_keys:
                    unit_keys.append(key)
        self.cpu_unit = CPU_UNIT.get(workload) if CPU_UNIT.get(workload) in unit_keys else (
            unit_keys[0] if unit_keys else "")
        present = {role for sample in samples for role in sample.get("cpu_s", {})}
        self.roles = [role for role in ROLES if role in present] + sorted(present - set(ROLES))

    @property
    def unit_label(self) -> str:
        return UNIT_SINGULAR.get(self.cpu_unit, self.cpu_unit)

    @property
    def metric_unit(self) -> str:
        return METRIC_UNITS.get(self.headline, _metric_label(self.headline))

    def values(self, scenario: str, metric: str) -> list[float]:
        return [sample["metrics"][metric] for sample in self.by_scenario.get(scenario, [])
                if _finite(sample.get("metrics", {}).get(metric))]

    def summary(self, scenario: str, metric: str) -> dict[str, float]:
        values = self.values(scenario, metric)
        if not values:
            return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
        return {"median": _median(values), "min": min(values), "max": max(values), "n": len(values)}

    def median(self, scenario: str, metric: str) -> float:
        return _median(self.values(scenario, metric))

    def ratio(self, scenario: str, baseline: str, metric: str | None = None) -> float:
        metric = metric or self.headline
        return _ratio(self.median(scenario, metric), self.median(baseline, metric))

    def cpu_per_unit(self, scenario: str) -> dict[str, float]:
        """Median over repetitions of CPU µs per unit, by role and in total (a role this scenario
        does not have is absent)."""
        per_role: dict[str, list[float]] = {}
        totals: list[float] = []
        for sample in self.by_scenario.get(scenario, []):
            done = sample.get("units", {}).get(self.cpu_unit)
            cpu = sample.get("cpu_s", {})
            if not _finite(done) or done <= 0 or not cpu:
                continue
            for role, seconds in cpu.items():
                if _finite(seconds):
                    per_role.setdefault(role, []).append(seconds * 1e6 / done)
            totals.append(sum(seconds for seconds in cpu.values() if _finite(seconds)) * 1e6 / done)
        result = {role: _median(values) for role, values in per_role.items()}
        result["total"] = _median(totals)
        return result

    def cpu_ratio(self, scenario: str, baseline: str) -> float:
        return _ratio(self.cpu_per_unit(scenario)["total"], self.cpu_per_unit(baseline)["total"])


class Report:
    def __init__(self, results: dict[str, Any]):
        self.results = results
        raw = results.get("scenarios") or [scenario.__dict__ for scenario in model.SCENARIOS]
        self.scenarios: list[dict[str, Any]] = [dict(item) for item in raw]
        self.labels = {item["name"]: item.get("label", item["name"]) for item in self.scenarios}
        samples = results.get("samples") or []
        for sample in samples:  # scenarios only seen in samples still get a row
            name = sample.get("scenario", "?")
            if name not in self.labels:
                self.labels[name] = name
                self.scenarios.append({"name": name, "label": name})
        self.names = [item["name"] for item in self.scenarios]
        self.baselines = [name for name in model.BASELINES if name in self.labels]
        order: list[tuple[str, str]] = []
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for sample in samples:
            key = (sample.get("workload", "?"), sample.get("variant", ""))
            if key not in grouped:
                order.append(key)
                grouped[key] = []
            grouped[key].append(sample)
        self.variants = [Variant(workload, variant, grouped[(workload, variant)], self.names)
                         for workload, variant in order]

    def label(self, name: str) -> str:
        return self.labels.get(name, name)

    # ---- markdown ------------------------------------------------------------------------------

    def markdown(self, plots: dict[str, str], plot_note: str = "") -> str:
        lines: list[str] = []
        lines += self._header()
        lines += self._how_to_read()
        lines += self._scenario_table()
        warnings = self._warnings()
        if warnings:
            lines += ["## Warnings", ""] + [f"- {warning}" for warning in warnings] + [""]
        lines += self._summary(plots)
        for variant in self.variants:
            lines += self._variant_section(variant)
        for key, title in (("handshake", "Handshake cost"), ("memory", "Memory"), ("tls_matrix", "TLS matrix")):
            if self.results.get(key) is not None:
                lines += [f"## {title}", ""]
                for plot in (key, f"{key}_bulk"):
                    if plot in plots:
                        lines += [f"![{title}]({plots[plot]})", ""]
                lines += render_generic(self.results[key], level=3)
        lines += self._proxy_metrics_section()
        known = {"size", "run_size", "started", "finished", "machine", "event_loop", "workers", "scenarios", "versions",
                 "samples", "handshake", "memory", "tls_matrix", "proxy_metrics"}
        for key, value in self.results.items():
            if key not in known and isinstance(value, (dict, list)):
                lines += [f"## {key}", ""] + render_generic(value, level=3)
        if plot_note:
            lines += ["## Plots", "", plot_note, ""]
        return "\n".join(lines).rstrip() + "\n"

    def _proxy_metrics_section(self) -> list[str]:
        """The proxy's own histograms (scraped from /metrics) next to independent measurements."""
        data = self.results.get("proxy_metrics")
        if not isinstance(data, dict):
            return []
        lines = ["## The proxy's own metrics vs independent measurements", ""]
        if "error" in data:
            return lines + [f"Not available: {data['error']}.", ""]
        metric = data.get("proxy_metric", {})
        independent = data.get("independent", {})
        external = data.get("external", {})
        difference = data.get("difference", {})
        phases = metric.get("phase_latency_ms_mean", {})
        lines += [f"Scraped from `/metrics` around {fmt(data.get('handshakes_counted'))} connect-per-request "
                  f"connections through `proxy_tls_tcp_full` (TLS 1.3, session resumption off), in rounds "
                  f"interleaved with the independent measurement. "
                  f"CPU: {independent.get('what', 'not measured')}. Latency: {external.get('what', 'not measured')}.",
                  ""]
        rows = [
            ["TLS handshake CPU (µs)", fmt(metric.get("tls_handshake_cpu_us_mean")),
             fmt(independent.get("tls_handshake_cpu_us")), _signed_percent(difference.get("cpu_percent"))],
            ["TLS handshake latency (ms)", fmt(phases.get("tls")), fmt(external.get("tls_handshake_latency_ms")),
             _signed_percent(difference.get("latency_percent"))],
        ]
        lines += _table(["", "proxy metric (mean)", "independent", "difference"], rows)
        rounds = data.get("rounds") or []
        if rounds:
            lines += ["", "Per round (CPU µs per handshake): " + "; ".join(
                f"{fmt(r['metric_cpu_us'])} vs {fmt(r['independent_cpu_us'])} ({fmt_ratio(r['ratio'])})" for r in rounds)
                + f". Median round ratio {fmt_ratio(difference.get('cpu_median_round_ratio', float('nan')))}."]
        lines += ["", "Handshake phases as the proxy measures them (mean ms): "
                  + ", ".join(f"{phase} {fmt(value)}" for phase, value in phases.items()), ""]
        resumption = data.get("resumption") or {}
        if resumption:
            lines += ["### Upstream TLS session resumption (the proxy's metric)", "",
                      "Connect-per-request through a route with session resumption off (full) and one with it "
                      "on (resumed), interleaved; CPU per upstream TLS handshake from "
                      "`tlsproxy_tls_handshake_cpu_seconds`.", ""]
            rows = [[version, fmt(per.get("full", {}).get("cpu_us")), fmt(per.get("resumed", {}).get("cpu_us")),
                     fmt_ratio(per.get("ratio", float("nan"))),
                     f"{fmt(per.get('resumed', {}).get('handshakes'))} / {fmt(per.get('full', {}).get('handshakes'))}"]
                    for version, per in resumption.items()]
            lines += _table(["TLS version", "full (µs)", "resumed (µs)", "resumed / full",
                             "resumed handshakes / full handshakes"], rows) + [""]
        return lines

    def _header(self) -> list[str]:
        results = self.results
        size = results.get("size", "?")
        lines = [f"# tlsproxy benchmark: {size} run", ""]
        started = results.get("started")
        finished = results.get("finished")
        facts: list[tuple[str, str]] = []
        if _finite(started):
            when = datetime.datetime.fromtimestamp(started, tz=datetime.UTC)
            facts.append(("date", when.strftime("%Y-%m-%d %H:%M:%S UTC")))
        if _finite(started) and _finite(finished):
            facts.append(("wall time", f"{finished - started:.0f} s"))
        run_size = results.get("run_size") or {}
        if run_size:
            facts.append(("run size", "; ".join(f"{key} {_plain(value)}" for key, value in run_size.items()
                                                if key != "name")))
        facts.append(("samples", str(len(results.get("samples") or []))))
        if results.get("event_loop"):
            facts.append(("proxy event loop", str(results["event_loop"])))
        if results.get("workers", 1) != 1:
            facts.append(("proxy workers", str(results["workers"])))
        machine = results.get("machine") or {}
        if machine:
            facts.append(("machine", "; ".join(f"{key} {_plain(value)}" for key, value in machine.items())))
        versions = results.get("versions") or {}
        if versions:
            facts.append(("versions", "; ".join(f"{key} {_plain(value)}" for key, value in versions.items())))
        lines += [f"- **{key}**: {value}" for key, value in facts]
        return lines + [""]

    def _how_to_read(self) -> list[str]:
        return [
            "## How to read this report",
            "",
            ("Every scenario runs the same workload against the same MariaDB; repetitions are interleaved "
            "(all scenarios, then all again), so drift on a shared machine hits every scenario alike. "
            "Numbers are medians over repetitions with [min–max]. Absolute numbers are only comparable within "
            "one run; compare runs by their **ratios**: `vs client_tls` is this scenario's median divided by "
            "the median of direct TLS done by the client library (what tlsproxy replaces), `vs plaintext` "
            "divides by direct plaintext (the floor no TLS path can beat). For throughput higher is better "
            "(1.00× = as fast as the baseline, 0.80× = 20% slower); for latency and CPU lower is better."),
            "",
            ("CPU is user+system time of each process over the sample, from /proc for the server, proxy and "
            "relay (10 ms clock ticks, so tiny samples are coarse) and from the client's rusage, divided by "
            "the work done: µs per query (point_select), per connection (connect: connect, SELECT 1, "
            "disconnect) or per MiB of result set (bulk). The columns show where the encryption cost moves: "
            "with direct TLS it is in the client and the server; through tlsproxy the client speaks plaintext "
            "and the proxy carries the TLS. Scenario 4 (proxy with `ssl_mode: DISABLED`) is the relay's own "
            "cost, so 3 minus 4 is roughly what TLS costs inside the proxy; scenario 5 (socat, the client "
            "doing TLS) is what a plain TCP relay costs. The totals are medians of per-sample totals, so they "
            "need not equal the sum of the per-role medians."),
            "",
        ]

    def _scenario_table(self) -> list[str]:
        rows = []
        for item in self.scenarios:
            roles = model.Scenario(item["name"], item.get("label", item["name"]), bool(item.get("client_tls")),
                                   item.get("via", "direct"), item.get("local_leg", "tcp")).roles
            rows.append([self.label(item["name"]), f"`{item['name']}`",
                         "yes" if item.get("client_tls") else "no", str(item.get("via", "–")),
                         str(item.get("local_leg", "–")), ", ".join(roles)])
        return ["## Scenarios", ""] + _table(
            ["scenario", "name", "client does TLS", "path", "client leg", "CPU charged to"], rows,
            align_right_from=99) + [""]

    def _warnings(self) -> list[str]:
        warnings = []
        if not self.variants:
            warnings.append("no samples in this run")
        takes_part = {item["name"]: tuple(item.get("workloads") or ()) for item in self.scenarios}
        for variant in self.variants:
            for name in self.names:
                if takes_part.get(name) and variant.workload not in takes_part[name]:
                    continue  # a scenario that takes part in some workloads only
                values = variant.values(name, variant.headline)
                if not values:
                    warnings.append(f"{variant.title}: no samples for {self.label(name)}")
                elif not any(values):
                    warnings.append(f"{variant.title}: {variant.headline} is zero for {self.label(name)}")
        return warnings

    def _summary(self, plots: dict[str, str]) -> list[str]:
        if not self.variants:
            return []
        lines = ["## Summary", ""]
        header = ["scenario"] + [variant.title for variant in self.variants]
        for baseline in self.baselines:
            lines += [(f"Throughput (headline metric) relative to {self.label(baseline)} (`{baseline}`), "
                      "ratio of medians, **higher is better**:"), ""]
            rows = [[self.label(name)] + [fmt_ratio(variant.ratio(name, baseline)) for variant in self.variants]
                    for name in self.names]
            lines += _table(header, rows) + [""]
        if self.baselines:
            baseline = self.baselines[0]
            lines += [(f"CPU per unit of work, all processes together, relative to {self.label(baseline)} "
                      f"(`{baseline}`), **lower is better**:"), ""]
            rows = [[self.label(name)] + [fmt_ratio(variant.cpu_ratio(name, baseline)) for variant in self.variants]
                    for name in self.names]
            lines += _table(header, rows) + [""]
        for key, title in (("throughput", "Throughput"), ("latency", "Latency"), ("cpu", "CPU per unit of work")):
            if key in plots:
                lines += [f"![{title}]({plots[key]})", ""]
        return lines

    def _variant_section(self, variant: Variant) -> list[str]:
        direction = "higher is better" if variant.higher_is_better else "lower is better"
        lines = [f"## {variant.title}", "",
                 (f"Headline: `{variant.headline}` in {variant.metric_unit}, median [min–max] over repetitions, "
                 f"{direction}. Latency columns are medians of the per-sample percentiles (ms). CPU in µs per "
                 f"{variant.unit_label}, by process."), ""]
        header = ["scenario", f"{variant.metric_unit} median [min–max]", "n"]
        header += [f"vs {baseline}" for baseline in self.baselines]
        header += [_metric_label(key) for key in variant.latency_keys + variant.other_keys]
        header += [f"CPU µs/{variant.unit_label} {role}" for role in variant.roles]
        header += [f"CPU µs/{variant.unit_label} total"]
        if self.baselines:
            header += [f"CPU total vs {self.baselines[0]}"]
        rows = []
        for name in self.names:
            summary = variant.summary(name, variant.headline)
            row = [self.label(name),
                   f"{fmt(summary['median'])} [{fmt(summary['min'])}–{fmt(summary['max'])}]" if summary["n"] else "–",
                   str(summary["n"])]
            row += [fmt_ratio(variant.ratio(name, baseline)) for baseline in self.baselines]
            row += [fmt(variant.median(name, key)) for key in variant.latency_keys + variant.other_keys]
            cpu = variant.cpu_per_unit(name)
            row += [fmt(cpu.get(role)) for role in variant.roles]
            row += [fmt(cpu["total"])]
            if self.baselines:
                row += [fmt_ratio(variant.cpu_ratio(name, self.baselines[0]))]
            rows.append(row)
        return lines + _table(header, rows) + [""]


# ---- generic rendering of the other modules' results ----------------------------------------------


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _is_stats(value: Any) -> bool:
    """{"median": .., "min": .., "max": ..} (and n, mean, ...): shown as one cell, plotted by its median."""
    return (isinstance(value, dict) and "median" in value and set(value) <= STATS_KEYS
            and all(_is_scalar(item) for item in value.values()))


def _is_flat(value: Any) -> bool:
    """Fits in one table cell: a scalar, a short list of scalars, or a median/min/max summary."""
    return _is_scalar(value) or _is_stats(value) or (
        isinstance(value, (list, tuple)) and len(value) <= MAX_INLINE_LIST and all(_is_scalar(item) for item in value))


def _is_record(value: Any) -> bool:
    """A table row: flat values, dicts of flat values one level down (flattened to 'key subkey'), and
    longer lists (condensed to one cell: the distinct small records, or a count)."""
    return isinstance(value, dict) and any(_is_flat(item) for item in value.values()) and all(
        _is_flat(item) or isinstance(item, list)
        or (isinstance(item, dict) and item and all(_is_flat(sub) for sub in item.values()))
        for item in value.values())


def _condense(key: str, items: list[Any]) -> str:
    """One cell for a list in a record: its distinct small records ("Ssl_version=TLSv1.3, ..."), else a count."""
    if items and all(isinstance(item, dict) and all(_is_scalar(sub) for sub in item.values()) for item in items):
        distinct: list[str] = []
        for item in items:
            text = _cell(item)
            if text not in distinct:
                distinct.append(text)
        if len(distinct) <= 3:
            return "; ".join(distinct)
    if all(_is_scalar(item) for item in items):
        return _list_summary(items)
    noun = "sample" if key == "samples" else "item"
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'} (results.json)"


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_record(item) for item in value)


def _flatten(record: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if _is_flat(value):
            flat[str(key)] = value
        elif isinstance(value, list):
            flat[str(key)] = _condense(str(key), value)
        else:
            for sub, item in value.items():
                flat[f"{key} {sub}"] = item
    return flat


def _columns(records: Iterable[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for record in records:
        for key in record:
            if key not in columns:
                columns.append(str(key))
    return columns


def _number(value: Any) -> float | None:
    """A plottable number: a number, or the median of a summary."""
    if _is_stats(value):
        value = value.get("median")
    return float(value) if _finite(value) else None


def _records_table(records: list[dict[str, Any]], first: str | None = None,
                   keys: list[str] | None = None) -> list[str]:
    records = [_flatten(record) for record in records]
    columns = _columns(records)
    header = ([first] if first else []) + columns
    rows = []
    for index, record in enumerate(records[:MAX_TABLE_ROWS]):
        row = ([_cell(keys[index])] if first and keys else []) + [_cell(record.get(column)) for column in columns]
        rows.append(row)
    right = ([False] if first else []) + [
        all(_number(record.get(column)) is not None or _is_stats(record.get(column)) or record.get(column) is None
            for record in records) and any(record.get(column) is not None for record in records)
        for column in columns]
    lines = _table(header, rows, right=right)
    if len(records) > MAX_TABLE_ROWS:
        lines += ["", f"({len(records) - MAX_TABLE_ROWS} more rows in results.json)"]
    return lines


def _list_summary(values: list[Any]) -> str:
    numbers = [value for value in values if _finite(value)]
    if len(numbers) == len(values) and numbers:
        return (f"{len(numbers)} values: median {fmt(float(_median(numbers)))}, "
                f"min {fmt(float(min(numbers)))}, max {fmt(float(max(numbers)))}")
    return f"{len(values)} values"


def render_generic(value: Any, level: int = 3) -> list[str]:
    """Markdown for any JSON value: lists of records become tables, a dict's flat entries a key/value
    table, a dict of records one table (a row per key), anything nested deeper its own subsection."""
    heading = "#" * min(level, 6)
    if _is_records(value):
        return _records_table(value) + [""]
    if isinstance(value, dict):
        if not value:
            return ["(empty)", ""]
        lines: list[str] = []
        prose = {key: item for key, item in value.items() if key in PROSE_KEYS and isinstance(item, str)}
        for item in prose.values():
            lines += [f"_{_cell(item)}_", ""]
        flat = {key: item for key, item in value.items() if _is_flat(item) and key not in prose}
        nested = {key: item for key, item in value.items() if not _is_flat(item)}
        if flat:
            lines += _table(["key", "value"], [[f"`{key}`", _cell(item)] for key, item in flat.items()],
                            align_right_from=99) + [""]
        if nested and all(_is_record(item) for item in nested.values()):
            return lines + _records_table(list(nested.values()), first="key", keys=list(nested)) + [""]
        for key, item in nested.items():
            if level > 6:
                lines += [f"`{key}`:", "", "```json", json.dumps(item, indent=1, default=str), "```", ""]
                continue
            lines += [f"{heading} {key}", ""]
            lines += render_generic(item, level + 1)
        return lines
    if isinstance(value, list):
        if not value:
            return ["(none)", ""]
        if all(_is_scalar(item) for item in value):
            if len(value) <= MAX_INLINE_LIST:
                return [_cell(value), ""]
            return [_list_summary(value), ""]
        lines = []
        for index, item in enumerate(value[:MAX_TABLE_ROWS]):
            lines += [f"{heading} [{index}]", ""] + render_generic(item, level + 1)
        return lines
    return [_cell(value), ""]


# ---- plots ---------------------------------------------------------------------------------------


def _write_plots(report: Report, out: Path) -> tuple[dict[str, str], str]:
    """PNG files by kind; a note instead when matplotlib is missing (results.json is already written)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return {}, ("No plots: matplotlib is not installed (`pip install -e '.[bench]'`). Render them later "
                    "from this folder's results.json with `bench.report.write_report`.")
    plots: dict[str, str] = {}
    if report.variants:
        for kind, draw in (("throughput", _plot_throughput), ("latency", _plot_latency), ("cpu", _plot_cpu)):
            figure = draw(Figure, report)
            if figure is not None:
                plots[kind] = _save(figure, out, f"{kind}.png")
    handshake = report.results.get("handshake")
    figure = _plot_handshake(Figure, handshake, "Upstream TLS handshake") or _plot_cpu_tables(
        Figure, handshake, "Handshake")
    if figure is not None:
        plots["handshake"] = _save(figure, out, "handshake_cpu.png")
    figure = _plot_memory(Figure, report.results.get("memory"))
    if figure is not None:
        plots["memory"] = _save(figure, out, "memory.png")
    matrix = report.results.get("tls_matrix")
    if isinstance(matrix, dict):
        figure = _plot_handshake(Figure, matrix.get("handshake"), "TLS matrix, upstream handshake")
        if figure is not None:
            plots["tls_matrix"] = _save(figure, out, "tls_matrix_handshake.png")
        figure = _plot_matrix_bulk(Figure, matrix.get("bulk"))
        if figure is not None:
            plots["tls_matrix_bulk"] = _save(figure, out, "tls_matrix_bulk.png")
        if "tls_matrix" not in plots and "tls_matrix_bulk" not in plots:
            figure = _plot_cpu_tables(Figure, matrix, "TLS matrix")
            if figure is not None:
                plots["tls_matrix"] = _save(figure, out, "tls_matrix_cpu.png")
    return plots, ""


def _save(figure: Any, out: Path, name: str) -> str:
    figure.savefig(out / name, dpi=110, metadata={"Software": None})
    return name


def _grid(Figure: Any, report: Report, title: str) -> tuple[Any, list[Any]]:
    count = len(report.variants)
    columns = 1 if count == 1 else 2
    rows = math.ceil(count / columns)
    bar_rows = len(report.names)
    figure = Figure(figsize=(4.6 + 4.6 * columns, rows * (0.36 * bar_rows + 1.5) + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, sharey=True, squeeze=False)
    flat = [axis for row in axes for axis in row]
    for axis in flat[count:]:
        axis.set_visible(False)
    figure.suptitle(title, fontsize=12)
    for axis in flat[:count]:
        axis.set_yticks(range(bar_rows))
        axis.set_yticklabels([report.label(name) for name in report.names])
        axis.set_ylim(bar_rows - 0.5, -0.5)
        axis.grid(axis="x", alpha=0.3)
        axis.set_axisbelow(True)
    for row in axes:
        for axis in row[1:]:
            axis.tick_params(axis="y", labelleft=False)
    return figure, flat[:count]


def _scenario_color(report: Report, name: str) -> str:
    if name in SCENARIO_COLORS:
        return SCENARIO_COLORS[name]
    extras = [other for other in report.names if other not in SCENARIO_COLORS]
    return EXTRA_COLORS[extras.index(name) % len(EXTRA_COLORS)]


def _plot_throughput(Figure: Any, report: Report) -> Any:
    baseline = report.baselines[0] if report.baselines else None
    title = "Throughput per scenario: median, whiskers min–max (higher is better)"
    if baseline:
        title += f"; labels: ratio vs {baseline}"
    figure, axes = _grid(Figure, report, title)
    for axis, variant in zip(axes, report.variants):
        medians, low, high = [], [], []
        for name in report.names:
            summary = variant.summary(name, variant.headline)
            median = summary["median"] if summary["n"] else 0.0
            medians.append(median)
            low.append(median - summary["min"] if summary["n"] else 0.0)
            high.append(summary["max"] - median if summary["n"] else 0.0)
        positions = range(len(report.names))
        axis.barh(positions, medians, xerr=[low, high], capsize=3, height=0.7,
                  color=[_scenario_color(report, name) for name in report.names], edgecolor="#333333",
                  linewidth=0.5, error_kw={"elinewidth": 1, "ecolor": "#222222"})
        top = max([m + h for m, h in zip(medians, high)] + [1e-9])
        axis.set_xlim(0, top * 1.32)
        if baseline:
            for position, name, median, extra in zip(positions, report.names, medians, high):
                ratio = variant.ratio(name, baseline)
                if _finite(ratio):
                    axis.text(median + extra + top * 0.02, position, f"{ratio:.2f}×", va="center", fontsize=8)
        axis.set_title(variant.title, fontsize=10)
        axis.set_xlabel(f"{variant.metric_unit}")
    return figure


def _plot_latency(Figure: Any, report: Report) -> Any:
    figure, axes = _grid(Figure, report, "Latency per scenario: median over repetitions of each percentile "
                                         "(lower is better)")
    shades = {0: 1.0, 1: 0.55, 2: 0.3}
    two_keys = False
    for axis, variant in zip(axes, report.variants):
        keys = [key for key in variant.latency_keys if key.startswith(("p50", "p99"))] or variant.latency_keys[:2]
        if not keys:
            axis.text(0.5, 0.5, "no latency metric", ha="center", va="center", transform=axis.transAxes)
            axis.set_title(variant.title, fontsize=10)
            continue
        height = 0.8 / len(keys)
        two_keys = two_keys or len(keys) > 1
        for index, key in enumerate(keys):
            offsets = [position - 0.4 + height * (index + 0.5) for position in range(len(report.names))]
            values = [variant.median(name, key) for name in report.names]
            values = [value if _finite(value) else 0.0 for value in values]
            axis.barh(offsets, values, height=height, label=_metric_label(key),
                      color=[_scenario_color(report, name) for name in report.names],
                      alpha=shades.get(index, 0.3), edgecolor="#333333", linewidth=0.5,
                      hatch="" if index == 0 else "//")
        axis.set_title(variant.title, fontsize=10)
        names = ", ".join(key.split("_")[0] for key in keys)
        per = " per result set" if any("per_result" in key for key in keys) else ""
        axis.set_xlabel(f"latency{per}, ms ({names})")
    from matplotlib.patches import Patch

    handles = [Patch(facecolor="#9e9e9e", edgecolor="#333333", label="p50 (solid)")]
    if two_keys:
        handles.append(Patch(facecolor="#9e9e9e", edgecolor="#333333", alpha=0.55, hatch="//", label="p99 (hatched)"))
    figure.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    return figure


def _plot_cpu(Figure: Any, report: Report) -> Any:
    figure, axes = _grid(Figure, report, "CPU per unit of work by process (µs, medians over repetitions; "
                                         "lower is better)")
    for axis, variant in zip(axes, report.variants):
        left = [0.0] * len(report.names)
        cpu = {name: variant.cpu_per_unit(name) for name in report.names}
        for role in variant.roles:
            values = [cpu[name].get(role, 0.0) for name in report.names]
            values = [value if _finite(value) else 0.0 for value in values]
            axis.barh(range(len(report.names)), values, left=left, height=0.7, label=role,
                      color=ROLE_COLORS.get(role, "#bcbd22"), edgecolor="white", linewidth=0.5)
            left = [a + b for a, b in zip(left, values)]
        top = max(left + [1e-9])
        axis.set_xlim(0, top * 1.22)
        for position, name in enumerate(report.names):
            total = cpu[name]["total"]
            if _finite(total):
                axis.text(left[position] + top * 0.02, position, fmt(total), va="center", fontsize=8)
        axis.set_title(variant.title, fontsize=10)
        axis.set_xlabel(f"CPU µs per {variant.unit_label}")
    roles = [role for role in ROLES if any(role in variant.roles for variant in report.variants)]
    roles += sorted({role for variant in report.variants for role in variant.roles} - set(roles))
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=ROLE_COLORS.get(role, "#bcbd22"), label=role) for role in roles]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9, frameon=False)
    return figure


# ---- handshake CPU, memory (bench/handshake.py, bench/memory.py, bench/tls_matrix.py) -------------

_CATEGORY_HINTS = ("name", "tls", "version", "key", "resum", "cipher", "scenario", "mode", "leg", "curve", "group")


def _stats_of(value: Any) -> tuple[float, float, float] | None:
    """(median, min, max) of a summary dict or a plain number."""
    if _is_stats(value):
        median = _number(value.get("median"))
        if median is None:
            return None
        low, high = _number(value.get("min")), _number(value.get("max"))
        return median, low if low is not None else median, high if high is not None else median
    number = _number(value)
    return (number, number, number) if number is not None else None


def _handshake_rows(data: Any) -> list[dict[str, Any]]:
    """bench/handshake.py's shape: {"variants": [{"name", "tls_version", "key_type", "resumption",
    "cpu_us": {median, min, max}, "server_cpu_us_per_connection": {...}, "latency_ms": {...}}, ...]}."""
    if not isinstance(data, dict) or not isinstance(data.get("variants"), list):
        return []
    return [row for row in data["variants"] if isinstance(row, dict) and _stats_of(row.get("cpu_us"))]


def _handshake_label(row: dict[str, Any]) -> str:
    name = str(row.get("name") or " ".join(str(row.get(key, "")) for key in ("tls_version", "resumption")))
    extras = [str(row[key]) for key in ("key_type", "cipher") if row.get(key) and str(row[key]) not in name]
    return f"{name} ({', '.join(extras)})" if extras else name


def _plot_handshake(Figure: Any, data: Any, title: str) -> Any:
    """Per variant (TLS version, key type, full or resumed): the TLS client's CPU per handshake (what
    tlsproxy pays upstream), the server's CPU per connection, and handshake latency; median, min–max."""
    rows = _handshake_rows(data)
    if not rows:
        return None
    labels = [_handshake_label(row) for row in rows]
    figure = Figure(figsize=(13, 0.45 * len(rows) + 2.0), layout="constrained")
    cpu_axis, latency_axis = figure.subplots(1, 2, sharey=True, width_ratios=(3, 2))
    figure.suptitle(f"{title}: median, whiskers min–max (lower is better)", fontsize=12)
    series = [("cpu_us", "TLS client = tlsproxy side (do_handshake)", ROLE_COLORS["proxy"]),
              ("server_cpu_us_per_connection", "server, whole connection", ROLE_COLORS["server"])]
    series = [item for item in series if any(_stats_of(row.get(item[0])) for row in rows)]
    height = 0.8 / len(series)
    top = 1e-9
    for index, (key, label, color) in enumerate(series):
        stats = [_stats_of(row.get(key)) or (0.0, 0.0, 0.0) for row in rows]
        offsets = [position - 0.4 + height * (index + 0.5) for position in range(len(rows))]
        medians = [item[0] for item in stats]
        cpu_axis.barh(offsets, medians, height=height, color=color, label=label, edgecolor="#333333", linewidth=0.5,
                      xerr=[[m - lo for m, lo, _ in stats], [hi - m for m, _, hi in stats]], capsize=2,
                      error_kw={"elinewidth": 0.8})
        for offset, (median, _, high) in zip(offsets, stats):
            cpu_axis.text(high + 0.0, offset, f" {fmt(median)}", va="center", fontsize=7)
        top = max([top] + [item[2] for item in stats])
    cpu_axis.set_xlim(0, top * 1.18)
    cpu_axis.set_xlabel("CPU µs per handshake / per connection")
    figure.legend(loc="outside lower center", ncols=len(series), fontsize=9, frameon=False)
    latency = [_stats_of(row.get("latency_ms")) or (0.0, 0.0, 0.0) for row in rows]
    latency_axis.barh(range(len(rows)), [item[0] for item in latency], height=0.6, color=ROLE_COLORS["client"],
                      xerr=[[m - lo for m, lo, _ in latency], [hi - m for m, _, hi in latency]], capsize=2,
                      edgecolor="#333333", linewidth=0.5, error_kw={"elinewidth": 0.8})
    latency_axis.set_xlabel("handshake latency, ms")
    for axis in (cpu_axis, latency_axis):
        axis.set_yticks(range(len(rows)))
        axis.set_yticklabels(labels)
        axis.set_ylim(len(rows) - 0.5, -0.5)
        axis.grid(axis="x", alpha=0.3)
        axis.set_axisbelow(True)
    latency_axis.tick_params(axis="y", labelleft=False)
    return figure


def _matrix_bulk_points(data: Any) -> list[dict[str, Any]]:
    """bench/tls_matrix.py's bulk shape: {"points": [{"name", "key_type", "tls_version", "cipher",
    "mb_per_s": {median, min, max}, "proxy_cpu_ms_per_mib": {...}, "server_cpu_ms_per_mib": {...}}]}."""
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        return []
    return [point for point in data["points"] if isinstance(point, dict) and _stats_of(point.get("mb_per_s"))]


def _plot_matrix_bulk(Figure: Any, data: Any) -> Any:
    """Bulk transfer through tlsproxy pinned to one TLS version, cipher and server key: MB/s, and the
    proxy's and the server's CPU per MiB."""
    points = _matrix_bulk_points(data)
    if not points:
        return None
    labels = [str(point.get("name") or _handshake_label(point)) for point in points]
    figure = Figure(figsize=(13, 0.45 * len(points) + 2.0), layout="constrained")
    speed_axis, cpu_axis = figure.subplots(1, 2, sharey=True)
    figure.suptitle("TLS matrix, bulk through tlsproxy (1 MiB rows): median, whiskers min–max", fontsize=12)
    speed = [_stats_of(point.get("mb_per_s")) or (0.0, 0.0, 0.0) for point in points]
    speed_axis.barh(range(len(points)), [item[0] for item in speed], height=0.6, color=ROLE_COLORS["client"],
                    xerr=[[m - lo for m, lo, _ in speed], [hi - m for m, _, hi in speed]], capsize=2,
                    edgecolor="#333333", linewidth=0.5, error_kw={"elinewidth": 0.8})
    speed_axis.set_xlabel("MB/s (higher is better)")
    series = [(key, role) for key, role in (("proxy_cpu_ms_per_mib", "proxy"), ("server_cpu_ms_per_mib", "server"))
              if any(_stats_of(point.get(key)) for point in points)]
    for index, (key, role) in enumerate(series):
        height = 0.8 / len(series)
        offsets = [position - 0.4 + height * (index + 0.5) for position in range(len(points))]
        stats = [_stats_of(point.get(key)) or (0.0, 0.0, 0.0) for point in points]
        cpu_axis.barh(offsets, [item[0] for item in stats], height=height, color=ROLE_COLORS[role],
                      label=f"{role} CPU", edgecolor="#333333", linewidth=0.5,
                      xerr=[[m - lo for m, lo, _ in stats], [hi - m for m, _, hi in stats]], capsize=2,
                      error_kw={"elinewidth": 0.8})
    cpu_axis.set_xlabel("CPU ms per MiB (lower is better)")
    if series:
        figure.legend(loc="outside lower center", ncols=len(series), fontsize=9, frameon=False)
    for axis in (speed_axis, cpu_axis):
        axis.set_yticks(range(len(points)))
        axis.set_yticklabels(labels)
        axis.set_ylim(len(points) - 0.5, -0.5)
        axis.grid(axis="x", alpha=0.3)
        axis.set_axisbelow(True)
    cpu_axis.tick_params(axis="y", labelleft=False)
    return figure


def _memory_points(data: Any) -> list[dict[str, Any]]:
    """bench/memory.py's shape: {"points": [{"connections", "proxy_rss_kib", "server_rss_kib", ...}]}."""
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        return []
    return [point for point in data["points"] if isinstance(point, dict)
            and _finite(point.get("connections")) and _finite(point.get("proxy_rss_kib"))]


def _plot_memory(Figure: Any, data: Any) -> Any:
    points = _memory_points(data)
    if not points:
        return None
    figure = Figure(figsize=(8, 4.2), layout="constrained")
    axis = figure.subplots()
    connections = [point["connections"] for point in points]
    axis.plot(connections, [point["proxy_rss_kib"] / 1024 for point in points], marker="o",
              color=ROLE_COLORS["proxy"], label="tlsproxy RSS")
    if all(_finite(point.get("server_rss_kib")) for point in points):
        axis.plot(connections, [point["server_rss_kib"] / 1024 for point in points], marker="s",
                  color=ROLE_COLORS["server"], label="MariaDB RSS")
    after = data.get("after_close") if isinstance(data, dict) else None
    if isinstance(after, dict) and _finite(after.get("proxy_rss_kib")):
        axis.scatter([0], [after["proxy_rss_kib"] / 1024], marker="x", color="#d62728", zorder=3,
                     label="tlsproxy RSS after closing all")
    slopes = (data.get("kib_per_connection") or {}).get("vs_0") if isinstance(data, dict) else None
    title = "Memory with idle proxied connections"
    if isinstance(slopes, dict) and slopes:
        last = list(slopes)[-1]
        if _finite(slopes[last]):
            title += f" (tlsproxy: {fmt(float(slopes[last]))} KiB per connection at {last})"
    axis.set_title(title, fontsize=11)
    axis.set_xlabel("idle authenticated connections through tlsproxy (TLS route)")
    axis.set_ylabel("resident memory, MiB")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return figure


def _records_anywhere(value: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], list[dict[str, Any]]]]:
    """Every list of records inside `value` (flattened), and dicts of records as lists (key -> 'key' column)."""
    found: list[tuple[tuple[str, ...], list[dict[str, Any]]]] = []
    if _is_records(value):
        found.append((path, [_flatten(record) for record in value]))
    elif isinstance(value, dict):
        nested = {key: item for key, item in value.items() if not _is_flat(item)}
        if nested and all(_is_record(item) for item in nested.values()):
            found.append((path, [{"key": key, **_flatten(item)} for key, item in nested.items()]))
        else:
            for key, item in nested.items():
                found += _records_anywhere(item, path + (str(key),))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _records_anywhere(item, path + (str(index),))
    return found


def _cpu_series(records: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(category columns, CPU columns) of a table that has some CPU figure per row."""
    columns = _columns(records)
    cpu = [column for column in columns if "cpu" in column.lower()
           and all(_number(record.get(column)) is not None or record.get(column) is None for record in records)
           and any(_number(record.get(column)) is not None for record in records)
           and not re.search(r"\b(min|max|n|ratio)$", column.lower())]
    categories = [column for column in columns if column not in cpu
                  and all(_is_scalar(record.get(column)) and not _finite(record.get(column)) for record in records)
                  and any(hint in column.lower() for hint in _CATEGORY_HINTS)]
    return categories, cpu


def _plot_cpu_tables(Figure: Any, data: Any, title: str) -> Any:
    """Any other shape (the TLS matrix): each table with a CPU column and category columns (TLS version,
    key type, resumption, ...) becomes a panel of bars, one bar group per CPU column."""
    if data is None:
        return None
    tables = []
    for path, records in _records_anywhere(data):
        categories, cpu = _cpu_series(records)
        if categories and cpu and len(records) <= 80:
            tables.append((path, records, categories, cpu[:3]))
    if not tables:
        return None
    tables = tables[:4]
    heights = [0.4 * len(records) * max(1, len(cpu)) ** 0.5 + 1.6 for _, records, _, cpu in tables]
    figure = Figure(figsize=(12, sum(heights) + 0.6), layout="constrained")
    axes = figure.subplots(len(tables), 1, squeeze=False, height_ratios=heights)
    figure.suptitle(f"{title}: CPU (lower is better)", fontsize=12)
    for axis, (path, records, categories, cpu) in zip((row[0] for row in axes), tables):
        labels = [", ".join(_cell(record.get(column)) for column in categories) for record in records]
        height = 0.8 / len(cpu)
        top = 1e-9
        for index, column in enumerate(cpu):
            stats = [_stats_of(record.get(column)) or (0.0, 0.0, 0.0) for record in records]
            offsets = [position - 0.4 + height * (index + 0.5) for position in range(len(records))]
            role = _role_of(column)
            color = ROLE_COLORS.get(role or "", EXTRA_COLORS[index % len(EXTRA_COLORS)])
            axis.barh(offsets, [item[0] for item in stats], height=height, color=color, label=_metric_label(column),
                      xerr=[[m - lo for m, lo, _ in stats], [hi - m for m, _, hi in stats]], capsize=2,
                      edgecolor="#333333", linewidth=0.5, error_kw={"elinewidth": 0.8})
            top = max([top] + [item[2] for item in stats])
        axis.set_xlim(0, top * 1.1)
        axis.set_yticks(range(len(records)))
        axis.set_yticklabels(labels, fontsize=8)
        axis.set_ylim(len(records) - 0.5, -0.5)
        unit = "ms" if all("_ms" in column for column in cpu) else "µs" if all("_us" in column for column in cpu) else ""
        axis.set_xlabel(f"CPU{', ' + unit if unit else ''} (median, whiskers min–max when known)")
        axis.set_title(" / ".join(path) if path else title, fontsize=10)
        axis.set_ylabel(", ".join(categories), fontsize=8)
        axis.grid(axis="x", alpha=0.3)
        axis.set_axisbelow(True)
        axis.legend(fontsize=8, loc="lower right")
    return figure


def _role_of(column: str) -> str | None:
    lowered = column.lower()
    for role in ROLES:
        if role in lowered:
            return role
    return None
