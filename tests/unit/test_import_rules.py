"""Import rules of STYLE.md §2, read from the source with `ast` (nothing is imported or executed).

* tlsproxy/mysql/ is sans-IO: no asyncio, ssl, socket, logging, yaml or prometheus_client, directly or
  through `from ... import`, at any depth of the module (functions, `if TYPE_CHECKING:` blocks included).
* From the package, tlsproxy/mysql/ modules import only tlsproxy.errors, tlsproxy.outcome and tlsproxy.mysql.*.
* tlsproxy/config.py imports nothing from tlsproxy.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "tlsproxy"
MYSQL_MODULES = sorted((PACKAGE_ROOT / "mysql").glob("*.py"))
FORBIDDEN_IN_CORE = {"asyncio", "ssl", "socket", "logging", "yaml", "prometheus_client"}


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
                if node.module is None:  # `from . import x` imports submodules
                    names.update(f"{target}.{alias.name}" for alias in node.names)
                else:
                    names.add(target)
            else:
                assert node.module is not None
                names.add(node.module)
                # `from tlsproxy import config` imports the submodule tlsproxy.config
                if node.module == "tlsproxy":
                    names.update(f"tlsproxy.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def test_the_mysql_package_exists() -> None:
    assert {p.name for p in MYSQL_MODULES} >= {"__init__.py", "constants.py", "codec.py", "messages.py",
                                               "handshake.py"}


@pytest.mark.parametrize("path", MYSQL_MODULES, ids=lambda p: p.name)
def test_core_does_no_io_and_no_logging(path: Path) -> None:
    offending = {name for name in imported_modules(path) if name.split(".")[0] in FORBIDDEN_IN_CORE}
    assert not offending, f"{path.name} imports {sorted(offending)}"


@pytest.mark.parametrize("path", MYSQL_MODULES, ids=lambda p: p.name)
def test_core_imports_only_errors_and_mysql_from_the_package(path: Path) -> None:
    internal = {name for name in imported_modules(path) if name.split(".")[0] == "tlsproxy"}
    allowed = {name for name in internal
               if name in ("tlsproxy.errors", "tlsproxy.outcome") or name.startswith("tlsproxy.mysql.")}
    assert internal == allowed, f"{path.name} imports {sorted(internal - allowed)}"


def test_config_imports_nothing_from_the_package() -> None:
    internal = {name for name in imported_modules(PACKAGE_ROOT / "config.py") if name.split(".")[0] == "tlsproxy"}
    assert not internal, f"config.py imports {sorted(internal)}"


def test_errors_imports_only_mysql_constants() -> None:
    internal = {name for name in imported_modules(PACKAGE_ROOT / "errors.py") if name.split(".")[0] == "tlsproxy"}
    assert internal <= {"tlsproxy.mysql.constants", "tlsproxy.outcome"}, f"errors.py imports {sorted(internal)}"


def test_outcome_imports_nothing_from_the_package() -> None:
    internal = {name for name in imported_modules(PACKAGE_ROOT / "outcome.py") if name.split(".")[0] == "tlsproxy"}
    assert not internal, f"outcome.py imports {sorted(internal)}"


# the checker itself: it must see every spelling of an import


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import asyncio", {"asyncio"}),
        ("import ssl as _ssl", {"ssl"}),
        ("from socket import socket", {"socket"}),
        ("from logging.handlers import X", {"logging.handlers"}),
        ("def f():\n    import yaml", {"yaml"}),
        ("if TYPE_CHECKING:\n    from prometheus_client import Counter", {"prometheus_client"}),
        ("from . import codec", {"tlsproxy.mysql.codec"}),
        ("from .messages import X", {"tlsproxy.mysql.messages"}),
        ("from .. import session", {"tlsproxy.session"}),
        ("from ..tls import make_context", {"tlsproxy.tls"}),
        ("from tlsproxy import metrics", {"tlsproxy", "tlsproxy.metrics"}),
        ("__import__('asyncio')", {"asyncio"}),
    ],
)
def test_import_checker_sees_every_spelling(tmp_path: Path, source: str, expected: set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    fake_root = tmp_path / "tlsproxy"
    (fake_root / "mysql").mkdir(parents=True)
    module = fake_root / "mysql" / "probe.py"
    module.write_text(source + "\n", encoding="utf-8")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE_ROOT"]), "PACKAGE_ROOT", fake_root)
    assert imported_modules(module) == expected
