"""Cached taxonomy data for the Taxonomy, Confusion, Misclassifications and Compare pages: the workspace's taxonomy
and every `core.taxonomy_metrics` view, keyed by the evaluation data's content token plus a taxonomy token (the big
table and the taxonomy pass unhashed, as in `pages/_evaluation.py`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import metrics, taxonomy_figures
from core import taxonomy_metrics as tm
from core.errors import TaxaLensError
from core.predictions import PredictionTable
from core.result_cache import rank_bootstrap_result, rank_per_class_result, taxonomy_token  # noqa: F401 (re-exported)
from core.taxonomy import Taxonomy, load_taxonomy
from pages import _evaluation as ev
from pages._cached import PageContext, dataset_key
from pages._text import md

N_BOOT = ev.INTERVALS.n_boot  # the evaluation pages' bootstrap size


def _file_stamp(ctx: PageContext) -> float:
    path = ctx.workspace.taxonomy_file
    return path.stat().st_mtime_ns if path is not None and path.is_file() else 0.0


@st.cache_resource(show_spinner=False, max_entries=8)
def _workspace_taxonomy(root: str, load_key: str, file_stamp: float, _ctx: PageContext) -> Taxonomy | None:
    return load_taxonomy(_ctx.workspace, _ctx.dataset)


def page_taxonomy(ctx: PageContext, class_names: tuple[str, ...], *, quiet: bool = False) -> Taxonomy | None:
    """The workspace taxonomy when it places every model class; otherwise None, after saying why (an error for a
    broken taxonomy, the how-to note when there is none; with `quiet`, only a caption for a broken one)."""
    try:
        taxonomy = _workspace_taxonomy(str(ctx.workspace.root), dataset_key(ctx.dataset), _file_stamp(ctx), ctx)
        if taxonomy is not None:
            taxonomy.require_classes(class_names)
    except TaxaLensError as exc:
        (st.caption if quiet else st.error)(f"Taxonomy unavailable: {md(exc)}")
        return None
    if taxonomy is None and not quiet:
        st.info("This workspace has no taxonomy. Add `taxonomy = \"taxonomy.csv\"` to `[dataset]` in taxalens.toml "
                "(a CSV `class,<finest rank>,...,<coarsest rank>`, one row per class), or list the manifest's "
                "taxonomy columns there (`taxonomy = [\"order\", \"family\"]`, broadest first).")
    return taxonomy


@st.cache_resource(show_spinner=False, max_entries=32)
def rolled_all(token: str, tax: str, rule: str, _table: PredictionTable, _taxonomy: Taxonomy
               ) -> tuple[PredictionTable, ...]:
    """The table rolled up to every level (shared by the rank table, the per-class tables and the folded matrix)."""
    return tm.rollup_all(_table, _taxonomy, rule=rule)


@st.cache_data(show_spinner="Scoring every rank…", max_entries=32)
def rank_bootstrap(token: str, tax: str, rule: str, _table: PredictionTable, _taxonomy: Taxonomy
                   ) -> tm.RankBootstrap:
    """Metrics at every rank and the mistake severity, all from one resampling of the table (the evaluation pages'
    bootstrap settings), per (table token, taxonomy token, roll-up rule); kept on disk beside the predictions
    (`core.result_cache`, warmed by `predict --workspace`), so a restarted server reads them."""
    return rank_bootstrap_result(ev.results_dir(), token, _table, _taxonomy, rule=rule, config=ev.INTERVALS,
                                 rolled=lambda: rolled_all(token, tax, rule, _table, _taxonomy))


def rank_results(token: str, tax: str, rule: str, _table: PredictionTable, _taxonomy: Taxonomy
                 ) -> tuple[tm.RankMetrics, ...]:
    """Metrics at every rank, class level first (`rank_bootstrap`)."""
    return rank_bootstrap(token, tax, rule, _table, _taxonomy).ranks


@st.cache_data(show_spinner=False, max_entries=32)
def rank_table(token: str, tax: str, rule: str, _table: PredictionTable, _taxonomy: Taxonomy) -> pd.DataFrame:
    return tm.rank_metrics_frame(rank_results(token, tax, rule, _table, _taxonomy))


@st.cache_resource(show_spinner=False, max_entries=32)
def rank_figure(token: str, tax: str, rule: str, _table: PredictionTable, _taxonomy: Taxonomy) -> go.Figure:
    return taxonomy_figures.build_rank_metrics_figure(rank_table(token, tax, rule, _table, _taxonomy))


def rolled(token: str, tax: str, rank: str, rule: str, _table: PredictionTable, _taxonomy: Taxonomy
           ) -> PredictionTable:
    return rolled_all(token, tax, rule, _table, _taxonomy)[_taxonomy.level_of(rank)]


@st.cache_data(show_spinner=False, max_entries=64)
def per_class_at(token: str, tax: str, rank: str, rule: str, _table: PredictionTable, _taxonomy: Taxonomy
                 ) -> pd.DataFrame:
    return rank_per_class_result(ev.results_dir(), token, _table, _taxonomy, rank=rank, rule=rule,
                                 rolled=lambda: rolled(token, tax, rank, rule, _table, _taxonomy))


@st.cache_data(show_spinner=False, max_entries=64)
def bottom_at(token: str, tax: str, rank: str, rule: str, _table: PredictionTable, _taxonomy: Taxonomy,
              n: int = 10) -> pd.DataFrame:
    return metrics.bottom_classes(per_class_at(token, tax, rank, rule, _table, _taxonomy), n=n)


def severity(token: str, tax: str, _table: PredictionTable, _taxonomy: Taxonomy) -> tm.MistakeSeverity:
    """The mistake severity of the top-1 class, from the resamples of the default ("sum") rank table (the page's
    first view), so a first visit resamples the table once."""
    return rank_bootstrap(token, tax, "sum", _table, _taxonomy).severity


@st.cache_data(show_spinner=False, max_entries=32)
def severity_classes(token: str, tax: str, _table: PredictionTable, _taxonomy: Taxonomy) -> pd.DataFrame:
    return tm.severity_per_class(_table, _taxonomy)


@st.cache_resource(show_spinner=False, max_entries=32)
def severity_figure(token: str, tax: str, _table: PredictionTable, _taxonomy: Taxonomy) -> go.Figure:
    return taxonomy_figures.build_severity_figure(severity(token, tax, _table, _taxonomy).histogram)


@st.cache_resource(show_spinner=False, max_entries=32)
def error_levels(token: str, tax: str, _table: PredictionTable, _taxonomy: Taxonomy) -> np.ndarray:
    return tm.error_levels(_table, _taxonomy)


@st.cache_resource(show_spinner=False, max_entries=32)
def folded(token: str, tax: str, rank: str, rule: str, _table: PredictionTable, _taxonomy: Taxonomy
           ) -> tm.FoldedConfusion:
    return tm.fold_confusion(_table, _taxonomy, rank, rule=rule,
                             rolled=rolled(token, tax, rank, rule, _table, _taxonomy))


@st.cache_resource(show_spinner=False, max_entries=32)
def folded_figure(token: str, tax: str, rank: str, rule: str, normalise: str, hide_diagonal: bool,
                  selected: tuple[int, int] | None, _table: PredictionTable, _taxonomy: Taxonomy) -> go.Figure:
    return taxonomy_figures.build_folded_confusion_figure(folded(token, tax, rank, rule, _table, _taxonomy),
                                                          normalise=normalise, hide_diagonal=hide_diagonal,
                                                          selected=selected)


@st.cache_data(show_spinner=False, max_entries=128)
def folded_cell(token: str, tax: str, rank: str, rule: str, true_group: str, pred_group: str,
                _table: PredictionTable, _taxonomy: Taxonomy) -> pd.DataFrame:
    return tm.folded_cell_rows(_table, _taxonomy, rank, true_group, pred_group, rule=rule,
                               rolled=rolled(token, tax, rank, rule, _table, _taxonomy))


@st.cache_data(show_spinner="Applying the hierarchy-aware decision rule…", max_entries=16)
def decision(token: str, tax: str, _table: PredictionTable, _taxonomy: Taxonomy) -> tm.DecisionRuleEffect:
    return tm.decision_rule_effect(_table, _taxonomy, n_boot=ev.INTERVALS.n_boot, seed=ev.INTERVALS.seed,
                                   confidence_level=ev.INTERVALS.confidence_level, method=ev.INTERVALS.method,
                                   before=rank_results(token, tax, "argmax", _table, _taxonomy),
                                   severity_before=severity(token, tax, _table, _taxonomy))


@st.cache_data(show_spinner="Comparing along the taxonomy…", max_entries=16)
def compare_ranks(token_a: str, token_b: str, tax: str, rule: str, n_boot: int, cluster: str,
                  _a: PredictionTable, _b: PredictionTable, _taxonomy: Taxonomy) -> tm.TaxonomyComparison:
    """B against A at every rank and in mistake severity, from one paired resampling (`compare_taxonomy`)."""
    return tm.compare_taxonomy(_a, _b, _taxonomy, rule=rule, n_boot=n_boot, seed=ev.INTERVALS.seed,
                               confidence_level=ev.INTERVALS.confidence_level, method=ev.INTERVALS.method,
                               cluster=cluster)


def format_interval(value: float | None, low: float | None, high: float | None, *, digits: int = 3) -> str:
    """"1.234 [1.100, 1.400]", or "—" when undefined."""
    if value is None or pd.isna(value):
        return "—"
    text = f"{value:.{digits}f}"
    return text if low is None or pd.isna(low) else f"{text} [{low:.{digits}f}, {high:.{digits}f}]"
