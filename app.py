"""TaxaLens: the frame around every page (page config, the served-to-whom guard, sign-in, navigation, the shared
sidebar)."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from core.errors import USER_ERRORS, TaxaLensError, user_message
from core.modes import CONFIDENCE_MODES, LABEL_MODES
from core.workspace import Workspace
from pages._access import KEY_LOCAL_NAME, resolve_actor, sign_in_configured
from pages._cached import (
    SPLITS,
    default_workspace_path,
    ensemble_problem,
    ensemble_specs,
    open_workspace,
)
from pages._links import restore_sidebar_from_url, sync_url
from pages._serving import guard_exposure, require_access, sign_in_prompt, workspace_choices
from pages._state import (
    KEY_ACTOR_PROBLEM,
    KEY_CHECKPOINTS,
    KEY_CONFIDENCES,
    KEY_LABEL_MODE,
    KEY_SPLIT,
    KEY_WORKSPACE,
)
from pages._text import md
from pages._warmup import start_import_warmup

# A Material icon: an emoji here would load Streamlit's emoji catalogue (0.1-0.2 s) on every server start's first page.
st.set_page_config(page_title="TaxaLens", page_icon=":material/biotech:", layout="wide")

# Every screen, grouped as the sidebar shows them. Each page is a thin script in pages/.
PAGES = {
    "Workspace": [
        st.Page("pages/home.py", title="Workspace", icon=":material/folder_open:", default=True),
    ],
    "Evaluation": [
        st.Page("pages/overview.py", title="Overview", icon=":material/monitoring:"),
        st.Page("pages/confusion.py", title="Confusion matrix", icon=":material/grid_on:"),
        st.Page("pages/taxonomy.py", title="Taxonomy", icon=":material/account_tree:"),
        st.Page("pages/classes.py", title="Weakest classes", icon=":material/trending_down:"),
        st.Page("pages/errors.py", title="Misclassifications", icon=":material/image_search:"),
        st.Page("pages/calibration.py", title="Calibration", icon=":material/tune:"),
        st.Page("pages/explain.py", title="Grad-CAM", icon=":material/visibility:"),
        st.Page("pages/map.py", title="Embedding map", icon=":material/scatter_plot:"),
    ],
    "Curation": [
        st.Page("pages/review.py", title="Review queue", icon=":material/rule:"),
        st.Page("pages/adjudicate.py", title="Adjudicate & export", icon=":material/gavel:"),
        st.Page("pages/data_quality.py", title="Data quality", icon=":material/cleaning_services:"),
        st.Page("pages/active_learning.py", title="Label next", icon=":material/format_list_numbered:"),
    ],
    "Models": [
        st.Page("pages/retrain.py", title="Retrain", icon=":material/model_training:"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    ],
}


def _widget_key(key: str) -> str:
    return f"{key}-widget"


def _commit(key: str) -> None:
    st.session_state[key] = st.session_state[_widget_key(key)]


def _kept_widget(widget: Callable, label: str, key: str, **kwargs) -> None:
    """`widget` showing the committed value `st.session_state[key]` (set it before calling), under its own widget
    key: a page switch (or the first run of `streamlit run`) can drop a widget's state, never a plain key's."""
    st.session_state[_widget_key(key)] = st.session_state[key]
    widget(label, key=_widget_key(key), on_change=_commit, args=(key,), **kwargs)


def _sign_in() -> None:
    """With `[auth]` in .streamlit/secrets.toml nothing is shown until the user signs in with the provider."""
    sign_in_prompt()
    if sign_in_configured():
        with st.sidebar:
            st.caption(f"Signed in as **{md(st.user.get('email') or '(no e-mail)')}**")
            st.button("Sign out", key="tl-logout", on_click=st.logout)


def _workspace_box() -> Workspace | None:
    """The workspace box: workspaces under the configured roots, chosen by name (no free path typing)."""
    if not st.session_state.get(KEY_WORKSPACE):
        st.session_state[KEY_WORKSPACE] = default_workspace_path()
    choices = workspace_choices()
    names = {path: name for name, path in choices.items()}
    options = list(names)
    current = st.session_state[KEY_WORKSPACE]
    if current not in names:  # set by the server's own configuration (command line, environment), not by a user
        options.insert(0, current)
    _kept_widget(st.selectbox, "Workspace", KEY_WORKSPACE, options=options, format_func=lambda p: names.get(p, p),
                 help="Workspaces (folders with taxalens.toml) under the roots the server was started with "
                 "(`TAXALENS_WORKSPACES`, `[server] roots`)")
    try:
        return open_workspace(st.session_state[KEY_WORKSPACE])
    except USER_ERRORS as exc:
        st.error(md(exc))
        return None


def _identity(workspace: Workspace | None) -> None:
    """The actor of this run (`tl_actor`): the signed-in account, or the local name typed once here."""
    if not sign_in_configured():
        st.session_state.setdefault(KEY_LOCAL_NAME, "")
        _kept_widget(st.text_input, "Your name", KEY_LOCAL_NAME, placeholder="name or initials",
                     help="Recorded on every label event you write (normalised: case and look-alike letters fold)")
        st.caption("No sign-in configured: identities are not verified.")
    actor = resolve_actor(workspace)
    if actor is not None:
        st.caption(f"Acting as **{md(actor.name)}** · {actor.role.label}")
    elif sign_in_configured() or st.session_state.get(KEY_LOCAL_NAME, "").strip():
        st.warning(md(st.session_state.get(KEY_ACTOR_PROBLEM) or "no identity"))


def _sidebar() -> None:
    with st.sidebar:
        workspace = _workspace_box()
        _identity(workspace)
        if workspace is None:
            return
        ensembles = {e.name: e for e in ensemble_specs(workspace)}
        names = [c.name for c in workspace.checkpoints] + list(ensembles)
        current = [n for n in st.session_state.get(KEY_CHECKPOINTS) or () if n in names]
        st.session_state[KEY_CHECKPOINTS] = current or names[:1]
        _kept_widget(st.multiselect, "Checkpoints", KEY_CHECKPOINTS, options=names,
                     format_func=lambda n: f"{n} (ensemble of {' + '.join(ensembles[n].members)})"
                     if n in ensembles else n,
                     help="The first one is the primary; pages that compare use the others. Ensembles come from "
                     "`[[ensembles]]` in taxalens.toml (the Compare page can save one)")
        problem = ensemble_problem(workspace)
        if problem:
            st.warning(md(problem))
        if st.session_state.get(KEY_SPLIT) not in SPLITS:
            st.session_state[KEY_SPLIT] = "val"
        _kept_widget(st.selectbox, "Split", KEY_SPLIT, options=SPLITS)
        if st.session_state.get(KEY_LABEL_MODE) not in LABEL_MODES:
            st.session_state[KEY_LABEL_MODE] = "given"
        _kept_widget(st.radio, "Labels", KEY_LABEL_MODE, options=list(LABEL_MODES), format_func=LABEL_MODES.get,
                     horizontal=True, help="as curated: the review decisions applied (relabels, exclusions; disputed "
                     "samples listed apart) on every evaluation page")
        if st.session_state.get(KEY_CONFIDENCES) not in CONFIDENCE_MODES:
            st.session_state[KEY_CONFIDENCES] = "raw"
        _kept_widget(st.radio, "Confidences", KEY_CONFIDENCES, options=list(CONFIDENCE_MODES), horizontal=True,
                     help="calibrated: the checkpoint's temperature from the Calibration page applied wherever "
                     "probabilities and confidences are shown (predictions never change)")


guard_exposure()
_sign_in()
restore_sidebar_from_url()
_sidebar()
require_access()  # with sign-in: an account that [access] gives no role sees no page
page = st.navigation(PAGES, expanded=True)  # every page listed: past 12 Streamlit hides the rest behind "View more"
sync_url(page.url_path)
try:
    page.run()
except TaxaLensError as exc:  # a page that let one through: its message says what to do; never a traceback
    st.error(md(user_message(exc)))
start_import_warmup()  # once per server, after its first page: the evaluation pages' imports, on a daemon thread
