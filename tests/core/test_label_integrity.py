"""Label-log integrity on a real SQLite file and a real PostgreSQL: no overwrite, the hash chain, the open check,
verify-labels, the 0002 -> 0003 back-fill, and the PostgreSQL INSERT+SELECT role."""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from cli.main import main as cli_main
from core.labelchain import GENESIS_HASH, canonical_event_bytes, event_hash
from core.labelstore import LabelStore, LabelStoreIntegrityError, NewEvent

_FAKE = "f" * 64  # a well-formed hash, so only the overwrite check can refuse the statement


@pytest.fixture
def store(store_url: str):
    with LabelStore(store_url) as opened:
        yield opened


def _three_events(store: LabelStore) -> None:
    store.record("a.png", "relabel", reviewer="ann", label="Volvox", given_label="Daphnia", note="first")
    store.record("b.png", "confirm", reviewer="bob", given_label="Daphnia", note="second")
    store.record("a.png", "undo", reviewer="ann", note="third")


def _tamper(store: LabelStore, statement: str) -> None:
    """What someone with the database's owner rights could do: lift the append-only triggers and edit history."""
    with store.engine.begin() as conn:
        if store.dialect == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER label_events_no_update")
            conn.exec_driver_sql("DROP TRIGGER label_events_no_delete")
        else:
            conn.exec_driver_sql("ALTER TABLE label_events DISABLE TRIGGER label_events_no_change")
        conn.exec_driver_sql(statement)


# ------------------------------------------------------------------------------------------ canonical form


def test_canonical_form_is_exact_and_time_zone_stable() -> None:
    row = {"id": 7, "sample_id": "a/x é.png", "previous_label": None, "new_label": "Volvox", "action": "relabel",
           "reviewer": "ann@lab.org", "created_at": datetime(2026, 1, 2, 3, 4, 5, 60, tzinfo=UTC), "note": "a\nb",
           "checkpoint": None, "adjudication": 0, "reverts_id": None}
    expected = ('{"action":"relabel","adjudication":false,"checkpoint":null,"created_at":"2026-01-02T03:04:05.000060Z",'
                '"id":7,"new_label":"Volvox","note":"a\\nb","prev_hash":"' + GENESIS_HASH + '","previous_label":null,'
                '"reverts_id":null,"reviewer":"ann@lab.org","sample_id":"a/x \\u00e9.png","v":1}')
    assert canonical_event_bytes(row, GENESIS_HASH) == expected.encode()
    assert event_hash(row, GENESIS_HASH) == hashlib.sha256(expected.encode()).hexdigest()
    # The same instant seen from another zone (PostgreSQL session time zone) or naive UTC (SQLite) hashes the same.
    shifted = {**row, "created_at": row["created_at"].astimezone(timezone(timedelta(hours=-7)))}
    naive = {**row, "created_at": datetime(2026, 1, 2, 3, 4, 5, 60)}
    assert event_hash(shifted, GENESIS_HASH) == event_hash(naive, GENESIS_HASH) == event_hash(row, GENESIS_HASH)
    assert event_hash({**row, "note": "a\nb "}, GENESIS_HASH) != event_hash(row, GENESIS_HASH)
    assert event_hash(row, "1" * 64) != event_hash(row, GENESIS_HASH)


# ------------------------------------------------------------------------------------------- no overwrite


def _overwrites(dialect: str) -> list[str]:
    columns = "(id, sample_id, action, reviewer, created_at, note, adjudication, prev_hash, event_hash)"
    values = f"(1, 'a.png', 'exclude', 'mallory', '2026-01-01 00:00:00', 'rewritten', {{f}}, '{_FAKE}', '{_FAKE}')"
    false = "0" if dialect == "sqlite" else "false"
    values = values.format(f=false)
    upsert = f"INSERT INTO label_events {columns} VALUES {values} ON CONFLICT (id) DO UPDATE SET note = 'rewritten'"
    plain = f"INSERT INTO label_events {columns} VALUES {values}"
    if dialect == "postgresql":
        return [plain, upsert]
    return [f"REPLACE INTO label_events {columns} VALUES {values}",
            f"INSERT OR REPLACE INTO label_events {columns} VALUES {values}",
            upsert, plain,
            # REPLACE resolving a conflict on the unique undo target would delete the *other* row: refused too.
            "INSERT OR REPLACE INTO label_events (id, sample_id, action, reviewer, created_at, note, adjudication, "
            f"reverts_id, prev_hash, event_hash) VALUES (99, 'a.png', 'undo', 'mallory', '2026-01-01', '', 0, 1, "
            f"'{'e' * 64}', '{_FAKE}')"]


def test_an_existing_event_cannot_be_replaced_or_upserted(store: LabelStore) -> None:
    _three_events(store)
    before = store.events()
    for statement in _overwrites(store.dialect):
        with pytest.raises(sa.exc.DBAPIError, match="append-only|duplicate key|UNIQUE"), store.engine.begin() as conn:
            conn.exec_driver_sql(statement)
    # Even with recursive triggers off (SQLite's default) REPLACE deleted nothing, and nothing was added.
    assert store.events() == before
    assert store.verify_chain().ok


def test_sqlite_refuses_a_row_without_hashes(tmp_path) -> None:
    with LabelStore(f"sqlite:///{tmp_path / 'labels.db'}") as store:
        with pytest.raises(sa.exc.DBAPIError, match="prev_hash and event_hash"), store.engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO label_events (sample_id, action, reviewer, created_at, note, "
                                 "adjudication) VALUES ('a.png', 'exclude', 'mallory', '2026-01-01', '', 0)")
        assert store.count_events() == 0


# ---------------------------------------------------------------------------------------------- the chain


def test_events_chain_from_the_genesis_value_and_verify(store: LabelStore) -> None:
    _three_events(store)
    events = store.events()
    assert [e.prev_hash for e in events] == [GENESIS_HASH, events[0].event_hash, events[1].event_hash]
    for event in events:
        assert event.event_hash == event_hash(event.__dict__, event.prev_hash)
    report = store.verify_chain()
    assert (report.ok, report.links_checked, report.head_hash) == (True, 3, events[-1].event_hash)
    assert store.integrity is not None and store.integrity.ok


def test_a_changed_event_is_reported_and_the_store_refuses_to_write(store_url: str, capsys) -> None:
    with LabelStore(store_url) as store:
        _three_events(store)
        _tamper(store, "UPDATE label_events SET new_label = 'Calanus' WHERE note = 'second'")
        second = next(e for e in store.events() if e.note == "second")
        report = store.verify_chain()
        assert not report.ok and report.broken.event_id == second.id and report.links_checked == 1
        assert "content was changed" in report.problem
    with LabelStore(store_url) as reopened:  # the open check finds it
        assert not reopened.integrity.ok and reopened.integrity.broken.event_id == second.id
        with pytest.raises(LabelStoreIntegrityError, match="verify-labels.*backup"):
            reopened.record("c.png", "confirm", reviewer="cy", given_label="Daphnia")
        assert reopened.count_events() == 3 and len(reopened.events()) == 3  # reading still works
    assert cli_main(["verify-labels", "--url", store_url]) == 1
    err = capsys.readouterr().err
    assert f"first broken link: event {second.id}" in err and "content was changed" in err


def test_a_removed_event_breaks_the_next_link(store: LabelStore, capsys) -> None:
    _three_events(store)
    first, second, third = store.events()
    _tamper(store, f"DELETE FROM label_events WHERE id = {second.id}")
    report = store.verify_chain()
    assert report.broken.event_id == third.id and "removed, inserted or changed" in report.problem
    assert cli_main(["verify-labels", "--url", store.url]) == 1
    assert f"event {third.id}" in capsys.readouterr().err


def test_a_write_checks_the_head_it_chains_onto(store: LabelStore) -> None:
    """The store was fine when it opened; the newest event is edited afterwards: the next write refuses."""
    _three_events(store)
    assert store.integrity.ok
    _tamper(store, "UPDATE label_events SET note = 'edited' WHERE note = 'third'")
    with pytest.raises(LabelStoreIntegrityError, match="content was changed"):
        store.record("c.png", "confirm", reviewer="cy", given_label="Daphnia")
    assert store.count_events() == 3


def test_a_damaged_sqlite_file_opens_for_reading_and_refuses_writes(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    with LabelStore(url) as store:
        store.record_many([NewEvent(f"s{i:04d}.png", "confirm", "ann", given_label="Daphnia", note="n" * 50)
                           for i in range(400)])
    with sqlite3.connect(tmp_path / "labels.db") as con:  # closing checkpoints the WAL into the file
        page = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'ix_label_events_reviewer'").fetchone()[0]
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    with open(tmp_path / "labels.db", "r+b") as handle:  # a torn write / bad sector over one index page's header
        handle.seek((page - 1) * page_size)
        handle.write(b"\x0d\xff\xff" * 40)
    with LabelStore(url) as damaged:
        assert not damaged.integrity.ok and f"Page {page}" in damaged.integrity.database_problem
        assert damaged.integrity.broken is None  # the chain itself is intact; the file is not
        with pytest.raises(LabelStoreIntegrityError, match="database file is damaged.*verify-labels.*recover"):
            damaged.record("x.png", "confirm", reviewer="bob", given_label="Daphnia")
        assert damaged.count_events() == 400


def test_verify_labels_cli_on_an_intact_workspace(tmp_path, capsys) -> None:
    (tmp_path / "taxalens.toml").write_text('[dataset]\nroot = "data"\n', encoding="utf-8")
    with LabelStore(f"sqlite:///{tmp_path / 'labels.db'}") as store:
        _three_events(store)
        head = store.events()[-1].event_hash
    assert cli_main(["verify-labels", "--workspace", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 events" in out and head in out


# ------------------------------------------------------------------------------------ migration back-fill


def test_migration_backfills_the_chain_of_an_existing_store(store_url: str) -> None:
    old = LabelStore(store_url, migrate=False)
    assert old.migrate("0002") == "0002"  # a store as the previous TaxaLens left it
    with old.engine.begin() as conn:
        for i, (sample, action, label) in enumerate([("a.png", "relabel", "Volvox"), ("b.png", "confirm", "Daphnia"),
                                                     ("a.png", "exclude", "Volvox")]):
            conn.execute(sa.text("INSERT INTO label_events (sample_id, previous_label, new_label, action, reviewer, "
                                 "created_at, note, adjudication) VALUES (:s, 'Daphnia', :l, :a, 'ann', :t, :n, :f)"),
                         {"s": sample, "l": label, "a": action, "n": f"old {i}", "f": False,
                          "t": datetime(2025, 5, 1, 12, 0, i, 123456, tzinfo=UTC)})
    old.close()
    with LabelStore(store_url) as store:  # opening migrates 0002 -> 0003 -> 0004
        assert store.schema_revision() == "0004"
        events = store.events()
        assert [e.note for e in events] == ["old 0", "old 1", "old 2"]
        assert events[0].prev_hash == GENESIS_HASH and events[1].prev_hash == events[0].event_hash
        assert store.verify_chain().ok and store.integrity.ok
        new = store.record("b.png", "relabel", reviewer="bob", label="Volvox")
        assert new.prev_hash == events[-1].event_hash
        assert store.verify_chain().links_checked == 4
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.engine.begin() as conn:  # triggers restored
            conn.exec_driver_sql("UPDATE label_events SET note = 'x'")


# ------------------------------------------------------------------------------------- PostgreSQL role


@pytest.mark.postgres
def test_postgres_writer_role_may_insert_and_select_only(postgres_server) -> None:
    owner_url = postgres_server.create_database()
    with LabelStore(owner_url) as owner:  # the owner migrates; the migration creates taxalens_writer
        owner.record("a.png", "relabel", reviewer="ann", label="Volvox", given_label="Daphnia")
        login = f"tl_app_{uuid.uuid4().hex[:8]}"
        with owner.engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {login} LOGIN IN ROLE taxalens_writer")
    app_url = make_url(owner_url).set(username=login).render_as_string(hide_password=False)
    with LabelStore(app_url) as app:
        assert app.integrity.ok
        app.record("b.png", "confirm", reviewer="bob", given_label="Daphnia")
        app.undo_last("bob")
        assert app.count_events() == 3 and app.verify_chain().ok
        for statement in ("UPDATE label_events SET note = 'x'", "DELETE FROM label_events", "TRUNCATE label_events",
                          "ALTER TABLE label_events DISABLE TRIGGER label_events_no_change",
                          "DROP TRIGGER label_events_no_change ON label_events",
                          "UPDATE alembic_version SET version_num = '0001'"):
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied|must be owner"), \
                    app.engine.begin() as conn:
                conn.exec_driver_sql(statement)
        assert app.count_events() == 3 and app.schema_revision() == "0004"
