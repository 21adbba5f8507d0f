"""report.md of a run: the tables, in Markdown, of bench.model.RunResults as bench.analysis compares it.

`fmt` and friends write numbers for tables; `render_generic` prints a module's record as measured
(lists of records as tables, a dict's flat entries as a key/value table, anything deeper as its own
subsection), so a column a module adds shows up without a change here.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from bench.analysis import RunAnalysis, Variant, median_of, metric_label
from bench.model import ProxyMetrics, finite, is_scalar, is_stats, number

MAX_TABLE_ROWS = 60
MAX_INLINE_LIST = 12
PROSE_KEYS = ("what", "description", "note", "notes")


# ---- numbers and cells ---------------------------------------------------------------------------


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
    return f"{value:+.1f}%" if finite(value) else "–"


def fmt_ratio(value: float | None) -> str:
    return f"{value:.2f}×" if finite(value) else "–"


def _cell(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, str):
        return fmt(value)
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(item) for item in value)
    if isinstance(value, dict):
        if "median" in value and {"min", "max"} <= set(value):
            if not finite(value["median"]):
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


# ---- the report's sections -----------------------------------------------------------------------


def markdown(run: RunAnalysis, plots: dict[str, str], plot_note: str = "") -> str:
    lines: list[str] = []
    lines += _header(run)
    lines += _target_section(run)
    lines += _how_to_read(run)
    lines += _scenario_table(run)
    warnings = _warnings(run)
    if warnings:
        lines += ["## Warnings", ""] + [f"- {warning}" for warning in warnings] + [""]
    lines += _summary(run, plots)
    for variant in run.variants:
        lines += _variant_section(run, variant)
    results = run.results
    for key, title, section in (("handshake", "Handshake cost", results.handshake), ("memory", "Memory", results.memory),
                                ("tls_matrix", "TLS matrix", results.tls_matrix)):
        if section is not None:
            lines += [f"## {title}", ""]
            for plot in (key, f"{key}_bulk"):
                if plot in plots:
                    lines += [f"![{title}]({plots[plot]})", ""]
            lines += render_generic(section.data, level=3)
    if results.proxy_metrics is not None:
        lines += _proxy_metrics_section(results.proxy_metrics)
    for key, value in results.extra.items():  # what a newer (or older) run wrote that the model does not know
        if isinstance(value, (dict, list)):
            lines += [f"## {key}", ""] + render_generic(value, level=3)
    if plot_note:
        lines += ["## Plots", "", plot_note, ""]
    return "\n".join(lines).rstrip() + "\n"


def _proxy_metrics_section(metrics: ProxyMetrics) -> list[str]:
    """The proxy's own histograms (scraped from /metrics) next to independent measurements."""
    if not isinstance(metrics.data, dict):
        return []
    lines = ["## The proxy's own metrics vs independent measurements", ""]
    if metrics.error is not None:
        return lines + [f"Not available: {metrics.error}.", ""]
    phases = metrics.phase_latency_ms_mean
    lines += [f"Scraped from `/metrics` around {fmt(metrics.handshakes_counted)} connect-per-request "
              f"connections through `proxy_tls_tcp_full` (TLS 1.3, session resumption off), in rounds "
              f"interleaved with the independent measurement. "
              f"CPU: {metrics.independent_what}. Latency: {metrics.external_what}.",
              ""]
    rows = [
        ["TLS handshake CPU (µs)", fmt(metrics.tls_handshake_cpu_us_mean),
         fmt(metrics.independent_cpu_us), _signed_percent(metrics.cpu_percent)],
        ["TLS handshake latency (ms)", fmt(phases.get("tls")), fmt(metrics.external_latency_ms),
         _signed_percent(metrics.latency_percent)],
    ]
    lines += _table(["", "proxy metric (mean)", "independent", "difference"], rows)
    if metrics.rounds:
        lines += ["", "Per round (CPU µs per handshake): " + "; ".join(
            f"{fmt(r.metric_cpu_us)} vs {fmt(r.independent_cpu_us)} ({fmt_ratio(r.ratio)})" for r in metrics.rounds)
            + f". Median round ratio {fmt_ratio(metrics.cpu_median_round_ratio)}."]
    lines += ["", "Handshake phases as the proxy measures them (mean ms): "
              + ", ".join(f"{phase} {fmt(value)}" for phase, value in phases.items()), ""]
    resumption = metrics.resumption
    if resumption:
        lines += ["### Upstream TLS session resumption (the proxy's metric)", "",
                  "Connect-per-request through a route with session resumption off (full) and one with it "
                  "on (resumed), interleaved; CPU per upstream TLS handshake from "
                  "`tlsproxy_tls_handshake_cpu_seconds`.", ""]
        rows = [[version, fmt(cost.full_cpu_us), fmt(cost.resumed_cpu_us), fmt_ratio(cost.ratio),
                 f"{fmt(cost.resumed_handshakes)} / {fmt(cost.full_handshakes)}"]
                for version, cost in resumption.items()]
        lines += _table(["TLS version", "full (µs)", "resumed (µs)", "resumed / full",
                         "resumed handshakes / full handshakes"], rows) + [""]
    return lines


def _header(run: RunAnalysis) -> list[str]:
    results = run.results
    lines = [f"# tlsproxy benchmark: {results.size} run", ""]
    started, finished = results.started, results.finished
    facts: list[tuple[str, str]] = []
    if finite(started):
        when = datetime.datetime.fromtimestamp(started, tz=datetime.UTC)
        facts.append(("date", when.strftime("%Y-%m-%d %H:%M:%S UTC")))
    if finite(started) and finite(finished):
        facts.append(("wall time", f"{finished - started:.0f} s"))
    if results.run_size is not None:
        facts.append(("run size", "; ".join(f"{key} {_plain(value)}" for key, value in asdict(results.run_size).items()
                                            if key != "name")))
    facts.append(("samples", str(len(results.samples))))
    if results.event_loop:
        facts.append(("proxy event loop", str(results.event_loop)))
    if results.workers != 1:
        facts.append(("proxy workers", str(results.workers)))
    if results.machine:
        facts.append(("machine", "; ".join(f"{key} {_plain(value)}" for key, value in results.machine.items())))
    if results.versions:
        facts.append(("versions", "; ".join(f"{key} {_plain(value)}" for key, value in results.versions.items())))
    lines += [f"- **{key}**: {value}" for key, value in facts]
    return lines + [""]


def _target_section(run: RunAnalysis) -> list[str]:
    """A run against the user's own server: where it is, what tlsproxy check found, the network, and which
    figures are local."""
    target = run.results.target
    if target is None:
        return []
    check = target.check
    tcp, query = target.network_us("tcp_connect_us"), target.network_us("query_us")
    facts = [("target", f"`{target.address}`, account `{target.user}`, database `{target.database}`"),
             ("server", str(check.get("server_version") or "–")),
             ("TLS", f"{check.get('tls_version') or '–'}, cipher {check.get('cipher') or '–'}; "
                     f"{check.get('verified') or '–'} (tlsproxy check)"),
             ("connection flags", ", ".join(f"{key} {_cell(value)}" for key, value in target.tls.items()) or "–"),
             ("network round trip", f"TCP connect {fmt(tcp)} µs, SELECT 1 direct over the client's TLS "
                                    f"{fmt(query)} µs (medians)"),
             ("workloads", ", ".join(target.workloads) + ("" if target.allow_create else
                                                          " (read-only; --allow-create adds point_select on a table)"))]
    lines = ["## Target", ""] + [f"- **{key}**: {value}" for key, value in facts] + [""]
    lines += [("Which figures are local: the client's CPU (sysbench's rusage) and the proxy's CPU (tlsproxy runs "
               "on this machine, read from /proc). The server's CPU is **not visible** on a remote target: the "
               "report has no server column and the CPU totals are client + proxy only, not the server's work. "
               "Throughput and latency include the network; the *added µs* columns are the difference to the "
               "baseline per query (per connection, per MiB) for one thread, so they read against the round "
               "trip above."), ""]
    headline = _headline_sentence(run)
    if headline:
        lines += [headline, ""]
    if target.not_run:
        lines += ["Scenarios without figures:", ""] + [f"- {run.label(name)} (`{name}`): {why}"
                                                      for name, why in target.not_run.items()] + [""]
    return lines


def _headline_sentence(run: RunAnalysis) -> str:
    """"The proxy adds 40 µs to a 600 µs query": proxy_tls_tcp against client_tls, one thread."""
    baseline = run.baselines[0] if run.baselines else None
    phrases = []
    for variant in run.variants:
        if variant.threads != 1 or baseline is None or "proxy_tls_tcp" not in variant.by_scenario:
            continue
        added, base = variant.added_us("proxy_tls_tcp", baseline), variant.us_per_unit(baseline)
        if finite(added) and finite(base):
            phrases.append(f"{'+' if added >= 0 else '−'}{fmt(abs(added))} µs per {variant.time_unit} "
                           f"(of {fmt(base)} µs with the client's TLS; {variant.title})")
    if not phrases:
        return ""
    return (f"At a glance, tlsproxy (TCP client leg) against the client's own TLS (`{baseline}`), one thread "
            "(− : faster): " + "; ".join(phrases) + ".")


def _how_to_read(run: RunAnalysis) -> list[str]:
    relays = ("" if run.results.target is not None else
              "Scenario 4 (proxy with `ssl_mode: DISABLED`) is the relay's own "
              "cost, so 3 minus 4 is roughly what TLS costs inside the proxy; scenario 5 (socat, the client "
              "doing TLS) is what a plain TCP relay costs. ")
    return [
        "## How to read this report",
        "",
        ("Every scenario runs the same workload against the same server; repetitions are interleaved "
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
        "and the proxy carries the TLS. " + relays + "The totals are medians of per-sample totals, so they "
        "need not equal the sum of the per-role medians."),
        "",
    ] + _connect_routes_guide(run)


CONNECT_ROUTES = {
    "proxy_tls_tcp_full": "`proxy_tls_tcp_full` turns upstream TLS session resumption off (every handshake a full one)",
    "proxy_tls_tcp_prewarm": ("`proxy_tls_tcp_prewarm` has `prewarm: 8`: the upstream TCP connection, greeting and TLS "
                              "handshake are done before the client comes, the server login is still the client's"),
    "proxy_tls_tcp_pool": ("`proxy_tls_tcp_pool` has `upstream_pool: 8`: a client that quits leaves its authenticated "
                           "upstream connection, reset with COM_RESET_CONNECTION, to the next client, whose login "
                           "goes up as COM_CHANGE_USER on it (no TCP connect, no TLS handshake; the server still "
                           "checks every client's credentials)"),
}


def _connect_routes_guide(run: RunAnalysis) -> list[str]:
    """The connect workload's extra tlsproxy routes, those this run has."""
    present = [text for name, text in CONNECT_ROUTES.items() if name in run.names]
    if not present:
        return []
    return [("The connect workload (connect, `SELECT 1`, quit per event) also runs through tlsproxy routes "
             "that change only how the upstream connection is had: " + "; ".join(present) + "."), ""]


def _pool_sentence(run: RunAnalysis) -> list[str]:
    """Connect through the upstream pool against both baselines, with the proxy's and the server's CPU."""
    pool = "proxy_tls_tcp_pool"
    phrases = []
    for variant in run.variants:
        if variant.workload != "connect" or not variant.values(pool, variant.headline):
            continue
        cpu = variant.cpu_per_unit(pool)
        ratios = ", ".join(f"{fmt_ratio(variant.ratio(pool, baseline))} {baseline}" for baseline in run.baselines)
        roles = ", ".join(f"{role} {fmt(cpu[role])}" for role in ("proxy", "server") if finite(cpu.get(role)))
        samples = variant.by_scenario.get(pool, [])
        reused = sum(sample.units.get("pool_reused", 0.0) for sample in samples)
        connections = sum(sample.units.get("connections", 0.0) for sample in samples)
        share = (f"; {reused / connections:.0%} of the logins on a pooled connection"
                 if any("pool_reused" in sample.units for sample in samples) and connections else "")
        phrases.append(f"{variant.variant}: {fmt(variant.median(pool, variant.headline))} connections/s"
                       + (f", {ratios}" if ratios else "") + (f"; CPU µs per connection {roles}" if roles else "")
                       + share)
    if not phrases:
        return []
    return ["Connect + `SELECT 1` + quit through the upstream pool (`proxy_tls_tcp_pool`), medians: "
            + "; ".join(phrases) + ".", ""]


def _scenario_table(run: RunAnalysis) -> list[str]:
    rows = []
    for scenario in run.scenarios:
        roles = ", ".join(scenario.roles)
        if run.results.target is not None:  # the server is not ours to measure
            roles = ", ".join(role for role in scenario.roles if role != "server") + " (server: not visible)"
        rows.append([run.label(scenario.name), f"`{scenario.name}`", "yes" if scenario.client_tls else "no",
                     scenario.via, scenario.local_leg, roles])
    return ["## Scenarios", ""] + _table(
        ["scenario", "name", "client does TLS", "path", "client leg", "CPU charged to"], rows,
        align_right_from=99) + [""]


def _warnings(run: RunAnalysis) -> list[str]:
    warnings = []
    if not run.variants:
        warnings.append("no samples in this run")
    takes_part = {scenario.name: scenario.workloads for scenario in run.scenarios}
    for variant in run.variants:
        for name in run.names:
            if takes_part.get(name) and variant.workload not in takes_part[name]:
                continue  # a scenario that takes part in some workloads only
            values = variant.values(name, variant.headline)
            if name in _not_run(run):
                continue  # listed once, with the reason, under "Target"
            if not values:
                warnings.append(f"{variant.title}: no samples for {run.label(name)}")
            elif not any(values):
                warnings.append(f"{variant.title}: {variant.headline} is zero for {run.label(name)}")
    return warnings


def _not_run(run: RunAnalysis) -> dict[str, str]:
    return run.results.target.not_run if run.results.target is not None else {}


def _summary(run: RunAnalysis, plots: dict[str, str]) -> list[str]:
    if not run.variants:
        return []
    lines = ["## Summary", ""]
    header = ["scenario"] + [variant.title for variant in run.variants]
    for baseline in run.baselines:
        lines += [(f"Throughput (headline metric) relative to {run.label(baseline)} (`{baseline}`), "
                  "ratio of medians, **higher is better**:"), ""]
        rows = [[run.label(name)] + [fmt_ratio(variant.ratio(name, baseline)) for variant in run.variants]
                for name in run.names]
        lines += _table(header, rows) + [""]
    for baseline in run.baselines[:1]:
        lines += [(f"Added time per unit of work against {run.label(baseline)} (`{baseline}`), µs per query, "
                   "connection or MiB for one thread (from the median rates), **lower is better**:"), ""]
        rows = [[run.label(name)] + [_added(run, variant, name, baseline) for variant in run.variants]
                for name in run.names]
        lines += _table(header, rows) + [""]
    if run.baselines:
        baseline = run.baselines[0]
        lines += [(f"CPU per unit of work, all processes together, relative to {run.label(baseline)} "
                  f"(`{baseline}`), **lower is better**:"), ""]
        rows = [[run.label(name)] + [fmt_ratio(variant.cpu_ratio(name, baseline)) for variant in run.variants]
                for name in run.names]
        lines += _table(header, rows) + [""]
    lines += _pool_sentence(run)
    for key, title in (("throughput", "Throughput"), ("latency", "Latency"), ("cpu", "CPU per unit of work")):
        if key in plots:
            lines += [f"![{title}]({plots[key]})", ""]
    return lines


def _added(run: RunAnalysis, variant: Variant, name: str, baseline: str) -> str:
    if name in _not_run(run):
        return "not run"
    added = variant.added_us(name, baseline)
    return f"{added:+,.0f}" if finite(added) and abs(added) >= 10 else (f"{added:+.1f}" if finite(added) else "–")


def _variant_section(run: RunAnalysis, variant: Variant) -> list[str]:
    direction = "higher is better" if variant.higher_is_better else "lower is better"
    lines = [f"## {variant.title}", "",
             (f"Headline: `{variant.headline}` in {variant.metric_unit}, median [min–max] over repetitions, "
             f"{direction}. Latency columns are medians of the per-sample percentiles (ms). CPU in µs per "
             f"{variant.unit_label}, by process" + (" on this machine (the server's CPU is not visible on a remote "
                                                   "target)." if run.results.target is not None else ".")), ""]
    header = ["scenario", f"{variant.metric_unit} median [min–max]", "n"]
    header += [f"vs {baseline}" for baseline in run.baselines]
    if variant.time_unit:
        header += [f"µs/{variant.time_unit}"] + [f"added µs/{variant.time_unit} vs {baseline}"
                                                 for baseline in run.baselines]
    header += [metric_label(key) for key in variant.latency_keys + variant.other_keys]
    header += [f"CPU µs/{variant.unit_label} {role}" for role in variant.roles]
    header += [f"CPU µs/{variant.unit_label} total"]
    if run.baselines:
        header += [f"CPU total vs {run.baselines[0]}"]
    rows = []
    for name in run.names:
        summary = variant.summary(name, variant.headline)
        not_run = _not_run(run).get(name)
        row = [run.label(name),
               f"{fmt(summary['median'])} [{fmt(summary['min'])}–{fmt(summary['max'])}]" if summary["n"]
               else (f"not run: {_cell(not_run)}" if not_run else "–"),
               str(summary["n"])]
        row += [fmt_ratio(variant.ratio(name, baseline)) for baseline in run.baselines]
        if variant.time_unit:
            row += [fmt(variant.us_per_unit(name))] + [_added(run, variant, name, baseline) for baseline in run.baselines]
        row += [fmt(variant.median(name, key)) for key in variant.latency_keys + variant.other_keys]
        cpu = variant.cpu_per_unit(name)
        row += [fmt(cpu.get(role)) for role in variant.roles]
        row += [fmt(cpu["total"])]
        if run.baselines:
            row += [fmt_ratio(variant.cpu_ratio(name, run.baselines[0]))]
        rows.append(row)
    return lines + _table(header, rows) + [""]


# ---- a module's record as measured ---------------------------------------------------------------


def _is_flat(value: Any) -> bool:
    """Fits in one table cell: a scalar, a short list of scalars, or a median/min/max summary."""
    return is_scalar(value) or is_stats(value) or (
        isinstance(value, (list, tuple)) and len(value) <= MAX_INLINE_LIST and all(is_scalar(item) for item in value))


def _is_record(value: Any) -> bool:
    """A table row: flat values, dicts of flat values one level down (flattened to 'key subkey'), and
    longer lists (condensed to one cell: the distinct small records, or a count)."""
    return isinstance(value, dict) and any(_is_flat(item) for item in value.values()) and all(
        _is_flat(item) or isinstance(item, list)
        or (isinstance(item, dict) and item and all(_is_flat(sub) for sub in item.values()))
        for item in value.values())


def _condense(key: str, items: list[Any]) -> str:
    """One cell for a list in a record: its distinct small records ("Ssl_version=TLSv1.3, ..."), else a count."""
    if items and all(isinstance(item, dict) and all(is_scalar(sub) for sub in item.values()) for item in items):
        distinct: list[str] = []
        for item in items:
            text = _cell(item)
            if text not in distinct:
                distinct.append(text)
        if len(distinct) <= 3:
            return "; ".join(distinct)
    if all(is_scalar(item) for item in items):
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
        all(number(record.get(column)) is not None or is_stats(record.get(column)) or record.get(column) is None
            for record in records) and any(record.get(column) is not None for record in records)
        for column in columns]
    lines = _table(header, rows, right=right)
    if len(records) > MAX_TABLE_ROWS:
        lines += ["", f"({len(records) - MAX_TABLE_ROWS} more rows in results.json)"]
    return lines


def _list_summary(values: list[Any]) -> str:
    numbers = [value for value in values if finite(value)]
    if len(numbers) == len(values) and numbers:
        return (f"{len(numbers)} values: median {fmt(float(median_of(numbers)))}, "
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
        if all(is_scalar(item) for item in value):
            if len(value) <= MAX_INLINE_LIST:
                return [_cell(value), ""]
            return [_list_summary(value), ""]
        lines = []
        for index, item in enumerate(value[:MAX_TABLE_ROWS]):
            lines += [f"{heading} [{index}]", ""] + render_generic(item, level + 1)
        return lines
    return [_cell(value), ""]
