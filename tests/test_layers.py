"""The layering of DESIGN.md, checked on every import statement (lazy ones inside functions included).

`core/` never imports a higher layer (models, pages, cli), Streamlit or torch; `core/__main__.py` is the one shim
allowed to reach up to `cli`. `models/` never imports pages, cli or Streamlit. `cli/` never imports Streamlit.
No test imports a benchmark, and `core/` and `models/` log instead of printing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "core": {"models", "pages", "cli", "streamlit", "torch", "torchvision", "timm"},
    "models": {"pages", "cli", "streamlit"},
    "cli": {"pages", "streamlit"},
    "tests": {"benchmarks"},  # a benchmark measures the code; what a test needs lives in the code it tests
}
ALLOWED = {("core/__main__.py", "cli")}


def imported_packages(path: Path) -> set[str]:
    """Top-level package names a module imports anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _modules() -> list[tuple[str, Path]]:
    return [(layer, path) for layer in FORBIDDEN for path in sorted((REPO / layer).rglob("*.py"))]


@pytest.mark.parametrize(("layer", "path"), _modules(), ids=lambda v: str(v.relative_to(REPO)) if isinstance(v, Path)
                         else v)
def test_module_imports_no_higher_layer(layer: str, path: Path) -> None:
    relative = str(path.relative_to(REPO))
    bad = {name for name in imported_packages(path) & FORBIDDEN[layer] if (relative, name) not in ALLOWED}
    assert not bad, f"{relative} imports {sorted(bad)}; {layer}/ must not import {sorted(FORBIDDEN[layer])}"


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from models.train import x\n    import streamlit as st\n")
    assert imported_packages(module) == {"models", "streamlit"}


def printed_lines(path: Path) -> list[int]:
    """Line numbers of the module's calls to the built-in `print`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]


@pytest.mark.parametrize("path", [p for layer in ("core", "models") for p in sorted((REPO / layer).rglob("*.py"))],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_library_code_logs_instead_of_printing(path: Path) -> None:
    lines = printed_lines(path)
    assert not lines, f"{path.relative_to(REPO)} calls print() at lines {lines}; use logging.getLogger(__name__)"


def test_the_print_checker_sees_calls_not_names(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import logging\nlog = print\n\ndef f():\n    print('x')\n    logging.info('print')\n")
    assert printed_lines(module) == [5]
