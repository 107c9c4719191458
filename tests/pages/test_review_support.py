"""The review and adjudication pages on a workspace whose label store cannot be opened: they say why and stop.

`LabelStoreError` is a `RuntimeError`; before every error derived from `TaxaLensError` (caught as `USER_ERRORS`) it
escaped the pages as a traceback."""

from __future__ import annotations

import pytest

from core.workspace import CONFIG_NAME
from tests.pages.eval_workspaces import build_bccd_workspace, plain


@pytest.fixture(scope="module")
def unreachable_store_workspace(tmp_path_factory, bccd_root):
    root = build_bccd_workspace(tmp_path_factory.mktemp("pages") / "mysql", bccd_root)
    with open(root / CONFIG_NAME, "a", encoding="utf-8") as config:
        config.write('\n[labels]\nurl = "mysql://reviewer@db/labels"\n')
    return root


@pytest.mark.parametrize("page", ["pages/review.py", "pages/adjudicate.py"])
def test_a_label_store_that_cannot_be_opened_is_reported(unreachable_store_workspace, open_page, page, monkeypatch):
    monkeypatch.delenv("TAXALENS_LABEL_STORE_URL", raising=False)
    app = open_page(unreachable_store_workspace, page)  # fails on any exception the page lets escape
    errors = [plain(e.value) for e in app.error]  # as a reader sees it (user text is escaped)
    assert any(e.startswith("Cannot open the label store of ") and "a mysql database" in e
               and "use sqlite:///PATH/labels.db" in e for e in errors), errors
    assert not app.button  # stopped before any review action is offered
