"""Find the MariaDB programs and start a throw-away local MariaDB with TLS (:func:`start_mariadb`).

A fresh datadir is initialised under a work directory (``mariadb-install-db``, root reachable only over
the unix socket), then the server starts on host:port; with port 0 a free port is picked, and picked
again if another process takes it first. The server object itself is :class:`MariaDBServer`
(tlsproxy/demo/mariadb.py).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from tlsproxy.demo.mariadb import (
    LocalDatabaseError,
    MariaDBBinaries,
    MariaDBServer,
    StartupFailedError,
    current_user,
    running_as_root,
    with_error_log,
)

__all__ = ["find_mariadb_binaries", "start_mariadb"]

# "tlsproxy.localdb": the logger name these lines have always had (log lines stay as they were).
logger = logging.getLogger("tlsproxy.localdb")

INSTALL_HINT = "apt-get install mariadb-server mariadb-client"
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes; keep a margin
PORT_ATTEMPTS = 3

_SERVER_NAMES = ("mariadbd", "mysqld")
_INSTALL_DB_NAMES = ("mariadb-install-db", "mysql_install_db")
_CLIENT_NAMES = ("mariadb", "mysql")
EXTRA_DIRS = ("/usr/sbin", "/usr/libexec", "/usr/local/sbin", "/usr/local/bin", "/usr/local/mysql/bin")


# --------------------------------------------------------------------------------------------
# Binaries
# --------------------------------------------------------------------------------------------


def _find_program(names: tuple[str, ...]) -> Path | None:
    search_path = os.pathsep.join([os.environ.get("PATH", ""), *EXTRA_DIRS])
    for name in names:
        found = shutil.which(name, path=search_path)
        if found is not None:
            return Path(found)
    return None


def find_mariadb_binaries() -> MariaDBBinaries:
    """Locate mariadbd, mariadb-install-db and the mariadb client, or explain how to install them."""
    found = {
        "server": _find_program(_SERVER_NAMES),
        "install_db": _find_program(_INSTALL_DB_NAMES),
        "client": _find_program(_CLIENT_NAMES),
    }
    missing = [name for name, path in found.items() if path is None]
    if missing:
        wanted = {"server": "mariadbd", "install_db": "mariadb-install-db", "client": "mariadb"}
        names = ", ".join(wanted[name] for name in missing)
        raise LocalDatabaseError(f"MariaDB programs not found: {names}. Install them with: {INSTALL_HINT}")
    return MariaDBBinaries(**found)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def pick_free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _short_socket_path(workdir: Path) -> tuple[Path, Path | None]:
    """Return (socket path, temp dir to remove later or None)."""
    candidate = workdir / "mysqld.sock"
    if len(os.fsencode(candidate)) <= MAX_SOCKET_PATH:
        return candidate, None
    short_dir = Path(tempfile.mkdtemp(prefix="tlsproxy-db-"))
    return short_dir / "mysqld.sock", short_dir


# --------------------------------------------------------------------------------------------
# Starting
# --------------------------------------------------------------------------------------------


def _install_datadir(binaries: MariaDBBinaries, server: MariaDBServer) -> None:
    server.write_config()
    argv = [
        str(binaries.install_db),
        f"--defaults-file={server.defaults_file}",
        f"--datadir={server.datadir}",
        "--auth-root-authentication-method=socket",
        "--skip-test-db",
    ]
    if running_as_root():
        argv.append(f"--user={current_user()}")
    result = subprocess.run(argv, capture_output=True, check=False, stdin=subprocess.DEVNULL, timeout=120)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode("utf-8", errors="replace").strip()
        output_tail = "\n".join(output.splitlines()[-10:])
        raise LocalDatabaseError(
            with_error_log(f"mariadb-install-db failed with status {result.returncode}:\n{output_tail}", server.error_log)
        )


def start_mariadb(
    workdir: Path,
    *,
    ssl_ca: Path | None,
    ssl_cert: Path | None,
    ssl_key: Path | None,
    host: str = "127.0.0.1",
    port: int = 0,
    tls_version: str = "TLSv1.2,TLSv1.3",
    require_secure_transport: bool = False,
    extra_options: Mapping[str, str] = MappingProxyType({}),
    startup_timeout: float = 60.0,
) -> MariaDBServer:
    """Initialise a fresh datadir under ``workdir`` and start MariaDB on host:port (0 = a free port).

    Returns once admin SQL works over the unix socket and, if a certificate was given, TLS is on.
    """
    binaries = find_mariadb_binaries()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    datadir = workdir / "data"
    if datadir.exists() and any(datadir.iterdir()):
        raise LocalDatabaseError(f"{datadir} already holds a datadir; start_mariadb needs a fresh work directory")
    socket_path, socket_dir = _short_socket_path(workdir)
    server = MariaDBServer(
        basedir=workdir,
        datadir=datadir,
        socket_path=socket_path,
        host=host,
        port=port or pick_free_port(host),
        binaries=binaries,
        admin_password=secrets.token_urlsafe(24),
        ssl_ca=ssl_ca,
        ssl_cert=ssl_cert,
        ssl_key=ssl_key,
        tls_version=tls_version,
        require_secure_transport=require_secure_transport,
        extra_options=dict(extra_options),
        _socket_dir=socket_dir,
    )
    began = time.monotonic()
    try:
        _install_datadir(binaries, server)
        _start_with_port_retries(server, pick_port=port == 0, startup_timeout=startup_timeout)
        server.check_tls()
    except BaseException:
        server.stop()
        raise
    logger.info(
        "local MariaDB ready on %s:%d (socket %s) in %.2f s", host, server.port, socket_path, time.monotonic() - began
    )
    return server


def _start_with_port_retries(server: MariaDBServer, *, pick_port: bool, startup_timeout: float) -> None:
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            server.launch(first_start=True, startup_timeout=startup_timeout)
            return
        except StartupFailedError as error:
            if not (pick_port and error.address_in_use and attempt < PORT_ATTEMPTS):
                raise LocalDatabaseError(str(error)) from None
            logger.info("port %d was taken; retrying with another port", server.port)
            server.port = pick_free_port(server.host)
