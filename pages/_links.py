"""Links that open the same view: the sidebar's selection and each page's open cell, sample and queue live in the URL.

The query string holds the workspace (`ws`, omitted for the server's own), checkpoints (`ckpt`, repeated), split,
label mode and, per page, what is open there (`PAGE_PARAMS`); the page itself is the URL's path. On a session's
first run `restore_sidebar_from_url` seeds the sidebar's session keys from the URL, and each page restores its own
parameters (`url_param`) while its session state holds nothing newer. `sync_url` writes the current view back on
every run, so a reload or a pasted link opens the same view.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlencode

import streamlit as st

from core.modes import LABEL_MODES
from pages._cached import SPLITS, default_workspace_path
from pages._state import KEY_CHECKPOINTS, KEY_LABEL_MODE, KEY_SPLIT, KEY_URL_RESTORED, KEY_WORKSPACE

PARAM_WORKSPACE, PARAM_CHECKPOINTS, PARAM_SPLIT, PARAM_LABELS = "ws", "ckpt", "split", "labels"
SIDEBAR_PARAMS = (PARAM_WORKSPACE, PARAM_CHECKPOINTS, PARAM_SPLIT, PARAM_LABELS)
PARAM_TRUE, PARAM_PRED, PARAM_SAMPLE, PARAM_QUEUE, PARAM_CLASS = "true", "pred", "sample", "queue", "class"
# Each page's own parameters, by the page's URL path (st.Page.url_path): what a link to that page reopens.
PAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "confusion": (PARAM_TRUE, PARAM_PRED, PARAM_SAMPLE),
    "review": (PARAM_QUEUE, PARAM_CLASS, PARAM_TRUE, PARAM_PRED, PARAM_SAMPLE),
    "explain": (PARAM_SAMPLE,),
}


def workspace_link(path: str) -> str | None:
    """How a link names the workspace folder `path`: None for the server's own workspace, else the folder relative to
    the server's workspace folder (the one function to change when workspaces are named under configured roots)."""
    server = Path(default_workspace_path()).expanduser().resolve()
    target = Path(path).expanduser().resolve()
    return None if target == server else os.path.relpath(target, server)


def workspace_from_link(value: str) -> str:
    """The workspace folder a link's `ws` value names (inverse of `workspace_link`)."""
    return str((Path(default_workspace_path()).expanduser().resolve() / value).resolve())


def restore_sidebar_from_url() -> None:
    """Seed workspace, checkpoints, split and label mode from the URL, once per session (a reload or pasted link)."""
    if st.session_state.get(KEY_URL_RESTORED):
        return
    st.session_state[KEY_URL_RESTORED] = True
    params = st.query_params
    if params.get(PARAM_WORKSPACE):
        from core.serving import inside_roots
        from pages._serving import configured_roots

        linked = workspace_from_link(params[PARAM_WORKSPACE])
        if inside_roots(linked, configured_roots()):  # a link opens only what the workspace box would offer
            st.session_state[KEY_WORKSPACE] = linked
    if params.get_all(PARAM_CHECKPOINTS):
        st.session_state[KEY_CHECKPOINTS] = params.get_all(PARAM_CHECKPOINTS)  # unknown names drop in the sidebar
    if params.get(PARAM_SPLIT) in SPLITS:
        st.session_state[KEY_SPLIT] = params[PARAM_SPLIT]
    if params.get(PARAM_LABELS) in LABEL_MODES:
        st.session_state[KEY_LABEL_MODE] = params[PARAM_LABELS]


def _sidebar_params() -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    workspace = st.session_state.get(KEY_WORKSPACE)
    link = workspace_link(workspace) if workspace else None
    if link is not None:
        pairs.append((PARAM_WORKSPACE, link))
    pairs += [(PARAM_CHECKPOINTS, name) for name in st.session_state.get(KEY_CHECKPOINTS) or ()]
    for param, key in ((PARAM_SPLIT, KEY_SPLIT), (PARAM_LABELS, KEY_LABEL_MODE)):
        if st.session_state.get(key):
            pairs.append((param, str(st.session_state[key])))
    return pairs


def _current() -> list[tuple[str, str]]:
    return [(key, value) for key in st.query_params for value in st.query_params.get_all(key)]


def _write(pairs: list[tuple[str, str]]) -> None:
    if sorted(_current()) != sorted(pairs):  # each write is a message to the browser: only when it changes
        grouped: dict[str, list[str]] = {}
        for key, value in pairs:
            grouped.setdefault(key, []).append(value)
        st.query_params.from_dict(grouped)


def sync_url(page_path: str) -> None:
    """Write the sidebar's selection to the URL of page `page_path`, keeping only that page's own parameters."""
    own = PAGE_PARAMS.get(page_path, ())
    kept = [(k, v) for k, v in _current() if k in own]
    _write(_sidebar_params() + kept)


def url_param(name: str) -> str | None:
    """A parameter of this page's URL (None when absent)."""
    return st.query_params.get(name) or None


def set_page_params(page: str, **values: str | None) -> None:
    """Put the open cell, sample or queue of page `page` (its URL path) into the URL; `None` removes a parameter."""
    own = PAGE_PARAMS.get(page, ())
    unknown = set(values) - set(own)
    if unknown:
        raise KeyError(f"page {page!r} owns the URL parameters {own}, not {sorted(unknown)}; add them to PAGE_PARAMS")
    kept = [(k, v) for k, v in _current() if k in own and k not in values]
    _write(_sidebar_params() + kept + [(k, v) for k, v in values.items() if v is not None])


def view_link() -> str:
    """The URL of the view on screen (page path and query string) as the browser reached this server."""
    base = st.context.url or ""
    query = urlencode(_current())
    return f"{base}?{query}" if query else base


def copy_link_control(key: str) -> None:
    """A "Copy link" popover with this view's URL (the code box has a copy button) for a colleague or a bookmark."""
    with st.popover("Copy link", icon=":material/link:", key=key):
        st.caption("Opens this view: workspace, checkpoints, split, labels, page and what is open here.")
        st.code(view_link(), language=None, wrap_lines=True)
