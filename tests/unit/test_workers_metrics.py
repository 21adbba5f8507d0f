"""The supervisor's /metrics: the workers' expositions combined sample by sample."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tlsproxy.metrics import ProxyMetrics
from tlsproxy.metrics_merge import Families, merge_families, parse_metrics


def worker_text(accepted: int, active: int, not_after: float, observations: list[float],
                relayed: int) -> str:
    metrics = ProxyMetrics(CollectorRegistry(auto_describe=True))
    metrics.connections_accepted.labels("main").inc(accepted)
    metrics.connections_active.labels("main").set_function(lambda: active)
    metrics.certificate_not_after.labels("main").set(not_after)
    for seconds in observations:
        metrics.handshake_duration.labels("main", "total").observe(seconds)
    metrics.add_relayed_bytes_source(lambda: [("main", "client_to_server", relayed)])
    return generate_latest(metrics.registry).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_counters_histograms_and_gauges_are_summed_across_workers() -> None:
    first = worker_text(3, 2, 2_000_000_000.0, [0.001, 0.2], 100)
    second = worker_text(4, 1, 1_900_000_000.0, [0.002], 50)
    merged = samples(generate_latest(Families(merge_families([parse_metrics(first), parse_metrics(second)]))).decode())
    route = (("route", "main"),)
    assert merged[("tlsproxy_connections_accepted_total", route)] == 7
    assert merged[("tlsproxy_connections_active", route)] == 3
    assert merged[("tlsproxy_relayed_bytes_total", (("direction", "client_to_server"), ("route", "main")))] == 150
    total = (("phase", "total"), ("route", "main"))
    assert merged[("tlsproxy_handshake_duration_seconds_count", total)] == 3
    assert abs(merged[("tlsproxy_handshake_duration_seconds_sum", total)] - 0.203) < 1e-9
    assert merged[("tlsproxy_handshake_duration_seconds_bucket", (("le", "0.001"), *total))] == 1
    assert merged[("tlsproxy_handshake_duration_seconds_bucket", (("le", "0.002"), *total))] == 2
    assert merged[("tlsproxy_handshake_duration_seconds_bucket", (("le", "+Inf"), *total))] == 3
    # the earliest notAfter any worker saw (alert early); build info stays 1; _created is the earliest
    assert merged[("tlsproxy_upstream_certificate_not_after_timestamp_seconds", route)] == 1_900_000_000.0
    assert [value for (name, _), value in merged.items() if name == "tlsproxy_build_info"] == [1.0]
    created = [samples(text)[("tlsproxy_connections_accepted_created", route)] for text in (first, second)]
    assert merged[("tlsproxy_connections_accepted_created", route)] == min(created)


def test_a_label_set_only_one_worker_has_is_kept() -> None:
    first = worker_text(1, 0, 1.0, [], 0)
    metrics = ProxyMetrics(CollectorRegistry(auto_describe=True))
    metrics.handshake_failures.labels("main", "expired").inc()
    merged = samples(generate_latest(Families(merge_families(
        [parse_metrics(first), parse_metrics(generate_latest(metrics.registry).decode())]))).decode())
    assert merged[("tlsproxy_handshake_failures_total", (("reason", "expired"), ("route", "main")))] == 1
    assert merged[("tlsproxy_connections_accepted_total", (("route", "main"),))] == 1
