"""AppTest of the misclassification browser: counts per filter equal a direct count on the predictions."""

from __future__ import annotations

from tests.pages.eval_workspaces import load_table, plain

PAGE = "pages/errors.py"


def _count(app) -> int:
    heading = next(h.value for h in app.subheader if "samples" in h.value)
    return int(heading.split(" ")[0].replace(",", ""))


def test_filters_on_demo(drawn_workspace, open_page):
    table = load_table(drawn_workspace).for_split("val")
    frame = table.frame
    wrong = frame[(frame["label_idx"] >= 0) & (frame["label_idx"] != frame["pred_idx"])]
    app = open_page(drawn_workspace, PAGE)
    assert _count(app) == len(wrong)
    inspect = [b for b in app.button if b.label == "Inspect"]
    expected = wrong.sort_values("confidence", ascending=False, kind="stable")["sample_id"].head(24)
    assert [b.help for b in inspect] == expected.tolist()  # most confident mistakes first

    true_class = wrong["label"].value_counts().index[0]
    app.multiselect(key="mb-true").set_value([true_class]).run()
    assert _count(app) == int((wrong["label"] == true_class).sum())

    app.multiselect(key="mb-true").set_value([])
    app.slider(key="mb-conf").set_value((0.5, 1.0)).run()
    assert _count(app) == int((wrong["confidence"] >= 0.5).sum())

    app.slider(key="mb-conf").set_value((0.0, 1.0))
    app.selectbox(key="mb-rank").set_value("phylum")
    taxa = demo_workspace_taxa(drawn_workspace, "phylum")
    phylum = taxa[true_class]
    app.multiselect(key="mb-taxon").set_value([phylum]).run()
    assert _count(app) == int(wrong["label"].map(taxa).eq(phylum).sum())

    app.multiselect(key="mb-taxon").set_value([])
    specimen = wrong["specimen_id"].iloc[0]
    app.text_input(key="mb-specimen").input(specimen).run()
    assert _count(app) == int((wrong["specimen_id"] == specimen).sum())
    assert any(f"Specimen **{specimen}**" in plain(i.value) for i in app.info)

    app.toggle(key="mb-errors").set_value(False).run()
    assert _count(app) == int((frame["specimen_id"] == specimen).sum())


def test_inspect_shows_top5(bccd_workspace, open_page):
    app = open_page(bccd_workspace, PAGE)
    first = next(b for b in app.button if b.label == "Inspect")
    sample_id = first.help
    first.click().run()
    assert not app.exception
    table = load_table(bccd_workspace).for_split("val")
    row = table.frame[table.frame["sample_id"] == sample_id].iloc[0]
    details = plain(" ".join(m.value for m in app.markdown))
    assert f"**True:** {row['label']}" in details and f"**Predicted:** {row['pred']}" in details


def demo_workspace_taxa(root, column: str) -> dict[str, str]:
    import pandas as pd

    manifest = pd.read_csv(root / "data" / "manifest.csv")
    return manifest.groupby("label")[column].agg(lambda s: s.mode().iloc[0]).to_dict()
