"""A curated export round-trips any text: events -> CSV -> the loader training uses gives back exactly what was
written (labels, taxonomy, reviewers, sample ids; notes and reviewers through the audit log). Hypothesis drives it
over arbitrary Unicode; the files are empty stand-ins read with verify="none" (no image is decoded)."""

from __future__ import annotations

import itertools
import shutil
import string
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.dataset import RESERVED_COLUMNS, Dataset, read_manifest_table
from core.export import CURATED_COLUMNS, build_curated_manifest, export_curated_labels
from core.labelstore import LabelStore, NewEvent
from core.training_data import load_training_dataset

NASTY = ["a\rb", "a\nb", "a\r\nb", 'say "hi"', "a,b", "=1+2", "+x", "-x", "@x", "\tx", "\rx", "'quoted", "''",
         "'=x", " lead", "trail ", "  ", "\u2028sep", "\x00nul", "é\u0301", "🦐", "x\x1ey"]
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # any Unicode a file can hold
_LABEL = _TEXT.filter(lambda t: t.strip())  # the store refuses an empty (or blank) class name
_REVIEWER = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=10).map(str.strip) \
    .filter(bool)  # the store refuses control characters in reviewer names and trims them
_FILE = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="/\\\x00"), min_size=1, max_size=12) \
    .filter(lambda t: t.strip() and t not in (".", "..") and len(t.encode()) < 200)
_COLUMN = _TEXT.filter(lambda t: t.strip() and t.strip() not in (*RESERVED_COLUMNS, *CURATED_COLUMNS))
_counter = itertools.count()


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty label store file, copied for each example (migrating costs more than the rest together)."""
    path = tmp_path_factory.mktemp("store") / "labels.db"
    LabelStore(f"sqlite:///{path}").close()
    return path


def _round_trip(base: Path, empty: Path, names: list[str], labels: list[str], taxa: list[str], column: str,
                decisions: list[tuple[str, str, str]]) -> None:
    """Write the export of `names` under `decisions` (reviewer, label, note) and check it reads back unchanged.

    Samples go in pairs (one val, one train) that share their label and every decision, so each class keeps the
    two images training needs (`labels[p]` is pair p's label); an odd last name is dropped.
    """
    names = names[: len(names) // 2 * 2]
    labels, taxa = [labels[i // 2] for i in range(len(names))], taxa[: len(names)]
    folder = base / f"ex{next(_counter)}"
    data = folder / "data"
    data.mkdir(parents=True)
    for name in names:
        (data / name).write_bytes(b"")
    samples = pd.DataFrame({
        "sample_id": names, "path": [str(data / n) for n in names], "label": labels,
        "split": ["train" if i % 2 else "val" for i in range(len(names))],
        "specimen_id": [f"{taxa[i]}#{i}" for i in range(len(names))], column: taxa,
    })
    dataset = Dataset(root=data.resolve(), samples=samples, class_names=tuple(sorted(set(labels))),
                      taxonomy_columns=(column,))
    shutil.copy(empty, folder / "labels.db")
    with LabelStore(f"sqlite:///{folder / 'labels.db'}") as store:
        pairs = len(names) // 2
        events = [NewEvent(names[2 * (i % pairs) + side], "relabel" if i % 3 else "confirm", reviewer,
                           label=label if i % 3 else None, given_label=labels[2 * (i % pairs)], note=note)
                  for i, (reviewer, label, note) in enumerate(decisions) for side in (0, 1)]
        store.record_many(events)
        expected, _ = build_curated_manifest(dataset, store)
        export_curated_labels(dataset, store, folder / "curated.csv", audit_out=folder / "audit.csv")
        recorded = store.events()
    # Disputed samples (reviewers disagree, no ruling) are kept here: the text of every row is what is checked.
    loaded = load_training_dataset(folder / "curated.csv", root=data, taxonomy=(column,), verify="none",
                                   include_disputed=True)
    got = loaded.samples.set_index("sample_id").loc[expected["path"]]
    for name in ("label", "original_label", "status", "last_reviewer", "updated_at", "split", "specimen_id", column):
        assert got[name].tolist() == expected[name].tolist(), name
    assert loaded.taxonomy_columns == (column,) and set(loaded.class_names) == set(expected["label"])
    audit = read_manifest_table(folder / "audit.csv")
    for name in ("sample_id", "reviewer", "note", "previous_label", "new_label", "action"):
        assert audit[name].tolist() == [getattr(e, name) or "" for e in recorded], name


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
@example(data=None)  # the hand-picked cells below, every time
def test_any_text_round_trips_through_export_and_the_training_loader(tmp_path: Path, empty_store: Path,
                                                                     data) -> None:
    if data is None:
        # (a file name of spaces only is refused as a blank path by resolve_sample_path)
        names = [n.replace("\x00", "0") for n in NASTY if n.strip()] + ["C:drive.png", "D:", "dot."]
        labels = [NASTY[(i + 3) % len(NASTY)] if NASTY[(i + 3) % len(NASTY)].strip() else "x"
                  for i in range(len(names))]
        taxa = [NASTY[(i + 5) % len(NASTY)] for i in range(len(names))]
        column = "=HYPERLINK(\"x\"),\r\n"
        decisions = [(f"rev{t.strip()}" if t.strip() else "rev", NASTY[i % len(NASTY)].strip() or "y", t)
                     for i, t in enumerate(NASTY)]
        decisions = [(r.replace("\r", "").replace("\n", "").replace("\t", "").replace("\x00", "")
                      .replace("\x1e", ""), lab, note) for r, lab, note in decisions]
    else:
        names = data.draw(st.lists(_FILE, min_size=2, max_size=6, unique=True), label="names")
        labels = data.draw(st.lists(_LABEL, min_size=len(names), max_size=len(names)), label="labels")
        taxa = data.draw(st.lists(_TEXT, min_size=len(names), max_size=len(names)), label="taxa")
        column = data.draw(_COLUMN, label="column")
        decisions = data.draw(st.lists(st.tuples(_REVIEWER, _LABEL, _TEXT), max_size=6), label="decisions")
    _round_trip(tmp_path, empty_store, names, labels, taxa, column, decisions)


def test_the_export_is_rfc4180_and_guards_formulas_in_every_cell(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "=x.png").write_bytes(b"")
    samples = pd.DataFrame({"sample_id": ["=x.png"], "path": [str(data / "=x.png")], "label": ["a\rb"],
                            "split": ["train"], "specimen_id": ["s"], "@tax": ["-1"]})
    dataset = Dataset(root=data, samples=samples, class_names=("a\rb",), taxonomy_columns=("@tax",))
    with LabelStore(f"sqlite:///{tmp_path / 'labels.db'}") as store:
        export_curated_labels(dataset, store, tmp_path / "c.csv")
    raw = (tmp_path / "c.csv").read_bytes()
    assert raw.split(b"\r\n")[0].endswith(b",'@tax")  # header cells are guarded too
    assert b'./=x.png,"a\rb",' in raw and b",'-1" in raw  # the \r cell is quoted, not a line break
    assert set(string.whitespace) & set(raw.decode().replace("\r\n", "")) <= {" ", "\r"}


@pytest.mark.parametrize("raw, meant", [("'=x", "=x"), ("''a", "'a"), ("' a ", " a "), ("'quoted", "'quoted"),
                                        ("  plain  ", "plain"), ("'", "'"), ("", "")])
def test_read_cell_reads_guarded_cells_verbatim_and_strips_hand_written_ones(raw: str, meant: str) -> None:
    from core.dataset import read_cell

    assert read_cell(raw) == meant
