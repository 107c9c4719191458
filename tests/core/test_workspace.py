"""Workspace configuration: what `taxalens.toml` says, resolved to absolute paths; what a bad one is told; adding a
checkpoint to it. Real files throughout (the BCCD crops as the dataset)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import TaxaLensError
from core.workspace import CONFIG_NAME, WorkspaceError, add_checkpoint, load_workspace


@pytest.fixture(autouse=True)
def _no_store_override(monkeypatch):
    monkeypatch.delenv("TAXALENS_LABEL_STORE_URL", raising=False)


def _write(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / CONFIG_NAME).write_text(text, encoding="utf-8")
    return root


def test_every_field_is_read_and_relative_paths_resolve_against_the_workspace(tmp_path: Path):
    root = _write(tmp_path / "ws", """
[dataset]
manifest = "data/manifest.csv"
root = "../images"
taxonomy = ["phylum", "order"]
val_fraction = 0.3
seed = 7

[[checkpoints]]
name = "first"
path = "ckpt/a.safetensors"

[[checkpoints]]
path = "/models/b.pth"
arch = "resnet18"
classes = "classes.txt"
trust = true

[labels]
url = "postgresql://reviewer@db:5432/labels"

[demo]
flipped_labels = "data/flipped.csv"
""")
    workspace = load_workspace(root)
    assert workspace.root == root.resolve()
    assert workspace.dataset_source == root.resolve() / "data" / "manifest.csv"
    assert workspace.dataset_root == tmp_path.resolve() / "images"
    assert workspace.taxonomy == ("phylum", "order")
    assert (workspace.val_fraction, workspace.seed) == (0.3, 7)
    first, second = workspace.checkpoints
    assert (first.name, first.path, first.arch, first.classes, first.trust) == (
        "first", root.resolve() / "ckpt" / "a.safetensors", None, None, False)
    assert (second.name, second.path, second.arch, second.classes, second.trust) == (
        "b", Path("/models/b.pth"), "resnet18", root.resolve() / "classes.txt", True)  # name defaults to the stem
    assert workspace.label_store_url == "postgresql://reviewer@db:5432/labels"
    assert workspace.extras == {"demo": {"flipped_labels": "data/flipped.csv"}}
    assert workspace.cache_dir == root.resolve() / ".taxalens"
    assert load_workspace(root / CONFIG_NAME) == workspace  # the toml file itself opens the same workspace


def test_defaults_a_folder_dataset_and_a_sqlite_store_in_the_workspace(tmp_path: Path, monkeypatch):
    root = _write(tmp_path, '[dataset]\nroot = "images"\n')
    workspace = load_workspace(root)
    assert workspace.dataset_source == root.resolve() / "images" and workspace.dataset_root is None
    assert workspace.checkpoints == () and workspace.taxonomy == ()
    assert workspace.label_store_url == f"sqlite:///{root.resolve() / 'labels.db'}"
    monkeypatch.setenv("TAXALENS_LABEL_STORE_URL", "sqlite:////elsewhere/labels.db")  # the environment wins
    assert load_workspace(root).label_store_url == "sqlite:////elsewhere/labels.db"


def test_the_workspace_loads_its_real_dataset(tmp_path: Path, bccd_root: Path):
    root = _write(tmp_path, f'[dataset]\nroot = "{bccd_root}"\nval_fraction = 0.5\n')
    dataset = load_workspace(root).load_dataset(verify="none")
    assert len(dataset.samples) == 351
    assert dataset.class_names == ("Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil")
    val_share = (dataset.samples["split"] == "val").mean()
    assert 0.4 < val_share < 0.6  # the workspace's val_fraction (not the default 0.2) reaches the split


@pytest.mark.parametrize(("toml", "message"), [
    (None, "is not a TaxaLens workspace: taxalens.toml not found (build the demo with `python -m core demo"),
    ("[dataset\nroot = 1", "is not valid TOML"),
    ("[labels]\nurl = 'sqlite:///x.db'\n", "needs [dataset] with `root` (an ImageFolder) or `manifest` (a CSV)"),
    ('[dataset]\nroot = "d"\n[[checkpoints]]\nname = "a"\n', "checkpoints[0] has no `path`"),
    ('[dataset]\nroot = "d"\n[[checkpoints]]\npath = "x/a.pt"\n[[checkpoints]]\npath = "y/a.pt"\n',
     "checkpoint names must be unique, got ['a', 'a']"),
])
def test_a_bad_config_names_itself_and_the_fix(tmp_path: Path, toml: str | None, message: str):
    if toml is not None:
        _write(tmp_path, toml)
    with pytest.raises(WorkspaceError) as caught:
        load_workspace(tmp_path)
    assert message in str(caught.value)
    assert str(tmp_path) in str(caught.value)
    assert isinstance(caught.value, TaxaLensError) and isinstance(caught.value, ValueError)


def test_an_unknown_checkpoint_lists_the_known_ones(tmp_path: Path):
    workspace = load_workspace(_write(tmp_path, '[dataset]\nroot = "d"\n[[checkpoints]]\npath = "m/tiny.pt"\n'))
    assert workspace.checkpoint("tiny").path == tmp_path.resolve() / "m" / "tiny.pt"
    with pytest.raises(WorkspaceError, match=r"no checkpoint named 'big' in .*taxalens.toml; known: \['tiny'\]"):
        workspace.checkpoint("big")


def test_add_checkpoint_appends_an_entry_that_reads_back(tmp_path: Path):
    root = _write(tmp_path / "ws", '[dataset]\nroot = "d"\n\n[[checkpoints]]\npath = "old.pt"\n')
    add_checkpoint(root, 'retrain (2)', root / "runs" / "r1" / "best.safetensors")  # inside: stored relative
    add_checkpoint(root, "outside", tmp_path / "elsewhere.safetensors")  # outside: stored absolute
    text = (root / CONFIG_NAME).read_text(encoding="utf-8")
    assert 'path = "runs/r1/best.safetensors"' in text and f'path = "{tmp_path.resolve()}/elsewhere' in text
    names = [(c.name, c.path) for c in load_workspace(root).checkpoints]
    assert names == [("old", root.resolve() / "old.pt"),
                     ('retrain (2)', root.resolve() / "runs" / "r1" / "best.safetensors"),
                     ("outside", tmp_path.resolve() / "elsewhere.safetensors")]
    assert text.startswith('[dataset]\nroot = "d"\n')  # what was there is kept as written


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
