"""Weakest classes: the bottom-N classes by F1; picking one shows what it is confused with, both ways, with images."""

from __future__ import annotations

import streamlit as st

from core.confusion import confusions_of_class
from core.metrics import bottom_classes, resampling_unit
from core.scores import CLASS_METRIC_LABELS
from pages import _evaluation as ev
from pages._gallery import render_gallery, render_sample_view

CLASS_KEY = "wc-class"
RANKINGS = {"f1": "F1", "f1_high": "F1 upper bound"}


def _pick_from_chart() -> None:
    points = st.session_state["wc-chart"].selection.points
    picked = [ev.selected_customdata(p)[0] for p in points if p.get("customdata")]
    if picked:
        st.session_state[CLASS_KEY] = str(picked[0])


ctx, data = ev.open_evaluation_page("Weakest classes")
table = data.table
st.caption(f"Checkpoint **{data.checkpoint}** · split **{ctx.split}** · {len(table):,} images")
ev.show_data_notes(ctx, data)

per_class = ev.per_class(data.token, table)
with_support = int((per_class["support"] > 0).sum())
if with_support == 0:
    st.warning("No class has a sample with a known label in this split.")
    st.stop()
n = st.slider("Classes shown", 1, min(50, with_support), min(10, with_support), key="wc-n") if with_support > 1 else 1
rank_by = st.radio("Rank by", RANKINGS, horizontal=True, key="wc-rank", format_func=RANKINGS.get,
                   help="Upper bound: a class is weak for sure only when even its interval's top is low; F1 = 0 "
                        "on 3 images ranks after F1 = 0 on 300.")
bottom = bottom_classes(per_class, n=n, rank_by=rank_by)
st.plotly_chart(ev.bottom_figure(data.token, table, n, rank_by), key="wc-chart", on_select=_pick_from_chart,
                selection_mode="points")
n_empty = int((per_class["support"] == 0).sum())
st.caption(f"The {len(bottom)} weakest classes by {RANKINGS[rank_by]} among {with_support} with samples in this "
           "split" + (f"; {n_empty} without samples here are left out" if n_empty else "") + ". Click a bar. "
           f"Error bars: {ev.interval_caption(resampling_unit(table))}.")

choices = bottom["class"].tolist()
if st.session_state.get(CLASS_KEY) not in choices:
    st.session_state[CLASS_KEY] = choices[0]
chosen = st.selectbox("Class", choices, key=CLASS_KEY)
row = per_class.set_index("class").loc[chosen]
cols = st.columns(4)
for column, name in zip(cols[:3], ("f1", "precision", "recall"), strict=True):
    column.metric(CLASS_METRIC_LABELS[name], f"{row[name]:.3f}")
    column.caption(f"CI {row[f'{name}_low']:.3f} – {row[f'{name}_high']:.3f}")
cols[3].metric("Support", f"{int(row['support']):,}")

class_idx = list(table.class_names).index(chosen)
confusions = confusions_of_class(ev.confusion(data.token, table), table.class_names, class_idx)
if confusions.empty:
    st.success(f"No confusion involving {chosen} in this split.")
    st.stop()
outgoing = confusions[confusions["direction"] == "predicted as"].reset_index(drop=True)
incoming = confusions[confusions["direction"] == "mistaken for it"].reset_index(drop=True)
left, right = st.columns(2)
with left:
    st.markdown(f"**{chosen} samples predicted as…**")
    st.dataframe(outgoing[["other", "count"]], hide_index=True, key="wc-out")
with right:
    st.markdown(f"**Samples predicted as {chosen}, truly…**")
    st.dataframe(incoming[["other", "count"]], hide_index=True, key="wc-in")

labels = [f"{chosen} → {o} ({c})" for o, c in zip(outgoing["other"], outgoing["count"], strict=True)]
labels += [f"{o} → {chosen} ({c})" for o, c in zip(incoming["other"], incoming["count"], strict=True)]
cells = list(zip(outgoing["true_idx"], outgoing["pred_idx"], strict=True))
cells += list(zip(incoming["true_idx"], incoming["pred_idx"], strict=True))
pick = st.selectbox("Examples of", range(len(labels)), format_func=lambda i: labels[i], key=f"wc-pair-{chosen}")
true_idx, pred_idx = (int(v) for v in cells[pick])
rows = ev.cell_rows(data.token, table, true_idx, pred_idx)
names = table.class_names
st.subheader(ev.cell_heading(len(rows), names[true_idx], names[pred_idx]))
inspected = render_gallery(ctx, rows, key="wc-gallery")
if inspected is not None:
    render_sample_view(ctx, table, inspected)
