"""Calibration: can the confidence be trusted? Reliability diagram, ECE/MCE/Brier/NLL with bootstrap intervals,
temperature scaling fitted and stored per checkpoint (before/after side by side), and auto-accept thresholds."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from core.calibration import BIN_STRATEGIES, DEFAULT_BINS, fit_temperature, save_temperature
from core.calibration_figures import build_reliability_figure, build_risk_coverage_figure
from core.conformal import CONFORMAL_METHODS, ConformalConfig
from core.errors import USER_ERRORS
from core.thresholds import thresholds_csv, thresholds_json
from pages import _confidence as cal
from pages import _evaluation as ev
from pages._cached import start_page, stored_temperature
from pages._text import md, md_list

_NUMBER = {"format": "%.4f"}


def _metrics_table(report, key: str) -> None:
    frame = report.metrics[["label", "value", "low", "high"]].rename(columns={"label": "metric"})
    st.dataframe(frame, hide_index=True, key=key,
                 column_config={c: st.column_config.NumberColumn(**_NUMBER) for c in ("value", "low", "high")})


ctx = start_page("Calibration")
raw_ctx = replace(ctx, confidences="raw")  # this page shows both sides itself
data = ev.require_eval_data(raw_ctx)
table = data.table
st.caption(f"Checkpoint **{md(data.checkpoint)}** · split **{ctx.split}** · {len(table):,} images. "
           "When the model says 90%, is it right 90% of the time?")
ev.show_data_notes(raw_ctx, data)

controls = st.columns([1, 2])
n_bins = controls[0].slider("Bins", 5, 30, DEFAULT_BINS, key="cal-bins")
strategy = controls[1].radio("Bins of", list(BIN_STRATEGIES), format_func=BIN_STRATEGIES.get, horizontal=True,
                             key="cal-strategy", help="equal width: [0, 1/B), ...; equal mass: each bin holds the "
                             "same number of images (quantiles of the confidence)")

fit = stored_temperature(ctx.workspace, data.checkpoint, data.full)
with st.container(border=True):
    if fit is None:
        st.markdown("**Temperature scaling:** none stored for this checkpoint yet.")
    else:
        st.markdown(f"**Temperature scaling:** T = **{fit.temperature:.3f}**, fitted on the **{md(fit.split)}** "
                    f"split ({fit.n_rows:,} images, {fit.n_folds} specimen-grouped folds). Out of fold: NLL "
                    f"{fit.nll_before:.4f} → {fit.nll_after:.4f}, ECE {fit.ece_before:.4f} → {fit.ece_after:.4f}.")
        if fit.split == ctx.split:
            st.caption("The after column below is measured on the rows the temperature was fitted to; the "
                       "out-of-fold numbers above are the honest ones.")
    if st.button(f"Fit temperature on the {ctx.split} split", key="cal-fit",
                 type="primary" if fit is None else "secondary",
                 help="One parameter, fitted by minimising the NLL; stored in the workspace for this checkpoint and "
                 "used wherever the sidebar's Confidences is set to calibrated"):
        try:
            new_fit = fit_temperature(table, checkpoint=data.checkpoint, split=ctx.split)
            save_temperature(ctx.workspace.cache_dir, new_fit)
        except USER_ERRORS as exc:
            st.error(md(exc))
        else:
            st.rerun()

temperature = fit.temperature if fit is not None else 1.0
before = cal.report(data.token, n_bins, strategy, 1.0, table)
after = cal.report(data.token, n_bins, strategy, temperature, table) if fit is not None else None

st.subheader("Reliability diagram")
st.plotly_chart(build_reliability_figure(before.bins, after=None if after is None else after.bins,
                                         title=f"Reliability ({BIN_STRATEGIES[strategy]} bins)"),
                key="cal-diagram")
columns = st.columns(2)
with columns[0]:
    st.markdown("**Uncalibrated**")
    _metrics_table(before, "cal-metrics-before")
with columns[1]:
    st.markdown(f"**Temperature-scaled** (T = {temperature:.3f})" if after is not None else "**Temperature-scaled**")
    if after is None:
        st.caption("Fit a temperature above to see it.")
    else:
        _metrics_table(after, "cal-metrics-after")
st.caption(f"{before.n_rows:,} images with a known label; intervals: {before.caption}. ECE and MCE over "
           f"{n_bins} {BIN_STRATEGIES[strategy]} bins of the top-label confidence; Brier: multiclass (0 to 2); "
           "NLL: natural log.")

st.subheader("Per class")
shown = after or before
per_class = shown.per_class
st.dataframe(per_class, hide_index=True, key="cal-per-class",
             column_config={c: st.column_config.NumberColumn(format="%.4f") for c in per_class.columns[2:]})
st.caption(("Temperature-scaled. " if after is not None else "")
           + f"ECE, MCE, Brier and NLL per class are one-vs-rest: the class's own probability against being that "
           f"class, over every image ({n_bins} equal-width bins), with {shown.caption} (the same draws as the "
           "overall metrics). accuracy, mean_confidence and gap (accuracy minus mean confidence; negative: "
           "over-confident) are over the class's own images.")

st.subheader("Auto-accept thresholds")
row = st.columns([1, 1, 2])
precision = row[0].number_input("Target precision", 0.5, 0.999, 0.95, step=0.01, key="cal-precision",
                                format="%.3f")
use_calibrated = row[1].toggle("On calibrated confidences", value=False, key="cal-thr-calibrated",
                               disabled=fit is None, help="thresholds on the temperature-scaled confidences")
thr_temperature = temperature if use_calibrated and fit is not None else 1.0
result = cal.thresholds(data.token, float(precision), thr_temperature, table)
st.plotly_chart(build_risk_coverage_figure(cal.risk_coverage(data.token, table)), key="cal-risk")
st.markdown(f"At precision **{precision:.3f}** (its 95% lower bound), **{result.accepted_share:.1%}** of these "
            f"images would be accepted without review; on held-out specimen folds the accepted ones were "
            f"{result.heldout_precision:.1%} right.")
if result.unreachable:
    st.warning(f"{len(result.unreachable)} class(es) never reach the target and always need review: "
               + md_list(list(result.unreachable)))
st.dataframe(result.frame, hide_index=True, key="cal-thresholds",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                            ("threshold", "coverage", "precision", "precision_low", "heldout_precision",
                             "heldout_coverage")})
extra = {"checkpoint": data.checkpoint, "split": ctx.split, "temperature": thr_temperature}
downloads = st.columns(2)
downloads[0].download_button("Thresholds (JSON)", thresholds_json(result, **extra), key="cal-json",
                             file_name=f"thresholds_{data.checkpoint}.json", mime="application/json")
downloads[1].download_button("Thresholds (CSV)", thresholds_csv(result), key="cal-csv",
                             file_name=f"thresholds_{data.checkpoint}.csv", mime="text/csv")
st.caption("A prediction is accepted when its confidence is at least its predicted class's threshold; an empty "
           "threshold means always review. `python -m core thresholds` writes the same file.")

st.subheader("Prediction sets")
current = cal.conformal_config()
row = st.columns([2, 2, 1])
coverage = row[0].slider("Coverage", 0.5, 0.99, float(current.coverage), step=0.01, key="cal-coverage",
                         help="share of images whose true class should be in their set")
method = row[1].radio("Score", list(CONFORMAL_METHODS), index=list(CONFORMAL_METHODS).index(current.method),
                      format_func=CONFORMAL_METHODS.get, key="cal-method")
conditional = row[2].toggle("Per class", value=current.class_conditional, key="cal-conditional",
                            help="class-conditional: a threshold per class, so rare classes get their coverage too")
config = ConformalConfig(coverage=float(coverage), method=method, class_conditional=bool(conditional))
cal.set_conformal_config(config)  # the review and misclassification pages use the same sets
report = cal.coverage(data.token, config, table)
st.markdown(f"Empirical coverage **{report.coverage:.1%}** (± {report.coverage_sd:.1%} over {report.repeats} "
            f"random specimen-grouped calibration/evaluation halves), mean set size **{report.mean_set_size:.2f}**.")
st.dataframe(report.per_class, hide_index=True, key="cal-sets",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                            ("coverage", "coverage_sd", "mean_set_size", "always_included_share")})
st.caption("Split conformal: thresholds from half the specimens, measured on the other half. always_included_share: "
           "how often the class had too few calibration images for a finite per-class threshold (then it is in "
           "every set). The review queue and the misclassification browser show sets calibrated on the whole "
           "validation split.")
