"""Label next: which acquisition order teaches the model most per label (the active-learning simulation's learning
curves on the current checkpoint's embeddings) and, when the workspace lists pools, a pool's first images in an
order."""

from __future__ import annotations

import streamlit as st

from core.acquisition import ORDERS
from core.active_learning import BASELINE, SimulationConfig, build_learning_curve_figure, curve_table, labels_to_reach
from pages import _acquisition_support as ln
from pages._cached import require_table, start_page
from pages._text import md

DEFAULT_ORDERS = ("margin", "diverse_uncertain", "diversity", BASELINE)  # cheap settings: 4 orders, 3 seeds

ctx = start_page("Label next")
require_table(ctx)  # no predictions yet: a compute button, then stop
table = ln.full_table(ctx)
if table is None or table.embeddings.shape[1] == 0:
    st.warning(f"The predictions of **{md(ctx.checkpoint or '')}** hold no embeddings, which the probe and the "
               "diversity orders need; recompute them with a single timm checkpoint.")
    st.stop()

st.subheader("Which order teaches the model most per label?", anchor=False)
st.caption("A simulation on this workspace: the training split's labels are hidden except a few per class; each "
           "round an order picks the next batch, its labels are revealed, and a linear probe on the stored "
           "embeddings is retrained and scored on the validation split (macro-F1; given labels). The order that "
           "climbs fastest is the one to label a new pool by.")
with st.expander("Settings", expanded=False):
    columns = st.columns(4)
    orders = st.multiselect("Orders", list(ORDERS), default=list(DEFAULT_ORDERS), key="al-orders",
                            format_func=lambda o: ORDERS[o].label)
    batch = int(columns[0].number_input("Images per round", 1, 500, 20, key="al-batch"))
    rounds = int(columns[1].number_input("Rounds", 1, 50, 8, key="al-rounds"))
    seeds = int(columns[2].number_input("Seeds", 1, 10, 3, key="al-seeds", help="runs averaged per order"))
    per_class = int(columns[3].number_input("Seed labels per class", 1, 50, 2, key="al-seed-per-class"))
if BASELINE not in orders:
    orders = [*orders, BASELINE]  # the summary measures every order against random
config = SimulationConfig(orders=tuple(o for o in ORDERS if o in orders), seed_per_class=per_class, batch=batch,
                          rounds=rounds, seeds=tuple(range(seeds)))
key = ln.curve_key(ctx, table, config)
curve = ln.stored_curve(key)
job = None if curve is not None else ln.running_job(key)

if curve is not None:
    st.plotly_chart(build_learning_curve_figure(curve), key="al-curve")
    summary = labels_to_reach(curve)
    best = summary.iloc[0]
    st.markdown(f"Random ends at macro-F1 **{summary.attrs['target']:.3f}** after "
                f"**{summary.attrs['baseline_labels']:.0f}** labels; **{md(ORDERS[best['order']].label)}** gets "
                f"there with **{best['share_of_random']:.0%}** of them.")
    st.dataframe(summary.assign(order=summary["order"].map(lambda o: ORDERS[o].label)), hide_index=True,
                 column_config={"share_of_random": st.column_config.NumberColumn("share of random's labels",
                                                                                 format="percent")})
    with st.expander("Learning curves (mean macro-F1 per round)"):
        st.dataframe(curve_table(curve).round(3), hide_index=True)
elif job is not None and job.error:
    st.error(f"The simulation failed: {md(job.error)}")
    if st.button("Try again", key="al-retry"):
        ln.forget_failed(key)
        st.rerun()
elif job is not None:
    @st.fragment(run_every=1.0)
    def _progress() -> None:
        done, total = job.progress
        if job.done.is_set():
            st.rerun(scope="app")
        st.progress(min(done / max(total, 1), 1.0), text=f"Simulating: {done}/{total} probe fits")

    _progress()
else:
    st.info(f"{config.steps} probe fits ({len(config.orders)} orders x {seeds} seeds x {rounds + 1} rounds); "
            "computed in the background and kept on disk.")
    if st.button("Compute learning curves", key="al-start", type="primary"):
        ln.start_simulation(key, table, config)
        st.rerun()

st.subheader("Pool order", anchor=False)
pools = ln.pool_names(ctx)
if not pools:
    st.info("This workspace lists no unlabelled pool (`[[pools]]` in `taxalens.toml`): the simulation above is what "
            "there is to show.")
else:
    columns = st.columns(2)
    pool = columns[0].selectbox("Pool", pools, key="al-pool")
    order = columns[1].selectbox("Order", list(ORDERS), key="al-pool-order", format_func=lambda o: ORDERS[o].label)
    preview, note = ln.pool_preview(ctx, table, pool, order)
    if preview is None:
        st.warning(md(note))
    else:
        st.caption(md(note))
        st.dataframe(preview, hide_index=True, column_config={
            "confidence": st.column_config.NumberColumn(format="%.3f")})
