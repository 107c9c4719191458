"""The sidebar's note on the background check of a dataset opened from its snapshot (`core.dataset_snapshot`): while
the files are being checked, a caption that a polling fragment replaces when the check ends (then one rerun of the
page, which reads the new dataset when something changed); afterwards what the check found."""

from __future__ import annotations

import time

import streamlit as st

from core.dataset_snapshot import DatasetCheck
from core.workspace import Workspace
from pages._cached import dataset_check
from pages._text import md

CHECK_POLL_S = 1.0  # how often a page asks whether the background check has ended


def dataset_check_notice(workspace: Workspace) -> None:
    """Draw the note in the sidebar; nothing when the dataset was loaded fully (small, or no snapshot yet)."""
    check = dataset_check(workspace)
    if check is None:
        return
    with st.sidebar:
        if check.running:
            st.fragment(_await_check, run_every=CHECK_POLL_S)(workspace)
        else:
            _outcome(check)


def _await_check(workspace: Workspace) -> None:
    check = dataset_check(workspace)
    if check is None or not check.running:
        st.rerun()  # the whole page: it reads the new dataset when the check found changes
    st.caption(f":material/sync: Checking the {check.images:,} images in the background (opened from the snapshot "
               f"of {_when(check.snapshot_written_at)}; {time.time() - check.started_at:.0f} s so far)")


def _outcome(check: DatasetCheck) -> None:
    when = _when(check.finished_at or time.time())
    if check.state == "unchanged":
        st.caption(f":material/check: All {check.images:,} images checked at {when}: unchanged since the snapshot")
    elif check.state == "changed":
        st.info(f"Images were added, removed or changed since the snapshot of {_when(check.snapshot_written_at)}: "
                f"the dataset was read again at {when} ({check.checked_images:,} usable images, "
                f"{check.images:,} before)", icon=":material/sync_problem:")
    else:
        st.warning(f"The background check of the images failed ({md(check.detail)}); the pages show the dataset as of "
                   f"{_when(check.snapshot_written_at)}. Press **Check the images again** on the Workspace page.")


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
