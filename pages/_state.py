"""Session-state keys that more than one page (or app.py and a page) reads or writes: each declared here, once.

Session state holds UI state only; anything a reviewer did goes to the label store. The sidebar's keys hold committed
values and are never widget keys: Streamlit drops a widget's state when a run does not render it (a page switch, the
first run of a `streamlit run`, which goes through the pages/ folder fallback), so app.py gives each sidebar widget
its own key, re-seeds it from these every run and copies it back in an on_change callback. Keys one page keeps to
itself stay in that page.
"""

from __future__ import annotations

KEY_WORKSPACE = "tl_workspace"  # the open workspace folder (sidebar)
KEY_CHECKPOINTS = "tl_checkpoints"  # checkpoint and ensemble names (sidebar); the first is the primary one
KEY_SPLIT = "tl_split"  # val | train | test | all (sidebar)
KEY_REVIEWER = "tl_reviewer"  # the local name typed in the sidebar when no sign-in is configured (pages/_access)
KEY_ACTOR = "tl_actor"  # the current core.access.Actor or None: resolved by app.py each run (pages/_access)
KEY_ACTOR_PROBLEM = "tl_actor_problem"  # why there is no actor (shown where a page hides an action)
KEY_CONFUSION_CELL = "cm-cell"  # (true_idx, pred_idx) in model class order: opened on the confusion page, queued
# by the review page's "confusion cell" queue
KEY_LABEL_MODE = "tl_label_mode"  # given | curated (core.curation.LABEL_MODES): the labels evaluation pages score
KEY_CONFIDENCES = "tl_confidences"  # raw | calibrated (core.calibration.CONFIDENCE_MODES): the confidences pages show
KEY_CONFORMAL = "tl_conformal"  # dict of core.conformal.ConformalConfig fields: set on the Calibration page, read by
# the review and misclassification pages
KEY_URL_RESTORED = "tl_url_restored"  # the sidebar keys were seeded from the URL's query string (once per session)
KEY_SELECTION = "tl_selection"  # sample ids lassoed on the Map page: the review page's "selection" queue
KEY_QUALITY_IDS = "tl_quality_ids"  # sample ids the Data quality page flagged: the "image_quality" queue
