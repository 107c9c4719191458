"""Data quality: near-duplicates and split leaks (embedding neighbours + perceptual hash), image-quality checks, and
per-class outliers in embedding space; flagged images can become the review queue "image_quality"."""

from __future__ import annotations

import streamlit as st

from core import leakage, quality
from pages import _data_scan as scan
from pages._cached import require_table, start_page, table_token
from pages._gallery import render_gallery, sample_paths, sample_thumbnail
from pages._state import KEY_QUALITY_IDS
from pages._text import md

ctx = start_page("Data quality")
table = require_table(ctx)  # the selected split (outliers); the leak scan reads every split
leaks_tab, quality_tab, outlier_tab = st.tabs(["Near-duplicates & leaks", "Image quality", "Outliers"])

with leaks_tab:
    columns = st.columns(2)
    defaults = leakage.DuplicateSettings()
    similarity = columns[0].slider("Embedding similarity at least", 0.90, 1.0, defaults.min_similarity, 0.001,
                                   format="%.3f", key="dq-sim",
                                   help="cosine similarity of the mean-centred embeddings; above 1 turns it off")
    distance = columns[1].slider("Perceptual-hash distance at most (bits of 64)", 0, 20, defaults.max_hash_distance,
                                 key="dq-hash", help="the hash compares each image with the other's mirror image "
                                 "and centre too, so flips and small crops match")
    report = scan.leak_report(ctx, leakage.DuplicateSettings(min_similarity=similarity, max_hash_distance=distance))
    if report is not None:
        n_groups = int(report.groups["group"].nunique()) if len(report.groups) else 0
        st.metric("Evaluation images leaked from training", f"{report.n_leaked:,}")
        st.caption(f"{len(report.pairs):,} near-duplicate pairs in {n_groups:,} groups over every split.")
        if report.n_leaked:
            st.warning(f"{report.n_leaked:,} validation/test images have a near-duplicate or their specimen in "
                       "training: scores on them are memory, not generalisation. The Overview shows the metrics "
                       "without them.")
            st.dataframe(report.leaks, hide_index=True, key="dq-leaks")
        pairs = report.pairs
        if len(pairs):
            st.markdown("**Pairs** (most similar first)")
            n = st.number_input("Pairs shown", 1, max(1, len(pairs)), min(8, len(pairs)), key="dq-npairs")
            for row in pairs.head(int(n)).itertuples(index=False):
                left, right, facts = st.columns([1, 1, 2])
                for cell, sample in ((left, row.sample_a), (right, row.sample_b)):
                    path = sample_paths(ctx, [sample])[0]
                    data = sample_thumbnail(path)
                    if data is not None:
                        cell.image(data, width=140)
                facts.markdown(f"{md(row.sample_a)} ({md(row.split_a)}, {md(row.label_a)})  \n"
                               f"{md(row.sample_b)} ({md(row.split_b)}, {md(row.label_b)})  \n"
                               f"similarity {row.similarity:.3f} · hash distance {row.hash_distance} · found by "
                               f"{row.found_by}")
        if len(report.groups):
            with st.expander(f"Groups of near-identical images ({n_groups:,})"):
                st.dataframe(report.groups, hide_index=True, key="dq-groups")

with quality_tab:
    flagged = scan.quality_flags(ctx)
    summary = quality.quality_summary(flagged)
    st.dataframe(summary.drop(columns=["check"]), hide_index=True, key="dq-summary")
    checks = [c for c in quality.QUALITY_CHECKS if flagged[c].any()]
    if checks:
        check = st.selectbox("Show", checks, format_func=lambda c: quality.QUALITY_CHECKS[c].title, key="dq-check")
        ids = flagged.loc[flagged[check], "sample_id"].astype(str).tolist()
        if st.button(f"Send all {int((flagged['issues'] != '').sum()):,} flagged images to the review queue "
                     "“image quality”", key="dq-send"):
            st.session_state[KEY_QUALITY_IDS] = tuple(flagged.loc[flagged["issues"] != "", "sample_id"].astype(str))
            st.session_state["rv-kind"] = "image_quality"
            st.switch_page("pages/review.py")
        rows = scan.gallery_rows(table, ids)
        st.caption(f"{len(ids):,} images flagged {md(quality.QUALITY_CHECKS[check].title.lower())}; "
                   f"{len(rows):,} of them in split **{ctx.split}** shown.")
        render_gallery(ctx, rows, key="dq-gallery")
    else:
        st.success("No image is flagged by any check.")

with outlier_tab:
    token = table_token(table, ctx.split, ctx.checkpoint or "")
    scores = scan.outlier_scores(token, table).sort_values("outlier_score", ascending=False, na_position="last")
    st.caption("Outlier score: mean cosine distance to an image's 10 nearest images of the same given label (never "
               "its own specimen); high = unusual for its class (a mislabel, an odd view, a bad image).")
    st.dataframe(scores.head(200), hide_index=True, key="dq-outliers")
    top = scores.head(int(st.number_input("Most unusual shown", 6, 200, 24, key="dq-nout")))
    rows = scan.gallery_rows(table, top["sample_id"].astype(str).tolist())
    render_gallery(ctx, rows, key="dq-out-gallery")
