"""The PNG plots of a run's report (matplotlib), from bench.model.RunResults as bench.analysis compares it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.analysis import ROLES, RunAnalysis, metric_label
from bench.model import BulkPoint, HandshakeResults, MemoryResults, Stats, finite
from bench.report_markdown import fmt

ROLE_COLORS = {"client": "#4c72b0", "proxy": "#dd8452", "relay": "#8172b3", "server": "#8c8c8c"}
SCENARIO_COLORS = {
    "plaintext": "#9e9e9e",
    "client_tls": "#1f77b4",
    "proxy_tls_tcp": "#ff7f0e",
    "proxy_tls_unix": "#ffbb78",
    "proxy_disabled_tcp": "#2ca02c",
    "proxy_disabled_unix": "#98df8a",
    "socat_client_tls": "#9467bd",
    "socat_client_tls_unix": "#c5b0d5",
    "proxy_tls_tcp_pool": "#d62728",
}
EXTRA_COLORS = ("#8c564b", "#e377c2", "#bcbd22", "#17becf", "#d62728", "#7f7f7f")


def write_plots(run: RunAnalysis, out: Path) -> tuple[dict[str, str], str]:
    """PNG files by kind; a note instead when matplotlib is missing (results.json is already written)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return {}, ("No plots: matplotlib is not installed (`pip install -e '.[bench]'`). Render them later "
                    "from this folder's results.json with `bench.report.write_report`.")
    plots: dict[str, str] = {}
    if run.variants:
        for kind, draw in (("throughput", _plot_throughput), ("latency", _plot_latency), ("cpu", _plot_cpu)):
            figure = draw(Figure, run)
            if figure is not None:
                plots[kind] = _save(figure, out, f"{kind}.png")
    results = run.results
    if results.handshake is not None:
        figure = _plot_handshake(Figure, results.handshake, "Upstream TLS handshake")
        if figure is not None:
            plots["handshake"] = _save(figure, out, "handshake_cpu.png")
    if results.memory is not None:
        figure = _plot_memory(Figure, results.memory)
        if figure is not None:
            plots["memory"] = _save(figure, out, "memory.png")
    matrix = results.tls_matrix
    if matrix is not None:
        if matrix.handshake is not None:
            figure = _plot_handshake(Figure, matrix.handshake, "TLS matrix, upstream handshake")
            if figure is not None:
                plots["tls_matrix"] = _save(figure, out, "tls_matrix_handshake.png")
        figure = _plot_matrix_bulk(Figure, matrix.bulk)
        if figure is not None:
            plots["tls_matrix_bulk"] = _save(figure, out, "tls_matrix_bulk.png")
    return plots, ""


def _save(figure: Any, out: Path, name: str) -> str:
    figure.savefig(out / name, dpi=110, metadata={"Software": None})
    return name


def _grid(Figure: Any, run: RunAnalysis, title: str) -> tuple[Any, list[Any]]:
    count = len(run.variants)
    columns = 1 if count == 1 else 2
    rows = math.ceil(count / columns)
    bar_rows = len(run.names)
    figure = Figure(figsize=(4.6 + 4.6 * columns, rows * (0.36 * bar_rows + 1.5) + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, sharey=True, squeeze=False)
    flat = [axis for row in axes for axis in row]
    for axis in flat[count:]:
        axis.set_visible(False)
    figure.suptitle(title, fontsize=12)
    for axis in flat[:count]:
        axis.set_yticks(range(bar_rows))
        axis.set_yticklabels([run.label(name) for name in run.names])
        axis.set_ylim(bar_rows - 0.5, -0.5)
        axis.grid(axis="x", alpha=0.3)
        axis.set_axisbelow(True)
    for row in axes:
        for axis in row[1:]:
            axis.tick_params(axis="y", labelleft=False)
    return figure, flat[:count]


def _scenario_color(run: RunAnalysis, name: str) -> str:
    if name in SCENARIO_COLORS:
        return SCENARIO_COLORS[name]
    extras = [other for other in run.names if other not in SCENARIO_COLORS]
    return EXTRA_COLORS[extras.index(name) % len(EXTRA_COLORS)]


def _plot_throughput(Figure: Any, run: RunAnalysis) -> Any:
    baseline = run.baselines[0] if run.baselines else None
    title = "Throughput per scenario: median, whiskers min–max (higher is better)"
    if baseline:
        title += f"; labels: ratio vs {baseline}"
    figure, axes = _grid(Figure, run, title)
    for axis, variant in zip(axes, run.variants):
        medians, low, high = [], [], []
        for name in run.names:
            summary = variant.summary(name, variant.headline)
            median = summary["median"] if summary["n"] else 0.0
            medians.append(median)
            low.append(median - summary["min"] if summary["n"] else 0.0)
            high.append(summary["max"] - median if summary["n"] else 0.0)
        positions = range(len(run.names))
        axis.barh(positions, medians, xerr=[low, high], capsize=3, height=0.7,
                  color=[_scenario_color(run, name) for name in run.names], edgecolor="#333333",
                  linewidth=0.5, error_kw={"elinewidth": 1, "ecolor": "#222222"})
        top = max([m + h for m, h in zip(medians, high)] + [1e-9])
        axis.set_xlim(0, top * 1.32)
        if baseline:
            for position, name, median, extra in zip(positions, run.names, medians, high):
                ratio = variant.ratio(name, baseline)
                if finite(ratio):
                    axis.text(median + extra + top * 0.02, position, f"{ratio:.2f}×", va="center", fontsize=8)
        axis.set_title(variant.title, fontsize=10)
        axis.set_xlabel(f"{variant.metric_unit}")
    return figure


def _plot_latency(Figure: Any, run: RunAnalysis) -> Any:
    figure, axes = _grid(Figure, run, "Latency per scenario: median over repetitions of each percentile "
                                      "(lower is better)")
    shades = {0: 1.0, 1: 0.55, 2: 0.3}
    two_keys = False
    for axis, variant in zip(axes, run.variants):
        keys = [key for key in variant.latency_keys if key.startswith(("p50", "p99"))] or variant.latency_keys[:2]
        if not keys:
            axis.text(0.5, 0.5, "no latency metric", ha="center", va="center", transform=axis.transAxes)
            axis.set_title(variant.title, fontsize=10)
            continue
        height = 0.8 / len(keys)
        two_keys = two_keys or len(keys) > 1
        for index, key in enumerate(keys):
            offsets = [position - 0.4 + height * (index + 0.5) for position in range(len(run.names))]
            values = [variant.median(name, key) for name in run.names]
            values = [value if finite(value) else 0.0 for value in values]
            axis.barh(offsets, values, height=height, label=metric_label(key),
                      color=[_scenario_color(run, name) for name in run.names],
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


def _plot_cpu(Figure: Any, run: RunAnalysis) -> Any:
    figure, axes = _grid(Figure, run, "CPU per unit of work by process (µs, medians over repetitions; "
                                      "lower is better)")
    for axis, variant in zip(axes, run.variants):
        left = [0.0] * len(run.names)
        cpu = {name: variant.cpu_per_unit(name) for name in run.names}
        for role in variant.roles:
            values = [cpu[name].get(role, 0.0) for name in run.names]
            values = [value if finite(value) else 0.0 for value in values]
            axis.barh(range(len(run.names)), values, left=left, height=0.7, label=role,
                      color=ROLE_COLORS.get(role, "#bcbd22"), edgecolor="white", linewidth=0.5)
            left = [a + b for a, b in zip(left, values)]
        top = max(left + [1e-9])
        axis.set_xlim(0, top * 1.22)
        for position, name in enumerate(run.names):
            total = cpu[name]["total"]
            if finite(total):
                axis.text(left[position] + top * 0.02, position, fmt(total), va="center", fontsize=8)
        axis.set_title(variant.title, fontsize=10)
        axis.set_xlabel(f"CPU µs per {variant.unit_label}")
    roles = [role for role in ROLES if any(role in variant.roles for variant in run.variants)]
    roles += sorted({role for variant in run.variants for role in variant.roles} - set(roles))
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=ROLE_COLORS.get(role, "#bcbd22"), label=role) for role in roles]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9, frameon=False)
    return figure


# ---- handshake CPU, memory (bench/handshake.py, bench/memory.py, bench/tls_matrix.py) -------------

_NO_STATS = Stats(0.0, 0.0, 0.0)


def _stats_bars(axis: Any, positions: Any, stats: list[Stats], **style: Any) -> None:
    """Horizontal bars at the medians, whiskers from min to max."""
    axis.barh(positions, [item.median for item in stats], capsize=2, edgecolor="#333333", linewidth=0.5,
              xerr=[[item.median - item.low for item in stats], [item.high - item.median for item in stats]],
              error_kw={"elinewidth": 0.8}, **style)


def _side_by_side(axes: tuple[Any, Any], labels: list[str]) -> None:
    """Two panels sharing one row per label, top to bottom; the labels on the left one."""
    for axis in axes:
        axis.set_yticks(range(len(labels)))
        axis.set_yticklabels(labels)
        axis.set_ylim(len(labels) - 0.5, -0.5)
        axis.grid(axis="x", alpha=0.3)
        axis.set_axisbelow(True)
    axes[1].tick_params(axis="y", labelleft=False)


def _plot_handshake(Figure: Any, handshake: HandshakeResults, title: str) -> Any:
    """Per variant (TLS version, key type, full or resumed): the TLS client's CPU per handshake (what
    tlsproxy pays upstream), the server's CPU per connection, and handshake latency; median, min–max."""
    rows = handshake.variants
    if not rows:
        return None
    labels = [row.tls.label for row in rows]
    figure = Figure(figsize=(13, 0.45 * len(rows) + 2.0), layout="constrained")
    cpu_axis, latency_axis = figure.subplots(1, 2, sharey=True, width_ratios=(3, 2))
    figure.suptitle(f"{title}: median, whiskers min–max (lower is better)", fontsize=12)
    series = [("cpu_us", "TLS client = tlsproxy side (do_handshake)", ROLE_COLORS["proxy"]),
              ("server_cpu_us_per_connection", "server, whole connection", ROLE_COLORS["server"])]
    series = [item for item in series if any(getattr(row, item[0]) for row in rows)]
    height = 0.8 / len(series)
    top = 1e-9
    for index, (key, label, color) in enumerate(series):
        stats = [getattr(row, key) or _NO_STATS for row in rows]
        offsets = [position - 0.4 + height * (index + 0.5) for position in range(len(rows))]
        _stats_bars(cpu_axis, offsets, stats, height=height, color=color, label=label)
        for offset, item in zip(offsets, stats):
            cpu_axis.text(item.high + 0.0, offset, f" {fmt(item.median)}", va="center", fontsize=7)
        top = max([top] + [item.high for item in stats])
    cpu_axis.set_xlim(0, top * 1.18)
    cpu_axis.set_xlabel("CPU µs per handshake / per connection")
    figure.legend(loc="outside lower center", ncols=len(series), fontsize=9, frameon=False)
    latency = [row.latency_ms or _NO_STATS for row in rows]
    _stats_bars(latency_axis, range(len(rows)), latency, height=0.6, color=ROLE_COLORS["client"])
    latency_axis.set_xlabel("handshake latency, ms")
    _side_by_side((cpu_axis, latency_axis), labels)
    return figure


def _plot_matrix_bulk(Figure: Any, points: list[BulkPoint]) -> Any:
    """Bulk transfer through tlsproxy pinned to one TLS version, cipher and server key: MB/s, and the
    proxy's and the server's CPU per MiB."""
    if not points:
        return None
    labels = [point.label for point in points]
    figure = Figure(figsize=(13, 0.45 * len(points) + 2.0), layout="constrained")
    speed_axis, cpu_axis = figure.subplots(1, 2, sharey=True)
    figure.suptitle("TLS matrix, bulk through tlsproxy (1 MiB rows): median, whiskers min–max", fontsize=12)
    speed = [point.mb_per_s for point in points]
    _stats_bars(speed_axis, range(len(points)), speed, height=0.6, color=ROLE_COLORS["client"])
    speed_axis.set_xlabel("MB/s (higher is better)")
    series = [(key, role) for key, role in (("proxy_cpu_ms_per_mib", "proxy"), ("server_cpu_ms_per_mib", "server"))
              if any(getattr(point, key) for point in points)]
    for index, (key, role) in enumerate(series):
        height = 0.8 / len(series)
        offsets = [position - 0.4 + height * (index + 0.5) for position in range(len(points))]
        stats = [getattr(point, key) or _NO_STATS for point in points]
        _stats_bars(cpu_axis, offsets, stats, height=height, color=ROLE_COLORS[role], label=f"{role} CPU")
    cpu_axis.set_xlabel("CPU ms per MiB (lower is better)")
    if series:
        figure.legend(loc="outside lower center", ncols=len(series), fontsize=9, frameon=False)
    _side_by_side((speed_axis, cpu_axis), labels)
    return figure


def _plot_memory(Figure: Any, memory: MemoryResults) -> Any:
    points = memory.points
    if not points:
        return None
    figure = Figure(figsize=(8, 4.2), layout="constrained")
    axis = figure.subplots()
    connections = [point.connections for point in points]
    axis.plot(connections, [point.proxy_rss_kib / 1024 for point in points], marker="o",
              color=ROLE_COLORS["proxy"], label="tlsproxy RSS")
    server = [point.server_rss_kib for point in points]
    if all(kib is not None for kib in server):
        axis.plot(connections, [kib / 1024 for kib in server if kib is not None], marker="s",
                  color=ROLE_COLORS["server"], label="MariaDB RSS")
    if memory.proxy_rss_kib_after_close is not None:
        axis.scatter([0], [memory.proxy_rss_kib_after_close / 1024], marker="x", color="#d62728", zorder=3,
                     label="tlsproxy RSS after closing all")
    slopes = memory.kib_per_connection
    title = "Memory with idle proxied connections"
    if slopes:
        last = list(slopes)[-1]
        if finite(slopes[last]):
            title += f" (tlsproxy: {fmt(float(slopes[last]))} KiB per connection at {last})"
    axis.set_title(title, fontsize=11)
    axis.set_xlabel("idle authenticated connections through tlsproxy (TLS route)")
    axis.set_ylabel("resident memory, MiB")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return figure
