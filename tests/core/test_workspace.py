"""Workspace settings: every value of `taxalens.toml` is checked for its type, and a wrong one is named with its fix."""

from __future__ import annotations

import pytest

from core.workspace import WorkspaceError, load_workspace

# (id, toml after a valid [dataset] root line (`^`: before it, at the top level), the phrase the error must carry)
BAD_SETTINGS = [
    ("val-fraction-text", 'val_fraction = "lots"\n', "`val_fraction` in [dataset] must be a number"),
    ("val-fraction-one", "val_fraction = 1.0\n", "`val_fraction` in [dataset] must be a number"),
    ("seed-float", "seed = 1.5\n", "`seed` in [dataset] must be a whole number"),
    ("taxonomy-text", 'taxonomy = "phylum"\n', "`taxonomy` in [dataset] must be a list"),
    ("manifest-number", "manifest = 3\n", "`manifest` in [dataset] must be text"),
    ("checkpoints-table", '\n[checkpoints]\nname = "a"\n', "`checkpoints` must be a list of [[checkpoints]] tables"),
    ("checkpoint-path-number", "\n[[checkpoints]]\npath = 5\n", "`path` in checkpoints[0] must be text"),
    ("checkpoint-trust-text", '\n[[checkpoints]]\npath = "a.pth"\ntrust = "yes"\n',
     "`trust` in checkpoints[0] must be true or false"),
    ("labels-string", '^labels = "sqlite:///x.db"\n', "`labels` must be a table"),
    ("labels-url-number", "\n[labels]\nurl = 5\n", "`url` in [labels] must be text"),
]


@pytest.mark.parametrize(("extra", "phrase"), [c[1:] for c in BAD_SETTINGS], ids=[c[0] for c in BAD_SETTINGS])
def test_a_setting_of_the_wrong_type_is_named(tmp_path, extra, phrase):
    (tmp_path / "data").mkdir()
    top, extra = (extra[1:], "") if extra.startswith("^") else ("", extra)
    (tmp_path / "taxalens.toml").write_text(f'{top}[dataset]\nroot = "data"\n{extra}', encoding="utf-8")
    with pytest.raises(WorkspaceError) as info:
        load_workspace(tmp_path)
    assert phrase in str(info.value) and str(tmp_path / "taxalens.toml") in str(info.value)


def test_valid_settings_still_load(tmp_path, monkeypatch):
    monkeypatch.delenv("TAXALENS_LABEL_STORE_URL", raising=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "taxalens.toml").write_text(
        '[dataset]\nroot = "data"\nval_fraction = 0.3\nseed = 4\n\n[[checkpoints]]\npath = "a.pth"\ntrust = true\n'
        '\n[labels]\nurl = "sqlite:///x.db"\n', encoding="utf-8")
    workspace = load_workspace(tmp_path)
    assert (workspace.val_fraction, workspace.seed) == (0.3, 4)
    assert workspace.checkpoints[0].name == "a" and workspace.checkpoints[0].trust
    assert workspace.label_store_url == "sqlite:///x.db"
