"""The Calibration page: reliability diagram, metrics before/after a fitted temperature, thresholds and their export;
the sidebar's "calibrated" confidences reach the other pages."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from core.calibration import load_temperature
from tests.pages.eval_workspaces import CHECKPOINT, load_table

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, request):
    source = request.getfixturevalue("drawn_workspace")
    target = tmp_path_factory.mktemp("calibration") / "ws"
    shutil.copytree(source, target)
    return target


def test_calibration_page_fits_and_stores_a_temperature(workspace, open_page):
    app = open_page(workspace, "pages/calibration.py")
    assert [c for c in app.get("plotly_chart")], "the reliability diagram is drawn"
    metrics = app.dataframe[0].value
    assert list(metrics["metric"])[:4] == ["ECE", "MCE", "Brier score", "NLL"]
    assert (metrics["low"] <= metrics["value"] + 1e-9).all() and (metrics["value"] <= metrics["high"] + 1e-9).all()
    app.button(key="cal-fit").click().run()
    assert not app.exception, [e.value for e in app.exception]
    fit = load_temperature(workspace / ".taxalens", CHECKPOINT)
    assert fit is not None and fit.split == "val"
    after = app.dataframe[1].value
    nll = dict(zip(after["metric"], after["value"], strict=True))["NLL"]
    nll_before = dict(zip(metrics["metric"], metrics["value"], strict=True))["NLL"]
    assert nll <= nll_before + 1e-9  # fitted on these rows: NLL cannot rise
    thresholds = app.dataframe[3].value
    assert set(thresholds["class"]) == set(load_table(workspace).class_names)


def test_calibrated_confidences_reach_the_misclassification_browser(workspace, open_page):
    fit = load_temperature(workspace / ".taxalens", CHECKPOINT)
    assert fit is not None and abs(fit.temperature - 1.0) > 0.05  # fitted by the test above
    from core.calibration import apply_temperature
    from core.workspace import load_workspace
    from pages._cached import PageContext, load_dataset

    ws = load_workspace(workspace)
    ctx = PageContext(ws, load_dataset(ws), (CHECKPOINT,), "val", confidences="calibrated")
    shown = ctx.table()
    raw = load_table(workspace).for_split("val")
    expected = apply_temperature(raw.pred_probs, fit.temperature)
    np.testing.assert_allclose(shown.pred_probs, expected, atol=1e-6)
    np.testing.assert_allclose(shown.frame["confidence"], expected.max(axis=1), atol=1e-6)
    assert (shown.frame["pred"] == raw.frame["pred"]).all()  # temperature never changes a prediction
    assert not np.allclose(shown.frame["confidence"], raw.frame["confidence"], atol=1e-3)
    page = open_page(workspace, "pages/errors.py", state={"tl_confidences": "calibrated"})
    assert page.session_state["tl_confidences"] == "calibrated"


def test_misclassification_browser_filters_errors_outside_the_prediction_set(workspace, open_page):
    from core.conformal import ConformalConfig, calibrate_on_table, set_frame

    app = open_page(workspace, "pages/errors.py", state={"tl_confidences": "raw"})
    app.toggle(key="mb-outside-set").set_value(True).run()
    assert not app.exception, [e.value for e in app.exception]
    val = load_table(workspace).for_split("val")
    sets = set_frame(val, calibrate_on_table(val, ConformalConfig()))
    errors = (val.frame["pred"] != val.frame["label"]).to_numpy()
    expected = int((errors & ~sets["label_in_set"].to_numpy()).sum())
    assert 0 < expected < int(errors.sum())  # the filter keeps some errors and drops others
    assert any(h.value == f"{expected:,} misclassified samples" for h in app.subheader), [h.value for h in
                                                                                            app.subheader]
