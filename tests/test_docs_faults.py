"""docs/faults.md stays honest: every test it cites exists, and no row is
missing.  The test files are read with ``ast``, never imported or run, so
this is fast and needs neither Docker nor PostgreSQL."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest


def _checkout() -> Path:
    """The repository root: the nearest directory above this file with a
    pyproject.toml (the test may live in a subfolder of tests/)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    raise AssertionError("no pyproject.toml above " + __file__)


ROOT = _checkout()
CATALOGUE = ROOT / "docs" / "faults.md"
FIRST_ROWS = 40  # the rows every citation was written against; more may follow

ROW_RE = re.compile(r"^## Row (\d+): \S", re.MULTILINE)
NODE_RE = re.compile(r"`(tests/[\w./-]+\.py)::([\w:]+)`")
CITATION_RE = re.compile(r"docs/faults\.md,? rows?:? ((?:#?\d+(?:\s*(?:,|-|and|to)\s*)?)+)")


def rows(text: str) -> dict[int, str]:
    """Row number -> its section (up to the next row)."""
    found = list(ROW_RE.finditer(text))
    sections: dict[int, str] = {}
    for i, m in enumerate(found):
        n = int(m.group(1))
        assert n not in sections, f"row {n} appears twice in {CATALOGUE}"
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        sections[n] = text[m.start() : end]
    return sections


def _defined_tests(path: Path) -> set[str]:
    """``name`` of every test function and ``Class::name`` of every test
    method defined in ``path``, as pytest would name the node."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test"):
                    names.add(f"{node.name}::{item.name}")
    return names


def test_every_row_is_there_once_and_in_order() -> None:
    numbers = [int(m.group(1)) for m in ROW_RE.finditer(CATALOGUE.read_text(encoding="utf-8"))]
    assert numbers == list(range(1, len(numbers) + 1)), f"rows must be numbered 1, 2, 3, ... in order: {numbers}"
    assert len(numbers) >= FIRST_ROWS, f"rows {len(numbers) + 1}-{FIRST_ROWS} are missing"


def test_every_row_lists_its_tests_or_says_it_has_none() -> None:
    for n, section in rows(CATALOGUE.read_text(encoding="utf-8")).items():
        assert "**Tests:**" in section, f"row {n} has no **Tests:** list"
        tests = section.split("**Tests:**", 1)[1]
        assert NODE_RE.search(tests) or "no test yet" in tests, f"row {n} lists no test and does not say 'no test yet'"


def test_every_cited_test_exists() -> None:
    text = CATALOGUE.read_text(encoding="utf-8")
    cited = NODE_RE.findall(text)
    assert cited, "no test cited at all: has the citation format changed?"
    defined: dict[str, set[str]] = {}
    missing = []
    for file, name in cited:
        path = ROOT / file
        if not path.is_file():
            missing.append(f"{file} (no such file)")
            continue
        if file not in defined:
            defined[file] = _defined_tests(path)
        if name not in defined[file]:
            missing.append(f"{file}::{name}")
    assert not missing, "docs/faults.md cites tests that do not exist:\n  " + "\n  ".join(sorted(set(missing)))


def _cited_rows(text: str) -> list[int]:
    numbers = []
    for m in CITATION_RE.finditer(text):
        numbers += [int(n) for n in re.findall(r"\d+", m.group(1))]
    return numbers


def test_citations_in_the_code_name_rows_that_exist() -> None:
    """A comment that says ``docs/faults.md row N`` must have a row N to
    point at (the tests' own files included)."""
    known = set(rows(CATALOGUE.read_text(encoding="utf-8")))
    wrong = []
    for top in ("hybridiso", "tests", "docs"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix not in (".py", ".md") or path == CATALOGUE or not path.is_file():
                continue
            for n in _cited_rows(path.read_text(encoding="utf-8", errors="replace")):
                if n not in known:
                    wrong.append(f"{path.relative_to(ROOT)}: row {n}")
    assert not wrong, "citations of rows docs/faults.md does not have:\n  " + "\n  ".join(wrong)


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("see docs/faults.md row 7", [7]),
        ("(docs/faults.md rows 23-25)", [23, 25]),
        ("docs/faults.md rows 5, 23 and 24", [5, 23, 24]),
        ("docs/faults.md row #18", [18]),
        ("docs/faults.md rows: 23 (stash), 24", [23]),
        ("FAULTS #7", []),
    ],
)
def test_how_citations_are_read(text: str, numbers: list[int]) -> None:
    assert _cited_rows(text) == numbers


def test_no_comment_cites_a_file_outside_the_repository() -> None:
    """FAULTS.md, STYLE.md and DESIGN.md are the team's notes, not part of
    the repository: a maintainer cannot open them, so nothing cites them."""
    outside = re.compile(r"\bFAULTS\b|\bSTYLE\.md\b|\bDESIGN(?:\.md|'s)\b")
    wrong = []
    for top in ("hybridiso", "tests", "docs"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix not in (".py", ".md") or not path.is_file() or path == Path(__file__).resolve():
                continue
            for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if outside.search(line):
                    wrong.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not wrong, "citations of files not in the repository:\n  " + "\n  ".join(wrong)
