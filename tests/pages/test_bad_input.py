"""Pages on awkward workspaces: checkpoint classes that differ from the dataset's, no predictions yet, and every bad
input of `tests/bad_inputs.py` (an st.error that says what to fix, never a traceback)."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import accuracy_score

from tests.bad_inputs import BAD_INPUTS, BadInput
from tests.pages.eval_workspaces import build_bccd_workspace, load_table

PAGES = ("pages/overview.py", "pages/confusion.py", "pages/classes.py", "pages/errors.py")
# bccd's classes are Basophil, Eosinophil, Lymphocyte, Monocyte, Neutrophil.
RENAMED_CLASSES = ("Neutrophil", "eosinophil", "Lymphocyte", "Monocytes", "Platelet")


@pytest.fixture(scope="module")
def mismatched_workspace(tmp_path_factory, bccd_root):
    return build_bccd_workspace(tmp_path_factory.mktemp("pages") / "mismatch", bccd_root,
                                class_names=RENAMED_CLASSES)


@pytest.mark.parametrize("page", PAGES)
def test_class_mismatch_is_listed_not_crashed(mismatched_workspace, open_page, page):
    app = open_page(mismatched_workspace, page)
    warning = next(w.value for w in app.warning if "differ from the dataset" in w.value)
    assert "`Eosinophil` → `eosinophil`" in warning and "`Monocyte` → `Monocytes`" in warning
    assert "`Basophil`" in warning and "`Platelet`" in warning
    table = load_table(mismatched_workspace).for_split("val")
    excluded = int((table.frame["label_idx"] < 0).sum())
    assert excluded > 0
    assert any(f"{excluded:,} of {len(table):,} samples" in i.value for i in app.info)
    if page == "pages/overview.py":
        kept = table.frame[table.frame["label_idx"] >= 0]
        shown = {m.label: m.value for m in app.metric}
        assert float(shown["Accuracy"]) == pytest.approx(accuracy_score(kept["label_idx"], kept["pred_idx"]), abs=5e-4)


def test_no_predictions_offers_compute_button(tmp_path, bccd_root, open_page):
    torch.set_num_threads(1)
    workspace = build_bccd_workspace(tmp_path / "fresh", bccd_root, predictions=False)
    app = open_page(workspace, "pages/overview.py")
    assert load_table(workspace) is None
    assert not app.metric
    button = next(b for b in app.button if b.label.startswith("Compute predictions"))
    button.click().run(timeout=600)
    assert not app.exception, [e.value for e in app.exception]
    table = load_table(workspace)
    assert table is not None and len(table) == 351  # computed by the tiny model and cached
    val = table.for_split("val")
    shown = {m.label: m.value for m in app.metric}
    assert float(shown["Accuracy"]) == pytest.approx(accuracy_score(val.frame["label_idx"], val.frame["pred_idx"]),
                                                     abs=5e-4)


@pytest.mark.parametrize("page", PAGES)
def test_empty_split_is_a_note_on_every_page(drawn_workspace, open_page, page):
    app = open_page(drawn_workspace, page, split="test")  # the drawn demo has train and val only
    assert any("**test** split has no samples" in w.value and "train, val" in w.value for w in app.warning)
    assert not app.metric and not app.get("plotly_chart")


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.name for case in BAD_INPUTS])
def test_bad_input_is_an_error_message_not_a_traceback(case: BadInput, tmp_path, bccd_root, open_app):
    torch.set_num_threads(1)
    app = open_app(case.build(tmp_path / "ws", bccd_root))
    if case.page != "pages/home.py":
        app.switch_page(case.page).run()
    if case.click is not None:
        next(b for b in app.button if b.label.startswith(case.click)).click().run()
    assert not app.exception, [e.value for e in app.exception]
    phrases = [phrase.format(bccd=bccd_root) for phrase in case.phrases]
    errors = [e.value for e in app.error]
    shown = [m for m in errors if all(p in m for p in phrases)]
    assert shown, (phrases, errors)
    for phrase in case.absent:
        assert all(phrase not in m for m in shown), (phrase, shown)


_APP_IN_A_PROCESS = """
import json, sys
from streamlit.testing.v1 import AppTest
app = AppTest.from_file(sys.argv[1], default_timeout=180)
app.session_state["tl_workspace"] = sys.argv[2]
app.run()
print(json.dumps({"errors": [e.value for e in app.error], "exceptions": [e.value for e in app.exception]}))
"""


def test_a_dataset_folder_it_may_not_read_is_an_error_message(tmp_path):
    """A real permission error (a mode-000 folder) in the dashboard: app.py runs in a process without root's
    permission override, so the folder is as unreadable to it as to any account."""
    import json
    import subprocess
    import sys

    from tests.bad_inputs import REPO, UNREADABLE_PHRASES, as_ordinary_process, build_unreadable_root

    workspace = build_unreadable_root(tmp_path / "ws")
    argv = as_ordinary_process([sys.executable, "-c", _APP_IN_A_PROCESS, str(REPO / "app.py"), str(workspace)])
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    assert not shown["exceptions"], shown["exceptions"]
    assert any(all(p in m for p in UNREADABLE_PHRASES) for m in shown["errors"]), shown["errors"]
