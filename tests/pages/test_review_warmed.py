"""`python -m cli predict --workspace` stores what the Review queue's first visit reads (the label-issue ranking and
the prediction-set thresholds, `core.review_cache.warm_review_results`): a fresh server's first visit ranks
nothing and calibrates nothing, and shows the ranking computed from scratch. Real bccd crops, a tiny real model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pages.eval_workspaces import build_bccd_workspace, plain


@pytest.fixture
def predicted_workspace(tmp_path: Path, bccd_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The bccd workspace with a tiny real checkpoint, not predicted yet."""
    monkeypatch.delenv("TAXALENS_LABEL_STORE_URL", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return build_bccd_workspace(tmp_path / "ws", bccd_root, predictions=False, taxonomy=False)


def test_the_ranking_warmed_by_the_command_line_serves_the_first_review_visit(predicted_workspace, open_page,
                                                                              monkeypatch, capsys):
    import streamlit as st

    import core.conformal
    import core.ranking
    from cli.main import main
    from core.conformal import ConformalConfig, calibrate_on_table, set_frame
    from core.ranking import rank_label_issues
    from tests.pages.eval_workspaces import load_table

    root = predicted_workspace
    assert main(["predict", "--workspace", str(root), "--checkpoint", "tiny", "--workers", "0", "--no-pools"]) == 0
    assert "4 label-issue ranking(s) and the prediction-set thresholds stored for the Review queue" in \
        capsys.readouterr().out
    stored = sorted(p.name for p in (root / ".taxalens" / "predictions" / "results").glob("label-issues-*"))
    assert len(stored) == 4  # val, train, test, all
    table = load_table(root)
    val = table.for_split("val")
    expected = rank_label_issues(val, reference=table.for_split("train"))  # from scratch, in this process
    first = str(expected.frame["sample_id"].iloc[0])
    members = set_frame(val, calibrate_on_table(val, ConformalConfig())).set_index("sample_id").loc[first,
                                                                                                   "prediction_set"]

    st.cache_resource.clear()  # a fresh server: nothing in memory, what the command stored on disk

    def refuse(*args, **kwargs):
        raise AssertionError("computed on the first visit although the command line stored it")

    monkeypatch.setattr(core.ranking, "rank_label_issues", refuse)
    monkeypatch.setattr(core.conformal, "calibrate_on_table", refuse)
    app = open_page(root, "pages/review.py", state={"rv-kind": "likely_errors", "rv-cam": False})
    captions = [plain(c.value) for c in app.caption]
    assert any(f"queue rank 1 · {first}" in c for c in captions), captions
    set_line = next(plain(m.value) for m in app.markdown if "Prediction set" in m.value)
    assert set_line.startswith(f"**Prediction set (90%):** {', '.join(members)}"), set_line
    app = open_page(root, "pages/review.py", split="all", state={"rv-kind": "likely_errors", "rv-cam": False})
    assert not app.exception  # the split "all" is read from disk too (rank_label_issues refuses)
