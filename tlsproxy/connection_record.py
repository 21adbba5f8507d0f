"""The record of one connection: what it did (`ConnectionStats`), how it ended (the outcome decided at
close), the metrics taken when the relay starts and when the connection ends, and its one log line.

The session feeds it facts as they happen; nothing here reads or writes a socket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from tlsproxy.config import Route, SslMode
from tlsproxy.metrics import ProxyMetrics, RouteMetrics, auth_plugin_label
from tlsproxy.outcome import Outcome

log = logging.getLogger("tlsproxy.session")  # the line keeps the logger name operators filter on


@dataclass
class ConnectionStats:
    """What one connection did; logged once when it ends."""

    accepted_at: float = field(default_factory=time.monotonic)
    connect_seconds: float | None = None
    greeting_seconds: float | None = None
    tls_seconds: float | None = None
    auth_seconds: float | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    tls_resumed: bool | None = None
    prewarmed: bool = False
    reused: bool = False
    """The upstream was a parked connection of the pool: the login was a COM_CHANGE_USER."""
    parked: bool = False
    """The upstream went to the pool when the client left."""
    tls_handshake_cpu_seconds: float | None = None
    certificate_not_after: float | None = None
    bytes_client_to_server: int = 0
    bytes_server_to_client: int = 0
    auth_plugin: str = ""
    outcome: Outcome = Outcome.OPEN
    reason: str = ""
    closed_by: str = ""
    phase_started: float = field(default=0.0, repr=False)
    """When the current handshake phase began (the accept, then the end of the previous phase)."""

    def __post_init__(self) -> None:
        self.phase_started = self.accepted_at

    def start_phase(self) -> None:
        self.phase_started = time.monotonic()

    def phase_seconds(self) -> float:
        return time.monotonic() - self.phase_started


class ConnectionRecord:
    """One per session. `relay_started` takes the handshake's metrics; `end` decides the outcome, writes
    the log line and counts the connection, once."""

    def __init__(self, route: Route, conn_id: int, *, tls: bool, metrics: ProxyMetrics | None) -> None:
        self.route = route
        self.conn_id = conn_id
        self.tls = tls
        self.metrics = metrics
        self._route_metrics = metrics.route(route.name) if metrics is not None else None
        self.stats = ConnectionStats()
        self.client_address = "-"
        self.refused = False
        """Answered with a first-packet ERR (max connections, draining): counted as refused, not closed."""

    def note_client(self, transport: asyncio.BaseTransport) -> None:
        """Name the client in the log line by its address (or "unix" for a Unix socket peer)."""
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client_address = f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
        else:
            self.client_address = "unix" if peer in (None, "", b"") else str(peer)

    def first_packet_to_client(self) -> None:
        """The greeting phase ends when the first bytes go to the client (once)."""
        if self.stats.greeting_seconds is None:
            self.stats.greeting_seconds = self.stats.phase_seconds()
            self.stats.start_phase()

    def relay_started(self, auth_plugin: str) -> None:
        stats = self.stats
        stats.auth_seconds = stats.phase_seconds()
        stats.auth_plugin = auth_plugin
        stats.outcome = Outcome.RELAYED
        if self._route_metrics is not None:
            self._record_handshake(self._route_metrics)

    def end(self, reason: str, outcome: Outcome | None, closed_by: str, *, relayed: bool) -> None:
        """`outcome` None: OK after a relay, ABORTED before it, unless an outcome was already decided."""
        stats = self.stats
        if outcome is not None:
            stats.outcome = outcome
        elif stats.outcome in (Outcome.OPEN, Outcome.RELAYED):
            stats.outcome = Outcome.OK if relayed else Outcome.ABORTED
        stats.reason = reason
        stats.closed_by = closed_by
        self._log_end()
        if self._route_metrics is not None:
            self._record_end(self._route_metrics, relayed)

    def _record_handshake(self, route: RouteMetrics) -> None:
        stats, metrics = self.stats, route.metrics
        phases = {"connect": stats.connect_seconds, "greeting": stats.greeting_seconds, "tls": stats.tls_seconds,
                  "change_user" if stats.reused else "auth": stats.auth_seconds,
                  "total": time.monotonic() - stats.accepted_at}
        if stats.reused:
            del phases["connect"]  # no connect happened: 0 would only flatten the histogram
        for phase, seconds in phases.items():
            if seconds is not None:
                route.child(metrics.handshake_duration, phase).observe(seconds)
        if stats.tls_version is not None and not stats.reused:
            resumed = "yes" if stats.tls_resumed else "no"
            route.child(metrics.tls_handshakes, stats.tls_version, stats.tls_cipher or "", resumed).inc()
            if stats.tls_handshake_cpu_seconds is not None:
                route.child(metrics.tls_handshake_cpu, resumed).observe(stats.tls_handshake_cpu_seconds)
        if stats.certificate_not_after is not None:
            route.child(metrics.certificate_not_after).set(stats.certificate_not_after)
        route.child(metrics.auth_plugins, auth_plugin_label(stats.auth_plugin)).inc()

    def _record_end(self, route: RouteMetrics, relayed: bool) -> None:
        metrics = route.metrics
        if self.refused:
            route.child(metrics.connections_refused, self.stats.outcome).inc()
            return
        route.child(metrics.connections_closed, self.stats.outcome).inc()
        if not relayed:
            route.child(metrics.handshake_failures, self.stats.outcome).inc()

    def _log_end(self) -> None:
        """One line per connection: key=value text, or (with --log-format json) the same fields as JSON."""
        stats = self.stats
        mode = self.route.tls.mode
        warned = mode in (SslMode.REQUIRED, SslMode.DISABLED)
        quiet = stats.outcome in (Outcome.OK, Outcome.RELAYED, Outcome.AUTH_DENIED) and not warned
        level = logging.INFO if quiet else logging.WARNING
        if not log.isEnabledFor(level):
            return  # nothing to build: a log level above it (the fields are ~20 µs of a pooled connection)

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        fields: dict[str, object] = {
            "conn": self.conn_id, "route": self.route.name, "client": self.client_address,
            "upstream": str(self.route.upstream), "outcome": stats.outcome, "closed_by": stats.closed_by,
            "tls": stats.tls_version if self.tls else "off", "cipher": stats.tls_cipher,
            "resumed": stats.tls_resumed, "prewarmed": stats.prewarmed, "reused": stats.reused,
            "parked": stats.parked, "auth": stats.auth_plugin or None,
            "connect_ms": ms(stats.connect_seconds), "greeting_ms": ms(stats.greeting_seconds),
            "tls_ms": ms(stats.tls_seconds), "auth_ms": ms(stats.auth_seconds),
            "duration_ms": ms(time.monotonic() - stats.accepted_at),
            "bytes_up": stats.bytes_client_to_server, "bytes_down": stats.bytes_server_to_client,
            "reason": stats.reason,
        }
        if mode is SslMode.REQUIRED:
            fields["warning"] = "upstream certificate NOT verified (ssl_mode=REQUIRED)"
        elif mode is SslMode.DISABLED:
            fields["warning"] = "upstream NOT encrypted (ssl_mode=DISABLED)"

        def text(value: object) -> str:
            if value is None:
                return "-"
            if isinstance(value, bool):
                return "yes" if value else "no"
            return repr(value) if isinstance(value, str) and (" " in value or not value) else str(value)

        message = " ".join(f"{key}={text(value)}" for key, value in fields.items() if key != "warning")
        if "warning" in fields:
            message += f" WARNING: {fields['warning']}"
        log.log(level, message, extra={"connection": fields})
