"""Label-store throughput: sustained events/s with concurrent writer processes on SQLite and PostgreSQL, and reads.

Usage: python benchmarks/bench_labelstore.py [--writers 8] [--events 500] [--samples 2000]
                                             [--backends sqlite,postgresql]
       python benchmarks/bench_labelstore.py --integrity 100000   (cost of the integrity checks at that size)

Every event is its own transaction (one reviewer click). SQLite runs in WAL with synchronous=NORMAL (the store's
default); PostgreSQL is a private server with durable defaults (fsync on, synchronous_commit on).
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy.engine import make_url  # noqa: E402

from core.labelstore import LabelStore, NewEvent  # noqa: E402

CLASSES = ("Daphnia", "Calanus", "Volvox", "Navicula", "Ceratium")


def _writer(url: str, writer: int, n_events: int, n_samples: int, start, results) -> None:
    store = LabelStore(url)
    rng = random.Random(writer)
    start.wait()
    began = time.perf_counter()
    for j in range(n_events):
        sample_id = f"img{rng.randrange(n_samples):06d}.png"
        action = rng.choice(("relabel", "confirm", "exclude", "unsure"))
        store.record(sample_id, action, reviewer=f"r{writer}", label=rng.choice(CLASSES) if action == "relabel"
                     else None, given_label="Daphnia", note=f"{writer}:{j}")
    results.put((began, time.perf_counter()))
    store.close()


def bench_writers(url: str, *, writers: int, events: int, samples: int) -> dict:
    LabelStore(url).close()  # migrate before the clock starts
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    processes = [context.Process(target=_writer, args=(url, w, events, samples, start, results))
                 for w in range(writers)]
    for process in processes:
        process.start()
    time.sleep(3.0)  # let every process import and open the store
    start.set()
    spans = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    wall = max(end for _, end in spans) - min(begin for begin, _ in spans)
    total = writers * events
    with LabelStore(url) as store:
        assert store.count_events() == total, "events went missing"
        began = time.perf_counter()
        states = store.states()
        derive_all = time.perf_counter() - began
        some = sorted(states)[: 200]
        began = time.perf_counter()
        for sample_id in some:
            store.state(sample_id)
        per_sample = (time.perf_counter() - began) / len(some)
        store.record_many([NewEvent(f"bulk{i:06d}.png", "confirm", "bulk", given_label="Daphnia")
                           for i in range(5000)])
        began = time.perf_counter()
        store.record_many([NewEvent(f"bulk{i:06d}.png", "exclude", "bulk2", given_label="Daphnia")
                           for i in range(5000)])
        bulk = time.perf_counter() - began
    return {"events": total, "wall_s": wall, "events_per_s": total / wall, "derive_all_s": derive_all,
            "n_samples": len(states), "state_ms": per_sample * 1000, "bulk5000_s": bulk}


def bench_integrity(url: str, n_events: int, *, batch: int = 5000) -> dict:
    """Fill a store with `n_events` (record_many batches), then time opening it and each integrity check."""
    with LabelStore(url) as store:
        began = time.perf_counter()
        for start in range(0, n_events, batch):
            store.record_many([NewEvent(f"img{i % 20000:06d}.png", "relabel" if i % 3 else "confirm", f"r{i % 7}",
                                        label=CLASSES[i % 5] if i % 3 else None, given_label="Daphnia",
                                        note=f"event {i}") for i in range(start, min(start + batch, n_events))])
        fill = time.perf_counter() - began
    began = time.perf_counter()
    store = LabelStore(url)
    open_s = time.perf_counter() - began
    assert store.integrity is not None and store.integrity.ok
    timings = {"events": n_events, "fill_s": fill, "open_s": open_s}
    for name, check in (("open_check_s", store.check_integrity), ("verify_chain_s", store.verify_chain)):
        began = time.perf_counter()
        assert check().ok
        timings[name] = time.perf_counter() - began
    if store.dialect == "sqlite":
        with store.engine.connect() as conn:
            began = time.perf_counter()
            conn.exec_driver_sql("PRAGMA quick_check").all()
            timings["quick_check_s"] = time.perf_counter() - began
        timings["file_mb"] = Path(make_url(url).database).stat().st_size / 1e6
    store.close()
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--events", type=int, default=500, help="events per writer")
    parser.add_argument("--samples", type=int, default=2000, help="distinct samples the writers touch")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--integrity", type=int, metavar="N",
                        help="instead: fill a SQLite store with N events and time opening it and its checks")
    args = parser.parse_args()
    if args.integrity:
        with tempfile.TemporaryDirectory() as tmp:
            r = bench_integrity(f"sqlite:///{tmp}/labels.db", args.integrity)
        print("| events | file MB | fill s | open (migrate check + quick check + last 64 links) s | open check alone s "
              "| PRAGMA quick_check s | verify whole chain s |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {r['events']} | {r['file_mb']:.1f} | {r['fill_s']:.1f} | {r['open_s']:.3f} | {r['open_check_s']:.3f} "
              f"| {r['quick_check_s']:.3f} | {r['verify_chain_s']:.2f} |")
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                rows.append(("sqlite (WAL, NORMAL)", bench_writers(f"sqlite:///{tmp}/labels.db", writers=args.writers,
                                                                  events=args.events, samples=args.samples)))
            elif backend == "postgresql":
                from tests.core.pg_server import PostgresServer, PostgresUnavailable

                try:
                    with PostgresServer(durable=True) as server:
                        rows.append(("postgresql 15 (fsync on)",
                                     bench_writers(server.create_database(), writers=args.writers,
                                                   events=args.events, samples=args.samples)))
                except PostgresUnavailable as exc:
                    print(f"postgresql skipped: {exc}", file=sys.stderr)
            else:
                parser.error(f"unknown backend {backend!r}")
    print(f"{args.writers} writer processes x {args.events} single-event transactions on {args.samples} samples")
    header = ("backend", "events", "wall s", "events/s", "derive all states s", "samples", "one state ms",
              "record_many 5000 s")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for name, r in rows:
        print(f"{name} | {r['events']} | {r['wall_s']:.2f} | {r['events_per_s']:.0f} | {r['derive_all_s']:.3f} | "
              f"{r['n_samples']} | {r['state_ms']:.2f} | {r['bulk5000_s']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
