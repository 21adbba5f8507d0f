"""Every Prometheus metric of the proxy, on a dedicated registry.

Names follow Prometheus conventions (base units, `_total`, `_seconds`, `_bytes`); label values are
bounded (route names from the config, phases, outcome labels from errors.py, TLS versions and
ciphers, a fixed set of auth plugins) -- never client addresses or user names.

Relayed bytes are not counted per chunk on the hot path: each session keeps plain integers and a
collector adds them up at scrape time (live sessions plus those already closed).
"""

from __future__ import annotations

import platform
import ssl
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from tlsproxy import __version__

HANDSHAKE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015,
    0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
"""Sub-millisecond resolution: a loopback handshake phase takes 0.1-3 ms."""

CPU_BUCKETS = (
    0.00005, 0.0001, 0.0002, 0.0003, 0.0004, 0.0005, 0.0006, 0.0008, 0.001, 0.0015, 0.002, 0.003, 0.005,
    0.0075, 0.01, 0.02, 0.05, 0.1,
)
"""CPU seconds of one TLS handshake: ~0.1 ms resumed, ~1 ms full with RSA-2048, more with RSA-4096."""

PHASES = ("connect", "greeting", "tls", "auth", "total")
KNOWN_AUTH_PLUGINS = frozenset({
    "mysql_native_password", "caching_sha2_password", "sha256_password", "mysql_clear_password",
    "mysql_old_password", "client_ed25519", "parsec", "dialog", "auth_gssapi_client",
    "authentication_ldap_sasl_client", "authentication_kerberos_client", "authentication_fido_client",
})


def auth_plugin_label(name: str) -> str:
    """A server chooses plugin names; keep the label set bounded."""
    if not name:
        return "none"
    return name if name in KNOWN_AUTH_PLUGINS else "other"


class _RelayedBytes(Collector):
    def __init__(self, totals: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self._totals = totals

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily("tlsproxy_relayed_bytes", "Bytes relayed after authentication, by direction",
                                     labels=["route", "direction"])
        for route, direction, value in self._totals():
            family.add_metric([route, direction], value)
        yield family

    def describe(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily("tlsproxy_relayed_bytes", "", labels=["route", "direction"])


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections_active = Gauge(
            "tlsproxy_connections_active", "Client connections open now (handshake or relay)", ["route"], registry=r)
        self.connections_accepted = Counter(
            "tlsproxy_connections_accepted", "Client connections accepted", ["route"], registry=r)
        self.connections_closed = Counter(
            "tlsproxy_connections_closed", "Client connections ended, by outcome (ok, or the failure reason)",
            ["route", "outcome"], registry=r)
        self.connections_refused = Counter(
            "tlsproxy_connections_refused", "Client connections refused before any upstream work",
            ["route", "reason"], registry=r)
        self.handshake_duration = Histogram(
            "tlsproxy_handshake_duration_seconds",
            "Connection-phase latency by phase: upstream TCP connect, greeting, TLS handshake, authentication, "
            "and total as the client sees it (accept to auth OK)",
            ["route", "phase"], buckets=HANDSHAKE_BUCKETS, registry=r)
        self.tls_handshake_cpu = Histogram(
            "tlsproxy_tls_handshake_cpu_seconds",
            "CPU seconds (thread CPU time) spent inside the upstream TLS handshake itself",
            ["route", "resumed"], buckets=CPU_BUCKETS, registry=r)
        self.handshake_failures = Counter(
            "tlsproxy_handshake_failures", "Connections that failed before the relay started, by reason",
            ["route", "reason"], registry=r)
        self.tls_handshakes = Counter(
            "tlsproxy_tls_handshakes", "Completed upstream TLS handshakes by negotiated version, cipher and resumption",
            ["route", "version", "cipher", "resumed"], registry=r)
        self.tls_sessions_cached = Gauge(
            "tlsproxy_tls_sessions_cached", "Resumable upstream TLS sessions held now (0 with resumption off)",
            ["route"], registry=r)
        self.prewarm_connections = Counter(
            "tlsproxy_prewarm_connections", "Prewarmed upstream connections by what became of them: handed_out, "
            "expired (past prewarm_max_age), mismatch (the client's SSLRequest differed), failed, closed_by_server",
            ["route", "outcome"], registry=r)
        self.prewarm_ready = Gauge(
            "tlsproxy_prewarm_ready", "Prewarmed upstream connections ready now", ["route"], registry=r)
        self.upstream_pool_events = Counter(
            "tlsproxy_upstream_pool_events", "Upstream pool events by outcome: parked (reset OK), reused (a client "
            "logged in on a parked connection), reset_failed, expired (upstream_pool_idle_timeout), "
            "closed_by_server (while parked), denied (a client's COM_CHANGE_USER failed: closed), mismatch (the "
            "client's SSLRequest differed), full (no room: closed), in_flight (the client left mid-command: closed)",
            ["route", "outcome"], registry=r)
        self.upstream_pool_idle = Gauge(
            "tlsproxy_upstream_pool_idle", "Parked upstream connections waiting for a client now", ["route"],
            registry=r)
        self.auth_plugins = Counter(
            "tlsproxy_authentications", "Successful authentications by the auth plugin the server used last",
            ["route", "plugin"], registry=r)
        self.certificate_not_after = Gauge(
            "tlsproxy_upstream_certificate_not_after_timestamp_seconds",
            "notAfter of the upstream server certificate last seen, as a Unix timestamp", ["route"], registry=r)
        self.config_reloads = Counter(
            "tlsproxy_config_reloads", "Reloads of the TLS files (SIGHUP, or a change on disk), by result",
            ["result"], registry=r)
        build = Gauge("tlsproxy_build_info", "Build information (always 1)",
                      ["version", "python", "openssl"], registry=r)
        build.labels(__version__, platform.python_version(), ssl.OPENSSL_VERSION).set(1)
        self._routes: dict[str, RouteMetrics] = {}

    def route(self, name: str) -> "RouteMetrics":
        """The labelled children of route `name`'s metrics, kept for every connection of the route."""
        children = self._routes.get(name)
        if children is None:
            children = self._routes[name] = RouteMetrics(self, name)
        return children

    def add_relayed_bytes_source(self, totals: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self.registry.register(_RelayedBytes(totals))


class RouteMetrics:
    """One route's labelled children of the metrics its connections update, each resolved by `labels()` on
    first use and then reused: `labels()` checks and stringifies the label values and takes a lock, several
    times per connection otherwise. Made on first use as before, so a series appears when it first counts."""

    def __init__(self, metrics: ProxyMetrics, route: str) -> None:
        self.metrics = metrics
        self.route = route
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}

    def child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """`metric.labels(route, *labels)`, the same child every time."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.route, *labels)
        return child
