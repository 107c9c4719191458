"""Confusion matrix: counts or rates in a chosen class order, or folded to a taxonomic rank; clicking a cell (or a
ranked pair) opens its images."""

from __future__ import annotations

import streamlit as st

from core.taxonomy import CLASS_LEVEL, Taxonomy
from pages import _evaluation as ev
from pages import _taxonomy_support as tx
from pages._gallery import render_gallery, render_sample_view
from pages._links import PARAM_PRED, PARAM_SAMPLE, PARAM_TRUE, copy_link_control, set_page_params, url_param
from pages._state import KEY_CONFUSION_CELL
from pages._text import md

INSPECT_KEY = "cm-gallery-inspect"  # the gallery's inspected sample (render_gallery keeps it under `<key>-inspect`)
NORMALISE = {"counts": "none", "share of true class (recall)": "true", "share of predicted class (precision)": "pred"}
PAIRS_SHOWN = 200
OUTLINE_MAX_CLASSES = 60  # above this, the open cell is not outlined (re-drawing a large matrix per click is slow)
FOLD_CELL_KEY = "cm-fold-cell"  # (rank, true group, predicted group) of the open folded cell


def _open_cell_from_chart() -> None:
    points = st.session_state["cm-chart"].selection.points
    cells = [data for data in map(ev.selected_customdata, points) if len(data) >= 2]
    if cells:
        st.session_state[KEY_CONFUSION_CELL] = (int(cells[0][0]), int(cells[0][1]))


def _open_cell_from_pairs(pairs, key: str) -> None:
    rows = st.session_state[key].selection.rows
    if rows:
        pair = pairs.iloc[rows[0]]
        st.session_state[KEY_CONFUSION_CELL] = (int(pair["true_idx"]), int(pair["pred_idx"]))


def _open_cell_by_name(index: dict[str, int]) -> None:
    st.session_state[KEY_CONFUSION_CELL] = (index[st.session_state["cm-true"]], index[st.session_state["cm-pred"]])


# --- folding by rank -------------------------------------------------------------------------------------------------

def _rank_selector(column, ctx, class_names: tuple[str, ...]) -> tuple[Taxonomy | None, str]:
    """The "Fold to rank" selector (only when the workspace has a taxonomy); returns (taxonomy, chosen level)."""
    taxonomy = tx.page_taxonomy(ctx, class_names, quiet=True)
    if taxonomy is None:
        return None, CLASS_LEVEL
    rank = column.selectbox("Fold to rank", taxonomy.levels, key="cm-rank",
                            help="Collapse the matrix to a taxonomic rank (groups in taxonomic order, outlined by "
                            "their parent at the next rank up); a click on a cell opens every image under it")
    return taxonomy, rank


def _open_folded_cell(rank: str, group_names: tuple[str, ...]) -> None:
    points = st.session_state["cm-fold-chart"].selection.points
    cells = [data for data in map(ev.selected_customdata, points) if len(data) >= 2]
    if cells:
        st.session_state[FOLD_CELL_KEY] = (rank, group_names[int(cells[0][0])], group_names[int(cells[0][1])])


def _folded_matrix(ctx, data, taxonomy: Taxonomy, rank: str, normalise: str, hide_diagonal: bool) -> None:
    """The matrix folded to `rank` and, below it, the gallery of every image under the open folded cell."""
    table = data.table
    tax = tx.taxonomy_token(taxonomy)
    rule = "sum"
    folded = tx.folded(data.token, tax, rank, rule, table, taxonomy)
    names = folded.group_names
    cell = st.session_state.get(FOLD_CELL_KEY)
    if cell is not None and (cell[0] != rank or cell[1] not in names or cell[2] not in names):
        cell = None
    outline = (names.index(cell[1]), names.index(cell[2])) if cell is not None else None
    figure = tx.folded_figure(data.token, tax, rank, rule, normalise, hide_diagonal, outline, table, taxonomy)
    st.plotly_chart(figure, key="cm-fold-chart", on_select=lambda: _open_folded_cell(rank, names),
                    selection_mode="points", config={"scrollZoom": True})
    up = taxonomy.levels[taxonomy.level_of(rank) + 1] if taxonomy.level_of(rank) < len(taxonomy.ranks) else None
    st.caption(f"{len(names)} groups at rank **{rank}**; predicted group = the largest summed probability"
               + (f"; outlines group them by **{up}**" if up else "") + ". Click a cell to open its images.")
    if cell is None:
        st.info("Click a cell of the folded matrix to see every image under it.")
        return
    rows = tx.folded_cell(data.token, tax, rank, rule, cell[1], cell[2], table, taxonomy)
    st.subheader(ev.cell_heading(len(rows), f"{rank} {cell[1]}", f"{rank} {cell[2]}"))
    inspected = render_gallery(ctx, rows, key="cm-fold-gallery")
    if inspected is not None:
        render_sample_view(ctx, table, inspected)


# --- the page --------------------------------------------------------------------------------------------------------


ctx, data = ev.open_evaluation_page("Confusion matrix")
table = data.table
names = list(table.class_names)
index = {name: i for i, name in enumerate(names)}
st.caption(f"Checkpoint **{md(data.checkpoint)}** · split **{ctx.split}** · {len(table):,} images · "
           f"{len(names)} classes")
ev.show_data_notes(ctx, data)

options = st.columns([2, 2, 1, 3, 2])
normalise = NORMALISE[options[0].selectbox("Values", list(NORMALISE), key="cm-normalise")]
orders = ["frequency", "name", "similarity"] + [f"taxonomy: {c}" for c in ctx.dataset.taxonomy_columns]
order_choice = options[1].selectbox("Order", orders, key="cm-order",
                                    help="similarity: hierarchical clustering of the symmetrised confusion")
hide_diagonal = options[2].checkbox("Hide diagonal", key="cm-hide-diag", help="show only the errors")
search = options[3].multiselect("Find classes", names, key="cm-search", placeholder="type a class name")
taxa = None
order = order_choice
if order_choice.startswith("taxonomy: "):
    order = "taxonomy"
    taxa = ev.taxa_of_classes(ev.dataset_key(ctx), ctx.dataset.samples, order_choice.removeprefix("taxonomy: "))
taxonomy, fold_rank = _rank_selector(options[4], ctx, table.class_names)
if taxonomy is not None and fold_rank != CLASS_LEVEL:
    _folded_matrix(ctx, data, taxonomy, fold_rank, normalise, hide_diagonal)
    st.stop()

if (KEY_CONFUSION_CELL not in st.session_state and url_param(PARAM_TRUE) in index
        and url_param(PARAM_PRED) in index):  # a link or a reload
    st.session_state[KEY_CONFUSION_CELL] = (index[url_param(PARAM_TRUE)], index[url_param(PARAM_PRED)])
    if url_param(PARAM_SAMPLE):
        st.session_state[INSPECT_KEY] = url_param(PARAM_SAMPLE)
cell = st.session_state.get(KEY_CONFUSION_CELL)
if cell is not None and not (0 <= cell[0] < len(names) and 0 <= cell[1] < len(names)):
    cell = None
outline = cell if len(names) <= OUTLINE_MAX_CLASSES else None
shown_classes = None
if len(names) > ev.SUBMATRIX_ABOVE:
    scopes = [f"the {ev.SUBMATRIX_CLASSES} most confused", f"all {len(names):,}"]
    scope = st.radio("Classes shown", scopes, key="cm-scope", horizontal=True,
                     help="the classes most involved in errors (as true or predicted class), plus any you search "
                     "for; rates and totals still count every class")
    if scope == scopes[0]:
        top = ev.top_confused(data.token, table, ev.SUBMATRIX_CLASSES)
        shown_classes = tuple(sorted({*top, *(index[name] for name in search)}))
left, right = st.columns([3, 1])
with left:
    figure = ev.confusion_figure(data.token, table, normalise, order, taxa, hide_diagonal, tuple(search), outline,
                                 shown_classes)
    st.plotly_chart(figure, key="cm-chart", on_select=_open_cell_from_chart, selection_mode="points",
                    config={"scrollZoom": True})
    st.caption("Click a cell to open its images; drag to zoom, double-click to reset.")
with right:
    st.markdown("**Most confused pairs**")
    pairs = ev.confused_pairs(data.token, table)
    if search:
        pairs = pairs[pairs["true"].isin(search) | pairs["pred"].isin(search)]
    shown = pairs.head(PAIRS_SHOWN).reset_index(drop=True)
    if shown.empty:
        st.caption("No errors in this split.")
    else:
        key = ev.pairs_key(search, cell)
        st.dataframe(
            shown[["true", "pred", "count", "share_of_true"]],
            hide_index=True,
            key=key,
            on_select=lambda: _open_cell_from_pairs(shown, key),
            selection_mode="single-row",
            selection_default={"selection": {"rows": ev.pair_row(shown, cell)}},
            height=min(35 * len(shown) + 40, 620),
            column_config={"share_of_true": st.column_config.NumberColumn("share", format="percent")},
        )
        st.caption(f"{len(pairs):,} confused pairs; select a row to open its images.")
    with st.expander("Open a cell by name"):
        st.selectbox("True class", names, key="cm-true")
        st.selectbox("Predicted class", names, key="cm-pred")
        st.button("Open cell", key="cm-open", on_click=_open_cell_by_name, args=(index,))

if cell is None:
    set_page_params("confusion", **dict.fromkeys((PARAM_TRUE, PARAM_PRED, PARAM_SAMPLE)))
    st.info("Click a cell of the matrix, or a pair in the list, to see its images.")
else:
    true_idx, pred_idx = cell
    rows = ev.cell_rows(data.token, table, true_idx, pred_idx)
    heading = st.columns([5, 1], vertical_alignment="bottom")
    heading[0].subheader(md(ev.cell_heading(len(rows), names[true_idx], names[pred_idx])))
    inspected = render_gallery(ctx, rows, key="cm-gallery")
    set_page_params("confusion", **{PARAM_TRUE: names[true_idx], PARAM_PRED: names[pred_idx],
                                    PARAM_SAMPLE: inspected})
    with heading[1]:
        copy_link_control("cm-link")
    if inspected is not None:
        render_sample_view(ctx, table, inspected)
