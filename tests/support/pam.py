"""A throw-away PAM service for tests: one user, one password, no system account, no network.

The service file ``/etc/pam.d/tlsproxy-test-<random>`` says::

    auth    required pam_exec.so expose_authtok quiet <workdir>/pam-check.sh
    account required pam_permit.so

pam_exec (Debian: libpam-modules, priority "required", so always installed) asks the PAM conversation for the
password, writes it NUL-terminated to the script's stdin and passes the user in ``$PAM_USER``. The script accepts
exactly one user/password pair and appends one line per attempt (user and verdict, never the password) to a log
the tests read, which proves PAM was really consulted.

Which MariaDB plugin runs PAM (see `server_plugin`):

* ``auth_pam`` (v2, the default one) runs PAM in the setuid-root helper
  ``<plugin_dir>/auth_pam_tool_dir/auth_pam_tool``. The directory is mode 0700 (owner root here; Debian's
  maintainer script may hand it to ``mysql``), so only a mariadbd running as that owner (CI: root) can start it.
* ``auth_pam_v1`` runs PAM inside mariadbd itself. That works for any user with pam_exec (the script runs as the
  mariadbd user), so it is the fallback when the helper cannot be executed.

Never load v2 when the helper is not executable: MariaDB 10.11.19 then logs "pam: cannot exec ... (errno: 13)"
and its clean-up (``waitpid``/``kill`` on the never-set pid of a failed ``posix_spawn``) SIGKILLs mariadbd's
whole process group, which includes the pytest process that started it.

Writing /etc/pam.d needs root. As root (CI) anything missing is a test failure; as an ordinary user the tests are
skipped with the reason (`PamUnavailable.skippable`).
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PAM_DIR = Path("/etc/pam.d")
SERVICE_PREFIX = "tlsproxy-test-"
PAM_TOOL = Path("auth_pam_tool_dir") / "auth_pam_tool"
_SAFE = re.compile(r"^[A-Za-z0-9_.@%+=:,-]+$")  # what may be pasted into the check script unquoted-safe
_MODULE_DIRS = ("/lib/*/security", "/usr/lib/*/security", "/lib/security", "/usr/lib/security",
                "/lib64/security", "/usr/lib64/security")


class PamUnavailable(Exception):
    """PAM cannot be set up here. `skippable` is True when that is expected (not root), False when it is a bug."""

    def __init__(self, message: str, *, skippable: bool) -> None:
        super().__init__(message)
        self.skippable = skippable


@dataclass(frozen=True)
class PamService:
    name: str  # the PAM service name (IDENTIFIED VIA pam USING '<name>')
    service_file: Path
    script: Path
    log: Path
    user: str
    password: str

    def attempts(self) -> list[tuple[str, str]]:
        """(user, "ok" | "denied") for every authentication the script has judged so far."""
        try:
            lines = self.log.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [tuple(line.split(" ", 1)) for line in lines if " " in line]  # type: ignore[misc]


def running_as_root() -> bool:
    return os.geteuid() == 0


def find_pam_module(name: str) -> Path | None:
    for pattern in _MODULE_DIRS:
        for directory in sorted(glob.glob(pattern)):
            candidate = Path(directory) / name
            if candidate.exists():
                return candidate
    return None


def mariadb_plugin_dir(server_binary: Path | str = "mariadbd") -> Path:
    """The compiled-in plugin_dir of mariadbd (the tests' servers do not override it)."""
    result = subprocess.run([str(server_binary), "--no-defaults", "--verbose", "--help"], capture_output=True,
                            text=True, timeout=30, check=False, stdin=subprocess.DEVNULL)
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("plugin-dir", "plugin_dir"):
            return Path(parts[1])
    raise PamUnavailable(f"cannot find mariadbd's plugin-dir in `{server_binary} --verbose --help`",
                         skippable=False)


def server_plugin(plugin_dir: Path) -> str:
    """The plugin library to load: ``auth_pam`` if this process (= mariadbd's user) may run its helper, else v1."""
    v2 = plugin_dir / "auth_pam.so"
    v1 = plugin_dir / "auth_pam_v1.so"
    if v2.exists() and os.access(plugin_dir / PAM_TOOL, os.X_OK):
        return "auth_pam"
    if v1.exists():
        return "auth_pam_v1"
    if v2.exists():
        raise PamUnavailable(f"{plugin_dir / PAM_TOOL} is not executable by uid {os.geteuid()} and "
                             f"{v1.name} is missing", skippable=not running_as_root())
    raise PamUnavailable(f"MariaDB's PAM plugin is missing from {plugin_dir} (Debian: it ships in "
                         "mariadb-server)", skippable=False)


def _check_script(user: str, password: str, log: Path) -> str:
    return f"""#!/bin/sh
# pam_exec expose_authtok: the password arrives on stdin, NUL-terminated; the user is in $PAM_USER.
password=$(tr -d '\\000')
if [ "$PAM_USER" = '{user}' ] && [ "$password" = '{password}' ]; then
    echo "$PAM_USER ok" >> '{log}'
    exit 0
fi
echo "$PAM_USER denied" >> '{log}'
exit 1
"""


def _remove_stale_services() -> None:
    """Drop service files a killed run left behind: ours by prefix, and only when their script is gone."""
    for path in PAM_DIR.glob(SERVICE_PREFIX + "*"):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        scripts = re.findall(r"pam_exec\.so\s+.*?(/\S+pam-check\.sh)", text)
        if scripts and not any(Path(script).exists() for script in scripts):
            path.unlink(missing_ok=True)


def _check_environment() -> None:
    if find_pam_module("pam_exec.so") is None:
        raise PamUnavailable("pam_exec.so not found (Debian: apt-get install libpam-modules)",
                             skippable=False)
    if find_pam_module("pam_permit.so") is None:
        raise PamUnavailable("pam_permit.so not found (Debian: apt-get install libpam-modules)",
                             skippable=False)
    if not os.access(PAM_DIR, os.W_OK):
        hint = ("" if running_as_root() else
                "; run the tests as root (as CI does) to cover mysql_clear_password against a real PAM")
        raise PamUnavailable(f"{PAM_DIR} is not writable by uid {os.geteuid()}{hint}",
                             skippable=not running_as_root())


@contextmanager
def pam_service(workdir: Path, user: str, password: str) -> Iterator[PamService]:
    """Install a PAM service that accepts only `user`/`password`; remove it on exit."""
    for value in (user, password):
        if not _SAFE.match(value):
            raise ValueError(f"{value!r}: use only letters, digits and _.@%+=:,- for the test user and password")
    _check_environment()
    workdir = Path(workdir).resolve()
    if not _SAFE.match(str(workdir).replace("/", "")):
        raise ValueError(f"{workdir}: the PAM work directory path must be shell- and PAM-config-safe")
    workdir.mkdir(parents=True, exist_ok=True)
    _remove_stale_services()
    name = SERVICE_PREFIX + secrets.token_hex(6)
    log = workdir / "pam-attempts.log"
    script = workdir / "pam-check.sh"
    script.write_text(_check_script(user, password, log), encoding="utf-8")
    script.chmod(0o700)
    service_file = PAM_DIR / name
    fd = os.open(service_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"# tlsproxy test service; removed when the test module ends\n"
                         f"auth    required pam_exec.so expose_authtok quiet {script}\n"
                         f"account required pam_permit.so\n")
        yield PamService(name=name, service_file=service_file, script=script, log=log, user=user,
                         password=password)
    finally:
        service_file.unlink(missing_ok=True)
