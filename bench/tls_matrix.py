"""The TLS matrix (FULL runs; any RunSize works, for smoke tests): how TLS version, cipher, server key,
session resumption and the CA file change the handshake, bulk transfer and connect cost.

Not the full cartesian product. Baseline: TLSv1.3, AES-256-GCM, RSA-2048, resumption off, a CA file of
one certificate. Covered:

- handshake (in-process, bench.handshake): for every server key (RSA-2048, RSA-4096, ECDSA P-256) the
  TLS 1.2/1.3 x resumption off/on grid at AES-256-GCM; on RSA-2048 also every cipher for TLS 1.2 and
  1.3 (full handshakes) and the baseline with a context loaded from the CA bundle;
- bulk MB/s through proxy_tls_tcp (bench.workloads.bulk, 1 MiB rows, a small volume) with the route
  pinned to a version and cipher (tls_version / ssl_cipher / tls_ciphersuites): every version x
  cipher on RSA-2048, the baseline on RSA-4096 and ECDSA P-256. The negotiated values are read back
  from the server (SHOW SESSION STATUS through the route, PyMySQL) and recorded. Resumption has no
  bulk point: tlsproxy has no setting for it and never offers a session (every upstream connection
  is a full handshake), and resumption cannot change the cost of bytes after the handshake;
- the CA file: a bundle of the env CA + 150 generated CA certificates vs the 1-certificate file:
  time to build a client context from each (what a client library that loads the file per
  connection pays on every connect), sysbench connect_select1 connect/s directly with client TLS
  (sysbench's libmariadb reads cacert.pem from its working directory: the file is swapped) and
  through proxy_tls_tcp with ssl_ca = the bundle (the proxy loads it once, at start).

Repetitions: the outer loop is the repetition; inside it every server key in turn (order rotated),
with its handshake variants interleaved and its bulk points; then the CA-file points. Ratios are
within the run: handshake ratios of medians; bulk and connect ratios paired by repetition.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import handshake
from bench.env import BENCH_DATABASE, BENCH_PASSWORD, BENCH_USER, BenchEnv
from bench.model import SCENARIO_BY_NAME, RunSize, Sample, median
from bench.sysbench import run_sysbench
from bench.workloads import MIB, bulk, measure
from tlsproxy.demo import pki
from tlsproxy.config import SslMode, TlsSettings
from tlsproxy.tls import build_client_context

KEYS: tuple[pki.KeyType, ...] = ("rsa2048", "rsa4096", "ec256")
KEY_LABELS = {"rsa2048": "RSA-2048", "rsa4096": "RSA-4096", "ec256": "ECDSA P-256"}
VERSIONS = ("TLSv1.2", "TLSv1.3")
CIPHERS = ("AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305")
BASELINE = {"tls_version": "TLSv1.3", "cipher": "AES-256-GCM", "key_type": "rsa2048", "resumption": False,
            "ca": "1-cert"}
BUNDLE_EXTRA_CAS = 150
BULK_ROW_BYTES = MIB
PROXY_SCENARIO = SCENARIO_BY_NAME["proxy_tls_tcp"]
CLIENT_TLS_SCENARIO = SCENARIO_BY_NAME["client_tls"]


def _hs_name(key: str, version: str, cipher: str, resumed: bool, ca: str = "1-cert") -> str:
    return f"{key} {version} {cipher} {'resumed' if resumed else 'full'}" + ("" if ca == "1-cert" else f" ca={ca}")


def _bulk_name(key: str, version: str, cipher: str) -> str:
    return f"{key} {version} {cipher}"


HS_BASELINE = _hs_name("rsa2048", "TLSv1.3", "AES-256-GCM", False)
BULK_BASELINE = _bulk_name("rsa2048", "TLSv1.3", "AES-256-GCM")


def route_settings(version: str, cipher: str, key_type: str, ca_file: Path | None = None) -> str:
    """extra_route_settings for env.start_proxy: one TLS version, one cipher (and another CA file).

    env.start_proxy writes its own `ssl_ca:` first; a later duplicate key wins in the YAML loader."""
    lines = [f"tls_version: {version}"]
    lines += [f"{key}: {value}" for key, value in handshake.cipher_settings(version, cipher, key_type).items()]
    if ca_file is not None:
        lines.append(f"ssl_ca: {ca_file}")
    return "\n".join(lines)


def write_bundle(env: BenchEnv, extra: int = BUNDLE_EXTRA_CAS) -> tuple[Path, int]:
    """The env CA among `extra` generated CA certificates (cheap EC keys), like a cloud's global bundle."""
    assert env.ca is not None
    pems = [pki.CertificateAuthority.create(f"bench bundle filler CA {i:03d}", key_type="ec256").cert_pem
            for i in range(extra)]
    pems.insert(extra // 2, env.ca.cert_pem)
    path = env.workdir / f"ca-bundle-{extra + 1}.pem"
    path.write_bytes(b"".join(pem if pem.endswith(b"\n") else pem + b"\n" for pem in pems))
    return path, extra + 1


def negotiated_through_proxy(env: BenchEnv) -> dict[str, str]:
    """The upstream session's TLS version and cipher as the server reports them, asked through the route."""
    import pymysql

    args = env.endpoint(PROXY_SCENARIO).mysql_args()
    connection = pymysql.connect(user=BENCH_USER, password=BENCH_PASSWORD, database=BENCH_DATABASE,
                                 connect_timeout=10, **args)  # type: ignore[arg-type]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')")
            return {name: value for name, value in cursor.fetchall()}
    finally:
        connection.close()


def _stats(values: list[float]) -> dict[str, float]:
    values = [value for value in values if not math.isnan(value)]
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": median(values), "min": min(values), "max": max(values), "n": len(values)}


@dataclasses.dataclass
class _Point:
    """One bulk or connect configuration, its samples by repetition."""

    name: str
    labels: dict[str, Any]
    samples: dict[int, Sample] = dataclasses.field(default_factory=dict)
    negotiated: list[dict[str, str]] = dataclasses.field(default_factory=list)
    expected: dict[str, str] | None = None

    def metric(self, repetition: int, metric: str) -> float:
        sample = self.samples.get(repetition)
        return sample.metrics.get(metric, float("nan")) if sample else float("nan")

    def summary(self, metrics: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, **self.labels}
        for label, metric in metrics.items():
            out[label] = _stats([sample.metrics.get(metric, float("nan")) for sample in self.samples.values()])
        if self.negotiated:
            out["negotiated"] = self.negotiated
            if self.expected is not None:
                out["negotiated_as_expected"] = all(
                    all(seen.get(key) == value for key, value in self.expected.items()) for seen in self.negotiated)
        out["samples"] = [sample.to_json() for sample in self.samples.values()]
        return out


def _bulk_sample(env: BenchEnv, size: RunSize, repetition: int) -> Sample:
    """bench.workloads.bulk through proxy_tls_tcp, plus proxy and server CPU per MiB read at nanosecond
    resolution (schedstat; the sample's cpu_s are clock ticks, coarse for a sample of a few tenths of a second)."""
    pids = env.pids(PROXY_SCENARIO)
    before = {role: handshake.process_cpu_s(pid) for role, pid in pids.items()}
    sample = bulk(env, PROXY_SCENARIO, BULK_ROW_BYTES, size, repetition)
    mib = sample.units.get("mib") or 0.0
    for role, pid in pids.items():
        if mib:
            sample.metrics[f"{role}_cpu_ms_per_mib"] = (handshake.process_cpu_s(pid) - before[role]) * 1e3 / mib
    return sample


def _paired_ratios(points: list[_Point], baseline: str, metrics: list[str],
                   repetitions: int) -> dict[str, dict[str, dict[str, float]]]:
    by_name = {point.name: point for point in points}
    base = by_name.get(baseline)
    out: dict[str, dict[str, dict[str, float]]] = {}
    if base is None:
        return out
    for point in points:
        if point.name == baseline:
            continue
        out[f"{point.name} / {baseline}"] = {
            metric: _stats([point.metric(r, metric) / base.metric(r, metric) for r in range(repetitions)
                            if base.metric(r, metric)])
            for metric in metrics
        }
    return out


def _connect_sample(env: BenchEnv, scenario_name: str, variant: str, seconds: float, repetition: int) -> Sample:
    scenario = SCENARIO_BY_NAME[scenario_name]
    result, cpu = measure(env, scenario, lambda: run_sysbench(
        "connect_select1", env.endpoint(scenario), client_tls=scenario.client_tls, threads=1, seconds=seconds,
        workdir=env.workdir))
    return Sample(
        workload="connect", variant=variant, scenario=scenario.name, repetition=repetition,
        duration_s=result.seconds,
        metrics={"conn_per_s": result.events / result.seconds, "p50_ms": result.percentile(0.50),
                 "p99_ms": result.percentile(0.99),
                 "client_cpu_us_per_conn": cpu.get("client", 0.0) * 1e6 / max(1, result.events)},
        cpu_s=cpu, units={"connections": result.events, "queries": result.events},
    )


def _context_build_ms(ca_file: Path) -> float:
    settings = TlsSettings(mode=SslMode.VERIFY_IDENTITY, ca_file=ca_file, tls_versions=("TLSv1.2", "TLSv1.3"))
    started = time.perf_counter()
    build_client_context(settings)
    return (time.perf_counter() - started) * 1e3


def _handshake_variants(env: BenchEnv, key: pki.KeyType, bundle: Path) -> list[handshake.Variant]:
    variants: list[handshake.Variant] = []

    def add(version: str, cipher: str, resumed: bool, ca: str = "1-cert", ca_file: Path | None = None) -> None:
        context = handshake.client_context(ca_file or env.ca_path, version, cipher=cipher, key_type=key)
        variants.append(handshake.Variant(
            _hs_name(key, version, cipher, resumed, ca), context, resumed,
            labels={"key_type": key, "tls_version": version, "cipher": cipher, "ca": ca},
            expected_version=version, expected_cipher=handshake.expected_cipher_name(version, cipher, key)))

    for version in VERSIONS:
        for resumed in (False, True):
            add(version, BASELINE["cipher"], resumed)
    if key == BASELINE["key_type"]:
        for version in VERSIONS:
            for cipher in CIPHERS:
                if cipher != BASELINE["cipher"]:
                    add(version, cipher, False)
        add(BASELINE["tls_version"], BASELINE["cipher"], False, ca="bundle", ca_file=bundle)
    return variants


def _bulk_configs(key: pki.KeyType) -> list[tuple[str, str]]:
    if key == BASELINE["key_type"]:
        return [(version, cipher) for version in VERSIONS for cipher in CIPHERS]
    return [(BASELINE["tls_version"], BASELINE["cipher"])]


def run(env: BenchEnv, size: RunSize, progress: Callable[[str], None]) -> dict[str, Any]:
    assert env.server is not None
    started = time.monotonic()
    original_key = env.key_type
    repetitions = max(1, size.repetitions)
    handshakes_total = max(2, size.handshakes // 2)
    per_rep = max(1, -(-handshakes_total // repetitions))
    bulk_size = dataclasses.replace(size, bulk_mib=max(2, size.bulk_mib // 2))
    connect_seconds = max(1.0, min(size.seconds, 3.0))
    context_builds = max(3, min(30, size.handshakes // 10))

    bundle, bundle_count = write_bundle(env)
    progress(f"tls matrix: {repetitions} repetition(s); CA bundle of {bundle_count} certificates")
    hs_variants: dict[str, list[handshake.Variant]] = {}
    bulk_points: dict[str, _Point] = {}
    connect_points = {name: _Point(name, labels) for name, labels in (
        ("client_tls ca=1-cert", {"scenario": "client_tls", "ca": "1-cert"}),
        ("client_tls ca=bundle", {"scenario": "client_tls", "ca": "bundle"}),
        ("proxy_tls_tcp ca=1-cert", {"scenario": "proxy_tls_tcp", "ca": "1-cert"}),
        ("proxy_tls_tcp ca=bundle", {"scenario": "proxy_tls_tcp", "ca": "bundle"}),
    )}
    context_ms: dict[str, list[float]] = {"1-cert": [], "bundle": []}
    cacert = env.workdir / "cacert.pem"
    cacert_original = cacert.read_bytes()
    try:
        for repetition in range(repetitions):
            keys = KEYS[repetition % len(KEYS):] + KEYS[:repetition % len(KEYS)]
            for key in keys:
                env.use_server_key(key)
                assert env.server.pid is not None
                # (a) handshakes, this key's variants interleaved
                variants = hs_variants.get(key) or hs_variants.setdefault(key, _handshake_variants(env, key, bundle))
                for variant in variants:
                    variant.forget_session()
                handshake.measure_interleaved(variants, "127.0.0.1", env.server.port, per_rep, env.server.pid)
                # (b) bulk through the proxy, pinned to a version and cipher
                for version, cipher in _bulk_configs(key):
                    name = _bulk_name(key, version, cipher)
                    point = bulk_points.setdefault(name, _Point(
                        name, {"key_type": key, "tls_version": version, "cipher": cipher},
                        expected={"Ssl_version": version,
                                  "Ssl_cipher": handshake.expected_cipher_name(version, cipher, key)}))
                    env.start_proxy(extra_route_settings=route_settings(version, cipher, key))
                    point.negotiated.append(negotiated_through_proxy(env))
                    sample = _bulk_sample(env, bulk_size, repetition)
                    sample.variant = name
                    point.samples[repetition] = sample
                    progress(f"tls matrix rep {repetition + 1} bulk {name}: {sample.metrics['mb_per_s']:.0f} MB/s "
                             f"({point.negotiated[-1].get('Ssl_cipher')})")
            # (c) the CA file, at the baseline key
            env.use_server_key(BASELINE["key_type"])  # type: ignore[arg-type]
            for _ in range(context_builds):
                for label, path in (("1-cert", env.ca_path), ("bundle", bundle))[::1 if repetition % 2 == 0 else -1]:
                    context_ms[label].append(_context_build_ms(path))
            order = ("1-cert", "bundle") if repetition % 2 == 0 else ("bundle", "1-cert")
            for ca in order:
                cacert.write_bytes(bundle.read_bytes() if ca == "bundle" else cacert_original)
                sample = _connect_sample(env, "client_tls", f"ca={ca}", connect_seconds, repetition)
                connect_points[f"client_tls ca={ca}"].samples[repetition] = sample
                progress(f"tls matrix rep {repetition + 1} connect client_tls ca={ca}: "
                         f"{sample.metrics['conn_per_s']:.0f} conn/s")
            cacert.write_bytes(cacert_original)
            for ca in order:
                env.start_proxy(extra_route_settings=f"ssl_ca: {bundle}" if ca == "bundle" else "")
                sample = _connect_sample(env, "proxy_tls_tcp", f"ca={ca}", connect_seconds, repetition)
                connect_points[f"proxy_tls_tcp ca={ca}"].samples[repetition] = sample
                progress(f"tls matrix rep {repetition + 1} connect proxy_tls_tcp ca={ca}: "
                         f"{sample.metrics['conn_per_s']:.0f} conn/s")
    finally:
        cacert.write_bytes(cacert_original)
        env.use_server_key(original_key)
        env.start_proxy()

    hs_summaries = [variant.summary() for variants in hs_variants.values() for variant in variants]
    bulk_list = list(bulk_points.values())
    connect_list = list(connect_points.values())
    bulk_metrics = {"mb_per_s": "mb_per_s", "proxy_cpu_ms_per_mib": "proxy_cpu_ms_per_mib",
                    "server_cpu_ms_per_mib": "server_cpu_ms_per_mib"}
    connect_metrics = {"conn_per_s": "conn_per_s", "p50_ms": "p50_ms",
                       "client_cpu_us_per_conn": "client_cpu_us_per_conn"}
    connect_ratios = {}
    for scenario in ("client_tls", "proxy_tls_tcp"):
        connect_ratios.update(_paired_ratios(
            [connect_points[f"{scenario} ca=1-cert"], connect_points[f"{scenario} ca=bundle"]],
            f"{scenario} ca=1-cert", ["conn_per_s", "client_cpu_us_per_conn"], repetitions))
    one_cert, bundled = median(context_ms["1-cert"]), median(context_ms["bundle"])
    hs_pairs = [(_hs_name(k, v, BASELINE["cipher"], True), _hs_name(k, v, BASELINE["cipher"], False))
                for k in KEYS for v in VERSIONS]
    hs_pairs += [(_hs_name(k, "TLSv1.2", BASELINE["cipher"], False), _hs_name(k, "TLSv1.3", BASELINE["cipher"], False))
                 for k in KEYS]
    result = {
        "design": {
            "baseline": BASELINE,
            "axes": {"tls_version": list(VERSIONS), "cipher": list(CIPHERS),
                     "key_type": [KEY_LABELS[k] for k in KEYS], "resumption": [False, True],
                     "ca": ["1-cert", f"bundle of {bundle_count}"]},
            "handshake": "every key x (TLS1.2, TLS1.3) x (full, resumed) at AES-256-GCM; on RSA-2048 also every "
                         "cipher x version (full) and the baseline with the bundle-loaded context",
            "bulk": "every version x cipher on RSA-2048; the baseline on RSA-4096 and ECDSA P-256; "
                    "1 MiB rows, proxy_tls_tcp",
            "bulk_resumption": "not applicable: tlsproxy never resumes upstream TLS sessions (no setting; every "
                               "upstream connection is a full handshake)",
            "ca_bundle": "context build time; sysbench connect_select1 through client_tls (cacert.pem swapped) "
                         "and proxy_tls_tcp (ssl_ca = bundle)",
            "repetitions": repetitions, "handshakes_per_variant": per_rep * repetitions,
            "bulk_mib_per_sample": bulk_size.bulk_mib, "connect_seconds_per_sample": connect_seconds,
        },
        "handshake": {
            "variants": hs_summaries,
            "ratios": handshake.ratios(hs_summaries, HS_BASELINE, pairs=hs_pairs),
        },
        "bulk": {
            "points": [point.summary(bulk_metrics) for point in bulk_list],
            "ratios": _paired_ratios(bulk_list, BULK_BASELINE, list(bulk_metrics), repetitions),
        },
        "ca_bundle": {
            "certificates": bundle_count, "bytes": bundle.stat().st_size,
            "context_build_ms": {"1-cert": _stats(context_ms["1-cert"]), "bundle": _stats(context_ms["bundle"]),
                                 "ratio": bundled / one_cert if one_cert else float("nan")},
            "connect": [point.summary(connect_metrics) for point in connect_list],
            "ratios": connect_ratios,
        },
        "restored": {"key_type": env.key_type, "proxy": "default routes"},
        "seconds": time.monotonic() - started,
    }
    progress(f"tls matrix: done in {result['seconds']:.0f}s")
    return result
