"""The layering of DESIGN.md, checked on every import statement (lazy ones inside functions included).

`core/` never imports a higher layer (models, pages, cli), Streamlit or torch; `core/__main__.py` is the one shim
allowed to reach up to `cli`. `models/` never imports pages, cli or Streamlit. `cli/` never imports Streamlit.
No test imports a benchmark.
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
