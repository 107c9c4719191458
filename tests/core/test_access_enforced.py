"""`core` refuses what a role may not do, whatever a page shows: the label store, exports and training runs.

Actors are built directly (`core.access.Actor`); how a page obtains one is the sign-in's business.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from core.access import AccessError, Actor, Role
from core.dataset import Dataset
from core.export import audit_log_csv, curated_manifest_csv, export_curated_labels
from core.labelstore import LabelStore, NewEvent
from core.train_runs import TrainingRun, launch_run, start_training_run, stop_run
from core.workspace import load_workspace

VIEWER = Actor("val@lab.org", Role.VIEWER, signed_in=True)
ANN = Actor("ann@lab.org", Role.REVIEWER, signed_in=True)
BOB = Actor("bob@lab.org", Role.REVIEWER, signed_in=True)
LEAD = Actor("lee@lab.org", Role.LEAD, signed_in=True)


@pytest.fixture
def store(tmp_path: Path):
    with LabelStore(f"sqlite:///{tmp_path / 'labels.db'}") as opened:
        yield opened


def test_a_viewer_records_nothing(store: LabelStore) -> None:
    with pytest.raises(AccessError, match="viewer and may not record"):
        store.record("a.png", "confirm", given_label="Daphnia", actor=VIEWER)
    with pytest.raises(AccessError, match="may not record"):
        store.record_many([NewEvent("a.png", "confirm", None, given_label="Daphnia")], actor=VIEWER)
    with pytest.raises(AccessError):
        store.undo_last(actor=VIEWER)
    assert store.count_events() == 0


def test_the_recorded_reviewer_is_the_actor(store: LabelStore) -> None:
    event = store.record("a.png", "relabel", label="Volvox", given_label="Daphnia", actor=ANN)
    assert event.reviewer == "ann@lab.org"
    same = store.record("b.png", "confirm", reviewer="ann@lab.org", given_label="Daphnia", actor=ANN)
    assert same.reviewer == "ann@lab.org"
    for other in ("bob@lab.org", "Ann@lab.org", "ann"):
        with pytest.raises(AccessError, match="may not record events as"):
            store.record("a.png", "confirm", reviewer=other, given_label="Daphnia", actor=ANN)
    with pytest.raises(AccessError, match="as 'bob@lab.org'"):
        store.record_many([NewEvent("c.png", "confirm", "ann@lab.org", given_label="Daphnia"),
                           NewEvent("d.png", "confirm", "bob@lab.org", given_label="Daphnia")], actor=ANN)
    assert store.count_events() == 2  # all or nothing
    # A trusted caller (actor=None: the CLI, tests) names the reviewer itself, as before.
    assert store.record("a.png", "confirm", reviewer="cli-user", given_label="Daphnia").reviewer == "cli-user"
    with pytest.raises(ValueError, match="reviewer identity is required"):
        store.record("a.png", "confirm", given_label="Daphnia")


def test_only_a_lead_adjudicates(store: LabelStore) -> None:
    store.record("a.png", "relabel", label="Volvox", given_label="Daphnia", actor=ANN)
    with pytest.raises(AccessError, match="may not adjudicate"):
        store.record("a.png", "relabel", label="Calanus", adjudication=True, actor=BOB)
    ruling = store.record("a.png", "relabel", label="Calanus", adjudication=True, actor=LEAD)
    assert ruling.adjudication and ruling.reviewer == "lee@lab.org"
    assert store.state("a.png").decided_by == "lee@lab.org"
    from core.agreement import adjudicate

    with pytest.raises(AccessError, match="may not adjudicate"):
        adjudicate(store, "a.png", "(excluded)", actor=ANN)
    assert adjudicate(store, "a.png", "(excluded)", actor=LEAD).reviewer == "lee@lab.org"
    assert store.state("a.png").status == "excluded"


def test_only_the_author_or_a_lead_undoes_an_event(store: LabelStore) -> None:
    first = store.record("a.png", "relabel", label="Volvox", given_label="Daphnia", actor=ANN)
    second = store.record("b.png", "relabel", label="Volvox", given_label="Daphnia", actor=ANN)
    with pytest.raises(AccessError, match="may not undo others"):
        store.undo_event(second.id, actor=BOB)
    with pytest.raises(ValueError, match="nothing to undo"):  # bob's own latest: he has none
        store.undo_last(actor=BOB)
    assert store.count_events() == 2
    undo = store.undo_event(second.id, actor=LEAD)  # by id, under the lead's own name
    assert (undo.action, undo.reverts_id, undo.reviewer, undo.sample_id) == ("undo", second.id, "lee@lab.org",
                                                                               "b.png")
    assert store.state("b.png").status == "unreviewed"
    with pytest.raises(ValueError, match="undone already"):
        store.undo_event(second.id, actor=ANN)
    with pytest.raises(ValueError, match="an undo"):
        store.undo_event(undo.id, actor=LEAD)
    with pytest.raises(ValueError, match="no label event with id 999"):
        store.undo_event(999, actor=LEAD)
    # ann's "undo my latest" skips the event the lead undid and reverts her previous one.
    assert store.last_undoable("ann@lab.org") == first
    mine = store.undo_last(actor=ANN)
    assert (mine.reverts_id, mine.reviewer) == (first.id, "ann@lab.org")
    again = store.record("a.png", "relabel", label="Calanus", actor=ANN)
    assert store.undo_event(again.id, actor=ANN).reverts_id == again.id  # the author may, by id
    assert store.verify_chain().ok


def _tiny_dataset(tmp_path: Path) -> Dataset:
    samples = pd.DataFrame({"sample_id": ["a.png"], "path": [str(tmp_path / "a.png")], "label": ["Daphnia"],
                            "split": ["train"], "specimen_id": ["a.png"]})
    return Dataset(root=tmp_path, samples=samples, class_names=("Daphnia",))


def test_exports_need_the_export_permission(store: LabelStore, tmp_path: Path) -> None:
    dataset = _tiny_dataset(tmp_path)
    store.record("a.png", "confirm", given_label="Daphnia", actor=ANN)
    for actor in (VIEWER, ANN):
        with pytest.raises(AccessError, match="may not export"):
            curated_manifest_csv(dataset, store, actor=actor)
        with pytest.raises(AccessError, match="may not export"):
            audit_log_csv(store, actor=actor)
        with pytest.raises(AccessError, match="may not export"):
            export_curated_labels(dataset, store, tmp_path / "out.csv", actor=actor)
    assert not (tmp_path / "out.csv").exists()
    assert curated_manifest_csv(dataset, store, actor=LEAD).startswith(b"path,label")
    assert b"ann@lab.org" in audit_log_csv(store, actor=LEAD)
    assert export_curated_labels(dataset, store, tmp_path / "out.csv", actor=LEAD).n_rows == 1


def test_training_runs_need_the_retrain_permission(tmp_path: Path) -> None:
    (tmp_path / "taxalens.toml").write_text('[dataset]\nroot = "data"\n', encoding="utf-8")
    workspace = load_workspace(tmp_path)
    with pytest.raises(AccessError, match="may not retrain"):
        start_training_run(workspace, "new-model", python="/nonexistent/python", actor=ANN)
    with pytest.raises(AccessError, match="may not retrain"):  # cross-validation runs start through launch_run
        launch_run(workspace, "crossval", "cv-probe", [], python="/nonexistent/python", actor=ANN)
    assert not (workspace.cache_dir / "runs").exists()  # refused before anything was started or written
    run = TrainingRun(run_dir=tmp_path / "run", name="x", state="running", status={}, command={})
    with pytest.raises(AccessError, match="may not retrain"):
        stop_run(run, actor=ANN)
    assert stop_run(run, actor=LEAD) is False  # allowed; no live process to signal
