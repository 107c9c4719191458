"""Landing page: what the open workspace holds (dataset, classes, counts, checkpoints, ensembles)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import USER_ERRORS, user_message
from core.summary import checkpoint_rows
from pages._cached import (
    class_counts,
    ensemble_problem,
    missing_members,
    predictions_file,
    recheck_images,
    start_page,
)
from pages._text import md

ctx = start_page("TaxaLens")

dataset = ctx.dataset
st.caption(f"Workspace {md(ctx.workspace.root)} · dataset {md(dataset.source)}")
if st.button("Check the images again", key="home-recheck", icon=":material/refresh:",
             help="The images were checked when the server opened this dataset (new or changed files opened, the "
             "others known by size and modification time; a large dataset in the background, see the sidebar); pages "
             "reuse that check. Check again after editing images in place"):
    recheck_images(ctx.workspace)
    st.rerun()
counts, n_specimens = class_counts(dataset)
splits = [c for c in counts.columns if c != "total"]
cols = st.columns(4)
cols[0].metric("Images", f"{len(dataset):,}")
cols[1].metric("Classes", len(dataset.class_names))
cols[2].metric("Specimens", f"{n_specimens:,}")
largest, smallest = int(counts["total"].max()), int(counts["total"].min())
cols[3].metric("Imbalance", f"{largest / max(smallest, 1):.0f} : 1", help="largest class / smallest class")

st.subheader("Classes")
st.dataframe(counts, width="stretch")

st.subheader("Checkpoints")
rows = checkpoint_rows(ctx.workspace, cached=lambda name: predictions_file(ctx.workspace, name).is_file())
if rows:
    st.dataframe(pd.DataFrame(rows), width="stretch", hide_index=True)
else:
    st.info("No checkpoint listed yet: add `[[checkpoints]]` entries to taxalens.toml.")

if ctx.workspace.pools:
    # Imported only here: the label store (sqlalchemy) and the pool machinery cost a workspace without pools nothing.
    from core.pools import pool_counts, pool_label_frame
    from pages._annotate import pool_of
    from pages._review_support import label_store_or_problem

    st.subheader("Unlabelled pools")
    pool_rows = []
    store, problem = label_store_or_problem(ctx)
    if store is None:
        st.warning(f"Pool labels unavailable: cannot open the label store ({md(problem)})")
    for spec in ctx.workspace.pools if store is not None else ():
        try:
            pool = pool_of(ctx, spec.name)
            counts = pool_counts(pool, pool_label_frame(store, pool))
        except USER_ERRORS as exc:
            st.warning(f"Pool {md(spec.name)}: {md(user_message(exc))}")
            continue
        pool_rows.append({"pool": spec.name, "images": counts.images, "labelled": counts.labelled,
                          "auto-accepted": counts.auto_accepted, "excluded": counts.excluded,
                          "remaining": counts.remaining, "skipped files": counts.skipped})
    if pool_rows:
        st.dataframe(pd.DataFrame(pool_rows), width="stretch", hide_index=True)
    st.caption("Label them in the Review queue (queue: Label new images); labelled images join the curated export "
               "with status new.")

if ctx.ensembles:
    st.subheader("Ensembles")
    ensemble_rows = []
    for spec in ctx.ensembles:
        missing = missing_members(ctx.workspace, spec)
        ensemble_rows.append({"name": spec.name, "members": " + ".join(spec.members), "method": spec.method,
                              "predictions": "needs " + ", ".join(missing) if missing else "ready"})
    st.dataframe(pd.DataFrame(ensemble_rows), width="stretch", hide_index=True)
    st.caption("Pick an ensemble in the sidebar like a checkpoint: every evaluation page combines its members' "
               "predictions (Grad-CAM needs a single checkpoint).")
problem = ensemble_problem(ctx.workspace)
if problem:
    st.warning(md(problem))

if dataset.warnings:
    st.subheader("Warnings")
    for line in dataset.warnings:
        st.warning(md(line))
if len(dataset.skipped):
    st.subheader(f"Skipped files ({len(dataset.skipped)})")
    st.dataframe(dataset.skipped, width="stretch", hide_index=True)
