"""Upstream TLS handshake cost, measured in-process the way the proxy does it: TCP connect, read the
MySQL greeting, send an SSLRequest, then the TLS handshake with one reused `ssl.SSLContext` built by
`tlsproxy.tls.build_client_context` (the env's CA, VERIFY_IDENTITY, server name "localhost").

Only `do_handshake()` is timed: wall latency (`time.perf_counter`) and the client's CPU
(`time.thread_time`, blocking socket, so waiting for the server costs no CPU). The server's CPU is
read around blocks of handshakes from /proc/PID/task/*/schedstat (nanoseconds, summed over the
server's threads; MariaDB's thread cache keeps the connection thread alive) and reported per
connection: it covers the server's whole connection (accept, greeting, TLS, the aborted login).

Variants: TLS 1.2 and 1.3, each full (no session) and resumed (`session=` from the previous
connection of the same variant). Repetitions are interleaved: blocks of a few handshakes per variant,
variant order rotated every round. The end-to-end connect cost through each scenario is the sysbench
`connect` workload (bench.workloads), not repeated here.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.env import BenchEnv
from bench.model import RunSize, median
from bench.procs import cpu_seconds, process_tree
from tlsproxy.check import client_response_for_check
from tlsproxy.config import SslMode, TlsSettings
from tlsproxy.mysql.codec import encode_frame, parse_header
from tlsproxy.mysql.constants import Capability
from tlsproxy.mysql.messages import parse_initial_handshake, ssl_request_from_response
from tlsproxy.tls import build_client_context

SERVER_NAME = "localhost"
BLOCK = 5  # handshakes per variant per round (interleaving granularity)
TICKET_WAIT_S = 0.5  # how long to wait for a TLS 1.3 session ticket after the handshake

# OpenSSL names per (version, cipher family); TLS 1.2 names depend on the server key's type.
TLS13_SUITES = {"AES-128-GCM": "TLS_AES_128_GCM_SHA256", "AES-256-GCM": "TLS_AES_256_GCM_SHA384",
                "CHACHA20-POLY1305": "TLS_CHACHA20_POLY1305_SHA256"}
TLS12_CIPHERS = {"AES-128-GCM": "ECDHE-{sig}-AES128-GCM-SHA256", "AES-256-GCM": "ECDHE-{sig}-AES256-GCM-SHA384",
                 "CHACHA20-POLY1305": "ECDHE-{sig}-CHACHA20-POLY1305"}


def cipher_settings(tls_version: str, cipher: str | None, key_type: str) -> dict[str, str]:
    """Route keys / TlsSettings fields that pin `cipher` ("AES-256-GCM", ...) for `tls_version`.

    Returns {} for "no pinning". Keys: "ssl_cipher" (TLS 1.2) or "tls_ciphersuites" (TLS 1.3)."""
    if cipher is None:
        return {}
    if tls_version == "TLSv1.3":
        return {"tls_ciphersuites": TLS13_SUITES[cipher]}
    sig = "ECDSA" if key_type.startswith("ec") else "RSA"
    return {"ssl_cipher": TLS12_CIPHERS[cipher].format(sig=sig)}


def expected_cipher_name(tls_version: str, cipher: str, key_type: str) -> str:
    """The name `SSLSocket.cipher()[0]` and MariaDB's Ssl_cipher report for the pinned cipher."""
    settings = cipher_settings(tls_version, cipher, key_type)
    return settings.get("tls_ciphersuites") or settings["ssl_cipher"]


def client_context(ca_file: Path, tls_version: str, *, cipher: str | None = None,
                   key_type: str = "rsa2048") -> ssl.SSLContext:
    """The proxy's own context builder, pinned to one TLS version (and optionally one cipher)."""
    pinned = cipher_settings(tls_version, cipher, key_type)
    settings = TlsSettings(mode=SslMode.VERIFY_IDENTITY, ca_file=ca_file, tls_versions=(tls_version,),
                           cipher=pinned.get("ssl_cipher"), ciphersuites=pinned.get("tls_ciphersuites"))
    return build_client_context(settings)


@dataclass
class Handshake:
    latency_s: float
    cpu_s: float
    version: str | None
    cipher: str | None
    reused: bool
    session: ssl.SSLSession | None


def _recv_exact(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("server closed the connection before the TLS handshake")
        data += chunk
    return bytes(data)


_SSL_REQUEST_PREFIX = client_response_for_check()


def open_for_tls(host: str, port: int, timeout: float = 10.0) -> socket.socket:
    """TCP connect, read the greeting, send the SSLRequest: the socket is ready for the TLS ClientHello."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        length, sequence_id = parse_header(_recv_exact(sock, 4))
        payload = _recv_exact(sock, length)
        if payload[:1] == b"\xff":
            raise ConnectionError(f"server refused the connection: {payload[3:].decode(errors='replace')}")
        greeting = parse_initial_handshake(payload)
        if not greeting.capability_flags & Capability.SSL:
            raise ConnectionError("server greeting does not offer TLS")
        sock.sendall(encode_frame(sequence_id + 1, ssl_request_from_response(_SSL_REQUEST_PREFIX, 0)))
    except BaseException:
        sock.close()
        raise
    return sock


def _wait_for_ticket(tls_sock: ssl.SSLSocket, deadline: float) -> None:
    """TLS 1.3 sends session tickets after the handshake; the server sends no MySQL packet until the
    client's login, so read non-blocking until OpenSSL has processed a ticket (or time is up)."""
    tls_sock.setblocking(False)
    try:
        while time.monotonic() < deadline:
            session = tls_sock.session
            if session is not None and session.has_ticket:
                return
            select.select([tls_sock], [], [], max(0.0, deadline - time.monotonic()))
            try:
                if not tls_sock.recv(1):
                    return
            except (ssl.SSLWantReadError, BlockingIOError):
                continue
    finally:
        tls_sock.setblocking(True)


def handshake_once(host: str, port: int, context: ssl.SSLContext, *, session: ssl.SSLSession | None = None,
                   want_session: bool = False) -> Handshake:
    """One upstream connection up to the end of the TLS handshake; only do_handshake() is measured."""
    sock = open_for_tls(host, port)
    try:
        tls_sock = context.wrap_socket(sock, server_hostname=SERVER_NAME, do_handshake_on_connect=False,
                                       session=session)
    except BaseException:
        sock.close()
        raise
    with tls_sock:
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        tls_sock.do_handshake()
        cpu1, wall1 = time.thread_time(), time.perf_counter()
        cipher = tls_sock.cipher()
        version = tls_sock.version()
        new_session = None
        if want_session:
            if version == "TLSv1.3":
                _wait_for_ticket(tls_sock, time.monotonic() + TICKET_WAIT_S)
            new_session = tls_sock.session
        return Handshake(wall1 - wall0, cpu1 - cpu0, version, cipher[0] if cipher else None,
                         tls_sock.session_reused, new_session)


def process_cpu_s(pid: int) -> float:
    """CPU seconds of `pid`'s live threads (and its children's) at nanosecond resolution from
    /proc/PID/task/*/schedstat; /proc/PID/stat (clock ticks, bench.procs) when the kernel has no schedstat.
    Threads that have exited are not counted (MariaDB's thread cache and uvloop's pool keep theirs)."""
    if not Path(f"/proc/{pid}/schedstat").exists():
        return cpu_seconds(pid)
    total_ns = 0
    for member in process_tree(pid):
        try:
            tasks = list(Path(f"/proc/{member}/task").iterdir())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for task in tasks:
            try:
                total_ns += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError, IndexError):
                continue  # the thread ended in between
    return total_ns / 1e9


# ---- variants and interleaved measurement ----------------------------------------------------------


@dataclass
class Variant:
    """One kind of handshake: a context (version, cipher, CA file) and full or resumed."""

    name: str
    context: ssl.SSLContext
    resumed: bool
    labels: dict[str, Any] = field(default_factory=dict)  # tls_version, cipher, ... for the report
    expected_version: str | None = None
    expected_cipher: str | None = None
    _session: ssl.SSLSession | None = field(default=None, repr=False)
    latencies_s: list[float] = field(default_factory=list)
    cpus_s: list[float] = field(default_factory=list)
    reused: int = 0
    _server_blocks: list[tuple[float, int]] = field(default_factory=list, repr=False)  # (CPU s, handshakes)
    versions: set[str] = field(default_factory=set)
    ciphers: set[str] = field(default_factory=set)

    def forget_session(self) -> None:
        """After a server restart the old ticket is worthless (new ticket keys): seed again."""
        self._session = None

    def seed(self, host: str, port: int) -> None:
        """Resumed variants start from one full handshake whose session is kept (not measured)."""
        if self.resumed and self._session is None:
            self._session = handshake_once(host, port, self.context, want_session=True).session

    def measure(self, host: str, port: int) -> None:
        result = handshake_once(host, port, self.context, session=self._session if self.resumed else None,
                                want_session=self.resumed)
        self.latencies_s.append(result.latency_s)
        self.cpus_s.append(result.cpu_s)
        self.reused += result.reused
        if result.version:
            self.versions.add(result.version)
        if result.cipher:
            self.ciphers.add(result.cipher)
        if self.resumed and result.session is not None:
            self._session = result.session  # a fresh ticket for the next connection

    def _server_cpu_us_per_block(self) -> list[float]:
        return [seconds * 1e6 / count for seconds, count in self._server_blocks if count]

    def summary(self) -> dict[str, Any]:
        count = len(self.latencies_s)
        ms = [value * 1e3 for value in self.latencies_s]
        us = [value * 1e6 for value in self.cpus_s]
        checks = []
        if self.expected_version is not None:
            checks.append(self.versions == {self.expected_version})
        if self.expected_cipher is not None:
            checks.append(self.ciphers == {self.expected_cipher})
        return {
            "name": self.name, **self.labels, "resumption": self.resumed, "n": count,
            "latency_ms": _stats(ms), "cpu_us": _stats(us),
            "server_cpu_us_per_connection": _stats(self._server_cpu_us_per_block()),
            "resumed_fraction": self.reused / count if count else float("nan"),
            "negotiated_versions": sorted(self.versions), "negotiated_ciphers": sorted(self.ciphers),
            "negotiated_as_expected": all(checks) if checks else None,
        }


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": median(values), "min": min(values), "max": max(values)}


def measure_interleaved(variants: list[Variant], host: str, port: int, count: int, server_pid: int | None,
                        block: int = BLOCK) -> None:
    """`count` handshakes per variant, in rounds of `block` per variant, variant order rotated per round."""
    for variant in variants:
        variant.seed(host, port)
    rounds = max(1, -(-count // block))
    done = {id(variant): 0 for variant in variants}
    for round_index in range(rounds):
        shift = round_index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            todo = min(block, count - done[id(variant)])
            if todo <= 0:
                continue
            server_before = process_cpu_s(server_pid) if server_pid else 0.0
            for _ in range(todo):
                variant.measure(host, port)
            if server_pid:
                variant._server_blocks.append((process_cpu_s(server_pid) - server_before, todo))
            done[id(variant)] += todo


def ratios(summaries: list[dict[str, Any]], baseline: str, pairs: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """Within-run ratios of medians: each variant vs `baseline`, and explicit (numerator, denominator) pairs."""
    by_name = {summary["name"]: summary for summary in summaries}
    out: dict[str, Any] = {}
    wanted = [(name, baseline) for name in by_name if name != baseline]
    wanted += [pair for pair in pairs if pair not in wanted]
    for numerator, denominator in wanted:
        a, b = by_name.get(numerator), by_name.get(denominator)
        if a is None or b is None:
            continue
        out[f"{numerator} / {denominator}"] = {
            "latency": _ratio(a["latency_ms"]["median"], b["latency_ms"]["median"]),
            "cpu": _ratio(a["cpu_us"]["median"], b["cpu_us"]["median"]),
            "server_cpu": _ratio(a["server_cpu_us_per_connection"]["median"],
                                 b["server_cpu_us_per_connection"]["median"]),
        }
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def standard_variants(ca_file: Path, key_type: str) -> list[Variant]:
    """TLS 1.2 and 1.3, full and resumed, OpenSSL's default ciphers."""
    variants = []
    for version in ("TLSv1.2", "TLSv1.3"):
        context = client_context(ca_file, version, key_type=key_type)
        for resumed in (False, True):
            name = f"{version} {'resumed' if resumed else 'full'}"
            variants.append(Variant(name, context, resumed, labels={"tls_version": version, "key_type": key_type},
                                    expected_version=version))
    return variants


def run(env: BenchEnv, size: RunSize, progress: Callable[[str], None]) -> dict[str, Any]:
    assert env.server is not None
    started = time.monotonic()
    host, port = "127.0.0.1", env.server.port
    variants = standard_variants(env.ca_path, env.key_type)
    progress(f"handshake: {len(variants)} variants x {size.handshakes} handshakes, interleaved")
    measure_interleaved(variants, host, port, size.handshakes, env.server.pid)
    summaries = [variant.summary() for variant in variants]
    for summary in summaries:
        progress(f"handshake {summary['name']}: {summary['latency_ms']['median']:.2f} ms, "
                 f"client CPU {summary['cpu_us']['median']:.0f} us, server CPU/conn "
                 f"{summary['server_cpu_us_per_connection']['median']:.0f} us, resumed {summary['resumed_fraction']:.0%}")
    return {
        "what": "upstream TLS handshake only (do_handshake), in-process, blocking socket, against MariaDB direct",
        "server": f"{host}:{port}", "server_name": SERVER_NAME, "key_type": env.key_type,
        "openssl": ssl.OPENSSL_VERSION, "handshakes_per_variant": size.handshakes, "block": BLOCK,
        "variants": summaries,
        "ratios": ratios(summaries, "TLSv1.3 full",
                         pairs=[("TLSv1.2 resumed", "TLSv1.2 full"), ("TLSv1.3 resumed", "TLSv1.3 full")]),
        "seconds": time.monotonic() - started,
    }
