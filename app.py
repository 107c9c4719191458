"""TaxaLens: the frame around every page (page config, navigation, the shared sidebar)."""

from __future__ import annotations

import streamlit as st

from pages._cached import (
    KEY_CHECKPOINTS,
    KEY_SPLIT,
    KEY_WORKSPACE,
    SPLITS,
    default_workspace_path,
    open_workspace,
)

st.set_page_config(page_title="TaxaLens", page_icon="🔬", layout="wide")

# Every screen, grouped as the sidebar shows them. Each page is a thin script in pages/.
PAGES = {
    "Workspace": [
        st.Page("pages/home.py", title="Workspace", icon=":material/folder_open:", default=True),
    ],
    "Evaluation": [
        st.Page("pages/overview.py", title="Overview", icon=":material/monitoring:"),
        st.Page("pages/confusion.py", title="Confusion matrix", icon=":material/grid_on:"),
        st.Page("pages/classes.py", title="Weakest classes", icon=":material/trending_down:"),
        st.Page("pages/errors.py", title="Misclassifications", icon=":material/image_search:"),
        st.Page("pages/explain.py", title="Grad-CAM", icon=":material/visibility:"),
    ],
    "Curation": [
        st.Page("pages/review.py", title="Review queue", icon=":material/rule:"),
        st.Page("pages/adjudicate.py", title="Adjudicate & export", icon=":material/gavel:"),
    ],
    "Models": [
        st.Page("pages/retrain.py", title="Retrain", icon=":material/model_training:"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    ],
}


def _sidebar() -> None:
    with st.sidebar:
        st.session_state.setdefault(KEY_WORKSPACE, default_workspace_path())
        st.text_input("Workspace folder", key=KEY_WORKSPACE, help="A folder with taxalens.toml")
        try:
            workspace = open_workspace(st.session_state[KEY_WORKSPACE])
        except (FileNotFoundError, ValueError) as exc:
            st.error(str(exc))
            return
        names = [c.name for c in workspace.checkpoints]
        current = [n for n in st.session_state.get(KEY_CHECKPOINTS, names[:1]) if n in names]
        st.session_state[KEY_CHECKPOINTS] = current or names[:1]
        st.multiselect("Checkpoints", names, key=KEY_CHECKPOINTS,
                       help="The first one is the primary; pages that compare use the others")
        st.session_state.setdefault(KEY_SPLIT, "val")
        st.selectbox("Split", SPLITS, key=KEY_SPLIT)


_sidebar()
st.navigation(PAGES).run()
