"""Start-up checks from the threat model (SECURITY.md): a non-loopback listener is warned about loudly,
and the proxy's RSA key file must not be open to other users."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pki import TestPki
from tests.support.proxy import make_route
from tlsproxy import certs
from tlsproxy.cli import check_private_key_mode
from tlsproxy.config import ConfigError, ProxyConfig, TcpAddress, UnixAddress
from tlsproxy.server import Proxy, RouteListener, non_loopback_warning


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "2001:db8::1", "db.internal"])
def test_non_loopback_listener_is_named_as_plaintext(host: str) -> None:
    warning = non_loopback_warning(make_route(3306, listen=TcpAddress(host, 3306)))
    assert warning is not None
    assert f"listening on {TcpAddress(host, 3306)}, a NON-LOOPBACK address (allow_non_loopback)" in warning
    assert "PLAINTEXT" in warning


@pytest.mark.parametrize("listen", [TcpAddress("127.0.0.1", 3306), TcpAddress("::1", 3306),
                                    TcpAddress("localhost", 3306), UnixAddress(Path("/run/db.sock"), 0o600)])
def test_loopback_and_unix_listeners_are_not_warned_about(listen: object) -> None:
    assert non_loopback_warning(make_route(3306, listen=listen)) is None


def test_proxy_start_warns_about_a_non_loopback_listener(pki: TestPki, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    async def no_bind(self: RouteListener) -> None:  # tests listen on loopback only
        self.address = str(self.route.listen)

    monkeypatch.setattr(RouteListener, "start", no_bind)
    route = make_route(3306, listen=TcpAddress("0.0.0.0", 3306), ca_file=pki.ca)
    config = ProxyConfig(routes=(route,), allow_non_loopback=True, tls_files_check_interval=0)
    caplog.set_level(logging.INFO)
    asyncio.run(Proxy(config, None).start())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [non_loopback_warning(route)]


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "auth-rsa.pem"
    certs.AuthRsaKey.generate().write(path)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o666], ids=lambda mode: f"{mode:04o}")
def test_rsa_key_open_to_others_is_refused(key_file: Path, mode: int) -> None:
    os.chmod(key_file, mode)
    with pytest.raises(ConfigError) as error:
        check_private_key_mode(key_file)
    assert error.value.key == "auth_rsa_key"
    assert error.value.problem == (f"{key_file} has mode {mode:04o}: other users may read or change the key that "
                                   f"decrypts passwords; chmod 600 {key_file}")


def test_rsa_key_readable_by_its_group_is_warned_about(key_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    os.chmod(key_file, 0o640)
    check_private_key_mode(key_file)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"auth_rsa_key {key_file} has mode 0640: its group may read the key that decrypts passwords "
        "(chmod 600 unless that group is meant to)"]


def test_rsa_key_for_the_owner_only_passes_silently(key_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    os.chmod(key_file, 0o600)
    check_private_key_mode(key_file)
    os.chmod(key_file, 0o400)
    check_private_key_mode(key_file)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_proxy_refuses_to_start_with_a_world_readable_key(key_file: Path) -> None:
    """The real command: exit 2 with the reason, before listening (a proxy that started would run until
    the timeout kills it, and the test fails)."""
    os.chmod(key_file, 0o644)
    result = subprocess.run(
        [sys.executable, "-m", "tlsproxy", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
         "--ssl-mode", "REQUIRED", "--admin-listen", "off", "--auth-rsa-key", str(key_file)],
        capture_output=True, text=True, timeout=20,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"tlsproxy: config error at 'auth_rsa_key': {key_file} has mode 0644: other users may "
                             f"read or change the key that decrypts passwords; chmod 600 {key_file}\n")
