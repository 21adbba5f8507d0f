"""Command line: `tlsproxy [run]`, `tlsproxy check`, `tlsproxy demo`.

Flags follow the MySQL client where one exists and override the config file.
Exit codes: 0 ok, 1 a check or the demo failed, 2 a config error or a start-up failure (an address that
cannot be listened on: config.StartupError), reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from tlsproxy import __version__, certs
from tlsproxy.admin import AdminServer
from tlsproxy.check import run_check
from tlsproxy.config import ConfigError, ProxyConfig, parse_config, validate_security
from tlsproxy.config_file import load_config_file
from tlsproxy.demo.run import run_demo
from tlsproxy.lifecycle import ProxyService, StopRequests, run_event_loop, run_until_stopped
from tlsproxy.logs import setup_logging
from tlsproxy.server import Proxy
from tlsproxy.supervisor import Supervisor

log = logging.getLogger("tlsproxy")

# flag dest -> route key in the config file
ROUTE_FLAGS = {
    "listen": "listen",
    "unix_socket_mode": "unix_socket_mode",
    "upstream": "upstream",
    "ssl_mode": "ssl_mode",
    "ssl_ca": "ssl_ca",
    "ssl_capath": "ssl_capath",
    "ssl_cert": "ssl_cert",
    "ssl_key": "ssl_key",
    "ssl_crl": "ssl_crl",
    "tls_version": "tls_version",
    "ssl_cipher": "ssl_cipher",
    "tls_ciphersuites": "tls_ciphersuites",
    "tls_server_name": "tls_server_name",
    "allow_legacy_tls": "allow_legacy_tls",
    "connect_timeout": "connect_timeout",
    "connect_retry_window": "connect_retry_window",
    "handshake_timeout": "handshake_timeout",
    "idle_timeout": "idle_timeout",
    "max_connections": "max_connections",
    "tls_session_resumption": "tls_session_resumption",
    "tls_session_cache_size": "tls_session_cache_size",
    "prewarm": "prewarm",
    "prewarm_max_age": "prewarm_max_age",
    "upstream_pool": "upstream_pool",
    "upstream_pool_idle_timeout": "upstream_pool_idle_timeout",
}
TOP_FLAGS = {
    "auth_rsa_key": "auth_rsa_key",
    "log_level": "log_level",
    "log_format": "log_format",
    "event_loop": "event_loop",
    "allow_non_loopback": "allow_non_loopback",
    "admin_listen": "admin_listen",
    "shutdown_grace": "shutdown_grace",
    "tls_files_check_interval": "tls_files_check_interval",
    "workers": "workers",
}


def _proxy_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("proxy (flags override --config)")
    group.add_argument("--config", "-c", type=Path, help="YAML config file (see config.example.yaml)")
    group.add_argument("--listen", help="HOST:PORT or a Unix socket path (default 127.0.0.1:3306)")
    group.add_argument("--unix-socket-mode", help="file mode of a Unix socket listener (default 0660)")
    group.add_argument("--upstream", help="MySQL server HOST:PORT (port defaults to 3306)")
    group.add_argument("--ssl-mode", help="VERIFY_IDENTITY (default), VERIFY_CA, REQUIRED or DISABLED")
    group.add_argument("--ssl-ca", help="CA bundle: PEM, or PKCS#7 (.p7b) in PEM or DER")
    group.add_argument("--ssl-capath", help="directory of hashed CA certificates")
    group.add_argument("--ssl-cert", help="client certificate (for accounts with REQUIRE X509)")
    group.add_argument("--ssl-key", help="client certificate key")
    group.add_argument("--ssl-crl", help="CRL file (PEM) checked for the server certificate")
    group.add_argument("--tls-version", help="allowed versions, e.g. TLSv1.2,TLSv1.3 (default)")
    group.add_argument("--ssl-cipher", help="TLS 1.2 cipher list (OpenSSL syntax)")
    group.add_argument("--tls-ciphersuites", help="TLS 1.3 suites, e.g. TLS_AES_256_GCM_SHA384")
    group.add_argument("--tls-server-name", help="name to verify and send as SNI (for IP upstreams)")
    group.add_argument("--allow-legacy-tls", action="store_const", const=True, default=None,
                       help="permit TLSv1/TLSv1.1 in --tls-version (insecure; for old servers only)")
    group.add_argument("--tls-session-resumption", metavar="on|off",
                       help="resume upstream TLS sessions (default on)")
    group.add_argument("--tls-session-cache-size", type=int,
                       help="resumable upstream TLS sessions kept per route (default 64)")
    group.add_argument("--prewarm", type=int, metavar="N",
                       help="keep N upstream connections ready (TCP, greeting, TLS done) for the next clients "
                            "(default 0: off)")
    group.add_argument("--prewarm-max-age", help="hand out a prewarmed connection only this young, seconds (default 5)")
    group.add_argument("--upstream-pool", type=int, metavar="N",
                       help="keep up to N idle authenticated upstream connections, reset, for the next clients "
                            "(each still logs in with its own credentials; default 0: off)")
    group.add_argument("--upstream-pool-idle-timeout", metavar="S",
                       help="close a parked upstream connection after this long without a client, seconds "
                            "(default 30; keep it below the server's wait_timeout)")
    group.add_argument("--connect-timeout", help="upstream TCP connect timeout, seconds (default 10)")
    group.add_argument("--connect-retry-window",
                       help="retry a refused/unreachable upstream with backoff for this long (default 5; 0: off)")
    group.add_argument("--handshake-timeout", help="whole connection phase timeout, seconds (default 30)")
    group.add_argument("--idle-timeout", help="close relayed connections idle this long (default off)")
    group.add_argument("--max-connections", type=int, help="per route (default 1000); more get ERR 1040")
    group.add_argument("--auth-rsa-key", help="RSA private key (PEM) for caching_sha2/sha256 full auth; "
                                              "generated at start when not given")
    group.add_argument("--event-loop", choices=["uvloop", "asyncio"], help="default uvloop")
    group.add_argument("--admin-listen", help="HOST:PORT for /metrics and the health endpoints "
                                              "(default 127.0.0.1:9090; 'off' to disable)")
    group.add_argument("--tls-files-check-interval",
                       help="seconds between checks for changed CA/cert/key/CRL files (default 5; 0: SIGHUP only)")
    group.add_argument("--shutdown-grace", help="seconds open connections may finish after SIGTERM (default 10)")
    group.add_argument("--workers", type=int,
                       help="worker processes sharing the listeners, for several cores (default 1: one process)")
    group.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    group.add_argument("--log-format", choices=["text", "json"])
    group.add_argument("--allow-non-loopback", action="store_const", const=True, default=None,
                       help="permit a TCP listener on a non-loopback address (the client side is plaintext)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = _proxy_options()
    parser = argparse.ArgumentParser(
        prog="tlsproxy",
        description="Plaintext MySQL in, verified TLS out: a local proxy for MySQL clients that cannot do TLS.",
    )
    parser.add_argument("--version", action="version", version=f"tlsproxy {__version__}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", parents=[common], help="run the proxy (the default command)")
    commands.add_parser("check", parents=[common],
                        help="validate the config and connect upstream once per route: TLS version, cipher, "
                             "certificate chain, verification result")
    demo = commands.add_parser("demo", help="start a local TLS MariaDB with a fresh CA, the proxy in front, "
                                            "and run a query through it")
    demo.add_argument("--once", action="store_true", help="exit after the query instead of staying up")
    demo.add_argument("--event-loop", choices=["uvloop", "asyncio"], default="uvloop")
    return parser


PATH_FLAGS = {"ssl_ca", "ssl_capath", "ssl_cert", "ssl_key", "ssl_crl", "auth_rsa_key"}


def _flag_value(dest: str, value: Any) -> Any:
    """Paths given as flags are relative to the working directory (paths in the file, to the file)."""
    if dest in PATH_FLAGS or (dest == "listen" and isinstance(value, str) and value.startswith(("./", "../"))):
        return str(Path(value).expanduser().absolute())
    return value


ENV_PREFIX = "TLSPROXY_"


def _apply_environment(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """TLSPROXY_<FLAG> variables (TLSPROXY_UPSTREAM, TLSPROXY_SSL_CA, ...), the usual sidecar way: they
    sit between the file and the flags (a flag wins over the variable, the variable over the file)."""
    for dest in ("config", *ROUTE_FLAGS, *TOP_FLAGS):
        name = ENV_PREFIX + dest.upper()
        if getattr(args, dest, None) is None and environ.get(name, "") != "":
            value: Any = environ[name]
            if dest == "config":
                value = Path(value)
            elif dest in ("max_connections", "tls_session_cache_size", "prewarm", "upstream_pool", "workers"):
                if not value.strip().isdigit():
                    raise ConfigError(name, f"expected a whole number, got {value!r}")
                value = int(value)
            setattr(args, dest, value)


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ProxyConfig:
    _apply_environment(args, os.environ if environ is None else environ)
    raw: dict[str, Any] = load_config_file(args.config) if args.config else {}
    base = args.config.resolve().parent if args.config else None
    route_overrides = {key: _flag_value(dest, getattr(args, dest))
                       for dest, key in ROUTE_FLAGS.items() if getattr(args, dest) is not None}
    for dest, key in TOP_FLAGS.items():
        if getattr(args, dest) is not None:
            raw[key] = _flag_value(dest, getattr(args, dest))
    routes = raw.get("routes")
    if route_overrides:
        if not routes:
            raw["routes"] = [route_overrides]
        elif isinstance(routes, list) and len(routes) > 1:
            flag = "--" + next(iter(route_overrides)).replace("_", "-")
            raise ConfigError(flag, f"the config file has {len(routes)} routes; set per-route values in the file")
        elif isinstance(routes, list) and isinstance(routes[0], dict):
            routes[0].update(route_overrides)
        # otherwise parse_config reports what is wrong with the file's routes
    elif not routes:
        raise ConfigError("--upstream", "no route configured: give --upstream HOST:PORT (and --listen), or --config FILE")
    config = parse_config(raw, base=base)
    validate_security(config)
    return config


def load_auth_key(config: ProxyConfig) -> certs.AuthRsaKey:
    if config.auth_rsa_key is not None:
        check_private_key_mode(config.auth_rsa_key)
        try:
            return certs.AuthRsaKey.load(config.auth_rsa_key)
        except certs.CertificateFileError as exc:
            raise ConfigError("auth_rsa_key", str(exc)) from None
    return certs.AuthRsaKey.generate()


def check_private_key_mode(path: Path) -> None:
    """Whoever reads the RSA key can decrypt the passwords clients encrypt with its public half: refuse a
    key file others may read or write, warn when its group may (0640 for a group of readers is a choice)."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return  # loading it reports why it cannot be read
    if mode & 0o007:
        raise ConfigError("auth_rsa_key", f"{path} has mode {mode:04o}: other users may read or change the key "
                                          f"that decrypts passwords; chmod 600 {path}")
    if mode & 0o070:
        log.warning("auth_rsa_key %s has mode %04o: its group may read the key that decrypts passwords "
                    "(chmod 600 unless that group is meant to)", path, mode)


async def serve(config: ProxyConfig) -> int:
    """Run until SIGTERM/SIGINT or POST /quitquitquit: then stop accepting, give open connections
    `shutdown_grace` to finish, close the rest and exit 0. A second signal closes everything at once
    (lifecycle.py). With `workers` above 1 this process supervises worker processes instead (supervisor.py)."""
    if config.workers > 1:
        return await Supervisor(config, load_auth_key(config)).run()
    proxy = Proxy(config, load_auth_key(config))
    stop = StopRequests()
    admin = None
    if config.admin_listen is not None:
        admin = AdminServer(proxy, config.admin_listen, on_quit=stop.request_stop)
    service = ProxyService(proxy, config.shutdown_grace,
                           announce=lambda: log.info("tlsproxy %s ready (%s event loop)", __version__,
                                                     config.event_loop))
    return await run_until_stopped(service, stop, admin=admin)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "check", "demo", "-h", "--help", "--version"):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        setup_logging("INFO")
        return run_event_loop(run_demo(once=args.once, event_loop=args.event_loop), args.event_loop)
    try:
        config = config_from_args(args)
        setup_logging(config.log_level, config.log_format)
        if args.command == "check":
            return run_check(config)
        return run_event_loop(serve(config), config.event_loop)
    except ConfigError as exc:
        print(f"tlsproxy: {exc}", file=sys.stderr)
        return 2
