"""The import warm-up (pages._warmup): it imports what it lists on its own thread, once per process, covers what
pages/_evaluation.py imports, never imports that module (which waits for it), and never raises into a page."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pages import _warmup

REPO = Path(__file__).resolve().parents[2]


def _run_fresh(code: str) -> dict:
    """Run `code` in a fresh interpreter (this test process has every module loaded already); its last line of
    output is JSON."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", _warmup.SWITCH_ENV: "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_failing_step_is_recorded_and_the_next_ones_run(tmp_path, monkeypatch):
    """A step that raises (a missing module, a module whose import fails, any error) is logged and reported with its
    error; the steps after it still run, and nothing reaches the caller."""
    (tmp_path / "tl_warmup_broken.py").write_text("raise RuntimeError('broken on import')\n")
    (tmp_path / "tl_warmup_fine.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ran = []
    steps = (
        ("missing", lambda: importlib.import_module("tl_warmup_no_such_module")),
        ("broken", lambda: importlib.import_module("tl_warmup_broken")),
        ("fine", lambda: importlib.import_module("tl_warmup_fine")),
        ("error", lambda: 1 / 0),
        ("last", lambda: ran.append("last")),
    )
    report = _warmup.run_warmup(steps)
    assert report.done == ("fine", "last")
    assert [name for name, _ in report.failed] == ["missing", "broken", "error"]
    assert report.failed[0][1].startswith("ModuleNotFoundError: No module named 'tl_warmup_no_such_module'")
    assert report.failed[1][1] == "RuntimeError: broken on import"
    assert report.failed[2][1].startswith("ZeroDivisionError")
    assert ran == ["last"] and sys.modules["tl_warmup_fine"].VALUE == 42
    assert "tl_warmup_broken" not in sys.modules  # a failed import leaves nothing half-imported behind


def test_switched_off_it_starts_no_thread(monkeypatch):
    monkeypatch.setenv(_warmup.SWITCH_ENV, "0")
    assert _warmup.start_import_warmup() is None


def test_it_imports_what_it_lists_on_its_own_thread_once_and_covers_the_evaluation_module():
    """In a fresh interpreter: one thread however often it is started; every listed module imported by it, no step
    failed; `pages._evaluation` (which waits for the warm-up) not imported by it, and importing it afterwards loads
    nothing else (the warm-up covers every module it needs)."""
    code = (
        "import json, sys\n"
        "from pages import _warmup as w\n"
        "first = w.start_import_warmup()\n"
        "again = w.start_import_warmup()\n"
        "report = w.await_import_warmup(300)\n"
        "before = set(sys.modules)\n"
        "evaluation_loaded_by_warmup = 'pages._evaluation' in before\n"
        "import pages._evaluation\n"
        "print(json.dumps({'same': first is again, 'daemon': first.daemon, 'thread': report.thread,\n"
        "    'main': __import__('threading').current_thread().name, 'done': list(report.done),\n"
        "    'failed': report.failed, 'missing': [m for m in w.LABEL_STORE_MODULES + w.EVALUATION_MODULES\n"
        "    if m not in before], 'evaluation_by_warmup': evaluation_loaded_by_warmup,\n"
        "    'new_after': sorted(set(sys.modules) - before)}))\n"
    )
    result = _run_fresh(code)
    assert result["same"] and result["daemon"]
    assert result["thread"] == "taxalens-import-warmup" != result["main"]
    assert result["done"] == [name for name, _ in _warmup.PAGE_STEPS + _warmup.LATER_STEPS]
    assert result["failed"] == []
    assert result["missing"] == []
    assert not result["evaluation_by_warmup"]
    assert result["new_after"] == ["pages._evaluation"]


@pytest.mark.parametrize("module", _warmup.EVALUATION_MODULES)
def test_no_step_imports_the_module_that_waits_for_it(module):
    """pages/_evaluation.py waits for the warm-up while it is being imported: a step that imported it (or a module
    that imports it) would wait on that import in turn, and both would hang until the page's wait times out."""
    assert "pages._evaluation" not in _module_level_imports(module)


def test_a_page_opened_during_the_warmup_waits_for_its_modules_and_never_sees_its_errors(drawn_workspace):
    """The Overview opened at once after the landing page, while the warm-up runs a slow failing step among the
    modules pages/_evaluation.py waits for: that module's import resumes only after the step has ended, the failure is
    reported, and the page renders without an exception."""
    code = (
        "import json, time\n"
        "from streamlit.testing.v1 import AppTest\n"
        "from pages import _warmup as w\n"
        "order = []\n"
        "def slow_failure():\n"
        "    time.sleep(1.0)\n"
        "    order.append('slow step ended')\n"
        "    raise RuntimeError('warm-up step failed')\n"
        "w.PAGE_STEPS = w.PAGE_STEPS + (('slow failure', slow_failure),)\n"
        "wait = w.await_page_modules\n"
        "def recorded_wait(timeout=None):\n"
        "    ready = wait(timeout)\n"
        "    order.append(f'page resumed (ready: {ready})')\n"
        "    return ready\n"
        "w.await_page_modules = recorded_wait  # what pages/_evaluation.py imports and calls\n"
        f"app = AppTest.from_file({str(REPO / 'app.py')!r}, default_timeout=180)\n"
        f"app.session_state['tl_workspace'] = {str(drawn_workspace)!r}\n"
        "app.session_state['tl_split'] = 'val'\n"
        "app.run()\n"
        "assert not app.exception, [e.value for e in app.exception]\n"
        "w.start_import_warmup()  # what app.py does after a page has rendered (a no-op when it has already)\n"
        "app.switch_page('pages/overview.py').run()\n"
        "report = w.await_import_warmup(300)\n"
        "print(json.dumps({'exceptions': [e.value for e in app.exception], 'order': order,\n"
        "    'failed': report.failed, 'metrics': [m.label for m in app.metric]}))\n"
    )
    result = _run_fresh(code)
    assert result["exceptions"] == []
    assert result["order"] == ["slow step ended", "page resumed (ready: True)"]
    assert result["failed"] == [["slow failure", "RuntimeError: warm-up step failed"]]
    assert "Accuracy" in result["metrics"]


def _module_level_imports(module: str) -> set[str]:
    """The project modules `module` imports when it is imported, transitively: imports at module level (inside
    `if`/`try` blocks too, not under `if TYPE_CHECKING`), not those inside functions."""
    import ast

    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = REPO / (name.replace(".", "/") + ".py")
        if not path.is_file():
            continue
        todo.extend(_imports_of(ast.parse(path.read_text(encoding="utf-8")).body))
    return seen - {module}


def _imports_of(body: list) -> list[str]:
    import ast

    names: list[str] = []
    for node in body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]  # `from pages import _evaluation`
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            names += _imports_of(node.body) + _imports_of(node.orelse)
        elif isinstance(node, ast.Try):
            names += _imports_of(node.body) + _imports_of(node.orelse) + _imports_of(node.finalbody)
            for handler in node.handlers:
                names += _imports_of(handler.body)
    return [name for name in names if name.split(".")[0] in ("core", "pages", "models")]
