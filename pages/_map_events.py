"""The Embedding map's browser events, relayed by two custom components (`streamlit.components.v2`, inline
JavaScript, no build step, nothing fetched from the network) that listen to the plotly chart's events in the page:

- hover: the hovered sample's thumbnail beside the pointer, fetched lazily (one per hovered point) through a fragment
  rerun; the browser keeps the last `BROWSER_CACHE`.
- selection: the rows a lasso, a box or a click selected, handed to the caller's fragment, so a selection reruns that
  fragment only (its gallery) and never re-sends the 100,000-point chart (seconds at that size).
"""

from __future__ import annotations

import base64

import streamlit as st

from core.predictions import PredictionTable
from pages._cached import PageContext
from pages._gallery import sample_paths, sample_thumbnail

CHART_KEY = "map-chart"  # the st.plotly_chart both components listen to
CHART_SELECTOR = f".st-key-{CHART_KEY} .js-plotly-plot"
SELECT_KEY = "map-select"  # the selection component's widget key (its state `selection` = {scope, rows, at})
HOVER_KEY = "map-hover"  # the component's widget key (its trigger `hover` carries the hovered point's table row)
HOVER_ROW_KEY = "tl_map_hover"  # this page's own: (request number, row) of the last hover the browser asked about
BROWSER_CACHE = 128  # thumbnails (data URIs, ~6 kB each) the browser keeps, least recently shown dropped first
PREVIEW_PX = 160  # the preview's longest side in the browser (the gallery's thumbnail size)

# The component's code. It runs in the app page (not an iframe): it finds the chart's plotly element, listens to
# plotly_hover / plotly_unhover on it (re-attaching when Streamlit redraws the chart), and shows a fixed-position
# box with an <img> (alt = sample id) near the pointer. A row it has no thumbnail for is asked of Python with the
# trigger `hover`; the answer comes back as this component's `data` ({row, sample_id, caption, src}). Its state lives
# on `window` under one symbol so it survives the function being called again for new data.
_HOVER_JS = """
const G = (window[Symbol.for("taxalens.mapHover")] ??= {cache: new Map(), wanted: null, pointer: null, timer: null});

function entryFor(row) {
  const entry = G.cache.get(row);
  if (entry) { G.cache.delete(row); G.cache.set(row, entry); }  // least recently shown goes first
  return entry;
}

function place(box) {  // above the point (plotly's own label sits beside it), else below; inside the window
  const p = G.pointer || {x: 24, y: 24};
  const w = box.offsetWidth || 180, h = box.offsetHeight || 200;
  const x = Math.min(Math.max(4, p.x - w / 2), window.innerWidth - w - 4);
  let y = p.y - h - 24;
  if (y < 4) y = p.y + 24;
  box.style.left = `${x}px`;
  box.style.top = `${Math.max(4, Math.min(y, window.innerHeight - h - 4))}px`;
}

function show() {
  const box = G.box;
  if (!box) return;
  const entry = G.wanted === null ? null : entryFor(G.wanted);
  if (G.wanted === null) { box.style.display = "none"; return; }
  if (entry && entry.src) {
    G.img.src = entry.src;
    G.img.alt = entry.sample_id;
    G.img.dataset.sampleId = entry.sample_id;
    G.img.dataset.row = String(G.wanted);
    G.img.style.display = "block";
    G.caption.textContent = entry.caption;
  } else {
    G.img.removeAttribute("src");
    G.img.style.display = "none";
    G.caption.textContent = entry ? `${entry.caption} (no image)` : "loading…";
  }
  box.style.display = "block";
  place(box);
}

function onHover(event) {
  const point = event && event.points && event.points[0];
  if (!point) return;
  const data = point.customdata;
  const row = Number(Array.isArray(data) || ArrayBuffer.isView(data) ? data[0] : data);
  if (!Number.isFinite(row)) return;
  const e = event.event;
  if (e && Number.isFinite(e.clientX)) {
    G.pointer = {x: e.clientX, y: e.clientY};
  } else if (point.xaxis && point.yaxis && G.gd) {
    const r = G.gd.getBoundingClientRect();
    G.pointer = {x: r.left + point.xaxis._offset + point.xaxis.l2p(point.x),
                 y: r.top + point.yaxis._offset + point.yaxis.l2p(point.y)};
  }
  G.wanted = row;
  show();
  if (!G.cache.has(row)) {
    clearTimeout(G.timer);
    G.timer = setTimeout(() => { if (G.wanted === row && !G.cache.has(row)) G.send("hover", row); }, 60);
  }
}

function onUnhover() {
  G.wanted = null;
  clearTimeout(G.hideTimer);
  G.hideTimer = setTimeout(() => { if (G.wanted === null) show(); }, 150);
}

function attach() {
  const gd = document.querySelector(G.selector) || document.querySelector(".stPlotlyChart .js-plotly-plot");
  if (!gd || gd === G.gd || typeof gd.on !== "function") return;
  detach();
  gd.on("plotly_hover", onHover);
  gd.on("plotly_unhover", onUnhover);
  G.gd = gd;
  gd.dataset.tlHover = "attached";
}

function detach() {
  if (G.gd && typeof G.gd.removeListener === "function") {
    G.gd.removeListener("plotly_hover", onHover);
    G.gd.removeListener("plotly_unhover", onUnhover);
    delete G.gd.dataset.tlHover;
  }
  G.gd = null;
}

export default function (component) {
  const {data, setTriggerValue} = component;
  G.send = setTriggerValue;
  G.selector = data.chart;
  G.limit = data.max_cached;
  if (G.scope !== data.scope) { G.cache.clear(); G.scope = data.scope; }  // rows of another split or checkpoint
  if (!G.box || !G.box.isConnected) {
    const box = document.createElement("div");
    box.className = "tl-map-hover";
    box.style.cssText = "position:fixed;z-index:1000;display:none;pointer-events:none;padding:4px;" +
      "background:rgba(255,255,255,0.96);border:1px solid #bbb;border-radius:4px;box-shadow:0 2px 8px #0003;" +
      "font:12px sans-serif;color:#222;max-width:" + (data.size + 10) + "px";
    const img = document.createElement("img");
    img.style.cssText = `display:none;max-width:${data.size}px;max-height:${data.size}px`;
    const caption = document.createElement("div");
    caption.style.cssText = "margin-top:2px;overflow-wrap:anywhere";
    box.append(img, caption);
    document.body.appendChild(box);
    Object.assign(G, {box, img, caption});
  }
  if (data.row !== null && data.row !== undefined) {
    G.cache.delete(data.row);
    G.cache.set(data.row, {src: data.src, sample_id: data.sample_id, caption: data.caption});
    while (G.cache.size > G.limit) G.cache.delete(G.cache.keys().next().value);
    if (G.wanted === data.row) show();
  }
  attach();
  clearInterval(G.poll);
  G.poll = setInterval(attach, 500);  // Streamlit may replace the chart's element when the page reruns
  return () => {
    clearInterval(G.poll);
    detach();
    if (G.box) G.box.remove();
    G.box = null;
  };
}
"""

_hover_component = st.components.v2.component("taxalens_map_hover", js=_HOVER_JS)


def _remember_hover() -> None:
    """The component asked for a row's thumbnail: keep (request number, row) for the fragment's run."""
    value = st.session_state.get(HOVER_KEY) or {}
    row = value.get("hover") if hasattr(value, "get") else None
    if isinstance(row, int | float):
        count = st.session_state.get(HOVER_ROW_KEY, (0, None))[0]
        st.session_state[HOVER_ROW_KEY] = (count + 1, int(row))


def hover_payload(ctx: PageContext, table: PredictionTable, row: int | None, *, scope: str, request: int = 0
                  ) -> dict:
    """What the component receives: the chart to listen to, `scope` (the table's token: the browser forgets its
    thumbnails when it changes, rows then mean other samples), and for `row` (a position in `table`, or None) its
    sample id, caption and thumbnail as a data URI (`src` None when the image cannot be read)."""
    payload: dict = {"chart": CHART_SELECTOR, "max_cached": BROWSER_CACHE, "size": PREVIEW_PX,
                     "scope": scope, "row": None, "request": request}
    if row is None or not 0 <= row < len(table):
        return payload
    sample = table.frame.iloc[row]
    sample_id = str(sample["sample_id"])
    thumb = sample_thumbnail(sample_paths(ctx, [sample_id])[0])
    payload.update(row=int(row), sample_id=sample_id,
                   caption=f"{sample_id} · given {sample['label']} → {sample['pred']}",
                   src=None if thumb is None else "data:image/jpeg;base64," + base64.b64encode(thumb).decode("ascii"))
    return payload


@st.fragment
def render_hover_preview(ctx: PageContext, table: PredictionTable, scope: str) -> None:
    """Mount the hover preview for the map drawn with key `CHART_KEY` from rows of `table` (`scope`: its token)."""
    request, row = st.session_state.get(HOVER_ROW_KEY, (0, None))
    _hover_component(key=HOVER_KEY, data=hover_payload(ctx, table, row, scope=scope, request=request),
               on_hover_change=_remember_hover)


# Selection ------------------------------------------------------------------------------------------------------------

# Sends {scope, rows, at} as the state `selection` on plotly_selected (lasso, box), plotly_click (one point) and
# plotly_deselect (rows []); a deselect that plotly fires with a click is ignored. `at` makes a repeated selection of
# the same rows a change.
_SELECT_JS = """
const S = (window[Symbol.for("taxalens.mapSelect")] ??= {gd: null, clickAt: 0});

function rowsOf(event) {
  const rows = [];
  for (const point of (event && event.points) || []) {
    const data = point.customdata;
    const row = Number(Array.isArray(data) || ArrayBuffer.isView(data) ? data[0] : data);
    if (Number.isFinite(row)) rows.push(row);
  }
  return rows;
}

function send(rows) { S.send("selection", {scope: S.scope, rows, at: Date.now()}); }
function onSelected(event) { if (event && event.points) send(rowsOf(event)); }
function onClick(event) {
  const rows = rowsOf(event);
  if (rows.length) { S.clickAt = Date.now(); send(rows.slice(0, 1)); }
}
function onDeselect() { if (Date.now() - S.clickAt > 400) send([]); }

function detach() {
  if (S.gd && typeof S.gd.removeListener === "function") {
    S.gd.removeListener("plotly_selected", onSelected);
    S.gd.removeListener("plotly_click", onClick);
    S.gd.removeListener("plotly_deselect", onDeselect);
    delete S.gd.dataset.tlSelect;
  }
  S.gd = null;
}

function attach() {
  const gd = document.querySelector(S.selector);
  if (!gd || gd === S.gd || typeof gd.on !== "function") return;
  detach();
  gd.on("plotly_selected", onSelected);
  gd.on("plotly_click", onClick);
  gd.on("plotly_deselect", onDeselect);
  S.gd = gd;
  gd.dataset.tlSelect = "attached";
}

export default function (component) {
  const {data, setStateValue} = component;
  S.send = setStateValue;
  S.selector = data.chart;
  S.scope = data.scope;
  attach();
  clearInterval(S.poll);
  S.poll = setInterval(attach, 500);  // Streamlit may replace the chart's element when the page reruns
  return () => { clearInterval(S.poll); detach(); };
}
"""

_select_component = st.components.v2.component("taxalens_map_select", js=_SELECT_JS)


def selection_rows(value: object, scope: str) -> list[int]:
    """The table rows in the selection component's state `value` ({scope, rows, at}); none when there is no
    selection or it was made on another table (`scope` differs: rows there mean other samples)."""
    if not isinstance(value, dict) or value.get("scope") != scope:
        return []
    return [int(row) for row in value.get("rows") or () if isinstance(row, int | float)]


def map_selection(scope: str) -> list[int]:
    """Mount the selection listener for the chart with key `CHART_KEY` (call it inside the fragment that shows the
    selection) and return the selected rows of the table whose token is `scope`."""
    result = _select_component(key=SELECT_KEY, data={"chart": CHART_SELECTOR, "scope": scope},
                               on_selection_change=lambda: None)
    return selection_rows(getattr(result, "selection", None), scope)
