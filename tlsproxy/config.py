"""Configuration: a YAML file and command-line flags, parsed once into frozen, validated objects.

Every error is a `ConfigError` naming the key (as a path like `routes[0].ssl_mode`) and what is allowed.
This module imports nothing else from the package.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping



class ConfigError(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config error at '{key}': {problem}")
        self.key = key
        self.problem = problem


class StartupError(ConfigError):
    """The settings are valid but the proxy cannot start with them on this host (an address in use, a
    missing directory). The message is the whole line the user sees: the address, the setting, the cause
    and the fix. A ConfigError, so it is reported where config errors are: one line, exit 2."""

    def __str__(self) -> str:
        return self.problem


class SslMode(str, enum.Enum):
    """Named as MySQL's --ssl-mode. There is deliberately no PREFERRED: no silent plaintext fallback."""

    VERIFY_IDENTITY = "VERIFY_IDENTITY"
    VERIFY_CA = "VERIFY_CA"
    REQUIRED = "REQUIRED"
    DISABLED = "DISABLED"


TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
LEGACY_TLS_VERSIONS = ("TLSv1", "TLSv1.1")


@dataclass(frozen=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class UnixAddress:
    path: Path
    mode: int = 0o660

    def __str__(self) -> str:
        return f"unix:{self.path}"


ListenAddress = TcpAddress | UnixAddress


@dataclass(frozen=True)
class TlsSettings:
    mode: SslMode = SslMode.VERIFY_IDENTITY
    ca_file: Path | None = None
    ca_path: Path | None = None
    system_trust: bool | None = None
    """Use the system trust store; None means: when neither ca_file nor ca_path is given."""
    cert_file: Path | None = None
    key_file: Path | None = None
    crl_file: Path | None = None
    tls_versions: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")
    cipher: str | None = None
    ciphersuites: str | None = None
    server_name: str | None = None
    allow_legacy_tls: bool = False
    session_resumption: bool = True
    """Resume upstream TLS sessions (tlsproxy/tls_sessions.py)."""
    session_cache_size: int = 64

    @property
    def uses_system_trust(self) -> bool:
        if self.system_trust is None:
            return self.ca_file is None and self.ca_path is None
        return self.system_trust


@dataclass(frozen=True)
class Route:
    name: str
    listen: ListenAddress
    upstream: TcpAddress
    tls: TlsSettings = field(default_factory=TlsSettings)
    connect_timeout: float = 10.0
    connect_retry_window: float = 5.0
    handshake_timeout: float = 30.0
    idle_timeout: float | None = None
    max_connections: int = 1000
    prewarm: int = 0
    """Upstream connections kept ready (TCP, greeting, SSLRequest, TLS done); 0: off (tlsproxy/prewarm.py)."""
    prewarm_max_age: float = 5.0
    upstream_pool: int = 0
    """Idle authenticated upstream connections kept for the next clients; 0: off (tlsproxy/upstream_pool.py)."""
    upstream_pool_idle_timeout: float = 30.0
    """How long a parked connection may wait for a client; keep it below the server's wait_timeout."""


@dataclass(frozen=True)
class ProxyConfig:
    routes: tuple[Route, ...]
    auth_rsa_key: Path | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    event_loop: str = "uvloop"
    allow_non_loopback: bool = False
    admin_listen: TcpAddress | None = field(default_factory=lambda: TcpAddress("127.0.0.1", 9090))
    """Metrics and health endpoints; None turns the admin listener off."""
    shutdown_grace: float = 10.0
    """On SIGTERM/SIGINT, how long open connections may finish before they are closed."""
    tls_files_check_interval: float = 5.0
    """How often to look for changed CA/cert/key/CRL files (0: only on SIGHUP)."""
    workers: int = 1
    """Worker processes sharing the listeners (1: a single process, no workers)."""


# ---- parsing -------------------------------------------------------------------------------------

ROUTE_KEYS = {
    "name", "listen", "unix_socket_mode", "upstream", "ssl_mode", "ssl_ca", "ssl_capath", "ssl_system_trust",
    "ssl_cert", "ssl_key", "ssl_crl", "tls_version", "ssl_cipher", "tls_ciphersuites", "tls_server_name",
    "allow_legacy_tls", "connect_timeout", "connect_retry_window", "handshake_timeout", "idle_timeout",
    "max_connections", "tls_session_resumption", "tls_session_cache_size", "prewarm", "prewarm_max_age",
    "upstream_pool", "upstream_pool_idle_timeout",
}
TOP_KEYS = {"routes", "auth_rsa_key", "log_level", "log_format", "event_loop", "allow_non_loopback", "admin_listen",
             "shutdown_grace", "tls_files_check_interval", "workers"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEFAULT_LISTEN = "127.0.0.1:3306"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:9090"
MAX_WORKERS = 256


def parse_tcp_address(value: Any, key: str, *, default_port: int | None = None) -> TcpAddress:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, "expected HOST:PORT, e.g. 127.0.0.1:3306 or db.example.com:3306")
    text = value.strip()
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text) or re.fullmatch(r"([^:]+)(?::(\d+))?", text)
    if not match:
        raise ConfigError(key, f"cannot read {value!r} as HOST:PORT (write IPv6 addresses as [::1]:3306)")
    host, port_text = match.group(1), match.group(2)
    if port_text is None:
        if default_port is None:
            raise ConfigError(key, f"{value!r} has no port; write HOST:PORT")
        port = default_port
    else:
        port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(key, f"port {port} is out of range 0-65535")
    return TcpAddress(host, port)


def parse_listen_address(value: Any, key: str, mode: Any = None) -> ListenAddress:
    if isinstance(value, str) and value.startswith(("/", "unix:", "./", "../")):
        path = Path(value.removeprefix("unix:"))
        return UnixAddress(path, _parse_mode(mode, key.rsplit(".", 1)[0] + ".unix_socket_mode"))
    return parse_tcp_address(value, key)


def _parse_mode(value: Any, key: str) -> int:
    """An octal file mode, as text ("0660"). `config_file.load_config_file` keeps an unquoted 0660 as text too; a
    plain number such as 660 or 400 is refused rather than guessed (YAML reads it as decimal)."""
    if value is None:
        return 0o660
    if isinstance(value, str) and re.fullmatch(r"(0o|0)?[0-7]{3}", value.strip()):
        return int(value.strip()[-3:], 8)
    raise ConfigError(key, f"expected an octal file mode such as \"0660\" (quoted), got {value!r}")


def _duration(value: Any, key: str, *, allow_off: bool = False) -> float | None:
    if allow_off and (value in (None, 0, False) or str(value).strip().lower() in ("0", "0s", "0ms", "off", "none")):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(key, "expected seconds, e.g. 10 or 2.5" + (" (0 or off to disable)" if allow_off else ""))
    text = str(value).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m)?", text)
    if not match:
        raise ConfigError(key, f"expected seconds, e.g. 10, 2.5, 500ms or 1m; got {value!r}")
    number = float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]
    if number <= 0:
        raise ConfigError(key, "must be greater than 0")
    return number


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    raise ConfigError(key, f"expected true or false, got {value!r}")


def _whole_number(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, "expected a whole number of at least 1")
    return value


def _path(value: Any, key: str, base: Path | None) -> Path | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ConfigError(key, "expected a file path")
    path = Path(os.path.expanduser(value))
    if base is not None and not path.is_absolute():
        path = base / path
    return path


def _ssl_mode(value: Any, key: str) -> SslMode:
    text = str(value).strip().upper().replace("-", "_")
    if text == "PREFERRED":
        raise ConfigError(key, "PREFERRED is not offered: it would fall back to plaintext silently. "
                               "Use VERIFY_IDENTITY (default), VERIFY_CA, REQUIRED or DISABLED")
    try:
        return SslMode(text)
    except ValueError:
        raise ConfigError(key, f"unknown mode {value!r}; allowed: "
                               + ", ".join(mode.value for mode in SslMode)) from None


def _tls_versions(value: Any, key: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(key, "expected a list such as TLSv1.2,TLSv1.3")
    versions = []
    for item in items:
        name = str(item).strip()
        if name not in TLS_VERSIONS:
            raise ConfigError(key, f"unknown TLS version {name!r}; allowed: {', '.join(TLS_VERSIONS)}")
        versions.append(name)
    ordered = tuple(v for v in TLS_VERSIONS if v in versions)
    span = TLS_VERSIONS[TLS_VERSIONS.index(ordered[0]) : TLS_VERSIONS.index(ordered[-1]) + 1]
    if ordered != span:
        raise ConfigError(key, f"versions must be contiguous (OpenSSL sets a minimum and a maximum); got {', '.join(ordered)}")
    return ordered


def parse_route(raw: Mapping[str, Any], key: str, *, base: Path | None = None, index: int = 0) -> Route:
    if not isinstance(raw, Mapping):
        raise ConfigError(key, "expected a mapping of route settings")
    unknown = sorted(set(raw) - ROUTE_KEYS)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"unknown key; allowed: {', '.join(sorted(ROUTE_KEYS))}")
    name = raw.get("name")
    if name is None:
        name = f"route{index}" if index else "default"
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{key}.name", "use letters, digits, '.', '_' or '-' (at most 64)")
    if "upstream" not in raw:
        raise ConfigError(f"{key}.upstream", "required: the MySQL server as HOST:PORT")
    upstream = parse_tcp_address(raw["upstream"], f"{key}.upstream", default_port=3306)
    listen = parse_listen_address(raw.get("listen", DEFAULT_LISTEN), f"{key}.listen", raw.get("unix_socket_mode"))
    if isinstance(listen, UnixAddress) and base is not None and not listen.path.is_absolute():
        listen = replace(listen, path=base / listen.path)
    mode = _ssl_mode(raw.get("ssl_mode", SslMode.VERIFY_IDENTITY.value), f"{key}.ssl_mode")
    allow_legacy = _bool(raw.get("allow_legacy_tls", False), f"{key}.allow_legacy_tls")
    versions = _tls_versions(raw.get("tls_version", "TLSv1.2,TLSv1.3"), f"{key}.tls_version")
    if any(v in LEGACY_TLS_VERSIONS for v in versions) and not allow_legacy:
        raise ConfigError(f"{key}.tls_version", "TLSv1 and TLSv1.1 are insecure; set allow_legacy_tls: true "
                                                "to permit them for an old server")
    system_trust = raw.get("ssl_system_trust")
    tls = TlsSettings(
        mode=mode,
        ca_file=_path(raw.get("ssl_ca"), f"{key}.ssl_ca", base),
        ca_path=_path(raw.get("ssl_capath"), f"{key}.ssl_capath", base),
        system_trust=None if system_trust is None else _bool(system_trust, f"{key}.ssl_system_trust"),
        cert_file=_path(raw.get("ssl_cert"), f"{key}.ssl_cert", base),
        key_file=_path(raw.get("ssl_key"), f"{key}.ssl_key", base),
        crl_file=_path(raw.get("ssl_crl"), f"{key}.ssl_crl", base),
        tls_versions=versions,
        cipher=raw.get("ssl_cipher") or None,
        ciphersuites=raw.get("tls_ciphersuites") or None,
        server_name=raw.get("tls_server_name") or None,
        allow_legacy_tls=allow_legacy,
        session_resumption=_bool(raw.get("tls_session_resumption", True), f"{key}.tls_session_resumption"),
        session_cache_size=_whole_number(raw.get("tls_session_cache_size", 64), f"{key}.tls_session_cache_size"),
    )
    if (tls.cert_file is None) != (tls.key_file is None):
        missing = "ssl_key" if tls.key_file is None else "ssl_cert"
        raise ConfigError(f"{key}.{missing}", "a client certificate needs both ssl_cert and ssl_key")
    for text_key in ("ssl_cipher", "tls_ciphersuites", "tls_server_name"):
        if raw.get(text_key) is not None and not isinstance(raw.get(text_key), str):
            raise ConfigError(f"{key}.{text_key}", "expected a string")
    max_connections = _whole_number(raw.get("max_connections", 1000), f"{key}.max_connections")
    prewarm = _tls_connections(raw, "prewarm", key, mode, "prewarming prepares TLS connections")
    prewarm_max_age = _duration(raw.get("prewarm_max_age", 5), f"{key}.prewarm_max_age")
    assert prewarm_max_age is not None
    if prewarm_max_age > 9:
        raise ConfigError(f"{key}.prewarm_max_age", "at most 9 s: servers drop a connection that has not logged "
                                                    "in within connect_timeout (10 s by default)")
    upstream_pool = _tls_connections(raw, "upstream_pool", key, mode, "the pool keeps TLS connections")
    pool_idle_timeout = _duration(raw.get("upstream_pool_idle_timeout", 30), f"{key}.upstream_pool_idle_timeout")
    assert pool_idle_timeout is not None
    return Route(
        name=name,
        listen=listen,
        upstream=upstream,
        tls=tls,
        connect_timeout=_duration(raw.get("connect_timeout", 10), f"{key}.connect_timeout"),  # type: ignore[arg-type]
        connect_retry_window=_duration(raw.get("connect_retry_window", 5), f"{key}.connect_retry_window",
                                       allow_off=True) or 0.0,
        handshake_timeout=_duration(raw.get("handshake_timeout", 30), f"{key}.handshake_timeout"),  # type: ignore[arg-type]
        idle_timeout=_duration(raw.get("idle_timeout"), f"{key}.idle_timeout", allow_off=True),
        max_connections=max_connections,
        prewarm=prewarm,
        prewarm_max_age=prewarm_max_age,
        upstream_pool=upstream_pool,
        upstream_pool_idle_timeout=pool_idle_timeout,
    )


def _tls_connections(raw: Mapping[str, Any], name: str, key: str, mode: SslMode, why_tls: str) -> int:
    """A count of upstream connections a route keeps (prewarm, upstream_pool): 0 (off) to 1000, and TLS."""
    value = raw.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
        raise ConfigError(f"{key}.{name}", "expected a whole number from 0 (off) to 1000")
    if value and mode is SslMode.DISABLED:
        raise ConfigError(f"{key}.{name}", f"{why_tls}; it needs an ssl_mode other than DISABLED")
    return value


def parse_config(raw: Any, *, base: Path | None = None) -> ProxyConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("(top)", "expected a mapping with a 'routes' list")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(unknown[0], f"unknown key; allowed: {', '.join(sorted(TOP_KEYS))}")
    routes_raw = raw.get("routes")
    if not isinstance(routes_raw, list) or not routes_raw:
        raise ConfigError("routes", "expected a list of at least one route (each with listen and upstream)")
    routes = tuple(parse_route(item, f"routes[{i}]", base=base, index=i) for i, item in enumerate(routes_raw))
    _check_unique(routes)
    log_level = str(raw.get("log_level", "INFO")).upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log_level", "allowed: DEBUG, INFO, WARNING, ERROR")
    log_format = str(raw.get("log_format", "text")).lower()
    if log_format not in ("text", "json"):
        raise ConfigError("log_format", "allowed: text, json")
    event_loop = str(raw.get("event_loop", "uvloop")).lower()
    if event_loop not in ("uvloop", "asyncio"):
        raise ConfigError("event_loop", "allowed: uvloop, asyncio")
    admin_raw = raw.get("admin_listen", DEFAULT_ADMIN_LISTEN)
    admin_listen = None if admin_raw in (None, False, "off", "") else parse_tcp_address(admin_raw, "admin_listen")
    grace = raw.get("shutdown_grace", 10)
    shutdown_grace = 0.0 if grace in (0, "0", "0s") else _duration(grace, "shutdown_grace")
    check = raw.get("tls_files_check_interval", 5)
    check_interval = 0.0 if check in (0, "0", "0s", "off", False) else _duration(check, "tls_files_check_interval")
    workers = raw.get("workers", 1)
    if isinstance(workers, str) and workers.strip().isdigit():
        workers = int(workers.strip())
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ConfigError("workers", f"expected a whole number from 1 to {MAX_WORKERS}, got {workers!r}")
    return ProxyConfig(
        routes=routes,
        workers=workers,
        tls_files_check_interval=check_interval,  # type: ignore[arg-type]
        admin_listen=admin_listen,
        shutdown_grace=shutdown_grace,  # type: ignore[arg-type]
        auth_rsa_key=_path(raw.get("auth_rsa_key"), "auth_rsa_key", base),
        log_level=log_level,
        log_format=log_format,
        event_loop=event_loop,
        allow_non_loopback=_bool(raw.get("allow_non_loopback", False), "allow_non_loopback"),
    )


def _check_unique(routes: tuple[Route, ...]) -> None:
    names: set[str] = set()
    listens: set[str] = set()
    for i, route in enumerate(routes):
        if route.name in names:
            raise ConfigError(f"routes[{i}].name", f"duplicate route name {route.name!r}")
        names.add(route.name)
        where = str(route.listen)
        if where in listens and not where.endswith(":0"):
            raise ConfigError(f"routes[{i}].listen", f"{where} is already used by another route")
        listens.add(where)


def validate_security(config: ProxyConfig) -> None:
    """Refusals that are not about syntax: a non-loopback TCP listener exposes plaintext credentials."""
    for i, route in enumerate(config.routes):
        if isinstance(route.listen, TcpAddress) and not route.listen.is_loopback and not config.allow_non_loopback:
            raise ConfigError(
                f"routes[{i}].listen",
                f"{route.listen} is not a loopback address: the client side is plaintext. "
                "Listen on 127.0.0.1 or a Unix socket, or set allow_non_loopback: true (--allow-non-loopback) "
                "if the network to the clients is trusted",
            )
