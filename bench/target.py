"""`python -m bench run --target HOST:PORT`: the benchmark against the user's own MySQL or MariaDB
(a managed database over a real network), not the embedded world of bench/env.py.

TargetEnv is a BenchEnv without a server or socat: it starts only a local tlsproxy (the real CLI)
whose routes go to the target with the connection flags tlsproxy itself takes, and hands the same
scenarios and workloads (bench/workloads.py) the target's endpoints and account. Before any load,
the target is checked as `tlsproxy check` checks a route (tlsproxy.check.check_route, its messages),
and the network round trip is measured. The password comes from TLSPROXY_BENCH_PASSWORD or a prompt;
it reaches sysbench's command line only, never results.json, the report or a log.
"""

from __future__ import annotations

import getpass
import io
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import uvloop

import tlsproxy
from bench import model
from bench.env import POOL_ROUTE, PREWARM_ROUTE, BenchEnv, Endpoint, free_ports, raise_open_file_limit
from bench.model import RunSize, Sample, Scenario, TargetInfo
from bench.sysbench import SysbenchError, prepare_tables, run_sysbench
from bench.workloads import interleaved
from tlsproxy.check import CheckResult, check_route, print_result
from tlsproxy.config import ConfigError, parse_route
from tlsproxy.demo import pki
from tlsproxy.errors import TlsProxyError
from tlsproxy.tls import build_upstream_tls

PASSWORD_VARIABLE = "TLSPROXY_BENCH_PASSWORD"
TARGET_SCENARIOS = ("plaintext", "client_tls", "proxy_tls_tcp", "proxy_tls_unix", PREWARM_ROUTE, POOL_ROUTE)
"""No socat and no DISABLED route against a target: they would send the client's plaintext over the network."""
READ_ONLY_WORKLOADS = ("select1", "connect", "bulk")
NETWORK_PROBES = 20


@dataclass
class TargetSpec:
    """Where the target is and how to reach it: tlsproxy's own connection flags and an account."""

    host: str
    port: int
    user: str
    database: str
    password: str = field(default="", repr=False)
    ssl_ca: Path | None = None
    ssl_capath: Path | None = None
    tls_server_name: str | None = None
    ssl_cert: Path | None = None
    ssl_key: Path | None = None
    tls_version: str | None = None
    allow_plaintext: bool = False
    allow_create: bool = False

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def route_settings(self) -> dict[str, str]:
        """The routes' upstream TLS settings, as tlsproxy's config spells them."""
        settings = {"ssl_ca": self.ssl_ca, "ssl_capath": self.ssl_capath, "tls_server_name": self.tls_server_name,
                    "ssl_cert": self.ssl_cert, "ssl_key": self.ssl_key, "tls_version": self.tls_version}
        return {key: str(Path(value).resolve()) if isinstance(value, Path) else value
                for key, value in settings.items() if value is not None}


def parse_target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"bench run: --target must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def read_password(environ: dict[str, str] | None = None) -> str:
    environ = dict(os.environ) if environ is None else environ
    if PASSWORD_VARIABLE in environ:
        return environ[PASSWORD_VARIABLE]
    if not sys.stdin.isatty():
        raise SystemExit(f"bench run: set {PASSWORD_VARIABLE} or run in a terminal for the password prompt")
    return getpass.getpass("password for the target account: ")


@dataclass
class TargetEnv(BenchEnv):
    """The bench world for an external target: only a local tlsproxy; the server is not ours."""

    target: TargetSpec | None = None
    bulk_source = "cte"  # MySQL 8 has no seq_1_to_N tables

    @classmethod
    def connect(cls, target: TargetSpec, *, event_loop: str = "uvloop", workers: int = 1) -> TargetEnv:
        raise_open_file_limit()
        env = cls(Path(tempfile.mkdtemp(prefix="tlsp-bench-target-")), event_loop=event_loop, workers=workers,
                  target=target)
        try:
            env._stage_client_files()
            env.start_proxy()
        except BaseException:
            env.stop()
            raise
        return env

    def _stage_client_files(self) -> None:
        """sysbench (1.0.20) --mysql-ssl=on reads cacert.pem (and a client certificate) from its working directory."""
        assert self.target is not None
        for source, name in ((self.target.ssl_ca, "cacert.pem"), (self.target.ssl_cert, "client-cert.pem"),
                             (self.target.ssl_key, "client-key.pem")):
            if source is not None:
                shutil.copyfile(source, self.workdir / name)
        if self.target.ssl_cert is None:  # it always loads both files; a server that asks for none never sees it
            pki.CertificateAuthority.create("tlsproxy bench throwaway").issue_client("sysbench").write(
                self.workdir / "client-cert.pem", self.workdir / "client-key.pem")

    def proxy_routes(self) -> dict[str, tuple[str, str]]:
        names = ("proxy_tls_tcp", PREWARM_ROUTE, POOL_ROUTE, "admin")
        self.ports.update(zip(names, free_ports(len(names))))
        self.sockets["proxy_tls_unix"] = self.workdir / "tls.sock"
        return {"proxy_tls_tcp": (f"127.0.0.1:{self.ports['proxy_tls_tcp']}", "VERIFY_IDENTITY"),
                "proxy_tls_unix": (str(self.sockets["proxy_tls_unix"]), "VERIFY_IDENTITY"),
                PREWARM_ROUTE: (f"127.0.0.1:{self.ports[PREWARM_ROUTE]}", "VERIFY_IDENTITY"),
                POOL_ROUTE: (f"127.0.0.1:{self.ports[POOL_ROUTE]}", "VERIFY_IDENTITY")}

    def upstream(self) -> str:
        assert self.target is not None
        return self.target.address

    def upstream_tls_lines(self) -> list[str]:
        assert self.target is not None
        return [f"{key}: {json.dumps(value)}" for key, value in self.target.route_settings().items()]

    def endpoint(self, scenario: Scenario) -> Endpoint:
        target = self.target
        assert target is not None
        account = {"user": target.user, "password": target.password, "database": target.database}
        if scenario.via == "direct":  # "localhost" would make the client library use its Unix socket
            return Endpoint("127.0.0.1" if target.host == "localhost" else target.host, target.port, **account)
        if scenario.local_leg == "unix":
            return Endpoint(socket=self.sockets[scenario.name], **account)
        return Endpoint("127.0.0.1", self.ports[scenario.name], **account)

    def pids(self, scenario: Scenario) -> dict[str, int]:
        """Local processes only: the server's CPU is not visible from here."""
        if "proxy" in scenario.roles and self.proxy_process is not None:
            return {"proxy": self.proxy_process.pid}
        return {}

    def versions(self, server: str = "") -> dict[str, str]:  # type: ignore[override]
        """The local software's versions, and the server's as its greeting gives it."""
        try:
            sysbench = subprocess.run(["sysbench", "--version"], capture_output=True, text=True,
                                      timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            sysbench = "unavailable"
        return {"tlsproxy": tlsproxy.__version__, "python": sys.version.split()[0], "uvloop": uvloop.__version__,
                "openssl": ssl.OPENSSL_VERSION, "server": server, "sysbench": sysbench}


# ---- before any load ---------------------------------------------------------------------------


def check_target(target: TargetSpec) -> CheckResult:
    """`tlsproxy check` of a route to the target; SystemExit with its message when it fails."""
    raw: dict[str, Any] = {"name": "target", "listen": "127.0.0.1:3306", "upstream": target.address,
                           "ssl_mode": "VERIFY_IDENTITY", **target.route_settings()}
    try:
        route = parse_route(raw, "target")
        result = check_route(route, build_upstream_tls(route, key_prefix="target."))
    except TlsProxyError as error:
        raise SystemExit(f"bench run: target {target.address}: {error.message}") from None
    except ConfigError as error:  # a flag tlsproxy refuses: an unreadable CA file, an unknown TLS version
        flag = "--" + error.key.removeprefix("target.").replace("_", "-")
        raise SystemExit(f"bench run: {flag}: {error.problem}") from None
    shown = io.StringIO()
    print_result(result, shown)
    if not result.ok:
        raise SystemExit(f"bench run: target {target.address} failed tlsproxy's check; no load was run\n"
                         + shown.getvalue().rstrip())
    return result


def _stats_us(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def measure_network(env: TargetEnv, not_run: dict[str, str]) -> dict[str, Any]:
    """The round trip to the target: TCP connect time, and a trivial query direct over the client's TLS."""
    target = env.target
    assert target is not None
    connects = []
    for _ in range(NETWORK_PROBES):
        began = time.perf_counter()
        with socket.create_connection((target.host, target.port), timeout=10):
            connects.append((time.perf_counter() - began) * 1e6)
    network: dict[str, Any] = {"what": "TCP connect to the target, and SELECT 1 direct over the client's TLS "
                                       "(sysbench, one connection): medians in µs",
                               "tcp_connect_us": _stats_us(connects)}
    if "client_tls" not in not_run:
        result = run_sysbench("select1", env.endpoint(model.SCENARIO_BY_NAME["client_tls"]), client_tls=True,
                              threads=1, seconds=1, workdir=env.workdir)
        if result.events:
            network["query_us"] = {"median": result.percentile(0.5) * 1000, "mean": result.seconds * 1e6 / result.events,
                                   "n": result.events}
    return network


def env_not_run(env: TargetEnv) -> dict[str, str]:
    assert env.target is not None
    not_run: dict[str, str] = {}
    if env.target.ssl_ca is None:
        not_run["client_tls"] = "needs --ssl-ca (sysbench reads one CA file, not a directory)"
    return not_run


def probe(env: TargetEnv, name: str) -> str | None:
    """Why one connect + SELECT 1 of scenario `name` fails against the target, or None when it works."""
    scenario = model.SCENARIO_BY_NAME[name]
    try:
        run_sysbench("connect_select1", env.endpoint(scenario), client_tls=scenario.client_tls,
                     threads=1, seconds=0, events=1, workdir=env.workdir, timeout=60)
    except SysbenchError as error:
        said = [line.strip() for line in error.output.splitlines() if "error" in line.lower()]
        why = "refused by the server: " + (said[-1] if said else "the login failed")
        if name == "client_tls" and env.target is not None and env.target.ssl_cert is None:
            why += (" (sysbench 1.0.20 always presents a client certificate; without --ssl-cert/--ssl-key it is a "
                    "throwaway one, which a server that asks for client certificates rejects)")
        return why
    return None


# ---- the run -----------------------------------------------------------------------------------


def run_target(target: TargetSpec, size: RunSize, results: model.RunResults, progress: Callable[[str], None], *,
               event_loop: str = "uvloop", workers: int = 1) -> None:
    """Fill `results` (samples, target) from a run against `target`."""
    progress(f"bench {size.name}: checking the target {target.address} as `tlsproxy check` does")
    check = check_target(target)
    progress(f"target: {check.server_version}, {check.tls_version} {check.cipher}; {check.verified}")
    scenario_names = [name for name in TARGET_SCENARIOS if name != "plaintext" or target.allow_plaintext]
    scenarios = [model.SCENARIO_BY_NAME[name] for name in scenario_names]
    workloads = list(READ_ONLY_WORKLOADS) + (["point_select"] if target.allow_create else [])
    results.scenarios = scenarios
    progress("starting tlsproxy locally with routes to the target")
    with TargetEnv.connect(target, event_loop=event_loop, workers=workers) as env:
        not_run = env_not_run(env)
        for name in ("plaintext", "client_tls"):
            if name in scenario_names and name not in not_run:
                refused = probe(env, name)
                if refused:
                    not_run[name] = refused
                    progress(f"{name}: {refused}")
        progress("measuring the round trip to the target")
        network = measure_network(env, not_run)
        query = network.get("query_us", {}).get("median")
        progress(f"network: TCP connect {network['tcp_connect_us']['median']:.0f} µs, SELECT 1 "
                 + (f"{query:.0f} µs" if query is not None else "not measured") + " (medians)")
        results.versions = env.versions(check.server_version)
        results.target = TargetInfo(
            address=target.address, user=target.user, database=target.database,
            tls=target.route_settings(),
            check={"server_version": check.server_version, "tls_version": check.tls_version,
                   "cipher": check.cipher, "verified": check.verified},
            network=network, not_run=not_run, workloads=workloads,
            allow_plaintext=target.allow_plaintext, allow_create=target.allow_create)
        running = [scenario for scenario in scenarios if scenario.name not in not_run]
        results.samples = _load(env, size, running, workloads, progress)


def _load(env: TargetEnv, size: RunSize, scenarios: list[Scenario], workloads: list[str],
          progress: Callable[[str], None]) -> list[Sample]:
    if "point_select" not in workloads:
        return interleaved(env, size, scenarios, progress=progress, workloads=workloads)
    tls = model.SCENARIO_BY_NAME["client_tls"]
    progress(f"--allow-create: creating sysbench's table sbtest1 ({size.table_size} rows) in the target's database")
    try:
        prepare_tables(env.endpoint(tls), table_size=size.table_size, workdir=env.workdir, client_tls=True)
    except SysbenchError as error:
        if "already exists" in error.output:
            raise SystemExit("bench run: the table sbtest1 already exists in the target's database; "
                             "--allow-create only uses a table of its own") from None
        _cleanup(env, size)
        raise
    try:
        return interleaved(env, size, scenarios, progress=progress, workloads=workloads)
    finally:
        progress("dropping sbtest1")
        _cleanup(env, size)


def _cleanup(env: TargetEnv, size: RunSize) -> None:
    prepare_tables(env.endpoint(model.SCENARIO_BY_NAME["client_tls"]), table_size=size.table_size,
                   workdir=env.workdir, client_tls=True, command="cleanup")
