"""Shared setup of the atheris harnesses: the repository root on sys.path, tlsproxy instrumented for
coverage, and the properties of tests/support/hostile.py (the ones the hypothesis tests check)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import atheris

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["tlsproxy"]):
    import tlsproxy.mysql.codec  # noqa: F401
    import tlsproxy.mysql.handshake  # noqa: F401
    import tlsproxy.mysql.messages  # noqa: F401

from tests.support import hostile  # noqa: E402  (after the instrumented imports)

__all__ = ["hostile", "main", "u16"]


def u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "little")


def main(one_input: Callable[[bytes], None]) -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
