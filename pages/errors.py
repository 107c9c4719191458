"""Misclassification browser: filter by class, confidence, specimen, taxon and error severity (how far up the
taxonomy an error goes); sort by confidence or loss; inspect one image with the model's top-5; a specimen's images
beside its specimen-level (mean probability) prediction."""

from __future__ import annotations

import streamlit as st

from core.taxonomy_metrics import rows_beyond_rank
from pages import _evaluation as ev
from pages import _taxonomy_support as tx
from pages._confidence import conformal_config, prediction_sets, predictions_csv_bytes
from pages._gallery import render_gallery, render_sample_view
from pages._text import md


def _severity_filter(column, ctx, data):
    """The "Error severity" selector: (taxonomy, level) keeping errors whose label and prediction differ at that
    level's group (level 0: any error); (None, 0) without a taxonomy."""
    taxonomy = tx.page_taxonomy(ctx, data.table.class_names, quiet=True)
    if taxonomy is None:
        return None, 0
    level = column.selectbox(
        "Error severity", range(len(taxonomy.levels)), key="mb-severity",
        format_func=lambda lv: "any error" if lv == 0 else f"errors across {taxonomy.levels[lv]} only",
        help="errors across order only: the prediction is in another order than the label (LCA above order)")
    return taxonomy, int(level)


ctx, data = ev.open_evaluation_page("Misclassifications")
table = data.table
names = list(table.class_names)
st.caption(f"Checkpoint **{md(data.checkpoint)}** · split **{ctx.split}** · {len(table):,} images")
ev.show_data_notes(ctx, data)

with st.container(border=True):
    row1 = st.columns(3)
    true_classes = row1[0].multiselect("True class", ev.label_choices(data.token, table), key="mb-true")
    pred_classes = row1[1].multiselect("Predicted class", names, key="mb-pred")
    confidence = row1[2].slider("Confidence", 0.0, 1.0, (0.0, 1.0), step=0.01, key="mb-conf")
    row2 = st.columns(3)
    specimen_text = row2[0].text_input("Specimen ids", key="mb-specimen", placeholder="comma-separated")
    taxonomy = list(ctx.dataset.taxonomy_columns)
    taxa, taxon_values = None, ()
    if taxonomy:
        column = row2[1].selectbox("Taxon rank", taxonomy, key="mb-rank")
        taxa = ev.taxa_of_classes(ev.dataset_key(ctx), ctx.dataset.samples, column)
        taxon_values = tuple(row2[1].multiselect("Taxon", sorted({t for _, t in taxa}), key="mb-taxon"))
    else:
        row2[1].caption("No taxonomy columns in this dataset.")
    errors_only = row2[2].toggle("Errors only", value=True, key="mb-errors")
    severity_taxonomy, severity_level = _severity_filter(row2[2], ctx, data)
    outside_set = row2[2].toggle(f"True class not in the prediction set ({conformal_config().coverage:.0%})",
                                 value=False, key="mb-outside-set",
                                 help="errors a split-conformal set would not catch (Calibration page settings)")

specimens = tuple(s.strip() for s in specimen_text.split(",") if s.strip())
rows = ev.filtered_rows(
    data.token, table, true_classes=tuple(true_classes), pred_classes=tuple(pred_classes),
    confidence_range=(float(confidence[0]), float(confidence[1])), specimen_ids=specimens, taxa=taxa,
    taxon_values=taxon_values, errors_only=errors_only, sort_by="confidence", descending=True,
)
if severity_taxonomy is not None and severity_level > 0:
    levels = tx.error_levels(data.token, tx.taxonomy_token(severity_taxonomy), table, severity_taxonomy)
    rows = rows_beyond_rank(rows, levels, severity_level)
if outside_set:
    sets = prediction_sets(ctx, table, data.token)
    if sets is None:
        st.info("Prediction sets need labelled images in the val split to calibrate on.")
    else:
        rows = rows[rows["sample_id"].isin(sets.loc[~sets["label_in_set"], "sample_id"])]
kind = "misclassified samples" if errors_only else "samples"
st.subheader(f"{len(rows):,} {kind}")
st.caption("Sort the gallery by confidence or loss; press Inspect under an image for a larger view and the top-5.")
# deferred (a callable): the CSV is built on the click, not on every visit (its top-3 sorts every row's
# probabilities: seconds and gigabytes at a million images)
st.download_button(f"Download this split's predictions (CSV, {ctx.confidences} confidences)",
                   lambda: predictions_csv_bytes(data.token, table), key="mb-predictions-csv",
                   file_name=f"predictions_{data.checkpoint}_{ctx.split}_{ctx.confidences}.csv", mime="text/csv")
inspected = render_gallery(ctx, rows, key="mb-gallery")
if inspected is not None:
    st.subheader("Inspect")
    render_sample_view(ctx, table, inspected)

if len(specimens) == 1:
    specimen_table = ev.specimen_level(data.token, table)
    if specimen_table is not None:
        match = specimen_table.frame[specimen_table.frame["sample_id"] == specimens[0]]
        if len(match):
            spec = match.iloc[0]
            st.info(f"Specimen **{md(specimens[0])}** (mean probability over its images): label "
                    f"{md(spec['label'])}, predicted {md(spec['pred'])} ({spec['confidence']:.1%}).")
