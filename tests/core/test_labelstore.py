"""The label store on a real SQLite file and a real PostgreSQL server: semantics, append-only, concurrency, crashes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from core.labelchain import GENESIS_HASH
from core.labelstore import (
    EXCLUDED_VOTE,
    UNSURE_VOTE,
    LabelStore,
    LabelStoreError,
    NewEvent,
    derive_state,
    open_label_store,
)
from tests.core import labelstore_workers as workers

HEAD = "0004"  # the newest migration in core/migrations/versions


@pytest.fixture
def store(store_url: str):
    with LabelStore(store_url) as opened:
        yield opened


# ---------------------------------------------------------------------------------------------- schema


def test_a_store_at_the_newest_schema_opens_without_importing_alembic(store_url: str) -> None:
    """Opening checks the schema: a store at the newest revision (the usual case) is recognised with one query and
    the version files' `revision` lines, without Alembic's 0.3 s import on a first page visit; a store behind it
    still migrates through Alembic (and a store two revisions behind too: test_label_integrity)."""
    import subprocess
    import sys

    from core.labelstore import _alembic_scripts, _head_from_files

    assert _head_from_files() == _alembic_scripts()[2] == HEAD
    reopen = ("import sys; from core.labelstore import LabelStore; store = LabelStore(sys.argv[1]); "
              "print(store.migrate(), store.count_events(), 'alembic' in sys.modules)")
    repo = Path(__file__).resolve().parents[2]
    with LabelStore(store_url, migrate=False) as behind:
        assert behind.migrate("0003") == "0003"
    opened = subprocess.run([sys.executable, "-c", reopen, store_url], cwd=repo, capture_output=True, text=True)
    assert opened.stdout.split() == [HEAD, "0", "True"], opened.stderr[-2000:]  # behind: Alembic migrated it
    with LabelStore(store_url) as store:
        store.record("a.png", "confirm", reviewer="ann", given_label="Daphnia")
    opened = subprocess.run([sys.executable, "-c", reopen, store_url], cwd=repo, capture_output=True, text=True)
    assert opened.stdout.split() == [HEAD, "1", "False"], opened.stderr[-2000:]  # at head: no Alembic


def test_open_migrates_to_head_and_reopen_is_a_no_op(store_url: str) -> None:
    with LabelStore(store_url) as first:
        assert first.schema_revision() == HEAD
        first.record("a.png", "confirm", reviewer="ann", given_label="Daphnia")
    with LabelStore(store_url) as again:
        assert again.schema_revision() == HEAD
        assert again.migrate() == HEAD
        assert again.count_events() == 1
        inspector = sa.inspect(again.engine)
        columns = {c["name"] for c in inspector.get_columns("label_events")}
        assert {"id", "sample_id", "previous_label", "new_label", "action", "reviewer", "created_at", "note",
                "checkpoint", "adjudication", "reverts_id"} <= columns
        indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("label_events")}
        assert indexes["ix_label_events_sample"] == ["sample_id", "id"]
        assert indexes["ix_label_events_reviewer"] == ["reviewer", "sample_id"]


def test_store_refuses_a_schema_newer_than_the_code(store_url: str) -> None:
    with LabelStore(store_url) as store, store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(LabelStoreError, match="9999"):
        LabelStore(store_url)


def test_sqlite_store_uses_wal_and_busy_timeout(tmp_path: Path) -> None:
    with LabelStore(f"sqlite:///{tmp_path / 'sub' / 'labels.db'}", busy_timeout_ms=1234) as store:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert (tmp_path / "sub" / "labels.db").is_file()


def test_bad_urls_are_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="in-memory"):
        LabelStore("sqlite://")
    with pytest.raises(LabelStoreError, match="sqlite:///FILE"):
        LabelStore("mysql://u@h/db")

    class FakeWorkspace:
        label_store_url = f"sqlite:///{tmp_path / 'ws.db'}"

    with open_label_store(FakeWorkspace()) as store:
        assert store.count_events() == 0


# ---------------------------------------------------------------------------------------- append only


def test_database_refuses_update_and_delete_of_events(store: LabelStore) -> None:
    store.record("a.png", "relabel", reviewer="ann", label="Volvox", given_label="Daphnia")
    for statement in ("UPDATE label_events SET new_label = 'Calanus'", "DELETE FROM label_events"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.engine.begin() as conn:
            conn.execute(sa.text(statement))
    [event] = store.events()
    assert (event.new_label, store.count_events()) == ("Volvox", 1)


def test_labelstore_source_has_no_update_or_delete_statement() -> None:
    source = (Path(__file__).resolve().parents[2] / "core" / "labelstore.py").read_text()
    for forbidden in ("sa.update(", "sa.delete(", ".update(label_events", ".delete(label_events", "UPDATE ",
                      "DELETE "):
        assert forbidden not in source.split('"""', 2)[2], forbidden  # the module docstring may mention them


# ------------------------------------------------------------------------------------------- semantics


def test_reviewer_identity_is_required_and_nothing_is_written_without_it(store: LabelStore) -> None:
    for reviewer in ("", "   ", None, "a\x00b"):
        with pytest.raises(ValueError, match="reviewer"):
            store.record("a.png", "confirm", reviewer=reviewer, given_label="Daphnia")
    assert store.count_events() == 0
    event = store.record("a.png", "confirm", reviewer="  ann  ", given_label="Daphnia")
    assert event.reviewer == "ann"


def test_single_reviewer_actions_and_audit_fields(store: LabelStore) -> None:
    relabel = store.record("a.png", "relabel", reviewer="ann", label="Volvox", given_label="Daphnia",
                           note="=HYPERLINK(\"x\")", checkpoint="tiny-v1")
    assert (relabel.previous_label, relabel.new_label, relabel.checkpoint) == ("Daphnia", "Volvox", "tiny-v1")
    assert relabel.created_at.utcoffset().total_seconds() == 0
    assert store.state("a.png").label == "Volvox" and store.state("a.png").status == "relabeled"

    exclude = store.record("a.png", "exclude", reviewer="ann", given_label="Daphnia")
    assert (exclude.previous_label, exclude.new_label) == ("Volvox", "Volvox")
    state = store.state("a.png")
    assert (state.status, state.label, state.votes) == ("excluded", "Volvox", {"ann": EXCLUDED_VOTE})

    undo = store.record("a.png", "undo", reviewer="ann")  # the dataset label comes from the first event
    assert undo.reverts_id == exclude.id and undo.new_label == "Volvox"
    assert store.state("a.png").status == "relabeled"
    undo2 = store.record("a.png", "undo", reviewer="ann")
    assert undo2.reverts_id == relabel.id and (undo2.previous_label, undo2.new_label) == ("Volvox", "Daphnia")
    state = store.state("a.png")
    assert (state.status, state.label, state.n_reviews, state.agreement) == ("unreviewed", None, 0, None)
    assert state.last_reviewer == "ann"
    with pytest.raises(ValueError, match="nothing to undo"):
        store.record("a.png", "undo", reviewer="ann")
    assert [e.action for e in store.history("a.png")] == ["relabel", "exclude", "undo", "undo"]
    assert store.history("a.png")[0].note == "=HYPERLINK(\"x\")"  # stored verbatim; neutralised on export


def test_input_validation_messages(store: LabelStore) -> None:
    with pytest.raises(ValueError, match="needs the new class"):
        store.record("a.png", "relabel", reviewer="ann")
    with pytest.raises(ValueError, match="not one of"):
        store.record("a.png", "delete", reviewer="ann")
    with pytest.raises(ValueError, match="takes no label"):
        store.record("a.png", "exclude", reviewer="ann", label="Volvox")
    with pytest.raises(ValueError, match="needs the label being confirmed"):
        store.record("a.png", "confirm", reviewer="ann")
    assert store.count_events() == 0


def test_undo_only_reverts_the_reviewers_own_latest_event(store: LabelStore) -> None:
    ann = store.record("a.png", "relabel", reviewer="ann", label="Volvox", given_label="Daphnia")
    store.record("a.png", "relabel", reviewer="bob", label="Calanus", given_label="Daphnia")
    assert store.state("a.png").label == "Calanus"  # the latest effective decision
    undo = store.record("a.png", "undo", reviewer="ann", given_label="Daphnia")
    assert undo.reverts_id == ann.id
    state = store.state("a.png")
    assert (state.label, state.votes, state.n_reviews, state.agreement) == ("Calanus", {"bob": "Calanus"}, 1, 1.0)
    store.record("a.png", "undo", reviewer="bob", given_label="Daphnia")
    assert store.state("a.png").status == "unreviewed"


def test_votes_agreement_and_unsure(store: LabelStore) -> None:
    store.record("a.png", "relabel", reviewer="ann", label="Volvox", given_label="Daphnia")
    store.record("a.png", "confirm", reviewer="bob", label="Volvox", given_label="Daphnia")
    store.record("a.png", "confirm", reviewer="cy", label="Daphnia", given_label="Daphnia")
    state = store.state("a.png")
    assert (state.label, state.status, state.n_reviews) == ("Daphnia", "confirmed", 3)
    assert state.agreement == pytest.approx(1 / 3)
    store.record("a.png", "unsure", reviewer="cy", given_label="Daphnia")  # cy changes their mind
    state = store.state("a.png")
    # unsure keeps the latest decided label (bob's confirm of Volvox; cy's own confirm is superseded by cy's unsure
    # only as cy's vote, the event itself stays effective)
    assert (state.status, state.label, state.votes["cy"]) == ("unsure", "Daphnia", UNSURE_VOTE)
    assert state.agreement == pytest.approx(1 / 3)


def test_adjudication_by_a_lead_wins_over_later_reviews(store: LabelStore) -> None:
    store.record("a.png", "relabel", reviewer="ann", label="Volvox", given_label="Daphnia")
    store.record("a.png", "confirm", reviewer="bob", given_label="Daphnia", label="Daphnia")
    lead = store.record("a.png", "relabel", reviewer="lead", label="Volvox", given_label="Daphnia",
                        adjudication=True, note="tentacles visible")
    store.record("a.png", "confirm", reviewer="cy", label="Calanus", given_label="Daphnia")  # after the ruling
    state = store.state("a.png")
    assert (state.label, state.status, state.adjudicated, state.decided_by) == ("Volvox", "relabeled", True, "lead")
    assert "lead" not in state.votes and state.n_reviews == 3
    assert state.agreement == pytest.approx(1 / 3)  # ann agrees with the ruling; bob and cy do not
    undo = store.record("a.png", "undo", reviewer="lead", given_label="Daphnia")
    assert undo.reverts_id == lead.id
    state = store.state("a.png")
    assert (state.label, state.adjudicated) == ("Calanus", False)


def test_record_many_is_all_or_nothing(store: LabelStore) -> None:
    with pytest.raises(ValueError, match="nothing to undo"):
        store.record_many([
            NewEvent("a.png", "relabel", "ann", label="Volvox", given_label="Daphnia"),
            NewEvent("b.png", "undo", "ann"),
        ])
    assert store.count_events() == 0
    written = store.record_many([
        NewEvent("a.png", "relabel", "ann", label="Volvox", given_label="Daphnia"),
        NewEvent("a.png", "confirm", "bob", given_label="Daphnia"),
        NewEvent("b.png", "exclude", "ann", given_label="Calanus"),
    ])
    assert [e.previous_label for e in written] == ["Daphnia", "Volvox", "Calanus"]
    assert written[1].new_label == "Volvox"


def test_bulk_queries(store: LabelStore) -> None:
    store.record_many([NewEvent(f"img{i:04d}.png", "relabel" if i % 3 else "exclude", "ann",
                                label="Volvox" if i % 3 else None, given_label="Daphnia") for i in range(1200)])
    store.record("img0001.png", "undo", reviewer="ann")
    store.record("img0002.png", "confirm", reviewer="bob")
    states = store.states()
    assert len(states) == 1200
    assert states["img0001.png"].status == "unreviewed"
    assert (states["img0000.png"].status, states["img0000.png"].label) == ("excluded", None)
    frame = store.state_frame([f"img{i:04d}.png" for i in range(0, 1200, 2)])  # > one IN chunk
    assert len(frame) == 600 and str(frame["updated_at"].dt.tz) == "UTC"
    assert store.reviewed_by("ann") == {f"img{i:04d}.png" for i in range(1200)} - {"img0001.png"}
    assert store.reviewed_by("bob") == {"img0002.png"}
    votes = store.votes_frame(["img0002.png"])
    assert sorted(votes["reviewer"]) == ["ann", "bob"] and set(votes["vote"]) == {"Volvox"}
    log = store.events_frame()
    assert len(log) == 1202 and log["id"].is_monotonic_increasing


# ----------------------------------------------------------------------------------------- concurrency


def _reference_state(rows: list[dict]) -> tuple[str | None, str]:
    """An independent reading of the rules: per-reviewer undo stacks; adjudications win; latest decides."""
    stacks: defaultdict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["action"] == "undo":
            target = stacks[row["reviewer"]].pop()
            assert target["id"] == row["reverts_id"], "undo must revert the reviewer's latest effective event"
        else:
            stacks[row["reviewer"]].append(row)
    effective = sorted((r for stack in stacks.values() for r in stack), key=lambda r: r["id"])
    layer = [r for r in effective if r["adjudication"]] or effective
    if not layer:
        return None, "unreviewed"
    labels = [r["new_label"] for r in layer if r["action"] in ("confirm", "relabel")] or \
             [r["new_label"] for r in effective if r["action"] in ("confirm", "relabel")]
    status = {"confirm": "confirmed", "relabel": "relabeled", "unsure": "unsure", "exclude": "excluded"}
    return (labels[-1] if labels else None), status[layer[-1]["action"]]


def _check_history_consistent(store: LabelStore) -> None:
    by_sample: defaultdict[str, list[dict]] = defaultdict(list)
    for event in store.events():
        by_sample[event.sample_id].append(dict(event.__dict__))
    states = store.states()
    for sample_id, rows in by_sample.items():
        given = workers.given_label(sample_id)
        for n, row in enumerate(rows):
            before = derive_state(sample_id, rows[:n]).label
            assert row["previous_label"] == (before if before is not None else given), (sample_id, row["id"])
            after = derive_state(sample_id, rows[: n + 1])
            if row["action"] in ("confirm", "relabel") and after.adjudicated and not row["adjudication"]:
                continue  # a review after a ruling records its own label; the ruling keeps deciding
            assert row["new_label"] == (after.label if after.label is not None else given), (sample_id, row["id"])
        assert (states[sample_id].label, states[sample_id].status) == _reference_state(rows), sample_id


def test_eight_concurrent_writer_processes_lose_nothing(store_url: str) -> None:
    n_writers, n_events, n_samples = 8, 500, 60
    LabelStore(store_url).close()  # migrate once up front (concurrent first opens are tested below)
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    processes = [context.Process(target=workers.concurrent_writer, args=(store_url, w, n_events, n_samples, start))
                 for w in range(n_writers)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(timeout=300)
        assert process.exitcode == 0, f"writer exited with {process.exitcode}"
    with LabelStore(store_url) as store:
        events = store.events()
        assert len(events) == n_writers * n_events
        assert {e.note for e in events} == {f"w{w}:{j}" for w in range(n_writers) for j in range(n_events)}
        for w in range(n_writers):  # each writer's events were committed in the order it wrote them
            mine = [int(e.note.split(":")[1]) for e in events if e.reviewer == f"w{w}"]
            assert mine == list(range(n_events))
        undone = [e.reverts_id for e in events if e.action == "undo"]
        assert len(undone) == len(set(undone)) > 100
        _check_history_consistent(store)
        # The chain stayed linear: every event chains onto the one before it in id order, from the genesis value.
        assert [e.prev_hash for e in events] == [GENESIS_HASH] + [e.event_hash for e in events[:-1]]
        report = store.verify_chain()
        assert report.ok and report.links_checked == n_writers * n_events
        assert report.head_hash == events[-1].event_hash


def test_concurrent_first_open_migrates_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    processes = [context.Process(target=workers.concurrent_writer, args=(url, w, 5, 3, start)) for w in range(4)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    with LabelStore(url) as store:
        assert store.count_events() == 20 and store.schema_revision() == HEAD


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("writer did not reach the expected point")
        time.sleep(0.05)


def test_sigkilled_writers_lose_nothing_committed_and_corrupt_nothing(store_url: str, tmp_path: Path) -> None:
    LabelStore(store_url).close()
    context = multiprocessing.get_context("spawn")
    committed_path = tmp_path / "committed.txt"

    # 1. A writer killed at an arbitrary moment of a stream of single-event transactions.
    busy = context.Process(target=workers.busy_writer, args=(store_url, str(committed_path)))
    busy.start()
    _wait_for(lambda: committed_path.exists() and committed_path.read_text().count("\n") >= 40)
    os.kill(busy.pid, signal.SIGKILL)
    busy.join(timeout=30)
    assert busy.exitcode == -signal.SIGKILL

    # 2. A writer killed inside an open 20-event transaction, holding the write lock.
    ready = tmp_path / "ready.txt"
    hanging = context.Process(target=workers.hanging_writer, args=(store_url, str(ready)))
    hanging.start()
    _wait_for(ready.exists)
    os.kill(hanging.pid, signal.SIGKILL)
    hanging.join(timeout=30)

    committed = {int(line) for line in committed_path.read_text().split()}
    with LabelStore(store_url) as store:
        if store.dialect == "sqlite":
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        events = store.events()
        ids = {e.id for e in events}
        assert committed <= ids, f"committed events lost: {sorted(committed - ids)[:5]}"
        assert not [e for e in events if e.note.startswith("batch:")], "half a transaction was kept"
        # the lock died with the writer: new writes to the very samples it held go through
        store.record("s000", "confirm", reviewer="after", given_label="Daphnia")
        assert store.state("s000").decided_by == "after"
        _check_history_consistent(store)
        assert store.integrity.ok and store.verify_chain().ok  # a killed writer leaves no half link


# -------------------------------------------------------------------------------------------- agreement


def test_disagreements_pair_and_class_agreement_and_adjudication(tmp_path: Path) -> None:
    from core.agreement import adjudicate, class_agreement, list_disagreements, reviewer_pair_agreement

    given = {"a": "Volvox", "b": "Daphnia", "c": "Daphnia", "d": "Daphnia", "e": "Volvox"}
    ann = {"a": "Volvox", "b": "Daphnia", "c": "Daphnia", "d": EXCLUDED_VOTE, "e": "Volvox"}
    bob = {"a": "Volvox", "b": "Daphnia", "c": "Volvox", "d": EXCLUDED_VOTE}
    with LabelStore(f"sqlite:///{tmp_path / 'labels.db'}") as store:
        for reviewer, votes in (("ann", ann), ("bob", bob)):
            for sample_id, vote in votes.items():
                if vote == EXCLUDED_VOTE:
                    store.record(sample_id, "exclude", reviewer=reviewer, given_label=given[sample_id])
                elif vote == given[sample_id]:
                    store.record(sample_id, "confirm", reviewer=reviewer, given_label=given[sample_id])
                else:
                    store.record(sample_id, "relabel", reviewer=reviewer, label=vote, given_label=given[sample_id])
        store.record("e", "relabel", reviewer="cy", label="Daphnia", given_label="Volvox")
        store.record("e", "undo", reviewer="cy")  # an undone decision is no vote

        disagreements = list_disagreements(store.states())
        assert disagreements["sample_id"].tolist() == ["c"]
        assert disagreements.loc[0, "votes"] == "ann: Daphnia; bob: Volvox"

        pairs = reviewer_pair_agreement(store.votes_frame())
        assert pairs[["reviewer_a", "reviewer_b", "n_samples"]].values.tolist() == [["ann", "bob", 4]]
        assert pairs.loc[0, "percent_agreement"] == pytest.approx(0.75)
        # by hand: p_o = 3/4; ann (V1 D2 E1), bob (V2 D1 E1): p_e = (2 + 2 + 1) / 16
        assert pairs.loc[0, "cohen_kappa"] == pytest.approx((0.75 - 5 / 16) / (1 - 5 / 16))

        per_class = class_agreement(store.votes_frame(), given).set_index("class_name")
        assert per_class.loc["Daphnia", ["n_samples", "n_pairs"]].tolist() == [3, 3]
        assert per_class.loc["Daphnia", "percent_agreement"] == pytest.approx(2 / 3)
        assert per_class.loc["Volvox", "percent_agreement"] == 1.0
        assert np.isnan(per_class.loc["Volvox", "cohen_kappa"])  # one shared answer: kappa undefined

        ruling = adjudicate(store, "c", "Volvox", reviewer="lead", given_label="Daphnia", note="ocelli")
        assert (ruling.action, ruling.adjudication) == ("relabel", True)
        assert list_disagreements(store.states(), unresolved_only=True).empty
        resolved = list_disagreements(store.states())
        assert resolved.loc[0, ["adjudicated", "label", "decided_by"]].tolist() == [True, "Volvox", "lead"]
        assert reviewer_pair_agreement(store.votes_frame()).loc[0, "n_samples"] == 4  # rulings are not votes
        with pytest.raises(ValueError, match="adjudication decides"):
            adjudicate(store, "c", UNSURE_VOTE, reviewer="lead")
        assert adjudicate(store, "d", EXCLUDED_VOTE, reviewer="lead").action == "exclude"


def test_undo_last_reverts_the_reviewers_latest_decision_on_any_sample(store: LabelStore) -> None:
    store.record("a.png", "relabel", reviewer="ann", label="Volvox", given_label="Daphnia")
    latest = store.record("b.png", "exclude", reviewer="ann", given_label="Daphnia")
    store.record("c.png", "confirm", reviewer="bob", given_label="Daphnia")
    assert store.last_undoable("ann") == latest
    undo = store.undo_last("ann")
    assert (undo.sample_id, undo.reverts_id) == ("b.png", latest.id)
    assert store.undo_last("ann").sample_id == "a.png"
    with pytest.raises(ValueError, match="nothing to undo"):
        store.undo_last("ann")
    assert store.last_undoable("bob").sample_id == "c.png"
