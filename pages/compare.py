"""Compare: two checkpoints (or a checkpoint and an ensemble) on the same samples: F1 with paired bootstrap
intervals, per-class F1 deltas, and the samples whose prediction flipped, opening into the gallery."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.compare import METRICS, Comparison, compare_predictions
from core.ensemble import EnsembleSpec, add_ensemble, ensemble_tables
from core.errors import USER_ERRORS
from core.figures import build_f1_delta_figure
from core.predictions import PredictionTable
from core.scores import METRIC_LABELS
from pages import _taxonomy_support as tx
from pages._access import current_actor, may
from pages._cached import require_table, start_page, table_token
from pages._evaluation import curate
from pages._gallery import render_gallery, render_sample_view
from pages._text import md

ENSEMBLE = "(ensemble of all checkpoints)"
LABELS = {name: METRIC_LABELS[name] for name in METRICS}
DIRECTIONS = {"right_to_wrong": "right → wrong", "wrong_to_right": "wrong → right"}


@st.cache_data(show_spinner="Bootstrapping…", max_entries=16)
def _compare(token_a: str, token_b: str, n_boot: int, cluster: str, _a: PredictionTable,
             _b: PredictionTable) -> Comparison:
    return compare_predictions(_a, _b, n_boot=n_boot, cluster=cluster)


@st.cache_resource(show_spinner="Combining the ensemble…", max_entries=4)
def _ensemble(tokens: tuple[str, ...], method: str, names: tuple[str, ...], _tables: tuple) -> PredictionTable:
    return ensemble_tables(list(_tables), method=method, member_names=names, name=f"ensemble({', '.join(names)})")


ctx = start_page("Compare checkpoints")
checkpoints = [c.name for c in ctx.workspace.checkpoints]
names = ctx.names  # checkpoints, then saved ensembles
if len(checkpoints) < 2:
    st.info("Comparing needs two checkpoints in the workspace; add one (e.g. from the Retrain page).")
    st.stop()
default_a = ctx.checkpoints[0] if ctx.checkpoints else names[0]
left, right = st.columns(2)
name_a = left.selectbox("Checkpoint A (baseline)", names, index=names.index(default_a), key="cmp-a")
others = [n for n in names if n != name_a]
default_b = next((n for n in ctx.checkpoints[1:] if n != name_a), others[0])
name_b = right.selectbox("Checkpoint B", [*others, ENSEMBLE], index=others.index(default_b), key="cmp-b",
                         help="Saved ensembles are listed by name; the last entry combines every checkpoint now")
with st.expander("Options"):
    cluster = st.radio("Resample", ("specimen", "sample"), horizontal=True, key="cmp-cluster",
                       help="specimen: whole individuals are resampled (their images are not independent)")
    n_boot = st.select_slider("Bootstrap resamples", (200, 500, 1000, 2000), value=1000, key="cmp-boot")
    method = st.radio("Ensemble method", ("mean", "f1_weighted"), horizontal=True, key="cmp-method",
                      help="f1_weighted: each member's vote on a class is weighted by its val F1 on that class")

full_a = require_table(ctx, name_a)
table_a = full_a
if name_b == ENSEMBLE:
    members = checkpoints
    member_tables = []
    for member in members:
        require_table(ctx, member)
        member_tables.append(ctx.table(member, split="all"))
    try:
        full_b = _ensemble(tuple(table_token(t) for t in member_tables), method, tuple(members), tuple(member_tables))
    except USER_ERRORS as exc:
        st.error(md(exc))
        st.stop()
    table_b = full_b.for_split(ctx.split)
    if may("edit_workspace"):  # saving changes taxalens.toml: admins only
        with st.popover("Save this ensemble to the workspace"):
            ensemble_name = st.text_input("Ensemble name", value=f"ensemble-{method}", key="cmp-ens-name")
            if st.button("Save", key="cmp-ens-save"):
                try:
                    add_ensemble(ctx.workspace.root, EnsembleSpec(ensemble_name.strip(), tuple(members), method),
                                 actor=current_actor())
                except USER_ERRORS as exc:
                    st.error(md(exc))
                else:
                    st.success(f"Saved as `[[ensembles]]` **{md(ensemble_name)}** in taxalens.toml")
    label_b = f"ensemble ({method}) of {', '.join(members)}"
    if method == "f1_weighted" and ctx.split == "val":
        st.warning("The ensemble's class weights come from the val split, so its val scores are optimistic; "
                   "compare on a test split when there is one.")
else:
    table_b = require_table(ctx, name_b)
    label_b = name_b

token_a, token_b = table_token(table_a), table_token(table_b)
if ctx.label_mode == "curated":  # both checkpoints scored against the review decisions
    curated_a, token_a = curate(ctx, table_a, token_a)
    curated_b, token_b = curate(ctx, table_b, token_b)
    table_a, table_b = curated_a.table, curated_b.table
    if len(curated_a.disputed):
        st.info(f"Labels as curated: {len(curated_a.disputed):,} disputed sample(s) of this split are left out of "
                "both checkpoints' scores until a lead rules on them.")
try:
    result = _compare(token_a, token_b, int(n_boot), cluster, table_a, table_b)
except USER_ERRORS as exc:
    st.error(md(exc))
    st.stop()
st.caption(f"A = **{md(name_a)}**, B = **{md(label_b)}** · split **{ctx.split}** · {result.n:,} samples compared"
           + (f" · {result.n_dropped:,} left out" if result.n_dropped else ""))
for note in result.notes:
    st.caption(f"Note: {md(note)}")

# Headline deltas --------------------------------------------------------------------------------------------------
st.subheader("Scores with paired bootstrap intervals")
level = int(round(result.confidence_level * 100))
columns = st.columns(len(LABELS))
for column, (metric, label) in zip(columns, LABELS.items(), strict=True):
    row = result.metric(metric)
    column.metric(f"{label} (B)", f"{row['b']:.3f}", delta=f"{row['delta']:+.3f} vs A", delta_color="normal")
    if not pd.isna(row["delta_low"]):
        column.caption(f"Δ {level}% CI [{row['delta_low']:+.3f}, {row['delta_high']:+.3f}] · "
                       f"B better in {row['share_b_better']:.0%} of resamples")
table = result.metrics.assign(metric=result.metrics["metric"].map(LABELS))
st.dataframe(table, hide_index=True, key="cmp-metrics",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in table.columns[1:]})
st.caption(f"{result.caption}: each resample scores both models on the same "
           f"{'specimens' if result.unit == 'specimen' else 'images'}, so the delta interval reflects only where they "
           "differ.")

# Per-class ---------------------------------------------------------------------------------------------------------
st.subheader("Per-class F1 change")
st.plotly_chart(build_f1_delta_figure(result.per_class, name_a=name_a, name_b="B"), key="cmp-delta-chart")
with st.expander("Per-class table"):
    st.dataframe(result.per_class, hide_index=True, key="cmp-per-class",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in result.per_class.columns
                                if c not in ("class", "support")})

# Along the taxonomy ------------------------------------------------------------------------------------------------
taxonomy = tx.page_taxonomy(ctx, tuple(dict.fromkeys((*table_a.class_names, *table_b.class_names))), quiet=True)
if taxonomy is not None:
    st.subheader("Along the taxonomy")
    along = tx.compare_ranks(table_token(table_a), table_token(table_b), tx.taxonomy_token(taxonomy), "sum",
                             int(n_boot), cluster, table_a, table_b, taxonomy)
    by_rank, severity = along.by_rank, along.severity
    st.dataframe(by_rank.assign(metric=by_rank["metric"].map(LABELS)), hide_index=True, key="cmp-ranks",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in by_rank.columns
                                if c not in ("rank", "metric")})
    st.caption("A and B rolled up to every rank (predicted group = largest summed probability), each with the paired "
               "bootstrap of B − A.")
    st.dataframe(severity.drop(columns=["measure"]), hide_index=True, key="cmp-severity",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in severity.columns
                                if c not in ("measure", "label")})
    st.caption("Mistake severity = mean height of the lowest common ancestor over errors (lower is better); "
               f"share_b_better = share of paired resamples where B's is lower. Intervals: {along.caption}, each "
               "resample scoring both models at every rank.")

# Flips -------------------------------------------------------------------------------------------------------------
st.subheader("Samples whose prediction flipped")
counts = result.flip_counts()
# Fixed option labels: counts in the labels made the radio a new widget whenever B changed, with neither option shown
# as selected. The counts go in the caption instead.
direction = st.radio("Direction", tuple(DIRECTIONS), horizontal=True, key="cmp-direction", format_func=DIRECTIONS.get)
st.caption(" · ".join(f"{label}: {counts[d]:,}" for d, label in DIRECTIONS.items()))
flips = result.flips[result.flips["direction"] == direction]
st.dataframe(flips.drop(columns=["direction"]), hide_index=True, key="cmp-flips",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                            ("confidence_a", "confidence_b", "p_label_a", "p_label_b")})
rows = flips.rename(columns={"pred_b": "pred", "confidence_b": "confidence"})
st.caption("Gallery captions show the label → B's prediction; inspect a sample to see both models' top classes.")
inspected = render_gallery(ctx, rows, key=f"cmp-gallery-{direction}")
if inspected is not None:
    row = flips.set_index("sample_id").loc[inspected]
    st.markdown(f"**A ({md(name_a)})** predicted **{md(row['pred_a'])}** ({row['confidence_a']:.1%}), "
                f"{row['p_label_a']:.1%} on the label · **B** predicted **{md(row['pred_b'])}** "
                f"({row['confidence_b']:.1%}), {row['p_label_b']:.1%} on the label. B's view:")
    render_sample_view(ctx, table_b, inspected)
