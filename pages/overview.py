"""Overview: class distribution per split, headline metrics with bootstrap intervals (image and specimen level),
and the per-class table."""

from __future__ import annotations

import streamlit as st

from core.modes import LABEL_MODES
from core.scores import METRIC_LABELS
from pages import _evaluation as ev
from pages._text import md, md_list

ctx, data = ev.open_evaluation_page("Overview")
table = data.table
st.caption(f"Checkpoint **{md(data.checkpoint)}** · split **{ctx.split}** · {len(table):,} images · labels "
           f"**{LABEL_MODES[data.label_mode]}**")
ev.show_data_notes(ctx, data)
modes = ev.label_mode_comparison(ctx, data)

# Headline metrics -------------------------------------------------------------------------------------------------
st.subheader("Headline metrics")
image_level = ev.headline(data.token, table)
specimen_level = ev.specimen_headline(data.token, table)
if image_level.n_evaluated == 0:
    st.warning("No sample in this split has a label the model knows; there is nothing to score.")
else:
    columns = st.columns(len(METRIC_LABELS))
    deltas = {} if modes is None or data.label_mode != "curated" else dict(zip(modes["metric"], modes["delta"],
                                                                               strict=True))
    for column, estimate in zip(columns, image_level.estimates, strict=True):
        value, interval = ev.format_estimate(estimate)
        delta = deltas.get(estimate.name)
        column.metric(estimate.label, value, help=interval or None,
                      delta=None if delta is None or delta != delta else f"{delta:+.3f} vs as given")
        column.caption(interval)
    st.caption(
        f"Image level: {image_level.n_evaluated:,} images, {image_level.n_classes_present} classes present; "
        f"{image_level.caption}. Macro averages run over the classes present in this split."
    )
    if image_level.unit == "specimen":
        st.caption(f"Why specimens: the {image_level.n_units:,} specimens here have several images each, and images "
                   "of one individual succeed or fail together, so resampling images would count each specimen "
                   "several times over and give intervals too narrow; whole specimens are resampled instead.")
    if image_level.n_unclustered_classes:
        st.caption(f"{image_level.n_unclustered_classes} class(es) are resampled by image instead: their specimens "
                   "differ no more than their images do (design effect ≤ 1), so each image carries its own "
                   "information there and specimen resampling would only widen their intervals.")
    if image_level.n_single_specimen_classes:
        st.caption(f"{image_level.n_single_specimen_classes} class(es) have a single specimen in this split: their "
                   "images are resampled instead, as if independent (with the class's prior), which assumes another "
                   "specimen of such a class would fare about like this one. No data here can measure how much "
                   "specimens of such a class differ, so balanced accuracy and macro-F1 may be less certain than "
                   "their intervals say.")
    if specimen_level is not None and specimen_level.n_evaluated:
        st.markdown("**Image level vs specimen level** (specimen = mean probability over its images)")
        frame = image_level.as_frame()[["label", "value", "low", "high"]].rename(
            columns={"label": "metric", "value": "image", "low": "image low", "high": "image high"})
        spec = specimen_level.as_frame()
        frame["specimen"] = spec["value"].to_numpy()
        frame["specimen low"] = spec["low"].to_numpy()
        frame["specimen high"] = spec["high"].to_numpy()
        st.dataframe(frame, hide_index=True, key="specimen-vs-image",
                     column_config={c: st.column_config.NumberColumn(format="%.3f") for c in frame.columns[1:]})
        st.caption(f"{specimen_level.n_evaluated:,} specimens with a known label; specimen intervals: "
                   f"{specimen_level.caption}.")

leaks = ev.leak_comparison(ctx, data, image_level)
if leaks is not None:
    n_leaked, comparison = leaks
    st.warning(f"{n_leaked:,} of {len(table):,} images in this split have a near-duplicate or their specimen in "
               "training (see **Data quality**): the reported scores count memory as skill. Beside them, the same "
               "metrics on the de-duplicated evaluation set.")
    st.dataframe(comparison.drop(columns=["metric"]), hide_index=True, key="dedup-metrics",
                 column_config={"label": st.column_config.TextColumn("metric"),
                                **{c: st.column_config.NumberColumn(c.replace("_", " "), format="%+.3f" if c == "delta"
                                                                    else "%.3f") for c in comparison.columns[2:]}})

if modes is not None:
    st.markdown("**As given vs as curated** (the review decisions applied; Δ = curated − given)")
    st.dataframe(modes.drop(columns=["metric"]), hide_index=True, key="label-modes",
                 column_config={"label": st.column_config.TextColumn("metric"),
                                **{c: st.column_config.NumberColumn(c.replace("_", " "), format="%+.3f" if c == "delta"
                                                                    else "%.3f") for c in modes.columns[2:]}})
    st.caption("Low and high: 95% bootstrap intervals of each label mode on this split; the curated view leaves "
               "excluded and disputed samples out.")

# Class distribution -----------------------------------------------------------------------------------------------
st.subheader("Class distribution")
dist, ratios = ev.distribution(data.full_token, data.full)
log_y = st.toggle("Log scale", value=False, key="dist-log")
st.plotly_chart(ev.distribution_figure(data.full_token, data.full, log_y), key="dist-chart")
ratio_text = " · ".join(f"{split}: {ratio:,.1f} : 1" for split, ratio in ratios.items() if ratio == ratio)
st.caption(f"Imbalance ratio (largest class / smallest non-empty class): {ratio_text or 'no samples'}")
empty = dist.index[dist["total"] == 0].tolist()
if empty:
    st.caption(f"Classes with no samples in any split: {md_list(empty)}")

# Per-class table --------------------------------------------------------------------------------------------------
st.subheader("Per-class metrics")
per_class = ev.per_class(data.token, table)
st.plotly_chart(ev.per_class_figure(data.token, table), key="per-class-chart")
st.dataframe(
    per_class,
    hide_index=True,
    key="per-class-table",
    column_config={
        **{column: st.column_config.NumberColumn(format="%.3f") for column in per_class.columns
           if column.startswith(("precision", "recall", "f1_"))},
        "f1": st.column_config.NumberColumn("F1", format="%.3f"),
        "confused_as": st.column_config.TextColumn("most confused with", help="its samples are mostly predicted as"),
        "confused_as_count": st.column_config.NumberColumn("n"),
        "confused_from": st.column_config.TextColumn("most mistaken from", help="most often predicted as this class"),
        "confused_from_count": st.column_config.NumberColumn("n "),
    },
)
st.caption(f"Per-class intervals: {ev.interval_caption(image_level.unit)}; a prior per class (half a right, half a "
           "missed and half a falsely predicted image) keeps a score of 0 or 1 open where the class has few samples, "
           "so F1 = 0 on 3 images and on 300 read differently.")
st.download_button(
    "Download per-class CSV",
    per_class.to_csv(index=False).encode(),
    file_name=f"per_class_{data.checkpoint}_{ctx.split}.csv",
    mime="text/csv",
    key="per-class-csv",
)
