"""What a soak run's results say: the memory trend of sampled RSS, and summary.md.

Pure functions of the results (bench/soak.py writes them to results.json), so a summary can be
written again from an old results.json.
"""

from __future__ import annotations

import datetime
from typing import Any

from bench.model import SoakResults


def slope_per_minute(points: list[dict[str, Any]], key: str) -> float | None:
    """Least-squares slope of points[key] against points["t"], per minute."""
    if len(points) < 2:
        return None
    ts = [point["t"] for point in points]
    ys = [point[key] for point in points]
    mean_t, mean_y = sum(ts) / len(ts), sum(ys) / len(ys)
    spread = sum((t - mean_t) ** 2 for t in ts)
    if spread == 0:
        return None
    return 60 * sum((t - mean_t) * (y - mean_y) for t, y in zip(ts, ys)) / spread


def memory_summary(samples: list[dict[str, Any]], key: str) -> dict[str, Any]:
    steady = [point for point in samples if point["phase"] == "steady"]
    if not steady:
        return {"steady_samples": 0}
    half = [point for point in steady if point["t"] >= (steady[0]["t"] + steady[-1]["t"]) / 2]
    before = next((point[key] for point in samples if point["phase"] == "before"), None)
    after = next((point[key] for point in samples if point["phase"] == "after_close"), None)
    return {"steady_samples": len(steady), "before_kib": before, "start_kib": steady[0][key],
            "end_kib": steady[-1][key], "max_kib": max(point[key] for point in steady),
            "min_kib": min(point[key] for point in steady),
            "slope_kib_per_min": slope_per_minute(steady, key),
            "slope_second_half_kib_per_min": slope_per_minute(half, key), "after_close_kib": after}


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def summary_markdown(results: SoakResults) -> str:
    config, totals, rss = results.config, results.totals, results.proxy_rss
    server = results.server_rss
    day = datetime.datetime.fromtimestamp(results.started).strftime("%Y-%m-%d %H:%M")
    lines = [
        f"# Soak: {totals.connections:,} connections through tlsproxy ({day})", "",
        f"**{'OK' if results.ok else 'FAILED: ' + '; '.join(results.problems)}**", "",
        f"Route `{results.route}` (TLS upstream, VERIFY_IDENTITY{_pool_words(config)}), proxy event loop "
        f"{results.event_loop}; "
        f"{results.machine['cpus']} CPUs ({results.machine['cpu_model']}), shared with other work. "
        f"Each connection pauses uniform 0–{2 * config['query_interval_s']:g} s before each operation, quits after "
        f"uniform 1–{max(1, round(2 * config['mean_operations_per_login'] - 1))} operations (target "
        f"{config['reconnect_rate']:g} reconnects/s); one operation in {config['blob_every']} is a blob round trip "
        f"(INSERT ≤ {config['blob_max_bytes']:,} random bytes, SELECT them back with SHA2, DELETE). Seed {config['seed']}.",
        "", "| | |", "|---|---|",
        f"| connections (target / max open) | {totals.connections:,} / {totals.max_open:,} |",
        f"| ramp (all logged in) | {_fmt(totals.ramp_s)} s |",
        f"| duration after ramp | {_fmt(totals.steady_s)} s |",
        f"| queries | {totals.queries:,} ({_fmt(totals.queries_per_s)}/s) |",
        f"| checked answers | {totals.echo_checks:,} echoes, {totals.blob_checks:,} blobs "
        f"({totals.blob_bytes / 1048576:,.1f} MiB), {totals.tls_checks:,} upstream-TLS checks |",
        f"| reconnects | {totals.reconnects:,} ({_fmt(totals.reconnects_per_s, 2)}/s) |",
        f"| errors | {totals.errors:,}"
        + (" (" + ", ".join(f"{kind}: {count:,}" for kind, count in sorted(totals.errors_by_kind.items())) + ")"
           if totals.errors_by_kind else "") + " |",
        f"| query latency p50 / p99 / max | {_fmt(results.latency['query']['p50_ms'], 2)} / "
        f"{_fmt(results.latency['query']['p99_ms'], 2)} / {_fmt(results.latency['query']['max_ms'], 1)} ms |",
        f"| login latency p50 / p99 / max | {_fmt(results.latency['login']['p50_ms'], 2)} / "
        f"{_fmt(results.latency['login']['p99_ms'], 2)} / {_fmt(results.latency['login']['max_ms'], 1)} ms |",
        f"| proxy RSS idle before / start / end / max | {_fmt(rss.get('before_kib'))} / {_fmt(rss.get('start_kib'))} / "
        f"{_fmt(rss.get('end_kib'))} / {_fmt(rss.get('max_kib'))} KiB |",
        f"| proxy RSS slope (whole / second half) | {_fmt(rss.get('slope_kib_per_min'))} / "
        f"{_fmt(rss.get('slope_second_half_kib_per_min'))} KiB/min |",
        f"| proxy RSS after all closed | {_fmt(rss.get('after_close_kib'))} KiB |",
        f"| MariaDB RSS start / end / max | {_fmt(server.get('start_kib'))} / {_fmt(server.get('end_kib'))} / "
        f"{_fmt(server.get('max_kib'))} KiB |",
        f"| blob rows left | {totals.blob_rows_left:,} |",
        *_pool_row(results), "",
        "Limits: " + ", ".join(f"{key} {value}" for key, value in results.limits.items()) + ".", "",
        "The proxy's counters for the route during the run: " + ", ".join(
            f"`{key}` {value:g}" for key, value in sorted(results.proxy_counters.items())) + ".", "",
    ]
    if totals.error_examples:
        lines += ["## Errors (first examples)", ""]
        for kind, examples in sorted(totals.error_examples.items()):
            lines += [f"- {kind}: " + "; ".join(f"`{example}`" for example in examples)]
        lines.append("")
    lines += ["## Proxy RSS over time", "", "| t (s) | phase | open | queries | reconnects | errors | proxy RSS (KiB) "
              "| proxy fds | MariaDB RSS (KiB) |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for point in _thin(results.samples, 40):
        lines.append(f"| {point['t']:.0f} | {point['phase']} | {point['open']:,} | {point['queries']:,} | "
                     f"{point['reconnects']:,} | {point['errors']:,} | {point['proxy_rss_kib']:,} | "
                     f"{point['proxy_fds']:,} | {point['server_rss_kib']:,} |")
    lines += ["", f"All {len(results.samples)} samples are in results.json.", ""]
    return "\n".join(lines)


def _pool_words(config: dict[str, Any]) -> str:
    """How the route's upstream pool was set (nothing for a soak from before `--upstream-pool`)."""
    if "upstream_pool" not in config:
        return ""
    pool = config["upstream_pool"]
    return (f", upstream pool **on**: `upstream_pool: {pool}`, a client that quits leaves its upstream connection "
            "reset for the next login (COM_CHANGE_USER)") if pool else ", upstream pool off"


def _pool_row(results: SoakResults) -> list[str]:
    """The pool's events by outcome (tlsproxy_upstream_pool_events_total of the route during the run)."""
    if not results.config.get("upstream_pool"):
        return []
    prefix = "tlsproxy_upstream_pool_events_total{outcome="
    events = {name[len(prefix):-1]: value for name, value in results.proxy_counters.items() if name.startswith(prefix)}
    reused, logins = events.get("reused", 0.0), results.totals.logins
    shown = ", ".join(f"{outcome} {value:,.0f}" for outcome, value in sorted(events.items())) or "none counted"
    share = f" ({reused / logins:.1%} of {logins:,} logins on a pooled connection)" if logins else ""
    return [f"| upstream pool events | {shown}{share} |"]


def _thin(samples: list[dict[str, Any]], most: int) -> list[dict[str, Any]]:
    """At most `most` samples, evenly spaced, always with the first and the last of each phase."""
    if len(samples) <= most:
        return samples
    keep = {round(i * (len(samples) - 1) / (most - 1)) for i in range(most)}
    for index, point in enumerate(samples):
        if index == 0 or index == len(samples) - 1 or point["phase"] != samples[index - 1]["phase"] \
                or point["phase"] != samples[min(index + 1, len(samples) - 1)]["phase"]:
            keep.add(index)
    return [samples[index] for index in sorted(keep)]
