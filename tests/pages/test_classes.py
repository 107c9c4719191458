"""AppTest of the weakest-classes page: bottom-N by F1 as sklearn computes it, confusions both ways, examples."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from tests.pages.eval_workspaces import load_table, plain

PAGE = "pages/classes.py"


def _per_class(table):
    frame = table.frame[table.frame["label_idx"] >= 0]
    k = len(table.class_names)
    p, r, f1, s = precision_recall_fscore_support(frame["label_idx"], frame["pred_idx"], labels=range(k),
                                                  zero_division=0)
    counts = confusion_matrix(frame["label_idx"], frame["pred_idx"], labels=range(k))
    return p, r, f1, s, counts


@pytest.mark.parametrize("workspace_fixture", ["drawn_workspace", "bccd_workspace"])
def test_weakest_class_matches_sklearn(workspace_fixture, open_page, request):
    workspace = request.getfixturevalue(workspace_fixture)
    table = load_table(workspace).for_split("val")
    names = list(table.class_names)
    p, r, f1, s, counts = _per_class(table)
    app = open_page(workspace, PAGE)
    present = [i for i in range(len(names)) if s[i] > 0]
    worst = min(present, key=lambda i: (f1[i], -s[i], names[i]))
    assert app.selectbox(key="wc-class").value == names[worst]
    shown = {m.label: m.value for m in app.metric}
    assert float(shown["F1"]) == pytest.approx(f1[worst], abs=5e-4)
    assert float(shown["Precision"]) == pytest.approx(p[worst], abs=5e-4)
    assert float(shown["Recall"]) == pytest.approx(r[worst], abs=5e-4)
    assert int(shown["Support"].replace(",", "")) == s[worst]
    # Bottom-N list: the classes with samples ordered by F1 (the selectbox's options, worst first).
    options = app.selectbox(key="wc-class").options
    expected = sorted(present, key=lambda i: (f1[i], -s[i], names[i]))[:10]
    assert options == [names[i] for i in expected]
    out_table, in_table = (d.value for d in app.dataframe[:2])
    for row in out_table.itertuples():
        assert row.count == counts[worst, names.index(row.other)]
    for row in in_table.itertuples():
        assert row.count == counts[names.index(row.other), worst]
    assert out_table["count"].sum() == counts[worst].sum() - counts[worst, worst]
    assert in_table["count"].sum() == counts[:, worst].sum() - counts[worst, worst]
    # Examples: the first pair's gallery holds exactly that cell's samples.
    heading = next(plain(h.value) for h in app.subheader if ": true " in plain(h.value))
    n = int(heading.split(" ")[0])
    assert len([b for b in app.button if b.label == "Inspect"]) == min(n, 24)


def test_pick_another_class_and_pair(drawn_workspace, open_page):
    table = load_table(drawn_workspace).for_split("val")
    names = list(table.class_names)
    _, _, _, _, counts = _per_class(table)
    app = open_page(drawn_workspace, PAGE)
    app.slider(key="wc-n").set_value(len(names)).run()
    options = app.selectbox(key="wc-class").options
    # A class with errors in both directions, picked by name.
    both = [n for n in options if (counts[names.index(n)].sum() - counts[names.index(n), names.index(n)]) > 0
            and (counts[:, names.index(n)].sum() - counts[names.index(n), names.index(n)]) > 0]
    chosen = both[-1]
    app.selectbox(key="wc-class").set_value(chosen).run()
    pair_box = app.selectbox(key=f"wc-pair-{chosen}")
    last = len(pair_box.options) - 1  # the last pair is an incoming one ("other → chosen")
    pair_box.set_value(pair_box.options[last]).run()
    heading = next(plain(h.value) for h in app.subheader if ": true " in plain(h.value))
    assert heading.endswith(f"→ predicted {chosen}")
    other = heading.split(": true ")[1].split(" → ")[0]
    assert int(heading.split(" ")[0]) == counts[names.index(other), names.index(chosen)]
    assert np.all(counts >= 0)
