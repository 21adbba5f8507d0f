"""Import rules of STYLE.md §2, read from the source with `ast` (nothing is imported or executed).

* tlsproxy/mysql/ is sans-IO: no asyncio, ssl, socket, logging, yaml or prometheus_client, directly or
  through `from ... import`, at any depth of the module (functions, `if TYPE_CHECKING:` blocks included).
* From the package, tlsproxy/mysql/ modules import only tlsproxy.errors, tlsproxy.outcome and tlsproxy.mysql.*.
* tlsproxy/config.py imports nothing from tlsproxy.
* The layering as a table (ALLOWED_IMPORTS): every module of tlsproxy/ has a row naming the tlsproxy
  modules it may import; a new module fails until it gets one. Nothing imports cli; nothing in the
  product imports tlsproxy/demo/ (except cli, for `tlsproxy demo`); only certs and demo/pki import
  `cryptography`; tlsproxy/ imports its own modules at the top of a module, not inside functions.
* No import cycle in tlsproxy/ or bench/, imports inside functions included.
* No private name (a leading underscore) is imported or reached across modules in tlsproxy/, bench/, tests/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = REPO / "tlsproxy"
MYSQL_MODULES = sorted((PACKAGE_ROOT / "mysql").glob("*.py"))
FORBIDDEN_IN_CORE = {"asyncio", "ssl", "socket", "logging", "yaml", "prometheus_client"}


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_statements(path: Path, module: str) -> list[tuple[ast.Import | ast.ImportFrom, str, list[str]]]:
    """(statement, absolute module, names after `import`) for every import anywhere in the file, relative
    imports resolved against the package of `module` (the file's dotted name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[ast.Import | ast.ImportFrom, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                assert node.module is not None
                target = node.module
            found.append((node, target, [alias.name for alias in node.names]))
    return found


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved against its package)."""
    names: set[str] = set()
    for node, target, items in import_statements(path, _module_name(path)):
        if isinstance(node, ast.ImportFrom) and node.level and node.module is None:
            names.update(f"{target}.{item}" for item in items)  # `from . import x` imports submodules
            continue
        names.add(target)
        if target == "tlsproxy":  # `from tlsproxy import config` imports the submodule tlsproxy.config
            names.update(f"tlsproxy.{item}" for item in items)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "__import__":
            if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
                names.add(call.args[0].value)
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


# ---- the layering of STYLE.md §2, as a table -------------------------------------------------------

ANY = frozenset({"*"})
"""Any module of tlsproxy (the rules below still hold: nothing imports cli, the product not the demo)."""
CORE = frozenset({"errors", "outcome", "mysql.*"})
"""The sans-IO core: errors, outcome and tlsproxy/mysql/. A module of tlsproxy/mysql/ imports nothing else."""

# Module of tlsproxy/ (its name without "tlsproxy."; a package by its own name, the top package as
# "__init__") -> the tlsproxy modules it may import ("mysql.*": any module of tlsproxy/mysql/).
# Importing the top package itself (`from tlsproxy import __version__`) is open to every module.
# To add a module: one row, and its name in the rows of the modules that may import it.
ALLOWED_IMPORTS: dict[str, frozenset[str]] = {
    "__init__": frozenset(),
    "__main__": frozenset({"cli"}),
    # the sans-IO core
    "outcome": frozenset(),
    "errors": frozenset({"mysql.constants", "outcome"}),
    "mysql": frozenset(),
    "mysql.constants": frozenset(),
    "mysql.codec": frozenset({"mysql.constants"}),
    "mysql.messages": frozenset({"mysql.constants", "mysql.codec"}),
    "mysql.effects": frozenset({"outcome"}),
    "mysql.states": frozenset(),
    "mysql.greeting": frozenset({"errors", "mysql.codec", "mysql.constants", "mysql.messages"}),
    "mysql.rsa_exchange": frozenset({"errors", "mysql.constants", "mysql.effects"}),
    "mysql.command_watcher": frozenset({"mysql.codec", "mysql.constants"}),
    "mysql.response_follower": frozenset({"mysql.constants"}),
    "mysql.machine_core": CORE,
    "mysql.prewarm_adoption": CORE,
    "mysql.handshake": CORE,
    # leaves: nothing from the package
    "config": frozenset(),
    "config_file": frozenset({"config"}),
    "logs": frozenset(),
    "allocator": frozenset(),
    "certs": frozenset(),
    "tls_sessions": frozenset(),
    "metrics": frozenset(),
    "metrics_merge": frozenset(),
    "descriptors": frozenset(),
    # the driver: TLS, connections, listeners, admin
    "tls": frozenset({"config", "certs", "errors", "outcome", "tls_sessions"}),
    "tls_leg": frozenset({"descriptors", "errors", "tls"}),
    "prewarm": CORE | {"config", "descriptors", "metrics", "logs", "tls", "tls_leg"},
    "connection_record": frozenset({"config", "metrics", "outcome"}),
    "upstream": frozenset({"config", "connection_record", "descriptors", "errors", "tls", "tls_leg"}),
    "upstream_pool": CORE | {"config", "metrics"},
    "session_upstream": CORE | {"config", "connection_record", "metrics", "prewarm", "tls", "upstream", "upstream_pool"},
    "session": CORE | {"config", "metrics", "logs", "tls", "prewarm", "upstream", "upstream_pool", "connection_record",
                       "session_upstream"},
    "acceptor": CORE | {"descriptors"},
    "server": CORE | {"acceptor", "allocator", "config", "descriptors", "metrics", "logs", "tls", "prewarm",
                      "session", "upstream", "upstream_pool", "connection_record"},
    "admin": frozenset({"acceptor", "config", "descriptors", "metrics", "server"}),
    "check": CORE | {"certs", "config", "tls"},
    # running until stopped: one process, a worker, the supervisor of workers
    "lifecycle": frozenset({"admin", "descriptors", "server"}),
    "worker": frozenset({"admin", "certs", "config", "lifecycle", "logs", "server"}),
    "supervisor": frozenset({"admin", "config", "lifecycle", "metrics_merge", "server", "tls", "worker"}),
    "cli": ANY,
    # the demo and its tooling: it may use the product
    "demo": frozenset(),
    "demo.mariadb": frozenset(),
    "demo.localdb": frozenset({"demo.mariadb"}),
    "demo.pki": frozenset({"certs"}),
    "demo.run": ANY,
}
CRYPTOGRAPHY_IMPORTERS = frozenset({"certs", "demo.pki"})


def package_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under `root` (a top-level package of the repo)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports, at any depth (functions included). A
    module importing its own package (an ancestor) is not an edge; `from a import b` counts a.b when b
    is a module."""
    modules = package_modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for _, target, names in import_statements(path, name):
            for candidate in [target, *(f"{target}.{item}" for item in names)]:
                while candidate and candidate not in modules:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name and not name.startswith(candidate + "."):
                    graph[name].add(candidate)
    return graph


def _short(module: str) -> str:
    return "__init__" if module == "tlsproxy" else module.removeprefix("tlsproxy.")


def _permitted(imported: str, allowed: frozenset[str]) -> bool:
    return imported == "__init__" or "*" in allowed or imported in allowed or any(
        rule.endswith(".*") and imported.startswith(rule[:-1]) for rule in allowed)


PACKAGE_GRAPH = import_graph(PACKAGE_ROOT)


@pytest.mark.parametrize("module", sorted(PACKAGE_GRAPH), ids=_short)
def test_module_imports_follow_the_layering(module: str) -> None:
    name = _short(module)
    assert name in ALLOWED_IMPORTS, (
        f"{module} has no row in ALLOWED_IMPORTS ({Path(__file__).name}): add one naming the tlsproxy "
        f"modules it may import (see STYLE.md §2)")
    imported = {_short(target) for target in PACKAGE_GRAPH[module]}
    offending = sorted(target for target in imported if not _permitted(target, ALLOWED_IMPORTS[name]))
    assert not offending, f"{module} imports {offending}, which its row in ALLOWED_IMPORTS does not allow"


def test_every_row_of_the_table_is_a_module() -> None:
    modules = {_short(module) for module in PACKAGE_GRAPH}
    stale = sorted(set(ALLOWED_IMPORTS) - modules)
    assert not stale, f"ALLOWED_IMPORTS has rows for modules that do not exist: {stale}"


def test_nothing_imports_cli() -> None:
    importers = sorted(module for module, targets in PACKAGE_GRAPH.items()
                       if "tlsproxy.cli" in targets and module != "tlsproxy.__main__")
    assert not importers, f"{importers} import tlsproxy.cli"


def test_the_product_does_not_import_the_demo() -> None:
    importers = sorted(
        module for module, targets in PACKAGE_GRAPH.items()
        if not module.startswith("tlsproxy.demo") and module != "tlsproxy.cli"
        and any(target == "tlsproxy.demo" or target.startswith("tlsproxy.demo.") for target in targets))
    assert not importers, f"{importers} import tlsproxy.demo (only cli may, for `tlsproxy demo`)"


def test_only_certs_and_the_demo_pki_import_cryptography() -> None:
    importers = sorted(_short(_module_name(path)) for path in PACKAGE_ROOT.rglob("*.py")
                       if any(name.split(".")[0] == "cryptography" for name in imported_modules(path)))
    assert set(importers) <= CRYPTOGRAPHY_IMPORTERS, f"{importers} import cryptography"


def test_the_package_imports_its_own_modules_at_the_top_level() -> None:
    """An import inside a function hides a dependency (or a cycle); these are found at the top."""
    modules = package_modules(PACKAGE_ROOT)
    nested = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
        in_functions = {inner.lineno for function in functions for inner in ast.walk(function)
                        if isinstance(inner, (ast.Import, ast.ImportFrom))}
        for node, target, _ in import_statements(path, name):
            if target.split(".")[0] == "tlsproxy" and node.lineno in in_functions:
                nested.append(f"{path.relative_to(REPO)}:{node.lineno} imports {target}")
    assert not nested, "\n".join(nested)


# ---- no import cycle, imports inside functions included ----------------------------------------


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(cycles)


@pytest.mark.parametrize("package", ["tlsproxy", "bench"])
def test_no_import_cycle(package: str) -> None:
    cycles = import_cycles(import_graph(REPO / package))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": set()}, []),
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]]),
    ],
)
def test_cycle_finder(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert import_cycles(graph) == expected


def test_import_graph_counts_imports_inside_functions(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text("from pkg import b\n")
    (root / "b.py").write_text("def f():\n    from pkg.a import x\n")
    (root / "c.py").write_text("from . import a\nimport pkg\n")
    graph = import_graph(root)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
    assert import_cycles(graph) == [["pkg.a", "pkg.b"]]


# ---- no private name across modules ------------------------------------------------------------


PROJECT_PACKAGES = ("tlsproxy", "bench", "tests")


def private_uses(path: Path, module: str, modules: set[str]) -> list[str]:
    """Private names of other project modules that `path` imports (`from m import _x`) or reaches
    through a module it imported (`m._x`, `setattr(m, "_x", ...)`)."""
    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    bound: dict[str, str] = {}  # a local name -> the project module it is bound to
    for node, target, names in import_statements(path, module):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules or alias.name.split(".")[0] in PROJECT_PACKAGES:
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
            continue
        if target.split(".")[0] not in PROJECT_PACKAGES or target == module:
            continue
        for alias in node.names:  # type: ignore[attr-defined]
            if private(alias.name):
                found.append(f"{node.lineno}: from {target} import {alias.name}")
            elif f"{target}.{alias.name}" in modules:
                bound[alias.asname or alias.name] = f"{target}.{alias.name}"

    def module_of(expression: ast.expr) -> str | None:
        if isinstance(expression, ast.Name):
            return bound.get(expression.id)
        if isinstance(expression, ast.Attribute):
            parent = module_of(expression.value)
            if parent is not None and f"{parent}.{expression.attr}" in modules:
                return f"{parent}.{expression.attr}"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            owner = module_of(node.value)
            if owner is not None and owner != module:
                found.append(f"{node.lineno}: {owner}.{node.attr}")
        elif (isinstance(node, ast.Call) and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and private(node.args[1].value)
              and (getattr(node.func, "id", None) == "setattr" or getattr(node.func, "attr", None) == "setattr")):
            owner = module_of(node.args[0])
            if owner is not None and owner != module:
                found.append(f"{node.lineno}: setattr({owner}, {node.args[1].value!r})")
    return found


def _project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PROJECT_PACKAGES:
        modules.update(package_modules(REPO / package))
    return modules


@pytest.mark.parametrize("package", PROJECT_PACKAGES)
def test_no_private_name_across_modules(package: str) -> None:
    modules = _project_modules()
    names = set(modules)
    found = [f"{path.relative_to(REPO)}:{use}" for module, path in modules.items() if module.split(".")[0] == package
             for use in private_uses(path, module, names)]
    assert not found, "private names used across modules (make them public or test through the public API):\n" + \
        "\n".join(found)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from pkg.a import _x", ["1: from pkg.a import _x"]),
        ("from .a import _x", ["1: from pkg.a import _x"]),
        ("from pkg import a\na._x()", ["2: pkg.a._x"]),
        ("import pkg.a\npkg.a._x", ["2: pkg.a._x"]),
        ("import pkg.a as m\nsetattr(m, '_x', 1)", ["2: setattr(pkg.a, '_x')"]),
        ("from pkg import a\nmonkeypatch.setattr(a, '_x', 1)", ["2: setattr(pkg.a, '_x')"]),
        ("from pkg.a import X\nX._y", []),  # an attribute of a class, not of a module
        ("from pkg.a import __version__", []),
        ("from os import _exit", []),  # not a project module
    ],
)
def test_private_name_finder(tmp_path: Path, source: str, expected: list[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(__import__(__name__, fromlist=["PROJECT_PACKAGES"]), "PROJECT_PACKAGES", ("pkg",))
    root = tmp_path / "pkg"
    root.mkdir()
    for name in ("__init__", "a", "b"):
        (root / f"{name}.py").write_text("")
    (root / "b.py").write_text(source + "\n")
    assert private_uses(root / "b.py", "pkg.b", {"pkg", "pkg.a", "pkg.b"}) == expected
