"""Unlabelled pools on real bccd crops: `[[pools]]` parsing and path validation, bad images skipped, incremental
predictions with a tiny real checkpoint, `label` and bulk `auto_accept` events (undoable, chained, audited) on SQLite
and PostgreSQL, the curated export's `status=new` rows and training on them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.access import AccessError, Actor, Role
from core.dataset import pool_sample_id, split_pool_sample_id
from core.export import build_audit_log, build_curated_manifest, export_curated_labels
from core.labelstore import LabelStore
from core.pools import (
    NEW_STATUS,
    QUEUED_STATUS,
    PoolError,
    PoolPredictions,
    annotation_queue,
    bulk_accepts,
    bulk_sample_id,
    load_pool,
    plan_auto_accept,
    pool_counts,
    pool_label_frame,
    record_auto_accept,
    undo_auto_accept,
)
from core.training_data import count_new_images, load_workspace_training_dataset
from core.workspace import WorkspaceError, load_workspace
from tests.pages.eval_workspaces import POOL, add_pool, build_bccd_workspace

LEAD = Actor("lead@lab.org", Role.LEAD, signed_in=True)
REVIEWER = Actor("rev@lab.org", Role.REVIEWER, signed_in=True)


@pytest.fixture(scope="module")
def pool_workspace(tmp_path_factory, bccd_root: Path) -> Path:
    """A bccd workspace (tiny real checkpoint, synthetic dataset predictions) with a 12-image pool, predicted."""
    from models.inference import predict_pool

    root = build_bccd_workspace(tmp_path_factory.mktemp("pools") / "ws", bccd_root, taxonomy=False)
    add_pool(root, bccd_root, n=12)
    workspace = load_workspace(root)
    predict_pool(workspace, "tiny", load_pool(workspace, POOL), num_workers=0)
    return root


def _predictions(root: Path) -> PoolPredictions:
    from models.inference import cached_pool_predictions

    workspace = load_workspace(root)
    found = cached_pool_predictions(workspace, "tiny", load_pool(workspace, POOL))
    assert found is not None
    return found


# ------------------------------------------------------------------------------------------ config and validation


def test_pool_ids_round_trip_and_never_collide_with_the_bulk_id() -> None:
    sample_id = pool_sample_id("spring", "a/b c.png")
    assert sample_id == "pool:spring/a/b c.png"
    assert split_pool_sample_id(sample_id) == ("spring", "a/b c.png")
    assert split_pool_sample_id(bulk_sample_id("spring")) is None
    assert split_pool_sample_id("Neutrophil/x.jpg") is None


@pytest.mark.parametrize(("entry", "phrase"), [
    ('name = "p"\n', "needs `root`"),
    ('root = "x"\n', "has no `name`"),
    ('name = "p"\nmanifest = "list.txt"\n', "not a .csv"),
    ('name = "bad/name"\nroot = "x"\n', "may use only"),
])
def test_bad_pool_entries_name_the_entry_and_the_fix(tmp_path: Path, bccd_root: Path, entry: str, phrase: str) -> None:
    (tmp_path / "taxalens.toml").write_text(f'[dataset]\nroot = "{bccd_root}"\n\n[[pools]]\n{entry}', encoding="utf-8")
    with pytest.raises(WorkspaceError, match="pools\\[0\\]") as info:
        load_workspace(tmp_path)
    assert phrase in str(info.value)


def test_duplicate_pool_names_are_refused(tmp_path: Path, bccd_root: Path) -> None:
    pools = '\n[[pools]]\nname = "p"\nroot = "a"\n' * 2
    (tmp_path / "taxalens.toml").write_text(f'[dataset]\nroot = "{bccd_root}"\n{pools}', encoding="utf-8")
    with pytest.raises(WorkspaceError, match="unique"):
        load_workspace(tmp_path)


def test_a_pool_folder_skips_corrupt_and_non_images_and_keeps_odd_modes(tmp_path: Path, bccd_root: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "taxalens.toml").write_text(f'[dataset]\nroot = "{bccd_root}"\n', encoding="utf-8")
    folder = add_pool(root, bccd_root, n=3)
    real = sorted(folder.iterdir())[0]
    (folder / "sub").mkdir()
    shutil.copyfile(real, folder / "sub" / "deep.jpg")
    (folder / "broken.jpg").write_bytes(real.read_bytes()[:40])  # a real JPEG cut short in its header
    (folder / "notes.txt").write_text("field notes", encoding="utf-8")
    (folder / "fake.png").write_bytes(b"not a png at all")
    Image.open(real).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)).save(folder / "sixteen.png")
    pool = load_pool(load_workspace(root), POOL)
    assert sorted(pool.samples["relpath"]) == ["cmyk.jpg", "img000.jpg", "img001.jpg", "img002.jpg", "sixteen.png",
                                               "sub/deep.jpg"]
    assert pool.samples["sample_id"].iloc[0].startswith("pool:spring/")
    reasons = dict(zip(pool.skipped["sample_id"], pool.skipped["reason"], strict=True))
    assert reasons["notes.txt"] == "not_image" and reasons["fake.png"] == "not_image"
    assert reasons["broken.jpg"] in {"corrupt", "not_image"}
    assert all(Path(p).is_file() for p in pool.samples["path"])


def test_a_pool_csv_refuses_paths_that_escape_its_root(tmp_path: Path, bccd_root: Path) -> None:
    root = tmp_path / "ws"
    folder = root / "batch"
    folder.mkdir(parents=True)
    shutil.copyfile(next((bccd_root / "Monocyte").iterdir()), folder / "ok.jpg")
    os.symlink(next((bccd_root / "Lymphocyte").iterdir()), folder / "link.jpg")  # points outside the pool root
    (folder / "list.csv").write_text("path\nok.jpg\n../secret.jpg\n/etc/passwd\n", encoding="utf-8")
    (root / "taxalens.toml").write_text(f'[dataset]\nroot = "{bccd_root}"\n\n[[pools]]\nname = "b"\n'
                                        'manifest = "batch/list.csv"\n', encoding="utf-8")
    with pytest.raises(PoolError, match="pool 'b'") as info:
        load_pool(load_workspace(root), "b")
    assert "../secret.jpg" in str(info.value) and "/etc/passwd" in str(info.value)
    (folder / "list.csv").write_text("path\nok.jpg\nlink.jpg\n", encoding="utf-8")
    with pytest.raises(PoolError, match="outside"):
        load_pool(load_workspace(root), "b")
    (folder / "list.csv").write_text("path\nok.jpg\nmissing.jpg\n", encoding="utf-8")
    pool = load_pool(load_workspace(root), "b")
    assert pool.samples["relpath"].tolist() == ["ok.jpg"]
    assert pool.skipped["reason"].tolist() == ["missing"]


def test_a_pool_csv_without_a_path_column_says_so(tmp_path: Path, bccd_root: Path) -> None:
    (tmp_path / "list.csv").write_text("file\na.jpg\n", encoding="utf-8")
    (tmp_path / "taxalens.toml").write_text(f'[dataset]\nroot = "{bccd_root}"\n\n[[pools]]\nname = "b"\n'
                                            'manifest = "list.csv"\n', encoding="utf-8")
    with pytest.raises(PoolError, match="no `path` column"):
        load_pool(load_workspace(tmp_path), "b")


# ----------------------------------------------------------------------------------------------- predictions


def test_pool_predictions_are_stored_and_only_new_images_predicted(pool_workspace: Path, tmp_path: Path) -> None:
    from models.inference import cached_pool_predictions, predict_pool, store_path

    root = tmp_path / "copy"
    shutil.copytree(pool_workspace, root, symlinks=True)
    workspace = load_workspace(root)
    pool = load_pool(workspace, POOL)
    first = cached_pool_predictions(workspace, "tiny", pool)
    assert first is not None and len(first) == 12
    assert np.allclose(first.pred_probs.sum(axis=1), 1.0, atol=1e-4) and first.embeddings.shape[1] > 0
    parts = sorted(store_path(workspace, "tiny").glob("part-*.parquet"))
    seen: list[tuple[int, int]] = []
    again = predict_pool(workspace, "tiny", pool, num_workers=0, progress=lambda d, t: seen.append((d, t)))
    assert sorted(store_path(workspace, "tiny").glob("part-*.parquet")) == parts  # nothing predicted again
    assert np.array_equal(again.pred_probs, first.pred_probs)
    shutil.copyfile(root / "incoming" / "img000.jpg", root / "incoming" / "img999.jpg")
    grown = load_pool(workspace, POOL)
    assert cached_pool_predictions(workspace, "tiny", grown) is None  # a new image has no prediction yet
    seen.clear()
    result = predict_pool(workspace, "tiny", grown, num_workers=0, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (1, 1) and len(result) == 13  # only the new image went through the model
    row = list(result.sample_ids).index(pool_sample_id(POOL, "img999.jpg"))
    assert np.allclose(result.pred_probs[row], result.pred_probs[0], atol=1e-5)  # the same pixels


# ------------------------------------------------------------------------------------- label store and queue


def test_label_events_and_an_undoable_bulk_auto_accept(pool_workspace: Path, store_url: str) -> None:
    workspace = load_workspace(pool_workspace)
    pool = load_pool(workspace, POOL)
    predictions = _predictions(pool_workspace)
    ids = list(predictions.sample_ids)
    with LabelStore(store_url) as store:
        store.record(ids[0], "label", label="Monocyte", actor=REVIEWER)
        store.record(ids[1], "exclude", actor=REVIEWER)
        labels = pool_label_frame(store, pool)
        assert labels.set_index("sample_id").loc[ids[0], ["label", "status", "source"]].tolist() == \
            ["Monocyte", NEW_STATUS, "manual"]
        assert labels.set_index("sample_id").loc[ids[1], "status"] == "excluded"
        # thresholds: every class accepts at 0 except Basophil, which is never accepted
        names = predictions.class_names
        thresholds = pd.DataFrame({"class": names, "threshold": [np.nan if c == "Basophil" else 0.0 for c in names]})
        plan = plan_auto_accept(predictions, thresholds, labels, checkpoint="tiny", target_precision=0.9)
        top = np.asarray(names, dtype=object)[predictions.pred_probs.argmax(axis=1)]
        expected = {s: c for s, c in zip(ids, top, strict=True) if c != "Basophil" and s not in ids[:2]}
        assert plan.accepted == expected and plan.count == len(expected)
        with pytest.raises(AccessError, match="auto accept"):
            record_auto_accept(store, plan, actor=REVIEWER)  # a reviewer may label, not bulk-accept
        before = store.count_events()
        event = record_auto_accept(store, plan, actor=LEAD)
        assert store.count_events() == before + 1  # ONE event for the whole batch
        assert event.action == "auto_accept" and event.reviewer == LEAD.name and event.sample_id == bulk_sample_id(POOL)
        note = json.loads(event.note)
        assert note["count"] == plan.count and note["thresholds"]["Basophil"] is None
        after = pool_label_frame(store, pool)
        counts = pool_counts(pool, after)
        assert (counts.labelled, counts.auto_accepted, counts.excluded) == (1, plan.count, 1)
        assert counts.remaining == 12 - 2 - plan.count
        assert set(after.loc[after["source"] == "auto", "sample_id"]) == set(expected)
        # a person's later decision wins over the auto-accept
        changed = next(iter(expected))
        store.record(changed, "label", label="Basophil", actor=REVIEWER)
        assert pool_label_frame(store, pool).set_index("sample_id").loc[changed, ["label", "source"]].tolist() == \
            ["Basophil", "manual"]
        # the audit log lists the bulk event with who, when, the thresholds and the count
        log = build_audit_log(store)
        bulk_rows = log[log["action"] == "auto_accept"]
        assert len(bulk_rows) == 1 and bulk_rows.iloc[0]["reviewer"] == LEAD.name
        assert json.loads(bulk_rows.iloc[0]["note"])["count"] == plan.count
        # undo: its images go back to the queue, the hand decisions stay, the chain verifies
        with pytest.raises(AccessError):
            undo_auto_accept(store, event.id, actor=Actor("other@lab.org", Role.REVIEWER, signed_in=True))
        undo = undo_auto_accept(store, event.id, actor=LEAD)
        assert undo.reverts_id == event.id
        restored = pool_label_frame(store, pool)
        assert (restored["source"] == "auto").sum() == 0
        assert set(restored.loc[restored["status"] == QUEUED_STATUS, "sample_id"]) == set(expected) - {changed}
        assert bulk_accepts(store, POOL)[0].undone_by == undo.id
        assert store.verify_chain().ok and store.verify_chain().links_checked == store.count_events()
        with pytest.raises(ValueError, match="undone already"):
            undo_auto_accept(store, event.id, actor=LEAD)


def test_annotation_queue_orders_queued_images_and_suggests_the_top5(pool_workspace: Path, tmp_path: Path) -> None:
    workspace = load_workspace(pool_workspace)
    pool = load_pool(workspace, POOL)
    predictions = _predictions(pool_workspace)
    with LabelStore(f"sqlite:///{tmp_path / 'labels.db'}") as store:
        store.record(predictions.sample_ids[3], "label", label="Neutrophil", reviewer="ann")
        labels = pool_label_frame(store, pool)
    queue = annotation_queue(predictions, labels, order="margin")
    assert len(queue) == 11 and predictions.sample_ids[3] not in set(queue["sample_id"])
    probs = predictions.pred_probs
    ordered = np.sort(probs, axis=1)
    margin = dict(zip(predictions.sample_ids, ordered[:, -1] - ordered[:, -2], strict=True))
    shown = [margin[s] for s in queue["sample_id"]]
    assert shown == sorted(shown)  # smallest margin (most uncertain) first
    first = list(predictions.sample_ids).index(queue["sample_id"].iloc[0])
    assert queue["top_classes"].iloc[0][0] == queue["suggested"].iloc[0] == \
        predictions.class_names[int(probs[first].argmax())]
    assert len(queue["top_probs"].iloc[0]) == 5 and list(queue["top_probs"].iloc[0]) == sorted(
        queue["top_probs"].iloc[0], reverse=True)
    randomised = annotation_queue(predictions, labels, order="random", seed=1)
    assert sorted(randomised["sample_id"]) == sorted(queue["sample_id"])


# --------------------------------------------------------------------------------------- export and training


def test_labelled_pool_images_export_as_new_and_train(pool_workspace: Path, tmp_path: Path) -> None:
    workspace = load_workspace(pool_workspace)
    pool = load_pool(workspace, POOL)
    dataset = workspace.load_dataset()
    predictions = _predictions(pool_workspace)
    ids = list(predictions.sample_ids)
    with LabelStore(f"sqlite:///{tmp_path / 'labels.db'}") as store:
        for sample_id, label in zip(ids[:4], ["Monocyte", "Lymphocyte", "Monocyte", "Eosinophil"], strict=True):
            store.record(sample_id, "label", label=label, reviewer="ann")
        store.record(ids[4], "exclude", reviewer="ann")
        thresholds = pd.DataFrame({"class": predictions.class_names, "threshold": 0.0})
        plan = plan_auto_accept(predictions, thresholds, pool_label_frame(store, pool), checkpoint="tiny",
                                target_precision=0.9)
        plan = type(plan)(plan.pool, plan.checkpoint, plan.target_precision, plan.thresholds,
                          dict(list(plan.accepted.items())[:2]))  # two auto-accepted images
        record_auto_accept(store, plan, reviewer="lead")
        curated, warnings = build_curated_manifest(dataset, store, pools=(pool,))
        assert not any("not in the dataset" in w for w in warnings)  # pool events are not orphans
        summary = export_curated_labels(dataset, store, tmp_path / "curated.csv", pools=(pool,))
    new = curated[curated["status"] == NEW_STATUS]
    assert len(new) == 6 and set(new["pool"]) == {POOL} and set(new["split"]) == {"train"}
    assert sorted(new["label_source"]) == ["auto", "auto", "manual", "manual", "manual", "manual"]
    assert new.loc[new["label_source"] == "manual", "path"].tolist() == [split_pool_sample_id(s)[1] for s in ids[:4]]
    assert (curated["pool"] == "").sum() == len(dataset)  # the dataset's rows are all there, unchanged
    assert summary.status_counts[NEW_STATUS] == 6 and summary.status_counts["excluded"] >= 1
    assert count_new_images(tmp_path / "curated.csv") == 6
    trained_on = load_workspace_training_dataset(workspace, tmp_path / "curated.csv", verify="none")
    rows = trained_on.samples[trained_on.samples["sample_id"].str.startswith("pool:")]
    assert len(rows) == 6 and set(rows["split"]) == {"train"}
    assert all(Path(p).is_file() and Path(p).is_relative_to(pool.spec.root) for p in rows["path"])
    assert rows.set_index("sample_id").loc[ids[1], "label"] == "Lymphocyte"
    assert len(trained_on.samples) == len(dataset) + 6
    # without the workspace, the pool rows cannot be placed: a clear error, not a silent drop
    from core.dataset import DatasetError, load_dataset

    with pytest.raises(DatasetError, match="pool\\(s\\) \\['spring'\\]"):
        load_dataset(tmp_path / "curated.csv", root=dataset.root, verify="none")
