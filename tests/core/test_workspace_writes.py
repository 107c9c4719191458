"""Writes to taxalens.toml: one atomic, locked, validated helper; names validated once; a real 4-process race."""

from __future__ import annotations

import multiprocessing
import os
import tomllib
from pathlib import Path

import pytest

from core.access import AccessError, Actor, Role, workspace_access_rules
from core.ensemble import EnsembleSpec, add_ensemble, read_ensemble_specs
from core.workspace import (
    CONFIG_NAME,
    WorkspaceError,
    add_checkpoint,
    load_workspace,
    toml_string,
    update_workspace_config,
    validate_entry_name,
)
from tests.core import workspace_workers

BASE = '# the lab\'s workspace\n[dataset]\nroot = "data"\ntaxonomy = []\n\n[labels]\n'


@pytest.fixture
def workspace_root(tmp_path: Path) -> Path:
    (tmp_path / CONFIG_NAME).write_text(BASE, encoding="utf-8")
    return tmp_path


def test_four_writers_race_and_a_reader_never_sees_an_invalid_file(workspace_root: Path) -> None:
    n_writers, n_each = 4, 25
    context = multiprocessing.get_context("spawn")
    start, stop = context.Event(), context.Event()
    result = workspace_root / "reader.txt"
    reader = context.Process(target=workspace_workers.read_continuously, args=(str(workspace_root), stop, str(result)))
    writers = [context.Process(target=workspace_workers.add_checkpoints, args=(str(workspace_root), w, n_each, start))
               for w in range(n_writers)]
    for process in [reader, *writers]:
        process.start()
    start.set()
    for process in writers:
        process.join(timeout=300)
        assert process.exitcode == 0
    stop.set()
    reader.join(timeout=60)
    reads, invalid, *first = result.read_text(encoding="utf-8").split(" ", 2)
    assert int(reads) > 20, "the reader did not overlap the writers"
    assert int(invalid) == 0, f"the reader saw an invalid taxalens.toml {invalid} times, e.g. {first}"
    workspace = load_workspace(workspace_root)
    names = sorted(c.name for c in workspace.checkpoints)
    assert names == sorted(f"w{w}-{j}" for w in range(n_writers) for j in range(n_each))
    text = (workspace_root / CONFIG_NAME).read_text(encoding="utf-8")
    assert text.startswith("# the lab's workspace\n[dataset]")  # comments and [dataset] survive every rewrite
    assert not [p for p in os.listdir(workspace_root) if p.endswith(".tmp")]  # no temporary file left behind


@pytest.mark.parametrize("name", ["a\nb", 'x"\n[dataset]\nroot = "/"', "a]]", "k = 1", "#c", "", " lead", "tail ",
                                  "x" * 101, "zero\u200bwidth", "tab\tname"])
def test_bad_names_are_refused_and_the_file_is_unchanged(workspace_root: Path, name: str) -> None:
    before = (workspace_root / CONFIG_NAME).read_bytes()
    with pytest.raises(WorkspaceError, match="name"):
        add_checkpoint(workspace_root, name, workspace_root / "m.safetensors")
    with pytest.raises(WorkspaceError, match="name"):
        add_ensemble(workspace_root, EnsembleSpec(name, ("a", "b")))
    assert (workspace_root / CONFIG_NAME).read_bytes() == before


def test_good_names_and_odd_paths_round_trip(workspace_root: Path) -> None:
    for name in ("resnet18", "Réseau 2 (v1.0)+ft", "模型-b"):
        assert validate_entry_name(name) == name
    odd = workspace_root / 'we"ird\\dir' / "m\u00e9.safetensors"
    add_checkpoint(workspace_root, "a", odd)
    add_checkpoint(workspace_root, "Réseau 2 (v1.0)+ft", workspace_root / "b.safetensors")
    add_ensemble(workspace_root, EnsembleSpec("a plus b", ("a", "Réseau 2 (v1.0)+ft"), "f1_weighted"))
    workspace = load_workspace(workspace_root)
    assert workspace.checkpoint("a").path == odd.resolve()
    [spec] = read_ensemble_specs(workspace)
    assert (spec.name, spec.members, spec.method) == ("a plus b", ("a", "Réseau 2 (v1.0)+ft"), "f1_weighted")
    with pytest.raises(WorkspaceError, match="already has a checkpoint named 'a'"):
        add_checkpoint(workspace_root, "a", workspace_root / "c.safetensors")
    for text in ('q"', "back\\slash", "new\nline\r\x00\x7f", "emoji 🦐"):
        assert tomllib.loads(f"k = {toml_string(text)}")["k"] == text


def test_an_edit_that_breaks_the_workspace_is_refused_and_leaves_the_file(workspace_root: Path) -> None:
    before = (workspace_root / CONFIG_NAME).read_bytes()
    with pytest.raises(WorkspaceError, match="would not be a valid workspace.*unchanged"):
        update_workspace_config(workspace_root, lambda text, ws: text.replace("[dataset]", "[datasets]"))
    with pytest.raises(WorkspaceError, match="unchanged"):
        update_workspace_config(workspace_root, lambda text, ws: text + "\n[[checkpoints]]\nname = 'x'\n")
    assert (workspace_root / CONFIG_NAME).read_bytes() == before
    assert not [p for p in os.listdir(workspace_root) if p.endswith(".tmp")]


def test_workspace_writers_require_the_admin_role(workspace_root: Path) -> None:
    add_checkpoint(workspace_root, "a", workspace_root / "a.safetensors")
    add_checkpoint(workspace_root, "b", workspace_root / "b.safetensors")
    before = (workspace_root / CONFIG_NAME).read_bytes()
    lead = Actor("lead@lab.org", Role.LEAD, signed_in=True)
    with pytest.raises(AccessError, match="edit workspace"):
        add_checkpoint(workspace_root, "c", workspace_root / "c.safetensors", actor=lead)
    with pytest.raises(AccessError, match="edit workspace"):
        add_ensemble(workspace_root, EnsembleSpec("ab", ("a", "b")), actor=lead)
    assert (workspace_root / CONFIG_NAME).read_bytes() == before
    admin = Actor("pi@lab.org", Role.ADMIN, signed_in=True)
    add_checkpoint(workspace_root, "c", workspace_root / "c.safetensors", actor=admin)
    add_ensemble(workspace_root, EnsembleSpec("ab", ("a", "b")), actor=admin)
    assert [c.name for c in load_workspace(workspace_root).checkpoints] == ["a", "b", "c"]


def test_workspace_access_rules_read_the_access_table(workspace_root: Path) -> None:
    assert workspace_access_rules(load_workspace(workspace_root)).local == Role.ADMIN  # no [access]: defaults
    (workspace_root / CONFIG_NAME).write_text(
        BASE + '\n[access]\nlead = ["Curator@Lab.org"]\nreviewer = ["@lab.org"]\ndefault = "none"\nlocal = "viewer"\n',
        encoding="utf-8")
    rules = workspace_access_rules(load_workspace(workspace_root))
    assert (rules.role_of("curator@lab.org"), rules.role_of("x@lab.org"), rules.role_of("x@else.org")) == \
        (Role.LEAD, Role.REVIEWER, None)
    assert rules.local == Role.VIEWER
