"""References in the code and docs resolve.

* Every `PROTOCOL.md §N` / `§N.N` / `§N-§M` citation (and a bare `§N` in a file that cites PROTOCOL.md) names a
  section heading of docs/PROTOCOL.md, so a citation keeps pointing at its topic.
* Nothing refers to a protocol write-up outside the repository: the only PROTOCOL.md is docs/PROTOCOL.md.
* Every repository path of the form tests/...py, tlsproxy/...py, bench/...py, fuzz/...py or docs/...md named in a
  comment, docstring or document exists (a cited test file that was renamed, a moved module).

The files are read from the working tree; generated and vendored directories are skipped.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTOCOL = REPO / "docs" / "PROTOCOL.md"

SKIPPED_DIRS = {".git", ".venv", "venv", "__pycache__", ".hypothesis", ".mypy_cache", ".pytest_cache", ".ruff_cache",
                "build", "dist", "node_modules"}
SKIPPED_PREFIXES = ("bench/results/",)  # generated reports and raw results
TEXT_SUFFIXES = {".py", ".md", ".txt", ".rst", ".toml", ".yaml", ".yml", ".cfg", ".ini", ".hex", ".sh", ".lua"}
TEXT_NAMES = {"Dockerfile"}

CITING_ROOTS = ("tlsproxy", "tests", "bench", "fuzz", "docs", "README.md", "SECURITY.md")

HEADING = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
SECTION = re.compile(r"§(\d+(?:\.\d+)?)")
# "PROTOCOL.md §2, §3, §4.4", "``docs/PROTOCOL.md`` §1-§8", "PROTOCOL.md §5.3 step 5"
CITATION = re.compile(r"PROTOCOL\.md[`'\")\]*]*\s*((?:§\d+(?:\.\d+)?(?:\s*(?:,|-|–|/|and|&)\s*)?)+)")
# A § after another document's name is that document's section: "RFC 8446 §4.2.11", "STYLE.md §2".
OTHER_DOCUMENT = re.compile(r"(?:\bRFC\s*\d+|[\w.-]+\.(?:md|txt|rst))[`'\")\]*]*\s*$")
PROTOCOL_PATH = re.compile(r"(?<![\w.-])((?:[\w.-]+/)*)PROTOCOL\.md")
REPO_PATH = re.compile(r"(?<![\w./-])((?:tests|tlsproxy|bench|fuzz)/\w[\w./-]*\.py|docs/\w[\w./-]*\.md)(?![\w])")


def _skipped(relative: str) -> bool:
    parts = relative.split("/")
    if any(part in SKIPPED_DIRS or part.endswith(".egg-info") for part in parts[:-1]):
        return True
    return relative.startswith(SKIPPED_PREFIXES)


def repo_files(*roots: str) -> Iterator[Path]:
    """Text files under `roots` (files or directories of the repository; all of it when empty)."""
    starts = [REPO / root for root in roots] if roots else [REPO]
    for start in starts:
        candidates = [start] if start.is_file() else sorted(start.rglob("*"))
        for path in candidates:
            relative = path.relative_to(REPO).as_posix()
            if not path.is_file() or _skipped(relative):
                continue
            if path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES:
                yield path


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def documentation_parts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of what documents the file: for Python its comments and docstrings (any bare string
    statement, attribute docstrings included); for other files the whole text."""
    text = read(path)
    if path.suffix != ".py":
        return [(1, text)]
    parts: list[tuple[int, str]] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                parts.append((token.start[0], token.string))
        tree = ast.parse(text)
    except (SyntaxError, tokenize.TokenError):
        return [(1, text)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            parts.append((node.lineno, node.value.value))
    return parts


def protocol_sections() -> set[str]:
    return set(HEADING.findall(read(PROTOCOL)))


def cited_sections(text: str) -> Iterator[tuple[int, str]]:
    """(offset, section) of every PROTOCOL.md citation in `text`; bare § references count too when the
    text cites PROTOCOL.md at all, unless they follow another document's name."""
    seen: set[int] = set()
    for match in CITATION.finditer(text):
        for section in SECTION.finditer(match.group(1)):
            offset = match.start(1) + section.start()
            seen.add(offset)
            yield offset, section.group(1)
    if "PROTOCOL.md" not in text:
        return
    for section in SECTION.finditer(text):
        if section.start() in seen:
            continue
        line_start = text.rfind("\n", 0, section.start()) + 1
        if OTHER_DOCUMENT.search(text[line_start : section.start()]):
            continue
        yield section.start(), section.group(1)


def test_protocol_notes_keep_their_numbering() -> None:
    sections = protocol_sections()
    assert {str(number) for number in range(1, 12)} <= sections, sorted(sections)
    for sub in ("2.1", "3.1", "3.2", "4.1", "4.2", "4.3", "4.4", "5.1", "5.2", "5.3", "5.4", "5.5", "5.6", "5.7",
                "5.8", "5.9", "9.1", "9.2"):
        assert sub in sections, sub


def test_every_protocol_citation_names_an_existing_section() -> None:
    sections = protocol_sections()
    dangling = []
    citations = 0
    for path in repo_files(*CITING_ROOTS):
        text = read(path)
        for offset, section in cited_sections(text):
            citations += 1
            if section not in sections:
                dangling.append(f"{path.relative_to(REPO)}:{line_of(text, offset)}: §{section}")
    assert citations > 40, "the citation pattern no longer finds the code's citations"
    assert not dangling, "citations of sections docs/PROTOCOL.md does not have:\n" + "\n".join(dangling)


def test_the_protocol_notes_are_the_ones_in_the_repository() -> None:
    outside = "shared" + "/PROTOCOL.md"
    wrong = []
    for path in repo_files():
        text = read(path)
        for match in PROTOCOL_PATH.finditer(text):
            prefix = match.group(1)
            if outside in match.group(0) or (prefix and prefix != "docs/"):
                wrong.append(f"{path.relative_to(REPO)}:{line_of(text, match.start())}: {match.group(0)}")
    assert not wrong, "references to a PROTOCOL.md other than docs/PROTOCOL.md:\n" + "\n".join(wrong)


def test_every_repository_path_in_comments_and_docs_exists() -> None:
    roots = ("tlsproxy", "tests", "bench", "fuzz", "docs", "README.md", "SECURITY.md", "Dockerfile", "pyproject.toml")
    missing = []
    checked = 0
    for path in repo_files(*roots):
        for line, part in documentation_parts(path):
            for match in REPO_PATH.finditer(part):
                named = match.group(1).rstrip(".")
                checked += 1
                if not (REPO / named).is_file():
                    where = line + part.count("\n", 0, match.start())
                    missing.append(f"{path.relative_to(REPO)}:{where}: {named}")
    assert checked > 40, "the path pattern no longer finds the references"
    assert not missing, "paths named in comments or docs that do not exist:\n" + "\n".join(missing)


def test_the_reference_patterns() -> None:
    """The patterns above on the citation forms the code uses."""
    text = ("(PROTOCOL.md §2, §3, §4.4, §6, §8) ``docs/PROTOCOL.md`` §1-§8 PROTOCOL.md §5.3 step 5\n"
            "RFC 8446 §4.2.11 and STYLE.md §2 are not ours; §4.2 bare is\n")
    assert [section for _, section in cited_sections(text)] == ["2", "3", "4.4", "6", "8", "1", "8", "5.3", "4.2"]
    assert [m.group(1) for m in REPO_PATH.finditer("see tests/unit/test_x.py::t, /abs/tests/y.py, docs/A.md.")] == [
        "tests/unit/test_x.py", "docs/A.md"]
