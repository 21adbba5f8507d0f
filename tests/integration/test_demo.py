"""README's first command, `tlsproxy demo --once`, run as users run it."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_once() -> None:
    result = subprocess.run([sys.executable, "-m", "tlsproxy", "demo", "--once"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ssl_version" in result.stdout and "TLSv1." in result.stdout
    assert "Ssl_cipher" in result.stdout
    assert "--skip-ssl -u demo" in result.stdout
    assert "Traceback" not in result.stderr
