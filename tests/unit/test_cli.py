"""The command line: flags into a ProxyConfig (alone, over a one-route file, refused over a multi-route file)
and `main`'s exit codes and messages. No sockets: every case here fails or stops before the event loop."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tlsproxy import __version__
from tlsproxy.cli import build_parser, config_from_args, main
from tlsproxy.config import ConfigError, ProxyConfig, Route, SslMode, TcpAddress, UnixAddress


def config_of(*argv: str) -> ProxyConfig:
    return config_from_args(build_parser().parse_args(["run", *argv]))


@pytest.fixture(autouse=True)
def keep_root_logger() -> Iterator[None]:
    """`main` configures the root logger once the config is valid; undo that for the next test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


ONE_ROUTE = """\
log_level: WARNING
routes:
  - name: orders
    listen: 127.0.0.1:3307
    upstream: orders.db.example.com:3306
    ssl_mode: VERIFY_CA
    ssl_ca: ca.pem
    idle_timeout: 60
"""

TWO_ROUTES = """\
routes:
  - name: a
    listen: 127.0.0.1:3307
    upstream: a.example.com
  - name: b
    listen: 127.0.0.1:3308
    upstream: b.example.com
"""


# ---- flags alone --------------------------------------------------------------------------------


def test_flags_alone_make_one_route() -> None:
    config = config_of(
        "--upstream", "db.example.com", "--listen", "127.0.0.1:3307", "--ssl-mode", "verify_ca",
        "--ssl-ca", "/etc/tlsproxy/ca.pem", "--tls-version", "TLSv1.3", "--connect-timeout", "500ms",
        "--idle-timeout", "off", "--max-connections", "5", "--log-level", "debug", "--event-loop", "asyncio",
    )
    assert len(config.routes) == 1
    route = config.routes[0]
    assert route.name == "default"
    assert route.listen == TcpAddress("127.0.0.1", 3307)
    assert route.upstream == TcpAddress("db.example.com", 3306)
    assert route.tls.mode is SslMode.VERIFY_CA
    assert route.tls.ca_file == Path("/etc/tlsproxy/ca.pem")
    assert route.tls.tls_versions == ("TLSv1.3",)
    assert (route.connect_timeout, route.idle_timeout, route.max_connections) == (0.5, None, 5)
    assert (config.log_level, config.event_loop) == ("DEBUG", "asyncio")


FlagCase = tuple[list[str], Callable[[ProxyConfig], Any], Any]

# One row per flag: each one must reach its config key.
FLAG_TABLE: dict[str, FlagCase] = {
    "--listen": (["--listen", "[::1]:3307"], lambda c: c.routes[0].listen, TcpAddress("::1", 3307)),
    "--unix-socket-mode": (["--listen", "/run/t.sock", "--unix-socket-mode", "0600"], lambda c: c.routes[0].listen,
                           UnixAddress(Path("/run/t.sock"), 0o600)),
    "--upstream": (["--upstream", "[2001:db8::1]:3307"], lambda c: c.routes[0].upstream, TcpAddress("2001:db8::1", 3307)),
    "--ssl-mode": (["--ssl-mode", "REQUIRED"], lambda c: c.routes[0].tls.mode, SslMode.REQUIRED),
    "--ssl-ca": (["--ssl-ca", "/ca.p7b"], lambda c: c.routes[0].tls.ca_file, Path("/ca.p7b")),
    "--ssl-capath": (["--ssl-capath", "/etc/ssl/certs"], lambda c: c.routes[0].tls.ca_path, Path("/etc/ssl/certs")),
    "--ssl-cert/--ssl-key": (["--ssl-cert", "/c.pem", "--ssl-key", "/c.key"],
                             lambda c: (c.routes[0].tls.cert_file, c.routes[0].tls.key_file), (Path("/c.pem"), Path("/c.key"))),
    "--ssl-crl": (["--ssl-crl", "/crl.pem"], lambda c: c.routes[0].tls.crl_file, Path("/crl.pem")),
    "--tls-version": (["--tls-version", "TLSv1.2"], lambda c: c.routes[0].tls.tls_versions, ("TLSv1.2",)),
    "--ssl-cipher": (["--ssl-cipher", "ECDHE-RSA-AES128-GCM-SHA256"], lambda c: c.routes[0].tls.cipher,
                     "ECDHE-RSA-AES128-GCM-SHA256"),
    "--tls-ciphersuites": (["--tls-ciphersuites", "TLS_AES_128_GCM_SHA256"], lambda c: c.routes[0].tls.ciphersuites,
                           "TLS_AES_128_GCM_SHA256"),
    "--tls-server-name": (["--tls-server-name", "db.internal"], lambda c: c.routes[0].tls.server_name, "db.internal"),
    "--allow-legacy-tls": (["--allow-legacy-tls", "--tls-version", "TLSv1.1,TLSv1.2"],
                           lambda c: (c.routes[0].tls.allow_legacy_tls, c.routes[0].tls.tls_versions),
                           (True, ("TLSv1.1", "TLSv1.2"))),
    "--connect-timeout": (["--connect-timeout", "2.5"], lambda c: c.routes[0].connect_timeout, 2.5),
    "--handshake-timeout": (["--handshake-timeout", "1m"], lambda c: c.routes[0].handshake_timeout, 60.0),
    "--idle-timeout": (["--idle-timeout", "90"], lambda c: c.routes[0].idle_timeout, 90.0),
    "--max-connections": (["--max-connections", "7"], lambda c: c.routes[0].max_connections, 7),
    "--auth-rsa-key": (["--auth-rsa-key", "/k.pem"], lambda c: c.auth_rsa_key, Path("/k.pem")),
    "--event-loop": (["--event-loop", "asyncio"], lambda c: c.event_loop, "asyncio"),
    "--log-level": (["--log-level", "warning"], lambda c: c.log_level, "WARNING"),
    "--log-format": (["--log-format", "json"], lambda c: c.log_format, "json"),
    "--allow-non-loopback": (["--allow-non-loopback", "--listen", "0.0.0.0:3306"], lambda c: c.allow_non_loopback, True),
}


@pytest.mark.parametrize(("argv", "get", "want"), FLAG_TABLE.values(), ids=FLAG_TABLE.keys())
def test_each_flag_reaches_its_key(argv: list[str], get: Callable[[ProxyConfig], Any], want: Any) -> None:
    if "--upstream" not in argv:
        argv = ["--upstream", "db.example.com", *argv]
    assert get(config_of(*argv)) == want


def test_check_takes_the_same_flags() -> None:
    args = build_parser().parse_args(["check", "--upstream", "localhost:3307", "--ssl-ca", "/ca.pem"])
    assert args.command == "check"
    assert config_from_args(args).routes[0].upstream == TcpAddress("localhost", 3307)


# ---- flags and a config file ----------------------------------------------------------------------


def test_flags_override_the_single_route_of_a_file(tmp_path: Path) -> None:
    path = write(tmp_path / "conf" / "tlsproxy.yaml", ONE_ROUTE)
    config = config_of("--config", str(path), "--upstream", "other.example.com:3310", "--ssl-mode", "VERIFY_IDENTITY",
                       "--log-level", "ERROR")
    route = config.routes[0]
    assert route.upstream == TcpAddress("other.example.com", 3310)  # overridden
    assert route.tls.mode is SslMode.VERIFY_IDENTITY  # overridden
    assert route.name == "orders"  # kept from the file
    assert route.listen == TcpAddress("127.0.0.1", 3307)  # kept
    assert route.idle_timeout == 60.0  # kept
    assert route.tls.ca_file == tmp_path / "conf" / "ca.pem"  # kept, resolved against the file's directory
    assert config.log_level == "ERROR"  # top-level flag over the file


def test_file_alone(tmp_path: Path) -> None:
    path = write(tmp_path / "tlsproxy.yaml", ONE_ROUTE)
    config = config_of("-c", str(path))
    assert config.routes[0].name == "orders"
    assert config.log_level == "WARNING"


@pytest.mark.parametrize(("flags", "flag"), [
    (["--ssl-ca", "/ca.pem"], "--ssl-ca"),
    (["--upstream", "x.example.com"], "--upstream"),
    (["--max-connections", "3"], "--max-connections"),
])
def test_route_flags_with_a_multi_route_file_are_refused(tmp_path: Path, flags: list[str], flag: str) -> None:
    path = write(tmp_path / "tlsproxy.yaml", TWO_ROUTES)
    with pytest.raises(ConfigError) as error:
        config_of("--config", str(path), *flags)
    assert error.value.key == flag
    assert "the config file has 2 routes; set per-route values in the file" in error.value.problem


def test_top_level_flags_with_a_multi_route_file_are_fine(tmp_path: Path) -> None:
    path = write(tmp_path / "tlsproxy.yaml", TWO_ROUTES)
    config = config_of("--config", str(path), "--log-level", "DEBUG", "--log-format", "json")
    assert [route.name for route in config.routes] == ["a", "b"]
    assert (config.log_level, config.log_format) == ("DEBUG", "json")


def test_no_route_at_all_names_upstream() -> None:
    with pytest.raises(ConfigError) as error:
        config_of()
    assert error.value.key == "--upstream"
    assert "--upstream HOST:PORT" in error.value.problem and "--config" in error.value.problem


def test_file_without_routes_and_no_flags_names_upstream(tmp_path: Path) -> None:
    path = write(tmp_path / "tlsproxy.yaml", "log_level: INFO\n")
    with pytest.raises(ConfigError) as error:
        config_of("--config", str(path))
    assert error.value.key == "--upstream"


def test_flags_fill_a_file_without_routes(tmp_path: Path) -> None:
    path = write(tmp_path / "tlsproxy.yaml", "log_level: ERROR\n")
    config = config_of("--config", str(path), "--upstream", "db.example.com")
    assert config.routes[0].upstream.host == "db.example.com"
    assert config.log_level == "ERROR"


def test_security_is_validated() -> None:
    with pytest.raises(ConfigError) as error:
        config_of("--upstream", "db", "--listen", "0.0.0.0:3306")
    assert error.value.key == "routes[0].listen"
    assert "--allow-non-loopback" in error.value.problem


# ---- main ----------------------------------------------------------------------------------------

BAD_FLAGS = [
    (["--upstream", "db:3306", "--ssl-mode", "PREFERRED"], "routes[0].ssl_mode", "fall back to plaintext"),
    (["--upstream", "db:3306", "--ssl-mode", "VERIFY_FULL"], "routes[0].ssl_mode", "allowed: VERIFY_IDENTITY"),
    (["--upstream", "db:3306", "--tls-version", "TLSv1.1"], "routes[0].tls_version", "allow_legacy_tls"),
    (["--upstream", "db:3306", "--tls-version", "TLSv1.1,TLSv1.3", "--allow-legacy-tls"], "routes[0].tls_version", "contiguous"),
    (["--upstream", "db:3306", "--connect-timeout", "abc"], "routes[0].connect_timeout", "expected seconds"),
    (["--upstream", "db:3306", "--idle-timeout", "-1"], "routes[0].idle_timeout", "expected seconds"),
    (["--upstream", "db:3306", "--max-connections", "0"], "routes[0].max_connections", "at least 1"),
    (["--upstream", "db:3306", "--listen", "0.0.0.0:3306"], "routes[0].listen", "not a loopback address"),
    (["--upstream", "db:3306", "--listen", "::1:3306"], "routes[0].listen", "[::1]:3306"),
    (["--upstream", "db:3306", "--listen", "/tmp/t.sock", "--unix-socket-mode", "999"], "routes[0].unix_socket_mode", "octal"),
    (["--upstream", "db:3306", "--ssl-cert", "/c.pem"], "routes[0].ssl_key", "needs both"),
    (["--upstream", "::1"], "routes[0].upstream", "[::1]:3306"),
    (["--upstream", "db:3306", "--log-level", "TRACE"], "log_level", "allowed: DEBUG"),
    (["--config", "/nonexistent/tlsproxy.yaml"], "--config", "cannot read"),
    ([], "--upstream", "no route configured"),
]


@pytest.mark.parametrize("command", [[], ["run"], ["check"]], ids=["implicit run", "run", "check"])
@pytest.mark.parametrize(("argv", "key", "fragment"), BAD_FLAGS, ids=[" ".join(case[0]) or "no args" for case in BAD_FLAGS])
def test_main_reports_config_errors_with_exit_2(capsys: pytest.CaptureFixture[str], command: list[str], argv: list[str],
                                                key: str, fragment: str) -> None:
    assert main([*command, *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"tlsproxy: config error at '{key}': ")
    assert fragment in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert captured.out == ""
    assert captured.err.count("\n") == 1  # one line


def test_main_reports_tls_file_errors_with_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Files are opened when the TLS context is built (here by `check`): still a config error, not a traceback."""
    missing = tmp_path / "no-such-ca.pem"
    assert main(["check", "--upstream", "127.0.0.1:9", "--ssl-ca", str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("tlsproxy: config error at 'routes[0].ssl_ca': ")
    assert str(missing) in captured.err
    assert "Traceback" not in captured.err


def test_main_with_no_arguments_names_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err == ("tlsproxy: config error at '--upstream': no route configured: give --upstream HOST:PORT "
                   "(and --listen), or --config FILE\n")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"tlsproxy {__version__}\n"


@pytest.mark.parametrize("argv", [["--max-connections", "many"], ["--event-loop", "trio"], ["--no-such-flag"]])
def test_argparse_errors_exit_2_with_usage(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--upstream", "db", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage: tlsproxy" in err and "error:" in err and "Traceback" not in err


def test_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(word in out for word in ("run", "check", "demo"))


# ---- bugs ------------------------------------------------------------------------------------------


def test_relative_flag_paths_are_relative_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "conf" / "tlsproxy.yaml", ONE_ROUTE)
    monkeypatch.chdir(tmp_path)
    route: Route = config_of("--config", "conf/tlsproxy.yaml", "--ssl-ca", "my-ca.pem").routes[0]
    assert path.exists()
    assert route.tls.ca_file == tmp_path / "my-ca.pem", route.tls.ca_file


def test_flags_over_a_malformed_route_report_the_route(tmp_path: Path) -> None:
    path = write(tmp_path / "tlsproxy.yaml", "routes:\n  - db.example.com:3306\n")
    with pytest.raises(ConfigError) as error:
        config_of("--config", str(path), "--ssl-ca", "/ca.pem")
    assert error.value.key == "routes[0]", error.value
    assert "expected a mapping of route settings" in error.value.problem


# ---- TLSPROXY_* environment variables ---------------------------------------------------------------


def test_environment_variables_configure_a_route(tmp_path: Path) -> None:
    from tlsproxy.cli import build_parser, config_from_args

    environ = {"TLSPROXY_UPSTREAM": "db.example.com:3307", "TLSPROXY_LISTEN": "127.0.0.1:4000",
               "TLSPROXY_SSL_MODE": "verify_ca", "TLSPROXY_MAX_CONNECTIONS": "12",
               "TLSPROXY_ADMIN_LISTEN": "off", "TLSPROXY_ALLOW_LEGACY_TLS": "true",
               "TLSPROXY_TLS_VERSION": "TLSv1.1,TLSv1.2"}
    config = config_from_args(build_parser().parse_args(["run"]), environ)
    route = config.routes[0]
    assert str(route.upstream) == "db.example.com:3307" and str(route.listen) == "127.0.0.1:4000"
    assert route.tls.mode.value == "VERIFY_CA" and route.max_connections == 12
    assert route.tls.tls_versions == ("TLSv1.1", "TLSv1.2")
    assert config.admin_listen is None


def test_flags_win_over_environment_and_environment_over_the_file(tmp_path: Path) -> None:
    from tlsproxy.cli import build_parser, config_from_args

    config_file = tmp_path / "tlsproxy.yaml"
    config_file.write_text("routes:\n  - upstream: file.example.com:3306\n    max_connections: 5\n")
    environ = {"TLSPROXY_CONFIG": str(config_file), "TLSPROXY_UPSTREAM": "env.example.com:3306"}
    config = config_from_args(build_parser().parse_args(["run", "--upstream", "flag.example.com"]), environ)
    assert config.routes[0].upstream.host == "flag.example.com"
    assert config.routes[0].max_connections == 5
    config = config_from_args(build_parser().parse_args(["run"]), environ)
    assert config.routes[0].upstream.host == "env.example.com"


def test_bad_environment_value_names_the_variable() -> None:
    from tlsproxy.cli import build_parser, config_from_args
    from tlsproxy.config import ConfigError

    with pytest.raises(ConfigError) as error:
        config_from_args(build_parser().parse_args(["run", "--upstream", "db:3306"]), {"TLSPROXY_MAX_CONNECTIONS": "many"})
    assert error.value.key == "TLSPROXY_MAX_CONNECTIONS"


def test_workers_from_the_file_the_environment_and_the_flag(tmp_path: Path) -> None:
    from tlsproxy.cli import build_parser, config_from_args
    from tlsproxy.config import ConfigError

    config_file = tmp_path / "tlsproxy.yaml"
    config_file.write_text("workers: 3\nroutes:\n  - upstream: db.example.com:3306\n")
    parse = build_parser().parse_args
    assert config_from_args(parse(["run", "--config", str(config_file)]), {}).workers == 3
    assert config_from_args(parse(["run", "--config", str(config_file)]), {"TLSPROXY_WORKERS": "4"}).workers == 4
    assert config_from_args(parse(["run", "--config", str(config_file), "--workers", "2"]),
                            {"TLSPROXY_WORKERS": "4"}).workers == 2
    assert config_from_args(parse(["run", "--upstream", "db:3306"]), {}).workers == 1
    with pytest.raises(ConfigError) as error:
        config_from_args(parse(["run", "--upstream", "db:3306"]), {"TLSPROXY_WORKERS": "two"})
    assert error.value.key == "TLSPROXY_WORKERS"
    with pytest.raises(ConfigError) as error:
        config_from_args(parse(["run", "--upstream", "db:3306", "--workers", "0"]), {})
    assert error.value.key == "workers" and "from 1 to 256" in error.value.problem


def test_upstream_pool_from_the_flags_and_the_environment() -> None:
    args = build_parser().parse_args(["run", "--upstream", "db:3306", "--upstream-pool", "6",
                                      "--upstream-pool-idle-timeout", "45s"])
    route = config_from_args(args, {}).routes[0]
    assert (route.upstream_pool, route.upstream_pool_idle_timeout) == (6, 45.0)
    environ = {"TLSPROXY_UPSTREAM": "db:3306", "TLSPROXY_UPSTREAM_POOL": "3",
               "TLSPROXY_UPSTREAM_POOL_IDLE_TIMEOUT": "10"}
    route = config_from_args(build_parser().parse_args(["run"]), environ).routes[0]
    assert (route.upstream_pool, route.upstream_pool_idle_timeout) == (3, 10.0)
    with pytest.raises(ConfigError) as error:
        config_from_args(build_parser().parse_args(["run"]), {**environ, "TLSPROXY_UPSTREAM_POOL": "lots"})
    assert error.value.key == "TLSPROXY_UPSTREAM_POOL"
