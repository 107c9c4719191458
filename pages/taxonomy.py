"""Taxonomy: metrics at every rank ("where accuracy breaks down"), per-rank per-class tables and bottom 10, mistake
severity (how far up the tree the errors go), and the hierarchy-aware decision rule as an optional view."""

from __future__ import annotations

import streamlit as st

from core.taxonomy_figures import build_decision_rule_figure, build_severity_figure
from core.taxonomy_metrics import ROLLUP_RULES, breakdown_lines
from pages import _evaluation as ev
from pages import _taxonomy_support as tx
from pages._text import md, md_list

ctx, data = ev.open_evaluation_page("Taxonomy")
table = data.table
ev.show_data_notes(ctx, data)
taxonomy = tx.page_taxonomy(ctx, table.class_names)
if taxonomy is None:
    st.stop()
tax = tx.taxonomy_token(taxonomy)
st.caption(f"Checkpoint **{md(data.checkpoint)}** · split **{ctx.split}** · {len(table):,} images · ranks (finest "
           f"first): {md_list(taxonomy.levels, sep=' → ')}")
rule = st.radio("Predicted group at a rank", list(ROLLUP_RULES), key="tx-rule", horizontal=True,
                format_func=lambda r: "summed probability" if r == "sum" else "ancestor of the top-1 class",
                help="; ".join(f"{k}: {v}" for k, v in ROLLUP_RULES.items()))
st.caption(f"Shown: the predicted group at each rank is {ROLLUP_RULES[rule]}.")

# Where accuracy breaks down ---------------------------------------------------------------------------------------
st.subheader("Where accuracy breaks down")
ranks = tx.rank_table(data.token, tax, rule, table, taxonomy)
st.text("\n".join(breakdown_lines(ranks)))
st.plotly_chart(tx.rank_figure(data.token, tax, rule, table, taxonomy), key="tx-rank-chart")
st.dataframe(ranks, hide_index=True, key="tx-rank-table",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ranks.columns
                            if c not in ("rank", "groups", "n_evaluated")})
st.caption(f"Intervals: {tx.rank_results(data.token, tax, rule, table, taxonomy)[0].headline.caption}; every rank "
           "is scored on the same resamples.")

# One rank ---------------------------------------------------------------------------------------------------------
st.subheader("Per-class metrics at a rank")
rank = st.selectbox("Rank", taxonomy.levels, index=min(1, len(taxonomy.levels) - 1), key="tx-rank")
left, right = st.columns([3, 2])
with left:
    st.dataframe(tx.per_class_at(data.token, tax, rank, rule, table, taxonomy), hide_index=True, key="tx-per-class",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("precision", "recall", "f1")})
with right:
    st.markdown("**Bottom 10 by F1**")
    bottom = tx.bottom_at(data.token, tax, rank, rule, table, taxonomy)
    st.dataframe(bottom[["class", "f1", "support", "confused_as"]], hide_index=True, key="tx-bottom",
                 column_config={"f1": st.column_config.NumberColumn("F1", format="%.3f")})

# Mistake severity -------------------------------------------------------------------------------------------------
st.subheader("Mistake severity")
severity = tx.severity(data.token, tax, table, taxonomy)
if severity.n_errors == 0:
    st.success("No errors in this split.")
else:
    cols = st.columns(3)
    cols[0].metric("Errors", f"{severity.n_errors:,}", help=f"of {severity.n_evaluated:,} evaluated images")
    for column, estimate, label in ((cols[1], severity.mistake_severity, "Mistake severity"),
                                    (cols[2], severity.mean_distance, "Mean hierarchical distance")):
        value, interval = ev.format_estimate(estimate)
        column.metric(label, value, help="height of the lowest common ancestor: 1 = same " + taxonomy.levels[1])
        column.caption(interval)
    st.text("\n".join(severity.within_lines()))
    st.caption(f"Intervals: {severity.caption} (the same resamples as the metrics at every rank).")
    st.plotly_chart(tx.severity_figure(data.token, tax, table, taxonomy), key="tx-severity-chart")
    st.markdown("**Which classes make wild mistakes** (mean LCA height of their errors, share of errors beyond "
                "each rank)")
    by_class = tx.severity_classes(data.token, tax, table, taxonomy)
    st.dataframe(by_class, hide_index=True, key="tx-severity-classes",
                 column_config={c: st.column_config.NumberColumn(format="%.2f") for c in by_class.columns
                                if c.startswith("beyond_") or c in ("error_rate", "mistake_severity")})

# Better mistakes --------------------------------------------------------------------------------------------------
st.subheader("Better mistakes without retraining")
if st.toggle("Show the hierarchy-aware decision rule", key="tx-decision",
             help="Conditional risk minimisation (Karthik et al., ICLR 2021): predict the class with the lowest "
             "expected hierarchical distance under the model's probabilities instead of the most probable one"):
    effect = tx.decision(data.token, tax, table, taxonomy)
    st.caption(f"The rule changes {effect.n_changed:,} of {len(table):,} predictions. Groups at each rank are "
               "the ancestors of the predicted class under both rules.")
    st.plotly_chart(build_decision_rule_figure(effect.per_rank), key="tx-decision-chart")
    st.dataframe(effect.per_rank, hide_index=True, key="tx-decision-ranks",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in effect.per_rank.columns
                                if c != "rank"})
    st.dataframe(effect.severity.drop(columns=["measure"]), hide_index=True, key="tx-decision-severity",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in effect.severity.columns
                                if c not in ("measure", "label")})
    histogram = severity.histogram.assign(errors=effect.histogram["errors_before"].to_numpy())
    st.plotly_chart(build_severity_figure(histogram, after=effect.histogram["errors_after"]),
                    key="tx-decision-severity-chart")
