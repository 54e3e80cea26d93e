"""The tests' own layout: shared code lives in tests/helpers, and the repository's paths are spelled
once, in tests/helpers/paths.py.

A test module (or conftest, or helper) imports nothing under `tests` but `tests.helpers`; conftest
fixtures reach tests as fixtures, never as imports. No module finds the repository from its own
`__file__` or defines one of paths.py's locations again. Imports are read with `ast`, so relative,
absolute and function-level imports all count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.helpers.paths import REPO

TESTS = REPO / "tests"
HELPERS = "tests.helpers"
# paths.py's locations, as `REPO / ...` parts.
LOCATIONS = frozenset({("src",), ("traces",), ("tests", "data"), ("tests/data",)})


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything imported; `from m import x` counts as `m.x`."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                yield node.lineno, base if alias.name == "*" else f"{base}.{alias.name}"


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(f"{package}.")


def foreign_imports(tree: ast.AST, module: str, is_package: bool = False) -> list[str]:
    """Imports of test code other than tests.helpers."""
    return [
        f"{line}: {name}"
        for line, name in imported(tree, module, is_package)
        if _under(name, "tests") and not _under(name, HELPERS)
    ]


def _path_parts(node: ast.expr) -> tuple[str, tuple[str, ...]] | None:
    """`REPO / "a" / "b"` as ("REPO", ("a", "b")); None for anything else."""
    parts: list[str] = []
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        if not (isinstance(node.right, ast.Constant) and isinstance(node.right.value, str)):
            return None
        parts.insert(0, node.right.value)
        node = node.left
    return (node.id, tuple(parts)) if isinstance(node, ast.Name) and parts else None


def own_paths(tree: ast.Module) -> list[str]:
    """Uses of `__file__`, and module-level names bound to `REPO / <a paths.py location>`."""
    found = [
        f"{node.lineno}: __file__"
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and node.id == "__file__"
    ]
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if isinstance(value, ast.Call) and len(value.args) == 1:  # str(REPO / "src")
            value = value.args[0]
        if value is not None and (spelled := _path_parts(value)) is not None:
            root, parts = spelled
            if root == "REPO" and parts in LOCATIONS:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(TESTS.rglob("*.py")):
        if path.relative_to(TESTS).parts[0] != "data":
            yield path, ast.parse(path.read_text(encoding="utf-8"), str(path))


def test_tests_import_shared_code_only_from_helpers() -> None:
    found = [
        f"{path.relative_to(REPO)}:{hit}"
        for path, tree in _modules()
        for hit in foreign_imports(tree, module_name(path), path.name == "__init__.py")
    ]
    assert found == [], "move shared code to tests/helpers (fixtures stay in conftest.py)"


def test_repository_paths_come_from_helpers_paths() -> None:
    found = [
        f"{path.relative_to(REPO)}:{hit}"
        for path, tree in _modules()
        if path != TESTS / "helpers" / "paths.py"
        for hit in own_paths(tree)
    ]
    assert found == [], "use tests.helpers.paths (REPO, SRC, TRACES, DATA)"


def test_the_checks_catch_what_they_forbid() -> None:
    """Each forbidden form is found, and the allowed ones are not."""
    imports = """
from .conftest import Tiny
from . import synth
from ..analyze.synth import PEAK
from tests.runner.test_runner_cli import recorder
import tests.serve.export

def late():
    from tests.gen import trace_facts
from tests.helpers.paths import REPO
from tests import helpers
from ..helpers.frames import ranges
from tests.helpers.fold_compare import assert_same
from benchmarks.gen_trace import generate
"""
    found = foreign_imports(ast.parse(imports), "tests.gen.test_x")
    assert [hit.split(": ")[1] for hit in found] == [
        "tests.gen.conftest.Tiny",
        "tests.gen.synth",
        "tests.analyze.synth.PEAK",
        "tests.runner.test_runner_cli.recorder",
        "tests.serve.export",
        "tests.gen.trace_facts",
    ]
    assert foreign_imports(ast.parse("from . import frames"), "tests.helpers", True) == []
    roots = """
ROOT = Path(__file__).resolve().parents[2]
SRC = str(REPO / "src")
DATA: Final = REPO / "tests" / "data"
TRACES = REPO / "traces"
DOCS = REPO / "docs"
PROBE = DATA / "h100_probes"
"""
    assert [hit.split(": ")[0] for hit in own_paths(ast.parse(roots))] == ["2", "3", "4", "5"]
