"""Config parsing, table-driven in the style of cloud-sql-proxy's cmd/config_test.go.

* config.example.yaml loads, and documents every key the parser accepts, so it cannot drift from the code;
* valid inputs: (name, raw YAML route or file, expected values);
* invalid inputs: (name, raw config, the exact key path of the ConfigError, a piece of its message);
* tests/fixtures/config-*.yaml: a file per case; its first line says `# want: ok` or
  `# want-error: KEY :: MESSAGE FRAGMENT`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from tlsproxy import cli
from tlsproxy.config import (
    ROUTE_KEYS,
    TOP_KEYS,
    ConfigError,
    ProxyConfig,
    Route,
    SslMode,
    TcpAddress,
    TlsSettings,
    UnixAddress,
    parse_config,
    validate_security,
)
from tlsproxy.config_file import load_config_file, load_yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"
FIXTURES = REPO / "tests" / "fixtures"


def one_route(**route: Any) -> dict[str, Any]:
    """A config with a single route; `upstream` defaults to db.example.com."""
    route.setdefault("upstream", "db.example.com")
    return {"routes": [route]}


def parse_route_yaml(text: str, base: Path | None = None) -> Route:
    """Parse a route written as YAML with the loader config files use (so YAML's own typing - `off`,
    leading-zero numbers kept as text - is part of the test)."""
    route = load_yaml(text)
    route.setdefault("upstream", "db.example.com")
    return parse_config({"routes": [route]}, base=base).routes[0]


# ---- config.example.yaml ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_text() -> str:
    return EXAMPLE.read_text()


@pytest.fixture(scope="module")
def example_raw(example_text: str) -> dict[str, Any]:
    return yaml.safe_load(example_text)


def test_example_loads_and_passes_the_security_checks(example_raw: dict[str, Any]) -> None:
    config = parse_config(example_raw, base=EXAMPLE.parent)
    validate_security(config)
    assert [route.name for route in config.routes] == ["rds-orders", "reporting"]
    rds, local = config.routes
    # The cloud RDS route: verified against the console's CA bundle.
    assert rds.tls.mode is SslMode.VERIFY_IDENTITY
    assert rds.tls.ca_file is not None and rds.tls.ca_file.is_absolute()
    assert rds.upstream.port == 3306 and rds.upstream.host.endswith(".rds.aliyuncs.com")
    assert not rds.tls.uses_system_trust
    # The Unix-socket route.
    assert isinstance(local.listen, UnixAddress) and local.listen.mode == 0o660
    assert local.upstream == TcpAddress("10.20.0.15", 3306)
    assert local.tls.server_name and local.tls.cert_file and local.tls.key_file and local.tls.crl_file
    assert local.idle_timeout is None


def test_example_loads_through_the_cli_loader() -> None:
    config = cli.config_from_args(cli.build_parser().parse_args(["run", "--config", str(EXAMPLE)]))
    assert len(config.routes) == 2


def _key_line(text: str, key: str) -> int:
    """Index of the first line that sets `key` (as a mapping key, possibly the first of a list item)."""
    lines = text.splitlines()
    pattern = re.compile(rf"^\s*(?:-\s+)?{re.escape(key)}:(\s|$)")
    for index, line in enumerate(lines):
        if pattern.match(line):
            return index
    raise AssertionError(f"config.example.yaml never sets {key!r}")


def _comment_above(text: str, index: int) -> str:
    lines = text.splitlines()
    comment: list[str] = []
    for line in reversed(lines[:index]):
        if not line.strip().startswith("#"):
            break
        comment.insert(0, line.strip())
    return "\n".join(comment)


_FLAG_FOR_KEY = {key: "--" + dest.replace("_", "-") for dest, key in {**cli.ROUTE_FLAGS, **cli.TOP_FLAGS}.items()}


@pytest.mark.parametrize("key", sorted(TOP_KEYS))
def test_example_sets_and_documents_every_top_level_key(key: str, example_raw: dict[str, Any], example_text: str) -> None:
    assert key in example_raw, f"config.example.yaml does not set top-level key {key!r}"
    _assert_documented(example_text, key)


@pytest.mark.parametrize("key", sorted(ROUTE_KEYS))
def test_example_sets_and_documents_every_route_key(key: str, example_raw: dict[str, Any], example_text: str) -> None:
    assert any(key in route for route in example_raw["routes"]), f"no route in config.example.yaml sets {key!r}"
    _assert_documented(example_text, key)


def _assert_documented(text: str, key: str) -> None:
    comment = _comment_above(text, _key_line(text, key))
    assert comment.startswith(f"# {key}"), f"{key!r} needs a comment right above it that starts with its name"
    if key != "routes":
        assert "Default" in comment, f"the comment on {key!r} must say its default"
        assert "CLI:" in comment, f"the comment on {key!r} must name the command-line flag (or say there is none)"
    flag = _FLAG_FOR_KEY.get(key)
    if flag is not None:
        assert flag in comment, f"the comment on {key!r} must name its flag {flag}"


def test_every_flag_maps_to_a_real_key_and_a_real_option() -> None:
    assert set(cli.ROUTE_FLAGS.values()) <= ROUTE_KEYS
    assert set(cli.TOP_FLAGS.values()) <= TOP_KEYS
    args = cli.build_parser().parse_args(["run"])
    for dest in (*cli.ROUTE_FLAGS, *cli.TOP_FLAGS):
        assert hasattr(args, dest), dest
    # Keys that deliberately have no flag (documented as "CLI: none" in the example).
    assert ROUTE_KEYS - set(cli.ROUTE_FLAGS.values()) <= {"name", "ssl_system_trust"}
    assert TOP_KEYS - set(cli.TOP_FLAGS.values()) == {"routes"}


# ---- defaults ------------------------------------------------------------------------------------


def test_defaults() -> None:
    config = parse_config({"routes": [{"upstream": "db.example.com"}, {"upstream": "db2.example.com", "listen": "127.0.0.1:3307"}]})
    assert config == ProxyConfig(
        routes=config.routes, auth_rsa_key=None, log_level="INFO", log_format="text", event_loop="uvloop",
        allow_non_loopback=False,
    )
    assert config.workers == 1  # one process: nothing is spawned
    first, second = config.routes
    assert first == Route(name="default", listen=TcpAddress("127.0.0.1", 3306), upstream=TcpAddress("db.example.com", 3306))
    assert second.name == "route1"
    assert first.tls == TlsSettings()
    assert first.tls.mode is SslMode.VERIFY_IDENTITY
    assert first.tls.tls_versions == ("TLSv1.2", "TLSv1.3")
    assert first.tls.uses_system_trust
    assert (first.connect_timeout, first.handshake_timeout, first.idle_timeout, first.max_connections) == (10.0, 30.0, None, 1000)


def test_an_empty_document_asks_for_routes() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(yaml.safe_load(""))
    assert error.value.key == "routes"
    assert "at least one route" in error.value.problem


# ---- valid values --------------------------------------------------------------------------------

ValidCase = tuple[str, str, Callable[[Route], Any], Any]

VALID: list[ValidCase] = [
    # durations
    ("duration string", "connect_timeout: '10'", lambda r: r.connect_timeout, 10.0),
    ("duration float", "connect_timeout: 2.5", lambda r: r.connect_timeout, 2.5),
    ("duration ms", "connect_timeout: 500ms", lambda r: r.connect_timeout, 0.5),
    ("duration minutes", "handshake_timeout: 1m", lambda r: r.handshake_timeout, 60.0),
    ("duration seconds suffix", "handshake_timeout: 1.5s", lambda r: r.handshake_timeout, 1.5),
    ("idle duration", "idle_timeout: 90s", lambda r: r.idle_timeout, 90.0),
    # idle_timeout off values
    ("idle off (YAML false)", "idle_timeout: off", lambda r: r.idle_timeout, None),
    ("idle 'off' quoted", "idle_timeout: 'off'", lambda r: r.idle_timeout, None),
    ("idle 0", "idle_timeout: 0", lambda r: r.idle_timeout, None),
    ("idle '0'", "idle_timeout: '0'", lambda r: r.idle_timeout, None),
    ("idle empty", "idle_timeout:", lambda r: r.idle_timeout, None),
    ("idle false", "idle_timeout: false", lambda r: r.idle_timeout, None),
    # max_connections
    ("max_connections 1", "max_connections: 1", lambda r: r.max_connections, 1),
    # TLS session resumption
    ("resumption default on", "upstream: db:3306", lambda r: (r.tls.session_resumption, r.tls.session_cache_size),
     (True, 64)),
    ("resumption off", "tls_session_resumption: false", lambda r: r.tls.session_resumption, False),
    ("resumption 'off'", "tls_session_resumption: 'off'", lambda r: r.tls.session_resumption, False),
    ("session cache size", "tls_session_cache_size: 8", lambda r: r.tls.session_cache_size, 8),
    # unix sockets and their mode
    ("unix socket default mode", "listen: /run/t.sock", lambda r: r.listen, UnixAddress(Path("/run/t.sock"), 0o660)),
    ("unix: prefix", "listen: unix:/run/t.sock", lambda r: r.listen, UnixAddress(Path("/run/t.sock"), 0o660)),
    ("mode quoted", "{listen: /run/t.sock, unix_socket_mode: '0600'}", lambda r: r.listen.mode, 0o600),
    ("mode YAML octal int", "{listen: /run/t.sock, unix_socket_mode: 0660}", lambda r: r.listen.mode, 0o660),
    ("mode without leading 0", "{listen: /run/t.sock, unix_socket_mode: '640'}", lambda r: r.listen.mode, 0o640),
    ("mode 0o prefix", "{listen: /run/t.sock, unix_socket_mode: '0o660'}", lambda r: r.listen.mode, 0o660),
    # addresses
    ("IPv6 listen", "listen: '[::1]:3306'", lambda r: (r.listen, str(r.listen), r.listen.is_loopback),
     (TcpAddress("::1", 3306), "[::1]:3306", True)),
    ("IPv6 upstream default port", "upstream: '[2001:db8::1]'", lambda r: r.upstream, TcpAddress("2001:db8::1", 3306)),
    ("upstream default port", "upstream: db.example.com", lambda r: r.upstream, TcpAddress("db.example.com", 3306)),
    ("upstream port", "upstream: db.example.com:3307", lambda r: r.upstream, TcpAddress("db.example.com", 3307)),
    ("upstream port 65535", "upstream: 10.0.0.1:65535", lambda r: r.upstream.port, 65535),
    # TLS
    ("ssl_mode lower case with -", "ssl_mode: verify-ca", lambda r: r.tls.mode, SslMode.VERIFY_CA),
    ("ssl_mode REQUIRED", "ssl_mode: REQUIRED", lambda r: r.tls.mode, SslMode.REQUIRED),
    ("ssl_mode DISABLED", "ssl_mode: disabled", lambda r: r.tls.mode, SslMode.DISABLED),
    ("tls_version list, any order", "tls_version: [TLSv1.3, TLSv1.2]", lambda r: r.tls.tls_versions, ("TLSv1.2", "TLSv1.3")),
    ("tls_version one", "tls_version: TLSv1.3", lambda r: r.tls.tls_versions, ("TLSv1.3",)),
    ("tls_version spaces", "tls_version: 'TLSv1.2, TLSv1.3'", lambda r: r.tls.tls_versions, ("TLSv1.2", "TLSv1.3")),
    ("legacy allowed", "{tls_version: 'TLSv1,TLSv1.1,TLSv1.2', allow_legacy_tls: true}",
     lambda r: (r.tls.tls_versions, r.tls.allow_legacy_tls), (("TLSv1", "TLSv1.1", "TLSv1.2"), True)),
    ("ssl_cipher", "ssl_cipher: ECDHE-RSA-AES128-GCM-SHA256", lambda r: r.tls.cipher, "ECDHE-RSA-AES128-GCM-SHA256"),
    ("empty ssl_cipher is unset", "ssl_cipher: ''", lambda r: r.tls.cipher, None),
    ("ciphersuites", "tls_ciphersuites: TLS_AES_128_GCM_SHA256", lambda r: r.tls.ciphersuites, "TLS_AES_128_GCM_SHA256"),
    ("server name", "tls_server_name: db.internal", lambda r: r.tls.server_name, "db.internal"),
    ("system trust with CA", "{ssl_ca: /ca.pem, ssl_system_trust: true}", lambda r: r.tls.uses_system_trust, True),
    ("CA turns system trust off", "ssl_ca: /ca.pem", lambda r: r.tls.uses_system_trust, False),
    ("capath turns system trust off", "ssl_capath: /etc/ssl/certs", lambda r: r.tls.uses_system_trust, False),
    ("client cert and key", "{ssl_cert: /c.pem, ssl_key: /c.key}", lambda r: (r.tls.cert_file, r.tls.key_file),
     (Path("/c.pem"), Path("/c.key"))),
    ("name", "name: orders-db.primary_1", lambda r: r.name, "orders-db.primary_1"),
    # upstream pool
    ("pool default off", "upstream: db:3306", lambda r: (r.upstream_pool, r.upstream_pool_idle_timeout), (0, 30.0)),
    ("pool size", "upstream_pool: 8", lambda r: r.upstream_pool, 8),
    ("pool idle timeout", "{upstream_pool: 4, upstream_pool_idle_timeout: 2m}",
     lambda r: (r.upstream_pool, r.upstream_pool_idle_timeout), (4, 120.0)),
]


@pytest.mark.parametrize(("text", "get", "want"), [case[1:] for case in VALID], ids=[case[0] for case in VALID])
def test_valid_route_values(text: str, get: Callable[[Route], Any], want: Any) -> None:
    assert get(parse_route_yaml(text)) == want


# ---- invalid values ------------------------------------------------------------------------------

InvalidCase = tuple[str, Any, str, str]


def _two(second: dict[str, Any]) -> dict[str, Any]:
    """Two routes, the second one under test: checks that key paths carry the right index."""
    second.setdefault("upstream", "b.example.com")
    second.setdefault("listen", "127.0.0.1:3308")
    return {"routes": [{"upstream": "a.example.com", "listen": "127.0.0.1:3307"}, second]}


INVALID: list[InvalidCase] = [
    # structure
    ("top-level not a mapping", ["routes"], "(top)", "expected a mapping"),
    ("no routes", {"log_level": "INFO"}, "routes", "at least one route"),
    ("empty routes", {"routes": []}, "routes", "at least one route"),
    ("routes a mapping", {"routes": {"upstream": "db"}}, "routes", "expected a list"),
    ("route not a mapping", {"routes": ["db.example.com:3306"]}, "routes[0]", "expected a mapping"),
    ("unknown top-level key", {"routes": [{"upstream": "db"}], "listen": "127.0.0.1:3306"}, "listen",
     "unknown key; allowed: admin_listen, allow_non_loopback, auth_rsa_key, event_loop, log_format, log_level, routes, shutdown_grace, tls_files_check_interval, workers"),
    ("unknown route key", _two({"ssl_verify_server_cert": True}), "routes[1].ssl_verify_server_cert",
     "unknown key; allowed: "),
    # ssl_mode
    ("PREFERRED refused", _two({"ssl_mode": "PREFERRED"}), "routes[1].ssl_mode",
     "PREFERRED is not offered: it would fall back to plaintext silently. Use VERIFY_IDENTITY (default), "
     "VERIFY_CA, REQUIRED or DISABLED"),
    ("preferred lower case refused", one_route(ssl_mode="preferred"), "routes[0].ssl_mode", "fall back to plaintext"),
    ("bad ssl_mode", _two({"ssl_mode": "VERIFY_FULL"}), "routes[1].ssl_mode",
     "unknown mode 'VERIFY_FULL'; allowed: VERIFY_IDENTITY, VERIFY_CA, REQUIRED, DISABLED"),
    ("ssl_mode empty", one_route(ssl_mode=None), "routes[0].ssl_mode", "allowed: VERIFY_IDENTITY"),
    # tls_version
    ("non-contiguous", one_route(tls_version="TLSv1.1,TLSv1.3"), "routes[0].tls_version", "must be contiguous"),
    ("non-contiguous with legacy", one_route(tls_version="TLSv1,TLSv1.2", allow_legacy_tls=True),
     "routes[0].tls_version", "contiguous"),
    ("TLSv1.1 without allow_legacy_tls", _two({"tls_version": "TLSv1.1,TLSv1.2"}), "routes[1].tls_version",
     "TLSv1 and TLSv1.1 are insecure; set allow_legacy_tls: true"),
    ("TLSv1 without allow_legacy_tls", one_route(tls_version=["TLSv1"]), "routes[0].tls_version", "allow_legacy_tls"),
    ("unknown version", one_route(tls_version="SSLv3"), "routes[0].tls_version",
     "unknown TLS version 'SSLv3'; allowed: TLSv1, TLSv1.1, TLSv1.2, TLSv1.3"),
    ("version 1.2 as number", one_route(tls_version=1.2), "routes[0].tls_version", "expected a list"),
    ("empty version list", one_route(tls_version=[]), "routes[0].tls_version", "expected a list"),
    ("bad allow_legacy_tls", one_route(allow_legacy_tls="maybe"), "routes[0].allow_legacy_tls", "expected true or false"),
    # client certificate
    ("cert without key", _two({"ssl_cert": "/c.pem"}), "routes[1].ssl_key", "needs both ssl_cert and ssl_key"),
    ("key without cert", one_route(ssl_key="/c.key"), "routes[0].ssl_cert", "needs both ssl_cert and ssl_key"),
    ("path not a string", one_route(ssl_ca=42), "routes[0].ssl_ca", "expected a file path"),
    ("bad ssl_system_trust", one_route(ssl_system_trust="sometimes"), "routes[0].ssl_system_trust", "true or false"),
    ("ssl_cipher not a string", one_route(ssl_cipher=123), "routes[0].ssl_cipher", "expected a string"),
    ("ciphersuites a list", one_route(tls_ciphersuites=["TLS_AES_128_GCM_SHA256"]), "routes[0].tls_ciphersuites",
     "expected a string"),
    ("server name a list", one_route(tls_server_name=["a"]), "routes[0].tls_server_name", "expected a string"),
    # durations
    ("negative duration", one_route(connect_timeout=-1), "routes[0].connect_timeout", "expected seconds"),
    ("word duration", _two({"handshake_timeout": "abc"}), "routes[1].handshake_timeout",
     "expected seconds, e.g. 10, 2.5, 500ms or 1m; got 'abc'"),
    ("zero connect_timeout", one_route(connect_timeout=0), "routes[0].connect_timeout", "must be greater than 0"),
    ("hours not allowed", one_route(handshake_timeout="1h"), "routes[0].handshake_timeout", "500ms or 1m"),
    ("bool duration", one_route(connect_timeout=True), "routes[0].connect_timeout", "expected seconds"),
    ("list duration", one_route(connect_timeout=[1]), "routes[0].connect_timeout", "expected seconds"),
    ("idle word", one_route(idle_timeout="abc"), "routes[0].idle_timeout", "expected seconds"),
    ("idle negative", one_route(idle_timeout=-5), "routes[0].idle_timeout", "expected seconds"),
    ("idle true", one_route(idle_timeout=True), "routes[0].idle_timeout", "(0 or off to disable)"),
    # workers
    ("workers 0", {"routes": [{"upstream": "db"}], "workers": 0}, "workers", "a whole number from 1 to 256, got 0"),
    ("workers too many", {"routes": [{"upstream": "db"}], "workers": 257}, "workers", "from 1 to 256"),
    ("workers a word", {"routes": [{"upstream": "db"}], "workers": "two"}, "workers", "got 'two'"),
    ("workers true", {"routes": [{"upstream": "db"}], "workers": True}, "workers", "a whole number"),
    ("workers a fraction", {"routes": [{"upstream": "db"}], "workers": 1.5}, "workers", "a whole number"),
    # max_connections
    ("max_connections 0", one_route(max_connections=0), "routes[0].max_connections", "a whole number of at least 1"),
    ("resumption word", one_route(tls_session_resumption="maybe"), "routes[0].tls_session_resumption",
     "expected true or false"),
    ("session cache 0", one_route(tls_session_cache_size=0), "routes[0].tls_session_cache_size", "at least 1"),
    ("session cache text", one_route(tls_session_cache_size="8"), "routes[0].tls_session_cache_size", "whole number"),
    ("max_connections negative", one_route(max_connections=-1), "routes[0].max_connections", "at least 1"),
    ("max_connections string", one_route(max_connections="100"), "routes[0].max_connections", "whole number"),
    ("max_connections float", one_route(max_connections=2.5), "routes[0].max_connections", "whole number"),
    ("max_connections bool", one_route(max_connections=True), "routes[0].max_connections", "whole number"),
    # unix sockets
    ("mode with 9", one_route(listen="/run/t.sock", unix_socket_mode="0999"), "routes[0].unix_socket_mode",
     "expected an octal file mode such as \"0660\""),
    ("mode symbolic", _two({"listen": "/run/t.sock", "unix_socket_mode": "rw-rw----"}), "routes[1].unix_socket_mode",
     "octal file mode"),
    ("mode too big", one_route(listen="/run/t.sock", unix_socket_mode=0o1777), "routes[0].unix_socket_mode", "octal"),
    ("mode decimal 660", one_route(listen="/run/t.sock", unix_socket_mode=660), "routes[0].unix_socket_mode", "octal"),
    ("mode negative", one_route(listen="/run/t.sock", unix_socket_mode=-1), "routes[0].unix_socket_mode", "octal"),
    ("mode bool", one_route(listen="/run/t.sock", unix_socket_mode=True), "routes[0].unix_socket_mode", "octal"),
    # addresses
    ("bare IPv6 listen", one_route(listen="::1:3306"), "routes[0].listen", "write IPv6 addresses as [::1]:3306"),
    ("listen without port", one_route(listen="127.0.0.1"), "routes[0].listen", "has no port; write HOST:PORT"),
    ("listen port out of range", one_route(listen="127.0.0.1:70000"), "routes[0].listen", "out of range 0-65535"),
    ("listen a number", one_route(listen=3306), "routes[0].listen", "expected HOST:PORT"),
    ("missing upstream", {"routes": [{"listen": "127.0.0.1:3306"}]}, "routes[0].upstream",
     "required: the MySQL server as HOST:PORT"),
    ("missing upstream, second route", {"routes": [{"upstream": "a"}, {"listen": "127.0.0.1:3308"}]},
     "routes[1].upstream", "required"),
    ("empty upstream", one_route(upstream=""), "routes[0].upstream", "expected HOST:PORT"),
    ("upstream a port number", one_route(upstream=3306), "routes[0].upstream", "expected HOST:PORT"),
    ("upstream bad port", one_route(upstream="db:99999"), "routes[0].upstream", "out of range"),
    ("upstream bare IPv6", one_route(upstream="2001:db8::1"), "routes[0].upstream", "[::1]:3306"),
    # names and uniqueness
    ("bad name", one_route(name="my route"), "routes[0].name", "letters, digits, '.', '_' or '-'"),
    ("name too long", one_route(name="x" * 65), "routes[0].name", "at most 64"),
    ("duplicate names", {"routes": [{"name": "db", "upstream": "a", "listen": "127.0.0.1:3307"},
                                    {"name": "db", "upstream": "b", "listen": "127.0.0.1:3308"}]},
     "routes[1].name", "duplicate route name 'db'"),
    ("duplicate listen", {"routes": [{"name": "a", "upstream": "a", "listen": "127.0.0.1:3307"},
                                     {"name": "b", "upstream": "b", "listen": "127.0.0.1:3307"}]},
     "routes[1].listen", "127.0.0.1:3307 is already used by another route"),
    ("duplicate unix socket", {"routes": [{"name": "a", "upstream": "a", "listen": "/run/t.sock"},
                                          {"name": "b", "upstream": "b", "listen": "unix:/run/t.sock"}]},
     "routes[1].listen", "unix:/run/t.sock is already used"),
    ("duplicate default listen", {"routes": [{"upstream": "a"}, {"upstream": "b"}]}, "routes[1].listen",
     "127.0.0.1:3306 is already used"),
    # upstream pool
    ("pool negative", one_route(upstream_pool=-1), "routes[0].upstream_pool", "from 0 (off) to 1000"),
    ("pool too big", one_route(upstream_pool=1001), "routes[0].upstream_pool", "from 0 (off) to 1000"),
    ("pool bool", one_route(upstream_pool=True), "routes[0].upstream_pool", "a whole number"),
    ("pool text", one_route(upstream_pool="8"), "routes[0].upstream_pool", "a whole number"),
    ("pool without TLS", one_route(upstream_pool=2, ssl_mode="DISABLED"), "routes[0].upstream_pool",
     "needs an ssl_mode other than DISABLED"),
    ("pool idle timeout 0", one_route(upstream_pool_idle_timeout=0), "routes[0].upstream_pool_idle_timeout",
     "must be greater than 0"),
    ("pool idle timeout word", one_route(upstream_pool_idle_timeout="soon"), "routes[0].upstream_pool_idle_timeout",
     "expected seconds"),
    # top level
    ("log_level", {"routes": [{"upstream": "a"}], "log_level": "TRACE"}, "log_level", "allowed: DEBUG, INFO, WARNING, ERROR"),
    ("log_format", {"routes": [{"upstream": "a"}], "log_format": "xml"}, "log_format", "allowed: text, json"),
    ("event_loop", {"routes": [{"upstream": "a"}], "event_loop": "trio"}, "event_loop", "allowed: uvloop, asyncio"),
    ("allow_non_loopback", {"routes": [{"upstream": "a"}], "allow_non_loopback": "sure"}, "allow_non_loopback",
     "expected true or false"),
    ("auth_rsa_key not a path", {"routes": [{"upstream": "a"}], "auth_rsa_key": 1}, "auth_rsa_key", "expected a file path"),
]


@pytest.mark.parametrize(("raw", "key", "message"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_values_name_the_key_and_what_is_allowed(raw: Any, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert error.value.key == key
    assert message in error.value.problem
    assert str(error.value) == f"config error at '{key}': {error.value.problem}"


def test_duplicate_port_zero_listeners_are_allowed() -> None:
    config = parse_config({"routes": [{"name": "a", "upstream": "a", "listen": "127.0.0.1:0"},
                                      {"name": "b", "upstream": "b", "listen": "127.0.0.1:0"}]})
    assert [route.listen.port for route in config.routes] == [0, 0]  # type: ignore[union-attr]


# ---- files: tests/fixtures/config-*.yaml -------------------------------------------------------

FIXTURE_FILES = sorted(FIXTURES.glob("config-*.yaml"))


def test_there_are_fixture_files() -> None:
    assert len(FIXTURE_FILES) >= 5


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=[path.name for path in FIXTURE_FILES])
def test_fixture_file(path: Path) -> None:
    header = path.read_text().splitlines()[0]
    raw = load_config_file(path)
    if header == "# want: ok":
        config = parse_config(raw, base=path.parent)
        validate_security(config)
        return
    match = re.fullmatch(r"# want-error: (\S+) :: (.+)", header)
    assert match, f"{path.name}: the first line must be '# want: ok' or '# want-error: KEY :: FRAGMENT'"
    with pytest.raises(ConfigError) as error:
        parse_config(raw, base=path.parent)
    assert (error.value.key, match.group(2) in error.value.problem) == (match.group(1), True), error.value


def test_two_routes_fixture_values() -> None:
    path = FIXTURES / "config-two-routes.yaml"
    config = parse_config(load_config_file(path), base=path.parent)
    assert (config.log_level, config.log_format, config.event_loop) == ("DEBUG", "json", "asyncio")
    primary, replica = config.routes
    assert primary.tls.mode is SslMode.VERIFY_IDENTITY and replica.tls.mode is SslMode.VERIFY_CA
    assert replica.listen == TcpAddress("::1", 3308)
    assert replica.upstream == TcpAddress("2001:db8::5", 3306)
    assert replica.idle_timeout == 60.0


# ---- relative paths --------------------------------------------------------------------------------


def test_relative_paths_are_resolved_against_the_config_files_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = FIXTURES / "config-relative-paths.yaml"
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    config = parse_config(load_config_file(path), base=path.parent)
    route = config.routes[0]
    assert route.tls.ca_file == FIXTURES / "certs" / "ca.pem"
    assert route.tls.ca_path == FIXTURES / "certs" / "hashed"
    assert route.tls.cert_file == FIXTURES / "certs" / "client.pem"
    assert route.tls.key_file == FIXTURES / "certs" / "client.key"
    assert route.tls.crl_file == FIXTURES / "certs" / "ca.crl.pem"
    assert route.listen == UnixAddress(FIXTURES / "run" / "proxy.sock", 0o660)
    assert config.auth_rsa_key == FIXTURES / "keys" / "auth-rsa.pem"


@pytest.mark.parametrize(("value", "want"), [
    ("ca.pem", "BASE/ca.pem"),
    ("./certs/ca.pem", "BASE/certs/ca.pem"),
    ("../ca.pem", "BASE/../ca.pem"),
    ("/etc/ssl/ca.pem", "/etc/ssl/ca.pem"),
    ("~/ca.pem", "HOME/ca.pem"),
])
def test_path_resolution(value: str, want: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    base = tmp_path / "conf"
    route = parse_config(one_route(ssl_ca=value), base=base).routes[0]
    assert route.tls.ca_file == Path(want.replace("BASE", str(base)).replace("HOME", str(tmp_path / "home")))


def test_without_a_base_relative_paths_stay_relative() -> None:
    route = parse_config(one_route(ssl_ca="ca.pem", listen="./proxy.sock")).routes[0]
    assert route.tls.ca_file == Path("ca.pem")
    assert route.listen == UnixAddress(Path("proxy.sock"), 0o660)


def test_unix_prefix_relative_socket_is_resolved(tmp_path: Path) -> None:
    route = parse_config(one_route(listen="unix:sockets/proxy.sock"), base=tmp_path).routes[0]
    assert route.listen == UnixAddress(tmp_path / "sockets" / "proxy.sock", 0o660)


# ---- load_config_file ----------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "fragment"), [
    (None, "cannot read"),
    ("routes: [unclosed", "is not valid YAML"),
    ("- a\n- b\n", "must hold a mapping with a 'routes' list"),
])
def test_load_config_file_errors_name_the_config_flag(tmp_path: Path, content: str | None, fragment: str) -> None:
    path = tmp_path / "tlsproxy.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as error:
        load_config_file(path)
    assert error.value.key == "--config"
    assert fragment in error.value.problem and str(path) in error.value.problem


def test_load_config_file_empty_is_an_empty_mapping(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert load_config_file(path) == {}


# ---- validate_security ----------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["127.0.0.1:3306", "127.0.0.2:3306", "localhost:3306", "[::1]:3306", "/run/t.sock"])
def test_loopback_and_unix_listeners_are_accepted(listen: str) -> None:
    validate_security(parse_config(one_route(listen=listen)))


@pytest.mark.parametrize("listen", ["0.0.0.0:3306", "[::]:3306", "10.1.2.3:3306", "db-proxy.internal:3306"])
def test_non_loopback_listener_is_refused(listen: str) -> None:
    config = parse_config({"routes": [{"upstream": "a", "listen": "127.0.0.1:3307"}, {"upstream": "b", "listen": listen}]})
    with pytest.raises(ConfigError) as error:
        validate_security(config)
    assert error.value.key == "routes[1].listen"
    assert "is not a loopback address: the client side is plaintext" in error.value.problem
    assert "allow_non_loopback: true (--allow-non-loopback)" in error.value.problem


def test_allow_non_loopback_permits_it() -> None:
    validate_security(parse_config(one_route(listen="0.0.0.0:3306") | {"allow_non_loopback": True}))
    validate_security(parse_config(one_route(listen="0.0.0.0:3306") | {"allow_non_loopback": "yes"}))


# ---- bugs ------------------------------------------------------------------------------------------


def test_unquoted_decimal_mode_is_not_silently_misread() -> None:
    try:
        route = parse_route_yaml("{listen: /run/t.sock, unix_socket_mode: 400}")
    except ConfigError as error:
        assert error.key == "routes[0].unix_socket_mode"
    else:
        assert route.listen.mode == 0o400, oct(route.listen.mode)  # type: ignore[union-attr]


def test_empty_name_is_not_the_string_none() -> None:
    try:
        route = parse_route_yaml("name:")
    except ConfigError as error:
        assert error.key == "routes[0].name"
    else:
        assert route.name == "default"
