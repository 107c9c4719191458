"""Cached evaluation data for the overview, confusion, weakest-classes and misclassification pages.

Each wrapper takes a cheap content token (a hash of the table's labels and predictions) plus the table itself as an
unhashed `_table` argument, so Streamlit never hashes a 100,000 x 300 probability matrix on a rerun. Small results
go through `st.cache_data`; plotly figures with thousands of points are held with `st.cache_resource` (never
mutated: `st.plotly_chart` copies the figure to a dict), because unpickling a copy per rerun costs more than
building the page.
"""

# ruff: noqa: E402 (the imports below follow the wait for the import warm-up, on purpose)
from __future__ import annotations

from pages._warmup import PAGE_WAIT_S, await_page_modules

# A server's first evaluation page: while the import warm-up (pages._warmup, started after the first page rendered)
# still imports the modules below, let it finish them instead of racing it for the interpreter lock. No warm-up step
# imports this module or one that does, so the wait cannot block the warm-up; once they are imported it returns at once.
await_page_modules(PAGE_WAIT_S)

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import confusion as cm
from core import figures, leakage, metrics, queries, specimens
from core.curation import CuratedTable, apply_curated_labels, compare_label_modes, curated_labels
from core.errors import USER_ERRORS, TaxaLensError
from core.labelstore import LabelStore
from core.predictions import PredictionTable
from core.result_cache import (
    PAGE_INTERVALS,
    RESULTS_DIR,
    dedup_headline_result,
    interval_result,
    leaked_in,
    resampling_plan_of,
)
from core.scores import ResamplingPlan, Unit, describe_intervals
from pages._cached import (
    PageContext,
    checkpoint_stamp,
    default_workspace_path,
    open_workspace,
    require_table,
    start_page,
    table_token,
)
from pages._cached import dataset_key as dataset_load_key
from pages._review_support import label_store
from pages._state import KEY_WORKSPACE
from pages._text import md, md_list


@dataclass(frozen=True)
class EvalData:
    """The primary checkpoint's predictions on the selected split, with content tokens for cache keys."""

    table: PredictionTable  # rows of the selected split (under curated labels in curated mode)
    token: str  # content hash of `table` (labels, predictions, confidences, split)
    full: PredictionTable  # every split (class distribution)
    full_token: str
    checkpoint: str
    label_mode: str = "given"  # given | curated
    curation: CuratedTable | None = None  # curated mode: the split's relabels, exclusions and disputed rows


@st.cache_resource(show_spinner=False, max_entries=32)
def _split_table(full_token: str, split: str, _full: PredictionTable) -> tuple[PredictionTable, str]:
    table = _full.for_split(split)
    return table, table_token(table, split)


class _NoPredictions(TaxaLensError, LookupError):
    """Raised inside the cached lookup so that "not computed yet" is never cached (Streamlit caches no exception)."""


# The lookup of the cached table is held for a short time per (workspace, checkpoint, dataset load): a new manifest, a
# reload or new weights change the key at once. Images edited in place are noticed when the dataset is loaded again
# (a server restart, "Check the images again", a background check of a snapshot), not by this lifetime.
FULL_TABLE_TTL_S = 30


@st.cache_resource(show_spinner=False, ttl=FULL_TABLE_TTL_S, max_entries=16)
def _full_table(workspace_root: str, name: str, load_key: str, weights_stamp: tuple, confidence_stamp: tuple,
                _ctx: PageContext) -> PredictionTable:
    table = _ctx.table(name, split="all")
    if table is None:
        raise _NoPredictions(name)
    return table


def _weights_stamp(ctx: PageContext) -> tuple:
    return checkpoint_stamp(ctx.workspace, ctx.checkpoint) if ctx.checkpoint else (None,)


def open_evaluation_page(title: str) -> tuple[PageContext, EvalData]:
    """Title the page and return the sidebar's context and its evaluation data (or stop the script)."""
    ctx = start_page(title)  # a fixed page title, never user text
    return ctx, require_eval_data(ctx)


@st.cache_resource(show_spinner=False, max_entries=32)
def _curated(token: str, last_event_id: int, _table: PredictionTable, _store: LabelStore) -> CuratedTable:
    # keyed by the store's newest event id: a decision made anywhere shows on the next rerun
    states = _store.states(_table.frame["sample_id"].astype(str))
    return apply_curated_labels(_table, curated_labels(states))


def curate(ctx: PageContext, table: PredictionTable, token: str) -> tuple[CuratedTable, str]:
    """`table` under the label store's current labels, and the content token of the curated table."""
    store = label_store(ctx)
    event_id = store.last_event_id()
    curated = _curated(token, event_id, table, store)
    return curated, f"{token}|curated@{event_id}"


def require_eval_data(ctx: PageContext, *, label_mode: str | None = None) -> EvalData:
    """The selected split's predictions under the sidebar's label mode (or `label_mode`); shows the compute button or
    the empty-split note and stops otherwise."""
    full = None
    if ctx.checkpoint:
        try:
            full = _full_table(str(ctx.workspace.root), ctx.checkpoint, dataset_load_key(ctx.dataset),
                               _weights_stamp(ctx), ctx.confidence_stamp, ctx)
        except (_NoPredictions, ValueError, FileNotFoundError):  # ValueError: an ensemble that cannot be combined
            full = None
    if full is None:
        require_table(ctx)  # shows "add a checkpoint", the compute button or why an ensemble fails, then stops
        st.stop()
    full_token = table_token(full, "all", ctx.checkpoint or "")
    table, token = _split_table(full_token, ctx.split, full)
    if len(table) == 0:
        splits = sorted(full.frame["split"].unique().tolist())
        st.warning(f"The **{ctx.split}** split has no samples (this dataset has: {md_list(splits) or 'none'}). "
                   "Pick another split in the sidebar.")
        st.stop()
    mode = label_mode or ctx.label_mode
    curation = None
    if mode == "curated":
        curated_full, full_token = curate(ctx, full, full_token)
        curation, token = curate(ctx, table, token)
        full, table = curated_full.table, curation.table
    return EvalData(table=table, token=token, full=full, full_token=full_token, checkpoint=ctx.checkpoint or "",
                    label_mode=mode, curation=curation)


def show_data_notes(ctx: PageContext, data: EvalData) -> None:
    """Warn about checkpoint classes that differ from the dataset's, about samples excluded from metrics, and about
    scores of an F1-weighted ensemble on the split its weights were learned on."""
    weights_split = (data.full.meta.get("ensemble") or {}).get("weights_split")
    if weights_split and ctx.split in (weights_split, "all"):
        st.warning(f"Ensemble **{md(data.checkpoint)}** weights its members by their per-class F1 on the "
                   f"**{weights_split}** split, so its scores on **{ctx.split}** are optimistic; judge it on a split "
                   "it was not weighted on (e.g. test).")
    mismatch = class_mismatch(data.full_token, tuple(data.full.class_names), tuple(ctx.dataset.class_names))
    if mismatch.any:
        lines = [f"The classes of checkpoint **{md(data.checkpoint)}** differ from the dataset's labels."]
        if mismatch.renamed:
            pairs = ", ".join(f"{md(d)} → {md(m)}" for d, m in mismatch.renamed)
            lines.append(f"Probably renamed (dataset → model): {pairs}.")
        if mismatch.missing:
            lines.append(f"Dataset labels the model cannot predict ({len(mismatch.missing)}): "
                         + md_list(mismatch.missing) + " — their samples are left out of metrics.")
        if mismatch.extra:
            lines.append(f"Model classes with no dataset samples ({len(mismatch.extra)}): "
                         + md_list(mismatch.extra) + ".")
        st.warning("  \n".join(lines))
    if data.curation is not None:
        show_curation_notes(data)
    excluded = excluded_counts(data.token, data.table)
    if len(excluded):
        total = int(excluded.sum())
        st.info(f"{total:,} of {len(data.table):,} samples in this split carry a label that is not one of the model's "
                f"classes ({', '.join(f'{md(k)}: {v}' for k, v in excluded.items())}); they are excluded from metrics.")


def label_mode_comparison(ctx: PageContext, data: EvalData) -> pd.DataFrame | None:
    """Headline metrics of this split as given vs as curated (`core.curation.compare_label_modes`), or None while
    the label store has no event."""
    if label_store(ctx).last_event_id() == 0:
        return None
    other = require_eval_data(ctx, label_mode="given" if data.label_mode == "curated" else "curated")
    given, curated = (data, other) if data.label_mode == "given" else (other, data)
    return _compare_modes(given.token, curated.token, given.table, curated.table)


@st.cache_data(show_spinner=False, max_entries=64)
def _compare_modes(given_token: str, curated_token: str, _given: PredictionTable, _curated: PredictionTable
                   ) -> pd.DataFrame:
    return compare_label_modes(headline(given_token, _given), headline(curated_token, _curated))


def show_curation_notes(data: EvalData) -> None:
    """Say what curated labels changed in this split and list the disputed samples apart."""
    curation = data.curation
    if curation is None:
        return
    disputed = curation.disputed
    st.info(f"Labels **as curated**: {curation.n_relabeled:,} relabelled, {curation.n_excluded:,} excluded"
            + (f", {len(disputed):,} disputed (reviewers disagree, no ruling yet) left out of the scores and listed "
               "below" if len(disputed) else "")
            + ". Switch the sidebar's Labels to *as given* for the dataset's own labels.")
    if len(disputed):
        with st.expander(f"Disputed samples in this split ({len(disputed):,})"):
            st.dataframe(disputed.frame[["sample_id", "label", "pred", "confidence"]], hide_index=True,
                         key="ev-disputed", column_config={"label": st.column_config.TextColumn("given label")})


@st.cache_data(show_spinner=False, max_entries=64)
def class_mismatch(full_token: str, model_classes: tuple[str, ...], dataset_classes: tuple[str, ...]):
    return metrics.compare_class_lists(model_classes, dataset_classes)


@st.cache_data(show_spinner=False, max_entries=64)
def excluded_counts(token: str, _table: PredictionTable) -> pd.Series:
    return metrics.excluded_labels(_table)


INTERVALS = PAGE_INTERVALS  # every interval the evaluation pages show: 1,000 stratified draws, 95%, Bayesian (the
# command line warms the disk cache with the same configuration, core.result_cache.PAGE_INTERVALS)


def interval_caption(unit: Unit) -> str:
    """"95% CI (Bayesian bootstrap, Jeffreys prior per class), 1,000 specimen resamples, stratified by class" for
    the pages' intervals."""
    return describe_intervals(INTERVALS, unit)


@st.cache_resource(show_spinner=False, max_entries=8)
def resampling(token: str, _table: PredictionTable) -> ResamplingPlan | None:
    """The table's bootstrap plan (shared by the headline and per-class intervals), None without evaluated rows."""
    return resampling_plan_of(_table)


def results_dir() -> Path | None:
    """Where interval results are cached on disk: beside the open workspace's predictions (None when no workspace
    opens). Read inside the cached functions below, on a miss only; their disk keys are content keys."""
    try:
        workspace = open_workspace(st.session_state.get(KEY_WORKSPACE) or default_workspace_path())
    except USER_ERRORS:
        return None
    return workspace.cache_dir / "predictions" / RESULTS_DIR


@st.cache_data(show_spinner="Bootstrapping confidence intervals…", max_entries=64)
def headline(token: str, _table: PredictionTable, *, n_boot: int = INTERVALS.n_boot, seed: int | None = INTERVALS.seed
             ) -> metrics.HeadlineMetrics:
    config = replace(INTERVALS, n_boot=n_boot, seed=seed)
    return interval_result(results_dir(), "headline", token, _table, config, plan=lambda: resampling(token, _table))


@st.cache_resource(show_spinner=False, max_entries=16)
def specimen_level(token: str, _table: PredictionTable) -> PredictionTable | None:
    """The specimen-level table (mean probability per specimen), or None when no specimen has two images."""
    return specimens.specimen_table(_table) if specimens.has_specimens(_table) else None


@st.cache_data(show_spinner="Specimen-level metrics…", max_entries=64)
def specimen_headline(token: str, _table: PredictionTable, *, n_boot: int = INTERVALS.n_boot
                      ) -> metrics.HeadlineMetrics | None:
    return interval_result(results_dir(), "specimen-headline", token, _table, replace(INTERVALS, n_boot=n_boot))


@st.cache_data(show_spinner=False, max_entries=64)
def confusion(token: str, _table: PredictionTable) -> np.ndarray:
    return cm.confusion_counts(_table)


@st.cache_data(show_spinner="Bootstrapping per-class intervals…", max_entries=64)
def per_class(token: str, _table: PredictionTable) -> pd.DataFrame:
    return interval_result(results_dir(), "per-class", token, _table, INTERVALS,
                           plan=lambda: resampling(token, _table))


@st.cache_data(show_spinner=False, max_entries=64)
def confused_pairs(token: str, _table: PredictionTable, *, top: int | None = None) -> pd.DataFrame:
    return cm.rank_confused_pairs(confusion(token, _table), _table.class_names, top=top)


@st.cache_data(show_spinner=False, max_entries=64)
def distribution(full_token: str, _full: PredictionTable) -> tuple[pd.DataFrame, pd.Series]:
    dist = metrics.class_distribution(_full)
    return dist, metrics.imbalance_ratios(dist)


@st.cache_resource(show_spinner=False, max_entries=16)
def cell_index(token: str, _table: PredictionTable) -> cm.CellIndex:
    """The table's rows grouped by confusion cell, once per table: a click slices its cell's rows."""
    return cm.cell_index(_table)


@st.cache_data(show_spinner=False, max_entries=256)
def cell_rows(token: str, _table: PredictionTable, true_idx: int, pred_idx: int) -> pd.DataFrame:
    return cm.cell_samples(_table, true_idx, pred_idx, index=cell_index(token, _table))


@st.cache_data(show_spinner=False, max_entries=64)
def class_order(token: str, _table: PredictionTable, order: str, taxa: tuple[tuple[str, str], ...] | None
                ) -> np.ndarray:
    return cm.order_classes(confusion(token, _table), _table.class_names, order=order,
                                 taxa=dict(taxa) if taxa is not None else None)


@st.cache_data(show_spinner=False, max_entries=64)
def taxa_of_classes(dataset_key: str, _samples: pd.DataFrame, column: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(queries.class_taxa(_samples, column).items()))


def dataset_key(ctx: PageContext) -> str:
    """A cache key for the dataset: workspace folder plus the number of samples and their label counts."""
    labels = ctx.dataset.samples["label"]
    return f"{ctx.workspace.root}|{len(labels)}|{hash(tuple(labels.value_counts().sort_index().items()))}"


@st.cache_resource(show_spinner=False, max_entries=32)
def confusion_figure(
    token: str,
    _table: PredictionTable,
    normalise: str,
    order: str,
    taxa: tuple[tuple[str, str], ...] | None,
    hide_diagonal: bool,
    highlight: tuple[str, ...],
    selected: tuple[int, int] | None,
    classes: tuple[int, ...] | None = None,
) -> go.Figure:
    return figures.build_confusion_figure(
        confusion(token, _table), _table.class_names, normalise=normalise,
        order=class_order(token, _table, order, taxa), hide_diagonal=hide_diagonal, highlight=highlight,
        selected=selected, classes=classes,
    )


# Above SUBMATRIX_ABOVE classes the confusion page draws the SUBMATRIX_CLASSES classes most involved in errors by
# default (a 1,000-class matrix has too many cells to read, or to send to the browser on every rerun).
SUBMATRIX_ABOVE = 150
SUBMATRIX_CLASSES = 100


@st.cache_data(show_spinner=False, max_entries=64)
def top_confused(token: str, _table: PredictionTable, n: int) -> tuple[int, ...]:
    return tuple(int(i) for i in cm.top_confused_classes(confusion(token, _table), n=n))


@st.cache_resource(show_spinner=False, max_entries=32)
def distribution_figure(full_token: str, _full: PredictionTable, log_y: bool) -> go.Figure:
    return figures.build_class_distribution_figure(distribution(full_token, _full)[0], log_y=log_y)


@st.cache_resource(show_spinner=False, max_entries=32)
def per_class_figure(token: str, _table: PredictionTable) -> go.Figure:
    return figures.build_per_class_f1_figure(per_class(token, _table))


@st.cache_resource(show_spinner=False, max_entries=32)
def bottom_figure(token: str, _table: PredictionTable, n: int, rank_by: str = "f1") -> go.Figure:
    return figures.build_bottom_f1_figure(metrics.bottom_classes(per_class(token, _table), n=n, rank_by=rank_by))


@st.cache_data(show_spinner=False, max_entries=64)
def label_choices(token: str, _table: PredictionTable) -> list[str]:
    """The split's distinct given labels, sorted (a filter's options; once per table, not per rerun)."""
    return sorted(str(label) for label in _table.frame["label"].unique())


# cache_resource, not cache_data: at a million images the filtered rows are hundreds of thousands, and cache_data
# would unpickle a copy on every rerun; callers never mutate the frame (they filter and slice it into new ones)
@st.cache_resource(show_spinner=False, max_entries=32)
def filtered_rows(
    token: str,
    _table: PredictionTable,
    *,
    true_classes: tuple[str, ...],
    pred_classes: tuple[str, ...],
    confidence_range: tuple[float, float],
    specimen_ids: tuple[str, ...],
    taxa: tuple[tuple[str, str], ...] | None,
    taxon_values: tuple[str, ...],
    errors_only: bool,
    sort_by: str,
    descending: bool,
) -> pd.DataFrame:
    return queries.filter_predictions(
        _table, true_classes=true_classes, pred_classes=pred_classes, confidence_range=confidence_range,
        specimen_ids=specimen_ids, taxa=dict(taxa) if taxa is not None else None, taxon_values=taxon_values,
        errors_only=errors_only, sort_by=sort_by, descending=descending,
    )


def pairs_key(search: list[str], cell: tuple[int, int] | None) -> str:
    """The widget key of the ranked-pairs table: a new one per class filter and open cell, so its checked row is
    always the open cell (never a row of an earlier, unfiltered list that clicking would only uncheck)."""
    return f"cm-pairs-{abs(hash((tuple(search), cell))) % 10**12}"


def pair_row(pairs: pd.DataFrame, cell: tuple[int, int] | None) -> list[int]:
    """Positions in the shown `pairs` of the open cell (empty when it is not listed)."""
    if cell is None:
        return []
    hit = (pairs["true_idx"].to_numpy() == cell[0]) & (pairs["pred_idx"].to_numpy() == cell[1])
    return [int(i) for i in hit.nonzero()[0][:1]]


def cell_heading(n: int, true_class: str, pred_class: str) -> str:
    """The gallery heading of one confusion cell: "3 samples: true Daphnia → predicted Navicula"."""
    return f"{n} sample{'' if n == 1 else 's'}: true {true_class} → predicted {pred_class}"


def selected_customdata(point: dict) -> list:
    """A plotly selection point's customdata as a list (the browser may send an array as an index-keyed object)."""
    data = point.get("customdata")
    if isinstance(data, dict):
        data = [data[key] for key in sorted(data, key=int)]
    return list(data) if isinstance(data, list | tuple) else ([] if data is None else [data])


def format_estimate(estimate: metrics.MetricEstimate) -> tuple[str, str]:
    """(value text, interval text) for a headline metric; "—" and the reason when it is undefined."""
    if estimate.value is None:
        return "—", estimate.note
    level = f"{INTERVALS.confidence_level * 100:g}%"
    interval = "" if estimate.low is None else f"{level} CI {estimate.low:.3f} – {estimate.high:.3f}"
    return f"{estimate.value:.3f}", interval


def leak_comparison(ctx: PageContext, data: EvalData, reported: metrics.HeadlineMetrics
                    ) -> tuple[int, pd.DataFrame] | None:
    """(leaked images in this split, reported vs de-duplicated headline metrics) when validation/test images of the
    split leak from training (`core.leakage`, default settings); None when none do or the split is training. The
    de-duplicated metrics are cached on disk (`core.result_cache.dedup_headline_result`, warmed by `predict
    --workspace`)."""
    from pages._data_scan import leak_report

    if ctx.split == "train":
        return None
    try:
        report = leak_report(ctx, hash_images=False)
    except USER_ERRORS:
        return None
    if report is None:
        return None
    leaked = _leaked(data.token, id(report.leaks), data.table, report.leaks)[1]
    if leaked.empty:
        return None
    return len(leaked), _dedup_compare(data.token, id(report.leaks), data.table, report.leaks, leaked, reported)[1]


# The two below are keyed by the identity of the scan's leaks and hold a reference to them, so the id is never reused
# while an entry lives.
@st.cache_resource(show_spinner=False, max_entries=32)
def _leaked(token: str, leaks_id: int, _table: PredictionTable, _leaks: pd.DataFrame
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    return _leaks, leaked_in(_leaks, _table)


@st.cache_resource(show_spinner="Scoring the de-duplicated evaluation set…", max_entries=32)
def _dedup_compare(token: str, leaks_id: int, _table: PredictionTable, _leaks: pd.DataFrame, _leaked: pd.DataFrame,
                   _reported: metrics.HeadlineMetrics) -> tuple[pd.DataFrame, pd.DataFrame]:
    dedup = dedup_headline_result(results_dir(), token, _table, _leaked, INTERVALS)
    return _leaks, leakage.compare_reported_deduplicated(_reported, dedup)
