"""`RouteMetrics`: a route's labelled children, resolved once and reused, with the same exposition as
`labels()` called every time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tlsproxy.metrics import ProxyMetrics
from tlsproxy.outcome import Outcome


def test_a_child_is_the_one_labels_gives_and_is_resolved_once() -> None:
    metrics = ProxyMetrics(CollectorRegistry(auto_describe=True))
    route = metrics.route("main")
    assert metrics.route("main") is route and metrics.route("other") is not route
    child = route.child(metrics.connections_closed, Outcome.OK)
    assert child is metrics.connections_closed.labels("main", "ok")
    assert route.child(metrics.connections_closed, Outcome.OK) is child
    assert route.child(metrics.connections_accepted) is metrics.connections_accepted.labels("main")


def exposition(metrics: ProxyMetrics) -> list[tuple[str, dict[str, str], float]]:
    """Every sample but the `_created` timestamps."""
    text = generate_latest(metrics.registry).decode()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if not s.name.endswith("_created")]


def test_a_series_appears_only_once_it_is_used_as_with_labels() -> None:
    cached, direct = (ProxyMetrics(CollectorRegistry(auto_describe=True)) for _ in range(2))
    assert exposition(cached) == exposition(direct)
    route = cached.route("main")
    for outcome in (Outcome.OK, Outcome.OK, Outcome.AUTH_DENIED):
        route.child(cached.connections_closed, outcome).inc()
        direct.connections_closed.labels("main", outcome).inc()
    route.child(cached.handshake_duration, "total").observe(0.002)
    direct.handshake_duration.labels("main", "total").observe(0.002)
    assert exposition(cached) == exposition(direct)
