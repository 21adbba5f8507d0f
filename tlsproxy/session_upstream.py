"""Where a session's upstream leg comes from and where it goes (a part of `Session`, as
`prewarm_adoption` is a part of the handshake machine): a parked connection of the route's pool, a
prewarmed one, or a fresh connect and its TLS upgrade; another one when the first did not fit the client
or turned out dead; and back to the pool when the client leaves with nothing in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Coroutine

from tlsproxy import upstream
from tlsproxy.errors import TlsProxyError
from tlsproxy.config import Route
from tlsproxy.metrics import ProxyMetrics
from tlsproxy.mysql.handshake import AuthKey, Effect, State
from tlsproxy.outcome import Outcome
from tlsproxy.prewarm import PrewarmPool, WarmUpstream
from tlsproxy.tls import UpstreamTls
from tlsproxy.upstream_pool import PoolEvent, PooledUpstream, UpstreamPool

if TYPE_CHECKING:  # pragma: no cover - names for the annotations below
    from tlsproxy.connection_record import ConnectionStats
    from tlsproxy.mysql.handshake import HandshakeMachine

log = logging.getLogger("tlsproxy.session")


@dataclass(frozen=True)
class RouteRuntime:
    """What every session of one route shares, built once at start (or reload)."""

    route: Route
    upstream_tls: UpstreamTls | None
    auth_key: AuthKey | None
    metrics: ProxyMetrics | None = None
    prewarm: PrewarmPool | None = None
    connector: upstream.Connector = upstream.create_connection
    """How the sessions open TCP to the upstream (tests pass a fake)."""
    upstream_pool: UpstreamPool | None = None


class SessionUpstream:
    """The upstream half of `Session`. What it uses of the session:"""

    runtime: RouteRuntime
    route: Route
    conn_id: int
    machine: HandshakeMachine
    stats: ConnectionStats
    upstream: asyncio.Transport | None
    _upstream_protocol: upstream.UpstreamSide | None
    _closed: bool
    _server_eof: bool
    _spawn: Callable[[Coroutine[None, None, None]], None]
    _run_machine: Callable[[Callable[[], list[Effect]]], None]
    fail: Callable[[TlsProxyError], None]
    close: Callable[..., None]

    def _init_upstream(self) -> None:
        self._pooled: PooledUpstream | None = None
        """The parked connection this session took, while the client's login on it runs."""
        self._pooled_gone = False
        """... and it closed before the server answered (`_pooled_upstream_gone`)."""
        self._opened_with: bytes | None = None
        """The SSLRequest a pooled upstream was opened with (a fresh one's is the machine's `ssl_request`)."""
        self._uses = 1
        """Clients the upstream connection has served, this one included."""
        self._park_tried = False

    def _adopt_parked_upstream(self) -> bool:
        """A parked connection for the client that just came, if the pool has one (no task, no wait)."""
        pool = self.runtime.upstream_pool
        pooled = pool.take(self._preferred_ssl_request()) if pool is not None else None
        if pooled is None:
            return False
        self._adopt_pooled(pooled)
        return True

    async def _acquire_upstream(self) -> None:
        """No parked connection was free: a prewarmed one, else a fresh connect."""
        prewarm = self.runtime.prewarm
        warm = prewarm.take() if prewarm is not None else None
        if warm is not None:
            self._adopt_prewarmed(warm)
        else:
            await self._connect_upstream()

    def _upstream_logged_in(self) -> bool:
        """The client's login succeeded; True if it was on a parked connection."""
        if self._pooled is None:
            return False
        self._pooled = None
        if self.runtime.upstream_pool is not None:
            self.runtime.upstream_pool.count(PoolEvent.REUSED)
        return True

    def _upstream_login_ended(self, outcome: Outcome | None, closed_by: str) -> None:
        """The session ends: if the client's login on a parked connection did not finish, count why (the
        connection is closed with the session: a failed COM_CHANGE_USER leaves it logged in as the previous
        client's user)."""
        pool = self.runtime.upstream_pool
        if self._pooled is None or pool is None:
            return
        self._pooled = None
        if outcome is Outcome.AUTH_DENIED:
            pool.count(PoolEvent.DENIED)
        elif closed_by == "server":
            pool.count(PoolEvent.CLOSED_BY_SERVER)

    async def _connect_upstream(self) -> None:
        started = time.monotonic()
        transport = await upstream.connect(self.route, lambda: self._upstream_protocol or asyncio.Protocol(),
                                           conn_id=self.conn_id, connector=self.runtime.connector)
        if self._closed:
            transport.close()
            return
        self.stats.connect_seconds = time.monotonic() - started
        self.stats.start_phase()

    def _adopt_prewarmed(self, warm: WarmUpstream) -> None:
        """Take over a prewarmed upstream: TCP, greeting, SSLRequest and TLS are done."""
        if warm.expiry is not None:
            warm.expiry.cancel()
        self.upstream = warm.transport
        warm.transport.set_protocol(self._upstream_protocol)
        self.stats.prewarmed = True
        self.stats.connect_seconds = 0.0
        upstream.note_tls(self.stats, warm.transport)
        self.stats.start_phase()
        self._run_machine(lambda: self.machine.adopt_prewarmed_upstream(warm.greeting_payload, warm.ssl_request))

    def _preferred_ssl_request(self) -> bytes | None:
        prewarm = self.runtime.prewarm
        return prewarm.learned_ssl_request if prewarm is not None else None

    def _adopt_pooled(self, pooled: PooledUpstream) -> None:
        """Take over a parked upstream: authenticated for an earlier client, then reset by the pool."""
        self._hold_pooled(pooled)
        self.stats.connect_seconds = 0.0
        self.stats.start_phase()
        self._run_machine(lambda: self.machine.adopt_pooled_upstream(pooled.greeting_payload, pooled.ssl_request,
                                                                     pooled.greeting))

    def _hold_pooled(self, pooled: PooledUpstream) -> None:
        """Make a parked connection this session's upstream leg (the client's login on it comes next)."""
        self._pooled = pooled
        self._opened_with = pooled.ssl_request
        self._uses = pooled.uses + 1
        self.upstream = pooled.transport
        pooled.transport.set_protocol(self._upstream_protocol)
        self.stats.reused = True
        upstream.note_tls(self.stats, pooled.transport, handshake=False)

    def _replace_upstream(self) -> None:
        """The prewarmed or pooled upstream did not fit this client: put it away, and go on with a parked
        connection that fits, or a fresh one."""
        pool = self.runtime.upstream_pool
        if self._pooled is not None and pool is not None:
            if self._pooled_gone:
                pool.count(PoolEvent.CLOSED_BY_SERVER)
                self._pooled.close()
            else:
                pool.count(PoolEvent.MISMATCH)
                pool.give_back(self._pooled)  # unused: still reset, still clean
            self._pooled = self._opened_with = None
            self._pooled_gone = False
            self._uses = 1
            self.stats.reused = False
        else:
            if self.runtime.prewarm is not None:
                self.runtime.prewarm.count_mismatch()
            if self.upstream is not None:
                self.upstream.set_protocol(asyncio.Protocol())
                self.upstream.abort()
        self.upstream = None
        self._upstream_protocol = upstream.UpstreamSide(self)
        fitting = pool.take_matching(self.machine.ssl_request) if pool is not None else None
        if fitting is not None:
            self._hold_pooled(fitting)
            self._run_machine(lambda: self.machine.use_pooled_replacement(fitting.greeting_payload, fitting.greeting))
            return
        self._spawn(self._connect_replacement())

    async def _connect_replacement(self) -> None:
        try:
            await self._connect_upstream()
        except TlsProxyError as error:
            self.fail(error)

    def upstream_connected(self, transport: asyncio.Transport) -> None:
        self.upstream = transport

    async def _start_tls(self) -> None:
        upstream_tls = self.runtime.upstream_tls
        if self._closed or self.upstream is None:
            return
        assert upstream_tls is not None
        started = time.monotonic()
        try:
            transport = await upstream.start_tls(self.upstream, self._upstream_protocol, upstream_tls,
                                                 self.route.handshake_timeout)
        except TlsProxyError as error:
            self.fail(error)
            return
        if self._closed or transport is None:
            if transport is not None:
                transport.close()
            return
        self.upstream = transport
        self.stats.tls_seconds = time.monotonic() - started
        self.stats.start_phase()
        upstream.note_tls(self.stats, transport)
        self._run_machine(self.machine.tls_established)

    def _pooled_upstream_gone(self) -> bool:
        """The pooled upstream closed before the server answered this client's login: go on with another
        upstream, the client none the wiser (`HandshakeMachine.pooled_upstream_lost`)."""
        if self._pooled is None or self._pooled_gone or self._closed:
            return False
        effects = self.machine.pooled_upstream_lost()
        if not effects and self.machine.state is not State.CLIENT_RESPONSE:
            return False
        self._pooled_gone = True
        if self.upstream is not None:
            self.upstream.set_protocol(asyncio.Protocol())  # its late callbacks are not ours
            self.upstream.abort()
        self.upstream = None
        self._run_machine(lambda: effects)
        return True

    def _park(self, why: str) -> bool:
        """The client left: hand the upstream to the pool if it may be (nothing in flight, the pool not
        full) and end the session; False leaves everything as it was."""
        pool, leg = self.runtime.upstream_pool, self.upstream
        if pool is None or leg is None or self._closed or self._server_eof or self._park_tried:
            return False
        self._park_tried = True  # once: after a refusal COM_QUIT goes up, and the connection is over
        if not self.machine.parkable:
            pool.count(PoolEvent.IN_FLIGHT)
            log.debug("conn=%d upstream not parked: %s", self.conn_id, self.machine.not_parkable_reason)
            return False
        if not pool.park(leg, self.machine.greeting_payload, self._opened_with or self.machine.ssl_request,
                         uses=self._uses, greeting=self.machine.greeting):
            return False
        self.upstream = None  # the pool's now
        self.stats.parked = True
        self.close(f"{why}; upstream parked", closed_by="client")
        return True

