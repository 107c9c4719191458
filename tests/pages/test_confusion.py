"""AppTest of the confusion page: the open cell's gallery holds exactly that cell's samples; pairs match sklearn."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix

from pages._evaluation import cell_heading
from tests.pages.eval_workspaces import load_table, plain

PAGE = "pages/confusion.py"


def _confusion(table) -> np.ndarray:
    frame = table.frame[table.frame["label_idx"] >= 0]
    return confusion_matrix(frame["label_idx"], frame["pred_idx"], labels=range(len(table.class_names)))


def _largest_error(counts: np.ndarray) -> tuple[int, int]:
    off = counts.copy()
    np.fill_diagonal(off, 0)
    return tuple(int(v) for v in np.unravel_index(off.argmax(), off.shape))


def test_open_cell_shows_exactly_its_samples(drawn_workspace, open_page):
    table = load_table(drawn_workspace).for_split("val")
    counts = _confusion(table)
    true_idx, pred_idx = _largest_error(counts)
    names = table.class_names
    app = open_page(drawn_workspace, PAGE, state={"cm-cell": (true_idx, pred_idx)})
    heading = cell_heading(int(counts[true_idx, pred_idx]), names[true_idx], names[pred_idx])
    assert heading in [plain(h.value) for h in app.subheader]
    n = int(counts[true_idx, pred_idx])
    inspect = [b for b in app.button if b.label == "Inspect"]
    assert len(inspect) == min(n, 24)
    frame = table.frame
    expected = set(frame.loc[(frame["label_idx"] == true_idx) & (frame["pred_idx"] == pred_idx), "sample_id"])
    shown = {b.help for b in inspect}  # each Inspect button carries its sample id as help text
    assert shown == expected


def test_pairs_list_matches_sklearn_and_open_by_name(drawn_workspace, open_page):
    table = load_table(drawn_workspace).for_split("val")
    counts = _confusion(table)
    names = table.class_names
    app = open_page(drawn_workspace, PAGE)
    pairs = next(d.value for d in app.dataframe if "share_of_true" in d.value.columns)
    assert pairs["count"].sum() == counts.sum() - np.trace(counts)  # every error is in exactly one pair
    for row in pairs.itertuples():
        t, p = names.index(row.true), names.index(row.pred)
        assert row.count == counts[t, p]
        assert row.share_of_true == counts[t, p] / counts[t].sum()
    assert list(pairs["count"]) == sorted(pairs["count"], reverse=True)
    # Open a diagonal cell by name: the correct predictions of that class.
    cls = int(np.argmax(np.diag(counts)))
    app.selectbox(key="cm-true").set_value(names[cls])
    app.selectbox(key="cm-pred").set_value(names[cls])
    app.button(key="cm-open").click().run()
    assert cell_heading(int(counts[cls, cls]), names[cls], names[cls]) in [plain(h.value) for h in app.subheader]


def test_options_and_class_search_on_bccd(bccd_workspace, open_page):
    app = open_page(bccd_workspace, PAGE)
    table = load_table(bccd_workspace).for_split("val")
    app.selectbox(key="cm-normalise").set_value("share of true class (recall)")
    app.selectbox(key="cm-order").set_value("similarity")
    app.checkbox(key="cm-hide-diag").check()
    app.multiselect(key="cm-search").set_value(["Basophil"])
    app.run()
    assert not app.exception
    pairs = next(d.value for d in app.dataframe if "share_of_true" in d.value.columns) if app.dataframe else None
    counts = _confusion(table)
    basophil = list(table.class_names).index("Basophil")
    errors_with_basophil = counts[basophil].sum() - counts[basophil, basophil] + counts[:, basophil].sum() \
        - counts[basophil, basophil]
    if errors_with_basophil:
        assert set(pairs["true"]) | set(pairs["pred"]) >= {"Basophil"}
        assert ((pairs["true"] == "Basophil") | (pairs["pred"] == "Basophil")).all()
        assert pairs["count"].sum() == errors_with_basophil
    else:
        assert pairs is None


def test_filtered_pairs_check_the_open_cell_and_nothing_else(drawn_workspace, open_page):
    from pages._evaluation import pairs_key

    table = load_table(drawn_workspace).for_split("val")
    counts = _confusion(table)
    true_idx, pred_idx = _largest_error(counts)
    names = table.class_names
    app = open_page(drawn_workspace, PAGE, state={"cm-cell": (true_idx, pred_idx)})
    # unfiltered: the open cell is the top pair, checked
    assert app.session_state[pairs_key([], (true_idx, pred_idx))].selection.rows == [0]
    # "Find classes" on a class of a lower pair: the checked row is the open cell's row in the filtered list
    app.multiselect(key="cm-search").set_value([names[pred_idx]]).run()
    pairs = next(d.value for d in app.dataframe if "share_of_true" in d.value.columns)
    row = pairs.index[(pairs["true"] == names[true_idx]) & (pairs["pred"] == names[pred_idx])].tolist()
    assert row and app.session_state[pairs_key([names[pred_idx]], (true_idx, pred_idx))].selection.rows == row
    # a filter that hides the open cell checks no row (so the first click on any row opens it)
    hidden = next(n for n in names if n not in (names[true_idx], names[pred_idx])
                  and counts[names.index(n)].sum() - counts[names.index(n), names.index(n)] > 0)
    app.multiselect(key="cm-search").set_value([hidden]).run()
    pairs = next(d.value for d in app.dataframe if "share_of_true" in d.value.columns)
    assert not ((pairs["true"] == names[true_idx]) & (pairs["pred"] == names[pred_idx])).any()
    assert app.session_state[pairs_key([hidden], (true_idx, pred_idx))].selection.rows == []


def _customdata(app) -> np.ndarray:
    """The confusion chart's `customdata` ([true_idx, pred_idx, count] per cell) as the browser receives it."""
    import base64
    import json

    data = json.loads(app.get("plotly_chart")[0].proto.spec)["data"][0]["customdata"]
    if isinstance(data, dict):  # plotly's typed-array encoding
        shape = tuple(int(v) for v in str(data["shape"]).split(","))
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).reshape(shape)
    return np.asarray(data)


def test_a_large_matrix_opens_on_its_most_confused_classes(drawn_workspace, open_page, monkeypatch):
    from core.confusion import top_confused_classes
    from pages import _evaluation as ev

    monkeypatch.setattr(ev, "SUBMATRIX_ABOVE", 5)  # the drawn demo's 9 classes count as "large" here
    monkeypatch.setattr(ev, "SUBMATRIX_CLASSES", 4)
    table = load_table(drawn_workspace).for_split("val")
    counts = _confusion(table)
    app = open_page(drawn_workspace, PAGE)
    scope = next(r for r in app.radio if r.label == "Classes shown")
    assert scope.value == "the 4 most confused"
    cells = _customdata(app)
    top = set(top_confused_classes(counts, n=4).tolist())
    assert set(cells[:, 0]) | set(cells[:, 1]) <= top and len(cells) == int((counts[np.ix_(sorted(top),
                                                                                             sorted(top))] > 0).sum())
    scope.set_value(f"all {len(table.class_names)}").run()
    assert len(_customdata(app)) == int((counts > 0).sum())
