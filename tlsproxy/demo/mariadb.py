"""A throw-away local MariaDB server with TLS: its files, admin SQL, start, restart and stop.

Used by ``tlsproxy demo``, the integration-test fixtures and the benchmarks; start one with
:func:`tlsproxy.demo.localdb.start_mariadb`. The server lives entirely in a work directory: its own
datadir, ``my.cnf``, error log, pid file and unix socket. The system configuration (``/etc/mysql``) is
never read, because every program is started with ``--defaults-file`` (server) or ``--no-defaults``
(client).

Admin access goes over the unix socket as ``root@localhost`` with a random password that only
this object knows (kept in a mode-0600 client option file, never on a command line), so it works
the same whether the tests run as root (CI) or as an ordinary user.

This module does not import ``cryptography``: it takes paths to PEM files made elsewhere.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType

__all__ = [
    "LocalDatabaseError",
    "MariaDBBinaries",
    "MariaDBServer",
    "StartupFailedError",
]

# "tlsproxy.localdb": the logger name these lines have always had (log lines stay as they were).
logger = logging.getLogger("tlsproxy.localdb")

ADMIN_USER = "root"
STOP_TIMEOUT = 20.0
SQL_TIMEOUT = 60.0
ERROR_LOG_TAIL_LINES = 30
POLL_INTERVAL = 0.05

_ADDRESS_IN_USE_MARKERS = ("Address already in use", "errno: 98", "error: 98")

# Settings for a fast, small, test-only server. Order is kept in the written my.cnf.
_BASE_SETTINGS: Mapping[str, str] = MappingProxyType(
    {
        "skip-name-resolve": "",
        "skip-log-bin": "",
        "performance_schema": "OFF",
        "innodb_buffer_pool_size": "32M",
        "innodb_log_file_size": "16M",
        "innodb_flush_log_at_trx_commit": "2",
        "innodb_doublewrite": "0",
        "max_connections": "2000",
        "max_allowed_packet": "1G",
        "table_open_cache": "400",
        "key_buffer_size": "1M",
        "loose-feedback": "OFF",
    }
)


class LocalDatabaseError(Exception):
    """The local MariaDB could not be set up, started, queried or stopped.

    The message says what failed and, where there is one, ends with the tail of the server's error log.
    """


class StartupFailedError(LocalDatabaseError):
    """mariadbd exited while starting; ``address_in_use`` says whether its port was taken."""

    def __init__(self, message: str, *, address_in_use: bool) -> None:
        super().__init__(message)
        self.address_in_use = address_in_use


# --------------------------------------------------------------------------------------------
# Binaries
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MariaDBBinaries:
    server: Path  # mariadbd (or mysqld)
    install_db: Path  # mariadb-install-db (or mysql_install_db)
    client: Path  # mariadb (or mysql)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def running_as_root() -> bool:
    return os.geteuid() == 0


def _tail(path: Path, lines: int = ERROR_LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def with_error_log(message: str, log_path: Path) -> str:
    tail = _tail(log_path)
    if not tail:
        return message
    return f"{message}\n--- last lines of {log_path} ---\n{tail}"


def _option_file(group: str, options: Mapping[str, str]) -> str:
    lines = [f"[{group}]"]
    for key, value in options.items():
        lines.append(key if value == "" else f"{key}={value}")
    return "\n".join(lines) + "\n"


def _write_private_text(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)



def _unescape_batch_field(value: str) -> str:
    """Undo the escaping of ``mariadb --batch`` output (\\t, \\n, \\\\, \\0)."""
    if "\\" not in value:
        return value
    out: list[str] = []
    chars = iter(value)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        following = next(chars, "")
        out.append({"t": "\t", "n": "\n", "0": "\0", "\\": "\\"}.get(following, "\\" + following))
    return "".join(out)


def _parse_batch_output(stdout: str) -> list[list[str]]:
    return [[_unescape_batch_field(field_) for field_ in line.split("\t")] for line in stdout.splitlines()]


def _quote_sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


@dataclass
class MariaDBServer:
    """A running (or stopped) local MariaDB. ``basedir`` is the work directory holding everything."""

    basedir: Path
    datadir: Path
    socket_path: Path
    host: str
    port: int
    binaries: MariaDBBinaries
    admin_user: str = ADMIN_USER
    admin_password: str = field(default="", repr=False)
    ssl_ca: Path | None = None
    ssl_cert: Path | None = None
    ssl_key: Path | None = None
    tls_version: str | None = "TLSv1.2,TLSv1.3"
    require_secure_transport: bool = False
    extra_options: Mapping[str, str] = field(default_factory=dict)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _socket_dir: Path | None = field(default=None, repr=False)  # short temp dir for the socket, if any

    # ---- paths ----------------------------------------------------------------------------

    @property
    def defaults_file(self) -> Path:
        return self.basedir / "my.cnf"

    @property
    def client_defaults_file(self) -> Path:
        return self.basedir / "client.cnf"

    @property
    def error_log(self) -> Path:
        return self.basedir / "error.log"

    @property
    def pid_file(self) -> Path:
        return self.basedir / "mariadbd.pid"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # ---- configuration --------------------------------------------------------------------

    def _server_options(self) -> dict[str, str]:
        options: dict[str, str] = {
            "datadir": str(self.datadir),
            "socket": str(self.socket_path),
            "pid-file": str(self.pid_file),
            "log-error": str(self.error_log),
            "tmpdir": str(self.tmpdir),  # its own: temporary tables of servers sharing /tmp can clash
            "bind-address": self.host,
            "port": str(self.port),
        }
        if running_as_root():
            options["user"] = current_user()  # mariadbd refuses to run as root without it
        options.update(_BASE_SETTINGS)
        tls_files = {"ssl-ca": self.ssl_ca, "ssl-cert": self.ssl_cert, "ssl-key": self.ssl_key}
        options.update({key: str(Path(path).resolve()) for key, path in tls_files.items() if path is not None})
        if self.tls_version:
            options["tls_version"] = self.tls_version
        if self.require_secure_transport:
            options["require_secure_transport"] = "ON"
        options.update(self.extra_options)
        return options

    @property
    def tmpdir(self) -> Path:
        return self.datadir.parent / f"{self.datadir.name}-tmp"

    def write_config(self) -> None:
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.defaults_file.write_text(_option_file("mariadbd", self._server_options()), encoding="utf-8")
        client_options = {"user": self.admin_user, "password": self.admin_password, "socket": str(self.socket_path)}
        if self.tls_version and "TLSv1.2" not in self.tls_version and "TLSv1.3" not in self.tls_version:
            # A server restricted to TLS 1.0/1.1 (the security tests' legacy server): the client's own TLS
            # on this unix socket fails, and the admin needs none there.
            client_options["skip-ssl"] = ""
        _write_private_text(self.client_defaults_file, _option_file("client", client_options))

    # ---- admin SQL ------------------------------------------------------------------------

    def admin_command(self, *args: str) -> list[str]:
        """argv for the ``mariadb`` CLI logged in as the admin over the unix socket."""
        return [str(self.binaries.client), f"--defaults-file={self.client_defaults_file}", *args]

    def sql(self, statement: str, *, database: str | None = None, timeout: float = SQL_TIMEOUT) -> list[list[str]]:
        """Run SQL as the admin over the unix socket; return the rows, each a list of column strings.

        NULL comes back as the string "NULL". Raises LocalDatabaseError with the client's stderr on failure.
        """
        args = ["--batch", "--skip-column-names", "--connect-timeout=5"]
        if database is not None:
            args.append(f"--database={database}")
        args += ["--execute", statement]
        try:
            result = subprocess.run(
                self.admin_command(*args),
                capture_output=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as error:
            raise LocalDatabaseError(f"SQL timed out after {timeout:g} s: {statement[:200]}") from error
        if result.returncode != 0:
            stderr = result.stderr.decode("utf-8", errors="replace").strip()
            raise LocalDatabaseError(f"SQL failed ({stderr}): {statement[:200]}")
        return _parse_batch_output(result.stdout.decode("utf-8", errors="replace"))

    def client_command(self, *args: str) -> list[str]:
        """argv for the ``mariadb`` CLI connecting over TCP to host:port; TLS flags are up to the caller."""
        return [
            str(self.binaries.client),
            "--no-defaults",
            f"--host={self.host}",
            f"--port={self.port}",
            "--protocol=TCP",
            *args,
        ]

    # ---- lifecycle ------------------------------------------------------------------------

    def launch(self, *, first_start: bool, startup_timeout: float) -> None:
        """Start mariadbd with the current my.cnf and wait until admin SQL works."""
        if self._socket_dir is not None:
            self._socket_dir.mkdir(mode=0o700, exist_ok=True)
        self.write_config()
        argv = [str(self.binaries.server), f"--defaults-file={self.defaults_file}"]
        if first_start:
            argv.append(f"--init-file={self._write_init_file()}")
        log_offset = self.error_log.stat().st_size if self.error_log.exists() else 0
        logger.debug("starting mariadbd on %s:%d (datadir %s)", self.host, self.port, self.datadir)
        # Messages printed before mariadbd opens log-error (bad options) land in the same log.
        with self.error_log.open("ab") as early_log:
            # Its own session: a fault that makes mariadbd signal its process group (seen with a broken
            # auth_pam_tool) must not reach the caller.
            self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=early_log, stderr=early_log,
                                             start_new_session=True)
        try:
            self._wait_until_ready(startup_timeout, log_offset)
        except BaseException:
            # Not ready (an error, Ctrl-C): killed, as a SIGTERM during start-up can wait for STOP_TIMEOUT.
            self._kill()
            raise
        finally:
            if first_start:
                (self.basedir / "init.sql").unlink(missing_ok=True)

    def _write_init_file(self) -> Path:
        password = _quote_sql_string(self.admin_password)
        statement = (
            f"ALTER USER '{self.admin_user}'@'localhost' IDENTIFIED VIA unix_socket "
            f"OR mysql_native_password USING PASSWORD({password});\n"
        )
        path = self.basedir / "init.sql"
        _write_private_text(path, statement)
        return path

    def _new_log_text(self, offset: int) -> str:
        try:
            with self.error_log.open("rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _wait_until_ready(self, timeout: float, log_offset: int) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        last_error: LocalDatabaseError | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise StartupFailedError(
                    with_error_log(f"mariadbd exited with status {code} during startup", self.error_log),
                    address_in_use=any(m in self._new_log_text(log_offset) for m in _ADDRESS_IN_USE_MARKERS),
                )
            if self.socket_path.exists():
                try:
                    self.sql("SELECT 1", timeout=max(1.0, deadline - time.monotonic()))
                    return
                except LocalDatabaseError as error:
                    last_error = error
            time.sleep(POLL_INTERVAL)
        self._kill()
        detail = f" (last error: {last_error})" if last_error else ""
        raise LocalDatabaseError(with_error_log(f"mariadbd was not ready after {timeout:g} s{detail}", self.error_log))

    def check_tls(self) -> None:
        if self.ssl_cert is None:
            return
        rows = self.sql("SELECT @@have_ssl")
        if rows != [["YES"]]:
            state = rows[0][0] if rows and rows[0] else "?"
            self.stop()
            raise LocalDatabaseError(
                with_error_log(
                    f"mariadbd started but TLS is not enabled (have_ssl={state}); check the TLS files", self.error_log
                )
            )

    def restart(
        self,
        *,
        ssl_cert: Path | None = None,
        ssl_key: Path | None = None,
        ssl_ca: Path | None = None,
        tls_version: str | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        """Stop and start again on the same datadir and port. A TLS argument left None keeps its current value."""
        self._terminate()
        if ssl_cert is not None:
            self.ssl_cert = Path(ssl_cert)
        if ssl_key is not None:
            self.ssl_key = Path(ssl_key)
        if ssl_ca is not None:
            self.ssl_ca = Path(ssl_ca)
        if tls_version is not None:
            self.tls_version = tls_version
        try:
            self.launch(first_start=False, startup_timeout=startup_timeout)
        except StartupFailedError as error:
            raise LocalDatabaseError(str(error)) from None
        self.check_tls()
        logger.info("restarted local MariaDB on %s:%d", self.host, self.port)

    def _terminate(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after STOP_TIMEOUT); keep the work directory."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning("mariadbd (pid %d) did not stop within %g s; killing it", process.pid, STOP_TIMEOUT)
            process.kill()
            process.wait()

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM, up to 20 s, then SIGKILL). Safe to call more than once."""
        was_running = self.running
        self._terminate()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if was_running:
            logger.info("stopped local MariaDB on %s:%d", self.host, self.port)

    def __enter__(self) -> MariaDBServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
