"""Writer processes for the label-store concurrency and crash tests (module-level so `spawn` can import them)."""

from __future__ import annotations

import os
import random
import time
from collections import defaultdict
from pathlib import Path

from sqlalchemy import event

from core.labelstore import LabelStore, NewEvent

CLASSES = ("Daphnia", "Calanus", "Volvox", "Navicula")


def given_label(sample_id: str) -> str:
    """The dataset label of a synthetic sample `sNNN`."""
    return CLASSES[int(sample_id[1:]) % len(CLASSES)]


def concurrent_writer(url: str, writer: int, n_events: int, n_samples: int, start: object) -> None:
    """Write `n_events` single-event transactions as reviewer `w<writer>`; notes are `w<writer>:<j>`."""
    store = LabelStore(url)
    rng = random.Random(1000 + writer)
    mine: defaultdict[str, int] = defaultdict(int)  # my effective events per sample (undo only when > 0)
    start.wait()
    for j in range(n_events):
        sample_id = f"s{rng.randrange(n_samples):03d}"
        if mine[sample_id] and rng.random() < 0.15:
            action, label = "undo", None
            mine[sample_id] -= 1
        else:
            action = rng.choice(("relabel", "relabel", "confirm", "unsure", "exclude"))
            label = rng.choice(CLASSES) if action == "relabel" else None
            mine[sample_id] += 1
        store.record(sample_id, action, reviewer=f"w{writer}", label=label, given_label=given_label(sample_id),
                     note=f"w{writer}:{j}", adjudication=(writer == 0 and rng.random() < 0.05))
    store.close()


def busy_writer(url: str, committed_path: str) -> None:
    """Write events forever, appending each committed id to `committed_path` after `record` returns."""
    store = LabelStore(url)
    fd = os.open(committed_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    j = 0
    while True:
        sample_id = f"s{j % 7:03d}"
        written = store.record(sample_id, "relabel", reviewer="busy", label=CLASSES[j % 4],
                               given_label=given_label(sample_id), note=f"busy:{j}")
        os.write(fd, f"{written.id}\n".encode())
        j += 1


def hanging_writer(url: str, ready_path: str) -> None:
    """Open a 20-event transaction and stop after its 5th INSERT, holding the write lock until killed."""
    store = LabelStore(url)
    inserts = 0

    @event.listens_for(store.engine, "after_cursor_execute")
    def _hang(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ARG001
        nonlocal inserts
        if statement.lstrip().upper().startswith("INSERT"):
            inserts += 1
            if inserts == 5:
                Path(ready_path).write_text("inside the transaction")
                time.sleep(600)

    store.record_many([NewEvent(f"s{k % 5:03d}", "relabel", "hanging", label="Volvox", given_label="Daphnia",
                                note=f"batch:{k}") for k in range(20)])
