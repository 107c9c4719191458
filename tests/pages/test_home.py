"""Landing page (AppTest through app.py, where it is the default page): dataset counts, classes, checkpoints."""

from __future__ import annotations

from core.workspace import load_workspace
from tests.pages.eval_workspaces import CHECKPOINT, plain


def test_landing_page_shows_the_workspace(drawn_workspace, open_app):
    app = open_app(drawn_workspace)  # no page named: the landing page
    dataset = load_workspace(drawn_workspace).load_dataset()
    assert app.title[0].value == "TaxaLens"
    assert any(str(drawn_workspace) in plain(c.value) for c in app.caption)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Classes"] == str(len(dataset.class_names)) == "9"
    assert metrics["Images"] == f"{len(dataset):,}"
    assert metrics["Specimens"] == f"{dataset.samples['specimen_id'].nunique():,}"

    classes = next(d.value for d in app.dataframe if "total" in d.value.columns)
    assert list(classes.index) == list(dataset.class_names)
    assert int(classes["total"].sum()) == len(dataset)
    assert {"phylum", "order"} <= set(classes.columns)  # the demo's taxonomy

    checkpoints = next(d.value for d in app.dataframe if "status" in d.value.columns)
    assert checkpoints["name"].tolist() == [CHECKPOINT]
    assert checkpoints["status"].tolist() == ["ok"]
    assert checkpoints["predictions"].tolist() == ["cached"]
    assert not any("members" in d.value.columns for d in app.dataframe)  # no [[ensembles]] in this workspace
